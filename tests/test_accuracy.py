"""Tests of napari_conformal.core.metrics.accuracy (CONSIGN's label-wise accuracy), numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conformal.core.metrics.accuracy import is_covered, labelwise_accuracy, labelwise_accuracy_torch
from napari_conformal.errors import ConformalError

# truth labels: 0 at (0,0),(0,1); 1 at (0,2),(1,0),(1,1); 2 at (1,2)
TRUTH = np.array([[0, 0, 1], [1, 1, 2]])
# pred: label 0 recall 1/2 ((0,0) hit, (0,1) miss); label 1 recall 2/3; label 2 recall 0
PRED = np.array([[0, 1, 1], [1, 0, 0]])
HAND = (1 / 2 + 2 / 3 + 0) / 3  # = 7/18


def _brute(pred: np.ndarray, truth: np.ndarray) -> float:
    """Python loop over labels present in the truth (the formula verbatim)."""
    terms = []
    for label in np.unique(truth):
        in_truth = truth == label
        terms.append(np.sum((pred == label) & in_truth) / np.sum(in_truth))
    return float(np.mean(terms))


def test_hand_case():
    assert labelwise_accuracy(PRED, TRUTH) == pytest.approx(7 / 18)
    assert labelwise_accuracy(TRUTH, TRUTH) == 1.0


def test_absent_labels_are_not_averaged():
    # n_labels = 5 but only 0, 1, 2 occur in the truth: still divided by 3, not 5
    assert labelwise_accuracy(PRED, TRUTH, n_labels=5) == pytest.approx(HAND)
    # a prediction using an absent label (4) everywhere scores 0, not NaN
    assert labelwise_accuracy(np.full_like(TRUTH, 4), TRUTH, n_labels=5) == 0.0


def test_batch_matches_single_and_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(6, 7, 5))
    truth[truth == 2] = 1  # label 2 absent
    preds = rng.integers(0, 4, size=(9, 6, 7, 5))
    preds[3] = truth
    acc = labelwise_accuracy(preds, truth, n_labels=4)
    assert acc.shape == (9,)
    np.testing.assert_allclose(acc, [_brute(p, truth) for p in preds])
    assert acc[3] == 1.0
    assert labelwise_accuracy(preds[1], truth) == pytest.approx(acc[1])


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, size=(8, 9))
    preds = rng.integers(0, 3, size=(5, 8, 9))
    expected = labelwise_accuracy(preds, truth)
    got = labelwise_accuracy_torch(torch.from_numpy(preds), torch.from_numpy(truth))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-15)
    single = labelwise_accuracy_torch(torch.from_numpy(PRED), torch.from_numpy(TRUTH), n_labels=3)
    assert single.ndim == 0 and float(single) == pytest.approx(HAND)


def test_strict_membership():
    assert is_covered(0.8, 0.8) is False
    assert is_covered(0.8000001, 0.8) is True
    np.testing.assert_array_equal(is_covered(np.array([0.5, 0.9]), 0.7), [False, True])
    with pytest.raises(ConformalError, match="nu"):
        is_covered(0.5, 1.0)


def test_validation():
    with pytest.raises(ConformalError, match="pred must have shape"):
        labelwise_accuracy(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ConformalError, match="truth labels must lie"):
        labelwise_accuracy(PRED, TRUTH, n_labels=2)
    with pytest.raises(ConformalError, match="truth labels must lie"):
        labelwise_accuracy(PRED, TRUTH - 1)
    with pytest.raises(ConformalError, match="integer label map"):
        labelwise_accuracy(PRED, TRUTH.astype(float))
    with pytest.raises(ConformalError, match="integer label maps"):
        labelwise_accuracy(PRED.astype(float), TRUTH)
    torch = pytest.importorskip("torch")
    with pytest.raises(ConformalError, match="pred must have shape"):
        labelwise_accuracy_torch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ConformalError, match="integer label map"):
        labelwise_accuracy_torch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
