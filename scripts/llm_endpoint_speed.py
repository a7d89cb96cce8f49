"""Examples per second of LLM label scoring through llama.cpp's server (SmolLM2-135M-Instruct GGUF),
measured in one run (both servers up, asked in turn): exact label scoring (`Endpoint.label_logprobs`, one echo request per label) and
top-log-probability scoring (`Endpoint.top_logprobs`, one chat request per example), with the server
on one thread (`--n_threads 1 --n_threads_batch 1`) and on its default threads, on N short fortunes
texts of 6 topics (zero-shot; the accuracy is printed only as a sanity check).

    PYTHONPATH=. python scripts/llm_endpoint_speed.py --n 50 --exact-n 12 --json bench-out/llm-endpoint-speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mentor.teachers.llm.llamacpp import SERVED_NAME, llama_server  # noqa: E402

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


CONFIGS = {"1 thread": ["--n_threads", "1", "--n_threads_batch", "1"], "default threads": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="texts scored with top_logprobs")
    ap.add_argument("--exact-n", type=int, default=None, help="the first texts scored exactly (default: all --n)")
    ap.add_argument("--max-words", type=int, default=20, help="longest text, in words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    docs, labels = texts(args.n, args.seed, args.max_words)
    n_exact = min(args.n, args.exact_n or args.n)
    prompts = [PROMPT.format(instruction=INSTRUCTION, text=t) for t in docs]
    msgs = [[{"role": "user", "content": f"{INSTRUCTION}\n\n{d}"}] for d in docs]
    # both servers up at once, asked in turn (one request at a time, so only one computes): the
    # machine's other load falls on both alike
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(llama_server(extra=tuple(a), log_dir=tmp)) for name, a in CONFIGS.items()}
        eps = {name: Endpoint(url, SERVED_NAME) for name, url in urls.items()}
        for ep in eps.values():
            ep.label_logprobs(prompts[:1], TOPICS)  # warm-up: model check, echo alignment, list support
        secs = {name: {"exact": 0.0, "top": 0.0} for name in CONFIGS}
        scores = {name: np.zeros((n_exact, len(TOPICS))) for name in CONFIGS}
        tokens = {name: {"exact": 0, "top": 0} for name in CONFIGS}
        for i in range(args.n):
            order = list(CONFIGS) if i % 2 == 0 else list(CONFIGS)[::-1]
            for name in order:
                ep = eps[name]
                if i < n_exact:
                    t = time.perf_counter()
                    row, usage = ep.label_logprobs(prompts[i:i + 1], TOPICS)
                    secs[name]["exact"] += time.perf_counter() - t
                    scores[name][i], tokens[name]["exact"] = row[0], tokens[name]["exact"] + usage[0].input_tokens
                t = time.perf_counter()
                top = ep.top_logprobs(msgs[i], k=20)
                secs[name]["top"] += time.perf_counter() - t
                tokens[name]["top"] += top.usage.input_tokens
    rows = []
    for name in CONFIGS:
        r = {"server": name, "server_args": CONFIGS[name], "labels": len(TOPICS), "exact_n": n_exact, "top_n": args.n,
             "exact_examples_per_s": n_exact / secs[name]["exact"], "exact_seconds": secs[name]["exact"],
             "exact_input_tokens_per_example": tokens[name]["exact"] / n_exact,
             "exact_accuracy": float(np.mean(scores[name].argmax(1) == labels[:n_exact])),
             "top_examples_per_s": args.n / secs[name]["top"], "top_seconds": secs[name]["top"],
             "top_input_tokens_per_example": tokens[name]["top"] / args.n}
        rows.append(r)
        print(f"{name:>16}: exact {r['exact_examples_per_s']:.3f} ex/s on {n_exact} texts "
              f"({r['exact_input_tokens_per_example']:.0f} input tokens/ex, zero-shot acc {r['exact_accuracy']:.2f}); "
              f"top_logprobs {r['top_examples_per_s']:.2f} ex/s on {args.n} texts "
              f"({r['top_input_tokens_per_example']:.0f} input tokens/ex)")
    one, default = rows
    diff = float(np.abs(scores["1 thread"] - scores["default threads"]).max())
    print(f"default / 1 thread: exact {default['exact_examples_per_s'] / one['exact_examples_per_s']:.2f}x, "
          f"top_logprobs {default['top_examples_per_s'] / one['top_examples_per_s']:.2f}x; "
          f"largest label-score difference between the two servers {diff:.2g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows,
                                         "max_abs_score_diff": diff}, indent=1))


if __name__ == "__main__":
    main()
