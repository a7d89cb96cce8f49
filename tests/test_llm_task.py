"""The LLM teacher's task (prompt, verbalizers, parsing) and scoring functions: plain functions, no model."""

import json

import numpy as np
import pytest

from mentor.config import parse_config
from mentor.errors import ConfigError, DataError
from mentor.teachers.llm import scoring as sc
from mentor.teachers.llm.task import (LLMTask, check_texts, choose_shots, parse_answer, render_prompt,
                                      similar_shots, truncate_to_fit)

LABELS = ["computers", "food", "sports"]


def test_default_prompt_lists_labels_and_ends_with_answer_slot():
    task = LLMTask.build(LABELS, descriptions={"food": "cooking and eating"})
    p = render_prompt(task, "My  CPU\nis hot", [("pizza tonight", 1)])
    assert p.endswith("Text: My CPU is hot\nAnswer:")
    assert "labels: computers, food, sports.\nfood: cooking and eating\nReply with the label only." in p
    assert "Text: pizza tonight\nAnswer: food\n\n" in p  # the shot, with its label's verbalizer


def test_template_without_text_slot_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"no \{text\} slot"):
        LLMTask.build(LABELS, template="{instructions} Answer:")
    with pytest.raises(ConfigError, match="cannot be filled"):
        LLMTask.build(LABELS, template="{text} {oops}")


def test_same_or_empty_verbalizer_is_refused():
    with pytest.raises(ConfigError, match="same verbalizer"):
        LLMTask.build(["pos", "neg"], verbalizers={"pos": "Good", "neg": "good!"})
    with pytest.raises(ConfigError, match="empty verbalizer"):
        LLMTask.build(["pos", "neg"], verbalizers={"neg": "  "})
    with pytest.raises(ConfigError, match="not labels"):
        LLMTask.build(["pos", "neg"], verbalizers={"positive": "good"})


def test_texts_checked_empty_and_non_utf8():
    assert check_texts(["a", b"caf\xc3\xa9"]) == ["a", "café"]
    with pytest.raises(DataError, match="not UTF-8"):
        check_texts([b"caf\xe9"], ids=["x1"])
    with pytest.raises(DataError, match="id 'x2'.*empty"):
        check_texts(["ok", "  "], ids=["x1", "x2"])


def test_truncation_cuts_the_text_never_the_instructions():
    task = LLMTask.build(LABELS)
    count = lambda s: len(s.split())  # noqa: E731 - a whitespace "tokenizer"
    text = " ".join(f"w{i}" for i in range(200))
    limit = count(render_prompt(task, "", [])) + 50
    cut, was_cut = truncate_to_fit(task, text, [], count, limit)
    assert was_cut and count(render_prompt(task, cut, [])) <= limit
    assert cut == " ".join(f"w{i}" for i in range(len(cut.split())))  # a prefix of the text
    assert len(cut.split()) >= 49  # as much as fits
    assert truncate_to_fit(task, "short", [], count, limit) == ("short", False)
    with pytest.raises(ConfigError, match="without the example's text"):
        truncate_to_fit(task, text, [], count, 5)


def test_parse_answer_exact_normalised_mentioned_close_or_abstain():
    task = LLMTask.build(LABELS)
    assert parse_answer("food", task) == 1
    assert parse_answer(" Food.", task) == 1
    assert parse_answer("Answer: SPORTS", task) == 2
    assert parse_answer("I think it is about computers", task) == 0
    assert parse_answer("computrs", task) == 0      # closest spelling
    assert parse_answer("weather", task) is None    # matches nothing: abstain, never guess
    assert parse_answer("food or sports", task) is None  # two labels named: ambiguous


def test_per_class_shots_are_seeded_and_balanced():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    a = choose_shots("per-class", y, 3, 2, seed=1)
    assert a == choose_shots("per-class", y, 3, 2, seed=1)
    assert sorted(np.bincount(y[a], minlength=3)) == [2, 2, 2]
    assert choose_shots("per-class", y, 3, 0, seed=1) == []


def test_similar_shots_most_similar_last():
    a = np.eye(3)
    q = np.array([[0.9, 0.1, 0.0]]) / np.linalg.norm([0.9, 0.1])
    assert similar_shots(q, a, 2).tolist() == [[1, 0]]


# ------------------------------------------------------------------------------------ scoring

def test_label_likelihood_is_softmax_and_calibration_removes_prior():
    scores = np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]))
    p = sc.label_likelihood_probs(scores)
    np.testing.assert_allclose(p, np.exp(scores) / np.exp(scores).sum(1, keepdims=True))
    # a prompt prior toward label 0 (content-free scores) is divided out
    cf = np.log(np.array([0.8, 0.1, 0.1]))
    pc = sc.label_likelihood_probs(scores, cf)
    assert pc[0].argmax() == 1 and np.allclose(pc.sum(1), 1)


def test_top_logprobs_matches_tokens_and_spreads_unseen_mass():
    top = {" Food": np.log(0.5), "food": np.log(0.1), "The": np.log(0.2), " sports": np.log(0.1)}
    p, cov = sc.top_logprobs_probs(top, LABELS)
    assert cov == pytest.approx(0.7)
    # listed total 0.9: the 0.1 not shown goes to 'computers', the only label not listed
    np.testing.assert_allclose(p, np.array([0.1, 0.6, 0.1]) / 0.8)
    p0, cov0 = sc.top_logprobs_probs({"The": 0.0}, LABELS)
    assert cov0 == 0 and np.allclose(p0, 1 / 3)


def test_sampling_frequencies_with_pseudo_count_and_abstentions():
    p, bad = sc.sampled_probs([1, 1, None, 0], 3, pseudo_count=0.5)
    np.testing.assert_allclose(p, np.array([1.5, 2.5, 0.5]) / 4.5)
    assert bad == 1
    p, bad = sc.sampled_probs([None, None], 3)
    assert bad == 2 and np.allclose(p, 1 / 3)


def test_single_answer_smoothed():
    np.testing.assert_allclose(sc.single_answer_probs(2, 3, 0.1), [0.05, 0.05, 0.9])
    np.testing.assert_allclose(sc.single_answer_probs(None, 4), [0.25] * 4)


# ------------------------------------------------------------------------------------ config

def test_llm_config_defaults_and_errors():
    cfg = parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "llm"}})
    assert cfg.teacher.llm.scoring == "label-likelihood" and cfg.store.batch_size == 16
    with pytest.raises(ConfigError, match="price_input"):
        parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "llm", "llm": {"price_input": -1}}})
    with pytest.raises(ConfigError, match="max_spend"):
        parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "llm", "llm": {"max_spend": -0.5}}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "llm", "llm": {
            "endpoint": {"url": "http://127.0.0.1:1/v1", "model": "m"}, "local": {}}}})
    with pytest.raises(ConfigError, match="teacher.kind"):
        parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "mlp", "llm": {}}})
    json.dumps(cfg.model_dump())  # recordable


def test_a_call_refused_before_sending_is_not_on_the_bill(tmp_path):
    """A spending cap refuses a call before anything goes out: the store must not charge its estimate."""
    from mentor.store import TeacherStore
    from mentor.store.core import CallNotSent
    from mentor.teachers.base import Teacher, TeacherAnswer

    class Capped(Teacher):
        n_classes, fingerprint, cost_per_example = 2, "capped", 1.0

        def __init__(self):
            self.calls = 0

        def answer(self, inputs, ids=None):
            self.calls += 1
            if self.calls > 1:
                raise CallNotSent("cap reached")
            return TeacherAnswer(np.full((len(ids), 2), 0.5, np.float32), cost=0.25)

    store = TeacherStore(tmp_path / "s", fingerprint="capped", n_classes=2)
    with pytest.raises(CallNotSent):
        store.label(Capped(), [(["a", "b"], [0, 0]), (["c", "d"], [0, 0])])
    assert len(store) == 2 and store.spent == pytest.approx(0.25)  # the refused call's estimate (2.0) is not billed
    assert TeacherStore.open(tmp_path / "s").spent == pytest.approx(0.25)


def test_a_key_in_the_llm_endpoint_url_is_redacted_in_the_saved_config():
    from mentor.config import dump_config
    cfg = parse_config({"data": {"name": "fortunes"}, "teacher": {"kind": "llm", "llm": {
        "endpoint": {"url": "https://u:sk-secret-123@api.example.com/v1?api_key=sk-other-456", "model": "m"}}}})
    text = dump_config(cfg)
    assert "sk-secret-123" not in text and "sk-other-456" not in text and "api.example.com" in text


def test_abstained_pool_rows_are_not_distillation_targets(tmp_path):
    """A uniform row stored for an answer that named no label must not train a student (its
    argmax would be class 0 for hard-label methods)."""
    from mentor.pipeline import answered
    from mentor.store import TeacherStore
    from mentor.teachers.base import Teacher, TeacherAnswer

    class Sometimes(Teacher):
        n_classes, fingerprint = 2, "sometimes"

        def answer(self, inputs, ids=None):
            abst = [i.endswith("3") for i in ids]
            probs = np.array([[0.5, 0.5] if a else [0.1, 0.9] for a in abst], np.float32)
            return TeacherAnswer(probs, {"abstained": abst})

    store = TeacherStore(tmp_path / "s", fingerprint="sometimes", n_classes=2)
    ids = np.array([f"x{i}" for i in range(8)])
    store.label(Sometimes(), [(ids, np.zeros(8))])
    assert answered(store, ids).tolist() == [True, True, True, False, True, True, True, True]
    plain = TeacherStore(tmp_path / "p", fingerprint="plain", n_classes=2)
    plain.write(ids, np.full((8, 2), 0.5, np.float32))
    assert answered(plain, ids).all()  # a teacher that never abstains: every row counts
