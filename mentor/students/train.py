"""The bundled trainer: plain CE on the labeled set A plus a distillation term on the pool U.

The distillation term is an *objective*: any object with
`pool_loss(student_logits, teacher_probs, pool_index) -> per-example losses` (see
`VanillaObjective`). Corrections (weights, mixed predictions, schedules) plug in there or
through `pool_weights`, so this loop never needs to know which paper a method comes from.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..losses import per_example_distillation
from . import distributed
from .rows import as_float32, dense_rows, is_sparse, n_rows


@dataclass
class TrainConfig:
    epochs: int = 30
    min_steps: int = 2000            # small sets: repeat epochs until this many optimiser steps
    batch_size: int = 128            # examples per forward pass
    lr: float = 1e-3                 # peak learning rate
    weight_decay: float = 0.0
    distill_weight: float = 1.0      # λ: weight of the pool term relative to CE on A
    device: str = "auto"             # "auto" picks CUDA when available
    amp: bool = True                 # bfloat16 autocast on CUDA; ignored on CPU
    amp_on_cpu: bool = False         # bfloat16 autocast on CPU too: faster where the CPU has native bfloat16 (AMX)
    seed: int = 0
    checkpoint_path: str | None = None  # save after each epoch; resume from it when present
    progress: bool = False
    grad_accum: int = 1              # forward passes per optimiser step (effective batch batch_size × grad_accum)
    schedule: str = "constant"       # lr after warmup: constant, linear or cosine decay to 0 (see lr_factor)
    warmup_fraction: float = 0.0     # share of the optimiser steps with a linear warmup of lr
    select_on: str = "last"          # the weights kept: the last epoch's, or the epoch best on V (see SELECT_ON)
    patience: int | None = None      # with select_on: stop after this many epochs without a better V score


# TrainConfig fields added later, at the values that mean what their absence meant: a checkpoint
# written before they existed still matches a config that leaves them there
_ADDED_FIELDS = {"grad_accum": 1, "schedule": "constant", "warmup_fraction": 0.0, "select_on": "last",
                 "patience": None, "amp_on_cpu": False}
# which epoch's weights training keeps: the last, or the one scoring best on V (higher accuracy; lower
# NLL, i.e. mean −log p(true label)); V only scores, it never trains
SELECT_ON = ("last", "val_accuracy", "val_nll")


def _config_record(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if not (k in _ADDED_FIELDS and v == _ADDED_FIELDS[k])}


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # per epoch: loss, and V's accuracy and NLL when V was given
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    best_epoch: int | None = None    # with select_on: the epoch whose weights were kept (1-based)
    stopped_early: bool = False      # patience ended training before the planned epochs


class VanillaObjective:
    """Plain distillation: hard (teacher's top label) or soft (teacher distribution at τ)."""

    def __init__(self, mode: str = "soft", temperature: float = 1.0):
        if mode not in ("soft", "hard"):
            raise ConfigError(f"distillation mode must be 'soft' or 'hard', got {mode!r}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.mode, self.temperature = mode, temperature

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        return per_example_distillation(student_logits, teacher_probs, mode=self.mode, temperature=self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when there is one; asking for a device this machine lacks is a ConfigError."""
    gpu = distributed.local_device(device)  # under torchrun: this rank's GPU
    if gpu is not None:
        return gpu
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"train.device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device is {device!r} but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s) usable by torch. Use train.device: auto (CUDA when present, else CPU) or cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device is {device!r} but MPS is not available here; use auto or cpu.")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def check_pool_weights(weights, n_pool: int) -> np.ndarray:
    """Per-example weights on the pool must be finite, ≥ 0, one per pool example, not all zero."""
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (n_pool,):
        raise DataError(f"pool_weights must have shape ({n_pool},) (one per pool example), got {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("pool_weights must be finite and non-negative; check the weighting function.")
    if not w.any():
        raise DataError("all pool_weights are zero: the student would ignore the whole pool. "
                        "Check the reliability fit (is the teacher never right on V?) or use vanilla distillation.")
    return w


def steps_per_epoch(n_examples: int, cfg: TrainConfig) -> int:
    """Optimiser steps in one epoch: one per `batch_size × grad_accum` examples (the last one may be short)."""
    return max(-(-n_examples // (cfg.batch_size * cfg.grad_accum)), 1)


def epochs_for(n_examples: int, cfg: TrainConfig) -> int:
    """Epochs the trainer will run: `cfg.epochs`, or more when that gives fewer than `cfg.min_steps` steps."""
    return max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch(n_examples, cfg)))


def lr_factor(step: int, total_steps: int, *, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """The multiplier of the peak lr at optimiser step `step` (0-based) of `total_steps`.

    Warmup: (step + 1) / warmup_steps for the first `warmup_steps` steps, so lr climbs linearly
    and reaches the peak at the last warmup step. After it, with p = (step − W) / (total − W):
    constant 1; linear 1 − p; cosine (1 + cos πp) / 2. p < 1 on every step taken, so lr reaches
    0 only where training ends."""
    if schedule not in ("constant", "linear", "cosine"):
        raise ConfigError(f"train.schedule must be constant, linear or cosine, got {schedule!r}.")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    return 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


def warmup_steps_for(total_steps: int, cfg: TrainConfig) -> int:
    """round(warmup_fraction × total steps); at least 1 when warmup_fraction > 0."""
    if cfg.warmup_fraction <= 0:
        return 0
    return max(int(round(cfg.warmup_fraction * total_steps)), 1)


def param_groups(model: nn.Module) -> list[dict]:
    """The optimiser's parameter groups: the model's own `param_groups()` when it has one (groups
    may carry an `lr_scale`, a multiplier of train.lr), else one group. Frozen parameters
    (requires_grad False) are left out, so they stay exactly as they are."""
    groups = model.param_groups() if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("every parameter of the student is frozen (requires_grad False): nothing would train. "
                          "Lower student.freeze_layers or unfreeze some layers.")
    return groups


def as_inputs(x, device=None):
    """Inputs as a tensor: integer arrays (token ids) stay int64, everything else is float32. A
    scipy sparse matrix (TF-IDF) stays a float32 CSR matrix on the host; `_batch` densifies its
    rows one batch at a time. A float model given integer features needs them cast by the caller."""
    if is_sparse(x):
        return as_float32(x)
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.integer):
        return torch.as_tensor(a.astype(np.int64, copy=False), device=device)
    return torch.as_tensor(a.astype(np.float32, copy=False), device=device)


def _batch(x, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a tensor, or of a CSR matrix densified for this batch only."""
    if isinstance(x, torch.Tensor):
        return x[idx]
    return torch.from_numpy(dense_rows(x[idx.cpu().numpy()])).to(device)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_plain(path, *, map_location="cpu", what: str = "file", fix: str = "delete it") -> dict:
    """`torch.load` restricted to tensors and plain containers (`weights_only=True`): a file that
    someone else wrote (a shared run folder) cannot run code here. Anything else is refused."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        why = f"it holds the Python object {found.group(1)}" if found else f"{type(e).__name__}"
        raise DataError(f"{what} {path} was not loaded: it is not a file of tensors and plain data ({why}). "
                        "mentor never unpickles Python objects from files, because that can run code (older mentor "
                        f"versions wrote such files). Nothing was read from it; {fix}.") from None
    if not isinstance(state, dict):
        raise DataError(f"{what} {path} holds a {type(state).__name__}, not mentor's dict of tensors; {fix}.")
    return state


def train_student(model: nn.Module, x_labeled, y_labeled: np.ndarray, *,
                  x_pool=None, teacher_probs: np.ndarray | None = None,
                  objective=None, pool_weights: np.ndarray | None = None,
                  config: TrainConfig | None = None, x_val=None, y_val=None) -> TrainResult:
    """Train `model` in place on CE(A) + λ·mean_U(w·objective).

    Each epoch visits every example of A ∪ U once in a seeded random order; a batch mixes both
    kinds, and its loss is the sum of the per-example terms divided by the batch size. Inputs may
    be arrays (float features, int64 token ids) or scipy sparse matrices (TF-IDF); sparse rows are
    densified one batch at a time. V (`x_val`, `y_val`), when given, is scored after each epoch
    and, with config.select_on, chooses the epoch whose weights are kept (`fit`); it never trains.
    """
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    n_lab = n_rows(x_labeled)
    n_pool = 0 if x_pool is None else n_rows(x_pool)
    if n_pool and (teacher_probs is None or len(teacher_probs) != n_pool):
        raise DataError(f"teacher_probs must have one row per pool example ({n_pool}), "
                        f"got {None if teacher_probs is None else len(teacher_probs)}.")
    if n_lab + n_pool == 0:
        raise DataError("nothing to train on: both the labeled set and the pool are empty.")
    objective = objective or VanillaObjective()
    model.to(device)
    xl = as_inputs(x_labeled, device)
    yl = torch.as_tensor(np.asarray(y_labeled, dtype=np.int64), device=device)
    xu = tu = wu = None
    if n_pool:
        xu = as_inputs(x_pool, device)
        tu = torch.as_tensor(np.asarray(teacher_probs, dtype=np.float32), device=device)
        wu = None if pool_weights is None else torch.as_tensor(check_pool_weights(pool_weights, n_pool), device=device)
    if cfg.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {cfg.grad_accum}.")
    bs, n_total = cfg.batch_size, n_lab + n_pool

    def epoch_groups(epoch):  # one seeded permutation of A ∪ U per epoch, cut into optimiser steps
        order = torch.randperm(n_total, generator=gen).to(device)
        group = bs * cfg.grad_accum
        for g in range(0, n_total, group):
            gidx = order[g:g + group]
            # under torchrun each rank takes its share of every forward batch (the same permutation on
            # every rank); the step still divides by the global len(gidx)
            shares = [distributed.share(gidx[s:s + bs]) for s in range(0, len(gidx), bs)]
            yield len(gidx), [_memory_batch(idx) for idx in shares if len(idx)]

    def _memory_batch(idx):
        lab = idx[idx < n_lab]
        pool_idx = idx[idx >= n_lab] - n_lab
        return lambda: batch_loss(model, objective, cfg.distill_weight, device,
                                  x_lab=_batch(xl, lab, device) if len(lab) else None, y_lab=yl[lab],
                                  x_pool=_batch(xu, pool_idx, device) if len(pool_idx) else None,
                                  t_pool=tu[pool_idx] if len(pool_idx) else None, pool_index=pool_idx,
                                  weights=None if wu is None or not len(pool_idx) else wu[pool_idx])

    return fit(model, objective, cfg, device, gen, n_total, epoch_groups, t0=t0, val=val_pair(x_val, y_val))


def val_pair(x_val, y_val):
    """(x_val, y_val), None without V; one without the other is a DataError."""
    if (x_val is None) != (y_val is None):
        raise DataError("give both x_val and y_val (V's inputs and labels), or neither.")
    if x_val is None:
        return None
    if n_rows(x_val) != len(y_val) or not len(y_val):
        raise DataError(f"V must have one label per input and at least one row; got {n_rows(x_val)} inputs and "
                        f"{len(y_val)} labels.")
    return x_val, np.asarray(y_val)


def batch_loss(model, objective, distill_weight: float, device, *, x_lab=None, y_lab=None, x_pool=None,
               t_pool=None, pool_index=None, weights=None) -> torch.Tensor:
    """Sum over one forward batch of CE on its labeled rows + λ·(w·objective) on its pool rows."""
    loss = torch.zeros((), device=device)
    if x_lab is not None:
        loss = loss + F.cross_entropy(model(x_lab).float(), y_lab, reduction="sum")
    if x_pool is not None:
        per = objective.pool_loss(model(x_pool).float(), t_pool, pool_index)
        if weights is not None:
            per = per * weights
        loss = loss + distill_weight * per.sum()
    return loss


def uses_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training steps run under bfloat16 autocast: on CUDA with train.amp, on CPU with
    train.amp_on_cpu (off by default: CPUs without native bfloat16 emulate it, slower than float32)."""
    if device.type == "cpu" and cfg.amp_on_cpu:
        if not cpu_has_native_bfloat16():
            warnings.warn("train.amp_on_cpu is set, but this CPU has no native bfloat16 (AMX or AVX512-BF16): "
                          "autocast will emulate it, likely slower than float32. Remove train.amp_on_cpu here.",
                          stacklevel=3)
        return True
    return cfg.amp and device.type == "cuda"


def cpu_has_native_bfloat16() -> bool:
    """AMX or AVX512-BF16, where oneDNN runs bfloat16 matmuls natively (torch's own checks)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def check_selection(cfg: TrainConfig, has_val: bool) -> None:
    """select_on and patience must make sense together and with the data given (ConfigError naming the fix)."""
    if cfg.select_on not in SELECT_ON:
        raise ConfigError(f"train.select_on must be one of {', '.join(SELECT_ON)}, got {cfg.select_on!r}.")
    if cfg.patience is not None and cfg.select_on == "last":
        raise ConfigError(f"train.patience={cfg.patience} stops training when V stops improving, so it needs "
                          "train.select_on: val_accuracy or val_nll; set one, or remove train.patience.")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"train.patience must be >= 1 epoch, got {cfg.patience}.")
    if cfg.select_on != "last" and not has_val:
        raise ConfigError(f"train.select_on: {cfg.select_on} keeps the epoch that scores best on V, but no V was "
                          "given (x_val, y_val; a run needs split.n_val > 0). Give V, or set train.select_on: last.")


def val_scores(model: nn.Module, x_val, y_val, device) -> dict:
    """V's accuracy and NLL (mean −log p of the true label) of `model` as it is now (eval mode)."""
    log_p = torch.from_numpy(np.log(np.clip(predict_proba(model, x_val, device=str(device)), 1e-12, None)))
    y = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    return {"val_accuracy": float((log_p.argmax(1) == y).double().mean()),
            "val_nll": float(F.nll_loss(log_p.double(), y))}


def _better(scores: dict, best: dict | None, select_on: str) -> bool:
    if best is None:
        return True
    if select_on == "val_accuracy":
        return scores["val_accuracy"] > best["score"]
    return -scores["val_nll"] > best["score"]


def fit(model: nn.Module, objective, cfg: TrainConfig, device: torch.device, gen: torch.Generator, n_total: int,
        epoch_groups, *, t0: float | None = None, val=None) -> TrainResult:
    """The optimisation loop shared by the in-memory and the streaming trainer.

    `epoch_groups(epoch)` yields, per optimiser step, (examples in the step, [callables returning
    each forward batch's summed loss]); the step's loss is their sum divided by the examples.
    Handles the lr schedule, bfloat16 autocast on CUDA, checkpoints (resume) and progress. Under
    torchrun (`distributed`) each rank's callables cover its share of the step; gradients are summed
    over ranks before the step, and only rank 0 writes the checkpoint.

    `val` = (x_val, y_val): after each epoch V's accuracy and NLL go into the history. With
    cfg.select_on the weights of the best epoch on V are kept (a copy on the CPU, also in the
    checkpoint, so a resumed run keeps the same one) and loaded at the end; with cfg.patience
    training stops after that many epochs without a better V score. Every rank scores all of V, so
    all reach the same decisions."""
    t0 = time.perf_counter() if t0 is None else t0
    check_selection(cfg, val is not None)
    best = None  # {"epoch", "score", "model"}: the epoch kept under select_on
    opt = torch.optim.Adam(param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult()
    start_epoch = 0
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    state = _load_checkpoint(ckpt, device) if ckpt is not None and ckpt.exists() else None
    if state is not None:
        if state.get("config") not in (asdict(cfg), _config_record(cfg)):
            raise ConfigError(f"checkpoint {ckpt} was written with another training config; "
                              "delete it or point checkpoint_path elsewhere to start afresh.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        objective.load_state_dict(state.get("objective", {}))
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history = state["history"]
        start_epoch = result.resumed_from_epoch = state["epoch"]
        best = state.get("best")
    distributed.check_same(f"{n_total} {cfg}", "the examples and the training config", "under torchrun every "
                           "rank must train on the same data (all of it: each takes its share) with the same config.")
    distributed.sync_params(model)  # every rank starts from rank 0's weights
    distributed.rank_seed(cfg.seed, start_epoch)
    trained = [p for g in opt.param_groups for p in g["params"]]
    use_amp = uses_autocast(cfg, device)
    n_epochs = epochs_for(n_total, cfg)
    per_epoch = steps_per_epoch(n_total, cfg)
    total_steps = n_epochs * per_epoch
    warmup = warmup_steps_for(total_steps, cfg)
    progress = None
    if cfg.progress and distributed.is_main():  # one bar, not one per rank
        from rich.progress import Progress
        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("training student", total=n_epochs, completed=start_epoch)
    try:
        for epoch in range(start_epoch, n_epochs):
            if cfg.patience is not None and best is not None and epoch - best["epoch"] >= cfg.patience:
                result.stopped_early = True  # checked first, so a resumed run stops where it stopped
                break
            model.train()
            total, steps = 0.0, 0
            for n_group, batches in epoch_groups(epoch):
                factor = lr_factor(epoch * per_epoch + steps, total_steps, warmup_steps=warmup,
                                   schedule=cfg.schedule)
                for param_group in opt.param_groups:
                    param_group["lr"] = cfg.lr * factor * param_group.get("lr_scale", 1.0)
                opt.zero_grad(set_to_none=True)
                for summed in batches:  # grad_accum forward passes, one optimiser step
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = summed() / n_group  # the step's loss is the mean over all its examples
                    if loss.requires_grad:
                        loss.backward()
                    total += float(loss.detach())
                distributed.sum_gradients(trained)  # ranks: the sum of the shares' gradients
                opt.step()
                distributed.sync_buffers(model)  # BatchNorm statistics: rank 0's, as in torch DDP
                steps += 1
            if hasattr(objective, "on_epoch_end"):
                objective.on_epoch_end(epoch)
            total = distributed.sum_scalar(total, device)
            result.history.append({"epoch": epoch + 1, "loss": total / max(steps, 1)})
            if val is not None:
                rng = torch.get_rng_state()  # scoring V must not change the next epoch's dropout
                scores = val_scores(model, *val, device)
                torch.set_rng_state(rng)
                result.history[-1].update(scores)
                if cfg.select_on != "last" and _better(scores, best, cfg.select_on):
                    best = {"epoch": epoch + 1, "score": scores["val_accuracy"] if cfg.select_on == "val_accuracy"
                            else -scores["val_nll"],
                            "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            if ckpt is not None and distributed.is_main():
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "objective": objective.state_dict(), "generator": gen.get_state(),
                                    "torch_rng": torch.get_rng_state(), "history": result.history,
                                    "epoch": epoch + 1, "config": _config_record(cfg),
                                    **({"best": best} if best is not None else {})}, ckpt)
            if progress is not None:
                progress.update(task, advance=1, description=f"epoch {epoch + 1} loss {total / max(steps, 1):.4f}")
    finally:
        if progress is not None:
            progress.stop()
    if best is not None:
        model.load_state_dict(best["model"])
        result.best_epoch = int(best["epoch"])
    distributed.check_same(distributed.digest(model), "the trained weights")
    result.seconds = time.perf_counter() - t0
    return result


def _load_checkpoint(ckpt: Path, device) -> dict | None:
    """The checkpoint's plain state, or None (with a warning) when it is of an unsafe or unknown
    format: training then starts afresh and overwrites it after the first epoch."""
    try:
        return load_plain(ckpt, map_location=device, what="checkpoint", fix="training starts afresh and "
                          "overwrites it after the first epoch")
    except DataError as e:
        warnings.warn(str(e), stacklevel=3)
        return None


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, *, batch_size: int | None = None,
                  device: str = "auto") -> np.ndarray:
    """Softmax outputs of `model` on an array (float features, or int64 token ids), in batches, in
    eval mode. Default batch: the model's `predict_batch_size` attribute when it has one, else 4096."""
    dev = resolve_device(device)
    model.to(dev).eval()
    batch_size = batch_size or getattr(model, "predict_batch_size", 4096)
    out = []
    for s in range(0, n_rows(x), batch_size):
        xb = (torch.from_numpy(dense_rows(x, s, s + batch_size)).to(dev) if is_sparse(x)
              else as_inputs(x[s:s + batch_size], dev))
        out.append(torch.softmax(model(xb).float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
