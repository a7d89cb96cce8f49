"""Distillation methods by name: the registry the CLI, configs and benchmarks resolve.

A method turns what is known before student training (teacher outputs on the pool, teacher
outputs and true labels on the validation set V) into a `MethodPlan`: the objective for the
pool term and optional per-example pool weights. New corrections register here with
`@register_method("name")`; the trainer stays unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .reliability import Reliability


class _Numpy:
    """numpy, imported on first use: validating a config and listing methods need only the
    registry below, and `mentor check-config` should start in a fraction of a second."""

    def __getattr__(self, name):
        import numpy
        return getattr(numpy, name)


np = _Numpy()


@dataclass
class MethodContext:
    """Everything a method may look at. Test labels are deliberately absent."""
    n_classes: int
    teacher_probs_pool: np.ndarray
    teacher_probs_val: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    temperature: float = 1.0
    seed: int = 0
    options: dict = field(default_factory=dict)
    # Trains a student with a given plan and returns (pool probabilities, V probabilities): the
    # disagreement weights need the first-pass student on V too.
    train_and_predict: Callable | None = None
    # Epochs the trainer will run (TrainConfig.epochs raised by min_steps); schedules need it.
    n_epochs: int | None = None
    # The student's input features on the pool (after its featurizer); filters that fit a model need them.
    pool_features: np.ndarray | None = None


@dataclass
class MethodPlan:
    objective: object
    pool_weights: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    # replaces the teacher's outputs on the pool as training targets (e.g. re-tempered on V)
    pool_targets: np.ndarray | None = None

    def targets(self, teacher_probs_pool: np.ndarray) -> np.ndarray:
        return teacher_probs_pool if self.pool_targets is None else self.pool_targets


def train_with_plan(model, x_labeled, y_labeled, x_pool, teacher_probs_pool, plan: MethodPlan, config):
    """`train_student` with a plan's objective, pool weights and (when it replaces them) targets."""
    from .train import train_student
    return train_student(model, x_labeled, y_labeled, x_pool=x_pool, teacher_probs=plan.targets(teacher_probs_pool),
                         objective=plan.objective, pool_weights=plan.pool_weights, config=config)


METHODS: dict[str, Callable[[MethodContext], MethodPlan]] = {}
# the `method_options` keys each method reads (besides the ones every method accepts)
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {}


def _number(lo=None, hi=None, *, integer=False, lo_open=False):
    def check(v):
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok_type or isinstance(v, bool):
            return "an integer" if integer else "a number"
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and v > hi:
            return f"a number in {'(' if lo_open else '['}{lo}, {hi if hi is not None else '∞'}]"
        return None
    return check


def _k_rule(v):
    if v == "topk-accuracy" or isinstance(v, str) and v.startswith("fixed:") and v[6:].isdigit() and int(v[6:]) >= 1:
        return None
    return '"topk-accuracy" or "fixed:K" with K >= 1'


def _candidates(v):
    if (isinstance(v, list) and v and all(isinstance(c, str) for c in v)
            and all(c in METHODS and c != "auto" for c in v)):
        return None
    return f"a non-empty list of methods other than auto ({', '.join(sorted(m for m in METHODS if m != 'auto'))})"


# every option a method may read: name -> check returning None, or what the value should be
OPTION_CHECKS: dict[str, Callable] = {
    "calibrate_teacher": lambda v: None if isinstance(v, bool) else "true or false",
    "min_val": _number(1, integer=True),
    "slam_k_rule": _k_rule,
    "slam_k_level": _number(0, 1, lo_open=True),
    "slam_alpha_floor": lambda v: None if v is None else _number(0, 1)(v),
    "threshold": _number(0, 1),
    "cleanlab_folds": _number(2, integer=True),
    "taid_epochs": _number(1, integer=True),
    "taid_t_start": _number(0, 1),
    "taid_t_end": _number(0, 1),
    "auto_candidates": _candidates,
}
COMMON_OPTIONS = ("calibrate_teacher",)


def register_method(name: str, options: tuple[str, ...] = ()):
    """Register a method factory under `name`; `options` are the method_options keys it reads
    (a config naming any other key is refused, so a misspelt option never passes silently)."""
    def deco(factory):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = factory
        METHOD_OPTIONS[name] = tuple(options)
        return factory
    return deco


def check_method_options(method: str, options: dict) -> None:
    """Refuse options the method does not read and values out of range (ConfigError)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    allowed = set(COMMON_OPTIONS) | set(METHOD_OPTIONS.get(method, ()))
    if method == "auto":  # auto passes its options on to every candidate
        for c in options.get("auto_candidates") or AUTO_CANDIDATES:
            allowed |= set(METHOD_OPTIONS.get(c, ()))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"method_options {unknown} are not read by method {method!r}; it reads "
                          f"{sorted(allowed)}. Fix the spelling or remove them (README: robust distillation).")
    for key, value in options.items():
        wrong = OPTION_CHECKS[key](value) if key in OPTION_CHECKS else None
        if wrong:
            raise ConfigError(f"method_options.{key} must be {wrong}, got {value!r}.")


def get_method(name: str) -> Callable[[MethodContext], MethodPlan]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}.")
    return METHODS[name]


def plan_method(name: str, ctx: MethodContext) -> MethodPlan:
    """The named method's plan. Option `calibrate_teacher: true` first re-tempers the teacher on V
    (one temperature, minimum NLL) and gives every method the calibrated outputs."""
    if ctx.options.get("calibrate_teacher") and name != "calibrated-soft":
        ctx, temperature = calibrated_context(ctx, name)
        plan = get_method(name)(ctx)
        plan.pool_targets = ctx.teacher_probs_pool
        plan.info = {**plan.info, "teacher_temperature": temperature}
        return plan
    return get_method(name)(ctx)


def VanillaObjective(mode: str = "soft", temperature: float = 1.0):
    """mentor.train.VanillaObjective, imported on use (torch)."""
    from .train import VanillaObjective as Vanilla
    return Vanilla(mode, temperature)


@register_method("vanilla-soft")
def _vanilla_soft(ctx: MethodContext) -> MethodPlan:
    return MethodPlan(VanillaObjective("soft", ctx.temperature))


def calibrated_context(ctx: MethodContext, method: str) -> tuple[MethodContext, float]:
    """ctx with the teacher's pool and V outputs re-tempered by the temperature fitted on V."""
    from dataclasses import replace

    from .reliability import apply_temperature, fit_temperature
    _require_val(ctx, method)
    temperature = fit_temperature(ctx.teacher_probs_val, ctx.val_labels)
    return replace(ctx, teacher_probs_pool=apply_temperature(ctx.teacher_probs_pool, temperature).astype(np.float32),
                   teacher_probs_val=apply_temperature(ctx.teacher_probs_val, temperature).astype(np.float32)), temperature


@register_method("calibrated-soft")
def _calibrated_soft(ctx: MethodContext) -> MethodPlan:
    """Soft distillation on the teacher re-tempered on V (one temperature, minimum NLL on V).

    A teacher trained on a few labels is usually overconfident; its soft targets then say too
    little about its doubts. Temperature scaling on V fixes the confidence without moving any
    argmax. Unlike KD's τ, the student is trained and evaluated at temperature 1.
    """
    cal, temperature = calibrated_context(ctx, "calibrated-soft")
    return MethodPlan(VanillaObjective("soft", ctx.temperature), pool_targets=cal.teacher_probs_pool,
                      info={"teacher_temperature": temperature})


@register_method("vanilla-hard")
def _vanilla_hard(ctx: MethodContext) -> MethodPlan:
    return MethodPlan(VanillaObjective("hard"))


# ---------------------------------------------------------------------------------------------- corrections
# Weighted distillation, SLaM and the noise-handling baselines (mentor/corrections.py). All fit
# what they need on V only; options come from ctx.options (documented per factory).



def _corrections():
    """mentor.corrections (it needs torch), imported when a method is planned: listing the
    methods and validating a config stay fast."""
    from . import corrections
    return corrections


def _require_val(ctx: MethodContext, method: str) -> None:
    if ctx.teacher_probs_val is None or ctx.val_labels is None:
        raise ConfigError(f"method {method!r} needs the teacher's outputs on the validation set V (and V's labels) "
                          "to estimate where the teacher is wrong; label V with the teacher (a teacher file must "
                          "cover V's ids) or choose a vanilla method.")


def _reliability(ctx: MethodContext, method: str) -> "Reliability":
    from .reliability import fit_reliability
    _require_val(ctx, method)
    return fit_reliability(ctx.teacher_probs_val, ctx.val_labels, n_classes=ctx.n_classes,
                           min_val=int(ctx.options.get("min_val", 50)))


def _weighted_margin(ctx: MethodContext, mode: str) -> MethodPlan:
    rel = _reliability(ctx, f"weighted-margin{'-hard' if mode == 'hard' else ''}")
    w = _corrections().margin_weights(ctx.teacher_probs_pool, rel)
    return MethodPlan(VanillaObjective(mode, ctx.temperature if mode == "soft" else 1.0), pool_weights=w,
                      info={"weights": _corrections().weight_stats(w), "reliability": rel.to_dict()})


@register_method("weighted-margin", options=("min_val",))
def _weighted_margin_soft(ctx: MethodContext) -> MethodPlan:
    """Weighted distillation (soft targets): weight = teacher accuracy at its margin, fitted on V."""
    return _weighted_margin(ctx, "soft")


@register_method("weighted-margin-hard", options=("min_val",))
def _weighted_margin_hard(ctx: MethodContext) -> MethodPlan:
    """Weighted distillation (teacher's top label): weight = teacher accuracy at its margin, fitted on V."""
    return _weighted_margin(ctx, "hard")


@register_method("weighted-disagreement", options=("min_val",))
def _weighted_disagreement(ctx: MethodContext) -> MethodPlan:
    """Weighted distillation, two passes: weight from teacher-vs-first-student disagreement (soft).

    Trains a plain soft student first (ctx.train_and_predict), scores ½‖t − f0‖₁, maps it to
    P(teacher right) with a non-increasing isotonic fit on V, retrains with those weights.
    Options: min_val.
    """
    rel = _reliability(ctx, "weighted-disagreement")
    if ctx.train_and_predict is None:
        raise ConfigError("method 'weighted-disagreement' trains a first-pass student and needs its outputs on the "
                          "pool and on V: the caller must set MethodContext.train_and_predict.")
    first = VanillaObjective("soft", ctx.temperature)
    pool_probs, val_probs = ctx.train_and_predict(MethodPlan(first))
    w = _corrections().disagreement_weights(ctx.teacher_probs_pool, pool_probs, ctx.teacher_probs_val, val_probs, ctx.val_labels,
                             min_val=int(ctx.options.get("min_val", 50)))
    return MethodPlan(VanillaObjective("soft", ctx.temperature), pool_weights=w,
                      info={"weights": _corrections().weight_stats(w), "reliability": rel.to_dict()})


def _slam(ctx: MethodContext, mode: str, normalized: bool, name: str) -> MethodPlan:
    rel = _reliability(ctx, name)
    k = _corrections().slam_k(rel, ctx.n_classes, rule=str(ctx.options.get("slam_k_rule", "topk-accuracy")),
               level=float(ctx.options.get("slam_k_level", 0.9)))
    from .reliability import teacher_margin
    alpha = _corrections().slam_alpha(teacher_margin(ctx.teacher_probs_pool), rel, ctx.options.get("slam_alpha_floor"),
                       normalized=normalized, k=k)
    floor = 1.0 / k if normalized else 0.5
    info = {"k": k, "alpha": {**_corrections().weight_stats(alpha), "at_floor_fraction": float(np.mean(alpha <= floor + 1e-9))},
            "normalized": normalized, "mode": mode, "reliability": rel.to_dict()}
    return MethodPlan(_corrections().SlamObjective(alpha, np.full(len(alpha), k), mode=mode, normalized=normalized,
                                    teacher_probs_pool=ctx.teacher_probs_pool), info=info)


_SLAM_OPTIONS = ("slam_k_rule", "slam_k_level", "slam_alpha_floor", "min_val")


@register_method("slam", options=_SLAM_OPTIONS)
def _slam_soft(ctx: MethodContext) -> MethodPlan:
    """SLaM (soft targets, unnormalised mix): α = teacher accuracy at its margin (floor ½), k from top-k accuracy on V.

    Options: slam_k_rule ("topk-accuracy" or "fixed:K"), slam_k_level (0.9), slam_alpha_floor, min_val.
    """
    return _slam(ctx, "soft", False, "slam")


@register_method("slam-hard", options=_SLAM_OPTIONS)
def _slam_hard(ctx: MethodContext) -> MethodPlan:
    """SLaM with the teacher's top label as target (unnormalised mix, α floor ½)."""
    return _slam(ctx, "hard", False, "slam-hard")


@register_method("slam-normalized", options=_SLAM_OPTIONS)
def _slam_normalized(ctx: MethodContext) -> MethodPlan:
    """SLaM, normalised mix (second term ÷ (k − 1), α floor 1/k), soft targets."""
    return _slam(ctx, "soft", True, "slam-normalized")


@register_method("threshold", options=("threshold",))
def _threshold(ctx: MethodContext) -> MethodPlan:
    """Baseline: keep pseudo-labels whose teacher confidence clears a threshold chosen on V (hard targets).

    The threshold maximises correct² / kept on V (clean pseudo-labels × precision); option
    "threshold" overrides it. Kept examples weigh 1, the rest 0 (not renormalised, as in
    FixMatch-style masking).
    """
    _require_val(ctx, "threshold")
    if "threshold" in ctx.options:
        thr, on_val = float(ctx.options["threshold"]), {}
    else:
        thr, on_val = _corrections().choose_threshold(ctx.teacher_probs_val, ctx.val_labels)
    mask = _corrections().threshold_mask(ctx.teacher_probs_pool, thr)
    if not mask.any():
        raise ConfigError(f"no pool example reaches the confidence threshold {thr:.4f}; lower it.")
    return MethodPlan(VanillaObjective("hard"), pool_weights=mask,
                      info={"threshold": thr, "pool_coverage": float(mask.mean()), "val": on_val})


@register_method("cleanlab-filter", options=("cleanlab_folds",))
def _cleanlab_filter(ctx: MethodContext) -> MethodPlan:
    """Baseline: drop pseudo-labels that confident learning (cleanlab) flags, from out-of-fold probabilities.

    A logistic regression on the student's features is fit to the teacher's hard labels with
    5-fold cross-validation; cleanlab's `find_label_issues` flags labels that disagree with the
    out-of-fold probabilities; flagged examples weigh 0, the rest are distilled (hard targets).
    Needs no validation set. Option "cleanlab_folds" (default 5).
    """
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as e:  # pragma: no cover - cleanlab is a core dependency
        raise ConfigError("method cleanlab-filter needs the cleanlab package: pip install cleanlab") from e
    if ctx.pool_features is None:
        raise ConfigError("method cleanlab-filter needs the pool's features (MethodContext.pool_features).")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    labels = ctx.teacher_probs_pool.argmax(1)
    present = np.unique(labels)
    if len(present) < 2:
        raise ConfigError("cleanlab-filter: the teacher gives the same label to the whole pool; nothing to compare.")
    remap = np.searchsorted(present, labels)  # cleanlab wants labels 0..K-1 with every class present
    folds = int(ctx.options.get("cleanlab_folds", 5))
    counts = np.bincount(remap)
    folds = max(2, min(folds, int(counts.min()))) if counts.min() >= 2 else 2
    oof = cross_val_predict(LogisticRegression(max_iter=300), ctx.pool_features, remap, cv=folds,
                            method="predict_proba")
    issues = find_label_issues(remap, oof, filter_by="prune_by_noise_rate")
    keep = (~issues).astype(np.float32)
    if not keep.any():
        raise ConfigError("cleanlab flagged every pseudo-label; the teacher looks unusable on this pool.")
    return MethodPlan(VanillaObjective("hard"), pool_weights=keep,
                      info={"flagged_fraction": float(issues.mean()), "folds": folds})


@register_method("forward-correction", options=("min_val",))
def _forward_correction(ctx: MethodContext) -> MethodPlan:
    """Baseline: forward loss correction with one global noise rate ε = 1 − teacher accuracy on V (hard targets)."""
    rel = _reliability(ctx, "forward-correction")
    obj = _corrections().ForwardCorrectionObjective(1.0 - rel.accuracy, ctx.n_classes, mode="hard")
    return MethodPlan(obj, info={"eps": obj.eps, "reliability": rel.to_dict()})


@register_method("taid", options=("taid_epochs", "taid_t_start", "taid_t_end"))
def _taid(ctx: MethodContext) -> MethodPlan:
    """TAID: interpolated target softmax((1 − t)·z_s + t·log teacher), t linear 0.4 → 1.0 over the epochs.

    Uses ctx.n_epochs for the schedule (option taid_epochs overrides; 30 if neither is known).
    Needs no validation set.
    """
    n = int(ctx.options.get("taid_epochs") or ctx.n_epochs or 30)
    obj = _corrections().TaidObjective(n, float(ctx.options.get("taid_t_start", 0.4)), float(ctx.options.get("taid_t_end", 1.0)))
    return MethodPlan(obj, info={"taid_epochs": n, "t_start": obj.t_start, "t_end": obj.t_end})


# ---------------------------------------------------------------------------------------------- choice on V

AUTO_CANDIDATES = ["vanilla-soft", "vanilla-hard", "calibrated-soft", "weighted-margin", "slam", "slam-hard"]


@register_method("auto", options=("auto_candidates", "min_val"))
def _auto(ctx: MethodContext) -> MethodPlan:
    """Train each candidate method, keep the one with the best accuracy on V (ties: earlier candidate).

    Whether a correction helps depends on the regime (BENCHMARKS.md), and V is the only honest
    judge a user has. Costs one training per candidate more than the chosen method. V also fits
    the corrections' one-dimensional reliability curve, so their V accuracy is slightly
    optimistic. Option auto_candidates (default vanilla-soft, vanilla-hard, calibrated-soft,
    weighted-margin, slam, slam-hard; any registered methods except auto).
    """
    _require_val(ctx, "auto")
    if ctx.train_and_predict is None:
        raise ConfigError("method 'auto' trains every candidate and needs their outputs on V: the caller must set "
                          "MethodContext.train_and_predict.")
    candidates = list(ctx.options.get("auto_candidates", AUTO_CANDIDATES))
    bad = [c for c in candidates if c not in METHODS or c == "auto"]
    if bad or not candidates:
        raise ConfigError(f"auto_candidates {bad or candidates} must be a non-empty list of registered methods other "
                          f"than auto; available: {', '.join(sorted(m for m in METHODS if m != 'auto'))}.")
    val_labels = np.asarray(ctx.val_labels)
    scores = {}
    for name in candidates:
        _, val_probs = ctx.train_and_predict(plan_method(name, ctx))
        scores[name] = float((np.asarray(val_probs).argmax(1) == val_labels).mean())
    chosen = max(candidates, key=lambda c: (scores[c], -candidates.index(c)))
    plan = plan_method(chosen, ctx)  # fresh: stateful objectives (TAID) start their schedule again
    plan.info = {**plan.info, "auto": {"chosen": chosen, "val_accuracy": scores}}
    return plan
