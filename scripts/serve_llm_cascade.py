"""Load test of a cascade whose fallback is a slow LLM: SmolLM2 behind llama.cpp's server labels
four fortunes topics, a TF-IDF student learns from it, `mentor cascade` picks the threshold on V,
and `mentor bench serve` measures the student alone and the cascade on distinct test inputs (so
every fallback is a new, paid LLM call, not an answer kept from before).

    OMP_NUM_THREADS=1 python scripts/serve_llm_cascade.py --work /tmp/llm-cascade --json benchmarks/serve-llm-cascade.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = ["computers", "food", "sports", "medicine"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/llm-cascade"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--n-pool", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8799,
                    help="the llama.cpp server's port: the run's config records its URL, and a rerun reuses the run")
    ap.add_argument("--target", type=float, default=None,
                    help="absolute accuracy target for the answered part (default: 95%% of the teacher's)")
    args = ap.parse_args()
    from mentor.teachers.llm.llamacpp import default_gguf, llama_server
    args.work.mkdir(parents=True, exist_ok=True)
    run = args.work / f"run-{args.seed}"
    with llama_server(port=args.port, log_dir=str(args.work)) as url:
        cfg = {"seed": args.seed, "output_dir": str(run),
               "data": {"name": "fortunes", "options": {"topics": TOPICS, "max_words": 30}},
               "split": {"n_labeled": 100, "n_val": 150, "n_test": args.requests + 20, "n_pool": args.n_pool},
               "teacher": {"kind": "llm", "llm": {"scoring": "single-answer", "price_input": 0.15,
                                                  "price_output": 0.60, "max_answer_tokens": 4,
                                                  "endpoint": {"url": url, "model": "smollm2",
                                                               "tokenizer": str(default_gguf())}}},
               "distribute": {"engine": "threads", "workers": 2},
               "student": {"kind": "tfidf"}, "train": {"epochs": 20}}
        path = args.work / f"cfg-{args.seed}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cli = [sys.executable, "-m", "mentor.cli"]
        if not (run / "metrics.json").exists():
            subprocess.run(cli + ["run", str(path)], check=True)
        subprocess.run(cli + ["cascade", str(run)] + (["--target", str(args.target)] if args.target else
                                                      ["--of-teacher", "0.95"]), check=True)
        out = args.work / f"serve-{args.seed}-{args.target or 'of-teacher'}.jsonl"
        subprocess.run(cli + ["bench", "serve", str(run), "--requests", str(args.requests), "--inputs",
                              str(args.requests + 10), "--concurrency", str(args.concurrency), "--arms",
                              "torch,cascade", "--json", str(out)], check=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    cascade = json.loads((run / "cascade.json").read_text())
    for r in rows:
        r.update(seed=args.seed, teacher="smollm2-135m llama.cpp single-answer", student="tfidf",
                 target=args.target or "0.95 of teacher", teacher_val_accuracy=metrics.get("teacher_val_accuracy"),
                 student_test_accuracy=metrics.get("test_accuracy"), threshold=cascade.get("threshold"),
                 cascade_val=cascade.get("val"), cascade_test=cascade.get("test"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for r in rows:
        print(f"{r['arm']:28s} {r['requests_per_s']:7.2f} req/s  p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
              f"p99 {r['p99_ms']:8.1f} ms  teacher share {r['teacher_share']:.2f}  paid {r.get('teacher_paid')}")


if __name__ == "__main__":
    main()
