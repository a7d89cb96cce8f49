"""Label scoring with a local causal LM: the prompt run once and the labels continued from its cache
(`LocalLM.label_logprobs`) against every prompt + label as its own full sequence (`label_logprobs_naive`),
measured in one run, interleaved chunk by chunk, on real text: fortunes of six topics in SmolLM2's chat
template, the six topic names as labels (some are several tokens). Prints examples/second of both, the
ratio, the largest absolute difference of the log-probabilities and the zero-shot accuracy.

    OMP_NUM_THREADS=1 python scripts/llm_label_speed.py [--n 24] [--batch-size 8] [--threads 1] [--device auto]
"""
import argparse
import os

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=24, help="examples scored by both ways")
ap.add_argument("--topics", default="computers,food,law,medicine,sports,startrek")
ap.add_argument("--batch-size", type=int, default=8)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--device", default="auto")
ap.add_argument("--model", default=None, help="HF causal-LM folder or .gguf file (default SmolLM2-135M-Instruct)")
a = ap.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mentor.data import load_fortunes  # noqa: E402
from mentor.teachers.llm.local import load_local_lm  # noqa: E402

torch.set_num_threads(a.threads)
topics = a.topics.split(",")
ds = load_fortunes(topics)
pick = np.random.default_rng(a.seed).choice(len(ds.labels), size=a.n + 1, replace=False)
lm = load_local_lm(a.model, device=a.device)
instructions = (f"Which topic is this text about? Answer with one word from: {', '.join(topics)}.\n\n"
                "Text: {text}")
prompts = [lm.chat_prompt(instructions.format(text=ds.features[i])) for i in pick]
labels = ds.labels[pick]
verbalizers = topics  # the answer starts right after "<|im_start|>assistant\n"
lengths = lm.count_tokens(prompts)

lm.label_logprobs(prompts[-1:], verbalizers)        # warm-up, not timed
lm.label_logprobs_naive(prompts[-1:], verbalizers)
prompts, labels = prompts[:-1], labels[:-1]
fast, naive = np.zeros((a.n, len(topics))), np.zeros((a.n, len(topics)))
t_fast = t_naive = 0.0
for b in range(0, a.n, a.batch_size):  # interleaved, so a change in the machine's load hits both ways
    rows = slice(b, b + a.batch_size)
    t = time.perf_counter()
    fast[rows] = lm.label_logprobs(prompts[rows], verbalizers, batch_size=a.batch_size)
    t_fast += time.perf_counter() - t
    t = time.perf_counter()
    naive[rows] = lm.label_logprobs_naive(prompts[rows], verbalizers)
    t_naive += time.perf_counter() - t

label_tokens = [len(lm.tokenizer(v, add_special_tokens=False)["input_ids"]) for v in verbalizers]
print(f"model {lm.fingerprint} on {lm.device}, {torch.get_num_threads()} thread(s); {a.n} fortunes, "
      f"{len(topics)} labels {dict(zip(topics, label_tokens))} (tokens); prompt tokens mean "
      f"{np.mean(lengths[:-1]):.0f}, min {min(lengths[:-1])}, max {max(lengths[:-1])}; batch size {a.batch_size}")
print(f"naive (each label a full sequence): {a.n / t_naive:.3f} examples/s ({t_naive / a.n:.3f} s/example)")
print(f"fast (prompt once, labels from its cache): {a.n / t_fast:.3f} examples/s ({t_fast / a.n:.3f} s/example)")
print(f"speed-up: {t_naive / t_fast:.2f}x")
print(f"max |fast - naive| log-prob: {np.abs(fast - naive).max():.2e}; "
      f"max |fast - naive| probability: {np.abs(np.exp(fast - np.logaddexp.reduce(fast, 1, keepdims=True)) - np.exp(naive - np.logaddexp.reduce(naive, 1, keepdims=True))).max():.2e}; "
      f"same argmax: {np.mean(fast.argmax(1) == naive.argmax(1)):.0%}")
print(f"zero-shot accuracy: {np.mean(fast.argmax(1) == labels):.0%} (chance {1 / len(topics):.0%}); "
      f"predicted label counts {np.bincount(fast.argmax(1), minlength=len(topics)).tolist()}")
