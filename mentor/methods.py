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
    # Loads the teacher's embeddings of the pool rows (n_pool, d) from the store; LELP needs them.
    pool_embeddings: Callable | None = None
    # train.select_on is set: each student keeps its best epoch on V, so auto cross-fits every candidate
    # (its epoch chosen on the other folds), not only those that fit something on V
    selects_epoch_on_val: bool = False


@dataclass
class MethodPlan:
    objective: object
    pool_weights: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    # replaces the teacher's outputs on the pool as training targets (e.g. re-tempered on V)
    pool_targets: np.ndarray | None = None
    # λ for this plan instead of train.distill_weight; 0 trains on A alone (the labeled-only student)
    distill_weight: float | None = None
    # wraps the student before training (DHO adds a second head); the caller trains and saves the wrapped one
    student_wrapper: Callable | None = None
    # the V rows (a boolean mask) the trainer may choose its epoch on (train.select_on); None: all of V.
    # auto's cross-fitting sets it, so that the V examples that judge a candidate never chose its epoch
    val_rows: np.ndarray | None = None

    def targets(self, teacher_probs_pool: np.ndarray) -> np.ndarray:
        return teacher_probs_pool if self.pool_targets is None else self.pool_targets


def train_with_plan(model, x_labeled, y_labeled, x_pool, teacher_probs_pool, plan: MethodPlan, config, *,
                    x_val=None, y_val=None):
    """`train_student` with a plan's objective, pool weights, targets and λ (when it sets them);
    λ = 0 trains on A alone, exactly as the labeled-only baseline does. V (`x_val`, `y_val`; only
    the plan's val_rows of it) is passed on for train.select_on."""
    from dataclasses import replace

    from .students.rows import take_rows
    from .students.train import train_student
    if x_val is not None and plan.val_rows is not None:
        x_val, y_val = take_rows(x_val, plan.val_rows), np.asarray(y_val)[plan.val_rows]
    if hasattr(plan.objective, "bind"):  # an objective that reads the student itself (DHO's second head)
        plan.objective.bind(model)
    if plan.distill_weight is not None:
        config = replace(config, distill_weight=float(plan.distill_weight))
        if plan.distill_weight == 0:
            return train_student(model, x_labeled, y_labeled, config=config, x_val=x_val, y_val=y_val)
    return train_student(model, x_labeled, y_labeled, x_pool=x_pool, teacher_probs=plan.targets(teacher_probs_pool),
                         objective=plan.objective, pool_weights=plan.pool_weights, config=config,
                         x_val=x_val, y_val=y_val)


METHODS: dict[str, Callable[[MethodContext], MethodPlan]] = {}
# the methods that train from disk (train.data_path: stream): per batch from the teacher's
# probabilities and what they fit on V (mentor.students.stream.stream_plan); the others need the
# whole pool in memory (a first student trained on it, a model of its features) or change the student;
# auto streams when all its candidates do (streams())
STREAM_METHODS = ("vanilla-soft", "vanilla-hard", "calibrated-soft", "weighted-margin", "weighted-margin-hard",
                  "slam", "slam-hard", "slam-normalized", "threshold", "forward-correction", "taid", "dkd")


def streams(method: str, options: dict | None = None) -> bool:
    """Whether `method` can train from disk: one of STREAM_METHODS, or auto whose candidates all are
    (labeled-only and method@λ included)."""
    if method == "auto":
        return not _not_streaming_candidates(options or {})
    return method in STREAM_METHODS


def _not_streaming_candidates(options: dict) -> list[str]:
    cands = (options or {}).get("auto_candidates") or AUTO_CANDIDATES
    return [c for c in cands if c != LABELED_ONLY and str(c).partition("@")[0] not in STREAM_METHODS]


def cannot_stream(method: str, options: dict | None = None) -> str:
    """Why `method` cannot train from disk, and the fix (the config check and stream_plan both say it)."""
    if method == "auto":
        bad = _not_streaming_candidates(options or {})
        return (f"method 'auto' trains from disk only if every candidate does, and {', '.join(bad)} cannot (it needs "
                "the whole pool in memory): set train.data_path: memory, or list in method_options.auto_candidates "
                f"only labeled-only, method@λ and methods of {', '.join(STREAM_METHODS)}")
    return (f"method {method!r} cannot train from disk (only methods computed per batch from the teacher's "
            "probabilities can; it needs the whole pool in memory or changes the student): set "
            f"train.data_path: memory, or use one of {', '.join(STREAM_METHODS)} (or auto with those candidates)")


# the `method_options` keys each method reads (besides the ones every method accepts)
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {}
# whether a method fits anything on V (auto cross-fits those; the others it trains once)
METHOD_USES_VAL: dict[str, bool] = {}
LABELED_ONLY = "labeled-only"  # an auto candidate, not a method: λ = 0, the student never sees the pool
NOT_CANDIDATES = {"dho": "it changes the student's architecture and chooses its blend on V, which auto scores on; "
                         "compare it with `mentor bench quality --methods dho,...`",
                  "lelp": "it changes the student's output layer and needs the teacher's embeddings in the store; "
                          "compare it with `mentor bench quality --methods lelp,...`"}


def _candidate_methods() -> str:
    return ", ".join(sorted(m for m in METHODS if m != "auto" and m not in NOT_CANDIDATES))


def parse_candidate(name) -> tuple[str | None, float | None]:
    """An auto candidate name -> (method, λ). "labeled-only" is (None, 0.0); "vanilla-soft@0.5" is
    ("vanilla-soft", 0.5): that method trained with train.distill_weight = 0.5; a plain method name
    keeps train.distill_weight (λ None). Raises ConfigError naming the accepted forms."""
    if name == LABELED_ONLY:
        return None, 0.0
    base, at, lam = str(name).partition("@")
    if base in NOT_CANDIDATES:
        raise ConfigError(f"auto candidate {name!r}: {base} cannot be an auto candidate ({NOT_CANDIDATES[base]}).")
    if not isinstance(name, str) or base not in METHODS or base == "auto":
        raise ConfigError(f"auto candidate {name!r} is not {LABELED_ONLY!r}, a method or method@λ; methods: "
                          f"{_candidate_methods()}.")
    if not at:
        return base, None
    try:
        value = float(lam)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"auto candidate {name!r}: the λ after @ must be a number > 0 (e.g. vanilla-soft@0.5); "
                          f"λ = 0 is the candidate {LABELED_ONLY!r}.")
    return base, value


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
    excluded = [c for c in (v if isinstance(v, list) else []) if str(c).partition("@")[0] in NOT_CANDIDATES]
    if excluded:
        base = excluded[0].partition("@")[0]
        return f"a list without {base}: it cannot be an auto candidate ({NOT_CANDIDATES[base]})"
    if isinstance(v, list) and v and all(isinstance(c, str) for c in v) and len(set(v)) == len(v):
        try:
            for c in v:
                parse_candidate(c)
            return None
        except ConfigError:
            pass
    return (f'a non-empty list of distinct candidates: "{LABELED_ONLY}", a method other than auto, or method@λ '
            f"with λ > 0 (e.g. vanilla-soft@0.5); methods: {_candidate_methods()}")


def _noise_rules(v):
    """auto_noise_se: one margin (number ≥ 0) or a non-empty list of them, the choice rules to try."""
    items = v if isinstance(v, list) and v else [v]
    if all(_number(0)(x) is None for x in items):
        return None
    return "a number >= 0 (paired standard errors; 0 keeps the best on V) or a non-empty list of them, e.g. [1, 0]"


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
    "dkd_alpha": _number(0),
    "dkd_beta": _number(0),
    "lelp_directions": _number(0, integer=True),
    "lelp_temperature": _number(0, lo_open=True),
    "auto_candidates": _candidates,
    "auto_folds": _number(1, integer=True),
    "auto_noise_se": _noise_rules,
    "auto_splits": _number(1, integer=True),
}
COMMON_OPTIONS = ("calibrate_teacher",)


def register_method(name: str, options: tuple[str, ...] = (), uses_val: bool = True):
    """Register a method factory under `name`; `options` are the method_options keys it reads
    (a config naming any other key is refused, so a misspelt option never passes silently);
    `uses_val`: it fits something on V (auto then fits it on part of V and scores it on the rest)."""
    def deco(factory):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = factory
        METHOD_OPTIONS[name] = tuple(options)
        METHOD_USES_VAL[name] = uses_val
        return factory
    return deco


def check_method_options(method: str, options: dict) -> None:
    """Refuse options the method does not read and values out of range (ConfigError)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    allowed = set(COMMON_OPTIONS) | set(METHOD_OPTIONS.get(method, ()))
    if method == "auto":  # auto passes its options on to every candidate
        for c in options.get("auto_candidates") or AUTO_CANDIDATES:
            allowed |= set(METHOD_OPTIONS.get(str(c).partition("@")[0], ()))
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
    (one temperature, minimum NLL) and gives every method the calibrated outputs. Auto's candidate
    names plan too: "labeled-only" (λ = 0) and "method@λ" (that method's plan with λ)."""
    if name == LABELED_ONLY or "@" in name:
        base, lam = parse_candidate(name)
        plan = MethodPlan(VanillaObjective("soft")) if base is None else plan_method(base, ctx)
        plan.distill_weight = lam
        plan.info = {**plan.info, "distill_weight": lam}
        return plan
    if ctx.options.get("calibrate_teacher") and name != "calibrated-soft":
        ctx, temperature = calibrated_context(ctx, name)
        plan = get_method(name)(ctx)
        plan.pool_targets = ctx.teacher_probs_pool
        plan.info = {**plan.info, "teacher_temperature": temperature}
        return plan
    return get_method(name)(ctx)


def VanillaObjective(mode: str = "soft", temperature: float = 1.0):
    """mentor.students.train.VanillaObjective, imported on use (torch)."""
    from .students.train import VanillaObjective as Vanilla
    return Vanilla(mode, temperature)


@register_method("vanilla-soft", uses_val=False)
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


@register_method("vanilla-hard", uses_val=False)
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


@register_method("cleanlab-filter", options=("cleanlab_folds",), uses_val=False)
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


@register_method("taid", options=("taid_epochs", "taid_t_start", "taid_t_end"), uses_val=False)
def _taid(ctx: MethodContext) -> MethodPlan:
    """TAID: interpolated target softmax((1 − t)·z_s + t·log teacher), t linear 0.4 → 1.0 over the epochs.

    Uses ctx.n_epochs for the schedule (option taid_epochs overrides; 30 if neither is known).
    Needs no validation set.
    """
    n = int(ctx.options.get("taid_epochs") or ctx.n_epochs or 30)
    obj = _corrections().TaidObjective(n, float(ctx.options.get("taid_t_start", 0.4)), float(ctx.options.get("taid_t_end", 1.0)))
    return MethodPlan(obj, info={"taid_epochs": n, "t_start": obj.t_start, "t_end": obj.t_end})


@register_method("dkd", options=("dkd_alpha", "dkd_beta"), uses_val=False)
def _dkd(ctx: MethodContext) -> MethodPlan:
    """Decoupled KD (Zhao et al., 2022): α·TCKD + β·NCKD at train.temperature, the target class being
    the teacher's top label (the pool has no labels). Options dkd_alpha (1.0), dkd_beta (8.0, the
    paper's CIFAR value). Needs no validation set."""
    from .losses import DKDObjective
    obj = DKDObjective(float(ctx.options.get("dkd_alpha", 1.0)), float(ctx.options.get("dkd_beta", 8.0)),
                       ctx.temperature)
    return MethodPlan(obj, info={"dkd_alpha": obj.alpha, "dkd_beta": obj.beta, "temperature": obj.temperature})


@register_method("dho")
def _dho(ctx: MethodContext) -> MethodPlan:
    """DHO (dual-head optimisation): a second linear head on the student's penultimate features
    learns the teacher's soft targets (at train.temperature) on the pool, the student's own head
    learns A's labels; the two heads' probabilities are blended at inference with the weight chosen
    on V after training (mentor.students.dual). Needs V's labels (for the blend), not the teacher on V."""
    if ctx.val_labels is None or len(ctx.val_labels) == 0:
        raise ConfigError("method 'dho' chooses the blend of its two heads on the validation set V, and V is empty; "
                          "set split.n_val > 0 (a few hundred examples) or choose another method.")
    from .students.dual import DHOObjective, DualHead
    return MethodPlan(DHOObjective("soft", ctx.temperature), student_wrapper=DualHead,
                      info={"temperature": ctx.temperature})


@register_method("lelp", options=("lelp_directions", "lelp_temperature"), uses_val=False)
def _lelp(ctx: MethodContext) -> MethodPlan:
    """LELP: the student learns the teacher's distribution over pseudo-subclasses, 2k per class,
    split along k directions of the teacher's embedding that its output ignores (found by PCA per
    class); its class probability is the sum of its subclasses' (mentor.students.subclass). For
    few-class tasks. Needs the teacher's embeddings in the store (teacher.embeddings: true), not V."""
    if ctx.pool_embeddings is None:
        raise ConfigError("method 'lelp' builds its targets from the teacher's embeddings, and none are available "
                          "here; set teacher.embeddings: true (built-in mlp/cnn and minilm teachers) or return "
                          "extras['embedding'] from your teacher, then label again.")
    from .students.subclass import LELPObjective, lelp_targets, subclass_head
    k = int(ctx.options.get("lelp_directions", 2))
    targets, info = lelp_targets(ctx.pool_embeddings(), ctx.teacher_probs_pool, directions=k,
                                 temperature=float(ctx.options.get("lelp_temperature", 1.0)))
    subclasses = info["lelp_subclasses"]
    return MethodPlan(LELPObjective(targets, ctx.temperature), student_wrapper=subclass_head(ctx.n_classes, subclasses),
                      info={**info, "temperature": ctx.temperature})


# ---------------------------------------------------------------------------------------------- choice on V

AUTO_CANDIDATES = [LABELED_ONLY, "vanilla-soft", "vanilla-soft@0.5", "vanilla-soft@0.25", "vanilla-hard",
                   "calibrated-soft", "weighted-margin", "slam", "slam-hard"]
# auto's choice rules: the simplest within one paired SE of the best, or the best outright,
# whichever choice scores higher on V examples it did not see; not distilling is compared with the
# nested estimate of that whole procedure (rule_choice_estimate). Default since session 16: on 15
# (entry, seed) run after it was designed it kept more of the gains where one correction is
# steadily best (MNIST-1D/A500 +1.34 over vanilla-soft at 10 seeds, the one-SE rule +0.83) and never
# fell more than 0.13 below the better of labeled-only and vanilla-soft (BENCHMARKS.md).
AUTO_NOISE_SE = (1.0, 0.0)
# simplest first: when candidates are within noise on V, auto keeps the earliest of them
SIMPLICITY = [LABELED_ONLY, "vanilla-soft", "vanilla-hard", "calibrated-soft", "weighted-margin",
              "weighted-margin-hard", "threshold", "forward-correction", "cleanlab-filter", "taid", "dkd",
              "weighted-disagreement", "slam", "slam-normalized", "slam-hard"]


def simplicity_order(candidates: list[str]) -> list[str]:
    """Candidates simplest first: by SIMPLICITY (methods not listed come after, in the given
    order); a method's plain name (λ = train.distill_weight) before its method@λ variants, those
    by decreasing λ (closer to the plain method first)."""
    def key(c):
        base, lam = parse_candidate(c)
        base = base or LABELED_ONLY
        rank = SIMPLICITY.index(base) if base in SIMPLICITY else len(SIMPLICITY)
        return rank, lam is not None and base != LABELED_ONLY, -(lam or 0.0)
    return sorted(candidates, key=key)


def _pick(s: np.ndarray, ranked: list[int], noise_se: float) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """The simplest ranked row within noise_se paired SEs of the best ranked row: (pick, reference,
    paired mean differences, their SEs, within-noise flags)."""
    n = s.shape[1]
    ref = ranked[int(np.argmax(s[ranked].mean(axis=1)))]  # argmax takes the first of equal means: the simpler
    diff = s - s[ref]
    diff_mean = diff.mean(axis=1)
    diff_se = diff.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(s))
    within = diff_mean >= -noise_se * diff_se - 1e-12
    return next(i for i in ranked if within[i]), ref, diff_mean, diff_se, within


def selection_estimate(scores, noise_se: float, splits) -> dict:
    """Honest V score of the rule "keep the simplest within noise_se paired SEs of the best" (rows of
    `scores` simplest first): on each fold of each split (rows of `splits`: one fold number per V
    example), the row the rule picks from the other folds, scored on this fold; averaged over folds
    and splits. No training: the per-example scores are fixed, only the examples that choose and
    those that judge change. `picks`: the rule's pick per fold of the first split."""
    s = np.asarray(scores, dtype=np.float64)
    splits = np.atleast_2d(np.asarray(splits))
    values, picks = [], []
    for r, fold in enumerate(splits):
        honest = np.empty(s.shape[1])
        for f in np.unique(fold):
            pick = _pick(s[:, fold != f], list(range(len(s))), noise_se)[0]
            honest[fold == f] = s[pick, fold == f]
            picks += [pick] if r == 0 else []
        values.append(honest.mean())
    return {"val_accuracy": float(np.mean(values)), "picks": picks, "splits": len(splits)}


def _best_rule(s: np.ndarray, rules: list[float], splits) -> tuple[int, list[dict]]:
    """Index of the rule whose choice scores highest on held-out folds of `splits` (ties: the
    first listed), and each rule's selection_estimate."""
    ests = [selection_estimate(s, rule, splits) for rule in rules]
    return int(np.argmax([e["val_accuracy"] - 1e-12 * k for k, e in enumerate(ests)])), ests


def rule_choice_estimate(scores, rules: list[float], splits) -> dict:
    """Honest V score of the whole procedure "choose the rule on V, then the candidate by it".

    The rule used is the one whose selection_estimate is highest, so that estimate won a contest
    too and is biased upwards: the higher of two noisy scores (fine-foods/LLM seed 1, BENCHMARKS:
    it edged over not distilling by 0.02 points and lost 6 on test). Here, on each fold of each
    split, the rule is chosen on the other folds alone (judged by the other splits restricted to
    them), the candidate it picks there is scored on this fold; averaged as selection_estimate.
    With one rule this is selection_estimate; with one split no other split can judge the rules
    inside a fold, and the first rule stands in. `picks`: the pick per fold of the first split."""
    s = np.asarray(scores, dtype=np.float64)
    splits = np.atleast_2d(np.asarray(splits))
    rules = [float(r) for r in rules]
    every = list(range(len(s)))
    values, picks = [], []
    for r, fold in enumerate(splits):
        honest = np.empty(s.shape[1])
        for f in np.unique(fold):
            train = fold != f
            inner = [g[train] for k, g in enumerate(splits) if k != r and len(np.unique(g[train])) > 1]
            use = _best_rule(s[:, train], rules, inner)[0] if inner and len(rules) > 1 else 0
            pick = _pick(s[:, train], every, rules[use])[0]
            honest[~train] = s[pick, ~train]
            picks += [pick] if r == 0 else []
        values.append(honest.mean())
    return {"val_accuracy": float(np.mean(values)), "picks": picks, "splits": len(splits)}


def choose_on_validation(scores, order: list[str], *, noise_se: float | list[float] = 1.0, standalone=(),
                         folds=None) -> dict:
    """The candidate to keep, from per-example scores on V (rows: candidates in `order`, simplest
    first; columns: V examples, e.g. 1 where the candidate is right).

    The reference is the ranked candidate (not in `standalone`) with the highest mean (ties: the
    simpler). Every candidate is compared with it on the same examples: the paired difference's
    mean and standard error (sd/√n); within noise means a mean difference ≥ −noise_se·SE. The
    simplest ranked candidate within noise is kept, so a choice V cannot tell apart from a simpler
    one does not cost the simpler one's safety. A `standalone` candidate then replaces it only if
    its mean is higher: such a candidate (the labeled-only student) disagrees with the others on
    many examples, so its paired SE is wide, and the simplicity rule would keep it even when it is
    clearly below. Each candidate's own binomial SE and 95% Wilson interval are reported too.

    With `folds` (each V example's fold, ≥ 2 folds; or several such splits, one per row) the
    standalone candidate is compared not with the chosen candidate's V score, which won a contest
    among many on these very examples and so is biased upwards (the winner's curse), but with an
    honest estimate of "choose a distilled candidate" (`selection_estimate`). The standalone one is
    kept if it scores at least that (a tie keeps it: it is the simpler), or more than the chosen
    candidate (the estimate can exceed it). The chosen distilled candidate itself is picked on all of V.

    `noise_se` may list several margins (e.g. [1, 0]: the simplest within one SE, or the best
    outright). Which rule serves better depends on the data: the simplicity rule is safe where
    candidates differ by luck and leaves points behind where one correction is steadily better.
    With folds, each rule's honest estimate is computed and the rule scoring highest is used
    (`rule_noise_se`; ties: the first listed); without folds, the first. The standalone candidate is
    then compared with an honest estimate of the whole procedure, the rule's choice included
    (`rule_choice_estimate`, recorded as the selection_estimate with "nested": true), not with the
    used rule's own estimate, which won a contest between the rules. The candidates'
    `within_noise` flags always use the first margin: they describe V's uncertainty, not the rule.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(order) or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must have shape (len(order) = {len(order)}, n_val >= 1), got {s.shape}")
    n = s.shape[1]
    rules = [float(r) for r in (noise_se if isinstance(noise_se, (list, tuple)) else [noise_se])]
    if not rules:
        raise ValueError("noise_se must hold at least one margin")
    mean = s.mean(axis=1)
    ranked = [i for i, c in enumerate(order) if c not in standalone] or list(range(len(order)))
    splits = None if folds is None else np.atleast_2d(np.asarray(folds))
    if splits is not None and (splits.ndim != 2 or splits.shape[1] != n):
        raise ValueError(f"folds must hold one fold per V example ({n}), got shape {np.shape(folds)}")
    if splits is not None and any(len(np.unique(f)) < 2 for f in splits):
        splits = None
    estimates, use, names = None, 0, lambda est: {**est, "picks": [order[ranked[p]] for p in est["picks"]]}
    if splits is not None and (len(ranked) < len(order) or len(rules) > 1):
        use, estimates = _best_rule(s[ranked], rules, splits)
        estimates = [names(e) for e in estimates]
    chosen = _pick(s, ranked, rules[use])[0]
    _, ref, diff_mean, diff_se, within = _pick(s, ranked, rules[0])  # "within noise" as the first rule says
    estimate = None if estimates is None or len(ranked) == len(order) else (
        estimates[0] if len(rules) == 1 else {**names(rule_choice_estimate(s[ranked], rules, splits)), "nested": True})
    bar = np.inf if estimate is None else estimate["val_accuracy"] - 1e-12
    pick = chosen
    for i in range(len(order)):  # above the chosen one's V score (as without folds), or at least the honest estimate
        if i not in ranked and (mean[i] > mean[chosen] or mean[i] >= bar) and (pick == chosen or mean[i] > mean[pick]):
            pick = i
    chosen = pick
    z = 1.96
    centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(np.clip(mean * (1 - mean), 0, None) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"chosen": order[chosen], "best": order[int(np.argmax(mean))], "reference": order[ref], "n_val": n,
            "noise_se": rules[0], "rule_noise_se": rules[use], "standalone": [c for c in order if c in standalone],
            "selection_estimate": estimate, "rules": None if estimates is None or len(rules) == 1 else
            [{"noise_se": r, "val_accuracy": e["val_accuracy"], "picks": e["picks"]} for r, e in zip(rules, estimates)],
            "candidates": {c: {"val_accuracy": float(mean[i]), "se": float(np.sqrt(max(mean[i] * (1 - mean[i]), 0) / n)),
                               "interval95": [float(centre[i] - half[i]), float(centre[i] + half[i])],
                               "diff_vs_reference": float(diff_mean[i]), "diff_se": float(diff_se[i]),
                               "within_noise": bool(within[i])} for i, c in enumerate(order)}}


def cross_fit_folds(n_val: int, folds: int, seed) -> np.ndarray:
    """Fold number (0..folds−1) of each V example: a seeded random permutation dealt round-robin."""
    if folds < 1 or (folds > 1 and n_val < 2 * folds):
        raise ConfigError(f"auto_folds={folds} needs at least {2 * folds} examples in V (it has {n_val}); lower "
                          "method_options.auto_folds (1 = no cross-fitting) or enlarge split.n_val.")
    fold = np.empty(n_val, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n_val)] = np.arange(n_val) % folds
    return fold


def auto_splits(n_val: int, folds: int, seed, n_splits: int = 20) -> np.ndarray:
    """The splits of V auto judges its choices on, one row each: the cross-fitting split (seed),
    then n_splits − 1 more dealt with seeds [seed, 1], [seed, 2], … (also to re-derive a run's
    choice from its recorded V scores)."""
    return np.vstack([cross_fit_folds(n_val, folds, seed)] +
                     [cross_fit_folds(n_val, folds, [seed, r]) for r in range(1, n_splits)])


def _fit_part(ctx: MethodContext, keep: np.ndarray) -> MethodContext:
    """ctx seeing only the V examples in `keep` (a two-pass method's V outputs are cut alike)."""
    from dataclasses import replace
    tp = ctx.train_and_predict

    def train_and_predict(plan):  # a first-pass student chooses its epoch (select_on) on these rows too
        plan.val_rows = keep
        u, v = tp(plan)
        return u, v[keep]
    return replace(ctx, teacher_probs_val=ctx.teacher_probs_val[keep], val_labels=np.asarray(ctx.val_labels)[keep],
                   train_and_predict=None if tp is None else train_and_predict)


def _uses_val(candidate: str, options: dict) -> bool:
    base, _ = parse_candidate(candidate)
    return base is not None and (bool(options.get("calibrate_teacher")) or METHOD_USES_VAL.get(base, True))


def auto_order(options: dict) -> list[str]:
    """auto's candidates (option auto_candidates, checked) in simplicity order."""
    candidates = list(options.get("auto_candidates", AUTO_CANDIDATES))
    wrong = _candidates(candidates)
    if wrong:
        raise ConfigError(f"method_options.auto_candidates must be {wrong}; got {candidates!r}.")
    return simplicity_order(candidates)


def auto_choice(val_probs: Callable[[str, np.ndarray | None], np.ndarray], val_labels, options: dict,
                seed: int, *, cross_fit_all: bool = False) -> dict:
    """Score every auto candidate on V (cross-fitted where it fits on V) and choose among them.

    `val_probs(name, keep)` trains the candidate `name`, fitting what it fits on V on the V examples
    where `keep` is true (None: all of V), and returns its probabilities on all of V. Shared by the
    in-memory `auto` and training from disk; returns choose_on_validation's record with the order,
    the folds and a one-line note. `cross_fit_all`: every candidate is cross-fitted (each student
    chooses its epoch on V, train.select_on), with auto_folds ≥ 2."""
    order = auto_order(options)
    val_labels = np.asarray(val_labels)
    folds = int(options.get("auto_folds", 2))
    fold = cross_fit_folds(len(val_labels), folds, seed)
    scores = np.zeros((len(order), len(val_labels)))
    cross_fitted = []
    for i, name in enumerate(order):
        parts = range(folds) if folds > 1 and (cross_fit_all or _uses_val(name, options)) else [None]
        cross_fitted += [name] if parts != [None] else []
        for f in parts:
            right = np.asarray(val_probs(name, None if f is None else fold != f)).argmax(1) == val_labels
            scores[i] = right if f is None else np.where(fold == f, right, scores[i])
    splits = None if folds == 1 else auto_splits(len(val_labels), folds, seed, int(options.get("auto_splits", 20)))
    choice = choose_on_validation(scores, order, noise_se=options.get("auto_noise_se", AUTO_NOISE_SE),
                                  standalone=(LABELED_ONLY,), folds=splits)
    chosen, ref, c = choice["chosen"], choice["reference"], choice["candidates"]
    pct = {o: f"{100 * c[o]['val_accuracy']:.1f}%" for o in order}
    est = choice["selection_estimate"]
    held_out = "" if est is None else (f"; choosing a distilled student scores {100 * est['val_accuracy']:.1f}% "
                                       "on V examples the choice did not see")
    if chosen == LABELED_ONLY and (est is None or c[LABELED_ONLY]["val_accuracy"] > c[ref]["val_accuracy"]):
        note = f"not distilling scored best on V ({pct[chosen]}; the best distilled student, {ref}: {pct[ref]}{held_out})."
    elif chosen == LABELED_ONLY:
        note = (f"not distilling ({pct[chosen]} on V) scores at least what choosing a distilled student scores on V "
                f"examples the choice did not see ({100 * est['val_accuracy']:.1f}%), so it is kept; the best "
                f"distilled student on all of V, {ref}, scored {pct[ref]}, a score that won a contest among "
                f"{len(order) - 1} on the same examples.")
    elif chosen != ref:
        note = (f"{ref} scored best on V ({pct[ref]}), but {chosen} is within noise of it "
                f"({100 * c[chosen]['diff_vs_reference']:+.1f} ± {100 * c[chosen]['diff_se']:.1f} points, paired); "
                "the simpler is kept.")
    else:
        near = [o for o in order if o not in (chosen, LABELED_ONLY) and c[o]["within_noise"]]
        simpler = [o for o in near if order.index(o) < order.index(chosen)]
        note = (f"{chosen} scored best on V ({pct[chosen]})"
                + (f"; {', '.join(simpler)} within noise of it and simpler, but keeping the best outright scores "
                   "higher on V examples the choice did not see than keeping the simplest within noise." if simpler else
                   f"; {', '.join(near)} within noise of it, but not simpler." if near else
                   "; every simpler candidate is below it by more than noise."))
    if LABELED_ONLY in order and chosen != LABELED_ONLY:
        note += f" Not distilling: {pct[LABELED_ONLY]}{held_out}."
    if choice["rules"]:
        def rule(k: float) -> str:
            return "the best on V" if k == 0 else f"the simplest within {k:g} paired SE of the best"
        est_pct = "; ".join(f"{rule(r['noise_se'])}: {100 * r['val_accuracy']:.2f}%" for r in choice["rules"])
        note += (f" Rule used: {rule(choice['rule_noise_se'])}, the rule whose choice scored highest on V examples "
                 f"it did not see ({est_pct}; {len(splits)} splits of V).")
    return {**choice, "folds": folds, "order": order, "note": note, "cross_fitted": cross_fitted,
            "val_accuracy": {o: c[o]["val_accuracy"] for o in order},
            "val_right": {o: "".join("1" if x else "0" for x in scores[i]) for i, o in enumerate(order)}}


@register_method("auto", options=("auto_candidates", "auto_folds", "auto_noise_se", "auto_splits", "min_val"))
def _auto(ctx: MethodContext) -> MethodPlan:
    """Train each candidate, score it on V, keep the simplest within noise of the best.

    Whether distilling, and which correction, helps depends on the regime (BENCHMARKS.md), and
    V is the only honest judge a user has. Candidates (option auto_candidates): "labeled-only"
    (λ = 0: no distillation), any method, and method@λ (that method with train.distill_weight =
    λ); default labeled-only, vanilla-soft at train.distill_weight, 0.5 and 0.25, vanilla-hard,
    calibrated-soft, weighted-margin, slam, slam-hard. Simplicity order (SIMPLICITY): labeled-only
    < vanilla-soft (< its @λ variants) < vanilla-hard < calibrated-soft < weighted-margin(-hard) <
    threshold < forward-correction < cleanlab-filter < taid < weighted-disagreement < slam <
    slam-normalized < slam-hard.

    Cross-fitting (option auto_folds, default 2): V is split in folds (seeded); a method that fits
    on V (reliability curve, temperature, threshold) is fitted on the other folds and scored on
    each fold in turn, so no V example both fits α and judges the result. The choice:
    `choose_on_validation` among the distillation candidates, keeping the simplest within
    auto_noise_se paired standard errors of the best; a list tries each rule and uses the one whose
    choice scores higher on V examples it did not see (default [1, 0]: one SE, or the best outright). Held-out scores
    average the cross-fitting split and auto_splits − 1 more random splits of V (default 20 in all;
    no extra training). labeled-only replaces that choice if it scores at least that honest estimate
    (with auto_folds 1, only if it scores higher than the choice, and the first rule is used; see
    there why). The chosen method is then planned on the whole V. Costs
    one training per candidate and fold (one for methods that do not fit on V) more than the
    chosen method.
    """
    _require_val(ctx, "auto")
    if ctx.train_and_predict is None:
        raise ConfigError("method 'auto' trains every candidate and needs their outputs on V: the caller must set "
                          "MethodContext.train_and_predict.")

    def val_probs(name, keep):
        plan = plan_method(name, ctx if keep is None else _fit_part(ctx, keep))
        plan.val_rows = keep  # with train.select_on the epoch is chosen on the fitting folds only
        return ctx.train_and_predict(plan)[1]
    choice = auto_choice(val_probs, ctx.val_labels, ctx.options, ctx.seed, cross_fit_all=ctx.selects_epoch_on_val)
    choice["epoch_chosen_on_val"] = ctx.selects_epoch_on_val
    chosen = choice["chosen"]
    plan = plan_method(chosen, ctx)  # fresh, on all of V: stateful objectives (TAID) start their schedule again
    plan.info = {**plan.info, "auto": choice}
    return plan
