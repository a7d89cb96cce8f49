"""How often the printed advice names the method that wins on test (issue 14, item 2).

Reads `mentor bench quality` rows. Per (data set, seed): the test winner among the candidates
that ran (auto's default candidates), and what each rule advised, from V only:
- `one-number`: the rule printed before issue 14 (student vs teacher on V -> a regime -> a method);
- `one-method`: `evaluate.advice_from_run` after `baseline` alone (labeled-only if it is above it
  on V beyond noise, else `baseline`; unpaired SE, as the rows keep no per-example scores);
- `best-on-V`: the candidate with the highest V accuracy (rows saved without auto's record);
- `advice`: `evaluate.advice_from_candidates` on the `auto` row's record (paired, cross-fitted V):
  auto's choice (the simplest candidate within noise of the best, or the best, whichever rule
  scored higher on held-out halves of V); its accuracy is the auto row's;
- `advice-best`: the best on V in that same record (its own row's test accuracy).
No threshold here is fitted: the one-number rule's are the ones it shipped with, the advice's
noise level is one paired SE (the first of auto's default rules), its rule the one auto chose on V.
"""

from __future__ import annotations

import numpy as np

from ..evaluate import advice_from_candidates, advice_from_run
from ..methods import AUTO_CANDIDATES

NEAR = 0.3  # points: "within 0.3 of the test winner" counts as a good pick (the tolerance)


def one_number_rule(teacher_val: float, student_val: float, labeled_val: float | None) -> str | None:
    """The pre-issue-14 hint as a method name: below labeled-only -> labeled-only; reaches the
    teacher -> slam-hard; 3+ points below it -> calibrated-soft; else no method (None)."""
    if labeled_val is not None and labeled_val > student_val + 0.005:
        return "labeled-only"
    if student_val >= teacher_val - 0.005:
        return "slam-hard"
    if student_val < teacher_val - 0.03:
        return "calibrated-soft"
    return None


def _seed_table(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["seed"]), {})[r["method"]] = r
    return out


def advice_picks(rows: list[dict], baseline: str = "vanilla-soft") -> list[dict]:
    """One record per (data set, seed) with every candidate's test accuracy (points), the test
    winner, and each rule's pick with its test accuracy. The one-number rule reads `baseline`'s V
    accuracy as "the distilled student" (what `mentor run` trained); where it names no method its
    fallback is `baseline` itself (the user keeps what they ran)."""
    out = []
    for (d, seed), by in _seed_table(rows).items():
        cand = {m: 100 * by[m]["test_accuracy"] for m in AUTO_CANDIDATES
                if m in by and by[m].get("val_accuracy") is not None}
        if baseline not in cand or by.get("teacher", {}).get("val_accuracy") is None:
            continue
        win = max(cand.values())
        rec = {"dataset": d, "seed": seed, "test": cand, "winner": max(cand, key=cand.get), "winner_accuracy": win}
        val = {m: by[m]["val_accuracy"] for m in cand}
        lab = val.get("labeled-only")
        old = one_number_rule(by["teacher"]["val_accuracy"], val[baseline], lab)
        rec["one-number"] = {"method": old, "accuracy": cand.get(old or baseline)}
        run = advice_from_run({"method": baseline, "student": {"val_accuracy": val[baseline]},
                               "labeled_only": {"val_accuracy": lab} if lab is not None else {},
                               "sizes": {"n_val": by[baseline].get("n_val")}})
        rec["one-method"] = {"method": run["method"], "accuracy": cand.get(run["method"] or baseline)}
        best = max(val, key=lambda m: (val[m], -AUTO_CANDIDATES.index(m)))
        rec["best-on-V"] = {"method": best, "accuracy": cand[best]}
        if "auto" in by and by["auto"].get("auto"):
            a = advice_from_candidates(by["auto"]["auto"])
            # the advice's accuracy is the auto row's: that student is what following it gives
            rec["advice"] = {"method": a["method"], "verdict": a["verdict"], "near": a["near"], "best": a["best"],
                             "accuracy": 100 * by["auto"]["test_accuracy"]}
            # the same record's best on V (not the simplest within noise), trained as its own row
            rec["advice-best"] = {"method": a["best"], "accuracy": cand.get(a["best"])}
        out.append(rec)
    return out


def summarize_advice(rows: list[dict], baseline: str = "vanilla-soft") -> str:
    """Markdown: per rule, the share of (data set, seed) where its pick is the test winner, within
    NEAR points of it, and the mean shortfall (only where its pick ran); then the advice's verdicts."""
    picks = advice_picks(rows, baseline)
    if not picks:
        return ""
    lines = [f"| rule | (data set, seed) | names the test winner | within {NEAR} points of it | mean shortfall (points) "
             "| names no method |", "|---|---|---|---|---|---|"]
    for rule in ("one-number", "one-method", "best-on-V", "advice", "advice-best"):
        got = [p for p in picks if rule in p and p[rule]["accuracy"] is not None]  # its pick ran
        if not got:
            continue
        short = np.array([p["winner_accuracy"] - p[rule]["accuracy"] for p in got])
        hit = sum(p[rule]["method"] == p["winner"] or s <= 1e-9 for p, s in zip(got, short))
        near = int((short <= NEAR + 1e-9).sum())
        none = sum(p[rule]["method"] is None for p in got)
        lines.append(f"| {rule} | {len(got)} | {hit} ({100 * hit / len(got):.0f}%) | {near} ({100 * near / len(got):.0f}%) "
                     f"| {short.mean():.2f} | {none} |")
    rules = [r for r in ("one-number", "one-method", "best-on-V", "advice", "advice-best") if any(r in p for p in picks)]
    lines += ["", f"Within {NEAR} points of the test winner, per data set (seeds):", "",
              "| data set | test winners | " + " | ".join(rules) + " |", "|---|---|" + "---|" * len(rules)]
    for d in dict.fromkeys(p["dataset"] for p in picks):
        g = [p for p in picks if p["dataset"] == d]
        wins = {w: sum(p["winner"] == w for p in g) for w in dict.fromkeys(p["winner"] for p in g)}
        ran = {r: [p for p in g if r in p and p[r]["accuracy"] is not None] for r in rules}
        cells = [f"{sum(p[r]['accuracy'] >= p['winner_accuracy'] - NEAR - 1e-9 for p in ran[r])}/{len(ran[r])}"
                 for r in rules]
        lines.append(f"| {d} | " + ", ".join(f"{w} ({n})" for w, n in wins.items()) + " | " + " | ".join(cells) + " |")
    adv = [p for p in picks if "advice" in p]
    if adv:
        inside = sum(p["winner"] in (p["advice"]["best"], *p["advice"]["near"]) for p in adv)
        lines += ["", f"The test winner was among the candidates the advice called best or within noise of it in "
                      f"{inside} of {len(adv)} (data set, seed)."]
        lines += ["", "| data set | seed | test winner | advice (verdict) | V: best, within noise | "
                  "advice − winner (points) | one-number rule |", "|---|---|---|---|---|---|---|"]
        for p in adv:
            a = p["advice"]
            lines.append(f"| {p['dataset']} | {p['seed']} | {p['winner']} {p['winner_accuracy']:.2f} | {a['method']} "
                         f"({a['verdict']}) | {a['best']}{', ' + ', '.join(a['near']) if a['near'] else ''} | "
                         f"{a['accuracy'] - p['winner_accuracy']:+.2f} | {p['one-number']['method'] or '(none)'} |")
    return "\n".join(lines)
