"""`mentor bench quality` plumbing: suite templates parse, the synthetic case has the promised
structure, and a tiny run writes complete rows."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mentor import bench
from mentor.config import parse_config
from mentor.errors import ConfigError


@pytest.mark.parametrize("suite", ["smoke", "standard"])
def test_every_suite_entry_is_a_valid_run_config(tmp_path, suite):
    for name, template in bench.suite_configs(suite).items():
        cfg = parse_config({**bench.materialise(template, tmp_path), "output_dir": str(tmp_path / name)})
        assert cfg.split.n_labeled > 0, name


def test_unknown_suite_and_method_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown suite"):
        bench.suite_configs("huge")
    with pytest.raises(ConfigError, match="unknown methods"):
        bench.quality("smoke", methods=["vanilla-sof"], work_dir=tmp_path)


def test_a_method_with_its_own_options_is_one_more_row(tmp_path):
    """`--methods threshold@threshold=0.9`: that method trained with those method_options (here the
    confidence threshold it keeps), beside the plain method with the suite's options."""
    from mentor.pipeline import load_student, open_run
    configs = {"syn": {"synthetic": {"n": 1500, "dim": 10}, "data": {"path": "x"},
                       "split": {"n_labeled": 20, "n_val": 200, "n_test": 300},
                       "teacher": {"kind": "file", "path": "x"}, "student": {"kind": "logistic"},
                       "train": {"epochs": 2, "min_steps": 0}}}
    lines = []
    rows = bench.quality("custom", seeds=1, methods=["threshold", "threshold@threshold=0.9"], configs=configs,
                         work_dir=tmp_path, log=lines.append)
    assert [line.split()[0] for line in lines[-2:]] == ["syn", "syn"]  # the log names the data set
    assert [r["method"] for r in rows] == ["threshold", "threshold@threshold=0.9"]
    ctx = open_run(tmp_path / "custom" / "syn" / "seed-0")
    assert load_student(ctx, "threshold-threshold-0.9")[2]["threshold"] == 0.9
    assert load_student(ctx, "threshold")[2]["threshold"] != 0.9  # chosen on V
    with pytest.raises(ConfigError, match="not read by method 'threshold'"):
        bench.quality("custom", seeds=1, methods=["threshold@lelp_directions=3"], configs=configs,
                      work_dir=tmp_path, log=lambda *_: None)


def test_synthetic_teacher_errs_at_small_margin_and_data_is_separable(tmp_path):
    data_path, teacher_path = bench.write_synthetic_margin(tmp_path, n=4000, dim=10, gamma=0.1)
    data, teacher = pq.read_table(data_path).to_pandas(), pq.read_table(teacher_path).to_pandas()
    assert list(data["id"]) == list(teacher["id"])
    x, y = np.stack(data["x"]), data["label"].to_numpy()
    p = np.stack(teacher["probs"])
    wrong = p.argmax(1) != y
    margin = np.abs(p[:, 1] - p[:, 0])
    low, high = margin < np.quantile(margin, 0.25), margin > np.quantile(margin, 0.75)
    assert wrong[low].mean() > 4 * wrong[high].mean() and 0.05 < wrong.mean() < 0.3
    # separable: a linear fit on all points reaches (nearly) 100%
    from sklearn.svm import LinearSVC
    assert LinearSVC(C=100.0, max_iter=20000).fit(x, y).score(x, y) > 0.99


def test_tiny_quality_run_writes_complete_rows(tmp_path):
    configs = {"syn": {"synthetic": {"n": 1500, "dim": 10}, "data": {"path": "x"},
                       "split": {"n_labeled": 20, "n_val": 200, "n_test": 300},
                       "teacher": {"kind": "file", "path": "x"}, "student": {"kind": "logistic"},
                       "train": {"epochs": 2, "min_steps": 0}}}
    out = tmp_path / "rows.jsonl"
    rows = bench.quality("custom", seeds=1, methods=["teacher", "labeled-only", "slam-hard"], configs=configs,
                         json_out=out, work_dir=tmp_path, log=lambda *_: None)
    assert [r["method"] for r in rows] == ["teacher", "labeled-only", "slam-hard"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == json.loads(json.dumps(rows))
    for r in rows:
        assert {"dataset", "seed", "method", "test_accuracy", "val_accuracy", "teacher_accuracy",
                "teacher_fingerprint"} <= set(r)
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["n_labeled"] == 20 and r["n_test"] == 300
    assert rows[0]["test_accuracy"] == rows[0]["teacher_accuracy"]
    assert "| syn | slam-hard |" in bench.summarize(rows)


def test_a_run_of_some_entries_keeps_the_other_entries_rows_in_the_file(tmp_path):
    """Bug: `bench quality --datasets X --json F` deleted F first, losing the rows of every other
    entry (hours of benchmark). Now only X's rows are replaced; later seeds (first_seed > 0) append."""
    configs = {"syn": {"synthetic": {"n": 1500, "dim": 10}, "data": {"path": "x"},
                       "split": {"n_labeled": 20, "n_val": 200, "n_test": 300},
                       "teacher": {"kind": "file", "path": "x"}, "student": {"kind": "logistic"},
                       "train": {"epochs": 2, "min_steps": 0}}}
    out = tmp_path / "rows.jsonl"
    other = {"dataset": "other/A100", "seed": 0, "method": "teacher", "test_accuracy": 0.5}
    stale = {"dataset": "syn", "seed": 0, "method": "teacher", "test_accuracy": -1.0}
    out.write_text(json.dumps(other) + "\n" + json.dumps(stale) + "\n" + '{"dataset": "torn')
    rows = bench.quality("custom", seeds=1, methods=["teacher"], configs=configs, json_out=out, work_dir=tmp_path,
                         log=lambda *_: None)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [other] + json.loads(json.dumps(rows))  # the other entry kept, syn's stale row replaced
    bench.quality("custom", seeds=1, first_seed=1, methods=["teacher"], configs=configs, json_out=out,
                  work_dir=tmp_path, log=lambda *_: None)
    assert [(r["dataset"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())] == [
        ("other/A100", 0), ("syn", 0), ("syn", 1)]


def test_bare_dataset_name_selects_both_teacher_strengths():
    configs = bench.suite_configs("standard")
    assert bench.select_datasets(configs, ["letter"], "standard") == ["letter/A300", "letter/A1000"]
    assert bench.select_datasets(configs, ["letter/A1000", "synthetic-margin"], "standard") == [
        "letter/A1000", "synthetic-margin"]
    assert {configs[k]["split"]["n_labeled"] for k in ("letter/A300", "letter/A1000")} == {300, 1000}
    with pytest.raises(ConfigError, match="lettre"):
        bench.select_datasets(configs, ["lettre"], "standard")


def test_choice_on_validation_uses_val_accuracy_per_seed_never_test():
    rows = []
    for seed, (va, vb) in enumerate([(0.9, 0.8), (0.7, 0.95)]):
        rows += [{"dataset": "d", "seed": seed, "method": "a", "val_accuracy": va, "test_accuracy": 0.5},
                 {"dataset": "d", "seed": seed, "method": "b", "val_accuracy": vb, "test_accuracy": 0.99},
                 {"dataset": "d", "seed": seed, "method": "c", "val_accuracy": 1.0, "test_accuracy": 0.1}]
    got = bench.chosen_on_validation(rows, ["a", "b"])["d"]
    assert got["chosen"] == {"a": 1, "b": 1}
    assert got["test_accuracy_mean"] == pytest.approx((50 + 99) / 2)


def test_report_pairs_gains_by_seed(tmp_path):
    rows = [{"dataset": "d", "seed": s, "method": m, "test_accuracy": acc, "val_accuracy": 0.5}
            for s, base in enumerate([0.70, 0.90])
            for m, acc in (("vanilla-soft", base), ("slam", base + 0.01), ("teacher", 0.8))]
    text = bench.report(rows)
    assert "| slam | +1.00 ± 0.00 |" in text  # unpaired spread would be 14 points
    assert "| vanilla-soft | 80.00 ± 14.14 |" in text
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert bench.read_rows(path) == rows
    path.write_text("not json")
    with pytest.raises(ConfigError, match="JSON-lines"):
        bench.read_rows(path)


def test_method_auto_equals_the_choice_on_v_computed_from_rows(tmp_path):
    """`method: auto` retrains the V-best candidate; training is seeded, so its test accuracy is
    exactly what `chosen_on_validation` reads off the candidates' rows (how BENCHMARKS reports it)."""
    cands = ["vanilla-soft", "weighted-margin-hard", "slam-hard"]  # simplest first, as auto orders them
    configs = {"syn": {"synthetic": {"n": 1500, "dim": 10}, "data": {"path": "x"},
                       "split": {"n_labeled": 20, "n_val": 200, "n_test": 300},
                       "teacher": {"kind": "file", "path": "x"}, "student": {"kind": "logistic"},
                       "train": {"epochs": 3, "min_steps": 0}, "method": "auto",
                       # the plain best-on-V rule (no cross-fitting, no noise rule) is what the rows show
                       "method_options": {"auto_candidates": cands, "auto_folds": 1, "auto_noise_se": 0}}}
    rows = bench.quality("custom", seeds=1, methods=cands + ["auto"], configs=configs, work_dir=tmp_path,
                         log=lambda *_: None)
    by = {r["method"]: r for r in rows}
    chosen = bench.chosen_on_validation(rows, cands)["syn"]
    assert by["auto"]["test_accuracy"] * 100 == pytest.approx(chosen["test_accuracy_mean"])
    assert by["auto"]["val_accuracy"] == max(by[c]["val_accuracy"] for c in cands)


def test_active_summary_pairs_auc_gains_by_seed():
    from mentor.bench.active import summarize_active
    rows = [{"dataset": "d", "strategy": s, "seed": seed, "auc": base + (0.01 if s == "rad" else 0.0),
             "test_accuracy": [0.5, base]} for seed, base in enumerate([0.6, 0.9]) for s in ("random", "rad")]
    text = summarize_active(rows)
    assert "| d | rad | 76.00 ± 21.21 | +1.00 ± 0.00 |" in text


def test_selection_speed_reports_and_checks_the_kcenter_extrapolation():
    from mentor.bench.active import selection_speed
    res = selection_speed(n=20_000, repeats=1, kcenter_b=20, kcenter_centres=20, kcenter_dim=8,
                          kcenter_max_seconds=0.2)
    assert set(res["seconds"]) >= {"margin", "entropy", "rad", "dep_round_systematic"}
    for name in ("coreset", "pcoreset"):
        kc = res["kcenter"][name]
        assert kc["pool_in_60s"] >= kc["pool_sizes"][-1] and kc["verified_seconds"] > 0
        assert kc["verified_pool"] == min(kc["pool_in_60s"], 8 * 20_000)


def test_report_rows_picks_the_report_by_row_kind():
    guide = [{"arm": a, "seed": s, "val_loss": 5.0, "gap_reduction": g + 0.01 * s, "init_val_loss": 9.0}
             for s in (0, 1) for a, g in (("random", 0.0), ("weight-selection", 0.2), ("guide", 0.3))]
    text = bench.report_rows(guide)
    assert "| guide | 9.000 ± 0.000 | 5.0000 ± 0.0000 | +0.305 ± 0.007 | 2 |" in text
    assert "| guide − weight-selection | +0.100 ± 0.000 | 2/2 | 2 |" in text  # paired, not pooled
    active = [{"dataset": "d", "strategy": st, "seed": 0, "auc": a, "test_accuracy": [a]}
              for st, a in (("random", 0.5), ("rad", 0.6))]
    assert "| d | rad | 60.00 ± 0.00 | +10.00 ± 0.00 |" in bench.report_rows(active)
    with pytest.raises(ConfigError, match="mix or lack"):
        bench.report_rows(guide + active)


def test_llm_rows_report_teacher_grid_and_gain_over_argmax_labels():
    """`bench report` on `bench llm` rows: the teacher table, and students' gains over vanilla-hard
    (argmax labels, what labeling tools give), paired by seed."""
    rows = [{"dataset": "d", "row": "teacher", "scoring": "sampling", "shots": 0, "backend": "server", "seed": s,
             "teacher_accuracy": 0.5 + 0.1 * s, "ece": 0.2, "auroc": None, "abstain_rate": 0.25,
             "tokens_per_example": 100.0, "seconds_per_example": 1.0} for s in (0, 1)]
    rows += [{"dataset": "d", "row": "student", "scoring": "label-likelihood", "method": m, "seed": s,
              "test_accuracy": acc + 0.01 * s, "val_accuracy": acc, "teacher_accuracy": 0.6}
             for s in (0, 1) for m, acc in (("teacher", 0.6), ("vanilla-hard", 0.5), ("vanilla-soft", 0.55))]
    text = bench.report_rows(rows)
    assert "| d | server | sampling | 0 | 55.00 ± 7.07 |" in text  # mean ± std of the two seeds
    assert "| vanilla-soft | +5.00 ± 0.00 |" in text  # paired gain over vanilla-hard


def test_active_strategy_variants_set_keys_for_one_strategy():
    from mentor.bench.active import _budget, parse_variant
    assert parse_variant("rad") == ("rad", {})
    assert parse_variant("rad@rad_rounding=pairs+rad_m_scale=0.5") == ("rad", {"rad_rounding": "pairs",
                                                                              "rad_m_scale": 0.5})
    assert _budget(1000, 3) == [110, 220, 330] and _budget(1000, None) == [20, 50, 100, 200, 330]
    with pytest.raises(ConfigError, match="unknown strategy"):
        parse_variant("radd@rad_rounding=pairs")
    with pytest.raises(ConfigError, match="name@key=value"):
        parse_variant("rad@pairs")


def test_llm_active_summary_compares_selectors_at_equal_money(tmp_path):
    """Accuracy is read off each selector's curve at the same dollar amounts (linear between rounds),
    so a selector that buys longer (dearer) texts is compared at what it paid, not at its queries."""
    from mentor.bench.llm_active import accuracy_at, calls_in_flight, summarize_llm_active
    assert accuracy_at([0, 1, 3], [0.5, 0.7, 0.9], 2.0) == pytest.approx(0.8)
    assert accuracy_at([0, 1], [0.5, 0.7], 1.5) is None  # past its last round: not extrapolated
    base = {"bench": "llm-active", "dataset": "d", "backend": "server", "scoring": "top-logprobs",
            "teacher_val_accuracy": 0.5, "setup_dollars": 1.0, "input_tokens": 100, "calls_sent": 2,
            "max_calls_in_flight": 2}
    rows = [{**base, "selector": s, "seed": k, "round": i, "queries": 10 * i, "dollars": d, "test_accuracy": a}
            for k in (0, 1)
            for s, curve in (("random", [(0, 0.5), (1, 0.6), (2, 0.7)]), ("rad", [(0, 0.5), (2, 0.8), (4, 0.9)]))
            for i, (d, a) in enumerate(curve)]
    text = summarize_llm_active(rows, levels=2)
    assert "| random | 60.00 ± 0.00 | 70.00 ± 0.00 |  | 2 |" in text  # levels $1 and $2 (rad spent more)
    assert "| rad | 65.00 ± 0.00 | 80.00 ± 0.00 | +10.00 ± 0.00 | 2 |" in text
    ledger = tmp_path / "_ledger.jsonl"
    ledger.write_text("\n".join(json.dumps(r) for r in [
        {"e": "send", "call": "a"}, {"e": "send", "call": "b"}, {"e": "done", "call": "a"},
        {"e": "send", "call": "c"}, {"e": "failed", "call": "b"}, {"e": "done", "call": "c"}]) + "\n")
    assert calls_in_flight(ledger) == (3, 2)


def test_llm_teacher_rows_tell_similar_shots_from_fixed():
    rows = [{"dataset": "d", "row": "teacher", "scoring": "label-likelihood", "shots": k, "backend": "local",
             "seed": 0, "teacher_accuracy": a, "ece": 0.1, "auroc": 0.5, "abstain_rate": 0.0,
             "tokens_per_example": 10.0, "seconds_per_example": 1.0, **({"shot_selection": sel} if sel else {})}
            for k, sel, a in ((0, None, 0.5), (1, None, 0.4), (1, "similar", 0.7))]
    rows.append({"dataset": "d", "row": "teacher", "scoring": "top-logprobs", "shots": 1, "backend": "server",
                 "seed": 0, "shot_selection": "similar", "error": "no top_logprobs"})  # a failed entry is reported
    text = bench.report_rows(rows)
    assert "failed: d seed 0 server top-logprobs shots=1 similar: no top_logprobs" in text
    assert "| d | local | label-likelihood | 1 | 40.00 ± 0.00 |" in text  # older rows: fixed per class
    assert "| d | local | label-likelihood | 1 similar | 70.00 ± 0.00 |" in text


def test_bench_quality_cli_takes_a_first_seed(tmp_path):
    """`mentor bench quality --first-seed 2 --seeds 1`: the run is seed 2 (more seeds later, or side
    by side, append to the same rows file)."""
    from typer.testing import CliRunner

    from mentor.cli import app
    out = tmp_path / "rows.jsonl"
    res = CliRunner().invoke(app, ["bench", "quality", "--suite", "smoke", "--datasets", "digits", "--methods",
                                   "teacher", "--seeds", "1", "--first-seed", "2", "--json", str(out),
                                   "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["seed"] for r in rows} == {2} and rows
    bad = CliRunner().invoke(app, ["bench", "quality", "--first-seed", "-1"])
    assert bad.exit_code == 2 and "--first-seed" in bad.output


@pytest.mark.parametrize("suite", ["smoke", "shots", "standard"])
def test_every_llm_suite_split_fits_its_data(tmp_path, suite):
    """Each llm suite's split prepares on both data sets: `standard` asked fortunes4 (1,331 usable
    texts) for 2,400 and failed before its first row."""
    from mentor.bench.llm import llm_suite
    from mentor.pipeline import prepare
    spec = llm_suite(suite)
    for name, data in spec["data"].items():
        split = spec.get("split_of", {}).get(name, spec["split"])
        ctx = prepare(parse_config({"data": data, "split": split, "student": {"kind": "tfidf"},
                                    "teacher": {"kind": "llm"}, "output_dir": str(tmp_path / name)}), force=True)
        assert len(ctx.splits.test) == split["n_test"] and len(ctx.splits.pool) > 0


def test_bench_llm_skip_names_a_grid_entry_or_is_refused_before_anything_starts(tmp_path):
    """`--skip` leaves grid entries out; a misspelt one is refused (exit 2) before a server or a
    model is started, naming the entries there are."""
    from typer.testing import CliRunner
    from mentor.cli import app
    r = CliRunner().invoke(app, ["bench", "llm", "--suite", "standard", "--skip", "server/label-likelihod",
                                 "--work-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "server/label-likelihood" in r.output and "names no grid entry" in r.output
    assert not list(tmp_path.iterdir())


def test_cascade_llm_suite_is_bench_llms_student_runs_with_stores_in_the_work_dir(tmp_path):
    """`bench cascade --suite llm` trains on the same data, split, teacher and student settings as
    `bench llm --suite standard`'s students, so copying that run's stores in pays nothing twice."""
    from mentor.bench.cascade import cascade_suite
    from mentor.bench.llm import llm_suite, student_config
    configs = cascade_suite("llm", tmp_path)
    assert set(configs) == {"fine-foods", "fortunes4"}
    for name, c in configs.items():
        cfg = parse_config({**c, "output_dir": str(tmp_path / "run")})
        assert cfg.teacher.kind == "llm" and cfg.store.path == str(tmp_path / "stores" / name)
        assert c == student_config(llm_suite("standard"), name, tmp_path / "stores" / name)


def test_slow_measurements_draw_their_test_rows_from_every_class(tmp_path):
    """Split indices are sorted and fortunes is stored one topic after another: the first 200 test
    rows of fortunes4 were all "computers", so `bench llm`'s teacher rows (and the served inputs of
    `bench serve`) measured one class. `random_rows` draws them at random, seeded."""
    from mentor.bench.llm import llm_suite, run_template
    from mentor.bench.quality import random_rows
    from mentor.pipeline import prepare
    spec = llm_suite("standard")
    ctx = prepare(parse_config({**run_template(spec, "fortunes4"), "teacher": {"kind": "llm"},
                                "output_dir": str(tmp_path)}), force=True)
    test, y = ctx.splits.test, ctx.data.labels
    assert len(set(y[test[:200]])) == 1  # the trap
    rows = random_rows(test, 200, seed=0)
    assert len(set(y[rows])) == 4 and len(set(rows)) == 200 and set(rows) <= set(test)
    assert np.array_equal(rows, random_rows(test, 200, seed=0))


def test_bench_llm_students_run_the_seeds_from_first_seed(tmp_path, monkeypatch):
    """`bench llm --first-seed 3 --seeds 2` distils students for seeds 3 and 4 (before: the option
    reached only --active, and students always ran seeds 0..), appending to the rows file."""
    from typer.testing import CliRunner
    import importlib
    quality_mod = importlib.import_module("mentor.bench.quality")
    from mentor.cli import app
    calls = []

    def fake_quality(suite, *, seeds, first_seed=0, on_row=None, **kw):  # records what bench_llm asks; trains nothing
        calls.append((suite, seeds, first_seed, kw["datasets"]))
        rows = []
        for s in range(first_seed, first_seed + seeds):
            rows.append({"dataset": kw["datasets"][0], "seed": s, "method": "teacher"})
            on_row(rows[-1])
            # each row is in the file as soon as it is measured (before: only after every seed had run,
            # so a bench killed in its last seed lost all its student rows)
            assert json.loads(out.read_text().splitlines()[-1])["seed"] == s
        return rows
    monkeypatch.setattr(quality_mod, "quality", fake_quality)
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"dataset": "fine-foods", "seed": 0, "method": "teacher"}) + "\n")
    from mentor.bench.llm import bench_llm
    rows = bench_llm("standard", seeds=2, first_seed=3, teachers=False, datasets=["fine-foods"],
                     work_dir=tmp_path, json_out=out, log=lambda *a: None)
    assert calls == [("standard", 2, 3, ["fine-foods"])]
    assert [r["seed"] for r in rows] == [3, 4]
    assert [json.loads(l)["seed"] for l in out.read_text().splitlines()] == [0, 3, 4]  # seed 0's row kept
    bad = CliRunner().invoke(app, ["bench", "llm", "--first-seed", "-1", "--work-dir", str(tmp_path / "w")])
    assert bad.exit_code == 2 and "--first-seed" in bad.output
