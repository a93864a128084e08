"""Tests of the standard CRC method (napari_conformal.core.methods.threshold)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from napari_conformal.core.methods.base import available_methods, make_method
from napari_conformal.core.methods.threshold import CRCMethod, ThresholdFNRMethod, ThresholdPrepared
from napari_conformal.core.quantiles import lambda_hat_from_curves
from napari_conformal.core.scores.probabilities import foreground_probability
from napari_conformal.errors import (
    CalibrationError,
    InsufficientCalibrationError,
    ParameterError,
    StoreValidationError,
)
from napari_conformal.testing.synthetic import binary_blobs_dataset


def _binary_samples(fg: np.ndarray) -> np.ndarray:
    """(T, *S) foreground probabilities → (T, 2, *S) softmax samples."""
    fg = np.asarray(fg, dtype=np.float64)
    return np.stack([1.0 - fg, fg], axis=1)


def _one_sample(fg: np.ndarray) -> np.ndarray:
    return _binary_samples(np.asarray(fg, dtype=np.float64)[None])


# --------------------------------------------------------------------------- registry and prepare


def test_registered() -> None:
    assert "crc" in available_methods()
    m = make_method("crc")
    assert isinstance(m, CRCMethod) and isinstance(m, ThresholdFNRMethod)
    assert m.name == "crc" and not hasattr(m, "alpha")  # α is an argument of the steps, not state
    assert m.params() == {"fg_class": 1}
    assert make_method("crc", fg_class=2).params() == {"fg_class": 2}
    with pytest.raises(ParameterError, match=r"method 'crc' has no option 'alpha' \(its options: fg_class\)"):
        make_method("crc", alpha=0.1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, float("nan"), None, "0.1"])
def test_bad_alpha(alpha: float) -> None:
    m = CRCMethod()
    curves = [m.curve(m.prepare(None, _one_sample([[0.9, 0.2]])), np.array([[1, 0]]))] * 20
    with pytest.raises(ParameterError, match=r"^alpha must"):
        m.lambda_hat(curves, alpha=alpha)
    with pytest.raises(ParameterError, match=r"^alpha must"):
        m.guarantee(alpha)
    with pytest.raises(ParameterError, match=r"^alpha must"):
        m.check_levels(alpha)


def test_prepare_mean_over_samples() -> None:
    fg = np.array([[[0.2, 0.4], [0.6, 1.0]], [[0.4, 0.0], [0.6, 0.5]]])  # T=2, 2×2
    m = CRCMethod()
    p = m.prepare(np.zeros((2, 2), np.float32), _binary_samples(fg).astype(np.float32))
    want = np.array([[0.3, 0.2], [0.6, 0.75]])
    np.testing.assert_allclose(p.base, want, atol=1e-7)
    assert p.base.dtype == np.float64 and p.score is p.base and p.n_labels == 2
    assert not p.base.flags.writeable


def test_prepare_multiclass_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 6))
    samples = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for c in range(4):
        np.testing.assert_allclose(foreground_probability(samples, c), samples[:, c].mean(axis=0))
    with pytest.raises(ParameterError, match=r"fg_class=4 is not a class of this data \(labels 0\.\.3\)"):
        foreground_probability(samples, 4)
    with pytest.raises(ParameterError, match=r"fg_class=4 is not a class of this data"):
        make_method("crc", fg_class=4).check_data(n_labels=4, n_samples=3, ndim=2)
    make_method("crc", fg_class=3).check_data(n_labels=4, n_samples=3, ndim=2)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        (np.zeros((2, 2)), r"expected \(T, L, Y, X\) or \(T, L, Z, Y, X\)"),
        (np.zeros((1, 2, 3, 3), dtype=int), "expected floating-point probabilities"),
        (np.full((1, 2, 3, 3), np.nan), r"18 non-finite value\(s\) \(NaN\)"),
        (np.full((1, 2, 3, 3), 1.5), r"probability 1.5 > 1 at \(t, l, \*pixel\) = \(0, 0, 0, 0\)"),
        (np.full((1, 2, 3, 3), -0.2), r"negative probability -0.2 at"),
        (np.zeros((0, 2, 3, 3)), "needs T >= 1 samples"),
        (np.full((1, 2, 3, 3), 0.4), r"do not sum to 1 .* sum 0.8 at"),
    ],
)
def test_prepare_bad_samples(samples: np.ndarray, match: str) -> None:
    with pytest.raises(StoreValidationError, match=match):
        CRCMethod().prepare(None, samples)


def test_prepare_image_shape_mismatch() -> None:
    with pytest.raises(StoreValidationError, match=r"image shape \(4, 4\) does not match .* \(3, 3\)"):
        CRCMethod().prepare(np.zeros((4, 4)), _one_sample(np.zeros((3, 3))))


def test_prepare_float16_rounding_tolerated() -> None:
    """float16 samples are checked with float16's tolerance (1e-3), also after a cast to float32."""
    fg = np.full((2, 2), 0.999)
    fg[0, 0] = 0.9996
    s = _one_sample(fg).astype(np.float16)
    s[0, 1, 0, 0] = np.float16(1.0)  # 1 + float16(0.0004): off by 4e-4, over float32's 1e-4
    dev = np.abs(s.astype(np.float64).sum(axis=1) - 1)
    assert 1e-4 < dev.max() <= 1e-3
    p = CRCMethod().prepare(None, s)
    assert p.base.max() <= 1.0
    CRCMethod().prepare(None, s.astype(np.float32), stored_dtype=np.float16)
    with pytest.raises(StoreValidationError, match="do not sum to 1"):
        CRCMethod().prepare(None, s.astype(np.float32))


# --------------------------------------------------------------------------- curve


def test_curve_hand() -> None:
    m = CRCMethod()
    p = m.prepare(None, _one_sample([[0.9, 0.2], [0.5, 0.7]]))
    c = m.curve(p, np.array([[1, 0], [1, 1]]))
    np.testing.assert_allclose(np.sort(c), [0.1, 0.3, 0.5])
    assert c.dtype == np.float64 and not c.flags.writeable


def test_curve_empty_ground_truth() -> None:
    m = CRCMethod()
    p = m.prepare(None, _one_sample(np.full((3, 3), 0.7)))
    with pytest.raises(CalibrationError, match=r"no pixel of class 1 \(empty foreground\).*remove the image"):
        m.curve(p, np.zeros((3, 3), dtype=np.int32))


@pytest.mark.parametrize(
    ("label", "match"),
    [
        (np.zeros((2, 2), dtype=int), r"shape \(2, 2\), expected the image's shape \(3, 3\)"),
        (np.zeros((3, 3), dtype=float), "dtype float64, expected an integer label map"),
        (np.full((3, 3), 2), r"value 2 at pixel \(0, 0\) is outside 0\.\.1 \(L=2 labels\)"),
        (np.full((3, 3), -1), r"value -1 at pixel \(0, 0\) is outside 0\.\.1"),
    ],
)
def test_curve_bad_label(label: np.ndarray, match: str) -> None:
    m = CRCMethod()
    p = m.prepare(None, _one_sample(np.full((3, 3), 0.7)))
    with pytest.raises(StoreValidationError, match=match):
        m.curve(p, label)


def test_curve_accepts_bool_label() -> None:
    m = CRCMethod()
    p = m.prepare(None, _one_sample([[0.9, 0.2]]))
    np.testing.assert_allclose(m.curve(p, np.array([[True, False]])), [0.1])


# --------------------------------------------------------------------------- lambda_hat


def test_lambda_hat_hand() -> None:
    """n = 4, α = 0.4: λ̂ = inf{λ : Σ_i FNR_i(λ) ≤ (n+1)α − 1 = 1}.

    Foreground scores S (each image's ground truth = the listed pixels):
    image 0: 0.9, 0.6 | image 1: 0.8 | image 2: 0.7, 0.3 | image 3: 0.95.
    Nonconformity 1 − S: {0.1, 0.4}, {0.2}, {0.3, 0.7}, {0.05}.
    Σ FNR at λ = 0.3: ½ (0.4) + 0 + ½ (0.7) + 0 = 1 ≤ 1; just below 0.3 the 0.3 pixel is lost too: 1.5.
    """
    m = CRCMethod()
    fgs = [[0.9, 0.6], [0.8, 0.5], [0.7, 0.3], [0.95, 0.0]]
    labels = [np.array([[1, 1]]), np.array([[1, 0]]), np.array([[1, 1]]), np.array([[1, 0]])]
    curves = [m.curve(m.prepare(None, _one_sample([fg])), lab) for fg, lab in zip(fgs, labels, strict=True)]
    assert m.lambda_hat(curves, alpha=0.4) == pytest.approx(0.3, abs=1e-15)
    # α = 0.6: budget 2 → Σ FNR at λ = 0.2: ½ + 0 + 1 + 0 = 1.5; at 0.1: ½ + 1 + 1 = 2.5 → λ̂ = 0.2
    assert m.lambda_hat(curves, alpha=0.6) == pytest.approx(0.2, abs=1e-15)
    with pytest.raises(InsufficientCalibrationError, match=r"n = 4, .* 1/\(n\+1\) = 0\.2"):
        m.lambda_hat(curves, alpha=0.1)


def _prepared_blobs(n: int, shape: tuple[int, ...], seed: int, method: ThresholdFNRMethod):
    images, samples, labels = binary_blobs_dataset(n, shape, n_samples=3, seed=seed)
    prepared = [method.prepare(images[i], samples[i]) for i in range(n)]
    return prepared, labels


@pytest.mark.parametrize(("shape", "alpha"), [((24, 24), 0.1), ((24, 24), 0.2), ((10, 12, 12), 0.15)])
def test_lambda_hat_brute_force_grid(shape: tuple[int, ...], alpha: float) -> None:
    """λ̂ equals the grid rule on every candidate threshold, with FNR measured from predict() masks."""
    m = CRCMethod()
    prepared, labels = _prepared_blobs(12, shape, seed=len(shape) + int(alpha * 100), method=m)
    curves = [m.curve(p, y) for p, y in zip(prepared, labels, strict=True)]
    lam = m.lambda_hat(curves, alpha=alpha)
    cands = np.unique(np.r_[0.0, np.concatenate(curves)])
    losses = np.empty((len(prepared), cands.size))
    for j, c in enumerate(cands):
        for i, (p, y) in enumerate(zip(prepared, labels, strict=True)):
            truth = y == 1
            losses[i, j] = 1.0 - np.count_nonzero(m.predict(p, c) & truth) / np.count_nonzero(truth)
    assert lam == lambda_hat_from_curves(losses, cands, alpha)
    # minimality, in exact arithmetic at the candidate just below λ̂
    j = int(np.searchsorted(cands, lam))
    n = len(prepared)
    budget = (n + 1) * Fraction(str(alpha)) - 1

    def exact_sum(c: float) -> Fraction:
        return sum(
            Fraction(int(np.count_nonzero((y == 1) & ~m.predict(p, c))), int(np.count_nonzero(y == 1)))
            for p, y in zip(prepared, labels, strict=True)
        )

    assert exact_sum(lam) <= budget
    if j > 0:
        assert exact_sum(cands[j - 1]) > budget


def test_predict_exact_at_lambda_hat() -> None:
    """The pixel that defines λ̂ is inside its own image's set (bit-exact float64 comparison)."""
    m = CRCMethod()
    prepared, labels = _prepared_blobs(20, (20, 20), seed=11, method=m)
    curves = [m.curve(p, y) for p, y in zip(prepared, labels, strict=True)]
    lam = m.lambda_hat(curves, alpha=0.1)
    owners = [i for i, c in enumerate(curves) if np.any(c == lam)]
    assert owners, "λ̂ must be one of the calibration nonconformity values"
    for i in owners:
        s = m.predict(prepared[i], lam)
        exact = (1.0 - prepared[i].score) == lam
        assert exact.any() and s[exact].all()
        # and strictly larger nonconformity is outside
        assert not s[(1.0 - prepared[i].score) > lam].any()


def test_predict_hand_and_monotone() -> None:
    m = CRCMethod()
    p = m.prepare(None, _one_sample([[0.875, 0.25], [0.5, 0.75]]))  # dyadic: 1 − S is exact
    np.testing.assert_array_equal(m.predict(p, 0.25), [[True, False], [False, True]])
    np.testing.assert_array_equal(m.predict(p, 0.5), [[True, False], [True, True]])
    np.testing.assert_array_equal(m.predict(p, 0.0), np.zeros((2, 2), bool))
    np.testing.assert_array_equal(m.predict(p, 1.0), np.ones((2, 2), bool))
    sets = [m.predict(p, lam) for lam in np.linspace(0, 1, 21)]
    for a, b in itertools.pairwise(sets):
        assert np.all(a <= b)


def test_lambda_hat_cache() -> None:
    m = CRCMethod()
    prepared, labels = _prepared_blobs(10, (16, 16), seed=5, method=m)
    curves = [m.curve(p, y) for p, y in zip(prepared, labels, strict=True)]
    r1 = m.risk_curve(curves)
    assert m.risk_curve(list(curves)) is r1  # same elements, new list
    assert m.risk_curve(tuple(curves)) is r1
    lam_a = m.lambda_hat(curves, alpha=0.3)
    assert m.risk_curve(curves) is r1
    assert lam_a == r1.lambda_hat(0.3)
    other = [c.copy() for c in curves]
    r2 = m.risk_curve(other)
    assert r2 is not r1
    np.testing.assert_array_equal(r2.risk, r1.risk)
    assert m.risk_curve(curves[:-1]).n == 9


def test_lambda_hat_nonincreasing_in_alpha() -> None:
    m = CRCMethod()
    prepared, labels = _prepared_blobs(30, (16, 16), seed=6, method=m)
    curves = [m.curve(p, y) for p, y in zip(prepared, labels, strict=True)]
    lams = [m.lambda_hat(curves, alpha=a) for a in (0.05, 0.1, 0.2, 0.3, 0.5)]
    assert all(a >= b for a, b in itertools.pairwise(lams))


# --------------------------------------------------------------------------- evaluate and subclassing


def test_evaluate_hand() -> None:
    m = CRCMethod()
    fg = np.array([[0.9, 0.6, 0.1, 0.0], [0.8, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    p = m.prepare(None, _one_sample(fg))
    label = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    out = m.evaluate(p, label, 0.55)  # set {S ≥ 0.45}: (0,0), (0,1), (1,0)
    assert set(out) >= {"coverage", "stretch", "dice", "assd", "hd95"}
    assert out["coverage"] == pytest.approx(3 / 5)
    assert out["stretch"] == pytest.approx(3 / 3)  # Ŷ = S ≥ 0.5: the same three pixels
    assert out["dice"] == pytest.approx(2 * 3 / (3 + 5))
    assert math.isfinite(out["assd"]) and math.isfinite(out["hd95"])
    out2 = m.evaluate(p, label, 0.65)  # adds (1,1) with S = 0.4
    assert out2["coverage"] == pytest.approx(4 / 5) and out2["stretch"] == pytest.approx(4 / 3)


def test_evaluate_spacing_passed_through() -> None:
    m = CRCMethod()
    prepared, labels = _prepared_blobs(1, (20, 20), seed=7, method=m)
    a = m.evaluate(prepared[0], labels[0], 0.5)
    b = m.evaluate(prepared[0], labels[0], 0.5, spacing=(2.0, 2.0))
    assert b["hd95"] == pytest.approx(2 * a["hd95"]) and b["coverage"] == a["coverage"]


class _SquaredScore(ThresholdFNRMethod):
    """A toy subclass: thresholds S² instead of S (what RW-CP does with its diffused map)."""

    name = "squared"  # unregistered: a name of its own for messages and params

    def score_map(self, image: np.ndarray | None, base: np.ndarray) -> np.ndarray:
        return base**2


def test_subclass_only_overrides_score_map() -> None:
    m = _SquaredScore()
    fg = np.array([[0.9, 0.6], [0.5, 0.2]])
    p = m.prepare(None, _one_sample(fg))
    assert isinstance(p, ThresholdPrepared)
    np.testing.assert_allclose(p.score, fg**2)
    np.testing.assert_allclose(p.base, fg)
    label = np.array([[1, 1], [0, 1]])
    np.testing.assert_allclose(np.sort(m.curve(p, label)), np.sort(1 - np.array([0.81, 0.36, 0.04])))
    np.testing.assert_array_equal(m.predict(p, 0.5), [[True, False], [False, False]])  # S² ≥ 0.5
    np.testing.assert_array_equal(m.reference_prediction(p), [[True, True], [True, False]])  # S ≥ 0.5


class _BadShape(ThresholdFNRMethod):
    name = "bad-shape"

    def score_map(self, image: np.ndarray | None, base: np.ndarray) -> np.ndarray:
        return base[:1]


def test_subclass_score_map_shape_checked() -> None:
    with pytest.raises(StoreValidationError, match=r"score map has shape \(1, 3\), expected \(3, 3\)"):
        _BadShape().prepare(None, _one_sample(np.full((3, 3), 0.5)))


def test_multiclass_fg_class_end_to_end() -> None:
    """fg_class=2 on a 3-class map: the set and metrics refer to class 2 only."""
    m = make_method("crc", fg_class=2)
    probs = np.zeros((1, 3, 2, 2))
    probs[0, 2] = [[0.9, 0.1], [0.6, 0.3]]
    probs[0, 1] = [[0.05, 0.8], [0.2, 0.3]]
    probs[0, 0] = 1 - probs[0, 1] - probs[0, 2]
    p = m.prepare(None, probs)
    label = np.array([[2, 1], [2, 0]])
    np.testing.assert_allclose(np.sort(m.curve(p, label)), [0.1, 0.4])
    out = m.evaluate(p, label, 0.45)
    assert out["coverage"] == 1.0
