"""Several teachers at once: the combination functions' invariants (mentor.ensemble), the config's
checks, and `mentor run` with two built-in teachers writing two separate stores."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mentor.config import parse_config
from mentor.ensemble import (LogLinearPool, average, combine, combine_val_crossfit, fit_curves, fit_log_linear,
                             log_linear, reliability_weighted, reliability_weights, vote)
from mentor.errors import ConfigError, TeacherOutputError

MENTOR = [sys.executable, "-m", "mentor.cli"]


def _teacher(y, accuracy, n_classes, rng, sharp=3.0):
    """Probabilities right `accuracy` of the time, more confident when right (an informative margin)."""
    n = len(y)
    right = rng.uniform(size=n) < accuracy
    top = np.where(right, y, (y + rng.integers(1, n_classes, n)) % n_classes)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), top] += np.where(right, sharp, 0.8)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def _chance(n, n_classes, rng):
    logits = 2.0 * rng.normal(size=(n, n_classes))  # confident-looking, unrelated to the labels
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_identical_teachers_combine_to_that_teacher():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    p = _teacher(y, 0.8, 5, rng)
    curves = fit_curves([p[:300], p[:300]], y[:300], n_classes=5)
    np.testing.assert_allclose(average([p, p]), p, atol=1e-12)
    np.testing.assert_allclose(reliability_weighted([p, p], curves), p, atol=1e-12)
    np.testing.assert_allclose(combine("reliability", [p, p, p], fit_curves([p[:300]] * 3, y[:300], n_classes=5)),
                               p, atol=1e-12)
    assert (vote([p, p]).argmax(1) == p.argmax(1)).all()


def test_a_teacher_at_chance_gets_about_no_weight():
    rng = np.random.default_rng(1)
    c, n_val = 6, 600
    y = rng.integers(0, c, 3000)
    good, noise = _teacher(y, 0.75, c, rng), _chance(len(y), c, rng)
    curves = fit_curves([good[:n_val], noise[:n_val]], y[:n_val], n_classes=c)
    w = reliability_weights([good[n_val:], noise[n_val:]], curves)
    share = w[:, 1] / np.maximum(w.sum(1), 1e-12)
    assert share.mean() < 0.05 and w[:, 0].mean() > 1.0
    combined = reliability_weighted([good[n_val:], noise[n_val:]], curves)
    acc = lambda p: (p.argmax(1) == y[n_val:]).mean()  # noqa: E731
    assert acc(combined) >= acc(good[n_val:]) - 0.01  # the noise teacher barely moves it ...
    assert acc(combined) > acc(average([good[n_val:], noise[n_val:]])) + 0.03  # ... unlike the plain average


def test_the_more_reliable_teacher_wins_where_they_disagree():
    rng = np.random.default_rng(2)
    c = 4
    y = rng.integers(0, c, 4000)
    strong, weak = _teacher(y, 0.9, c, rng), _teacher(y, 0.55, c, rng, sharp=1.0)
    curves = fit_curves([strong[:800], weak[:800]], y[:800], n_classes=c)
    combined = reliability_weighted([strong, weak], curves)[800:]
    disagree = strong[800:].argmax(1) != weak[800:].argmax(1)
    assert (combined.argmax(1)[disagree] == strong[800:].argmax(1)[disagree]).mean() > 0.8


def test_vote_ties_and_majorities():
    a = np.array([[0.6, 0.4, 0.0]])      # votes 0
    b = np.array([[0.0, 0.55, 0.45]])    # votes 1
    c = np.array([[0.0, 0.9, 0.1]])      # votes 1, very sure
    # a tie between two teachers: equal shares, and the argmax goes to the class the average prefers
    v = vote([a, b])
    np.testing.assert_allclose(v.sum(1), 1.0)
    assert abs(v[0, 0] - v[0, 1]) < 2e-3 and v[0, 2] < 1e-3
    assert v.argmax(1)[0] == average([a, b]).argmax(1)[0] == 1  # (0.3 vs 0.475)
    # a strict majority wins even when the minority is far more confident
    weak0 = np.array([[0.4, 0.35, 0.25]])
    assert vote([weak0, weak0, np.array([[0.0, 1.0, 0.0]])]).argmax(1)[0] == 0
    assert average([weak0, weak0, np.array([[0.0, 1.0, 0.0]])]).argmax(1)[0] == 1
    np.testing.assert_allclose(vote([a, b, c])[0], [1 / 3, 2 / 3, 0], atol=2e-3)


def test_bad_teacher_outputs_are_refused():
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(TeacherOutputError, match="different numbers of classes"):
        average([p, np.full((4, 5), 0.2)])
    with pytest.raises(TeacherOutputError, match="different numbers of examples"):
        vote([p, p[:2]])
    with pytest.raises(TeacherOutputError, match="at least one teacher"):
        average([])
    with pytest.raises(TeacherOutputError, match="unknown combination"):
        combine("median", [p, p])
    with pytest.raises(TeacherOutputError, match="reliability combination is fitted on V"):
        combine("reliability", [p, p])
    with pytest.raises(TeacherOutputError, match="log-linear combination is fitted on V"):
        combine("log-linear", [p, p])
    with pytest.raises(TeacherOutputError, match="fitted on 3 teachers"):
        log_linear([p, p], LogLinearPool(np.ones(3), np.zeros(3)))


@pytest.mark.parametrize("combination", ["reliability", "log-linear"])
def test_v_rows_are_weighted_by_what_was_fitted_on_the_other_half(combination):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    t = [_teacher(y, 0.7, 3, rng), _teacher(y, 0.6, 3, rng)]
    before = combine_val_crossfit(combination, t, y, n_classes=3)
    y2 = y.copy()
    y2[0::2] = (y2[0::2] + 1) % 3  # change the labels of fold 0 (even rows) only
    after = combine_val_crossfit(combination, t, y2, n_classes=3)
    np.testing.assert_allclose(after[0::2], before[0::2])  # fold 0 is weighted by fold 1's fit
    assert not np.allclose(after[1::2], before[1::2])
    np.testing.assert_allclose(combine_val_crossfit("average", t, y, n_classes=3), average(t))


def _wrong_together(y, n_classes, rng, accuracy=0.4):
    """Two weak teachers that are confident and wrong on the SAME examples, with the same wrong
    class: independent votes they are not (MNIST-1D's MLP and trees, BENCHMARKS "Several teachers")."""
    n = len(y)
    right = rng.uniform(size=n) < accuracy
    wrong = (y + 1 + rng.integers(0, n_classes - 1, n)) % n_classes
    top = np.where(right, y, wrong)
    out = []
    for _ in range(2):
        logits = 0.5 * rng.normal(size=(n, n_classes))
        logits[np.arange(n), top] += 3.0
        out.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return out


def test_log_linear_keeps_one_strong_teacher_where_reliability_weights_let_two_weak_ones_outvote_it():
    rng = np.random.default_rng(4)
    c, n_val = 10, 500
    y = rng.integers(0, c, 5000)
    strong = _teacher(y, 0.7, c, rng, sharp=2.0)
    weak = _wrong_together(y, c, rng)
    teachers = [strong, *weak]
    val, rest = [t[:n_val] for t in teachers], [t[n_val:] for t in teachers]
    acc = lambda p: (p.argmax(1) == y[n_val:]).mean()  # noqa: E731
    pool = fit_log_linear(val, y[:n_val], n_classes=c)
    assert pool.weights[0] > 0.5 and pool.weights[1:].max() < 0.25 * pool.weights[0]
    combined = log_linear(rest, pool)
    np.testing.assert_allclose(combined.sum(1), 1.0)
    assert acc(combined) >= acc(strong[n_val:]) - 0.01
    assert acc(reliability_weighted(rest, fit_curves(val, y[:n_val], n_classes=c))) < acc(strong[n_val:]) - 0.03
    # the fit is the log-loss optimum: a finite-difference gradient (not the fit's own) is ~0 along
    # every free parameter and points into the bound where a weight sits at 0
    from scipy.special import log_softmax
    logp = np.log(np.maximum(np.stack(val, 1), 1e-6))
    theta = np.concatenate([pool.weights, pool.bias])

    def loss(t):
        z = np.einsum("k,nkc->nc", t[:3], logp) + t[3:]
        return -log_softmax(z, 1)[np.arange(n_val), y[:n_val]].mean() + 1e-3 * t @ t
    h = 1e-5
    grad = np.array([(loss(theta + h * e) - loss(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
    free = np.concatenate([pool.weights > 1e-8, np.ones(c, bool)])
    assert np.abs(grad[free]).max() < 1e-4 and (grad[~free] > -1e-4).all()


def test_log_linear_weight_stays_finite_for_a_teacher_right_on_all_of_a_small_v():
    """20 V examples, a teacher right on every one: the log-loss alone falls forever as its weight
    grows (it reached 15: targets one-hot); the penalty keeps it at a few units."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 20)
    logits = rng.normal(size=(20, 5))
    logits[np.arange(20), y] += 4.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert (p.argmax(1) == y).all()
    pool = fit_log_linear([p, p[rng.permutation(20)]], y, n_classes=5)
    assert 1 < pool.weights[0] < 5


def test_log_linear_of_one_teacher_scaled_by_a_power_undoes_it():
    """One teacher whose logits were multiplied by 3 (overconfident): the fitted weight is about 1/3,
    i.e. temperature scaling falls out as the one-teacher case, and the argmax never changes."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 4000)
    p = _teacher(y, 0.8, 4, rng, sharp=1.5)  # drawn with its own noise: calibrated-ish at power 1
    sharp = p ** 3 / (p ** 3).sum(1, keepdims=True)
    w1 = fit_log_linear([p], y, n_classes=4).weights[0]
    w3 = fit_log_linear([sharp], y, n_classes=4).weights[0]
    assert w3 == pytest.approx(w1 / 3, rel=0.02)
    pool = fit_log_linear([sharp], y, n_classes=4)
    assert (log_linear([sharp], pool).argmax(1) == sharp.argmax(1)).mean() > 0.99


# ---------------------------------------------------------------------------------------------- config

_TWO = [{"name": "trees", "kind": "hgb"}, {"name": "lin", "kind": "logistic", "epochs": 5, "min_steps": 100}]


@pytest.mark.parametrize("extra, match", [
    ({"teachers": []}, "empty list"),
    ({"teachers": [_TWO[0], {**_TWO[1], "name": "trees"}]}, r"distinct.*\['trees'\]"),
    ({"teachers": _TWO, "teacher": {"kind": "mlp"}}, "not both"),
    ({"combine": "average"}, "no teachers are listed"),
    ({"teachers": [{**_TWO[0], "name": "../x"}]}, "names a folder"),
    ({"teachers": _TWO, "combine": "median"}, "combine"),
])
def test_bad_teacher_lists_are_named(extra, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"data": {"name": "digits"}, **extra})


def test_one_teacher_configs_record_as_before():
    from mentor.config import config_record
    rec = config_record(parse_config({"data": {"name": "digits"}}))
    assert "teachers" not in rec and "combine" not in rec and rec["teacher"]["kind"] == "mlp"
    rec = config_record(parse_config({"data": {"name": "digits"}, "teachers": _TWO}))
    assert "teacher" not in rec and rec["combine"] == "log-linear"
    assert parse_config(rec).teachers[1].name == "lin"  # a run folder's config.yaml reads back
    from mentor.ensemble import DEFAULT_COMBINATION
    assert parse_config({"data": {"name": "digits"}, "teachers": _TWO}).combine == DEFAULT_COMBINATION


def _write_config(tmp_path, **extra):
    cfg = {"data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 300, "n_test": 300},
           "teachers": _TWO, "student": {"kind": "logistic"}, "train": {"epochs": 3, "min_steps": 60},
           "output_dir": "run", **extra}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


def _cli(*args):
    return subprocess.run(MENTOR + list(args), capture_output=True, text=True, timeout=600)


def test_duplicate_names_exit_2_before_anything_runs(tmp_path):
    config = _write_config(tmp_path, teachers=[_TWO[0], {**_TWO[1], "name": "trees"}])
    res = _cli("run", str(config))
    assert res.returncode == 2 and "distinct" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_other_classes_exits_2(tmp_path):
    ids = [str(i) for i in range(1797)]
    pq.write_table(pa.table({"id": ids, "probs": [[0.2, 0.3, 0.5]] * len(ids)}), tmp_path / "three.parquet")
    config = _write_config(tmp_path, teachers=[{"name": "three", "kind": "file", "path": "three.parquet"}, _TWO[0]])
    res = _cli("run", str(config))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "teacher 'three'" in res.stderr and "3 classes" in res.stderr and "10" in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def two_teacher_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    config = _write_config(tmp)
    res = _cli("run", str(config))
    assert res.returncode == 0, res.stderr
    return tmp, config, res.stdout


def test_two_teachers_write_two_stores_and_record_each(two_teacher_run):
    from mentor.store import TeacherStore
    tmp, _, stdout = two_teacher_run
    run = tmp / "run"
    m = json.loads((run / "metrics.json").read_text())
    stores = {n: TeacherStore.open(run / "store" / n) for n in ("trees", "lin")}
    fps = {n: s.fingerprint for n, s in stores.items()}
    assert len(set(fps.values())) == 2 and all(len(s) == 1797 - 100 for s in stores.values())
    assert {n: t["fingerprint"] for n, t in m["teachers"]["teachers"].items()} == fps
    assert m["teachers"]["combine"] == "log-linear" and m["teacher_fingerprint"].startswith("ensemble-")
    for t in m["teachers"]["teachers"].values():
        assert 0.5 < t["val_accuracy"] <= 1 and 0.5 < t["test_accuracy"] <= 1
    # the combined teacher scored in metrics.json is the log-linear pool of the two stores, fitted on V
    from mentor.pipeline import open_run
    ctx = open_run(run)
    sp, data = ctx.splits, ctx.data
    names = list(stores)
    pool = fit_log_linear([stores[n].read(data.ids[sp.val]) for n in names], data.labels[sp.val], n_classes=10)
    test = log_linear([stores[n].read(data.ids[sp.test]) for n in names], pool)
    assert m["teacher"]["accuracy"] == pytest.approx((test.argmax(1) == data.labels[sp.test]).mean(), abs=1e-9)
    assert [m["teachers"]["teachers"][n]["log_linear_weight"] for n in names] == pytest.approx(list(pool.weights))
    assert "teacher trees (hgb)" in stdout and "combination: log-linear" in stdout
    assert f"log-linear weight {pool.weights[0]:.3f}" in stdout
    np.testing.assert_allclose(TeacherStore.open(run / "store-combined").read(data.ids[sp.val]),  # V cross-fitted
                               combine_val_crossfit("log-linear", [stores[n].read(data.ids[sp.val]) for n in names],
                                                    data.labels[sp.val], n_classes=10), atol=1e-6)
    assert yaml.safe_load((run / "config.yaml").read_text())["combine"] == "log-linear"


def test_rerun_pays_nothing_twice_and_other_combination_reuses_the_stores(two_teacher_run):
    from mentor.config import load_config
    from mentor.pipeline import label, prepare
    from mentor.store import TeacherStore
    tmp, config, _ = two_teacher_run
    run = tmp / "run"
    calls = {n: TeacherStore.open(run / "store" / n).n_calls for n in ("trees", "lin")}
    ctx = prepare(load_config(config, {"combine": "vote"}), force=True)
    store = label(ctx)
    assert {n: TeacherStore.open(run / "store" / n).n_calls for n in calls} == calls
    assert store.fingerprint.startswith("ensemble-") and len(store) == 1797 - 100
    assert json.loads((run / "ensemble.json").read_text())["combine"] == "vote"


def test_reliability_combination_through_the_cli_on_the_same_stores(two_teacher_run):
    """`mentor run --set combine=reliability`: nothing paid again; the combined store is the
    reliability-weighted mean with curves fitted on V (V's own rows cross-fitted)."""
    from mentor.pipeline import open_run
    from mentor.store import TeacherStore
    tmp, config, _ = two_teacher_run
    run = tmp / "run"
    calls = {n: TeacherStore.open(run / "store" / n).n_calls for n in ("trees", "lin")}
    res = _cli("run", str(config), "--set", "combine=reliability", "--force")
    assert res.returncode == 0, res.stderr
    assert {n: TeacherStore.open(run / "store" / n).n_calls for n in calls} == calls
    assert json.loads((run / "ensemble.json").read_text())["combine"] == "reliability"
    assert "combination: reliability" in res.stdout and "log-linear weight" not in res.stdout
    stores = [TeacherStore.open(run / "store" / n) for n in ("trees", "lin")]
    ctx = open_run(run)
    sp, data = ctx.splits, ctx.data
    curves = fit_curves([s.read(data.ids[sp.val]) for s in stores], data.labels[sp.val], n_classes=10)
    combined = TeacherStore.open(run / "store-combined")
    np.testing.assert_allclose(combined.read(data.ids[sp.test]),
                               reliability_weighted([s.read(data.ids[sp.test]) for s in stores], curves), atol=1e-6)
    cross = combine_val_crossfit("reliability", [s.read(data.ids[sp.val]) for s in stores], data.labels[sp.val],
                                 n_classes=10)
    np.testing.assert_allclose(combined.read(data.ids[sp.val]), cross, atol=1e-6)


def test_audit_shows_each_teacher(two_teacher_run):
    tmp, config, _ = two_teacher_run
    res = _cli("audit", str(config), "--force")
    assert res.returncode == 0, res.stderr
    assert "teacher trees (hgb" in res.stdout and "teacher lin (logistic" in res.stdout
    a = json.loads((tmp / "run" / "audit.json").read_text())
    assert set(a["teachers"]) == {"trees", "lin"} and a["combine"] == "log-linear"


def test_one_teacher_steps_refuse_several_teachers(two_teacher_run):
    from mentor.config import load_config
    from mentor.pipeline import get_teacher, prepare
    _, config, _ = two_teacher_run
    with pytest.raises(ConfigError, match="several teachers"):
        get_teacher(prepare(load_config(config), force=True))


def test_bench_picks_the_best_single_teacher_on_v_not_on_test():
    from mentor.bench.ensemble import summarize_ensemble, with_best_single
    rows = []
    for seed in (0, 1):
        for combo, t_val, t_test, s_test in (("single:a", 0.9, 0.80, 0.70), ("single:b", 0.8, 0.85, 0.75),
                                             ("average", 0.85, 0.84, 0.74), ("vote", 0.84, 0.83, 0.73),
                                             ("reliability", 0.88, 0.86, 0.76)):
            rows.append({"bench": "ensemble", "dataset": "d", "seed": seed, "combination": combo,
                         "method": "vanilla-soft", "teacher_val_accuracy": t_val, "teacher_accuracy": t_test,
                         "test_accuracy": s_test})
    best = [r for r in with_best_single(rows) if r["combination"] == "best-single"]
    assert len(best) == 2 and all(r["picked"] == "single:a" and r["teacher_accuracy"] == 0.80 for r in best)
    text = summarize_ensemble(rows)
    assert "| d | vanilla-soft | reliability | +6.00 ± 0.00 | +6.00 ± 0.00 | +2.00 ± 0.00 | +2.00 ± 0.00 |" in text


def test_a_combination_worse_than_its_best_teacher_on_v_is_noted(tmp_path):
    """Two teacher files: one right 95% of the time, one confidently wrong half the time. Their
    average is worse than the good one alone on V, and the run says so (warning + ensemble.json)."""
    from mentor.config import load_config
    from mentor.data import load_dataset
    from mentor.pipeline import label, prepare
    d = load_dataset("digits")
    rng = np.random.default_rng(0)
    for name, acc in (("good", 0.95), ("bad", 0.5)):
        top = np.where(rng.uniform(size=len(d.labels)) < acc, d.labels, (d.labels + 1) % 10)
        probs = np.full((len(top), 10), 0.01)
        probs[np.arange(len(top)), top] = 0.91
        pq.write_table(pa.table({"id": list(d.ids), "probs": [list(r) for r in probs]}), tmp_path / f"{name}.parquet")
    config = _write_config(tmp_path, combine="average", teachers=[
        {"name": "good", "kind": "file", "path": "good.parquet"}, {"name": "bad", "kind": "file", "path": "bad.parquet"}])
    with pytest.warns(UserWarning, match="teacher 'good' alone is more accurate on V"):
        label(prepare(load_config(config)))
    note = json.loads((tmp_path / "run" / "ensemble.json").read_text())
    assert note["teachers"]["good"]["val_accuracy"] > note["val_accuracy"] and "note" in note


def test_keys_in_any_teachers_url_never_reach_the_record():
    from mentor.config import config_record
    cfg = parse_config({"data": {"name": "digits"}, "teachers": [
        {"name": "api", "kind": "http", "url": "https://u:sk-secret1@api.example.com/predict"},
        {"name": "llm", "kind": "llm", "llm": {"endpoint": {"url": "https://u:sk-secret2@llm.example.com/v1",
                                                             "model": "m"}}}]})
    text = json.dumps(config_record(cfg))
    assert "sk-secret1" not in text and "sk-secret2" not in text and "api.example.com" in text
