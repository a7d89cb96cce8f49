"""Examples per second of LLM label scoring through llama.cpp's server (SmolLM2-135M-Instruct GGUF),
measured in one run: exact label scoring (`Endpoint.label_logprobs`, one echo request per label) and
top-log-probability scoring (`Endpoint.top_logprobs`, one chat request per example), with the server
on one thread (`--n_threads 1 --n_threads_batch 1`) and on its default threads, on N short fortunes
texts of 6 topics (zero-shot; the accuracy is printed only as a sanity check).

    PYTHONPATH=. python scripts/llm_endpoint_speed.py --n 50 --json bench-out/llm-endpoint-speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_server import start_llama_server  # noqa: E402  (the tests' server starter)

from mentor.data import load_fortunes  # noqa: E402
from mentor.teachers.llm.endpoint import Endpoint  # noqa: E402

TOPICS = ["computers", "food", "law", "love", "medicine", "sports"]
INSTRUCTION = "Which topic is this text about: " + ", ".join(TOPICS) + "?"
# starts with SmolLM2's BOS token <|im_start|>: what makes llama-cpp-python's echoed log-probs aligned
PROMPT = "<|im_start|>user\n{instruction}\n\n{text}<|im_end|>\n<|im_start|>assistant\n"


def texts(n: int, seed: int, max_words: int):
    data = load_fortunes(TOPICS, max_words=max_words)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.labels), size=n, replace=False)
    return [" ".join(str(t).split()) for t in data.features[pick]], data.labels[pick]


def run(server_args: list, name: str, docs: list, labels, folder: Path) -> dict:
    server = start_llama_server(folder, *server_args)
    try:
        ep = Endpoint(server.base_url, server.model)
        prompts = [PROMPT.format(instruction=INSTRUCTION, text=t) for t in docs]
        ep.label_logprobs(prompts[:1], TOPICS)  # warm-up: model check, echo alignment, list support
        t = time.perf_counter()
        scores, usage = ep.label_logprobs(prompts, TOPICS)
        exact_s = time.perf_counter() - t
        msgs = [[{"role": "user", "content": f"{INSTRUCTION}\n\n{d}"}] for d in docs]
        t = time.perf_counter()
        tops = [ep.top_logprobs(m, k=20) for m in msgs]
        top_s = time.perf_counter() - t
        covered = np.mean([any(k.strip().lower() in TOPICS for k in tp.logprobs) for tp in tops])
        return {"server": name, "server_args": server_args, "n": len(docs), "labels": len(TOPICS),
                "exact_examples_per_s": len(docs) / exact_s, "exact_seconds": exact_s,
                "exact_input_tokens_per_example": float(np.mean([u.input_tokens for u in usage])),
                "exact_accuracy": float(np.mean(scores.argmax(1) == labels)),
                "top_examples_per_s": len(docs) / top_s, "top_seconds": top_s,
                "top_input_tokens_per_example": float(np.mean([tp.usage.input_tokens for tp in tops])),
                "top_any_label_in_top20": float(covered), "boundary_merges": ep.boundary_merges}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="texts")
    ap.add_argument("--max-words", type=int, default=20, help="longest text, in words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    docs, labels = texts(args.n, args.seed, args.max_words)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for args_, name in ((["--n_threads", "1", "--n_threads_batch", "1"], "1 thread"), ([], "default threads")):
            rows.append(run(args_, name, docs, labels, Path(tmp)))
            r = rows[-1]
            print(f"{name:>16}: exact {r['exact_examples_per_s']:.3f} ex/s ({r['exact_input_tokens_per_example']:.0f} "
                  f"input tokens/ex, acc {r['exact_accuracy']:.2f}); top_logprobs {r['top_examples_per_s']:.3f} "
                  f"ex/s ({r['top_input_tokens_per_example']:.0f} input tokens/ex)", flush=True)
    one, default = rows
    print(f"default / 1 thread: exact {default['exact_examples_per_s'] / one['exact_examples_per_s']:.2f}x, "
          f"top_logprobs {default['top_examples_per_s'] / one['top_examples_per_s']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
