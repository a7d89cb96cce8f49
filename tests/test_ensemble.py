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
from mentor.ensemble import (average, combine, combine_val_crossfit, fit_curves, reliability_weighted,
                             reliability_weights, vote)
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
    with pytest.raises(TeacherOutputError, match="reliability curve"):
        combine("reliability", [p, p])


def test_v_rows_are_weighted_by_curves_fitted_on_the_other_half():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    t = [_teacher(y, 0.7, 3, rng), _teacher(y, 0.6, 3, rng)]
    before = combine_val_crossfit("reliability", t, y, n_classes=3)
    y2 = y.copy()
    y2[0::2] = (y2[0::2] + 1) % 3  # change the labels of fold 0 (even rows) only
    after = combine_val_crossfit("reliability", t, y2, n_classes=3)
    np.testing.assert_allclose(after[0::2], before[0::2])  # fold 0 is weighted by fold 1's curves
    assert not np.allclose(after[1::2], before[1::2])
    np.testing.assert_allclose(combine_val_crossfit("average", t, y, n_classes=3), average(t))


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
    assert "teacher" not in rec and rec["combine"] == "reliability"
    assert parse_config(rec).teachers[1].name == "lin"  # a run folder's config.yaml reads back


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
    assert m["teachers"]["combine"] == "reliability" and m["teacher_fingerprint"].startswith("ensemble-")
    for t in m["teachers"]["teachers"].values():
        assert 0.5 < t["val_accuracy"] <= 1 and 0.5 < t["test_accuracy"] <= 1
    assert "teacher trees (hgb)" in stdout and "combination: reliability" in stdout
    # the combined teacher scored in metrics.json is the reliability combination of the two stores
    from mentor.pipeline import open_run
    ctx = open_run(run)
    sp, data = ctx.splits, ctx.data
    names = list(stores)
    curves = fit_curves([stores[n].read(data.ids[sp.val]) for n in names], data.labels[sp.val], n_classes=10)
    test = reliability_weighted([stores[n].read(data.ids[sp.test]) for n in names], curves)
    assert m["teacher"]["accuracy"] == pytest.approx((test.argmax(1) == data.labels[sp.test]).mean(), abs=1e-9)
    assert yaml.safe_load((run / "config.yaml").read_text())["combine"] == "reliability"


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


def test_audit_shows_each_teacher(two_teacher_run):
    tmp, config, _ = two_teacher_run
    res = _cli("audit", str(config), "--force")
    assert res.returncode == 0, res.stderr
    assert "teacher trees (hgb" in res.stdout and "teacher lin (logistic" in res.stdout
    a = json.loads((tmp / "run" / "audit.json").read_text())
    assert set(a["teachers"]) == {"trees", "lin"} and a["combine"] == "reliability"


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
    assert "| d | vanilla-soft | +6.00 ± 0.00 | +6.00 ± 0.00 | +2.00 ± 0.00 | +2.00 ± 0.00 |" in text


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
