"""The GUIDE benchmark (`mentor bench guide`): initialisers and token-level KD at equal training tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..lm.distill import parse_lm_config, prepare_lm, run_lm_distill

# ---------------------------------------------------------------------------------------- benchmark

ARMS = {"random": ("random", "none"), "weight-selection": ("weight-selection", "none"),
        "guide": ("guide", "none"), "kd": ("random", "kd"), "guide+kd": ("guide", "kd")}


def guide_suite(suite: str) -> dict:
    """Config template of a suite. smoke: a few minutes on one CPU core; medium: the smoke student
    at 4× the tokens; standard: a wider, deeper student on longer rows (about an hour per seed on
    one CPU core); large: the standard student on ≈1M tokens, for a GPU."""
    wide = {"hidden_size": 288, "num_hidden_layers": 6, "num_attention_heads": 3,
            "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 768}
    suites = {
        "smoke": {"corpus": {"seq_len": 64, "max_val_rows": 48},
                  "train": {"tokens": 16384, "batch_size": 8, "lr": 2e-3, "eval_every": 8}},
        "medium": {"corpus": {"seq_len": 64, "max_val_rows": 48},
                   "train": {"tokens": 65536, "batch_size": 8, "lr": 2e-3, "eval_every": 32}},
        "standard": {"corpus": {"seq_len": 128, "max_val_rows": 96}, "student": wide,
                     "train": {"tokens": 131072, "batch_size": 8, "lr": 1e-3, "eval_every": 32}},
        "large": {"corpus": {"seq_len": 128, "max_val_rows": 256}, "student": wide,
                  "train": {"tokens": 1_048_576, "batch_size": 16, "lr": 1e-3, "eval_every": 64}},
    }
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(suites)}.")
    return suites[suite]


def bench_guide(suite: str = "smoke", *, seeds: int = 1, first_seed: int = 0, arms: list[str] | None = None,
                json_out: Path | None = None, work_dir: Path = Path("bench-out/guide"),
                log: Callable = print) -> list[dict]:
    """Every arm at equal training tokens, per seed; rows carry gap_reduction against `random`.

    Seeds are first_seed … first_seed + seeds − 1, so seeds can run as separate processes; they
    may share work_dir (run folders differ by seed; the teacher store is locked per call)."""
    arms = arms or list(ARMS)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"unknown arms {bad}; choose from {', '.join(ARMS)}.")
    if "random" not in arms:
        arms = ["random"] + arms
    base = guide_suite(suite)
    work_dir = Path(work_dir) / suite
    store = str(work_dir / "teacher-store")
    if json_out is not None and Path(json_out).exists():
        Path(json_out).unlink()
    rows, data = [], None
    for seed in range(first_seed, first_seed + seeds):
        losses = {}
        for arm in arms:
            init, loss = ARMS[arm]
            doc = {**base, "seed": seed, "output_dir": str(work_dir / f"seed-{seed}" / arm),
                   "init": {"method": init}, "loss": {"kind": loss}, "store": {"path": store}}
            cfg = parse_lm_config(doc, f"bench guide {suite}")
            data = data or prepare_lm(cfg, log=log)
            s = run_lm_distill(cfg, data=data)
            losses[arm] = s["val_loss"]
            gap = losses["random"] - s["teacher_val_loss"]
            row = {"arm": arm, "seed": seed, "suite": suite, "val_loss": s["val_loss"],
                   "init_val_loss": s["curve"][0]["val_loss"],  # before any training: what the initialiser alone gives
                   "teacher_val_loss": s["teacher_val_loss"], "tokens": s["tokens"],
                   "gap_reduction": (losses["random"] - s["val_loss"]) / gap if gap > 0 else float("nan"),
                   "seconds": s["seconds"], "device": s["device"], "student_parameters": s["init_info"]["parameters"],
                   "teacher_fingerprint": s["teacher_fingerprint"], "val_rows": data.info["rows_val"]}
            rows.append(row)
            if json_out is not None:
                Path(json_out).parent.mkdir(parents=True, exist_ok=True)
                with open(json_out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            log(f"seed={seed} {arm:17s} val_loss={s['val_loss']:.4f} teacher={s['teacher_val_loss']:.4f} "
                f"gap_reduction={row['gap_reduction']:+.3f} ({s['seconds']:.0f}s)")
    return rows


def summarize_guide(rows: list[dict]) -> str:
    """Markdown: mean ± std over seeds of validation loss and gap reduction per arm, then the
    comparisons the GUIDE claim rests on, paired by seed (same data order and validation rows)."""
    sd = (lambda a: np.std(a, ddof=1) if len(a) > 1 else 0.0)
    out = ["| arm | val loss at init | val loss | gap reduction | seeds |", "|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        v = np.array([r["val_loss"] for r in rows if r["arm"] == arm])
        g = np.array([r["gap_reduction"] for r in rows if r["arm"] == arm])
        i = np.array([r.get("init_val_loss", np.nan) for r in rows if r["arm"] == arm])
        out.append(f"| {arm} | {i.mean():.3f} ± {sd(i):.3f} | {v.mean():.4f} ± {sd(v):.4f} | {g.mean():+.3f} ± {sd(g):.3f} "
                   f"| {len(v)} |")
    gap = {(r["seed"], r["arm"]): r["gap_reduction"] for r in rows}
    arms = {arm for _, arm in gap}
    pairs = [(a, b) for a, b in (("guide", "weight-selection"), ("guide+kd", "guide"), ("guide+kd", "kd"))
             if a in arms and b in arms]
    if pairs:
        out += ["", "| comparison | gap reduction difference (paired) | first ahead in | seeds |", "|---|---|---|---|"]
    for a, b in pairs:
        d = np.array([gap[s, a] - gap[s, b] for s, arm in gap if arm == a and (s, b) in gap])
        out.append(f"| {a} − {b} | {d.mean():+.3f} ± {sd(d):.3f} | {(d > 0).sum()}/{len(d)} | {len(d)} |")
    return "\n".join(out)
