"""`mentor bench llm --active`: `mentor active` with the LLM teacher through a real llama.cpp server,
priced per token — test accuracy of the student against the money paid for the teacher's labels,
for the rad, margin and random selectors.

Each (dataset, seed) prepares one split, one LLM teacher and one store; the selectors run in turn
on it (`bench.active` does the same), each round's new calls on threads (`distribute.engine:
threads`). Since the selectors share the store, a point one selector bought is free for the next;
so a row's `dollars` is what the selector's queries cost at their stored token counts (each row's
`cost` extra, from the server's `usage`), whoever paid, and `paid_here` is what its own run added
to the ledger. One row per (dataset, selector, seed, round).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .llm import FORTUNES_TOPICS, llm_suite

SELECTORS = ["random", "margin", "rad"]
PRICES = {"price_input": 0.15, "price_output": 0.60}  # made-up $ per million tokens (a small hosted model's)


def llm_active_suite(suite: str) -> dict:
    """Sizes of each suite. smoke: about half an hour per seed and data set on 2 busy CPU cores
    (top-logprobs through the server, ~1 s an example); tiny: the test's."""
    suites = {
        "tiny": {"split": {"n_labeled": 8, "n_val": 4, "n_test": 8, "n_pool": 8}, "budget": [2, 4],
                 "max_words": 8, "call_size": 1, "min_steps": 20},
        "smoke": {"split": {"n_labeled": 40, "n_val": 40, "n_test": 150, "n_pool": 150}, "budget": [10, 20, 35, 55],
                  "max_words": 40, "call_size": 4, "min_steps": 400},
        "standard": {"split": {"n_labeled": 100, "n_val": 200, "n_test": 500, "n_pool": 1000},
                     "budget": [25, 50, 100, 200, 330], "max_words": 60, "call_size": 8, "min_steps": 1000},
    }
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r} for `bench llm --active`; choose one of {', '.join(suites)}.")
    return suites[suite]


def _data_section(name: str, max_words: int) -> dict:
    if name == "fortunes4":
        return {"name": "fortunes", "options": {"topics": FORTUNES_TOPICS, "max_words": max_words}}
    return llm_suite("smoke")["data"][name]


def calls_in_flight(ledger: Path, start: int = 0) -> tuple[int, int]:
    """(calls sent, most calls in flight at once) in the ledger's lines after byte `start`: each
    `send` opens a call, its `done` / `failed` / `lost` closes it. Over 1 means calls overlapped."""
    sent, open_, most = 0, set(), 0
    with open(ledger, "rb") as fh:
        fh.seek(start)
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("e") == "send":
                sent += 1
                open_.add(r["call"])
                most = max(most, len(open_))
            elif r.get("e") in ("done", "failed", "lost"):
                open_.discard(r.get("call"))
    return sent, most


def bench_llm_active(suite: str = "smoke", *, seeds: int = 2, first_seed: int = 0, selectors: list[str] | None = None,
                     datasets: list[str] | None = None, json_out: Path | None = None,
                     work_dir: Path = Path("bench-out/llm-active"), server_url: str | None = None,
                     model_path: str | None = None, backend: str = "server", scoring: str | None = None,
                     workers: int = 2,
                     correction: str = "vanilla-soft", prices: dict | None = None, log: Callable = print) -> list[dict]:
    """Rows for every (dataset, seed, selector, round); starts a llama.cpp server on 127.0.0.1
    for the run unless `server_url` points at one serving SmolLM2. `backend: local` runs the same
    weights in this process instead (default scoring there: label likelihood, which llama.cpp's
    server answers ~40× slower; through the server: top-logprobs), priced on the tokenizer's counts."""
    from ..active.loop import active_loop, label_on_pool, parse_active_config
    from ..pipeline import get_teacher, open_store, prepare
    from .llm import _llm_section
    from .quality import _append_row
    spec = llm_active_suite(suite)
    selectors = selectors or SELECTORS
    names = datasets or ["fine-foods", "fortunes4"]
    known = ["fine-foods", "fortunes4"]
    if [n for n in names if n not in known]:
        raise ConfigError(f"data sets {[n for n in names if n not in known]} are not in `bench llm --active` "
                          f"({', '.join(known)}).")
    prices = {**PRICES, **(prices or {})}
    if backend not in ("server", "local"):
        raise ConfigError(f"backend must be 'server' or 'local', got {backend!r}.")
    scoring = scoring or ("top-logprobs" if backend == "server" else "label-likelihood")
    from .quality import start_rows
    start_rows(json_out, names, first_seed=first_seed)
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        if server_url is None and backend == "server":
            from ..teachers.llm.llamacpp import llama_server
            server_url = stack.enter_context(llama_server(model_path=model_path))
        # examples per stored call: small, so that every round's batch is several calls on threads
        llm = {**_llm_section(backend, scoring, 0, server_url, model_path), **prices, "batch_size": spec["call_size"]}
        for name in names:
            for seed in range(first_seed, first_seed + seeds):
                base = {"data": _data_section(name, spec["max_words"]), "split": spec["split"],
                        "student": {"kind": "tfidf"}, "train": {"epochs": 20, "min_steps": spec["min_steps"]}, "seed": seed,
                        "output_dir": str(Path(work_dir) / suite / name / f"seed-{seed}"),
                        "teacher": {"kind": "llm", "llm": llm}, "score_teacher": False,
                        "distribute": {"engine": "threads", "workers": workers, "in_flight_per_worker": 1}}
                ctx = prepare(parse_active_config({**base, "budget": [1]}), force=True)
                teacher = get_teacher(ctx)
                store = open_store(ctx, teacher)
                val = ctx.splits.val  # V (RAD's m̂, corrections) once, before the selectors, on threads
                label_on_pool(store, teacher, ctx.data.ids[val], ctx.data.features[val],
                              batch_size=ctx.cfg.store.batch_size, distribute=ctx.cfg.distribute)
                for sel in selectors:
                    cfg = parse_active_config({**base, "budget": spec["budget"], "strategy": sel,
                                               "correction": correction})
                    ledger = store.path / "_ledger.jsonl"
                    pos = ledger.stat().st_size if ledger.exists() else 0
                    spent0, t0 = store.spent, time.perf_counter()
                    store.close()
                    res = active_loop(ctx, teacher, cfg=cfg, out=ctx.out / f"selector-{sel}")
                    seconds = time.perf_counter() - t0
                    store = open_store(ctx, teacher)  # what the loop's own store object wrote
                    sent, most = calls_in_flight(ledger, pos)
                    rows += _rows(ctx, store, res, name=name, selector=sel, suite=suite, backend=backend,
                                  scoring=scoring, prices=prices, workers=workers, paid=store.spent - spent0, sent=sent,
                                  in_flight=most, seconds=seconds, json_out=json_out, append=_append_row)
                    last = rows[-1]
                    log(f"{name} seed={seed} {sel:7s} ${last['dollars']:.6f} for {last['queries']} queries, "
                        f"acc {100 * last['test_accuracy']:.1f} (round 0 {100 * res['test_accuracy'][0]:.1f}); "
                        f"{sent} calls, at most {most} at once; {seconds:.0f} s")
    return rows


def _rows(ctx, store, res, *, name, selector, suite, backend, scoring, prices, workers, paid, sent, in_flight, seconds,
          json_out, append) -> list[dict]:
    """One row per round: the money the cumulative queries cost at their stored token counts."""
    from ..active.loop import STATE_NAME
    state = json.loads((ctx.out / f"selector-{selector}" / STATE_NAME).read_text())
    ids_so_far: list[str] = []
    val_ids = ctx.data.ids[ctx.splits.val].astype(str)
    setup = _total(store.read_extras(val_ids, columns=["cost"]), "cost")
    out = []
    calls0 = state["rounds"][0].get("store_calls") or 0
    for rnd in state["rounds"]:
        ids_so_far += rnd["ids"]
        if ids_so_far:
            ex = store.read_extras(ids_so_far, columns=["cost", "input_tokens", "output_tokens"])
            dollars, tin, tout = _total(ex, "cost"), int(_total(ex, "input_tokens")), int(_total(ex, "output_tokens"))
        else:
            dollars, tin, tout = 0.0, 0, 0
        row = {"bench": "llm-active", "dataset": name, "selector": selector, "seed": res["seed"], "suite": suite,
               "round": rnd["round"], "queries": rnd["queries"], "dollars": dollars, "input_tokens": tin,
               "output_tokens": tout, "store_calls": (rnd.get("store_calls") or 0) - calls0,
               "test_accuracy": rnd["test_accuracy"], "teacher_val_accuracy": res["teacher_val_accuracy"],
               "setup_dollars": setup, "paid_here": paid, "calls_sent": sent,
               "max_calls_in_flight": in_flight, "workers": workers, "backend": backend, "scoring": scoring,
               "correction": res["correction"], "n_pool": res["n_pool"], **prices, "seconds": seconds}
        append(json_out, row)
        out.append(row)
    return out


def _total(table, column: str) -> float:
    return float(np.nansum(table.column(column).to_pandas().to_numpy(float)))


def accuracy_at(dollars, accuracy, level: float) -> float | None:
    """A selector's test accuracy at `level` dollars, linear between its rounds; None past its last round."""
    d, a = np.asarray(dollars, float), np.asarray(accuracy, float)
    if level > d[-1] + 1e-15:
        return None
    return float(np.interp(level, d, a))


def summarize_llm_active(rows: list[dict], levels: int = 4) -> str:
    """Markdown: per data set, accuracy (mean ± std over seeds) at equal money — dollar levels
    evenly spaced up to the least any selector spent on its last round — and the paired difference
    to random; then each selector's money and tokens per query."""
    from .quality import _mean_std
    out = []
    key = (lambda r: (r["dataset"], r.get("backend", "server"), r["scoring"]))  # noqa: E731
    for k in dict.fromkeys(map(key, rows)):
        rs = [r for r in rows if key(r) == k]
        curves = {}
        for r in sorted(rs, key=lambda r: r["round"]):
            c = curves.setdefault((r["selector"], r["seed"]), ([], []))
            c[0].append(r["dollars"])
            c[1].append(r["test_accuracy"])
        top = min(c[0][-1] for c in curves.values())
        grid = [top * (i + 1) / levels for i in range(levels)]
        sels = list(dict.fromkeys(s for s, _ in curves))
        seeds = sorted({s for _, s in curves})
        out += [f"**{k[0]}**, {k[2]} ({k[1]}) (teacher accuracy on V {_mean_std([100 * r['teacher_val_accuracy'] for r in rs if r['round'] == 0 and r['selector'] == sels[0]])} %; "
                f"setup: V labeled for ${np.mean([r['setup_dollars'] for r in rs]):.6f})", "",
                "| selector | " + " | ".join(f"acc. at ${g:.6f}" for g in grid) + " | − random at the last | seeds |",
                "|---|" + "---|" * (len(grid) + 2)]
        for s in sels:
            cells, last = [], None
            for g in grid:
                acc = [accuracy_at(*curves[s, k], g) for k in seeds if (s, k) in curves]
                cells.append(_mean_std([100 * a for a in acc]) if None not in acc else "")
            if s != "random" and all((x, k) in curves for x in (s, "random") for k in seeds):
                last = _mean_std([100 * (accuracy_at(*curves[s, k], grid[-1]) - accuracy_at(*curves["random", k], grid[-1]))
                                  for k in seeds], signed=True)
            out.append(f"| {s} | " + " | ".join(cells) + f" | {last or ''} | {len(seeds)} |")
        out += ["", "| selector | queries | $ (last round) | $ per query | input tokens per query | calls sent | most calls at once |",
                "|---|---|---|---|---|---|---|"]
        for s in sels:
            lr = [r for r in rs if r["selector"] == s and r["round"] == max(x["round"] for x in rs if x["selector"] == s)]
            q = np.mean([r["queries"] for r in lr])
            out.append(f"| {s} | {q:.0f} | {np.mean([r['dollars'] for r in lr]):.6f} | "
                       f"{np.mean([r['dollars'] / max(r['queries'], 1) for r in lr]):.3g} | "
                       f"{np.mean([r['input_tokens'] / max(r['queries'], 1) for r in lr]):.0f} | "
                       f"{np.mean([r['calls_sent'] for r in lr]):.1f} | {max(r['max_calls_in_flight'] for r in lr)} |")
        out.append("")
    return "\n".join(out)
