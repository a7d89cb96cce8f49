import numpy as np
import pytest

from mentor.checks import dense_to_topk, logits_to_probabilities, topk_to_dense, validate_probabilities
from mentor.errors import TeacherOutputError


def test_valid_probabilities_pass_and_are_float32():
    p = np.array([[0.2, 0.8], [0.5, 0.5]], dtype=np.float64)
    out = validate_probabilities(p, 2)
    assert out.dtype == np.float32 and np.allclose(out, p)


@pytest.mark.parametrize("bad, match", [
    (np.array([0.2, 0.8]), "2-d array"),
    (np.array([[np.nan, 1.0]]), "NaN or inf"),
    (np.array([[np.inf, 0.0]]), "NaN or inf"),
    (np.array([[0.3, 0.3]]), "do not sum to 1"),
    (np.array([[1.5, -0.5]]), "negative"),
    (np.array([[0.2, 0.3, 0.5]]), "labels have 2"),
])
def test_bad_probabilities_name_the_problem(bad, match):
    with pytest.raises(TeacherOutputError, match=match):
        validate_probabilities(bad, 2)


def test_logits_go_through_softmax():
    p = logits_to_probabilities(np.array([[0.0, np.log(3.0)]]), 2)
    assert np.allclose(p, [[0.25, 0.75]])


def test_topk_roundtrip_and_mass_completion():
    p = np.array([[0.6, 0.3, 0.05, 0.05], [0.1, 0.1, 0.1, 0.7]], dtype=np.float32)
    idx, val = dense_to_topk(p, 2)
    assert idx[0].tolist() == [0, 1] and idx[1, 0] == 3  # descending order; ties among the rest
    dense = topk_to_dense(idx, val, 4)
    assert np.allclose(dense.sum(1), 1.0, atol=1e-6)
    assert np.allclose(dense[0], [0.6, 0.3, 0.05, 0.05], atol=1e-6)  # remaining 0.1 spread over 2 classes
    assert dense[1].argmax() == 3


def test_topk_errors():
    with pytest.raises(TeacherOutputError, match="larger than the number of classes"):
        topk_to_dense(np.zeros((1, 5), int), np.full((1, 5), 0.1), 3)
    with pytest.raises(TeacherOutputError, match="must lie in"):
        topk_to_dense(np.array([[7]]), np.array([[0.5]]), 3)
    with pytest.raises(TeacherOutputError, match="sum to"):
        topk_to_dense(np.array([[0, 1]]), np.array([[0.8, 0.8]]), 3)
