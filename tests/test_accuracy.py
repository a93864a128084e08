"""Tests of napari_conformal.core.metrics.accuracy (CONSIGN's label-wise accuracy), numpy and torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_conformal.core.arrays_json import encode_array
from napari_conformal.core.metrics.accuracy import (
    AccuracyCurve,
    is_covered,
    labelwise_accuracy,
    labelwise_accuracy_torch,
)
from napari_conformal.errors import CalibrationFileError, ConformalError

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


# --------------------------------------------------------------------------- AccuracyCurve


def _curve(lams, accs) -> AccuracyCurve:
    return AccuracyCurve(np.asarray(lams, dtype=np.float64), np.asarray(accs, dtype=np.float64))


def test_accuracy_curve_is_a_right_continuous_step_function():
    c = _curve([0.0, 0.5, 2.0], [0.3, 0.6, 0.9])
    assert c.accuracy_at(-0.1) == -math.inf  # before the first breakpoint
    assert c.accuracy_at(0.0) == 0.3 and c.accuracy_at(0.49) == 0.3
    assert c.accuracy_at(0.5) == 0.6 and c.accuracy_at(1.99) == 0.6
    assert c.accuracy_at(2.0) == 0.9 and c.accuracy_at(1e9) == 0.9
    np.testing.assert_array_equal(c.accuracy_at(np.array([-1.0, 0.25, 0.5, 3.0])), [-np.inf, 0.3, 0.6, 0.9])
    # λ_i(ν): the first breakpoint with accuracy strictly above ν
    assert c.lambda_for(0.29) == 0.0
    assert c.lambda_for(0.3) == 0.5  # 0.3 is not > 0.3
    assert c.lambda_for(0.6) == 2.0
    assert c.lambda_for(0.9) == math.inf and c.lambda_for(0.95) == math.inf
    assert c.best_accuracy() == 0.9
    for nu in np.linspace(0, 0.99, 34):  # covered at λ iff λ ≥ λ_i(ν)
        lam = c.lambda_for(nu)
        if math.isfinite(lam):
            assert c.accuracy_at(lam) > nu and not c.accuracy_at(np.nextafter(lam, -1)) > nu
    empty = _curve([], [])
    assert empty.best_accuracy() == -math.inf and empty.lambda_for(0.0) == math.inf
    assert empty.accuracy_at(5.0) == -math.inf


def test_accuracy_curve_encode_decode_is_exact():
    rng = np.random.default_rng(3)
    lams = np.cumsum(rng.random(40)) * np.pi
    accs = np.sort(rng.random(40))
    accs[-1] = 1.0
    doc = json.loads(json.dumps(_curve(lams, accs).encode()))
    lam, acc = AccuracyCurve.decode_arrays(doc, complete=True)
    assert lam.tobytes() == lams.tobytes() and acc.tobytes() == accs.tobytes()
    assert not lam.flags.writeable and not acc.flags.writeable
    # extra keys are allowed only when named; an incomplete curve only with complete=False
    doc2 = {**doc, "searched_to": 3.0}
    AccuracyCurve.decode_arrays(doc2, complete=True, extra=("searched_to",))
    with pytest.raises(CalibrationFileError, match=r"the keys \['accuracies', 'lambdas'\]"):
        AccuracyCurve.decode_arrays(doc2, complete=True)
    short = json.loads(json.dumps(_curve(lams[:-1], accs[:-1] / 2).encode()))
    AccuracyCurve.decode_arrays(short, complete=False)
    with pytest.raises(CalibrationFileError, match="up to 1"):
        AccuracyCurve.decode_arrays(short, complete=True)
    AccuracyCurve.decode_arrays(json.loads(json.dumps(_curve([], []).encode())), complete=False)


@pytest.mark.parametrize(
    ("lams", "accs"),
    [
        ([0.0, 1.0, 1.0], [0.2, 0.5, 1.0]),  # λ not strictly increasing
        ([0.0, 2.0, 1.0], [0.2, 0.5, 1.0]),
        ([-0.5, 1.0, 2.0], [0.2, 0.5, 1.0]),  # λ < 0
        ([0.0, 1.0, 2.0], [0.5, 0.2, 1.0]),  # accuracies decreasing
        ([0.0, 1.0, 2.0], [-0.1, 0.5, 1.0]),  # accuracy < 0
        ([0.0, 1.0, 2.0], [0.2, 0.5, 1.5]),  # accuracy > 1
        ([0.0, 1.0], [0.2, 0.5, 1.0]),  # lengths differ
    ],
)
def test_accuracy_curve_decode_refuses_what_is_not_a_step_curve(lams, accs):
    doc = {
        "lambdas": encode_array(np.asarray(lams, np.float64)),
        "accuracies": encode_array(np.asarray(accs, np.float64)),
    }
    with pytest.raises(CalibrationFileError, match="an accuracy curve needs"):
        AccuracyCurve.decode_arrays(json.loads(json.dumps(doc)), complete=False)


def test_accuracy_curve_decode_refuses_other_dtypes_and_shapes():
    good = np.array([0.0, 1.0])
    for lam, acc in (
        (good.astype(np.float32), good),
        (good, good.astype(np.int64)),
        (good[None], good[None]),
    ):
        doc = {"lambdas": encode_array(lam), "accuracies": encode_array(acc)}
        with pytest.raises(CalibrationFileError, match="an accuracy curve needs"):
            AccuracyCurve.decode_arrays(doc, complete=False)
    with pytest.raises(CalibrationFileError, match="an accuracy curve must have the keys"):
        AccuracyCurve.decode_arrays([1, 2], complete=False)
