"""Distillation methods by name: the registry the CLI, configs and benchmarks resolve.

A method turns what is known before student training (teacher outputs on the pool, teacher
outputs and true labels on the validation set V) into a `MethodPlan`: the objective for the
pool term and optional per-example pool weights. New corrections register here with
`@register_method("name")`; the trainer stays unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import ConfigError
from .train import VanillaObjective


@dataclass
class MethodContext:
    """Everything a method may look at. Test labels are deliberately absent."""
    n_classes: int
    teacher_probs_pool: np.ndarray
    teacher_probs_val: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    temperature: float = 1.0
    seed: int = 0
    # Trains a student with a given plan and returns its probabilities on the pool; lets
    # two-pass methods (train, inspect, retrain) reuse the caller's training setup.
    train_and_predict_pool: Callable | None = None
    options: dict = field(default_factory=dict)


@dataclass
class MethodPlan:
    objective: object
    pool_weights: np.ndarray | None = None
    info: dict = field(default_factory=dict)


METHODS: dict[str, Callable[[MethodContext], MethodPlan]] = {}


def register_method(name: str):
    def deco(factory):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = factory
        return factory
    return deco


def get_method(name: str) -> Callable[[MethodContext], MethodPlan]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}.")
    return METHODS[name]


def plan_method(name: str, ctx: MethodContext) -> MethodPlan:
    return get_method(name)(ctx)


@register_method("vanilla-soft")
def _vanilla_soft(ctx: MethodContext) -> MethodPlan:
    return MethodPlan(VanillaObjective("soft", ctx.temperature))


@register_method("vanilla-hard")
def _vanilla_hard(ctx: MethodContext) -> MethodPlan:
    return MethodPlan(VanillaObjective("hard"))
