"""Run report: `report.md` and `report.html` in the run folder, readable without the JSON.

Built only from the files a run leaves (metrics.json, audit.json, teacher.json, config.yaml,
active.json, cascade.json and their PNGs), so `mentor report RUN_DIR` regenerates it at any time.
One list of sections feeds both renderers: Markdown (plots linked, the PNGs sit beside it) and
HTML (plots embedded as base64 data URIs, so the one file can be mailed). Every string that comes
from the user's side (data set, method, class and path names, config text) is escaped for the
format it lands in; the HTML also carries a Content-Security-Policy that runs no script at all.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, MentorError

REPORT_FILES = ("report.md", "report.html")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- the content

@dataclass
class Section:
    """A heading and its blocks: ("p", text), ("table", header, rows), ("img", file name, alt),
    ("pre", text)."""
    title: str
    blocks: list = field(default_factory=list)

    def p(self, text):
        if text:
            self.blocks.append(("p", str(text)))

    def table(self, header, rows):
        if rows:
            self.blocks.append(("table", [str(h) for h in header], [[_cell(c) for c in r] for r in rows]))

    def img(self, name, alt):
        self.blocks.append(("img", name, alt))

    def pre(self, text):
        self.blocks.append(("pre", str(text)))


def _cell(x) -> str:
    return "—" if x is None else str(x)


def pct(x, digits: int = 2) -> str | None:
    return None if x is None else f"{100 * x:.{digits}f}%"


def num(x, digits: int = 3) -> str | None:
    return None if x is None else f"{x:.{digits}f}"


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); rerun the command that writes it (`mentor run` or "
                        "`mentor active`), or delete it to leave its section out of the report.") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a {type(value).__name__}, not a JSON object; rerun the command that writes it.")
    return value


def _read_config(run_dir: Path) -> dict:
    import yaml
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _png(run_dir: Path, name: str) -> bool:
    path = run_dir / name
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_MAGIC
    except OSError:
        return False


def report_sections(run_dir) -> tuple[str, list[Section]]:
    """The title and sections of a run folder's report."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    active = _read_json(run_dir / "active.json")
    if metrics is None and active is None:
        raise DataError(f"{run_dir} holds neither metrics.json nor active.json, so there is nothing to report; give "
                        "the output_dir of a finished `mentor run` or `mentor active`.")
    audit = _read_json(run_dir / "audit.json")
    teacher = _read_json(run_dir / "teacher.json")
    cascades = {p.name: _read_json(p) for p in sorted(run_dir.glob("cascade*.json"), key=lambda p: (p.name != "cascade.json", p.name))}
    m = metrics or {}
    dataset = (m.get("data") or {}).get("name") or (active or {}).get("dataset") or "?"
    if metrics is not None:
        title = f"mentor run: {dataset}, method {m.get('method', '?')}"
    else:
        title = f"mentor active: {dataset}, strategy {active.get('strategy', '?')}"

    if teacher is None:  # an active run keeps no teacher.json: its kind is in the config
        teacher = {"kind": (_read_config(run_dir).get("teacher") or {}).get("kind")}
    sections = [_summary(m, active), _data(m, active), _teacher(m, active, teacher),
                _audit(run_dir, audit, m.get("teacher_fingerprint") or (active or {}).get("teacher_fingerprint"))]
    if metrics is not None:
        sections += [_methods(m), _final(m)]
    sections += [_cascade(run_dir, c, name) for name, c in cascades.items()]
    if active is not None:
        sections.append(_active(run_dir, active))
    sections += [_config(run_dir), _machine(m, active)]
    return title, [s for s in sections if s.blocks]


def _summary(m: dict, active: dict | None) -> Section:
    s = Section("Summary")
    if m:
        from .evaluate import method_advice
        chosen = (m.get("train_info") or {}).get("auto", {}).get("chosen")
        method = m.get("method", "?") + (f", which chose {chosen}" if chosen else "")
        parts = [f"The distilled student (method {method}) is right on {pct(m.get('test_accuracy'))} of the test set"]
        if "labeled_only" in m:
            parts.append(f"the student trained on the labeled set alone on {pct(m['labeled_only']['accuracy'])}")
        if "teacher" in m:
            parts.append(f"the teacher on {pct(m['teacher']['accuracy'])}")
        s.p("; ".join(parts) + ".")
        if m.get("gap_closed") is not None:
            s.p(f"Gap closed (share of the teacher's lead over the labeled-only student that distilling recovered): "
                f"{m['gap_closed']:.2f}.")
        elif m.get("gap_closed_note"):
            s.p(f"Gap closed: {m['gap_closed_note']}.")
        s.p((method_advice(m) or {}).get("text"))
    if active:
        acc = active.get("test_accuracy") or []
        q = active.get("queries") or []
        if acc:
            s.p(f"Active learning ({active.get('strategy')}, retrained with {active.get('correction')}): from "
                f"{pct(acc[0])} with no teacher queries to {pct(acc[-1])} after {q[-1] if q else '?'} queries; "
                f"area under the accuracy-vs-queries curve {pct(active.get('auc'))}.")
    return s


def _data(m: dict, active: dict | None) -> Section:
    s = Section("Data")
    z = m.get("sizes") or {}
    a = active or {}
    d = m.get("data") or {}
    if d:
        s.p(f"Data set {d.get('name')} ({d.get('kind')}, {d.get('n_classes')} classes).")
    elif a.get("dataset"):
        s.p(f"Data set {a['dataset']}.")
    rows = []
    for key, name, use in (("n_labeled", "A (labeled)", "labels seen by the student (and a teacher trained here)"),
                           ("n_val", "V (validation)", "nobody trains on it: teacher reliability, choices on V"),
                           ("n_pool", "U (pool)", "labels hidden; the teacher's outputs are distilled"),
                           ("n_test", "test", "only the final numbers")):
        n = z.get(key, a.get(key))
        if n is not None:
            rows.append([name, n, use])
    s.table(["set", "examples", "used for"], rows)
    return s


def _teacher(m: dict, active: dict | None, teacher: dict | None) -> Section:
    s = Section("Teacher")
    t = teacher or {}
    fingerprint = m.get("teacher_fingerprint") or (active or {}).get("teacher_fingerprint") or t.get("fingerprint")
    rows = [["kind", t.get("kind")], ["fingerprint", fingerprint]]
    if t.get("cost_per_example") is not None:
        rows.append(["price per example", f"{t['cost_per_example']:g}"])
    for key in ("model", "scoring", "url"):
        if isinstance(t.get(key), (str, int, float)):
            rows.append([key, t[key]])
    st = m.get("store") or {}
    if st:
        rows += [["store", st.get("path")], ["stored rows", st.get("rows")], ["calls", st.get("calls")],
                 ["spent", None if st.get("spent") is None else f"{st['spent']:g}"]]
    elif t.get("store"):
        rows.append(["store", t["store"]])
    if active and active.get("spent") is not None:
        rows.append(["spent on pool queries (this active run)", f"{active['spent']:g}"])
    if m.get("teacher_val_accuracy") is not None:
        rows.append(["accuracy on V", pct(m["teacher_val_accuracy"])])
    elif active and active.get("teacher_val_accuracy") is not None:
        rows.append(["accuracy on V", pct(active["teacher_val_accuracy"])])
    s.table(["", ""], [r for r in rows if r[1] is not None])
    return s


def _audit(run_dir: Path, a: dict | None, fingerprint: str | None) -> Section:
    s = Section("Teacher reliability on V (audit)")
    if a is None:
        s.p("No audit in this folder (audit.json); `mentor audit CONFIG` writes one, then `mentor report` again.")
        return s
    if fingerprint and a.get("teacher_fingerprint") and a["teacher_fingerprint"] != fingerprint:
        s.p(f"Warning: this audit is of another teacher (fingerprint {a['teacher_fingerprint']}, the run's is "
            f"{fingerprint}); rerun `mentor audit CONFIG` for this one.")
    s.p(f"On V ({a.get('n_val')} examples) the teacher's top label is right {pct(a.get('accuracy'))} of the time. "
        f"Expected wrong pseudo-labels on the pool: {pct(a.get('estimated_pool_error_rate'))} "
        f"(about {a.get('estimated_pool_errors', 0):.0f} of {a.get('n_pool')}), read off the reliability curve "
        "at each pool example's margin.")
    if _png(run_dir, "reliability.png"):
        s.img("reliability.png", "teacher reliability curve on V and per-class accuracy")
    topk = a.get("topk_accuracy") or []
    rows = [["top-k accuracy on V", ", ".join(f"k={i + 1}: {pct(v, 1)}" for i, v in enumerate(topk[:5]))],
            ["smallest k with 90% top-k accuracy", a.get("smallest_k_90")],
            ["calibration temperature (fit on V)", num(a.get("calibration_temperature"), 2)],
            ["ECE on V", num(a.get("ece"))],
            ["AUROC of its confidence (right vs wrong)", num(a.get("confidence_auroc")) if a.get("confidence_auroc")
             is not None else "n/a (all right or all wrong)"]]
    for key, label in (("abstained_rate_val", "abstained on V"), ("abstained_rate_pool", "abstained on the pool"),
                       ("truncated_rate_val", "answers cut to fit the context (V)")):
        if a.get(key) is not None:
            rows.append([label, pct(a[key], 1)])
    s.table(["audit", "value"], [r for r in rows if r[1] not in (None, "")])
    curve = a.get("curve") or {}
    if curve.get("margin"):
        s.table(["teacher margin", *[f"{x:.1f}" for x in curve["margin"]]],
                [["P(right | margin)", *[f"{y:.2f}" for y in curve["accuracy"]]]])
    if a.get("fallback"):
        s.p(f"Note: {a['fallback']}")
    if a.get("pool_note"):
        s.p(f"Note: {a['pool_note']}")
    return s


def _methods(m: dict) -> Section:
    s = Section("Methods tried")
    info = m.get("train_info") or {}
    auto = info.get("auto")
    if auto:
        cands = auto.get("candidates") or {}
        rule = auto.get("rule_noise_se", auto.get("noise_se"))  # records before rule choice have noise_se only
        kept = f"the simplest within {rule:g} paired standard error of the best" if rule else "the best"
        s.p(f"Method auto trained {len(cands)} candidates and scored each on V ({auto.get('n_val')} examples, "
            f"{auto.get('folds')} cross-fitting folds); it keeps {kept}"
            + (" (of the rules tried, the one whose choice scored highest on V examples it did not see)"
               if auto.get("rules") else "")
            + (", or not distilling where that scores at least what choosing a distilled student scores on V "
               "examples the choice did not see" if auto.get("selection_estimate") else "")
            + f". Chosen: {auto.get('chosen')}.")
        rows = []
        for name in auto.get("order") or list(cands):
            c = cands.get(name, {})
            lo, hi = (c.get("interval95") or [None, None])[:2]
            rows.append([name + (" (chosen)" if name == auto.get("chosen") else ""), pct(c.get("val_accuracy")),
                         None if lo is None else f"{100 * lo:.1f}–{100 * hi:.1f}%",
                         None if c.get("diff_vs_reference") is None else
                         f"{100 * c['diff_vs_reference']:+.1f} ± {100 * c.get('diff_se', 0):.1f}",
                         "yes" if c.get("within_noise") else "no"])
        s.table(["candidate (simplest first)", "V accuracy", "95% interval",
                 f"vs {auto.get('reference')} (points, paired)", "within noise"], rows)
        s.p(auto.get("note"))
    else:
        st, lab = m.get("student") or {}, m.get("labeled_only") or {}
        rows = [[m.get("method"), pct(st.get("val_accuracy"))]]
        if lab:
            rows.append(["labeled-only (baseline)", pct(lab.get("val_accuracy"))])
        s.p("One method was trained (`method: auto` compares several on V).")
        s.table(["method", "V accuracy"], rows)
    return s


def _final(m: dict) -> Section:
    s = Section("Final metrics (test set)")
    val = {"teacher": m.get("teacher_val_accuracy")}
    rows = []
    for label, key in (("teacher", "teacher"), ("labeled-only student", "labeled_only"),
                       (f"distilled student ({m.get('method')})", "student")):
        r = m.get(key)
        if r:
            rows.append([label, pct(r.get("accuracy")), num(r.get("nll")), num(r.get("ece")),
                         pct(val.get(key, r.get("val_accuracy"))), num(r.get("agreement_with_teacher"))])
    s.table(["model", "test accuracy", "NLL", "ECE", "V accuracy", "agreement with teacher"], rows)
    n = (m.get("student") or {}).get("n")
    if n:
        s.p(f"Test accuracy is measured on {n} examples: one example is {100 / n:.2f} points.")
    info = m.get("train_info") or {}
    bits = [f"{info['epochs']} epochs" if info.get("epochs") else None,
            f"{info['seconds']:.1f} s of training" if info.get("seconds") is not None else None,
            f"final loss {info['final_loss']:.4f}" if info.get("final_loss") is not None else None,
            f"{info['pool_abstentions_left_out']} pool rows left out (teacher abstained)"
            if info.get("pool_abstentions_left_out") else None]
    s.p("Student training: " + ", ".join(b for b in bits if b) + "." if any(bits) else None)
    s.p(info.get("epochs_note"))
    return s


_CASCADE_ROWS = {  # cascade.json's val/test keys in the order shown, with what they mean
    "n": ("examples", None), "coverage": ("share answered by the student (coverage)", pct),
    "answered_accuracy": ("accuracy on the answered part", pct),
    "answered_agreement": ("agreement with the teacher on the answered part", pct),
    "lower_bound": ("its lower confidence bound", pct), "n_answered": ("answered by the student", None),
    "student_accuracy": ("student accuracy (answering everything)", pct),
    "teacher_accuracy": ("teacher accuracy", pct), "cascade_accuracy": ("accuracy of the whole cascade", pct),
    "teacher_calls": ("teacher calls", None), "teacher_calls_saved": ("teacher calls saved", None),
    "price_per_call": ("price per teacher call", None), "cost_all_teacher": ("cost, teacher on everything", None),
    "cost_saved": ("cost saved", None), "bound_held": ("target held", None),
    "thresholds_tested": ("thresholds tested", None), "sequences": ("threshold sequences (Bonferroni)", None),
    "min_examples": ("fewest answered examples a threshold needs", None)}


def _value(key, v):
    fmt = _CASCADE_ROWS.get(key, (None, None))[1]
    if isinstance(v, bool):
        return "yes" if v else "no"
    if fmt and isinstance(v, (int, float)):
        return fmt(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, (int, str)) or v is None else json.dumps(v, default=str)


def _cascade(run_dir: Path, c: dict, name: str) -> Section:
    student = c.get("student") or "student"
    s = Section(f"Cascade: the {student} answers when sure, the teacher otherwise"
                + ("" if name == "cascade.json" else f" ({name})"))
    kind = c.get("target_kind") or "accuracy"
    metric = "agreement with the teacher" if kind == "agreement" else "accuracy"
    val, test = c.get("val") or {}, c.get("test") or {}
    target = c.get("target")
    of = (f" ({c['of_teacher']:g} × the teacher's accuracy on V)" if isinstance(c.get("of_teacher"), (int, float))
          else "")
    level = f"{100 * (1 - c['delta']):g}% " if isinstance(c.get("delta"), (int, float)) else ""
    s.p(f"Target: {metric} of the answered part at least {pct(target) if isinstance(target, (int, float)) else target}"
        f"{of}, shown on V by a {level}{c.get('bound') or ''} lower confidence bound"
        + (f" ({c['student_method']} student)" if c.get("student_method") else "") + ".")
    if c.get("met"):
        s.p(f"Met on V with the student answering when its confidence is at least {_value('', c.get('threshold'))}."
            + (f" On test the target {'held' if test['bound_held'] else 'did not hold'}."
               if isinstance(test.get("bound_held"), bool) else ""))
    else:
        best = val.get("best_achievable") or {}
        s.p(f"Not met on V: {c.get('reason') or 'no threshold reaches the target'}. Best achievable: lower bound "
            f"{pct(best.get('lower_bound'))} at coverage {pct(best.get('coverage'))}; the cascade sends every "
            "request to the teacher.")
    keys = [k for k in _CASCADE_ROWS if k in val or k in test]
    keys += [k for k in dict.fromkeys([*val, *test]) if k not in _CASCADE_ROWS
             and not isinstance(val.get(k, test.get(k)), (dict, list, str))]
    s.table(["", "V", "test"], [[_CASCADE_ROWS.get(k, (k,))[0], _value(k, val.get(k)), _value(k, test.get(k))]
                                for k in keys if val.get(k) is not None or test.get(k) is not None])
    if test.get("price_source"):
        s.p(f"Price per teacher call from: {test['price_source']}.")
    png = c.get("plot") if isinstance(c.get("plot"), str) else name.replace(".json", ".png")
    if Path(png).name == png and _png(run_dir, png):
        s.img(png, f"accuracy of the answered part against coverage, with the chosen threshold ({png})")
    return s


def _active(run_dir: Path, a: dict) -> Section:
    s = Section("Active learning: accuracy against teacher queries")
    s.p(f"Strategy {a.get('strategy')}, each round retrained with {a.get('correction')} ({a.get('retrain')}), "
        f"seed {a.get('seed')}. Area under the curve: {pct(a.get('auc'))}."
        + (f" The teacher scores {pct(a['teacher_test_accuracy'])} on test." if a.get("teacher_test_accuracy")
           is not None else ""))
    if _png(run_dir, "active.png"):
        s.img("active.png", "student test accuracy against the number of teacher queries")
    q, acc = a.get("queries") or [], a.get("test_accuracy") or []
    spent, err = a.get("spent_per_round") or [], a.get("teacher_error_of_queries") or []
    s.table(["round", "queries", "test accuracy", "spent", "teacher wrong on the round's new queries"],
            [[r, q[r], pct(acc[r]) if r < len(acc) else None, f"{spent[r]:g}" if r < len(spent) else None,
              pct(err[r], 1) if r < len(err) and err[r] is not None else None] for r in range(len(q))])
    s.p(a.get("stopped"))
    return s


def _config(run_dir: Path) -> Section:
    s = Section("Config")
    path = run_dir / "config.yaml"
    if path.exists():
        s.p("As run, every default filled in (config.yaml in the run folder):")
        s.pre(path.read_text(errors="replace").rstrip())
    return s


def _machine(m: dict, active: dict | None) -> Section:
    s = Section("Machine")
    mach = m.get("machine") or (active or {}).get("machine") or {}
    rows = [["platform", mach.get("platform")], ["python", mach.get("python")], ["torch", mach.get("torch")],
            ["CUDA available", None if "cuda" not in mach else ("yes" if mach["cuda"] else "no")]]
    seconds = m.get("seconds") if m else (active or {}).get("seconds")
    if seconds is not None:
        rows.append(["run time", f"{seconds:.1f} s"])
    from . import __version__
    rows.append(["report written by", f"mentor {__version__}, "
                 f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"])
    s.table(["", ""], [r for r in rows if r[1] is not None])
    return s


# ---------------------------------------------------------------------------------------------- renderers

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: str) -> str:
    """Text that Markdown shows as written: its inline markup characters backslash-escaped, a
    leading block marker too, and &, <, > as entities, so no raw HTML reaches a Markdown renderer."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"^(#|[-+=](?=\s|$)|\d+(?=[.)](?:\s|$)))", lambda g: g[0] + "\\" if g[0][0].isdigit() else "\\" + g[0], text)


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {md_escape(title)}", ""]
    for sec in sections:
        lines += [f"## {md_escape(sec.title)}", ""]
        for block in sec.blocks:
            kind = block[0]
            if kind == "p":
                lines += [md_escape(block[1]), ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                lines.append("| " + " | ".join(md_escape(h) or " " for h in header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
                lines.append("")
            elif kind == "img":
                lines += [f"![{md_escape(block[2])}]({block[1]})", ""]
            elif kind == "pre":
                fence = "`" * max(3, 1 + max((len(x) for x in re.findall(r"`+", block[1])), default=0))
                lines += [fence + "text", block[1], fence, ""]
    return "\n".join(lines)


_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure { margin: 1em 0; }
figcaption { font-size: 13px; color: #666; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 13px; white-space: pre-wrap; }
nav { font-size: 14px; color: #555; }
nav a { margin-right: .8em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<nav>{% for sec in sections %}<a href="#s{{ loop.index }}">{{ sec.title }}</a>{% endfor %}</nav>
{% for sec in sections %}
<section id="s{{ loop.index }}">
<h2>{{ sec.title }}</h2>
{% for b in sec.blocks %}
{% if b[0] == "p" %}<p>{{ b[1] }}</p>
{% elif b[0] == "table" %}<table>
{% if b[1] | select | list %}<thead><tr>{% for h in b[1] %}<th>{{ h }}</th>{% endfor %}</tr></thead>{% endif %}
<tbody>{% for r in b[2] %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{% elif b[0] == "img" %}<figure><img src="{{ images[b[1]] }}" alt="{{ b[2] }}"><figcaption>{{ b[2] }}</figcaption></figure>
{% elif b[0] == "pre" %}<pre>{{ b[1] }}</pre>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""


def render_html(title: str, sections: list[Section], run_dir) -> str:
    """One self-contained page: the PNGs as data URIs, every string escaped by jinja2's autoescape."""
    import jinja2
    run_dir = Path(run_dir)
    images = {}
    for sec in sections:
        for b in sec.blocks:
            if b[0] == "img":
                data = base64.b64encode((run_dir / b[1]).read_bytes()).decode("ascii")
                images[b[1]] = "data:image/png;base64," + data
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_HTML).render(title=title, sections=sections, images=images)


def write_report(run_dir) -> tuple[Path, Path]:
    """Write report.md and report.html into a run folder from the files in it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder; give the output_dir of a `mentor run` or `mentor active`.")
    title, sections = report_sections(run_dir)
    paths = []
    for name, text in (("report.md", render_markdown(title, sections)),
                       ("report.html", render_html(title, sections, run_dir))):
        path = run_dir / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def report_after_run(ctx, store, *, stored_pool_only: bool = False) -> Path | None:
    """At the end of `mentor run` / `mentor active`: audit the teacher when the folder has no
    audit of this teacher yet, then write the report. A failure here is a warning: the run's
    results are already on disk and `mentor report RUN_DIR` can try again."""
    from .audit import audit_run
    try:
        old = _read_json(ctx.out / "audit.json")
    except MentorError:
        old = None
    try:
        if old is None or old.get("teacher_fingerprint") != store.fingerprint:
            try:
                audit_run(ctx, store, stored_pool_only=stored_pool_only)
            except MentorError as e:
                for name in ("audit.json", "reliability.png"):  # an audit of another teacher would mislead
                    (ctx.out / name).unlink(missing_ok=True)
                warnings.warn(f"the report has no teacher audit: {e}", stacklevel=2)
        _, html = write_report(ctx.out)
        return html
    except (MentorError, OSError) as e:
        warnings.warn(f"the run finished but its report was not written ({e}); fix that and run "
                      f"`mentor report {ctx.out}`.", stacklevel=2)
        return None
