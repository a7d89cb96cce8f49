"""Data-parallel training under `torchrun`: several processes (CPU cores or GPUs, one or many
machines) train one student as one process would.

Why it equals one process: every rank draws the same seeded permutation, takes its share of each
optimiser step's examples, sums its per-example losses divided by the *global* step size, and the
gradients are summed over ranks (all-reduce SUM). The sum of the shares' gradients is the one-process
step's gradient, up to the order of floating-point additions; every rank then takes the same Adam
step, so the weights stay identical on every rank (checked at the end of each training).

Only rank 0 writes (run folder, checkpoints, student, reports) or calls the teacher; the other ranks
wait at a barrier and read what it wrote. Launch detection is by the variables torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK). Without them every function here is a no-op for one process.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError, MentorError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
STREAM_NOT_DISTRIBUTED = ("train.data_path: stream does not train data-parallel yet (every rank would read and "
                          "train on the whole pool). Under torchrun use train.data_path: memory, or run the stream "
                          "path as one process (python -m mentor.cli run ...).")


def launched() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    if not all(v in os.environ for v in LAUNCH_VARS):
        return None
    try:
        rank, world, local = (int(os.environ[v]) for v in LAUNCH_VARS)
    except ValueError:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them), got "
                          f"{[os.environ[v] for v in LAUNCH_VARS]}; launch with torchrun or unset them.") from None
    return (rank, world, local) if world > 1 else None


_ALONE = [0]  # > 0 while rank 0 runs a step by itself (on_main): training in it is one-process training


def active() -> bool:
    """True inside an initialised process group of more than one rank, outside a rank-0-only step."""
    return not _ALONE[0] and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and calls the teacher."""
    return rank() == 0


def local_device(device: str = "auto") -> torch.device | None:
    """Under torchrun with CUDA: this rank's GPU, cuda:LOCAL_RANK (for device auto or cuda)."""
    env = launched()
    if env is None or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return None
    local = env[2]
    if local >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started local rank {local}, but this machine has {torch.cuda.device_count()} "
                          "CUDA device(s): give --nproc_per_node at most the number of GPUs, or set "
                          "train.device: cpu to train on CPU processes.")
    return torch.device("cuda", local)


def init_from_env(device: str = "auto", *, timeout_s: float | None = None) -> bool:
    """Join the process group torchrun describes (once): nccl when this rank trains on CUDA, gloo
    on CPU. Returns whether training is distributed. A no-op for one process.

    `timeout_s` (default: env MENTOR_DIST_TIMEOUT_S, else 24 h) bounds every wait, including the
    other ranks' wait while rank 0 labels the pool, which can take hours with a slow teacher."""
    if launched() is None:
        return False
    if device.startswith("cuda:"):
        raise ConfigError(f"train.device is {device!r}, but under torchrun each rank takes its own GPU "
                          "(cuda:LOCAL_RANK). Set train.device: auto or cuda (or cpu for CPU processes).")
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get("MENTOR_DIST_TIMEOUT_S", 86400))
        except ValueError:
            raise ConfigError(f"MENTOR_DIST_TIMEOUT_S must be a number of seconds, got "
                              f"{os.environ['MENTOR_DIST_TIMEOUT_S']!r}.") from None
    if active():
        return True
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process (python -m mentor.cli) "
                          "or install a torch with distributed support.")
    gpu = local_device(device)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    # torch._dynamo (imported by the first optimiser) keeps references to a process group that exists
    # when it is imported, so destroy_process_group would not free it: gloo's threads then live until
    # the interpreter exits, where a rank could abort (SIGABRT) after a run that succeeded. Imported
    # first, it holds none.
    import torch._dynamo  # noqa: F401
    dist.init_process_group("nccl" if gpu is not None else "gloo", timeout=timedelta(seconds=timeout_s))
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """Leave the process group together at the end of a command that succeeded on every rank: a
    barrier (the other ranks wait while rank 0 prints and writes its last files), then each rank
    destroys the group while the interpreter is whole, which stops gloo's threads (if nothing else
    holds the group: see init_from_env). A group left to the interpreter's exit made CI see a rank
    abort (SIGABRT, "terminate called without an active exception") after a run that had succeeded."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def describe() -> dict:
    """How this run is spread: ranks and backend (recorded in the student's train_info)."""
    if not active():
        return {"world_size": 1, "backend": None, "nodes": 1}
    # torchrun's GROUP_WORLD_SIZE: the number of agents, one per machine
    return {"world_size": world_size(), "backend": dist.get_backend(), "nodes": int(os.environ.get("GROUP_WORLD_SIZE", 1))}


def _object_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj):
    """`obj` of rank 0 on every rank, sent as JSON bytes (numbers, strings, lists, dicts; never a
    pickle): rank 0 keeps its own object, the others get its JSON reading."""
    if not active():
        return obj
    dev = _object_device()
    data = json.dumps(obj, default=_plain).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if is_main()
           else torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
    dist.broadcast(buf, src=0)
    return obj if is_main() else json.loads(buf.cpu().numpy().tobytes().decode())


def _plain(x):
    return x.item() if hasattr(x, "item") and getattr(x, "size", 2) == 1 else \
        x.tolist() if hasattr(x, "tolist") else str(x)


def on_main(fn, what: str = "this step"):
    """Run `fn` on rank 0 only while the others wait; its result on rank 0, None elsewhere. If it
    fails on rank 0, every rank stops with a MentorError naming the failure (no rank waits forever)."""
    if not active():
        return fn()
    result, failure = None, None
    if is_main():
        _ALONE[0] += 1  # e.g. a teacher trained here by rank 0 alone trains as one process
        try:
            result = fn()
        except BaseException as e:
            failure = e
        finally:
            _ALONE[0] -= 1
    message = broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise MentorError(f"rank 0 failed in {what} ({message}); this rank stops too. Fix what rank 0 reported "
                          "and launch again.")
    return result


def main_first(fn, what: str = "this step"):
    """Run `fn` on rank 0, then (once it wrote whatever it caches) on the other ranks."""
    if not active():
        return fn()
    first = on_main(fn, what)
    return first if is_main() else fn()


def share(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a batch of indices (ranks differ by at most one row)."""
    if not active():
        return idx
    return torch.tensor_split(idx, world_size())[rank()]


def sync_params(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a start from one state)."""
    if not active():
        return
    with torch.no_grad():
        for t in model.parameters():
            dist.broadcast(t.data, src=0)
    sync_buffers(model)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank after a step, as torch DDP
    does: each rank's batch statistics come from its share, the kept ones from rank 0's."""
    if not active():
        return
    with torch.no_grad():
        for t in model.buffers():
            dist.broadcast(t.data, src=0)


def sum_gradients(params) -> None:
    """All-reduce (SUM) the gradients of `params`: each rank holds the one-process step's gradient.
    A parameter without a gradient on this rank (not reached by its share) counts as zeros where
    another rank has one; one that no rank reached keeps no gradient, so the optimiser skips it as
    one process would. One flat buffer per dtype: a model of many tensors costs a few calls."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(reached, op=dist.ReduceOp.SUM)
    params = [p for p, r in zip(params, reached.tolist()) if r > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict = {}
    for p in params:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def sum_scalar(value: float, device) -> float:
    """A float summed over ranks (e.g. the epoch's loss: each rank holds its share)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters and buffers, for checking that ranks hold the same model."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def check_same(value: str, what: str, fix: str | None = None) -> None:
    """Raise on every rank when `value` (a digest, a choice, a size) differs between ranks: a
    ConfigError naming `fix` when the caller's inputs can cause it, else a RuntimeError (a bug)."""
    if not active():
        return
    differ = sum_scalar(float(broadcast(value) != value), _object_device())
    if differ and fix:
        raise ConfigError(f"{int(differ)} rank(s) disagree with rank 0 on {what}; {fix}")
    if differ:
        raise RuntimeError(f"{int(differ)} rank(s) disagree with rank 0 on {what}: data-parallel training lost "
                           "sync. This is a bug in mentor; please report it with the config.")


def rank_seed(seed: int, epoch: int) -> None:
    """Distinct global torch RNG per rank (dropout, augmentation), so rank 1's rows do not get rank 0's
    masks; the permutation generator is separate and stays the same on every rank."""
    if active():
        torch.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank()) % (2 ** 63))
