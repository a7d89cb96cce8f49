"""Which pool points to pay the teacher for: selectors as plain functions on arrays.

Every selector has the form

    select_<name>(<what it needs>, candidates, b, rng) -> b chosen pool indices

`candidates` holds indices into the pool (the points not queried yet); the arrays a selector
needs (student probabilities, embeddings) are aligned with `candidates`, row for row, so the
pool itself can stay on disk. The result is a subset of `candidates`, never repeated. Selectors
are registered by name in `SELECTORS`; `select(name, candidates, b, rng, **inputs)` passes each
one only the inputs it declares.

Strategies: `random`, `margin`, `entropy`, `least-confidence` (uncertainty of the student),
`coreset` (greedy k-center on student embeddings), `pcoreset` (greedy k-center in the student's
probability space) and `rad` (Robust Active Distillation).

RAD (see ../shared/methods.md). Verified: the pool loop, DepRound, m estimated on V. The game
solved here is a reconstruction: gain g_i = 1 − student margin; an adversary makes the teacher
wrong on the m points where p_i·g_i is largest; the learner maximises
`Σ p_i g_i − (sum of the m largest p_i g_i)` subject to `Σ p = b`, `0 ≤ p ≤ 1`.

`rad_probabilities` offers two solvers:
- `"exact"` (default): the LP optimum. With the identity top_m(x) = min_t m·t + Σ(x_i − t)₊
  the value is max over a threshold t of V(t) = max_p Σ min(p_i g_i, t) − m·t; for fixed t the
  inner problem is a fractional knapsack (fill points in decreasing gain, each up to
  min(1, t/g_i)), and V is concave in t, so a golden-section search on t after one sort gives the
  optimum in O(n log n). Its solutions have the shape the paper fragments describe (p ∝ 1/g on
  the top points, capped at 1), plus at most one partially filled point.
- `"capped"`: the rule as written in methods.md — p = b·q with q ∝ 1/g on the top k, capped at
  1 and redistributed, k chosen by worst-case value over all k (≥ 97% of the LP optimum in the
  tests; O(n log n) per bisection step, so slower on big pools).
For b = 1 both agree with the closed form `rad_single` (k* = argmax_{k>m} (k − m)/Σ_{j≤k} 1/g_(j)).

DepRound turns the probabilities into exactly b distinct picks with P(i picked) = p_i.
`dep_round(..., method="pairs")` (default) is the paper's DepRound (Algorithm 2): mass moves between two
fractional entries at a time, which keeps every marginal, gives exactly b picks and makes any two
picks negatively correlated (P(i and j) <= p_i·p_j); disjoint pairs are processed together in numpy
passes (about 3× systematic's time, 17× faster than a Python loop over the pairs).
`method="systematic"` is systematic sampling over a random order of the points: one pass, exact
count and marginals, but not negatively correlated (a test shows a pair picked together more
often than p_i·p_j).

No information: when every candidate has student margin 1 (the student is certain of all of
them), uncertainty selectors and RAD have nothing to rank by; they warn (`NoInformationWarning`)
and pick uniformly at random.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..checks import row_max, top_two_gap
from ..errors import ConfigError, DataError


class NoInformationWarning(UserWarning):
    """Every candidate has student margin 1: selection falls back to uniform random."""


@dataclass(frozen=True)
class Selector:
    fn: Callable
    needs: tuple[str, ...]   # names of the inputs (besides candidates, b, rng) the selector reads
    doc: str


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, needs: tuple[str, ...] = ()):
    def deco(fn):
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered")
        SELECTORS[name] = Selector(fn, tuple(needs), (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


def select(name: str, candidates, b: int, rng=None, **inputs) -> np.ndarray:
    """Run selector `name`, passing it the inputs it declares (others are ignored)."""
    if name not in SELECTORS:
        raise ConfigError(f"unknown selection strategy {name!r}; available: {', '.join(sorted(SELECTORS))}.")
    sel = SELECTORS[name]
    missing = [k for k in sel.needs if inputs.get(k) is None]
    if missing:
        raise ConfigError(f"strategy {name!r} needs {', '.join(missing)}; pass them to select().")
    return sel.fn(*(inputs[k] for k in sel.needs), candidates, b, _rng(rng))


# ---------------------------------------------------------------------------------------------- checks

def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_request(candidates, b, *aligned) -> np.ndarray:
    cand = np.asarray(candidates)
    if cand.ndim != 1 or (cand.size and not np.issubdtype(cand.dtype, np.integer)):
        raise DataError(f"candidates must be a 1-d array of integer pool indices, got shape {cand.shape} "
                        f"dtype {cand.dtype}.")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ConfigError(f"b (points to select) must be an integer, got {b!r}.")
    if b < 1:
        raise ConfigError(f"b (points to select) must be >= 1, got {b}: a round must query at least one point.")
    if b > len(cand):
        raise ConfigError(f"cannot select b={b} points from {len(cand)} candidates: the batch is larger than what "
                          "is left of the pool. Lower the batch size or the budget schedule.")
    for name, arr in aligned:
        if len(arr) != len(cand):
            raise DataError(f"{name} has {len(arr)} rows but there are {len(cand)} candidates; give one row per "
                            "candidate, in the same order.")
    return cand


def _check_probs(probs, name: str = "student probabilities") -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(f"{name} must have shape (n_candidates, n_classes >= 2), got {p.shape}.")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float32)
    return p


# ---------------------------------------------------------------------------------------------- scores

def student_margin(probs) -> np.ndarray:
    """Top-1 minus top-2 probability per row (vectorised, O(n·C))."""
    return top_two_gap(_check_probs(probs))


def rad_gains(probs) -> np.ndarray:
    """RAD informativeness: g = 1 − student margin, in [0, 1]."""
    return np.clip(1.0 - student_margin(probs), 0.0, 1.0)


def entropy(probs) -> np.ndarray:
    """−Σ p log p per row (0 log 0 = 0), one log pass and one fused multiply-sum."""
    p = _check_probs(probs)
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -np.einsum("ij,ij->i", p, logs)


def _no_information(margins: np.ndarray, name: str) -> bool:
    if margins.size and float(margins.min()) >= 1.0 - 1e-6:
        warnings.warn(f"{name}: every candidate has student margin 1 (the student is certain of all of them), so "
                      "there is nothing to rank by; choosing uniformly at random.", NoInformationWarning,
                      stacklevel=3)
        return True
    return False


def _smallest(score: np.ndarray, b: int) -> np.ndarray:
    """Positions of the b smallest scores (O(n) partition; order within the b is by score)."""
    pos = np.argpartition(score, b - 1)[:b] if b < len(score) else np.arange(len(score))
    return pos[np.argsort(score[pos], kind="stable")]


# ---------------------------------------------------------------------------------------------- selectors

@register_selector("random")
def select_random(candidates, b: int, rng) -> np.ndarray:
    """Uniformly at random, without replacement."""
    cand = _check_request(candidates, b)
    return cand[_rng(rng).choice(len(cand), size=b, replace=False)]


def _uncertainty(p, cand, b, rng, name: str, score: np.ndarray, maybe_certain: bool,
                 margin: np.ndarray | None = None) -> np.ndarray:
    """The b candidates with the smallest `score`, or random ones when the student is certain of
    all of them (every margin ≥ 1 − 1e-6). The margin is computed for that test only when the
    selector's own pass could not rule certainty out (`maybe_certain`), so each selector reads
    the probabilities once."""
    if maybe_certain and _no_information(student_margin(p) if margin is None else margin, name):
        return select_random(cand, b, rng)
    return cand[_smallest(score, b)]


# Certainty means every top-1 ≥ 1 − 1e-6, and then (Fano) every entropy ≤ h(1e-6) + 1e-6·log(C − 1) < 3e-5
# for any C < 10^6: a larger entropy anywhere rules it out (with a margin for rounding).
_CERTAIN_ENTROPY = 1e-4


@register_selector("margin", needs=("probs",))
def select_margin(probs, candidates, b: int, rng) -> np.ndarray:
    """Smallest student margin (top-1 − top-2 probability) first."""
    p = _check_probs(probs)
    cand = _check_request(candidates, b, ("probs", p))
    m = student_margin(p)
    return _uncertainty(p, cand, b, rng, "margin", m, True, margin=m)


@register_selector("entropy", needs=("probs",))
def select_entropy(probs, candidates, b: int, rng) -> np.ndarray:
    """Largest entropy of the student's distribution first."""
    p = _check_probs(probs)
    cand = _check_request(candidates, b, ("probs", p))
    h = entropy(p)
    maybe_certain = not (h.size and float(h.max()) > _CERTAIN_ENTROPY)
    return _uncertainty(p, cand, b, rng, "entropy", np.negative(h, out=h), maybe_certain)


@register_selector("least-confidence", needs=("probs",))
def select_least_confidence(probs, candidates, b: int, rng) -> np.ndarray:
    """Smallest top-1 student probability first."""
    p = _check_probs(probs)
    cand = _check_request(candidates, b, ("probs", p))
    top1 = row_max(p)  # margin ≤ top-1, so a top-1 below 1 − 1e-6 anywhere rules certainty out
    return _uncertainty(p, cand, b, rng, "least-confidence", top1, bool(top1.size) and float(top1.min()) >= 1.0 - 1e-6)


def k_center(points, centres, b: int, rng, *, chunk_bytes: int = 1 << 27) -> np.ndarray:
    """Greedy k-center: positions (into `points`) of b points, each the farthest (Euclidean) from
    `centres` and the points picked before it. With no centres the first pick is random.
    O(n·(len(centres) + b)·d); distances to the centres are computed in chunks to bound memory."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.full(n, np.inf, dtype=np.float32)
    c = np.empty((0, x.shape[1]), np.float32) if centres is None else np.asarray(centres, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise DataError(f"centres must have shape (m, {x.shape[1]}) like the points, got {c.shape}.")
    step = max(1, chunk_bytes // max(1, 4 * n))
    for s in range(0, len(c), step):
        cc = c[s:s + step]
        d = sq[:, None] - 2.0 * (x @ cc.T) + np.einsum("ij,ij->i", cc, cc)[None, :]
        np.minimum(dist, d.min(axis=1), out=dist)
    chosen = np.empty(b, dtype=np.int64)
    from threadpoolctl import threadpool_limits  # (a scikit-learn dependency)
    # one matrix-vector product per pick: memory-bound, and waking BLAS threads for each one
    # costs ~10 ms on a busy machine, so the loop runs single-threaded
    with threadpool_limits(1):
        for j in range(b):
            i = int(_rng(rng).integers(n)) if j == 0 and not len(c) else int(np.argmax(dist))
            chosen[j] = i
            d = sq - 2.0 * (x @ x[i]) + sq[i]
            np.minimum(dist, d, out=dist)
            dist[i] = -np.inf  # never again
    return chosen


@register_selector("coreset", needs=("embeddings", "labeled_embeddings"))
def select_coreset(embeddings, labeled_embeddings, candidates, b: int, rng) -> np.ndarray:
    """Greedy k-center on student embeddings, seeded from the labeled and already-queried points."""
    cand = _check_request(candidates, b, ("embeddings", embeddings))
    return cand[k_center(embeddings, labeled_embeddings, b, rng)]


@register_selector("pcoreset", needs=("probs", "labeled_probs"))
def select_pcoreset(probs, labeled_probs, candidates, b: int, rng) -> np.ndarray:
    """PCoreSet: greedy k-center in the student's probability space, from the labeled set's points."""
    p = _check_probs(probs)
    cand = _check_request(candidates, b, ("probs", p))
    return cand[k_center(p, labeled_probs, b, rng)]


@register_selector("rad", needs=("probs", "teacher_accuracy"))
def select_rad(probs, teacher_accuracy: float, candidates, b: int, rng, *, solver: str = "exact",
               rounding: str = "pairs", m_scale: float = 1.0) -> np.ndarray:
    """Robust Active Distillation: worst-case game over teacher mistakes (m̂ from V), DepRound for b picks.
    m_scale multiplies m̂ = n·(1 − teacher_accuracy) (0: margin sampling; a study knob, default 1)."""
    p = _check_probs(probs)
    cand = _check_request(candidates, b, ("probs", p))
    acc = float(teacher_accuracy)
    if not 0.0 <= acc <= 1.0:
        raise ConfigError(f"teacher_accuracy must lie in [0, 1], got {teacher_accuracy}.")
    gains = rad_gains(p)
    if _no_information(1.0 - gains, "rad"):
        return select_random(cand, b, rng)
    probs_pick = rad_probabilities(gains, b, float(m_scale) * len(cand) * (1.0 - acc), solver=solver)
    return cand[dep_round(probs_pick, rng, method=rounding)]


# ---------------------------------------------------------------------------------------------- the RAD game

def worst_case_value(p, gains, m: float) -> float:
    """Σ p_i g_i − (sum of the m largest p_i g_i); a fractional m counts the next one partly."""
    x = np.asarray(p, np.float64) * np.asarray(gains, np.float64)
    m = min(max(float(m), 0.0), float(len(x)))
    whole = int(math.floor(m))
    if whole >= len(x):
        return 0.0
    top = -np.partition(-x, whole)[:whole + 1]  # the whole+1 largest, the last at position `whole`
    top_whole = np.sort(top)[::-1]
    return float(x.sum() - top_whole[:whole].sum() - (m - whole) * top_whole[whole])


def _check_game(gains, b, m) -> tuple[np.ndarray, float]:
    g = np.asarray(gains, dtype=np.float64)
    if g.ndim != 1 or not np.isfinite(g).all() or (g < 0).any():
        raise DataError("gains must be a 1-d array of finite non-negative numbers (1 − student margin).")
    if not (isinstance(b, (int, np.integer)) and not isinstance(b, bool)) or b < 1:
        raise ConfigError(f"b must be an integer >= 1, got {b!r}.")
    if b > len(g):
        raise ConfigError(f"b={b} is larger than the {len(g)} candidates.")
    if not (m >= 0 and math.isfinite(m)):
        raise ConfigError(f"m (expected teacher mistakes) must be a finite number >= 0, got {m!r}.")
    return g, float(m)


def _uniform_fallback(n: int, b: int, why: str) -> np.ndarray:
    warnings.warn(f"rad: {why}; every choice has worst-case value 0, so p is uniform (b/n).",
                  NoInformationWarning, stacklevel=3)
    return np.full(n, b / n)


def rad_single(gains, m: float) -> np.ndarray:
    """Closed form for b = 1: sort gains descending, k* = argmax_{k > m} (k − m)/Σ_{j≤k} 1/g_(j),
    p_(j) ∝ 1/g_(j) for j ≤ k*. m = 0 puts all mass on the largest gain (margin sampling)."""
    g, m = _check_game(gains, 1, m)
    order = np.argsort(-g, kind="stable")
    gs = g[order]
    npos = int((gs > 0).sum())
    k = np.arange(1, npos + 1)
    ok = k > m
    if not ok.any():
        return _uniform_fallback(len(g), 1, f"m={m:g} expected mistakes leave no informative point")
    H = np.cumsum(1.0 / gs[:npos])
    value = np.where(ok, (k - m) / H, -np.inf)
    kstar = int(np.argmax(value)) + 1
    p = np.zeros(len(g))
    p[order[:kstar]] = (1.0 / gs[:kstar]) / H[kstar - 1]
    return p


class _Game:
    """Sorted gains and prefix sums shared by both batch solvers."""

    def __init__(self, g: np.ndarray, b: int, m: float):
        self.order = np.argsort(-g, kind="stable")
        self.g = g[self.order]
        self.neg = -self.g                      # ascending, for searchsorted
        self.n, self.b, self.m = len(g), b, m
        self.npos = int((self.g > 0).sum())
        self.H = np.concatenate([[0.0], np.cumsum(1.0 / self.g[:self.npos])])  # H[s] = Σ_{i<s} 1/g_i
        self.G = np.concatenate([[0.0], np.cumsum(self.g)])                     # G[j] = Σ_{i<j} g_i

    def above(self, t):
        """How many gains are > t (they are the first ones in sorted order)."""
        return np.searchsorted(self.neg, -np.asarray(t, dtype=np.float64), side="left")

    def value(self, t):
        """V(t) = max_p Σ min(p_i g_i, t) − m t (greedy fill in decreasing gain), vectorised over t."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        s = self.above(t)
        need = t * self.H[s]
        out = np.empty_like(t)
        a = need >= self.b  # budget runs out among the uncapped points (x = t each)
        if a.any():
            ta = t[a]
            K = np.minimum(np.searchsorted(self.H, self.b / ta, side="right") - 1, self.n)
            nxt = self.g[np.minimum(K, self.n - 1)] * (K < self.n)
            out[a] = K * ta + nxt * (self.b - ta * self.H[K])
        c = ~a  # uncapped points saturated at x = t; the rest fills points with g <= t at p = 1
        if c.any():
            tc, sc = t[c], s[c]
            r = self.b - need[c]
            f = np.minimum(np.floor(r).astype(np.int64), self.n - sc)
            j = sc + f
            frac = np.where(j < self.n, r - f, 0.0)
            out[c] = sc * tc + (self.G[j] - self.G[sc]) + frac * self.g[np.minimum(j, self.n - 1)]
        return out - self.m * t

    def probabilities_at(self, t: float) -> np.ndarray:
        """The greedy p for threshold t, in the original order; Σ p = b."""
        n, b, g = self.n, self.b, self.g
        s = int(self.above(t))
        ps = np.zeros(n)
        if t * self.H[s] >= b:
            K = min(int(np.searchsorted(self.H, b / t, side="right")) - 1, n)
            ps[:K] = t / g[:K]
            if K < n:
                ps[K] = b - t * self.H[K]
        else:
            ps[:s] = t / g[:s]
            r = b - t * self.H[s]
            f = min(int(math.floor(r)), n - s)
            ps[s:s + f] = 1.0
            if s + f < n:
                ps[s + f] = r - f
            else:  # all useful capacity is used; the leftover goes where it does no harm (p <= 1)
                left = r - f
                slack = 1.0 - ps[:s]
                ps[:s] += left * slack / max(slack.sum(), 1e-300)
        out = np.empty(n)
        out[self.order] = np.clip(ps, 0.0, 1.0)
        return out


def rad_probabilities(gains, b: int, m: float, *, solver: str = "exact") -> np.ndarray:
    """Marginal probabilities p (Σ p = b, 0 ≤ p ≤ 1) that maximise the worst-case gain when the
    teacher is wrong on the m points the adversary picks. `solver`: "exact" (LP optimum, default)
    or "capped" (p = b·q, q ∝ 1/g on the top k, cap at 1, k by worst-case value). See the module
    docstring. When no choice has positive worst-case value (m ≥ number of informative points),
    p is uniform, with a NoInformationWarning."""
    g, m = _check_game(gains, b, m)
    if solver not in ("exact", "capped"):
        raise ConfigError(f"rad solver must be 'exact' or 'capped', got {solver!r}.")
    game = _Game(g, b, m)
    if game.npos == 0 or m >= game.npos:
        return _uniform_fallback(len(g), b, f"m={m:g} expected mistakes among {game.npos} informative points")
    p = _solve_exact(game) if solver == "exact" else _solve_capped(game)
    if worst_case_value(p, g, m) <= 0:
        return _uniform_fallback(len(g), b, f"m={m:g} expected mistakes leave no positive worst case")
    return p


def _solve_exact(game: _Game) -> np.ndarray:
    """Golden-section search of the concave V(t) on (0, g_max], then the greedy p at the best t."""
    lo, hi = 0.0, float(game.g[0])
    phi = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
    f1, f2 = game.value([x1, x2])
    for _ in range(200):
        if hi - lo <= 1e-15 * max(hi, 1e-300):
            break
        if f1 < f2:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + phi * (hi - lo)
            f2 = float(game.value(x2)[0])
        else:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - phi * (hi - lo)
            f1 = float(game.value(x1)[0])
    # the breakpoints t = g_i near the bracket can beat its interior by rounding; take the best
    near = game.g[max(0, int(game.above(hi)) - 2):int(game.above(lo)) + 2]
    cands = np.concatenate([[x1, x2, lo, hi, game.g[0]], near[near > 0]])
    vals = game.value(cands)
    # on a flat optimum (e.g. m = 0) prefer the largest t: the most concentrated p (top-b for m = 0)
    tied = vals >= vals.max() - 1e-12 * max(1.0, abs(float(vals.max())))
    return game.probabilities_at(float(cands[tied].max()))


def _solve_capped(game: _Game, iters: int = 64) -> np.ndarray:
    """For every k ≥ b: λ_k solves Σ_{i≤k} min(1, λ/g_i) = b (vectorised bisection), p = min(1, λ_k/g)
    on the top k; keep the k with the best worst-case value."""
    n, b, g, m = game.n, game.b, game.g, game.m
    K = np.arange(b, n + 1)
    lo, hi = np.zeros(len(K)), np.full(len(K), float(g[0]))
    for _ in range(iters):
        lam = (lo + hi) / 2
        u = np.minimum(game.above(lam), K)
        cap = lam * game.H[u] + (K - u)
        big = cap > b
        hi, lo = np.where(big, lam, hi), np.where(big, lo, lam)
    lam = hi
    u = np.minimum(game.above(lam), K)
    total = u * lam + (game.G[K] - game.G[u])
    # the adversary removes the u values λ first, then the largest capped gains g_u, g_{u+1}, ...
    extra = np.maximum(m - u, 0.0)
    ew = np.floor(extra).astype(np.int64)
    idx = np.minimum(u + ew, K)
    top_capped = (game.G[idx] - game.G[u]) + (extra - ew) * np.where(idx < K, g[np.minimum(idx, n - 1)], 0.0)
    top = np.where(m <= u, m * lam, u * lam + top_capped)
    best = int(np.argmax(total - top))
    k, lb = int(K[best]), float(lam[best])
    ps = np.zeros(n)
    with np.errstate(divide="ignore"):
        ps[:k] = np.minimum(1.0, lb / g[:k])
    ps[:k] *= b / ps[:k].sum()  # bisection rounding: make Σ p = b exactly
    ps = np.clip(ps, 0, 1)
    out = np.empty(n)
    out[game.order] = ps
    return out


# ---------------------------------------------------------------------------------------------- DepRound

def dep_round(p, rng=None, *, method: str = "pairs") -> np.ndarray:
    """Exactly round(Σp) distinct indices with P(i chosen) = p_i (0 ≤ p ≤ 1, Σp an integer).

    "pairs" (default): DepRound, shifting mass between two fractional entries at a time (disjoint
    pairs in numpy passes); any two picks are negatively correlated. "systematic": systematic
    sampling over a random permutation — one uniform u, picks where the cumulative sum crosses u + j."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or p.min(initial=0) < -1e-9 or p.max(initial=0) > 1 + 1e-9:
        raise DataError("dep_round needs a 1-d array of probabilities in [0, 1].")
    total = float(p.sum())
    k = int(round(total))
    if abs(total - k) > 1e-6 * max(1.0, total):
        raise DataError(f"dep_round needs probabilities summing to an integer, got {total:.8g}.")
    rng = _rng(rng)
    ones = np.flatnonzero(p >= 1 - 1e-12)
    frac = np.flatnonzero((p > 1e-12) & (p < 1 - 1e-12))
    need = k - len(ones)
    if need <= 0 or not len(frac):
        return np.sort(ones[:k]) if need <= 0 else np.sort(np.concatenate([ones, rng.choice(
            np.setdiff1d(np.arange(len(p)), ones), need, replace=False)]))
    if method == "systematic":
        chosen = frac[_systematic(p[frac], need, rng)]
    elif method == "pairs":
        chosen = frac[_pairs(p[frac], need, rng)]
    else:
        raise ConfigError(f"dep_round method must be 'systematic' or 'pairs', got {method!r}.")
    return np.sort(np.concatenate([ones, chosen]))


def _fix_count(chosen: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Guard against floating-point drift: add the most likely / drop the least likely."""
    if chosen.sum() < k:
        rest = np.flatnonzero(~chosen)
        chosen[rest[np.argsort(-q[rest])[:k - chosen.sum()]]] = True
    elif chosen.sum() > k:
        picked = np.flatnonzero(chosen)
        chosen[picked[np.argsort(q[picked])[:chosen.sum() - k]]] = False
    return np.flatnonzero(chosen)


def _systematic(q: np.ndarray, k: int, rng) -> np.ndarray:
    perm = rng.permutation(len(q))
    c = np.cumsum(q[perm])
    c *= k / c[-1]
    u = rng.random()
    hits = np.floor(c - u) - np.floor(np.concatenate([[0.0], c[:-1]]) - u)
    chosen = np.zeros(len(q), bool)
    chosen[perm[hits > 0]] = True
    return _fix_count(chosen, q, k)


def _pairs(q: np.ndarray, k: int, rng) -> np.ndarray:
    """DepRound: take two fractional entries i, j; with probability b/(a + b) move a = min(1 − q_i, q_j)
    from j to i, else move b = min(q_i, 1 − q_j) from i to j (each keeps its expectation, and one of
    the two becomes 0 or 1). Disjoint pairs do not interact, so each pass treats all pairs of a
    random pairing at once (numpy), and the fractional entries left are paired again, in the same
    random order, until none is left: a DepRound run with one particular order of pairs."""
    q = q * (k / q.sum())
    eps = 1e-12
    frac = rng.permutation(len(q))
    frac = frac[(q[frac] > eps) & (q[frac] < 1 - eps)]
    while len(frac) > 1:
        i, j = frac[0:len(frac) - 1:2], frac[1::2]
        a, b = np.minimum(1 - q[i], q[j]), np.minimum(q[i], 1 - q[j])
        shift = np.where(rng.random(len(i)) * (a + b) < b, a, -b)
        q[i] += shift
        q[j] -= shift
        frac = frac[(q[frac] > eps) & (q[frac] < 1 - eps)]
    return _fix_count(q > 0.5, q, k)
