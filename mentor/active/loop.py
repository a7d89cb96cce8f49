"""Budgeted teacher queries: the budget and the active loop (its benchmark is mentor.bench.active).

    data → split → teacher → [select b pool points → pay the teacher (store) → retrain → evaluate] × rounds

"Which points" is `mentor.active.selection` (plain functions on index arrays); "how many calls we can
afford" is `Budget`; this module only runs the loop. The student starts from the labeled set A;
each round it scores the pool points not queried yet, a selector picks b of them, the teacher is
paid for those not already in the store (`TeacherStore.label` skips stored ids, so nothing is
paid twice), and the student is retrained on A + everything queried so far with the chosen
correction (`vanilla-soft`, `slam`, ... — any registered method), then scored on the test split.

Output folder: `active.json` (queries, test_accuracy, auc, strategy, seed, spent), `active.png`,
and `active_state.json` + `active/` (round state and per-round students). A run killed at any
point resumes from the last finished round: the batch chosen for an unfinished round is saved
before the teacher is paid and reused on resume, training resumes from its checkpoint, and the
store guarantees no id is paid twice.

Costs. `Budget` prices pool queries per example (`cost_per_example`, default the teacher's) or
per id from a cost file (e.g. tokens × price for text/API teachers; ids missing from the file
are an error). What this run spent is `store.spent` now minus `store.spent` when the run began
(recorded in the round state), so the account persists with the store and points already stored
(by this or any earlier run on the same store) cost nothing. Teacher calls on V (needed by RAD's
m̂ and by corrections) and on the test split (to report the teacher) are paid at the teacher's
own price and are not charged to `max_cost`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..config import RunConfig, read_yaml_mapping, validate_config, without_added_defaults
from ..errors import ConfigError, DataError
from ..students.rows import dense_rows, is_sparse, n_rows, stack_rows
from .selection import SELECTORS, select

STATE_NAME = "active_state.json"


# ---------------------------------------------------------------------------------------------- config

class ActiveConfig(RunConfig):
    """A run config (every `mentor run` key) plus the active-learning keys below. `method` is not
    used here: the student is trained each round with `correction` (and `method_options`, when
    the run config has it). `baseline` is implied: round 0 is the student trained on A only."""
    strategy: str = "rad"                # selector: see mentor.active.selection.SELECTORS
    rounds: int | None = Field(None, ge=1)            # with batch_size: schedule = batch_size, 2·batch_size, ...
    batch_size: int | None = Field(None, ge=1)        # points queried per round (with rounds)
    budget: list[int] | None = None      # or: cumulative query counts after each round, e.g. [50, 100, 200]
    correction: str = "vanilla-soft"     # distillation method for each retraining (see `mentor methods`)
    retrain: Literal["scratch", "continue"] = "scratch"  # new student each round, or continue the last one
    max_cost: float | None = Field(None, gt=0)        # stop before a round whose new teacher calls would exceed this spend
    cost_per_example: float | None = Field(None, ge=0)  # price of one pool query; default teacher.cost_per_example
    cost_file: str | None = None         # or per-id prices (e.g. per token): a CSV/Parquet of id → cost
    cost_id_column: str = "id"
    cost_column: str = "cost"
    score_teacher: bool = True           # also pay the teacher on the test split, to report its accuracy
    rad_solver: Literal["exact", "capped"] = "exact"     # see mentor.active.selection.rad_probabilities
    rad_rounding: Literal["systematic", "pairs"] = "pairs"  # DepRound (the paper's); see selection.dep_round
    rad_m_scale: float = Field(1.0, ge=0)  # multiplies RAD's m̂ = n·(1 − teacher accuracy on V); 0 is margin sampling

    def trained_method(self) -> str:
        return self.correction

    @model_validator(mode="after")
    def _check_active(self):
        from ..methods import METHODS
        if self.strategy not in SELECTORS:
            raise ValueError(f"unknown strategy {self.strategy!r}; available: {', '.join(sorted(SELECTORS))}")
        if self.correction not in METHODS:
            raise ValueError(f"unknown correction {self.correction!r}; available: {', '.join(sorted(METHODS))}")
        if self.method != "vanilla-soft":
            raise ValueError("`method` is not used by the active loop; set `correction` instead")
        if self.budget is not None:
            if self.rounds is not None or self.batch_size is not None:
                raise ValueError("give either `budget` (cumulative query counts) or `rounds` + `batch_size`, not both")
            if not self.budget:
                raise ValueError("budget must list at least one cumulative query count")
            if self.budget[0] < 1:
                raise ValueError(f"budget starts at {self.budget[0]}: a budget of zero queries selects nothing; "
                                 "give positive cumulative counts")
            if any(b <= a for a, b in zip(self.budget, self.budget[1:])):
                raise ValueError(f"budget {self.budget} must be strictly increasing (cumulative query counts)")
        else:
            r, b = self.rounds if self.rounds is not None else 5, self.batch_size if self.batch_size is not None else 50
            if r < 1 or b < 1:
                raise ValueError(f"rounds ({r}) and batch_size ({b}) must be >= 1: a budget of zero selects nothing")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ValueError(f"max_cost must be > 0 (got {self.max_cost}); leave it out for no spending cap")
        if self.cost_file is not None and self.cost_per_example is not None:
            raise ValueError("give cost_per_example or cost_file, not both")
        return self

    def schedule(self) -> list[int]:
        """Cumulative query counts after each round."""
        if self.budget is not None:
            return list(self.budget)
        r, b = self.rounds or 5, self.batch_size or 50
        return [b * (i + 1) for i in range(r)]


def parse_active_config(data: dict | None, source: str = "<dict>") -> ActiveConfig:
    return validate_config(ActiveConfig, data, source)


def load_active_config(path, overrides: dict | None = None) -> ActiveConfig:
    """Read a YAML active config; relative paths (data, teacher, store, cost file, output) are
    resolved against its folder, like `mentor.config.load_config`."""
    path = Path(path)
    data = read_yaml_mapping(path, overrides)
    cfg = parse_active_config(data, str(path))
    base = path.parent

    def resolve(value):
        return value if not value or Path(value).is_absolute() else str((base / value).resolve())
    cfg.data.path, cfg.teacher.path, cfg.store.path = (resolve(cfg.data.path), resolve(cfg.teacher.path),
                                                       resolve(cfg.store.path))
    cfg.cost_file, cfg.output_dir = resolve(cfg.cost_file), resolve(cfg.output_dir)
    return cfg


# ---------------------------------------------------------------------------------------------- budget

class BudgetExhausted(ConfigError):
    """The next teacher calls would spend more than the budget allows."""


class _PricedTeacher:
    """The same teacher (same fingerprint) with the price the budget charges for this call."""

    def __init__(self, teacher, price: float):
        self.teacher, self.fingerprint, self.cost_per_example = teacher, teacher.fingerprint, price

    def predict_proba(self, inputs, ids=None):
        return self.teacher.predict_proba(inputs, ids)

    def answer(self, inputs, ids=None):  # extras and the real cost (an LLM's tokens) reach the store
        if hasattr(self.teacher, "answer"):
            return self.teacher.answer(inputs, ids)
        from ..teachers.base import TeacherAnswer  # a user's teacher with predict_proba only
        return TeacherAnswer(self.teacher.predict_proba(inputs, ids))


class Budget:
    """Prices of teacher calls and a spending cap, accounted in the store.

    `cost_per_example` prices every id the same; `costs` (id → cost, e.g. tokens × price) prices
    each id, and an id without a price is an error. `total` caps what may be spent after
    `start` (the store's `spent` when the run began); None means no cap."""

    def __init__(self, *, total: float | None = None, cost_per_example: float = 1.0,
                 costs: dict[str, float] | None = None, start: float = 0.0):
        if total is not None and not total > 0:
            raise ConfigError(f"budget total must be > 0, got {total}; leave it out for no cap.")
        if costs is None and not (cost_per_example >= 0 and math.isfinite(cost_per_example)):
            raise ConfigError(f"cost_per_example must be finite and >= 0, got {cost_per_example}.")
        self.total, self.cost_per_example, self.costs, self.start = total, float(cost_per_example), costs, float(start)

    @classmethod
    def from_file(cls, path, *, id_column: str = "id", cost_column: str = "cost", **kw) -> "Budget":
        """Per-id prices from a CSV or Parquet file with columns `id_column` and `cost_column`."""
        import pandas as pd
        import pyarrow.parquet as pq
        p = Path(path)
        if not p.exists():
            raise DataError(f"cost file {p} does not exist.")
        # from the path, not a Python file object as pandas passes (apache/arrow#50482: a hang at exit)
        df = pq.read_table(p).to_pandas() if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
        for col in (id_column, cost_column):
            if col not in df.columns:
                raise DataError(f"cost file {p} has no column {col!r} (columns: {list(df.columns)}); set "
                                "cost_id_column / cost_column.")
        cost = pd.to_numeric(df[cost_column], errors="coerce").to_numpy(float)
        if not np.isfinite(cost).all() or (cost < 0).any():
            raise DataError(f"cost file {p}: column {cost_column!r} must hold finite numbers >= 0.")
        ids = df[id_column].astype(str).to_numpy()
        if len(set(ids)) != len(ids):
            raise DataError(f"cost file {p} repeats ids; give one cost per id.")
        return cls(costs=dict(zip(ids.tolist(), cost.tolist())), **kw)

    def costs_of(self, ids) -> np.ndarray:
        ids = np.asarray(ids).astype(str)
        if self.costs is None:
            return np.full(len(ids), self.cost_per_example)
        missing = [x for x in ids.tolist() if x not in self.costs]
        if missing:
            raise DataError(f"the cost file has no cost for {len(missing)} of {len(ids)} ids (e.g. {missing[:3]}); "
                            "give every pool id a cost.")
        return np.fromiter((self.costs[x] for x in ids.tolist()), float, len(ids))

    def spent(self, store) -> float:
        return store.spent - self.start

    def remaining(self, store) -> float:
        return math.inf if self.total is None else self.total - self.spent(store)

    def charge(self, store, teacher, ids, inputs, *, batch_size: int = 1024, distribute=None):
        """Pay the teacher for the ids not stored yet (in batches, each at its exact price) and
        store their outputs. Raises BudgetExhausted, paying nothing, if that would exceed the cap.
        `distribute` (the run's section) runs the batches at once on threads or Ray workers; a
        teacher that knows each call's real cost (an LLM's tokens) is billed that.
        Returns (new ids paid, cost)."""
        ids = np.asarray(ids).astype(str)
        new = np.isin(ids, store.missing(ids))
        cost = float(self.costs_of(ids[new]).sum())
        if cost > self.remaining(store) + 1e-9:
            raise BudgetExhausted(f"these {int(new.sum())} new teacher calls cost {cost:g} but only "
                                  f"{self.remaining(store):g} of the budget {self.total:g} is left.")
        idx = np.flatnonzero(new)
        if distribute is not None and distribute.engine != "none" and len(idx) > batch_size:
            from ..teachers.pools import make_pool
            priced = _PricedTeacher(teacher, cost / max(len(idx), 1))
            pool = make_pool(distribute, priced)
            try:
                store.label(priced, [(ids[idx[s:s + batch_size]], _take(inputs, idx[s:s + batch_size]))
                                     for s in range(0, len(idx), batch_size)], pool=pool)
            finally:
                pool.close()
            return int(new.sum()), cost
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            price = float(self.costs_of(ids[part]).mean())
            store.label(_PricedTeacher(teacher, price), [(ids[part], _take(inputs, part))])
        return int(new.sum()), cost


def label_on_pool(store, teacher, ids, inputs, *, batch_size: int, distribute=None) -> None:
    """Store the teacher's outputs for `ids` in calls of `batch_size`, on threads or Ray workers
    where `distribute` asks and there is more than one call to make (an LLM's calls overlap)."""
    from ..teachers.pools import make_pool
    pool = (make_pool(distribute, teacher) if distribute is not None and getattr(teacher, "kind", "") != "file"
            and len(store.missing(ids)) > batch_size else None)
    try:
        store.label(teacher, ((ids[i:i + batch_size], inputs[i:i + batch_size]) for i in range(0, len(ids), batch_size)),
                    pool=pool)
    finally:
        if pool is not None:
            pool.close()


def _take(inputs, idx):
    return [inputs[i] for i in idx] if isinstance(inputs, list) else inputs[idx]


# ---------------------------------------------------------------------------------------------- helpers

def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def auc(queries, accuracy) -> float:
    """Area under accuracy-vs-queries (trapezoid) divided by the query range: a mean accuracy."""
    q, a = np.asarray(queries, float), np.asarray(accuracy, float)
    if len(q) < 2 or q[-1] == q[0]:
        return float(a.mean()) if len(a) else float("nan")
    return float(np.sum((q[1:] - q[:-1]) * (a[1:] + a[:-1]) / 2) / (q[-1] - q[0]))


@torch.no_grad()
def student_embeddings(model: torch.nn.Module, x: np.ndarray, *, batch_size: int | None = None,
                       device: str = "auto") -> np.ndarray:
    """Inputs of the student's last linear layer (its penultimate features), via a forward hook."""
    from ..students.train import as_inputs, resolve_device
    batch_size = batch_size or getattr(model, "predict_batch_size", 4096)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError("coreset needs a student whose last layer is torch.nn.Linear (to read its embeddings).")
    dev = resolve_device(device)
    model.to(dev).eval()
    grabbed: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].float().cpu()))
    try:
        for s in range(0, n_rows(x), batch_size):
            model(torch.as_tensor(dense_rows(x, s, s + batch_size), device=dev) if is_sparse(x)
                  else as_inputs(x[s:s + batch_size], dev))
    finally:
        hook.remove()
    return torch.cat(grabbed).numpy() if grabbed else np.zeros((0, linears[-1].in_features), np.float32)


def plot_curves(curves: dict[str, tuple[list, list]], path: Path, title: str = "") -> Path:
    """Test accuracy against teacher queries, one line per strategy, as a PNG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (q, a) in curves.items():
        ax.plot(q, [100 * v for v in a], marker="o", label=f"{name} (AUC {100 * auc(q, a):.2f})")
    ax.set_xlabel("teacher queries (pool points)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _state_key(cfg: ActiveConfig) -> str:
    d = without_added_defaults(cfg.model_dump(mode="json"))
    for k in ("output_dir", "store", "tracking"):
        d.pop(k, None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("progress", "device")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _budget(cfg: ActiveConfig, teacher, start: float) -> Budget:
    if cfg.cost_file:
        return Budget.from_file(cfg.cost_file, id_column=cfg.cost_id_column, cost_column=cfg.cost_column,
                                total=cfg.max_cost, start=start)
    price = cfg.cost_per_example if cfg.cost_per_example is not None else float(teacher.cost_per_example or 0.0)
    return Budget(total=cfg.max_cost, cost_per_example=price, start=start)


# ---------------------------------------------------------------------------------------------- the loop

def run_active(cfg: ActiveConfig, *, force: bool = False) -> dict:
    """The whole active run from one validated config: split, teacher, then the rounds.
    Returns what is written to active.json."""
    from ..pipeline import get_teacher, prepare
    if not isinstance(cfg, ActiveConfig):
        raise ConfigError("run_active needs an ActiveConfig (parse_active_config / load_active_config).")
    from ..tracking import check_tracker
    check_tracker(cfg.tracking)  # a tracking server that is down is found before anything is paid
    ctx = prepare(cfg, force=force)
    _check_schedule(cfg.schedule(), len(ctx.splits.pool))  # before a teacher is trained or paid
    teacher = get_teacher(ctx)
    result = active_loop(ctx, teacher)
    from ..pipeline import open_store
    from ..report import report_after_run
    from ..tracking import track_after_run
    report_after_run(ctx, open_store(ctx, teacher), stored_pool_only=True)
    track_after_run(ctx)
    return result


def _check_schedule(schedule: list[int], n_pool: int) -> None:
    if schedule[-1] > n_pool:
        raise ConfigError(f"the budget asks for {schedule[-1]} queries but the pool has only {n_pool} points; "
                          "lower `budget` / `rounds` × `batch_size`, or enlarge the pool.")


def active_loop(ctx, teacher, *, cfg: ActiveConfig | None = None, out: Path | None = None,
                log: Callable | None = None) -> dict:
    """Run (or resume) the rounds for a prepared RunContext and a teacher. `cfg` (default
    ctx.cfg) gives the active keys and `out` (default ctx.out) the folder for the round state,
    active.json and active.png, so several strategies can share one split, teacher and store."""
    from ..evaluate import accuracy, machine_record
    from ..methods import MethodContext, plan_method, train_with_plan
    from ..pipeline import _featurizer, _new_student, _train_config, open_store
    from ..students.train import epochs_for, load_plain, predict_proba, train_student

    cfg = cfg or ctx.cfg
    out = Path(out or ctx.out)
    (out / "active").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data, sp = ctx.data, ctx.splits
    schedule = cfg.schedule()
    n_pool = len(sp.pool)
    _check_schedule(schedule, n_pool)
    pool_ids = data.ids[sp.pool].astype(str)
    budget = _budget(cfg, teacher, 0.0)
    budget.costs_of(pool_ids)  # a cost file must price every pool id, checked before anything is paid
    store = open_store(ctx, teacher)

    # setup calls: V (for m̂ and corrections) and, to report the teacher, test — outside the budget
    setup = np.concatenate([sp.val, sp.test]) if cfg.score_teacher else sp.val
    if hasattr(teacher, "covers"):  # a teacher file may leave V / test out
        setup = setup[teacher.covers(data.ids[setup])]
    bs = cfg.store.batch_size
    label_on_pool(store, teacher, data.ids[setup], data.features[setup], batch_size=bs, distribute=cfg.distribute)
    y_val = data.labels[sp.val]
    t_val = None if len(store.missing(data.ids[sp.val])) else store.read(data.ids[sp.val])
    teacher_val_acc = None if t_val is None else float((t_val.argmax(1) == y_val).mean())
    if teacher_val_acc is None and cfg.strategy == "rad":
        raise ConfigError("strategy 'rad' estimates the teacher's mistakes on V, but the teacher has no outputs for "
                          "V's ids; give the teacher file rows for V, or choose another strategy.")

    state_path = out / STATE_NAME
    key = _state_key(cfg)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("key") != key:
            raise ConfigError(f"{state_path} was written by another active config (strategy, schedule, data or "
                              "training changed). Use another output_dir, or delete it to start over.")
    else:
        state = {"key": key, "spent_at_start": store.spent, "rounds": [], "pending": None}
        _atomic_json(state_path, state)
    budget.start = float(state["spent_at_start"])

    feat = _featurizer(ctx)
    x_lab, y_lab = feat.transform(data.features[sp.labeled]), data.labels[sp.labeled]
    x_pool = feat.transform(data.features[sp.pool])
    x_test, y_test = feat.transform(data.features[sp.test]), data.labels[sp.test]
    device = cfg.train.device
    pos_of = {x: i for i, x in enumerate(pool_ids.tolist())}
    x_val = feat.transform(data.features[sp.val])
    val = {"x_val": x_val, "y_val": data.labels[sp.val]} if cfg.train.select_on != "last" else {}  # epoch kept

    def student_path(r: int) -> Path:
        return out / "active" / f"student-round-{r}.pt"

    def load_model(r: int):
        m = _new_student(ctx, x_lab.shape[1])
        m.load_state_dict(load_plain(student_path(r), what="active-learning student",
                                     fix=f"delete {out / 'active'} to redo the rounds"))
        return m

    def train_round(r: int, queried: np.ndarray):
        ckpt = out / "active" / f"round-{r}.ckpt"
        tcfg = _train_config(ctx, ckpt)
        model = load_model(r - 1) if (cfg.retrain == "continue" and r > 0) else _new_student(ctx, x_lab.shape[1])
        if not len(queried):
            train_student(model, x_lab, y_lab, config=tcfg, **val)
        else:
            xq, tq = x_pool[queried], store.read(pool_ids[queried])
            n_epochs = epochs_for(n_rows(x_lab) + n_rows(xq), tcfg)

            def train_and_predict(plan):  # two-pass corrections: a first student's outputs on the queried set and V
                m = _new_student(ctx, x_lab.shape[1])
                train_with_plan(m, x_lab, y_lab, xq, tq, plan, replace(tcfg, checkpoint_path=None), **val)
                return predict_proba(m, xq, device=device), predict_proba(m, x_val, device=device)

            mctx = MethodContext(n_classes=ctx.n_classes, teacher_probs_pool=tq, teacher_probs_val=t_val,
                                 val_labels=y_val, temperature=cfg.train.temperature, seed=cfg.seed,
                                 train_and_predict=train_and_predict,
                                 options=dict(getattr(cfg, "method_options", {}) or {}), n_epochs=n_epochs,
                                 selects_epoch_on_val=bool(val))
            plan = plan_method(cfg.correction, mctx)
            train_with_plan(model, x_lab, y_lab, xq, tq, plan, tcfg, **val)
        acc = accuracy(predict_proba(model, x_test, device=device), y_test)
        tmp = student_path(r).with_name(student_path(r).name + ".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, student_path(r))
        ckpt.unlink(missing_ok=True)
        return acc

    def commit(r: int, queried_ids: list, acc: float, paid: int, **extra) -> None:
        state["rounds"].append({"round": r, "queries": len(queried_ids), "test_accuracy": acc, "new_paid": paid,
                                "spent": budget.spent(store), "store_calls": store.n_calls,
                                "ids": queried_ids[len(_queried(state)):], **extra})
        state["pending"] = None
        _atomic_json(state_path, state)
        if log:
            log(f"{cfg.strategy} round {r}: {len(queried_ids)} queries, test accuracy {100 * acc:.2f}%, "
                f"spent {budget.spent(store):g}")

    if not state["rounds"]:
        commit(0, [], train_round(0, np.array([], np.int64)), 0)
    stopped = None
    for r in range(len(state["rounds"]), len(schedule) + 1):
        queried_ids = _queried(state)
        queried = np.fromiter((pos_of[x] for x in queried_ids), np.int64, len(queried_ids))
        if state["pending"] is not None and state["pending"]["round"] == r:
            chosen = np.asarray(state["pending"]["positions"], np.int64)
        else:
            b = schedule[r - 1] - len(queried)
            candidates = np.setdiff1d(np.arange(n_pool), queried)
            if b > len(candidates):
                raise ConfigError(f"round {r} asks for {b} points but only {len(candidates)} are left in the pool.")
            model = load_model(r - 1)
            chosen = _select(cfg, model, candidates, b, np.random.default_rng([cfg.seed, r]), x_lab, x_pool,
                             queried, teacher_val_acc, device)
            state["pending"] = {"round": r, "positions": chosen.tolist()}
            _atomic_json(state_path, state)  # saved before paying: a resumed run reuses this batch
        try:
            paid, _ = budget.charge(store, teacher, pool_ids[chosen], data.features[sp.pool[chosen]], batch_size=bs,
                                    distribute=cfg.distribute)
        except BudgetExhausted as e:
            stopped = f"budget exhausted before round {r}: {e}"
            if log:
                log(stopped)
            break
        all_q = np.concatenate([queried, chosen])
        acc = train_round(r, all_q)
        commit(r, queried_ids + pool_ids[chosen].tolist(), acc, paid)

    rounds = state["rounds"]
    pool_labels = data.labels[sp.pool]
    # how often the teacher was wrong on each round's new picks, over those whose true label the data
    # has (read only to report this, never to select): uncertainty samplers may buy mislabeled points
    # None where a round's picks have no known label (a real unlabeled pool: label -1)
    def _error(ids: list):
        y = pool_labels[[pos_of[x] for x in ids]]
        known = y >= 0
        return float((store.read(list(np.asarray(ids)[known])).argmax(1) != y[known]).mean()) if known.any() else None

    query_errors = [None] + [_error(rnd["ids"]) if rnd["ids"] else None for rnd in rounds[1:]]
    result = {"strategy": cfg.strategy, "seed": cfg.seed, "correction": cfg.correction, "retrain": cfg.retrain,
              "queries": [x["queries"] for x in rounds], "test_accuracy": [x["test_accuracy"] for x in rounds],
              "auc": auc([x["queries"] for x in rounds], [x["test_accuracy"] for x in rounds]),
              "teacher_error_of_queries": query_errors, "spent": budget.spent(store), "spent_per_round": [x["spent"] for x in rounds],
              "store_calls_per_round": [x.get("store_calls") for x in rounds],
              "setup_spent_at_start": state["spent_at_start"], "schedule": schedule, "stopped": stopped,
              "teacher_val_accuracy": teacher_val_acc, "teacher_fingerprint": store.fingerprint,
              "n_pool": n_pool, "n_labeled": len(sp.labeled), "n_val": len(sp.val), "n_test": len(sp.test),
              "dataset": data.name, "seconds": time.perf_counter() - t_start, "machine": machine_record()}
    if cfg.score_teacher and not len(store.missing(data.ids[sp.test])):
        result["teacher_test_accuracy"] = accuracy(store.read(data.ids[sp.test]), y_test)
    _atomic_json(out / "active.json", result)
    plot_curves({cfg.strategy: (result["queries"], result["test_accuracy"])}, out / "active.png",
                title=f"{data.name}: {cfg.strategy} (seed {cfg.seed})")
    return result


def _queried(state: dict) -> list:
    return [x for rnd in state["rounds"] for x in rnd["ids"]]


def _select(cfg: ActiveConfig, model, candidates, b, rng, x_lab, x_pool, queried, teacher_val_acc, device):
    """Gather what the strategy needs from the current student and call the selector."""
    from ..students.train import predict_proba
    name = cfg.strategy
    needs = SELECTORS[name].needs
    inputs: dict = {}
    if "probs" in needs:
        inputs["probs"] = predict_proba(model, x_pool[candidates], device=device)
    if "labeled_probs" in needs:
        inputs["labeled_probs"] = predict_proba(model, stack_rows(x_lab, x_pool[queried]), device=device)
    if "embeddings" in needs:
        inputs["embeddings"] = student_embeddings(model, x_pool[candidates], device=device)
        inputs["labeled_embeddings"] = student_embeddings(model, stack_rows(x_lab, x_pool[queried]),
                                                          device=device)
    if name == "rad":
        from .selection import select_rad
        return select_rad(inputs["probs"], teacher_val_acc, candidates, b, rng, solver=cfg.rad_solver,
                          rounding=cfg.rad_rounding, m_scale=cfg.rad_m_scale)
    return select(name, candidates, b, rng, teacher_accuracy=teacher_val_acc, **inputs)
