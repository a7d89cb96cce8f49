"""The LLM teacher against a real OpenAI-compatible server (llama-cpp-python's, serving the
SmolLM2 GGUF on 127.0.0.1): the server and the same weights run locally agree; every scoring mode
runs through `mentor label` with threads; bad settings get clear errors."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from llm_server import llama_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="needs llama-cpp-python[server] (bash scripts/setup.sh builds it)")
TOPICS = ["computers", "food", "sports", "medicine"]


@pytest.fixture(scope="module")
def server(llama_server):
    """The session's SmolLM2 server (tests/llm_server.py: one per pytest worker), its base URL."""
    return llama_server.base_url


@pytest.fixture(scope="module")
def fortunes():
    from mentor.data import load_fortunes
    d = load_fortunes(topics=TOPICS, max_words=8)  # short texts: llama.cpp's echoed log-probs cost ~0.1 s a token
    idx = np.random.default_rng(0).permutation(len(d))
    return d, idx[:8], idx[8:12]


def _teacher(server, **llm):
    from mentor.config import LLMConfig
    from mentor.teachers.llm.llamacpp import default_gguf
    llm.setdefault("endpoint", {"url": server, "model": "smollm2", "tokenizer": str(default_gguf()),
                                "context_tokens": 2048})
    return LLMConfig.model_validate(llm)


def _build(cfg, d, a):
    from mentor.teachers.llm.teacher import build_llm_teacher
    return build_llm_teacher(cfg, labels=TOPICS, a_texts=d.features[a], a_labels=d.labels[a], a_ids=d.ids[a])


def test_server_and_local_agree_on_label_likelihood(server, fortunes):
    """The same GGUF weights: llama.cpp's quantised kernels vs the dequantised float32 model.
    BENCHMARKS.md measures the agreement on more examples (`mentor bench llm`)."""
    d, a, t = fortunes
    remote = _build(_teacher(server), d, a).answer(d.features[t], d.ids[t])
    local = _build(_teacher(server, endpoint=None, local={}), d, a).answer(d.features[t], d.ids[t])
    agree = (remote.probs.argmax(1) == local.probs.argmax(1)).mean()
    diff = np.abs(remote.probs - local.probs).max()
    print(f"server vs local: top label agrees on {agree:.2%}, max |Δp| = {diff:.4f}")
    assert agree >= 0.75  # 3 of 4 here; the benchmark measures it on more
    assert diff < 0.15
    assert all(u > 0 for u in remote.extras["input_tokens"])  # usage reported by the server


def _run_label(tmp_path, server, scoring, **extra):
    from mentor.teachers.llm.llamacpp import default_gguf
    cfg = {"seed": 0, "output_dir": str(tmp_path / scoring),
           "data": {"name": "fortunes", "options": {"topics": TOPICS}},
           "split": {"n_labeled": 8, "n_val": 4, "n_test": 2, "n_pool": 4},
           "teacher": {"kind": "llm", "llm": {"scoring": scoring, "price_input": 1.0, "price_output": 2.0,
                                              "samples": 3, "max_answer_tokens": 4, **extra,
                                              "endpoint": {"url": server, "model": "smollm2",
                                                           "tokenizer": str(default_gguf())}}},
           "distribute": {"engine": "threads", "workers": 2}}
    path = tmp_path / f"{scoring}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "mentor.cli", "label", str(path)], capture_output=True, text=True,
                       timeout=900, cwd=tmp_path)
    return r, tmp_path / scoring / "store"


@pytest.mark.parametrize("scoring", ["top-logprobs", "sampling", "single-answer"])
def test_chat_scoring_modes_through_mentor_label(tmp_path, server, scoring):
    from mentor.store import TeacherStore
    r, path = _run_label(tmp_path, server, scoring)
    assert r.returncode == 0, r.stderr
    store = TeacherStore.open(path)
    ids, probs = store.read_all()
    assert len(ids) == 10 and np.allclose(probs.sum(1), 1, atol=1e-5)
    extras = store.read_extras(ids)
    assert set(extras.column("scoring").to_pylist()) == {scoring}
    tokens_in = np.array(extras.column("input_tokens").to_pylist())
    tokens_out = np.array(extras.column("output_tokens").to_pylist())
    cost = np.array(extras.column("cost").to_pylist())
    np.testing.assert_allclose(cost, (tokens_in * 1.0 + tokens_out * 2.0) / 1e6)
    assert store.spent == pytest.approx(cost.sum(), rel=1e-6)
    raw = [json.loads(x) for x in extras.column("raw").to_pylist()]
    if scoring == "top-logprobs":
        assert all(len(x["top"]) <= 20 for x in raw)
        cov = np.array(extras.column("coverage").to_pylist())
        assert ((cov >= 0) & (cov <= 1)).all()
    else:
        assert all(isinstance(x, list) and len(x) == (3 if scoring == "sampling" else 1) for x in raw)
    abst = np.array(extras.column("abstained").to_pylist())
    assert np.allclose(probs[abst], 0.25)  # an answer naming no label is uniform, never a guess


def test_unreachable_server_and_unknown_model_are_clear_errors(tmp_path, server):
    from mentor.teachers.llm.llamacpp import free_port
    r, _ = _run_label(tmp_path, f"http://127.0.0.1:{free_port()}/v1", "single-answer")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "127.0.0.1" in r.stderr
