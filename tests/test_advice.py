"""The advice printed after a run: what the candidates' V scores support, not one number's regime."""
import numpy as np

from mentor.evaluate import advice_from_candidates, advice_from_run, method_advice
from mentor.methods import choose_on_validation


def _right(n, acc, seed):
    """n per-example 0/1 scores with exactly round(acc·n) ones, shuffled."""
    r = np.zeros(n)
    r[: int(round(acc * n))] = 1
    return np.random.default_rng(seed).permutation(r)


def _auto(scores: dict) -> dict:
    order = list(scores)
    record = choose_on_validation([scores[o] for o in order], order, standalone=("labeled-only",))
    return {**record, "order": order}


def test_says_dont_distil_when_labeled_only_is_best_on_v_beyond_noise():
    base = _right(1000, 0.70, 0)
    lab = base.copy()
    lab[np.flatnonzero(base == 0)[:80]] = 1  # right wherever the distilled ones are, and on 80 more: +8 points
    auto = _auto({"labeled-only": lab, "vanilla-soft": base, "slam-hard": _right(1000, 0.69, 1)})
    a = advice_from_candidates(auto)
    assert a["verdict"] == "dont-distil" and a["method"] == "labeled-only"
    assert a["text"].startswith("Don't distil") and "78.0%" in a["text"] and "vanilla-soft 70.0%" in a["text"]
    # the same through metrics.json's train_info, as `mentor run` and `mentor report` read it
    assert method_advice({"train_info": {"auto": auto}, "student": {"val_accuracy": 0.7}}) == a


def test_says_within_noise_when_the_top_candidates_overlap():
    soft = _right(400, 0.80, 0)
    hard = soft.copy()
    hard[np.flatnonzero(soft == 0)[:3]] = 1  # 3 more right of 400: +0.75 points, inside one paired SE
    hard[np.flatnonzero(soft == 1)[:1]] = 0
    lab = _right(400, 0.60, 2)
    a = advice_from_candidates(_auto({"labeled-only": lab, "vanilla-soft": soft, "slam-hard": hard}))
    assert a["verdict"] == "within-noise" and a["best"] == "slam-hard" and a["near"] == ["vanilla-soft"]
    assert a["method"] == "vanilla-soft"  # the simplest of those V cannot tell apart
    assert a["text"].startswith("Within noise") and "Distilling pays" in a["text"]
    # not distilling within noise of the best distilled candidate is said too, not hidden
    b = advice_from_candidates(_auto({"labeled-only": _right(400, 0.80, 3), "vanilla-soft": soft}))
    assert b["verdict"] == "within-noise" and b["near"] == ["labeled-only"] and "not distilling" in b["text"]


def test_within_noise_says_why_auto_kept_the_best_when_its_rule_did():
    """auto's rule choice (noise_se [1, 0]) kept the best though a simpler one is within noise: the
    advice must not claim it kept the simplest."""
    fold = np.array([0] * 20 + [1] * 20)
    simple = np.array(([1] * 12 + [0] * 8) * 2)
    best = np.array(([1] * 8 + [0] * 4 + [1] * 5 + [0] * 3) * 2)
    lab = np.array(([1] * 6 + [0] * 14) * 2)
    order = ["labeled-only", "vanilla-soft", "slam-hard"]
    record = choose_on_validation([lab, simple, best], order, noise_se=[1, 0], standalone=("labeled-only",), folds=fold)
    a = advice_from_candidates({**record, "order": order})
    assert a["method"] == "slam-hard" and a["verdict"] == "within-noise" and a["near"] == ["vanilla-soft"]
    assert "keeping the best scored higher" in a["text"] and "the simplest" not in a["text"]


def test_names_a_clear_winner_only_beyond_noise():
    soft = _right(1000, 0.70, 0)
    slam = soft.copy()
    slam[np.flatnonzero(soft == 0)[:60]] = 1
    a = advice_from_candidates(_auto({"labeled-only": _right(1000, 0.5, 1), "vanilla-soft": soft, "slam-hard": slam}))
    assert a["verdict"] == "clear" and a["method"] == "slam-hard" and a["near"] == []


def test_one_method_run_weighs_distilling_against_not_distilling():
    # the old one-number rule read "student ≈ teacher" as "slam-hard helps" whatever the labeled-only student did
    m = {"method": "vanilla-soft", "teacher_val_accuracy": 0.80, "sizes": {"n_val": 500},
         "student": {"val_accuracy": 0.80}, "labeled_only": {"val_accuracy": 0.86, "val_diff_se": 0.01}}
    a = method_advice(m)
    assert a["verdict"] == "dont-distil" and a["method"] == "labeled-only" and "don't distil" in a["text"]
    assert "slam-hard" not in a["text"]
    m["labeled_only"] = {"val_accuracy": 0.79, "val_diff_se": 0.015}  # +1 ± 1.5 points: noise
    assert advice_from_run(m)["verdict"] == "within-noise"
    m["labeled_only"] = {"val_accuracy": 0.79}  # no paired SE recorded: the unpaired one (wider) is used
    assert advice_from_run(m)["verdict"] == "within-noise"
    m["labeled_only"] = {"val_accuracy": 0.70, "val_diff_se": 0.015}
    assert advice_from_run(m)["verdict"] == "distil" and "method: auto" in advice_from_run(m)["text"]
    assert advice_from_run({"student": {}}) is None


def test_bench_scores_each_rule_against_the_test_winner():
    from mentor.bench.advice import advice_picks, one_number_rule, summarize_advice
    assert one_number_rule(0.80, 0.80, 0.70) == "slam-hard" and one_number_rule(0.90, 0.80, 0.70) == "calibrated-soft"
    assert one_number_rule(0.80, 0.80, 0.90) == "labeled-only" and one_number_rule(0.80, 0.78, None) is None
    base = {"dataset": "d", "seed": 0, "n_val": 1000}
    soft = _right(1000, 0.80, 0)
    lab = _right(1000, 0.60, 1)
    record = _auto({"labeled-only": lab, "vanilla-soft": soft, "slam-hard": soft})
    rows = [{**base, "method": m, "val_accuracy": v, "test_accuracy": t} for m, v, t in (
        ("teacher", 0.80, 0.80), ("labeled-only", 0.60, 0.61), ("vanilla-soft", 0.80, 0.78),
        ("slam-hard", 0.80, 0.83))] + [{**base, "method": "auto", "val_accuracy": 0.8, "test_accuracy": 0.78,
                                        "auto": record}]
    (p,) = advice_picks(rows)
    assert p["winner"] == "slam-hard" and p["one-number"]["method"] == "slam-hard"
    assert p["advice"]["method"] == "vanilla-soft" and p["advice"]["verdict"] == "within-noise"
    assert p["best-on-V"]["method"] == "vanilla-soft"  # ties on V go to the simpler
    table = summarize_advice(rows)
    assert "| one-number | 1 | 1 (100%) | 1 (100%) | 0.00 | 0 |" in table and "| advice | 1 | 0 (0%) | 0 (0%) | 5.00 | 0 |" in table
    assert "in 1 of 1 (data set, seed)" in table  # slam-hard was within noise of the best on V
