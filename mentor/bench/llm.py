"""`mentor bench llm`: an LLM as teacher on real text, through a real OpenAI-compatible server
(llama.cpp) and the same weights locally.

Two kinds of rows (JSON lines):
- `row: "teacher"` — one per (dataset, seed, backend, scoring mode, shots): the LLM's accuracy
  (abstentions count as wrong; `accuracy_answered` on the rows it answered; `argmax_accuracy`
  the plain argmax, where a uniform row falls on the first class), calibration error, AUROC of
  its confidence and abstention rate on test examples, with tokens and seconds per example;
- `row: "student"` — one per (dataset, seed, method), as `bench quality` writes them, with the
  LLM (label likelihood, local backend: the same weights the server runs) labeling V, test and the pool.

The question the rows answer: is a student trained on the LLM's full label distribution (with
mentor's corrections) better than one trained on its argmax labels — what labeling tools give?
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, MentorError
from .quality import _append_row, random_rows

TEACHER_METHODS = ["labeled-only", "vanilla-hard", "vanilla-soft", "calibrated-soft", "slam", "slam-hard",
                   "weighted-margin", "auto"]
FORTUNES_TOPICS = ["computers", "food", "sports", "medicine"]  # clearly distinct topics of the 17


def llm_suite(suite: str) -> dict:
    """Data, sizes and the teacher grid of each suite. smoke: minutes on 2 CPU cores."""
    data = {"fine-foods": {"name": "fine-foods"},
            "fortunes4": {"name": "fortunes", "options": {"topics": FORTUNES_TOPICS}}}
    suites = {
        # label likelihood through llama.cpp's server is slow (it sorts the vocabulary in Python for
        # every echoed prompt token), so its rows use fewer test examples (`n_server_exact`)
        "smoke": {"split": {"n_labeled": 40, "n_val": 60, "n_test": 60, "n_pool": 120}, "n_teacher": 30,
                  "n_server_exact": 6,
                  "grid": [("local", "label-likelihood", 0), ("local", "label-likelihood", 1),
                           ("local", "label-likelihood-calibrated", 0), ("server", "label-likelihood", 0),
                           ("server", "top-logprobs", 0), ("server", "top-logprobs", 1),
                           ("server", "sampling", 0), ("server", "single-answer", 0),
                           ("local", "label-likelihood", 1, "similar"), ("server", "top-logprobs", 1, "similar")],
                  "student_teacher": {"backend": "local", "scoring": "label-likelihood", "shots": 0}},
        # smoke's similar-shots rows alone (same split, seeds and examples as smoke, whose rows give the
        # zero-shot and fixed-per-class figures): the few-shot examples most similar to each text in
        # A by MiniLM embedding, as many as one per class gives, so the prompts are as long
        "shots": {"split": {"n_labeled": 40, "n_val": 60, "n_test": 60, "n_pool": 120}, "n_teacher": 30,
                  "n_server_exact": 6, "students": False,
                  "grid": [("local", "label-likelihood", 1, "similar"), ("server", "top-logprobs", 1, "similar")]},
        # fortunes4 has 1,331 usable texts: its pool is what is left after A, V and test (~530)
        "standard": {"split": {"n_labeled": 100, "n_val": 300, "n_test": 500, "n_pool": 1500}, "n_teacher": 200,
                     "split_of": {"fortunes4": {"n_labeled": 100, "n_val": 300, "n_test": 400, "n_pool": None}},
                     "n_server_exact": 40,
                     "grid": [(b, m, k) for b in ("local", "server") for m in ("label-likelihood",) for k in (0, 1)]
                     + [("local", "label-likelihood-calibrated", k) for k in (0, 1)]
                     + [("server", m, k) for m in ("top-logprobs", "sampling", "single-answer") for k in (0, 1)]
                     + [(b, m, 1, "similar") for b, m in (("local", "label-likelihood"), ("server", "top-logprobs"))],
                     "student_teacher": {"backend": "local", "scoring": "label-likelihood", "shots": 0}},
    }
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(suites)}.")
    return {"data": data, **suites[suite]}


def _llm_section(backend: str, mode: str, shots: int, server_url: str | None, model_path: str | None,
                 selection: str = "per-class") -> dict:
    """`shots` per class; for `similar` selection the caller passes the total per example."""
    calibrate = mode.endswith("-calibrated")
    llm = {"scoring": mode.removesuffix("-calibrated"), "shots": shots, "calibrate": calibrate,
           "shot_selection": selection if shots else "per-class"}
    if backend == "server":  # the GGUF's tokenizer gives the chat template and exact token counts
        from ..teachers.llm.llamacpp import default_gguf
        llm["endpoint"] = {"url": server_url, "model": "smollm2", "context_tokens": 2048,
                           "tokenizer": model_path or str(default_gguf()),
                           "timeout_s": 600.0}  # a busy machine's server answers queued requests slowly
    else:
        llm["local"] = {"path": model_path} if model_path else {}
    return llm


def run_template(spec: dict, name: str) -> dict:
    """What every run on data set `name` shares: the data, the suite's split, a TF-IDF student."""
    return {"data": spec["data"][name], "split": spec.get("split_of", {}).get(name, spec["split"]),
            "student": {"kind": "tfidf"}, "train": {"epochs": 20}}


def student_config(spec: dict, name: str, store: Path, server_url: str | None = None,
                   model_path: str | None = None) -> dict:
    """The students' run (partial RunConfig): the suite's zero-shot LLM teacher and one store for
    every seed (its answers do not depend on the seed, so an example in several splits is paid once)."""
    st = spec["student_teacher"]
    assert st["shots"] == 0, "a store shared across seeds needs a teacher without shots from A"
    llm = _llm_section(st["backend"], st["scoring"], st["shots"], server_url, model_path)
    return {**run_template(spec, name), "teacher": {"kind": "llm", "llm": llm}, "store": {"path": str(store)}}


def teacher_row(ctx, teacher, index, *, batch_size: int = 16) -> dict:
    """Label `index` (positions in the data) with `teacher` directly and score it on the labels."""
    from ..evaluate import accuracy, confidence_auroc, expected_calibration_error
    data = ctx.data
    probs, tokens, abstained = [], 0, []
    t0 = time.perf_counter()
    for s in range(0, len(index), batch_size):
        part = index[s:s + batch_size]
        ans = teacher.answer(data.features[part], data.ids[part])
        probs.append(ans.probs)
        tokens += sum(ans.extras["input_tokens"]) + sum(ans.extras["output_tokens"])
        abstained += [bool(a) for a in ans.extras["abstained"]]
    seconds = time.perf_counter() - t0
    p, y, abst = np.concatenate(probs), data.labels[index], np.array(abstained, bool)
    right = (p.argmax(1) == y) & ~abst  # an abstention (a uniform row) is not a right answer
    return {"teacher_accuracy": float(right.mean()),
            "accuracy_answered": float(right[~abst].mean()) if (~abst).any() else None,
            "argmax_accuracy": accuracy(p, y), "ece": expected_calibration_error(p, y),
            "auroc": confidence_auroc(p, y), "abstain_rate": float(abst.mean()),
            "tokens_per_example": tokens / len(index), "seconds_per_example": seconds / len(index),
            "n_examples": int(len(index)), "teacher_fingerprint": teacher.fingerprint}


def bench_llm(suite: str = "smoke", *, seeds: int = 1, json_out: Path | None = None,
              work_dir: Path = Path("bench-out/llm"), datasets: list[str] | None = None,
              server_url: str | None = None, model_path: str | None = None, students: bool = True,
              teachers: bool = True, skip: list[str] | None = None, first_seed: int = 0,
              log: Callable = print) -> list[dict]:
    """Teacher rows for every grid entry, then student rows; starts a llama.cpp server on
    127.0.0.1 for the run unless `server_url` points at one. The students' teacher (zero-shot,
    so its answer does not depend on the seed) keeps one store per data set across seeds: an
    example in several seeds' splits is paid once, as a user reusing `store.path` would.
    `skip`: grid entries left out, as "backend/scoring" (e.g. "server/label-likelihood").
    Seeds first_seed .. first_seed + seeds − 1 (rows appended when first_seed > 0)."""
    from ..config import parse_config
    from ..pipeline import prepare
    from ..teachers.llm.teacher import build_llm_teacher
    from ..config import LLMConfig
    from .quality import quality
    spec = llm_suite(suite)
    names = datasets or list(spec["data"])
    unknown = [n for n in names if n not in spec["data"]]
    if unknown:
        raise ConfigError(f"data sets {unknown} are not in the llm suite ({', '.join(spec['data'])}).")
    from .quality import start_rows
    start_rows(json_out, names, first_seed=first_seed)
    rows: list[dict] = []
    known, skip = {f"{g[0]}/{g[1]}" for g in spec["grid"]}, set(skip or ())
    if skip - known:
        raise ConfigError(f"--skip {sorted(skip - known)} names no grid entry of the {suite} suite; "
                          f"its entries are {', '.join(sorted(known))}.")
    grid = [g for g in spec["grid"] if f"{g[0]}/{g[1]}" not in skip] if teachers else []
    with contextlib.ExitStack() as stack:
        if server_url is None and any(g[0] == "server" for g in grid) or (
                students and spec.get("students", True) and spec["student_teacher"]["backend"] == "server"):
            from ..teachers.llm.llamacpp import llama_server
            server_url = stack.enter_context(llama_server(model_path=model_path))
        for name in names:
            template = run_template(spec, name)
            for seed in range(first_seed, first_seed + seeds) if grid else ():
                out = Path(work_dir) / suite / name / f"seed-{seed}"
                ctx = prepare(parse_config({**template, "seed": seed, "output_dir": str(out / "teachers"),
                                            "teacher": {"kind": "llm"}}), force=True)
                a = ctx.splits.labeled
                for backend, mode, shots, *sel in grid:
                    sel = sel[0] if sel else "per-class"
                    n_shots = shots * ctx.n_classes if sel in ("per-class", "similar") else 0
                    exact_on_server = backend == "server" and mode.startswith("label-likelihood")
                    index = random_rows(ctx.splits.test, spec["n_server_exact" if exact_on_server else "n_teacher"], seed)
                    cfg = LLMConfig.model_validate(_llm_section(
                        backend, mode, n_shots if sel == "similar" else shots, server_url, model_path, sel))
                    teacher = build_llm_teacher(cfg, labels=ctx.data.class_names, a_texts=ctx.data.features[a],
                                                a_labels=ctx.data.labels[a], a_ids=ctx.data.ids[a], seed=seed)
                    row = {"dataset": name, "row": "teacher", "scoring": mode, "shots": shots, "backend": backend,
                           "shot_selection": sel if shots else "none", "n_shots": n_shots, "seed": seed,
                           "suite": suite}
                    try:
                        row.update(teacher_row(ctx, teacher, index))
                    except MentorError as e:  # one setting failing is a result; the grid goes on
                        row["error"] = str(e)
                        _append_row(json_out, row)
                        log(f"{name} seed={seed} teacher {backend} {mode} shots={shots} {row['shot_selection']}: {e}")
                        continue
                    rows.append(row)
                    _append_row(json_out, row)
                    log(f"{name} seed={seed} teacher {backend:6s} {mode:28s} shots={shots} {row['shot_selection']} "
                        f"acc={100 * row['teacher_accuracy']:.1f} ece={row['ece']:.3f} "
                        f"abstain={row['abstain_rate']:.2f} {row['seconds_per_example']:.2f} s/ex")
            if students and spec.get("students", True):
                st = spec["student_teacher"]
                store = Path(work_dir) / "students" / suite / name / "store"
                cfgs = {name: student_config(spec, name, store, server_url, model_path)}
                def student_row(r, st=st):  # written as soon as measured: a killed run keeps its rows
                    r = {**r, "row": "student", "scoring": st["scoring"], "shots": st["shots"], "backend": st["backend"]}
                    rows.append(r)
                    _append_row(json_out, r)
                quality(suite, seeds=seeds, first_seed=first_seed, methods=["teacher"] + TEACHER_METHODS, datasets=[name],
                        work_dir=Path(work_dir) / "students", configs=cfgs, log=log, on_row=student_row)
    return rows


def summarize_llm(rows: list[dict]) -> str:
    """Markdown: the teacher grid (mean ± std over seeds), then students, then the answer to
    'full distribution + corrections vs argmax labels' as paired gains over vanilla-hard."""
    from .quality import _mean_std, report
    teacher = [r for r in rows if r.get("row") == "teacher" and "error" not in r]
    out = [f"failed: {r['dataset']} seed {r['seed']} {r['backend']} {r['scoring']} shots={r['shots']} "
           f"{r.get('shot_selection', '')}: {r['error']}" for r in rows if "error" in r]
    out += [""] if out else []
    if teacher:
        out += ["| dataset | backend | scoring | shots | accuracy (%) | ECE | AUROC | abstain | tokens/ex | s/ex | seeds |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        # rows written before `shot_selection` was recorded chose their shots per class
        key = (lambda r: (r["dataset"], r["backend"], r["scoring"], r["shots"],  # noqa: E731
                          r.get("shot_selection", "per-class" if r["shots"] else "none")))
        keys = list(dict.fromkeys(map(key, teacher)))
        for k in keys:
            rs = [r for r in teacher if key(r) == k]
            shots = f"{k[3]}" if k[4] in ("none", "per-class") else f"{k[3]} similar"
            col = lambda f: [r[f] for r in rs if r[f] is not None]  # noqa: E731
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {shots} | {_mean_std([100 * x for x in col('teacher_accuracy')])} "
                       f"| {np.mean(col('ece')):.3f} | {np.mean(col('auroc')) if col('auroc') else float('nan'):.3f} "
                       f"| {np.mean(col('abstain_rate')):.2f} | {np.mean(col('tokens_per_example')):.0f} "
                       f"| {np.mean(col('seconds_per_example')):.2f} | {len(rs)} |")
    student = [r for r in rows if r.get("row") == "student"]
    if student:
        out += ["", "Students distilled from the LLM (argmax labels = vanilla-hard):", "", report(student, "vanilla-hard")]
    return "\n".join(out)
