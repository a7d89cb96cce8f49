"""The LLM teacher through the whole pipeline, with the real SmolLM2-135M-Instruct on this machine:
label (answers and token counts kept in the store), rerun pays nothing, a changed prompt is refused
naming what changed, the estimate, the audit, a spending cap."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mentor.config import parse_config
from mentor.errors import StoreError

pytest.importorskip("transformers")
TOPICS = ["computers", "food", "sports", "medicine"]


def _cfg(tmp_path, **llm):
    return {"seed": 0, "output_dir": str(tmp_path / "run"),
            "data": {"name": "fortunes", "options": {"topics": TOPICS}},
            "split": {"n_labeled": 12, "n_val": 12, "n_test": 8, "n_pool": 16},
            "teacher": {"kind": "llm", "llm": {"local": {"batch_size": 8}, **llm}},
            "student": {"kind": "tfidf"}, "train": {"epochs": 2, "min_steps": 0}}


def _mentor(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mentor.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory):
    """One labeled run shared by the tests below (the model loads once per process)."""
    from mentor.pipeline import label, prepare
    tmp = tmp_path_factory.mktemp("llm")
    ctx = prepare(parse_config(_cfg(tmp, shots=1, price_input=2.0, price_output=8.0)))
    store = label(ctx)
    return tmp, ctx, store


def test_store_keeps_probabilities_answers_and_costs(labeled_run):
    tmp, ctx, store = labeled_run
    sp = ctx.splits
    ids = ctx.data.ids[np.concatenate([sp.val, sp.test, sp.pool])]
    assert len(store) == len(ids)
    probs = store.read(ids)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    extras = store.read_extras(ids)
    raw = [json.loads(r) for r in extras.column("raw").to_pylist()]
    assert all(set(r) == set(TOPICS) and all(v <= 0 for v in r.values()) for r in raw)  # per-label log-probs
    # the stored probabilities are the softmax of the stored scores
    scores = np.array([[r[t] for t in TOPICS] for r in raw])
    soft = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(probs, soft / soft.sum(1, keepdims=True), atol=2e-3)
    tokens_in = np.array(extras.column("input_tokens").to_pylist())
    cost = np.array(extras.column("cost").to_pylist())
    assert (tokens_in > 20).all()
    np.testing.assert_allclose(cost, tokens_in * 2.0 / 1e6, rtol=1e-9)  # output tokens 0 when scoring labels
    assert store.spent == pytest.approx(cost.sum(), rel=1e-6)  # the bill is the tokens' price, not an estimate
    assert set(extras.column("scoring").to_pylist()) == {"label-likelihood"}


def test_rerun_pays_nothing_and_a_changed_prompt_is_refused(labeled_run):
    from mentor.pipeline import label, prepare
    tmp, ctx, store = labeled_run
    spent = store.spent
    again = label(prepare(parse_config(_cfg(tmp, shots=1, price_input=2.0, price_output=8.0))))
    assert again.spent == spent and again.n_calls == store.n_calls
    changed = _cfg(tmp, shots=1, price_input=2.0, price_output=8.0, instructions="Which topic is this text about?")
    with pytest.raises(StoreError, match=r"its task changed.*Which topic"):
        label(prepare(parse_config(changed), force=True))


def test_estimate_and_audit_through_the_cli(labeled_run, tmp_path):
    cfg = _cfg(tmp_path, price_input=1.0, price_output=4.0)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _mentor("label", str(path), "--estimate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "to label: 36 examples" in r.stdout and "expected cost:" in r.stdout
    assert not (tmp_path / "run" / "store").exists() or not any((tmp_path / "run" / "store").glob("*.parquet"))
    r = _mentor("audit", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AUROC of its confidence" in r.stdout and "abstained" in r.stdout


def test_spending_cap_stops_before_paying_and_keeps_what_was_paid(tmp_path):
    from mentor.pipeline import label, prepare
    from mentor.teachers.llm.teacher import SpendingCapReached
    ctx = prepare(parse_config(_cfg(tmp_path, price_input=1000.0, max_spend=0.5)))
    with pytest.raises(SpendingCapReached, match="max_spend"):
        label(ctx)
    from mentor.store import TeacherStore
    store = TeacherStore.open(tmp_path / "run" / "store")
    assert store.spent <= 0.5 and len(store) >= 0


def test_a_student_trains_on_the_llm_answers(labeled_run):
    from mentor.pipeline import student_test_probs, train
    tmp, ctx, store = labeled_run
    info = train(ctx, store, method="vanilla-soft", name="vanilla-soft")
    probs = student_test_probs(ctx, "vanilla-soft")
    assert probs.shape == (len(ctx.splits.test), 4) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert "pool_abstentions_left_out" not in info  # label likelihood never abstains
