"""The users' LLM story end to end against a real OpenAI-compatible server (llama-cpp-python's,
serving the SmolLM2 GGUF on 127.0.0.1): label, train, serve a cascade; the active loop priced per
token (`mentor bench llm --active`). Its own file so that a parallel test run (`pytest -n 2
--dist loadfile`) can put it beside the other LLM server tests, on the other worker."""

import subprocess
import sys

import pytest
import yaml
from llm_server import llama_server  # noqa: F401 (fixture)

TOPICS = ["computers", "food", "sports", "medicine"]


@pytest.fixture(scope="module")
def server(llama_server):
    """The session's SmolLM2 server (tests/llm_server.py: one per pytest worker), its base URL."""
    return llama_server.base_url


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
           "split": {"n_labeled": 12, "n_val": 12, "n_test": 8, "n_pool": 16},
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


def test_bench_llm_active_prices_each_round_and_runs_calls_on_threads(tmp_path, server):
    """`mentor bench llm --active` (tiny): the active loop with the LLM through the server, for rad,
    margin and random. A row's dollars are its queries' stored token counts × the prices; what the
    selectors paid plus V's labels is the store's whole bill (nothing twice); calls overlapped."""
    from mentor.bench import report_rows
    from mentor.bench.llm_active import bench_llm_active, calls_in_flight
    from mentor.store import TeacherStore
    rows = bench_llm_active("tiny", seeds=1, datasets=["fortunes4"], server_url=server, work_dir=tmp_path,
                            json_out=tmp_path / "rows.jsonl", log=lambda *a: None)
    assert [(r["selector"], r["round"]) for r in rows] == [(s, k) for s in ("random", "margin", "rad")
                                                           for k in (0, 1, 2)]
    assert (tmp_path / "rows.jsonl").read_text().count("\n") == len(rows)
    for r in rows:
        assert r["dollars"] == pytest.approx((0.15 * r["input_tokens"] + 0.60 * r["output_tokens"]) / 1e6)
        assert (r["round"] == 0) == (r["dollars"] == 0 and r["queries"] == 0)
    assert all(r["input_tokens"] > 0 and r["store_calls"] >= 1 for r in rows if r["round"] == 2)
    store = TeacherStore.open(tmp_path / "tiny" / "fortunes4" / "seed-0" / "store")
    last = [r for r in rows if r["round"] == 2]
    assert store.spent == pytest.approx(last[0]["setup_dollars"] + sum(r["paid_here"] for r in last), rel=1e-6)
    assert calls_in_flight(store.path / "_ledger.jsonl")[1] >= 2  # V's and the rounds' calls ran at once
    assert last[0]["max_calls_in_flight"] >= 2  # random buys new points each round: several calls at once
    text = report_rows(rows)
    assert "fortunes4" in text and "| rad |" in text and "− random" in text
