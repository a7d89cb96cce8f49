"""`mentor bench quality`: every method on the standard suite, one JSON row per (dataset, method, seed).

Quality follows the papers' protocol on real data (teacher trained on A only, corrections may
look at V, the test split is touched only for the reported number).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import parse_config
from ..errors import ConfigError

BASE_METHODS = ["teacher", "labeled-only", "vanilla-hard", "vanilla-soft"]


def _strengths(template: dict, sizes: tuple[int, int]) -> dict[str, dict]:
    """Two teacher strengths of one data set: the same template with a small and a larger A
    (the teacher and the labeled-only student both learn from A)."""
    return {f"A{n}": {**template, "split": {**template["split"], "n_labeled": n}} for n in sizes}


def suite_configs(suite: str) -> dict[str, dict]:
    """Per-dataset config templates, keyed `name` or `name/A<n_labeled>` (two teacher strengths).

    smoke: minutes. standard: the real data sets at a small and a larger A, with deep students
    (two hidden layers of 256) where the input is a feature vector — students that can memorise
    a teacher's mistakes, the regime the robust-distillation papers study — plus the synthetic
    case of their theory."""
    smoke = {
        "digits": {"data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 300, "n_test": 400},
                   "teacher": {"kind": "mlp"}, "student": {"kind": "logistic"}, "train": {"epochs": 30}},
    }
    deep = {"kind": "mlp", "hidden": [256, 256]}
    real = {
        "fashion-mnist": ({"data": {"name": "fashion-mnist"}, "split": {"n_val": 1000, "n_pool": 20000},
                           "teacher": {"kind": "cnn", "epochs": 30}, "student": deep, "train": {"epochs": 10}},
                          (1000, 4000)),
        "letter": ({"data": {"name": "letter"}, "split": {"n_val": 1000, "n_test": 4000},
                    "teacher": {"kind": "hgb"}, "student": deep, "train": {"epochs": 30}}, (300, 1000)),
        "fortunes": ({"data": {"name": "fortunes"}, "split": {"n_val": 500, "n_test": 1000},
                      "teacher": {"kind": "minilm"}, "student": {"kind": "tfidf"}, "train": {"epochs": 20}},
                     (500, 1500)),
        "mnist1d": ({"data": {"name": "mnist1d", "options": {"n": 12000}}, "split": {"n_val": 1000, "n_test": 2000},
                     "teacher": {"kind": "cnn1d", "epochs": 60}, "student": deep, "train": {"epochs": 30}},
                    (500, 2000)),
    }
    standard = {f"{name}/{tag}": cfg for name, (template, sizes) in real.items()
                for tag, cfg in _strengths(template, sizes).items()}
    synthetic = {
        # the papers' theory setting: linearly separable data with a margin, a teacher whose mistakes
        # concentrate at small margin (a file of outputs, written by `write_synthetic_margin`), a
        # linear student; 20 labels in 50 dimensions, so the teacher beats the labeled-only student
        "synthetic-margin": {"synthetic": {"dim": 50}, "data": {"path": "synthetic-margin/data.parquet"},
                             "split": {"n_labeled": 20, "n_val": 500, "n_test": 2000},
                             "teacher": {"kind": "file", "path": "synthetic-margin/teacher.parquet"},
                             "student": {"kind": "logistic"}, "train": {"epochs": 20}},
    }
    # the same geometry with a nearly perfect teacher (3° tilt, little flip noise): corrections must not hurt here
    near_perfect = {"synthetic-near-perfect": {**synthetic["synthetic-margin"],
                                               "synthetic": {"dim": 50, "tilt_degrees": 3.0, "noise_scale": 0.05}}}
    standard = {**standard, **synthetic, **near_perfect}
    smoke = {**smoke, **synthetic}
    # few classes (LELP's setting): a sentence-encoder teacher whose embeddings are kept in the store
    # (teacher.embeddings), a TF-IDF student; the binary fine-food reviews and four fortunes topics
    text_few = {"teacher": {"kind": "minilm", "embeddings": True}, "student": {"kind": "tfidf"},
                "train": {"epochs": 20}}
    few = {**{f"fine-foods/A{n}": {**text_few, "data": {"name": "fine-foods"},
                                   "split": {"n_labeled": n, "n_val": 500, "n_test": 1000}} for n in (100, 400)},
           "fortunes4/A100": {**text_few, "data": {"name": "fortunes",
                                                   "options": {"topics": ["computers", "food", "sports", "medicine"]}},
                              "split": {"n_labeled": 100, "n_val": 300, "n_test": 400}}}
    suites = {"smoke": smoke, "standard": standard, "few-class": few}
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(suites)}.")
    return suites[suite]


def select_datasets(configs: dict[str, dict], names: list[str] | None, suite: str) -> list[str]:
    """Entries named in `names` (all when None); a bare name selects all its strengths
    (`letter` → `letter/A300`, `letter/A1000`)."""
    if not names:
        return list(configs)
    out, unknown = [], []
    for n in names:
        hits = [k for k in configs if k == n or k.startswith(n + "/")]
        out += [h for h in hits if h not in out]
        if not hits:
            unknown.append(n)
    if unknown:
        raise ConfigError(f"data sets {unknown} are not in suite {suite!r} ({', '.join(configs)}).")
    return out


def write_synthetic_margin(folder: Path, *, n: int = 12000, dim: int = 20, gamma: float = 0.1,
                           tilt_degrees: float = 20.0, noise_scale: float = 0.3, seed: int = 1234) -> tuple[Path, Path]:
    """Separable data (labels sign(w·x), margin ≥ `gamma`) and a teacher that is wrong near the boundary.

    The teacher classifies with a tilted direction w_T (angle `tilt_degrees` from w), so its errors
    are systematic and lie where |w_T·x| is small, and on top flips labels with probability
    ½·exp(−|w_T·x|/s). Its confidence grows with |w_T·x|, so its margin is informative about its
    mistakes: the regime the weighting papers analyse. A student that copies the teacher copies
    the tilt. Deterministic in `seed`; files are written only if absent.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = Path(folder)
    data_path, teacher_path = folder / "data.parquet", folder / "teacher.parquet"
    if data_path.exists() and teacher_path.exists():
        return data_path, teacher_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    u = rng.normal(size=dim)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    theta = np.deg2rad(tilt_degrees)
    w_t = np.cos(theta) * w + np.sin(theta) * u
    x = rng.normal(size=(3 * n, dim))
    keep = np.abs(x @ w) >= gamma
    x = x[keep][:n]
    y = (x @ w > 0).astype(np.int64)
    s_t = x @ w_t
    y_teacher = (s_t > 0).astype(np.int64)
    flip = rng.uniform(size=n) < 0.5 * np.exp(-np.abs(s_t) / noise_scale)
    y_teacher = np.where(flip, 1 - y_teacher, y_teacher)
    conf = 1.0 / (1.0 + np.exp(-(3.0 * np.abs(s_t) + rng.normal(scale=0.3, size=n))))
    conf = np.clip(conf, 0.5, 1.0 - 1e-6)
    probs = np.where(y_teacher[:, None] == np.arange(2), conf[:, None], 1.0 - conf[:, None])
    ids = [f"s{i:06d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "x": [list(r) for r in x.astype(np.float32)], "label": y}), data_path)
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in probs]}), teacher_path)
    return data_path, teacher_path


def materialise(template: dict, work_dir: Path) -> dict:
    """A suite entry with generated data (a "synthetic" key holding `write_synthetic_margin`
    arguments) gets its files written under `work_dir` and their absolute paths filled in."""
    if "synthetic" not in template:
        return template
    template = dict(template)
    gen = template.pop("synthetic")
    tag = "-".join(f"{k}{v}" for k, v in sorted(gen.items())) or "default"
    data_path, teacher_path = write_synthetic_margin(Path(work_dir) / "synthetic-margin" / tag, **gen)
    return {**template, "data": {**template["data"], "path": str(data_path.resolve())},
            "teacher": {**template["teacher"], "path": str(teacher_path.resolve())}}


def read_rows(path: Path) -> list[dict]:
    """Rows of a `--json` file (one JSON object per line)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"rows file {path} does not exist; write one with `mentor bench quality --json {path}`.")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not a JSON-lines file of benchmark rows: {e}") from None


def report_rows(rows: list[dict], baseline: str | None = None) -> str:
    """The report that fits the rows: quality (`method`), active (`strategy`), guide (`arm`), llm or cascade."""
    if rows and all(r.get("bench") == "ensemble" for r in rows):
        from .ensemble import summarize_ensemble
        return summarize_ensemble(rows)
    if rows and all(r.get("bench") == "cascade" for r in rows):
        from .cascade import summarize_cascade
        return summarize_cascade(rows)
    if rows and all(r.get("bench") == "llm-active" for r in rows):
        from .llm_active import summarize_llm_active
        return summarize_llm_active(rows)
    if rows and all(r.get("row") in ("teacher", "student") and "scoring" in r for r in rows):
        from .llm import summarize_llm
        return summarize_llm(rows)
    kinds = {"arm" if "arm" in r else "strategy" if "strategy" in r else "method" if "method" in r else "?"
             for r in rows}
    if len(kinds) != 1 or "?" in kinds:
        raise ConfigError(f"the rows mix or lack benchmark kinds ({sorted(kinds)}); report the rows of one "
                          "kind (`mentor bench quality|active|guide --json`) at a time.")
    kind = kinds.pop()
    if kind == "arm":
        from .guide import summarize_guide
        return summarize_guide(rows)
    if kind == "strategy":
        from .active import summarize_active
        return summarize_active(rows, baseline or "random")
    return report(rows, baseline or "vanilla-soft")


def each_run(configs: dict[str, dict], names: list[str], seeds: int, work_dir: Path, json_out: Path | None,
             first_seed: int = 0):
    """(name, seed, template with generated data filled in) for every entry and seed first_seed ..
    first_seed + seeds − 1, after dropping these entries' rows from the rows file (`start_rows`)."""
    start_rows(json_out, names, first_seed=first_seed)
    for name in names:
        template = materialise(configs[name], Path(work_dir))
        for seed in range(first_seed, first_seed + seeds):
            yield name, seed, template


def labeled_seed(cfg):
    """One seed's shared setup for benchmarks that train several students from the same teacher
    outputs: the prepared run, its store (labeled once) and the teacher's test accuracy."""
    from ..evaluate import accuracy
    from ..pipeline import get_teacher, label, prepare, teacher_outputs
    ctx = prepare(cfg, force=True)  # benchmark folders are scratch
    store = label(ctx, get_teacher(ctx))
    t_acc = accuracy(teacher_outputs(store, ctx.data.ids[ctx.splits.test]), ctx.data.labels[ctx.splits.test])
    return ctx, store, t_acc


def start_rows(path: Path | None, datasets, *, first_seed: int = 0) -> None:
    """Before a benchmark writes rows to `path`: drop the rows of the data sets it is about to run
    (it writes them afresh) and keep every other row, so that running a subset of the entries into
    the file of a longer benchmark does not lose the other entries' rows. With first_seed > 0
    nothing is dropped (seeds run as separate processes append to one file)."""
    if path is None or first_seed != 0 or not Path(path).exists():
        return
    names, keep = set(datasets), []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if isinstance(row, dict) and row.get("dataset") is not None and row["dataset"] not in names:
            keep.append(line + "\n")
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


def random_rows(test: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` test rows drawn at random (seeded), for measurements too slow for all of them: split
    indices are sorted, and data sets stored by class (fortunes: one topic file after another)
    would otherwise give a prefix of one class."""
    return np.random.default_rng(seed).permutation(np.asarray(test))[:n]


def _append_row(path: Path | None, row: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=float) + "\n")
        fh.flush()


def quality(suite: str = "smoke", *, seeds: int = 3, methods: list[str] | None = None,
            datasets: list[str] | None = None, json_out: Path | None = None, work_dir: Path = Path("bench-out"),
            log: Callable = print, configs: dict[str, dict] | None = None, first_seed: int = 0,
            on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the protocol for every (dataset, seed) and every method; returns the rows.

    `configs` replaces the suite's templates (name -> partial RunConfig dict), for studies
    beyond the built-in suites. Seeds are first_seed .. first_seed + seeds − 1 (processes
    running different seeds side by side give the same rows as one process). `on_row` sees each
    row as soon as it is measured (a caller writing rows of its own kind keeps them if killed)."""
    from ..methods import METHODS
    from ..pipeline import get_teacher, label, prepare, student_probs, student_test_probs, teacher_outputs, train
    from ..evaluate import accuracy
    configs = configs or suite_configs(suite)
    names = select_datasets(configs, datasets, suite)
    # auto is left out by default: its number is `chosen_on_validation` of the other rows (see `report`)
    methods = methods or BASE_METHODS + sorted(m for m in METHODS if m not in BASE_METHODS and m != "auto")
    bad = [m for m in methods if m not in METHODS and m not in ("teacher", "labeled-only") and not _is_lambda(m)
           and not _options_of(m)]
    if bad:
        raise ConfigError(f"unknown methods {bad}; available: teacher, labeled-only, {', '.join(sorted(METHODS))}, "
                          "method@λ (e.g. vanilla-soft@0.5: that method with train.distill_weight = λ) and "
                          "method@key=value(+key=value) (e.g. lelp@lelp_directions=3: that method with those "
                          "method_options).")
    rows = []
    for name, seed, template in each_run(configs, names, seeds, work_dir, json_out, first_seed):
        cfg = parse_config({**template, "seed": seed, "output_dir": str(work_dir / suite / name / f"seed-{seed}")})
        t0 = time.perf_counter()
        ctx = prepare(cfg, force=True)  # benchmark folders are scratch
        teacher = get_teacher(ctx)
        store = label(ctx, teacher)
        y_test = ctx.data.labels[ctx.splits.test]
        t_acc = accuracy(teacher_outputs(store, ctx.data.ids[ctx.splits.test]), y_test)
        y_val = ctx.data.labels[ctx.splits.val]
        t_val = accuracy(teacher_outputs(store, ctx.data.ids[ctx.splits.val]), y_val)
        base = {"dataset": name, "seed": seed, "suite": suite, "teacher_accuracy": t_acc,
                "n_labeled": len(ctx.splits.labeled), "n_pool": len(ctx.splits.pool),
                "n_val": len(ctx.splits.val), "n_test": len(ctx.splits.test),
                "teacher_fingerprint": store.fingerprint, "teacher_kind": cfg.teacher.kind,
                "student": cfg.student.kind, "setup_seconds": time.perf_counter() - t0}
        for method in methods:
            t1 = time.perf_counter()
            info = {}
            if method == "teacher":
                acc, val_acc = t_acc, t_val
            else:
                lab = method == "labeled-only"
                trained, options = _options_of(method) or (method, None)
                mctx = ctx if options is None else replace(ctx, cfg=ctx.cfg.model_copy(
                    update={"method_options": {**ctx.cfg.method_options, **options}}))
                student = method.replace("@", "-").replace("=", "-").replace("+", "-")  # its file name
                info = train(mctx, store, method=None if lab else trained, labeled_only=lab, name=student)
                acc = accuracy(student_test_probs(mctx, student), y_test)
                val_acc = accuracy(student_probs(mctx, student, ctx.splits.val), y_val)
            # val_accuracy: what a user can see to choose a method (V also fits the corrections)
            row = {**base, "method": method, "test_accuracy": acc, "val_accuracy": val_acc,
                   "seconds": time.perf_counter() - t1}
            if method == "auto":  # every candidate's V score with its interval: what the advice reads
                row["auto"] = {k: v for k, v in info["auto"].items() if k != "note"}
            rows.append(row)
            _append_row(json_out, row)
            if on_row is not None:
                on_row(row)
            log(f"{name} seed={seed} {method:22s} test_accuracy={100 * acc:.2f}  (teacher {100 * t_acc:.2f})")
    return rows


def _options_of(spec: str) -> tuple[str, dict] | None:
    """A method with its own options as the benchmark names it, "lelp@lelp_directions=3" (values
    read as YAML scalars; `+` between several), as (method, options), checked; None if `spec` is
    not of that form (a plain method, or method@λ)."""
    from ..methods import METHODS, check_method_options
    name, at, rest = spec.partition("@")
    if not at or "=" not in rest:
        return None
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} in {spec!r}; available: {', '.join(sorted(METHODS))}.")
    options = key_values(rest, f"method variant {spec!r}: write method@key=value(+key=value), e.g. "
                               "lelp@lelp_directions=3.")
    check_method_options(name, options)
    return name, options


def key_values(text: str, usage: str) -> dict:
    """"a=1+b=x" as {"a": 1, "b": "x"} (values read as YAML scalars): the settings of a benchmark
    variant after its @ (bench quality's methods, bench active's strategies); ConfigError(usage)
    for a part that is not key=value."""
    import yaml
    out = {}
    for part in filter(None, text.split("+")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ConfigError(usage)
        out[key] = yaml.safe_load(value)
    return out


def _is_lambda(name: str) -> bool:
    """A method@λ name (auto's λ candidates), which `train` plans like a method."""
    from ..methods import parse_candidate
    try:
        return "@" in name and parse_candidate(name)[0] is not None
    except ConfigError:
        return False


def summarize(rows: list[dict]) -> str:
    """Mean ± std (over seeds) of test accuracy per data set and method, as a Markdown table."""
    out = ["| dataset | method | test accuracy (%) | seeds |", "|---|---|---|---|"]
    keys = []
    for r in rows:
        k = (r["dataset"], r["method"])
        if k not in keys:
            keys.append(k)
    for d, m in keys:
        acc = np.array([100 * r["test_accuracy"] for r in rows if r["dataset"] == d and r["method"] == m])
        out.append(f"| {d} | {m} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0.0:.2f} | {len(acc)} |")
    return "\n".join(out)


def _mean_std(a, signed: bool = False) -> str:
    a = np.asarray(a, dtype=np.float64)
    return f"{a.mean():{'+' if signed else ''}.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def report(rows: list[dict], baseline: str = "vanilla-soft") -> str:
    """Markdown: test accuracy (mean ± std over seeds) per method × data set, the gain over
    `baseline` paired by seed (same split and teacher, so most seed noise cancels), and the
    method chosen on V per seed (`chosen_on_validation`) among the distillation methods."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["dataset"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in rows}
    head = "| method | " + " | ".join(datasets) + " |\n|---|" + "---|" * len(datasets)
    acc, gain = [head], [head]
    for m in methods:
        a_cells, g_cells = [], []
        for d in datasets:
            seeds = sorted(s for (dd, mm, s) in cell if dd == d and mm == m)
            a_cells.append(_mean_std([cell[d, m, s] for s in seeds]) if seeds else "")
            paired = [cell[d, m, s] - cell[d, baseline, s] for s in seeds if (d, baseline, s) in cell]
            g_cells.append(_mean_std(paired, signed=True) if paired and m not in (baseline, "teacher") else "")
        acc.append(f"| {m} | " + " | ".join(a_cells) + " |")
        if m not in (baseline, "teacher", "labeled-only"):
            gain.append(f"| {m} | " + " | ".join(g_cells) + " |")
    from ..methods import AUTO_CANDIDATES
    candidates = [m for m in AUTO_CANDIDATES if m in methods]
    chosen = chosen_on_validation(rows, candidates)
    pick = [f"| data set | test accuracy of the method chosen on V | − {baseline} (paired) | chosen (seeds) |",
            "|---|---|---|---|"]
    for d, c in chosen.items():
        diff = [acc - cell[d, baseline, s] for s, (_, acc) in c["per_seed"].items() if (d, baseline, s) in cell]
        pick.append(f"| {d} | {c['test_accuracy_mean']:.2f} ± {c['test_accuracy_std']:.2f} | "
                    + (_mean_std(diff, signed=True) if diff else "") + " | "
                    + ", ".join(f"{m} ({n})" for m, n in c["chosen"].items()) + " |")
    from .advice import summarize_advice
    advice = summarize_advice(rows, baseline)
    return ("Test accuracy (%), mean ± std over seeds:\n\n" + "\n".join(acc)
            + f"\n\nGain over {baseline} in points, paired by seed (mean ± std):\n\n" + "\n".join(gain)
            + (f"\n\nThe best on V per seed among {', '.join(candidates)} (the plain rule; `method: auto` "
               "cross-fits V and keeps the simplest within noise of the best or the best, by which rule scores higher "
               "on held-out halves of V — see its own row):\n\n"
               + "\n".join(pick) if chosen else "")
            + ("\n\nHow often each rule's pick (from V) is the test winner among auto's candidates "
               "(`bench.advice`):\n\n" + advice if advice else ""))


def chosen_on_validation(rows: list[dict], methods: list[str]) -> dict[str, dict]:
    """Per data set: in each seed, the method among `methods` with the best accuracy on V (what a
    user can see), and that method's test accuracy; mean ± std over seeds and how often each was
    chosen. This is the honest number for "use whichever correction looks best on V"."""
    out = {}
    for d in dict.fromkeys(r["dataset"] for r in rows):
        picks, accs, seeds = [], [], []
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == d}):
            cand = [r for r in rows if r["dataset"] == d and r["seed"] == seed and r["method"] in methods
                    and r.get("val_accuracy") is not None]
            if not cand:
                continue
            best = max(cand, key=lambda r: (r["val_accuracy"], -methods.index(r["method"])))
            picks.append(best["method"])
            accs.append(100 * best["test_accuracy"])
            seeds.append(seed)
        if accs:
            a = np.array(accs)
            out[d] = {"test_accuracy_mean": float(a.mean()), "test_accuracy_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                      "chosen": {m: picks.count(m) for m in dict.fromkeys(picks)}, "seeds": len(a),
                      "per_seed": dict(zip(seeds, zip(picks, accs)))}
    return out
