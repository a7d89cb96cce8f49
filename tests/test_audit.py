"""The teacher audit: numbers that match a teacher of known reliability, a PNG, the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mentor.audit import audit_teacher, plot_reliability
from mentor.errors import DataError


def _teacher(n, rng, C=5):
    """Teacher whose chance of being right equals its margin-driven confidence, known exactly."""
    y = rng.integers(0, C, n)
    conf = rng.uniform(0.25, 1.0, n)
    right = rng.uniform(size=n) < conf
    top = np.where(right, y, (y + rng.integers(1, C, n)) % C)
    p = np.full((n, C), 0.0)
    p[np.arange(n), top] = conf
    rest = (1 - conf) / (C - 1)
    p += np.where(p == 0, rest[:, None], 0)
    return p, y, right


def test_audit_estimates_the_pool_error_rate():
    rng = np.random.default_rng(0)
    pv, yv, _ = _teacher(2000, rng)
    pp, _, right_pool = _teacher(5000, rng)
    a = audit_teacher(pv, yv, pp, n_classes=5)
    assert abs(a["estimated_pool_error_rate"] - (1 - right_pool.mean())) < 0.03
    acc = np.array(a["curve"]["accuracy"])
    assert (np.diff(acc) >= -1e-12).all() and acc[-1] > acc[0] + 0.3
    assert a["topk_accuracy"][-1] == pytest.approx(1.0) and a["smallest_k_90"] >= 1


def test_audit_plot_is_written(tmp_path):
    rng = np.random.default_rng(1)
    pv, yv, _ = _teacher(300, rng)
    a = audit_teacher(pv, yv, pv, n_classes=5, class_names=list("abcde"))
    out = plot_reliability(a, tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_audit_rejects_out_of_range_labels():
    rng = np.random.default_rng(2)
    pv, yv, _ = _teacher(100, rng)
    with pytest.raises(DataError, match="0..4"):
        audit_teacher(pv, yv + 5, pv, n_classes=5)


def test_audit_cli_on_digits(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "output_dir: run\ndata: {name: digits}\nsplit: {n_labeled: 100, n_val: 300, n_test: 400}\n"
        "teacher: {kind: logistic}\n")
    res = subprocess.run([sys.executable, "-m", "mentor.cli", "audit", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert 0.5 < a["accuracy"] <= 1 and a["n_val"] == 300 and (tmp_path / "run" / "reliability.png").exists()
    assert "estimated error rate on the pool" in res.stdout


def test_confidence_auroc_reference_values():
    from mentor.evaluate import confidence_auroc
    labels = np.array([0, 0, 0, 0])
    right_sure = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])  # wrong ones less sure (0.6, 0.55)
    assert confidence_auroc(right_sure, labels) == 1.0
    wrong_sure = np.array([[0.6, 0.4], [0.55, 0.45], [0.1, 0.9], [0.2, 0.8]])
    assert confidence_auroc(wrong_sure, labels) == 0.0
    assert confidence_auroc(np.array([[0.9, 0.1]]), np.array([0])) is None  # nothing to separate
