"""The cascade: lower bounds against known values, fixed-sequence testing that stops at the first
failure, the guarantee holding in simulation, the not-met report, and `mentor cascade` end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binom

from mentor.cascade import (cascade_report, cascade_run, choose_threshold, clopper_pearson_lower, lower_bound,
                            min_examples, power_start, resolve_target, sequence_starts, wilson_lower)
from mentor.config import parse_config
from mentor.errors import ConfigError, DataError, StoreError

MENTOR = [sys.executable, "-m", "mentor.cli"]


def _cli(*args):
    return subprocess.run(MENTOR + list(args), capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------- bounds

def test_clopper_pearson_known_values():
    # n right of n: P(Binomial(n, p) >= n) = p^n = delta, so the bound is delta^(1/n)
    assert clopper_pearson_lower(20, 20, 0.05) == pytest.approx(0.05 ** (1 / 20), abs=1e-12)
    assert clopper_pearson_lower(0, 20, 0.05) == 0.0
    assert clopper_pearson_lower(5, 0, 0.05) == 0.0
    # the defining equation: at the bound, seeing k or more right has probability delta
    for k, n in ((7, 10), (85, 100), (1, 3)):
        lb = clopper_pearson_lower(k, n, 0.05)
        assert binom.sf(k - 1, n, lb) == pytest.approx(0.05, abs=1e-9)
    # vectorised and monotone in k
    lbs = clopper_pearson_lower(np.array([3, 6, 9]), np.array([10, 10, 10]), 0.1)
    assert lbs.shape == (3,) and np.all(np.diff(lbs) > 0)


def test_wilson_known_value_and_it_is_the_tighter_bound():
    # hand-computed: k=8, n=10, z = 1.6448536, z² = 2.70554: (0.8 + 0.135277 − z·sqrt(0.016 + 0.0067638))
    # / 1.270554 = (0.935277 − 0.248172) / 1.270554
    assert wilson_lower(8, 10, 0.05) == pytest.approx(0.54079, abs=1e-4)
    assert wilson_lower(8, 10, 0.05) > clopper_pearson_lower(8, 10, 0.05)
    assert lower_bound(8, 10, 0.05, "wilson") == wilson_lower(8, 10, 0.05)


def test_min_examples():
    # 0.05^(1/28) = 0.8985 < 0.9 <= 0.05^(1/29) = 0.9018
    assert min_examples(0.9, 0.05) == 29
    assert min_examples(0.99, 0.05) == 299
    assert min_examples(0.9, 0.05, "wilson") < 29


# ---------------------------------------------------------------------------------------------- the threshold

def test_fixed_sequence_stops_at_the_first_failure():
    """100 sure and right, then 30 at 0.9 all wrong, then 1000 at 0.8 all right: the threshold 0.8
    would pass on its own (1100/1130 right) but the sequence stopped at 0.9, so it is not chosen."""
    conf = np.r_[np.full(100, 0.99), np.full(30, 0.9), np.full(1000, 0.8)]
    right = np.r_[np.ones(100), np.zeros(30), np.ones(1000)].astype(bool)
    c = choose_threshold(conf, right, 0.9, delta=0.05, start="min")  # the sequence starts at 29 answered
    assert c.met and 0.9 < c.threshold <= 0.99
    assert c.n_answered == 100 and c.coverage == pytest.approx(100 / 1130)
    assert c.answered_accuracy == 1.0 and c.lower_bound == pytest.approx(0.05 ** (1 / 100))
    assert lower_bound(1100, 1130, 0.05) > 0.9  # the later threshold really would pass alone
    assert c.best_coverage > c.coverage or c.best_lower_bound >= c.lower_bound

    # when the very first testable threshold fails, nothing is chosen, and the reason says why
    conf2 = np.r_[np.full(40, 0.99), np.full(1000, 0.8)]
    right2 = np.r_[np.zeros(40), np.ones(1000)].astype(bool)
    c2 = choose_threshold(conf2, right2, 0.9, start="min")
    assert not c2.met and c2.threshold is None and c2.n_tested == 1
    assert "not monotone" in c2.reason and c2.best_lower_bound > 0.9
    # the default starts where the test has power (120 answered for 90%), here the first threshold answering
    # everything (1000 of 1040 right): a single valid test, which passes
    assert power_start(0.9, 0.05) == 120 and choose_threshold(conf2, right2, 0.9).coverage == 1.0


def test_the_power_start_survives_one_early_error():
    """40 most confident with one error, then a long right stretch: a sequence starting at the
    fewest examples a pass needs (29) dies on that error; the default start (120) does not."""
    conf = np.r_[np.linspace(0.999, 0.99, 40), np.linspace(0.98, 0.5, 960)]
    right = np.r_[np.arange(40) != 5, np.ones(960, bool)]
    assert not choose_threshold(conf, right, 0.9, start="min").met
    c = choose_threshold(conf, right, 0.9)
    assert c.met and c.coverage == 1.0


def test_several_sequences_each_stop_at_their_first_failure():
    """Sequences start at growing answered counts (n0, 2·n0, ...), each at level delta/m: an early
    failure ends only its own sequence, and a wrong stretch inside one still blocks what follows it."""
    m, starts = sequence_starts(2000, 0.9, 0.05)
    assert m == 4 and starts == [min_examples(0.9, 0.05 / 4) * 2 ** j for j in range(4)]
    assert sequence_starts(30, 0.9, 0.05, max_sequences=4) == (1, [29])  # too few for more than one
    # one sequence (the default): at the power start (120 for 90%), but no later than a quarter of V
    assert sequence_starts(1000, 0.9, 0.05, max_sequences=1) == (1, [120])
    assert sequence_starts(300, 0.95, 0.05, max_sequences=1) == (1, [75])  # power start 237 > 300 / 4
    assert sequence_starts(100, 0.95, 0.05, max_sequences=1) == (1, [59])  # never before a pass is possible
    n0 = starts[0]
    # the first n0 answered have 3 errors (fails), then a long right stretch: a later sequence finds it
    conf = np.r_[np.linspace(0.999, 0.99, n0), np.linspace(0.98, 0.5, 1500)]
    right = np.r_[np.arange(n0) >= 3, np.ones(1500, bool)]
    assert not choose_threshold(conf, right, 0.9, start="min").met
    c = choose_threshold(conf, right, 0.9, max_sequences=4)
    assert c.met and c.coverage == 1.0 and c.n_sequences == 4
    # a wrong stretch after every start blocks the thresholds beyond it
    conf3 = np.r_[np.linspace(0.999, 0.6, 1600), np.full(400, 0.55), np.full(400, 0.5)]
    right3 = np.r_[np.ones(1600, bool), np.zeros(400, bool), np.ones(400, bool)]
    c3 = choose_threshold(conf3, right3, 0.9, max_sequences=4)
    assert c3.met and c3.threshold > 0.55 and c3.n_answered == 1600


def test_the_bound_holds_in_simulation():
    """Confidence c = 0.1 + 0.9·B with B ~ Beta(5, 1) (most examples confident, like a trained
    student), right with probability c (calibrated) or c² (overconfident): the answered accuracy of
    the whole population at threshold t is known in closed form, so each draw of V is checked
    against the truth. The guarantee needs no calibration, so it must hold for both."""
    rng = np.random.default_rng(0)
    target, delta, draws, n_val = 0.9, 0.1, 150, 400

    def moment(b, j):  # E[B^j | B >= b] for B ~ Beta(5, 1)
        return 5 / (5 + j) * (1 - b ** (5 + j)) / (1 - b ** 5)

    truth = {"calibrated": lambda b: 0.1 + 0.9 * moment(b, 1),
             "overconfident": lambda b: 0.01 + 0.18 * moment(b, 1) + 0.81 * moment(b, 2)}
    for name, accuracy_at in truth.items():
        for sequences in (1, 4):
            failures, coverage = 0, []
            for _ in range(draws):
                conf = 0.1 + 0.9 * rng.beta(5, 1, n_val)
                p = conf if name == "calibrated" else conf ** 2
                c = choose_threshold(conf, rng.uniform(size=n_val) < p, target, delta=delta,
                                     max_sequences=sequences)
                if c.met:
                    failures += accuracy_at(min(max((c.threshold - 0.1) / 0.9, 0.0), 0.999)) < target
                    coverage.append(c.coverage)
            assert failures / draws <= delta + 0.03, (name, sequences, failures)
            # not vacuous: it answers traffic (an overconfident student is harder to certify)
            assert len(coverage) > draws * (0.8 if name == "calibrated" else 0.3), (name, sequences, len(coverage))
            assert np.mean(coverage) > 0.1


def test_not_met_reports_best_achievable_and_the_examples_needed():
    c = choose_threshold(np.full(20, 0.99), np.ones(20, bool), 0.9, delta=0.05)
    assert not c.met and c.threshold is None and c.coverage == 0.0
    assert c.min_examples == 29 and "29" in c.reason and "20 examples" in c.reason
    assert c.best_lower_bound == pytest.approx(0.05 ** (1 / 20)) and c.best_coverage == 1.0
    # enough examples but a student not good enough: the best bound is stated
    rng = np.random.default_rng(1)
    c2 = choose_threshold(rng.uniform(size=500), rng.uniform(size=500) < 0.6, 0.95)
    assert not c2.met and 0 < c2.best_lower_bound < 0.95 and "best" in c2.reason


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0, 1.5, float("nan")])
def test_malformed_targets_are_refused(bad):
    with pytest.raises(ConfigError, match="target"):
        choose_threshold([0.9], [True], bad)


def test_targets():
    assert resolve_target(target=0.9) == (0.9, "accuracy")
    assert resolve_target(of_teacher=0.95, teacher_val_accuracy=0.8) == (pytest.approx(0.76), "of-teacher")
    assert resolve_target(teacher_val_accuracy=0.8)[1] == "of-teacher"  # the default: 95% of the teacher
    assert resolve_target(agreement=True, target=0.97) == (0.97, "agreement")
    with pytest.raises(ConfigError, match="not both"):
        resolve_target(target=0.9, of_teacher=0.95, teacher_val_accuracy=0.8)
    with pytest.raises(ConfigError, match="--target"):
        resolve_target(agreement=True, of_teacher=0.95)
    with pytest.raises(ConfigError, match="of-teacher"):
        resolve_target(of_teacher=1.2, teacher_val_accuracy=0.8)


def test_cascade_report_counts():
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.4, 0.6]])  # confident on the first two
    t = np.array([[0.8, 0.2], [0.9, 0.1], [0.1, 0.9], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    r = cascade_report(s, t, y, 0.7, price_per_call=0.5, target=0.9)
    assert r["coverage"] == 0.5 and r["answered_accuracy"] == 1.0 and r["answered_agreement"] == 0.5
    assert r["cascade_accuracy"] == 1.0 and r["teacher_accuracy"] == 0.75 and r["student_accuracy"] == 0.75
    assert r["teacher_calls"] == 2 and r["teacher_calls_saved"] == 2 and r["cost_saved"] == 1.0
    assert r["bound_held"] is True
    assert cascade_report(s, t, y, 0.7, target=0.9, kind="agreement")["bound_held"] is False
    none = cascade_report(s, t, y, None, price_per_call=0.5)
    assert none["coverage"] == 0 and none["cascade_accuracy"] == 0.75 and none["bound_held"] is None


# ---------------------------------------------------------------------------------------------- a finished run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small digits run with a priced file teacher (a logistic regression fit on 200 digits)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from mentor.data import load_dataset
    from mentor.pipeline import run
    tmp = tmp_path_factory.mktemp("cascade")
    d = load_dataset("digits")
    probs = LogisticRegression(max_iter=300).fit(d.features[:200], d.labels[:200]).predict_proba(d.features)
    pq.write_table(pa.table({"id": d.ids.astype(str), "probs": [list(r) for r in probs]}), tmp / "teacher.parquet")
    cfg = parse_config({"seed": 0, "output_dir": str(tmp / "run"), "method": "vanilla-soft",
                        "data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 400, "n_test": 400},
                        "teacher": {"kind": "file", "path": str(tmp / "teacher.parquet"), "cost_per_example": 0.002},
                        "student": {"kind": "logistic"}, "train": {"epochs": 60, "min_steps": 0}})
    run(cfg)
    return tmp / "run"


def test_cli_end_to_end(tiny_run):
    res = _cli("cascade", str(tiny_run), "--target", "0.85")
    assert res.returncode == 0, res.stderr
    rec = json.loads((tiny_run / "cascade.json").read_text())
    assert (tiny_run / "cascade.png").stat().st_size > 1000 and rec["plot"] == "cascade.png"
    assert {"target", "target_kind", "delta", "bound", "threshold", "met", "val", "test"} <= set(rec)
    assert rec["target"] == 0.85 and rec["target_kind"] == "accuracy" and rec["met"]
    t = rec["test"]
    assert {"coverage", "answered_accuracy", "cascade_accuracy", "teacher_accuracy", "teacher_calls",
            "teacher_calls_saved", "cost_saved", "bound_held"} <= set(t)
    assert t["teacher_calls"] + t["teacher_calls_saved"] == 400
    assert t["price_per_call"] == pytest.approx(0.002) and t["cost_saved"] == pytest.approx(0.002 * t["teacher_calls_saved"])
    assert rec["val"]["lower_bound"] >= 0.85 and "coverage" in res.stdout
    # the run's report is refreshed with the cascade table (it was only after `mentor report`)
    assert "Cascade: the student answers" in (tiny_run / "report.md").read_text()


def test_python_api_targets_on_a_run(tiny_run):
    agree = cascade_run(tiny_run, agreement=True, target=0.9, bound="wilson")
    assert agree["target_kind"] == "agreement" and agree["bound"] == "wilson"
    rel = cascade_run(tiny_run, of_teacher=0.9)
    assert rel["target"] == pytest.approx(0.9 * rel["val"]["teacher_accuracy"])
    hopeless = cascade_run(tiny_run, target=0.999)  # 400 V examples cannot support it
    assert not hopeless["met"] and hopeless["threshold"] is None and hopeless["test"]["coverage"] == 0
    assert hopeless["val"]["min_examples"] > 400 and hopeless["test"]["cascade_accuracy"] == \
        hopeless["test"]["teacher_accuracy"]
    lab = cascade_run(tiny_run, target=0.8, student="labeled-only")
    assert lab["student"] == "labeled-only" and (tiny_run / "cascade-labeled-only.json").exists()


def test_bad_inputs_exit_2_without_traceback(tiny_run, tmp_path):
    for args, words in ((("--target", "1.5"), "target"), (("--target", "0.9", "--of-teacher", "0.9"), "not both"),
                        (("--bound", "hoeffding"), "unknown bound")):
        res = _cli("cascade", str(tiny_run), *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr and words in res.stderr, res.stderr
    # a run folder without a trained student
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    res = _cli("cascade", str(empty))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "mentor run" in res.stderr
    with pytest.raises(DataError, match="not a mentor run folder"):
        cascade_run(tmp_path)


def test_missing_teacher_rows_name_mentor_label(tiny_run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("store"))
    with pytest.raises(StoreError, match="mentor label"):
        cascade_run(copy, target=0.9)


def test_bench_rows_report_through_bench_report(tmp_path):
    """`mentor bench report` recognises cascade rows and pairs auto against vanilla-hard by seed."""
    from mentor.bench import read_rows, report_rows
    rows = []
    for seed in range(2):
        for method, cov in (("auto", 0.8 + 0.1 * seed), ("vanilla-hard", 0.7)):
            rows.append({"bench": "cascade", "dataset": "digits", "seed": seed, "student_method": method,
                         "target": 0.95, "target_accuracy": 0.86, "met": True, "threshold": 0.5, "coverage": cov, "answered_accuracy": 0.93,
                         "cascade_accuracy": 0.92, "teacher_accuracy": 0.91, "bound_held": seed == 0,
                         "teacher_calls_saved": int(400 * cov), "student_test_ece": 0.05})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = _cli("bench", "report", str(path))
    assert res.returncode == 0, res.stderr
    text = report_rows(read_rows(path))
    assert "| digits | 0.95× teacher | auto | 2/2 | 85.00 ± 7.07 |" in text and "| 1/2 (0) |" in text
    assert "| digits | 0.95× teacher | +15.00 ± 7.07 | 2/2 |" in text and "auto − vanilla-hard coverage" in res.stdout


def test_bench_cascade_rows_and_reused_students(tmp_path):
    """The benchmark's plumbing on a tiny digits entry: one row per (student, target) with the
    promised keys; a second call with reuse_students scores the saved students without training."""
    from mentor.bench.cascade import bench_cascade
    configs = {"tiny": {"data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 300, "n_test": 300,
                                                             "n_pool": 300},
                        "teacher": {"kind": "logistic"}, "student": {"kind": "logistic"},
                        "train": {"epochs": 10, "min_steps": 0}}}
    kw = dict(seeds=1, students=("vanilla-hard",), targets=(0.9, 0.99), configs=configs,
              work_dir=tmp_path, log=lambda *_: None)
    rows = bench_cascade("custom", json_out=tmp_path / "rows.jsonl", **kw)
    assert len(rows) == 2 and len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
    need = {"dataset", "student_method", "target", "seed", "threshold", "coverage", "answered_accuracy",
            "cascade_accuracy", "bound_held", "teacher_calls_saved"}
    assert all(need <= set(r) for r in rows)
    again = bench_cascade("custom", reuse_students=True, absolute=True, **kw)
    assert [r["student_test_accuracy"] for r in again] == [r["student_test_accuracy"] for r in rows]
    assert all(r["target_kind"] == "accuracy" and r["train_seconds"] < min(x["train_seconds"] for x in rows)
               for r in again)
