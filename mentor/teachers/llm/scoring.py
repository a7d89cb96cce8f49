"""From what an LLM returns to a probability for every label: one plain function per scoring mode.

- `label-likelihood`: the summed log-probability of each label's verbalizer given the prompt,
  normalised over the labels (exact; optionally calibrated by a content-free prompt's scores).
- `top-logprobs`: the first answer token's top log-probabilities, read as a label distribution.
- `sampling`: n answers at a temperature, parsed; label frequencies with a small pseudo-count.
- `single-answer`: one parsed answer, smoothed.

An answer that names no label is an abstention: its row is uniform and flagged, never guessed.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

SCORING_MODES = ("label-likelihood", "top-logprobs", "sampling", "single-answer")


def label_likelihood_probs(scores: np.ndarray, content_free: np.ndarray | None = None) -> np.ndarray:
    """Softmax over labels of summed log-probabilities (n, L). With `content_free` (L,), the
    scores of the same prompt around an empty text are subtracted first: contextual calibration
    (Zhao et al., 2021), which removes the prompt's prior toward some labels."""
    s = np.asarray(scores, dtype=np.float64)
    if content_free is not None:
        s = s - np.asarray(content_free, dtype=np.float64)[None, :]
    return softmax(s, axis=1)


def _token_key(token: str) -> str:
    return token.strip().lower()


def top_logprobs_probs(top: dict[str, float], label_tokens: list[str]) -> tuple[np.ndarray, float]:
    """A label distribution from one answer token's top log-probabilities (`top`: token -> logprob).

    Tokens are matched to labels by their stripped, lower-cased text (" Positive" and "positive"
    both count for a label "positive"). Mass the list does not show (1 - the listed tokens' mass)
    is spread evenly over the labels missing from the list. Returns (probs, coverage), coverage
    being the share of probability the listed label tokens hold; with none listed it is 0 and
    the row is uniform (an abstention)."""
    keys = [_token_key(t) for t in label_tokens]
    mass = np.zeros(len(keys))
    listed = np.zeros(len(keys), bool)
    total = 0.0
    for tok, lp in top.items():
        p = float(np.exp(lp))
        total += p
        k = _token_key(tok)
        if k in keys:
            i = keys.index(k)
            mass[i] += p
            listed[i] = True
    coverage = float(mass.sum())
    if coverage <= 0:
        return np.full(len(keys), 1.0 / len(keys)), 0.0
    unseen = max(0.0, 1.0 - total)
    if (~listed).any():
        mass[~listed] += unseen / (~listed).sum()
    return mass / mass.sum(), min(coverage, 1.0)


def sampled_probs(parsed: list[int | None], n_classes: int, pseudo_count: float = 0.5) -> tuple[np.ndarray, int]:
    """Label frequencies of parsed samples plus `pseudo_count` per label; answers matching no label
    (None) are left out and counted. Returns (probs, abstentions); all abstentions give uniform."""
    counts = np.full(n_classes, float(pseudo_count))
    bad = 0
    for y in parsed:
        if y is None:
            bad += 1
        else:
            counts[y] += 1.0
    if bad == len(parsed):
        return np.full(n_classes, 1.0 / n_classes), bad
    return counts / counts.sum(), bad


def single_answer_probs(label: int | None, n_classes: int, smoothing: float = 0.1) -> np.ndarray:
    """One answer as a distribution: 1 - smoothing on the answer, the rest spread over the others."""
    if label is None:
        return np.full(n_classes, 1.0 / n_classes)
    if n_classes == 1:
        return np.ones(1)
    p = np.full(n_classes, smoothing / (n_classes - 1))
    p[label] = 1.0 - smoothing
    return p
