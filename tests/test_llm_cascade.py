"""The users' LLM story end to end against a real OpenAI-compatible server (llama-cpp-python's,
serving the SmolLM2 GGUF on 127.0.0.1): label, train, serve a cascade. Its own file (and server) so
that a parallel test run (`pytest -n 2 --dist loadfile`) puts it beside the other LLM server tests."""

import importlib.util
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="needs llama-cpp-python[server] (bash scripts/setup.sh builds it)")
TOPICS = ["computers", "food", "sports", "medicine"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mentor.teachers.llm.llamacpp import llama_server
    with llama_server(log_dir=str(tmp_path_factory.mktemp("llama"))) as url:
        yield url


def test_cascade_with_the_llm_teacher_end_to_end(tmp_path, server):
    """The users' story: an LLM labels the pool, a small student learns from it, and `mentor serve
    --cascade` answers an OpenAI client with the student, asking the LLM (and paying it once per
    distinct text, on the ledger) only when the student is unsure."""
    import openai

    from mentor.serve import served_id
    from mentor.store import TeacherStore
    from mentor.teachers.llm.llamacpp import default_gguf
    from test_serve import cli_server
    cfg = {"seed": 0, "output_dir": str(tmp_path / "run"),
           "data": {"name": "fortunes", "options": {"topics": TOPICS}},
           "split": {"n_labeled": 8, "n_val": 8, "n_test": 4, "n_pool": 8},
           "teacher": {"kind": "llm", "llm": {"scoring": "single-answer", "price_input": 1.0, "price_output": 2.0,
                                              "max_answer_tokens": 4,
                                              "endpoint": {"url": server, "model": "smollm2",
                                                           "tokenizer": str(default_gguf())}}},
           "student": {"kind": "tfidf"}, "train": {"epochs": 5, "min_steps": 0}, "baseline": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(tmp_path / "cfg.yaml")], capture_output=True,
                       text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    text = "My computer keeps crashing when I install new software."
    with cli_server(run / "model", "--cascade", run, "--threshold", "0.999") as url:  # the LLM answers all
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        first = client.chat.completions.create(model="mentor-student", messages=[{"role": "user", "content": text}])
        assert first.choices[0].message.content in TOPICS
        assert first.model_extra["mentor"]["answered_by"] == "teacher"
        again = client.chat.completions.create(model="mentor-student", messages=[{"role": "user", "content": text}])
        assert again.choices[0].message.content == first.choices[0].message.content
        import httpx
        counts = httpx.get(url + "/health").json()["counts"]
        assert counts["teacher_paid"] == 1 and counts["teacher_from_store"] == 1
    kept = TeacherStore.open(run / "served-answers")
    extras = kept.read_extras([served_id(text)])
    assert extras.column("served_input").to_pylist() == [text]
    cost = extras.column("cost").to_pylist()[0]
    assert cost > 0 and kept.spent == pytest.approx(cost)  # the LLM's real token cost is the bill
