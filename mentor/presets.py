"""Embedded default configs: the demo and the benchmark suites start from these."""

from __future__ import annotations

from .config import RunConfig, parse_config


def demo_config(output_dir: str = "results/demo", seed: int = 0) -> RunConfig:
    """digits: an MLP teacher trained on 100 labels, a logistic-regression student, the rest as pool."""
    return parse_config({
        "seed": seed, "output_dir": output_dir, "method": "vanilla-soft",
        "data": {"name": "digits"},
        "split": {"n_labeled": 100, "n_val": 300, "n_test": 400},
        "teacher": {"kind": "mlp"},
        "student": {"kind": "logistic"},
        "train": {"epochs": 30},
    })
