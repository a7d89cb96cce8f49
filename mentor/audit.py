"""Teacher audit: how far to trust the teacher, measured on V, before spending student compute.

Writes `audit.json` (reliability curve, top-k accuracy, per-class accuracy on V, calibration
temperature, estimated error rate on the pool) and `reliability.png` into the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .evaluate import confidence_auroc, expected_calibration_error
from .reliability import fit_reliability, fit_temperature, teacher_margin


def audit_teacher(teacher_probs_val, val_labels, teacher_probs_pool, *, n_classes: int,
                  class_names=None, min_val: int = 50) -> dict:
    """The audit numbers as a plain dict (no files): the function a user's own code calls."""
    rel = fit_reliability(teacher_probs_val, val_labels, n_classes=n_classes, min_val=min_val)
    pool_margin = teacher_margin(teacher_probs_pool)
    expected_right = rel.accuracy_at(pool_margin)
    out = rel.to_dict()
    out.update(
        estimated_pool_error_rate=float(1.0 - expected_right.mean()),
        estimated_pool_errors=float((1.0 - expected_right).sum()),
        n_pool=int(len(pool_margin)),
        pool_margin_quantiles={str(q): float(np.quantile(pool_margin, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        calibration_temperature=fit_temperature(teacher_probs_val, val_labels),
        ece=expected_calibration_error(teacher_probs_val, val_labels),
        confidence_auroc=confidence_auroc(teacher_probs_val, val_labels),
        smallest_k_90=rel.smallest_k(0.9),
        class_names=list(class_names) if class_names is not None else None,
    )
    out["_reliability"] = rel
    return out


def answer_stats(store, val_ids, pool_ids) -> dict:
    """What a teacher that can abstain or run out of context said beside its probabilities
    (an LLM's store columns `abstained`, `truncated`, `cost`): rates on V and the pool."""
    columns = set(getattr(store, "extra_columns", ()) or ())
    wanted = [c for c in ("abstained", "truncated", "scoring") if c in columns]
    if not wanted:
        return {}
    out = {}
    for name, ids in (("val", val_ids), ("pool", pool_ids)):
        table = store.read_extras(ids, columns=wanted)
        for c in ("abstained", "truncated"):
            if c in wanted:
                v = np.asarray([bool(x) for x in table.column(c).to_pylist() if x is not None])
                out[f"{c}_rate_{name}"] = float(v.mean()) if len(v) else None
        if "scoring" in wanted:
            modes = [x for x in table.column("scoring").to_pylist() if x is not None]
            out[f"scoring_{name}"] = {m: modes.count(m) for m in sorted(set(modes))}
    return out


def plot_reliability(audit: dict, path, *, title: str = "teacher reliability on V") -> Path:
    """Reliability curve (P(teacher right | margin)) with the per-class accuracy beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = audit["_reliability"]
    m, a = rel.curve(201)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(m, a, lw=2, label="isotonic fit on V")
    ax1.axhline(rel.accuracy, ls="--", color="grey", label=f"overall accuracy {rel.accuracy:.3f}")
    ax1.set(xlabel="teacher margin (top-1 − top-2 probability)", ylabel="P(teacher's label is right)",
            ylim=(0, 1.02), xlim=(0, 1), title=title)
    ax1.legend(loc="lower right")
    names = audit.get("class_names") or [str(c) for c in range(rel.n_classes)]
    acc = np.nan_to_num(rel.per_class_accuracy, nan=0.0)
    ax2.bar(range(rel.n_classes), acc)
    ax2.set_xticks(range(rel.n_classes), names, rotation=60 if rel.n_classes > 10 else 0, fontsize=8)
    ax2.set(ylim=(0, 1.02), ylabel="teacher accuracy on V", title=f"per class (V = {rel.n_val})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def audit_each_teacher(ctx, pool_ids) -> dict:
    """Several teachers: each one's audit on V (accuracy, curve, calibration, pool error estimate)
    from its own store, as `ensemble.json` names them."""
    from .pipeline import ENSEMBLE_NOTE, teacher_outputs
    from .store import TeacherStore
    data, sp = ctx.data, ctx.splits
    out = {}
    for name, t in json.loads((ctx.out / ENSEMBLE_NOTE).read_text())["teachers"].items():
        with TeacherStore.open(t["store"]) as store:
            t_val, t_pool = teacher_outputs(store, data.ids[sp.val], required=False), teacher_outputs(store, pool_ids)
        if t_val is None:
            out[name] = {"kind": t["kind"], "fingerprint": t["fingerprint"], "note": "no outputs on V"}
            continue
        a = audit_teacher(t_val, data.labels[sp.val], t_pool, n_classes=data.n_classes)
        a.pop("_reliability")
        out[name] = {"kind": t["kind"], "fingerprint": t["fingerprint"], "store": t["store"],
                     **{k: a[k] for k in ("accuracy", "ece", "calibration_temperature", "estimated_pool_error_rate",
                                          "curve", "confidence_auroc")}}
    return out


def audit_run(ctx, store=None, *, stored_pool_only: bool = False) -> dict:
    """Audit the configured teacher for a run: label V and the pool if needed, fit, write files.
    `stored_pool_only`: estimate the pool error rate on the pool rows already stored (an active
    run pays for part of the pool only), and never call the teacher."""
    from .pipeline import label, teacher_outputs
    store = store or label(ctx)
    data, sp = ctx.data, ctx.splits
    pool_ids = data.ids[sp.pool]
    if stored_pool_only:
        pool_ids = pool_ids[~np.isin(pool_ids.astype(str), store.missing(pool_ids))]
        if not len(pool_ids):
            raise ConfigError("the audit estimates the teacher's error rate on the pool, but no pool example has a "
                              "stored teacher output yet; label the pool (`mentor label`) or query it first.")
    t_val = teacher_outputs(store, data.ids[sp.val], required=False)
    if t_val is None:
        raise ConfigError("the audit needs teacher outputs on the validation set V; the teacher file does not "
                          "cover V. Add V's ids to the teacher file.")
    t_pool = teacher_outputs(store, pool_ids)
    result = audit_teacher(t_val, data.labels[sp.val], t_pool, n_classes=data.n_classes,
                           class_names=data.class_names)
    plot_reliability(result, ctx.out / "reliability.png", title=f"{data.name}: teacher reliability on V")
    result.pop("_reliability")
    result["teacher_fingerprint"] = store.fingerprint
    result.update(answer_stats(store, data.ids[sp.val], pool_ids))
    if getattr(ctx.cfg, "teachers", None) is not None:  # the combination above; each teacher below
        result["combine"], result["teachers"] = ctx.cfg.combine, audit_each_teacher(ctx, pool_ids)
    if stored_pool_only and len(pool_ids) < len(sp.pool):
        result["pool_note"] = (f"the pool estimates cover the {len(pool_ids)} pool examples the teacher answered "
                               f"so far (of {len(sp.pool)}).")
    (ctx.out / "audit.json").write_text(json.dumps(result, indent=2))
    return result
