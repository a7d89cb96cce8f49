"""Command line: `mentor demo | run | label | train | evaluate | methods | bench ...`.

Thin: every command validates its config, calls the Python API in `mentor.pipeline` /
`mentor.bench`, and prints a short table. Errors from bad input are shown as one clear message
(no traceback) and exit with status 2.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .errors import ConfigError, MentorError

if TYPE_CHECKING:
    from .config import RunConfig

# Heavy modules (torch, pyarrow, scikit-learn, rich) are imported inside the commands that need
# them, so `mentor --help`, `mentor methods` and `mentor check-config` start in a fraction of a second.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mentor: distill a big teacher into a small student with few labels and an unlabeled pool.")
bench_app = typer.Typer(no_args_is_help=True, help="Rerunnable benchmarks (quality, speed).")
app.add_typer(bench_app, name="bench")
store_app = typer.Typer(no_args_is_help=True, help="A teacher-output store: its bill and health (status, repair).")
app.add_typer(store_app, name="store")


@functools.lru_cache(maxsize=None)
def _console():
    """rich's Console with markup off: ids, paths and messages print as they are (a `[...]` in
    them is text, never a style tag). Created on first use: rich is not needed for --help."""
    from rich.console import Console
    return Console(markup=False, highlight=False, emoji=False)


def out(*objects) -> None:
    _console().print(*objects)


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


warnings.formatwarning = _plain_warning  # the CLI's warnings are messages to a user, not source locations


def print_error(message: str) -> None:
    """One plain-text message on stderr; nothing in it is interpreted."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def os_error_message(e: OSError) -> str | None:
    """What a failed write means to the user, or None for an error that is not theirs to fix."""
    where = e.filename or "a file"
    if e.errno == errno.ENOSPC:
        return (f"the disk holding {where} is full ({e.strerror}). Free some space and run the same command "
                "again: what finished before (stored teacher outputs, the fitted teacher, checkpoints) is kept "
                "on disk and reused, nothing is paid twice.")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {where}: {e.strerror}. Choose a writable location (output_dir, store.path) or fix "
                "its permissions; files written before this point are kept.")
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return (f"{where}: {e.strerror}. A folder mentor writes to is a file (or the other way round); "
                "choose another output_dir or store.path.")
    return None


# the commands that train data-parallel under torchrun; the others run as one process
DISTRIBUTED_COMMANDS = ("run_cmd", "train_cmd", "demo")


def _check_launch(name: str) -> None:
    """Under torchrun with several processes, only `run`, `train` and `demo` make sense."""
    import os
    if "WORLD_SIZE" not in os.environ or name in DISTRIBUTED_COMMANDS:  # torch is imported only under a launcher
        return
    from .students.distributed import launched
    if launched() is not None:
        command = name.removesuffix("_cmd").replace("_", " ")
        raise ConfigError(f"`mentor {command}` does not run under torchrun (WORLD_SIZE="
                          f"{os.environ['WORLD_SIZE']}): only `mentor run`, `mentor train` and `mentor demo` train "
                          f"data-parallel. Run `python -m mentor.cli {command} ...` as one process.")


def _is_main() -> bool:
    """Rank 0 under torchrun, or the only process: the one that prints results."""
    from .students.distributed import is_main
    return is_main()


def _leave_process_group() -> None:
    """Under torchrun, every rank leaves the process group together once the command succeeded."""
    import os
    if "WORLD_SIZE" in os.environ:  # torch is imported only under a launcher
        from .students.distributed import finish
        finish()


def _guard(fn):
    """Show bad input (MentorError) and unwritable or full disks as one plain message, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_launch(fn.__name__)
            result = fn(*args, **kwargs)
            _leave_process_group()
            return result
        except MentorError as e:
            print_error(str(e))
            raise typer.Exit(2) from None
        except OSError as e:
            message = os_error_message(e)
            if message is None:
                raise
            print_error(message)
            raise typer.Exit(2) from None
    return wrapper


def _overrides(sets: list[str] | None) -> dict:
    out = {}
    for item in sets or []:
        if "=" not in item:
            raise MentorError(f"--set expects KEY=VALUE (e.g. --set seed=3), got {item!r}")
        from .config import load_yaml
        key, value = item.split("=", 1)
        try:
            out[key] = load_yaml(value)
        except Exception as e:  # yaml.YAMLError; yaml is imported lazily
            raise ConfigError(f"--set {item}: the value is not valid YAML ({e}).") from None
    return out


def _config(path: Path, sets: list[str] | None) -> "RunConfig":
    from .config import load_config
    return load_config(path, _overrides(sets))


def print_summary(metrics: dict) -> None:
    from rich.table import Table
    z = metrics["sizes"]
    table = Table(title=f"{metrics['data']['name']}: A={z['n_labeled']} V={z['n_val']} U={z['n_pool']} "
                        f"test={z['n_test']}")
    table.add_column("model")
    table.add_column("test acc.", justify="right")
    table.add_column("NLL", justify="right")
    table.add_column("ECE", justify="right")
    table.add_column("V acc.", justify="right")
    val = {"teacher": metrics.get("teacher_val_accuracy")}
    for label, key in (("teacher", "teacher"), ("labeled-only student", "labeled_only"),
                       (f"distilled student ({metrics['method']})", "student")):
        if key in metrics:
            m = metrics[key]
            v = val.get(key, m.get("val_accuracy"))
            table.add_row(label, f"{100 * m['accuracy']:.2f}%", f"{m['nll']:.3f}", f"{m['ece']:.3f}",
                          "" if v is None else f"{100 * v:.2f}%")
    out(table)
    from .evaluate import method_advice
    advice = method_advice(metrics)
    if advice:
        out(advice["text"])
    agree = metrics["student"].get("agreement_with_teacher")
    agree = "" if agree is None else f"   agreement with teacher: {agree:.3f}"
    if metrics.get("gap_closed") is not None:
        out(f"gap closed: {metrics['gap_closed']:.2f}{agree}")
    elif metrics.get("gap_closed_note"):
        out(f"gap closed: {metrics['gap_closed_note']}.{agree}")
    epochs = metrics.get("train_info", {}).get("epochs_note")
    if epochs:
        out(epochs)
    ens = metrics.get("teachers")
    if ens:  # several teachers: the "teacher" row above is their combination
        for name, t in ens["teachers"].items():
            acc = " ".join(f"{k} {100 * t[k + '_accuracy']:.2f}%" for k in ("val", "test")
                           if t.get(k + "_accuracy") is not None)
            weight = "" if t.get("log_linear_weight") is None else f", log-linear weight {t['log_linear_weight']:.3f}"
            out(f"teacher {name} ({t['kind']}): {acc}{weight}")
        out(f"the teacher row is their combination: {ens['combine']}")
        if ens.get("note"):
            out(f"note: {ens['note']}")


SetOpt = typer.Option(None, "--set", help="Override a config value, e.g. --set seed=3 --set split.n_labeled=200")
ForceOpt = typer.Option(False, "--force", help="output_dir holds a run with another config: replace its results "
                                               "(its stored teacher outputs are kept).")


@app.command()
@_guard
def demo(output_dir: Path = typer.Option(Path("results/demo"), help="Where to write the run folder."),
         seed: int = typer.Option(0, help="Random seed.")):
    """Distil on the embedded digits data: prints teacher, labeled-only and distilled student accuracies."""
    from .pipeline import run
    from .presets import demo_config
    cfg = demo_config(output_dir=str(output_dir), seed=seed)
    metrics = run(cfg)
    if _is_main():
        print_summary(metrics)
        out(f"results in {output_dir}/metrics.json")


@app.command("run")
@_guard
def run_cmd(config: Path = typer.Argument(..., help="YAML config (see README)."), set_: Optional[list[str]] = SetOpt,
            force: bool = ForceOpt):
    """End-to-end from one config: split, teacher, store, students, metrics.json."""
    from .pipeline import run
    cfg = _config(config, set_)
    metrics = run(cfg, force=force)
    if _is_main():
        print_summary(metrics)
        out(f"results in {cfg.output_dir}/metrics.json" + _report_note(cfg.output_dir))


@app.command("label")
@_guard
def label_cmd(config: Path, set_: Optional[list[str]] = SetOpt, force: bool = ForceOpt,
              estimate: bool = typer.Option(False, "--estimate", help="Print the expected tokens and cost of "
                                            "labeling what is not stored yet, and send nothing.")):
    """Only store teacher outputs (skips ids already stored)."""
    from .pipeline import estimate_labeling, label, prepare
    ctx = prepare(_config(config, set_), force=force)
    if estimate:
        e = estimate_labeling(ctx)
        lines = [f"to label: {e['examples']} examples ({e.get('already_stored', 0)} already stored, not sent again)"]
        if "input_tokens" in e:
            lines.append(f"expected tokens: {e['input_tokens']:,} input, {e['output_tokens']:,} output "
                         f"({e['tokens_per_example']:.0f} per example, scoring {e['scoring']})")
            if e.get("truncated"):
                lines.append(f"{e['truncated']} texts would be cut to fit the model's context")
        lines.append(f"expected cost: {e['cost']:.4f} ({e['cost_per_example']:.6f} per example)")
        out("\n".join(lines))
        return
    store = label(ctx)
    out(f"store {store.path}: {len(store)} rows, teacher {store.fingerprint}, spent {store.spent:g}")


@app.command("train")
@_guard
def train_cmd(config: Path, set_: Optional[list[str]] = SetOpt,
              labeled_only: bool = typer.Option(False, help="Train the labeled-only baseline instead."),
              force: bool = ForceOpt):
    """Train the student from stored teacher outputs (resumes from its checkpoint)."""
    from .pipeline import prepare, train
    cfg = _config(config, set_)
    ctx = prepare(cfg, force=force)
    info = train(ctx, labeled_only=labeled_only)
    if not _is_main():  # the other ranks trained their share; rank 0 prints and exports
        return
    out(json.dumps(info, indent=2, default=str))
    if not labeled_only and cfg.export.model_folder:
        from .pipeline import write_model_folder
        _print_folder(write_model_folder(ctx), ctx.out / "model")


@app.command("evaluate")
@_guard
def evaluate_cmd(config: Path, set_: Optional[list[str]] = SetOpt, force: bool = ForceOpt):
    """Score teacher and students on the test split; writes metrics.json (and the model folder)."""
    from .pipeline import _note_model_folder, _atomic_write_text, evaluate, prepare
    ctx = prepare(_config(config, set_), force=force)
    metrics = evaluate(ctx)
    print_summary(metrics)
    _note_model_folder(ctx, metrics)
    _atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    if "model_folder" in metrics:
        _print_folder(metrics["model_folder"], ctx.out / "model")


def _print_folder(rec: dict, path: Path) -> None:
    onnx = rec["onnx"]
    state = (f"model.onnx checked (max |p_onnx - p_torch| = {onnx['max_abs_diff']:.1e})" if onnx.get("exported")
             else f"no model.onnx: {onnx.get('why')}")
    out(f"model folder {path}: {state}")


@app.command("export")
@_guard
def export_cmd(run_dir: Path = typer.Argument(..., help="The output_dir of a finished run."),
               out_dir: Path = typer.Argument(..., help="Where to write the model folder (replaced if it exists)."),
               seed_run: Optional[list[Path]] = typer.Option(None, "--seed-run", help="Another run of the same config "
                                                             "with another seed: the card reports the spread."),
               require_onnx: bool = typer.Option(False, "--require-onnx", help="Fail (exit 2) when the student "
                                                 "cannot be exported to ONNX, instead of recording why.")):
    """Write a run's student as a folder to ship: safetensors + JSON config + model.onnx + model card."""
    from .pipeline import open_run, write_model_folder
    ctx = open_run(run_dir)
    rec = write_model_folder(ctx, path=out_dir, onnx="required" if require_onnx else None, seed_runs=seed_run or ())
    _print_folder(rec, out_dir)


@app.command("predict")
@_guard
def predict_cmd(model_dir: Path = typer.Argument(..., help="A model folder (<output_dir>/model or `mentor export`)."),
                data: Path = typer.Argument(..., help="New data: .parquet, .csv or .npz with an id column and the "
                                            "training data's inputs (a text column, or the same features)."),
                out_path: Path = typer.Option(..., "--out", help="Predictions (.parquet): id, label, prob_<class>."),
                runtime: str = typer.Option("torch", help="torch or onnx (model.onnx via onnxruntime)."),
                batch_size: int = typer.Option(1024, "--batch-size", help="Rows read and predicted at a time.")):
    """Predict new data with a shipped student; writes id, label and one prob_<class> column per class."""
    from .students.export import predict_file
    res = predict_file(model_dir, data, out_path, runtime=runtime, batch_size=batch_size)
    out(f"{res['rows']} rows predicted with {res['runtime']} in {res['seconds']:.2f}s; wrote {res['out']}")


@app.command("serve")
@_guard
def serve_cmd(model_dir: Path = typer.Argument(..., help="A model folder (<output_dir>/model or `mentor export`)."),
              cascade: Optional[Path] = typer.Option(None, "--cascade", help="The run folder the model came from: "
                                                     "low-confidence requests go to its teacher, at the threshold "
                                                     "`mentor cascade` chose there."),
              threshold: Optional[float] = typer.Option(None, help="With --cascade: the student's confidence "
                                                        "threshold (default: the run's cascade.json)."),
              on_teacher_error: str = typer.Option("student", "--on-teacher-error", help="When the teacher fails: "
                                                   "student (answer with the student and say so) or fail (HTTP 503)."),
              runtime: str = typer.Option("torch", help="torch or onnx (model.onnx via onnxruntime)."),
              host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
              port: int = typer.Option(8000, help="Port to listen on."),
              max_batch: int = typer.Option(1024, "--max-batch", help="Most inputs one request may carry."),
              answers_store: Optional[Path] = typer.Option(None, "--answers-store", help="With --cascade: the store "
                                                           "keeping every answer the teacher is paid for (default "
                                                           "RUN_DIR/served-answers); a repeated input is answered "
                                                           "from it, not paid again."),
              keep_inputs: bool = typer.Option(True, "--keep-inputs/--no-keep-inputs", help="With --cascade: keep "
                                               "each input sent to the teacher beside its answer (for retraining), "
                                               "or only a hash of it."),
              teacher_calls: Optional[int] = typer.Option(None, "--teacher-calls", help="With --cascade: teacher "
                                                          "calls at once; requests waiting for the teacher are sent "
                                                          "together over this many threads (default: the run's "
                                                          "distribute threads, else 1)."),
              teacher_retry_after: float = typer.Option(30.0, "--teacher-retry-after", help="With --cascade: after "
                                                        "the teacher fails, seconds during which requests do not ask "
                                                        "it (they get --on-teacher-error at once); 0 asks every "
                                                        "time.")):
    """Serve a student over HTTP (POST /predict, OpenAI-style /v1/chat/completions for text), optionally
    as a cascade that asks the teacher when the student is unsure."""
    from .serve import Cascade, cascade_from_run, create_app, load_served_model
    if (threshold is not None or answers_store is not None or teacher_calls is not None) and cascade is None:
        raise ConfigError("--threshold, --answers-store and --teacher-calls are the cascade's; add --cascade RUN_DIR "
                          "(the run whose teacher answers the rest).")
    if teacher_calls is not None and teacher_calls < 1:
        raise ConfigError(f"--teacher-calls must be at least 1, got {teacher_calls}.")
    if teacher_retry_after < 0:
        raise ConfigError(f"--teacher-retry-after must be >= 0 seconds, got {teacher_retry_after}.")
    if max_batch < 1 or not 0 < port < 65536:
        raise ConfigError(f"--max-batch must be >= 1 and --port in 1..65535; got {max_batch} and {port}.")
    model = load_served_model(model_dir, runtime)
    c = (cascade_from_run(model, cascade, threshold=threshold, on_teacher_error=on_teacher_error,
                          answers_store=answers_store, keep_inputs=keep_inputs, teacher_calls=teacher_calls,
                          retry_after_s=teacher_retry_after) if cascade
         else Cascade(model, on_teacher_error=on_teacher_error))
    what = (f"cascade: the student answers at confidence >= {c.threshold:.4f}, else the teacher (its answers "
            f"kept in {c.answers.path})" if c.teacher is not None else "the student alone")
    print(f"serving {model_dir} ({model.input_kind}, {runtime}) on http://{host}:{port} — {what}", flush=True)
    import uvicorn
    uvicorn.run(create_app(c, max_batch=max_batch), host=host, port=port, log_level="warning")


@app.command("audit")
@_guard
def audit_cmd(config: Path, set_: Optional[list[str]] = SetOpt, force: bool = ForceOpt):
    """Teacher reliability on V: curve (PNG + numbers), per-class accuracy, estimated pool error rate."""
    from .audit import audit_run
    from .pipeline import prepare
    ctx = prepare(_config(config, set_), force=force)
    a = audit_run(ctx)
    out(f"teacher accuracy on V: {a['accuracy']:.3f} (V = {a['n_val']})   "
                  f"estimated error rate on the pool: {a['estimated_pool_error_rate']:.3f} "
                  f"(~{a['estimated_pool_errors']:.0f} of {a['n_pool']} pseudo-labels wrong)")
    out("P(right | margin): " + "  ".join(
        f"{m:.1f}:{v:.2f}" for m, v in zip(a["curve"]["margin"], a["curve"]["accuracy"])))
    out("top-k accuracy: " + " ".join(f"k={i + 1}:{v:.2f}" for i, v in enumerate(a["topk_accuracy"][:5])))
    out(f"calibration temperature on V: {a['calibration_temperature']:.2f}   ECE on V: {a['ece']:.3f}   "
        "AUROC of its confidence: " + ("n/a (all right or all wrong)" if a["confidence_auroc"] is None
                                       else f"{a['confidence_auroc']:.3f}"))
    if a.get("abstained_rate_val") is not None:
        out(f"abstained (no label in its answer): {100 * a['abstained_rate_val']:.1f}% of V, "
            f"{100 * (a.get('abstained_rate_pool') or 0):.1f}% of the pool; answers cut to fit its context: "
            f"{100 * (a.get('truncated_rate_val') or 0):.1f}% of V")
    if a.get("fallback"):
        out(f"note: {a['fallback']}")
    for name, t in (a.get("teachers") or {}).items():  # several teachers: the lines above are their combination
        out(f"teacher {name} ({t['kind']}, {t['fingerprint']}): " + (t["note"] if "note" in t else
            f"accuracy on V {t['accuracy']:.3f}, ECE {t['ece']:.3f}, estimated pool error rate "
            f"{t['estimated_pool_error_rate']:.3f}"))
    if a.get("teachers"):
        out(f"the lines above the teachers describe their combination (combine: {a['combine']})")
    out(f"wrote {ctx.out / 'audit.json'} and {ctx.out / 'reliability.png'}")


@app.command("cascade")
@_guard
def cascade_cmd(run_dir: Path = typer.Argument(..., help="The output_dir of a finished `mentor run`."),
                target: Optional[float] = typer.Option(None, "--target", help="Accuracy the answered part must keep, "
                                                       "e.g. 0.9 (with --agreement: agreement with the teacher)."),
                of_teacher: Optional[float] = typer.Option(None, "--of-teacher", help="Target as a share of the "
                                                           "teacher's accuracy on V (default 0.95)."),
                agreement: bool = typer.Option(False, "--agreement", help="Target the student's agreement with "
                                               "the teacher instead of accuracy (needs no labels)."),
                delta: float = typer.Option(0.05, help="Chance that the guarantee fails (the bound is at 1 − delta)."),
                bound: str = typer.Option("clopper-pearson", help="clopper-pearson (exact) or wilson."),
                student: str = typer.Option("student", help="student or labeled-only.")):
    """Choose the student's confidence threshold on V (student answers, teacher falls back); report it on test."""
    from .cascade import cascade_run
    r = cascade_run(run_dir, target=target, of_teacher=of_teacher, agreement=agreement, delta=delta, bound=bound,
                    student=student)
    print_cascade(r)


def print_cascade(r: dict) -> None:
    from rich.table import Table
    v, t = r["val"], r["test"]
    metric = "agreement" if r["target_kind"] == "agreement" else "accuracy"
    head = (f"target: {metric} of the answered part >= {r['target']:.4f} ({r['target_kind']}), "
            f"{100 * (1 - r['delta']):g}% {r['bound']} lower bound on V (n = {v['n']})")
    out(head)
    if not r["met"]:
        b = v["best_achievable"]
        out(f"not met: {r['reason']}")
        out(f"best achievable on V: lower bound {b['lower_bound']:.4f} at coverage {b['coverage']:.3f}. "
            f"The cascade sends every request to the teacher.")
        out(f"wrote {Path(r['run_dir']) / r['plot'].replace('.png', '.json')} and {r['plot']}")
        return
    thr = r["threshold"]
    table = Table(title=f"threshold {thr:.6g} on the {r['student']}'s confidence")
    for c in ("", "V", "test"):
        table.add_column(c, justify="right" if c else "left")
    ans = "answered_agreement" if metric == "agreement" else "answered_accuracy"

    def f(x, spec=".4f"):
        return "" if x is None else format(x, spec)
    for name, a, b in (("coverage", f(v["coverage"], ".3f"), f(t["coverage"], ".3f")),
                       (f"{metric} of the answered part", f(v["answered_accuracy"]), f(t[ans])),
                       ("its lower bound", f(v["lower_bound"]), ""),
                       ("cascade accuracy", "", f(t["cascade_accuracy"])),
                       ("teacher accuracy", f(v["teacher_accuracy"]), f(t["teacher_accuracy"])),
                       ("teacher calls (saved)", "", f"{t['teacher_calls']} ({t['teacher_calls_saved']})"),
                       ("cost saved", "", f(t["cost_saved"], ".4g"))):
        table.add_row(name, a, b)
    out(table)
    if thr <= 0:
        out(f"the {r['student']} answers everything: it meets the target on all of V.")
    held = {True: "held", False: "did NOT hold", None: "not checked"}[t["bound_held"]]
    out(f"on test the target {held}; price per teacher call {t['price_per_call']:.4g} ({t['price_source']}). "
        f"Plot: {Path(r['run_dir']) / r['plot']}")


def _report_note(output_dir) -> str:
    html = Path(output_dir) / "report.html"
    return f"; report in {html}" if html.exists() else ""


@app.command("report")
@_guard
def report_cmd(run_dir: Path = typer.Argument(..., help="The output_dir of a `mentor run` or `mentor active`.")):
    """(Re)write report.md and report.html (plots embedded) from the files in a run folder."""
    from .report import write_report
    md, html = write_report(run_dir)
    out(f"wrote {md} and {html}")


@app.command("methods")
def methods_cmd():
    """List the distillation methods a config may name."""
    from .methods import METHODS
    for name in sorted(METHODS):
        doc = (METHODS[name].__doc__ or "").strip().splitlines()
        out(f"{name:24s} {doc[0] if doc else ''}")


@app.command("check-config")
@_guard
def check_config(config: Path, set_: Optional[list[str]] = SetOpt):
    """Validate a config and print it with every default filled in."""
    from .config import dump_config
    out(dump_config(_config(config, set_)))


@bench_app.command("quality")
@_guard
def bench_quality(suite: str = typer.Option("smoke", help="smoke (digits, seconds), standard, or few-class "
                                                         "(binary and 4-class text; LELP's setting)."),
                  seeds: int = typer.Option(3, help="Number of seeds."),
                  first_seed: int = typer.Option(0, help="Seeds first_seed .. first_seed + seeds - 1 (more seeds "
                                                 "later, or side by side: rows append to --json)."),
                  methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all); "
                                                        "method@λ sets train.distill_weight, method@key=value"
                                                        "(+key=value) its method_options (e.g. "
                                                        "lelp@lelp_directions=3)."),
                  datasets: Optional[str] = typer.Option(None, help="Comma-separated subset of the suite's data sets."),
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per run here."),
                  work_dir: Path = typer.Option(Path("bench-out"), help="Run folders and caches.")):
    """Protocol on real data; one row per (dataset, method, seed); prints mean ± std."""
    from .bench import quality, report
    if first_seed < 0:
        raise ConfigError(f"--first-seed must be 0 or more, got {first_seed}.")
    rows = quality(suite, seeds=seeds, first_seed=first_seed, methods=methods.split(",") if methods else None,
                   datasets=datasets.split(",") if datasets else None, json_out=json_out, work_dir=work_dir,
                   log=out)
    out(report(rows))


@bench_app.command("llm")
@_guard
def bench_llm_cmd(suite: str = typer.Option("smoke", help="smoke (minutes on 2 CPU cores), standard (hours), or "
                                            "shots (no, fixed and similar few-shot examples only)."),
                  seeds: int = typer.Option(1, help="Number of seeds."),
                  datasets: Optional[str] = typer.Option(None, help="Comma-separated: fine-foods, fortunes4."),
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per result here."),
                  server_url: Optional[str] = typer.Option(None, help="An OpenAI-compatible server serving SmolLM2 "
                                                          "(default: start llama.cpp's on 127.0.0.1 for the run)."),
                  students: bool = typer.Option(True, help="Also distil students from the LLM."),
                  teachers: bool = typer.Option(True, help="Score the teacher grid (--no-teachers: students only)."),
                  skip: Optional[str] = typer.Option(None, help="Grid entries to leave out, comma-separated "
                                                     "backend/scoring (e.g. server/label-likelihood)."),
                  work_dir: Path = typer.Option(Path("bench-out/llm"), help="Run folders and stores."),
                  active: bool = typer.Option(False, "--active", help="Instead: `mentor active` with the LLM (through "
                                              "the server, priced per token): accuracy against money for rad, margin "
                                              "and random (suites tiny|smoke|standard)."),
                  selectors: Optional[str] = typer.Option(None, help="--active: comma-separated selectors "
                                                          "(default rad,margin,random)."),
                  first_seed: int = typer.Option(0, help="First seed: seeds first_seed .. first_seed + seeds - 1 "
                                                 "(rows appended when > 0)."),
                  workers: int = typer.Option(2, help="--active: threads calling the server at once."),
                  backend: str = typer.Option("server", help="--active: server (llama.cpp, top-logprobs) or local "
                                              "(the same weights here, label likelihood).")):
    """SmolLM2 as teacher on real text: every scoring mode, zero- and few-shot, through a server and
    locally; then students distilled from it (argmax labels vs full distribution + corrections).
    With --active: the active loop's selectors against the money paid for the LLM's labels."""
    if first_seed < 0:
        raise ConfigError(f"--first-seed must be 0 or more, got {first_seed}.")
    if active:
        from .bench.llm_active import bench_llm_active, summarize_llm_active
        rows = bench_llm_active(suite, seeds=seeds, first_seed=first_seed, json_out=json_out, server_url=server_url,
                                work_dir=work_dir / "active", datasets=datasets.split(",") if datasets else None,
                                selectors=selectors.split(",") if selectors else None, workers=workers, backend=backend,
                                log=out)
        out(summarize_llm_active(rows))
        return
    from .bench.llm import bench_llm, summarize_llm
    rows = bench_llm(suite, seeds=seeds, first_seed=first_seed, json_out=json_out, work_dir=work_dir,
                     server_url=server_url, datasets=datasets.split(",") if datasets else None, students=students,
                     teachers=teachers, skip=skip.split(",") if skip else None, log=out)
    out(summarize_llm(rows))


@bench_app.command("serve")
@_guard
def bench_serve_cmd(run_dir: Path = typer.Argument(..., help="A finished run with model/ and cascade.json."),
                    requests: int = typer.Option(500, help="Measured requests per arm."),
                    concurrency: int = typer.Option(8, help="Requests in flight at once."),
                    batch: int = typer.Option(1, help="Inputs per request."),
                    inputs: int = typer.Option(200, help="Distinct test inputs cycled through (as many as "
                                               "--requests × --batch: every fallback is a new, paid teacher call)."),
                    arms: str = typer.Option("torch,onnx,cascade", help="Which of torch, onnx, cascade to run."),
                    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows here (JSON lines).")):
    """Load test of `mentor serve`: the student (torch, ONNX) and the cascade, requests/s and p50/p95/p99."""
    from .bench.serve import bench_serve
    if requests < 1 or concurrency < 1 or batch < 1 or inputs < 1:
        raise ConfigError("--requests, --concurrency, --batch and --inputs must be at least 1.")
    rows = bench_serve(run_dir, n_requests=requests, concurrency=concurrency, batch=batch, n_inputs=inputs,
                       arms=[a.strip() for a in arms.split(",") if a.strip()], log=out)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text("".join(json.dumps(r) + "\n" for r in rows))


@bench_app.command("cascade")
@_guard
def bench_cascade_cmd(suite: str = typer.Option("smoke", help="smoke (digits, synthetic-margin; minutes), "
                                                "standard (Fashion-MNIST and fortunes at two teacher strengths) or "
                                                "llm (SmolLM2 teaching text students, as `bench llm --suite standard`)."),
                      seeds: int = typer.Option(3, help="Number of seeds."),
                      datasets: Optional[str] = typer.Option(None, help="Comma-separated subset of the suite's data sets."),
                      targets: str = typer.Option("0.9,0.95,0.99", help="Comma-separated shares of the teacher's "
                                                  "accuracy on V (above 1: the student must beat the teacher)."),
                      absolute: bool = typer.Option(False, "--absolute", help="--targets are accuracies, not shares."),
                      reuse_students: bool = typer.Option(False, "--reuse-students", help="Score students an earlier "
                                                          "run saved in --work-dir (same store) instead of retraining."),
                      delta: float = typer.Option(0.05, help="Chance that the guarantee fails."),
                      bound: str = typer.Option("clopper-pearson", help="clopper-pearson or wilson."),
                      json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per result here."),
                      work_dir: Path = typer.Option(Path("bench-out/cascade"), help="Run folders and stores.")):
    """Coverage at 90/95/99% of the teacher's accuracy, auto vs vanilla-hard students, and whether the bound held."""
    from .bench.cascade import bench_cascade, summarize_cascade
    try:
        shares = tuple(float(t) for t in targets.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--targets must be comma-separated numbers, e.g. 0.9,0.95,0.99; got {targets!r}.") from None
    rows = bench_cascade(suite, seeds=seeds, datasets=datasets.split(",") if datasets else None, targets=shares,
                         delta=delta, bound=bound, absolute=absolute, reuse_students=reuse_students,
                         json_out=json_out, work_dir=work_dir, log=out)
    out(summarize_cascade(rows))


@bench_app.command("ensemble")
@_guard
def bench_ensemble_cmd(suite: str = typer.Option("standard", help="standard (letter, mnist1d, fashion-mnist at two "
                                                 "teacher strengths) or smoke (digits)."),
                       seeds: int = typer.Option(3, help="Number of seeds."),
                       first_seed: int = typer.Option(0, help="First seed (processes can run seeds side by side)."),
                       datasets: Optional[str] = typer.Option(None, help="Comma-separated subset of the entries."),
                       methods: str = typer.Option("vanilla-soft", help="Comma-separated student methods."),
                       teachers: Optional[str] = typer.Option(None, help="Comma-separated teacher kinds (default: "
                                                              "three model families per data set)."),
                       n_pool: Optional[int] = typer.Option(None, help="Cap the pool U (speed)."),
                       combinations: Optional[str] = typer.Option(None, help="Comma-separated rows to run, of "
                                                                  "labeled-only, single, best-single (the teacher "
                                                                  "best on V alone), average, vote, reliability, "
                                                                  "log-linear (default: all)."),
                       json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per result here."),
                       work_dir: Path = typer.Option(Path("bench-out/ensemble"), help="Run folders and stores.")):
    """Several teachers: each alone, averaged, voted, reliability-weighted and log-linear; teacher and
    student test accuracy."""
    from .bench.ensemble import bench_ensemble, summarize_ensemble
    rows = bench_ensemble(suite, seeds=seeds, datasets=datasets.split(",") if datasets else None,
                          methods=tuple(methods.split(",")), n_pool=n_pool, first_seed=first_seed,
                          kinds=tuple(teachers.split(",")) if teachers else None, json_out=json_out,
                          work_dir=work_dir, log=out,
                          combinations=tuple(combinations.split(",")) if combinations else None)
    out(summarize_ensemble(rows))


@bench_app.command("report")
@_guard
def bench_report(rows_files: list[Path] = typer.Argument(..., help="JSON rows written by `mentor bench "
                                                         "quality|active|guide|llm|cascade --json` (several files are joined)."),
                 baseline: Optional[str] = typer.Option(None, help="What paired gains are measured against "
                                                        "(default: vanilla-soft; random for active rows).")):
    """Tables from saved rows: quality (accuracy, paired gains, choice on V), active (AUC) or guide (gap reduction)."""
    from .bench import read_rows, report_rows
    print(report_rows([r for f in rows_files for r in read_rows(f)], baseline=baseline))


@bench_app.command("speed")
@_guard
def bench_speed(json_out: Optional[Path] = typer.Option(None, "--json"),
                n: int = typer.Option(20000, help="Examples to label / train on."),
                work_dir: Path = typer.Option(Path("bench-out/speed")),
                hidden: str = typer.Option("128", help="Student MLP hidden sizes for the step-cost ratios, e.g. 1024,1024."),
                selection: bool = typer.Option(True, help="Also time the active-learning selectors."),
                rounds: int = typer.Option(7, help="Interleaved timing rounds per method (medians).")):
    """Ratios measured in one run: store vs bare teacher, distillation vs CE step, store reads."""
    from .bench import speed
    try:
        sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden must be comma-separated integers, got {hidden!r}") from None
    result = speed(n=n, work_dir=work_dir, json_out=json_out, student_hidden=sizes, selection=selection, rounds=rounds)
    _console().print_json(json.dumps(result))


@bench_app.command("pool")
@_guard
def bench_pool(n: int = typer.Option(4000, help="Fortunes to label."),
               workers: int = typer.Option(2, help="Ray actors, one CPU each."),
               batch_size: int = typer.Option(256, help="Examples per teacher call."),
               address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: start Ray here)."),
               json_out: Optional[Path] = typer.Option(None, "--json"),
               work_dir: Path = typer.Option(Path("bench-out/pool"))):
    """Labeling with a real encoder teacher: one call at a time vs a Ray pool, ratio from one run."""
    from .bench import pool_speed
    _console().print_json(json.dumps(pool_speed(n=n, workers=workers, batch_size=batch_size, address=address,
                                             work_dir=work_dir, json_out=json_out)))


@app.command("lm-distill")
@_guard
def lm_distill_cmd(config: Path = typer.Argument(..., help="YAML config (see mentor.lm.distill.LMDistillConfig)."),
                   set_: Optional[list[str]] = SetOpt):
    """Distil SmolLM2-135M into a small student on real text; writes curve.csv and summary.json."""
    from .lm.distill import load_lm_config, run_lm_distill
    cfg = load_lm_config(config, _overrides(set_))
    s = run_lm_distill(cfg, log=out)
    out(f"init={s['init']} loss={s['loss']} val_loss={s['val_loss']:.4f} "
                  f"(teacher {s['teacher_val_loss']:.4f}) after {s['tokens']} tokens; "
                  f"results in {cfg.output_dir}/summary.json")


@bench_app.command("guide")
@_guard
def bench_guide_cmd(suite: str = typer.Option("smoke", help="smoke (minutes on CPU), medium (4× tokens), standard "
                                              "(wider student, about an hour per seed on one core) or large (GPU)."),
                    seeds: int = typer.Option(1, help="Number of seeds."),
                    first_seed: int = typer.Option(0, help="First seed (to run seeds as parallel processes; "
                                                           "they may share --work-dir and its teacher store)."),
                    arms: Optional[str] = typer.Option(None, help="Comma-separated arms (default: all)."),
                    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per run here."),
                    work_dir: Path = typer.Option(Path("bench-out/guide"), help="Run folders and teacher store.")):
    """GUIDE vs weight selection vs KD vs GUIDE+KD at equal training tokens; gap reduction vs random."""
    from .bench.guide import bench_guide, summarize_guide
    rows = bench_guide(suite, seeds=seeds, first_seed=first_seed, arms=arms.split(",") if arms else None, json_out=json_out,
                       work_dir=work_dir, log=out)
    out(summarize_guide(rows))


@app.command("active")
@_guard
def active_cmd(config: Path = typer.Argument(..., help="YAML config: run keys plus strategy, budget, ... (see mentor.active.loop)."),
               set_: Optional[list[str]] = SetOpt, force: bool = ForceOpt):
    """Spend a budget of teacher calls round by round (RAD, margin, ...); writes active.json and active.png."""
    from .active.loop import load_active_config, run_active
    cfg = load_active_config(config, _overrides(set_))
    res = run_active(cfg, force=force)
    from rich.table import Table
    table = Table(title=f"{res['dataset']}: {res['strategy']} (seed {res['seed']}), AUC {100 * res['auc']:.2f}")
    table.add_column("queries", justify="right")
    table.add_column("test acc.", justify="right")
    table.add_column("spent", justify="right")
    for q, a, s in zip(res["queries"], res["test_accuracy"], res["spent_per_round"]):
        table.add_row(str(q), f"{100 * a:.2f}%", f"{s:g}")
    out(table)
    if res["stopped"]:
        out(res["stopped"])
    out(f"results in {cfg.output_dir}/active.json and active.png" + _report_note(cfg.output_dir))


@bench_app.command("active")
@_guard
def bench_active_cmd(suite: str = typer.Option("smoke", help="smoke (digits) or standard."),
                     seeds: int = typer.Option(3, help="Number of seeds."),
                     strategies: Optional[str] = typer.Option(None, help="Comma-separated (default random,margin,entropy,rad); a variant sets active keys "
                                                     "for one strategy, e.g. rad@rad_rounding=pairs+rad_m_scale=0.5 "
                                                     "(rounds=R: R equal batches)."),
                     datasets: Optional[str] = typer.Option(None, help="Comma-separated subset of the suite's data sets."),
                     correction: str = typer.Option("vanilla-soft", help="Distillation method for each retraining."),
                     json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON row per run here."),
                     work_dir: Path = typer.Option(Path("bench-out"), help="Run folders and caches."),
                     set_: Optional[list[str]] = SetOpt,
                     first_seed: int = typer.Option(0, help="First seed (processes may run other seeds side by "
                                                            "side; rows are appended when > 0).")):
    """Test accuracy against teacher queries per strategy; rows with queries, test_accuracy, auc.
    --set KEY=VALUE changes every entry's config (e.g. --set split.n_labeled=80)."""
    from .bench.active import bench_active, summarize_active
    rows = bench_active(suite, seeds=seeds, strategies=strategies.split(",") if strategies else None,
                        datasets=datasets.split(",") if datasets else None, json_out=json_out, work_dir=work_dir,
                        log=out, correction=correction, overrides=_overrides(set_), first_seed=first_seed)
    out(summarize_active(rows))


@bench_app.command("students")
@_guard
def bench_students_cmd(suite: str = typer.Option("smoke", help="smoke (digits, about a minute), standard "
                                                 "(Fashion-MNIST, fortunes, fine-foods; hours on 2 CPU cores), llm "
                                                 "(the same text students distilled from SmolLM2 run locally: "
                                                 "fortunes4, fine-foods; one store for every seed) or "
                                                 "memory (peak RSS of training from disk vs in memory at pool sizes "
                                                 "100k, 1M, 3M; memory-sparse: the same with TF-IDF-like sparse rows)."),
                       seeds: int = typer.Option(2, help="Number of seeds."),
                       first_seed: int = typer.Option(0, help="Seeds first_seed .. first_seed + seeds - 1."),
                       entries: Optional[str] = typer.Option(None, help="Comma-separated subset of the suite's "
                                                             "entries, e.g. fashion-mnist/A1000."),
                       students: Optional[str] = typer.Option(None, help="Comma-separated subset of the students."),
                       methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default "
                                                             "vanilla-soft,vanilla-hard,auto; labeled-only: the "
                                                             "student on A alone)."),
                       json_out: Optional[Path] = typer.Option(None, "--json", help="Append one JSON row per "
                                                               "(entry, student, method, seed) here (memory: "
                                                               "write the rows as one JSON list)."),
                       work_dir: Path = typer.Option(Path("bench-out/students"), help="Run folders, stores, "
                                                     "model folders."),
                       sizes: Optional[str] = typer.Option(None, help="memory suite: pool sizes, e.g. 100000,1000000."),
                       set_: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE config override for "
                                                                "every run, e.g. --set student.max_length=128 --set "
                                                                "train.epochs=3 (repeatable; smoke/standard/llm).")):
    """Shippable students from the same teacher outputs: accuracy, size, CPU latency, ONNX check, time, memory;
    `--suite memory`: rows pool_size, path (stream or in-memory), peak_rss_mb."""
    from .bench.students import bench_students, summarize
    split = lambda v: v.split(",") if v else None  # noqa: E731
    if suite in ("memory", "memory-sparse"):
        if set_:
            raise ConfigError("--set is for --suite smoke, standard or llm; the memory suites have fixed settings.")
        options = {}
        if sizes:
            try:
                options["sizes"] = tuple(int(v) for v in sizes.split(",") if v.strip())
            except ValueError:
                raise ConfigError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
        rows = bench_students(suite, json_out=json_out, work_dir=work_dir, **options)
        _console().print_json(json.dumps(rows))
        return
    if sizes:
        raise ConfigError("--sizes is for --suite memory or memory-sparse.")
    rows = bench_students(suite, seeds=seeds, first_seed=first_seed, entries=split(entries), students=split(students),
                          methods=split(methods), json_out=json_out, work_dir=work_dir, overrides=_overrides(set_),
                          log=out)
    out(summarize(rows))


@store_app.command("status")
@_guard
def store_status_cmd(path: Path = typer.Argument(..., help="A store folder, or a run config (its store).")):
    """Stored rows, money spent (stored, failed, lost mid-call, in flight) and quarantined shards."""
    from .store.status import status
    print(status(path))


@store_app.command("repair")
@_guard
def store_repair_cmd(path: Path = typer.Argument(..., help="A store folder, or a run config (its store)."),
                     repay: bool = typer.Option(False, "--repay", help="Accept paying again for the rows of "
                                                "quarantined shards (the next label run asks for them).")):
    """Verify every shard (quarantining damaged ones), put back restored ones, or accept re-paying (--repay)."""
    from .store.status import repair
    print(repair(path, repay=repay))


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
