"""Tests of Consema (napari_conformal.core.methods.consema)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.consema import (
    ConsemaCurve,
    ConsemaMethod,
    dilation_distance,
    make_footprint,
)
from napari_conformal.errors import (
    CalibrationError,
    ConformalError,
    InsufficientCalibrationError,
    ParameterError,
)
from napari_conformal.testing.synthetic import binary_blobs_dataset


def _one_sample(fg: np.ndarray) -> np.ndarray:
    fg = np.asarray(fg, dtype=np.float64)[None]
    return np.stack([1.0 - fg, fg], axis=1)


def _iterated_dilation(mask: np.ndarray, structure: np.ndarray, d: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(d):
        out = ndimage.binary_dilation(out, structure=structure)
    return out


# --------------------------------------------------------------------------- structuring elements


def test_make_footprint_named() -> None:
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(make_footprint("cross", 2), cross)
    np.testing.assert_array_equal(make_footprint("square", 2), np.ones((3, 3), bool))
    c3 = make_footprint("cross", 3)
    assert c3.shape == (3, 3, 3) and c3.sum() == 7  # 6-connected + centre
    assert make_footprint("square", 3).sum() == 27


@pytest.mark.parametrize(
    ("fp", "match"),
    [
        ("disk", "footprint must be"),
        (np.ones((2, 3), bool), "odd size"),
        (np.ones((3, 3, 3), bool), "2 axes"),
        (np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool), "centre"),
        (np.ones((3, 3), float), "boolean"),
    ],
)
def test_make_footprint_errors(fp: object, match: str) -> None:
    with pytest.raises(ConformalError, match=match):
        make_footprint(fp, 2)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- dilation distance


@pytest.mark.parametrize("shape", [(17, 23), (9, 11, 8)])
@pytest.mark.parametrize("name", ["cross", "square"])
def test_dilation_distance_equals_iterated_dilation(shape: tuple[int, ...], name: str) -> None:
    """{D ≤ d} is exactly d repeated scipy dilations, for every d up to full coverage."""
    rng = np.random.default_rng(len(shape))
    structure = make_footprint(name, len(shape))
    for _ in range(3):
        mask = rng.random(shape) < 0.02
        mask.flat[rng.integers(mask.size)] = True
        dist = dilation_distance(mask, name)
        custom = dilation_distance(mask, structure.copy())  # the generic (iterative) path
        np.testing.assert_array_equal(custom, dist)
        current = mask.copy()
        for d in range(int(dist.max()) + 1):
            np.testing.assert_array_equal(dist <= d, current, err_msg=f"d={d}")
            current = ndimage.binary_dilation(current, structure=structure)


def test_dilation_distance_custom_asymmetric_footprint() -> None:
    fp = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 0]], bool)  # grows right and down only
    mask = np.zeros((6, 6), bool)
    mask[2, 2] = True
    dist = dilation_distance(mask, fp)
    for d in range(4):
        np.testing.assert_array_equal(dist <= d, _iterated_dilation(mask, fp, d))


def test_dilation_distance_empty_and_cap() -> None:
    assert np.all(dilation_distance(np.zeros((5, 5), bool)) == 2 * 5 + 1)
    mask = np.zeros((1, 30), bool)
    mask[0, 0] = True
    dist = dilation_distance(mask, "cross", cap=10)
    np.testing.assert_array_equal(dist[0, :12], [*range(11), 11])
    assert np.all(dist[0, 11:] == 11)


# --------------------------------------------------------------------------- method


def test_registered_and_params() -> None:
    m = make_method("consema")
    assert isinstance(m, ConsemaMethod) and m.name == "consema"
    assert m.tau is None  # unset: τ = 1 − α at every α
    assert m.params() == {"tau": None, "fg_class": 1, "footprint": "cross", "max_dilations": None}
    m2 = make_method("consema", tau=0.99, footprint="square", max_dilations=7)
    assert m2.params() == {"tau": 0.99, "fg_class": 1, "footprint": "square", "max_dilations": 7}
    assert make_method("consema", **m2.params()).params() == m2.params()


def test_tau_follows_alpha_unless_fixed() -> None:
    """Unset τ is 1 − α (an exact decimal) at every α; a fixed τ stays put when α moves."""
    free, fixed = ConsemaMethod(), ConsemaMethod(tau=0.95)
    for alpha, tau in ((0.1, Fraction(9, 10)), (0.3, Fraction(7, 10)), (0.05, Fraction(19, 20))):
        assert free.tau_at(alpha) == tau
        assert fixed.tau_at(alpha) == Fraction(95, 100)
    assert "at least 70 % of the structure" in free.guarantee(0.3)
    assert "With probability ≥ 70 %" in free.guarantee(0.3)
    assert "at least 95 % of the structure" in fixed.guarantee(0.3)
    with pytest.raises(ParameterError, match="alpha"):
        free.tau_at(1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"alpha": 0.1},
            r"method 'consema' has no option 'alpha' \(its options: tau, fg_class, footprint, max_dilations\)",
        ),
        ({"tau": 0.0}, r"consema option tau must be > 0 and <= 1, got 0"),
        ({"tau": 1.2}, r"consema option tau must be > 0 and <= 1, got 1.2"),
        ({"fg_class": -1}, r"consema option fg_class must be >= 0, got -1"),
        ({"footprint": "star"}, r"consema option footprint must be one of cross, square, got 'star'"),
        ({"max_dilations": 0}, r"consema option max_dilations must be >= 1, got 0"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        ConsemaMethod(**kwargs)


def _centre_case() -> tuple[np.ndarray, np.ndarray]:
    """5×5, Ŷ = centre pixel; Y = centre, two face neighbours, and the corner (0, 0).

    City-block distances of Y pixels to Ŷ: 0, 1, 1, 4.
    """
    fg = np.zeros((5, 5))
    fg[2, 2] = 0.9
    label = np.zeros((5, 5), dtype=np.int32)
    label[2, 2] = label[1, 2] = label[2, 1] = label[0, 0] = 1
    return fg, label


@pytest.mark.parametrize(("tau", "score"), [(0.25, 0), (0.5, 1), (0.75, 1), (0.76, 4), (1.0, 4)])
def test_curve_hand(tau: float, score: int) -> None:
    fg, label = _centre_case()
    m = ConsemaMethod(tau=tau)
    p = m.prepare(None, _one_sample(fg))
    curve = m.curve(p, label)
    assert isinstance(curve, ConsemaCurve)
    np.testing.assert_array_equal(curve.distances, [0, 1, 1, 4])
    assert curve.cap == 10 and not curve.distances.flags.writeable
    # need ⌈τ·4⌉ covered pixels: τ = 0.75 → 3 (dist 1), τ = 0.76 → 4 (dist 4)
    assert curve.score(m.tau_at(0.1)) == score
    if tau < 1.0:  # the same score with τ unset at α = 1 − τ
        free = ConsemaMethod()
        assert free.curve(free.prepare(None, _one_sample(fg)), label).score(free.tau_at(1 - tau)) == score


def test_curve_hand_square_footprint() -> None:
    fg, label = _centre_case()
    m = ConsemaMethod(tau=1.0, footprint="square")
    # chessboard distance of (0, 0) to (2, 2) is 2
    curve = m.curve(m.prepare(None, _one_sample(fg)), label)
    np.testing.assert_array_equal(curve.distances, [0, 1, 1, 2])
    assert curve.score(m.tau_at(0.1)) == 2


def test_tau_ratio_is_exact() -> None:
    """τ = 0.9 with |Y| = 10 needs exactly 9 covered pixels (no float slack either way)."""
    fg = np.zeros((1, 12))
    fg[0, 0] = 0.9
    label = np.zeros((1, 12), dtype=np.int32)
    label[0, :10] = 1  # distances 0..9
    m = ConsemaMethod(tau=0.9)
    assert m.curve(m.prepare(None, _one_sample(fg)), label).score(m.tau_at(0.5)) == 8  # 9th smallest distance
    m2 = ConsemaMethod()  # τ = 1 − 0.3 = 0.7 exactly → 7 pixels → distance 6
    curve = m2.curve(m2.prepare(None, _one_sample(fg)), label)
    assert curve.score(m2.tau_at(0.3)) == 6
    assert curve.score(m2.tau_at(0.1)) == 8  # the same curve answers τ = 0.9 at α = 0.1
    # realised: covered (ratio ≥ τ(α)) iff the score at τ(α) is at most q̂
    assert m2.realised(curve, 6.0, alpha=0.3) == 1.0 and m2.realised(curve, 5.0, alpha=0.3) == 0.0
    assert m2.realised(curve, 7.0, alpha=0.1) == 0.0 and m2.realised(curve, 8.0, alpha=0.1) == 1.0


def test_curve_capped_whole_image() -> None:
    fg = np.zeros((1, 30))
    fg[0, 0] = 0.9
    label = np.zeros((1, 30), dtype=np.int32)
    label[0, 29] = 1
    m = ConsemaMethod(tau=1.0, max_dilations=10)
    p = m.prepare(None, _one_sample(fg))
    assert m.curve(p, label).score(m.tau_at(0.1)) == 10
    assert m.predict(p, 10.0).all()
    assert m.predict(p, 9.0).sum() == 10


def test_curve_empty_errors() -> None:
    m = ConsemaMethod()
    fg, label = _centre_case()
    with pytest.raises(CalibrationError, match="empty foreground"):
        m.curve(m.prepare(None, _one_sample(fg)), np.zeros_like(label))
    # an empty prediction is no error: only the whole image (q̂ = d_max) covers it
    empty = m.prepare(None, _one_sample(np.zeros((5, 5))))
    curve = m.curve(empty, label)
    assert curve.score(m.tau_at(0.1)) == empty.cap == 10
    assert m.realised(curve, float(empty.cap), alpha=0.1) == 1.0
    assert m.realised(curve, float(empty.cap - 1), alpha=0.1) == 0.0


def _curve(distances: list[int], cap: int = 10) -> ConsemaCurve:
    d = np.sort(np.asarray(distances, dtype=np.int64))
    d.flags.writeable = False
    return ConsemaCurve(d, cap)


def test_lambda_hat_order_statistic() -> None:
    m = ConsemaMethod()
    scores = [int(x) for x in np.random.default_rng(0).integers(0, 6, size=19)]
    curves = [_curve([s]) for s in scores]  # one pixel: the score at every τ
    # ⌈20·0.9⌉ = 18th smallest (1-indexed)
    assert m.lambda_hat(curves, alpha=0.1) == sorted(scores)[17]
    assert m.lambda_hat(curves, alpha=0.2) == sorted(scores)[math.ceil(20 * 0.8) - 1]
    with pytest.raises(InsufficientCalibrationError, match=r"n = 8, .*1/\(n\+1\) = 0\.1112"):
        m.lambda_hat(curves[:8], alpha=0.1)


def test_lambda_hat_moves_tau_with_alpha() -> None:
    """τ unset: λ̂(α) is the ⌈(n+1)(1−α)⌉-th smallest s_i(1 − α); τ fixed: s_i(τ) at every α."""
    rng = np.random.default_rng(1)
    curves = [_curve(rng.integers(0, 12, size=int(rng.integers(3, 40))).tolist(), cap=11) for _ in range(29)]
    free, fixed = ConsemaMethod(), ConsemaMethod(tau=0.9)

    def brute(alpha: float, tau: Fraction) -> float:
        s = sorted(
            min(int(c.distances[max(math.ceil(tau * c.distances.size), 1) - 1]), c.cap) for c in curves
        )
        return float(s[math.ceil(30 * (1 - Fraction(str(alpha)))) - 1])

    seen = set()
    for alpha in (0.05, 0.1, 0.2, 0.3, 0.5):
        assert free.lambda_hat(curves, alpha=alpha) == brute(alpha, 1 - Fraction(str(alpha)))
        assert fixed.lambda_hat(curves, alpha=alpha) == brute(alpha, Fraction(9, 10))
        seen.add(free.lambda_hat(curves, alpha=alpha) - brute(alpha, Fraction(9, 10)))
    assert seen != {0.0}  # moving τ with α matters on these curves
    assert free.lambda_hat(curves, alpha=0.1) == fixed.lambda_hat(curves, alpha=0.1)  # τ = 0.9 at α = 0.1


def test_predict_equals_iterated_dilation() -> None:
    m = ConsemaMethod()
    images, samples, _ = binary_blobs_dataset(2, (24, 20), n_samples=2, seed=3)
    cross = make_footprint("cross", 2)
    for i in range(2):
        p = m.prepare(images[i], samples[i])
        yhat = samples[i, :, 1].astype(np.float64).mean(axis=0) >= 0.5
        np.testing.assert_array_equal(p.prediction, yhat)
        for q in (0, 1, 3, 7):
            np.testing.assert_array_equal(m.predict(p, float(q)), _iterated_dilation(yhat, cross, q))
        assert m.predict(p, float(p.cap)).all()
    with pytest.raises(ParameterError, match=r"whole number of dilations, got 1\.5"):
        m.predict(p, 1.5)
    with pytest.raises(ParameterError, match=r"whole number of dilations, got -1\.0"):
        m.predict(p, -1.0)
    with pytest.raises(ParameterError, match="whole number"):
        m.check_lambda(2.5)
    assert m.check_lambda(3.0) == 3.0


def test_predict_empty_prediction() -> None:
    m = ConsemaMethod()
    p = m.prepare(None, _one_sample(np.zeros((6, 6))))
    assert not m.predict(p, 3.0).any()
    assert m.predict(p, float(p.cap)).all()


def test_evaluate_covered_matches_score() -> None:
    """covered (ratio ≥ τ) holds exactly when the image's score s ≤ q̂: the event the guarantee is about."""
    m = ConsemaMethod()
    images, samples, labels = binary_blobs_dataset(15, (20, 20), n_samples=2, seed=4, noise=2.0)
    prepared = [m.prepare(images[i], samples[i]) for i in range(15)]
    keep = [i for i in range(15) if prepared[i].prediction.any()]
    curves = {i: m.curve(prepared[i], labels[i]) for i in keep}
    scores = {i: c.score(m.tau_at(0.2)) for i, c in curves.items()}
    for q in [*sorted(set(scores.values())), max(scores.values()) + 1]:
        for i in keep:
            out = m.evaluate(prepared[i], labels[i], float(q), alpha=0.2)
            assert out["covered"] == float(scores[i] <= q) == m.realised(curves[i], float(q), alpha=0.2)
            assert (out["coverage"] >= 0.8) == (scores[i] <= q)
    out = m.evaluate(prepared[keep[0]], labels[keep[0]], 1.0, alpha=0.2)
    assert set(out) >= {"coverage", "stretch", "dice", "assd", "hd95", "covered"}


def test_evaluate_hand() -> None:
    fg, label = _centre_case()
    m = ConsemaMethod(tau=0.75)
    p = m.prepare(None, _one_sample(fg))
    out = m.evaluate(p, label, 1.0, alpha=0.1)  # set = centre + 4 neighbours; covers 3 of 4
    assert out["coverage"] == pytest.approx(0.75)
    assert out["stretch"] == pytest.approx(5.0)
    assert out["dice"] == pytest.approx(2 * 3 / (5 + 4))
    assert out["covered"] == 1.0
    assert m.evaluate(p, label, 0.0, alpha=0.1)["covered"] == 0.0
    assert math.isnan(m.evaluate(p, np.zeros_like(label), 1.0, alpha=0.1)["covered"])
    # τ unset: at α = 0.1 the set must cover ⌈0.9·4⌉ = 4 pixels, at α = 0.25 only 3
    free = ConsemaMethod()
    assert free.evaluate(p, label, 1.0, alpha=0.1)["covered"] == 0.0
    assert free.evaluate(p, label, 1.0, alpha=0.25)["covered"] == 1.0


def test_3d_end_to_end() -> None:
    m = ConsemaMethod()
    images, samples, labels = binary_blobs_dataset(
        12, (12, 14, 14), n_samples=2, seed=8, noise=0.5, radius_range=(0.2, 0.3)
    )
    prepared = [m.prepare(images[i], samples[i]) for i in range(12)]
    assert all(p.prediction.any() for p in prepared)
    curves = [m.curve(p, y) for p, y in zip(prepared[:8], labels[:8], strict=True)]
    scores = [c.score(m.tau_at(0.2)) for c in curves]
    q = m.lambda_hat(curves, alpha=0.2)
    assert q == sorted(scores)[math.ceil(9 * 0.8) - 1]
    for p in prepared[8:]:
        np.testing.assert_array_equal(
            m.predict(p, q), _iterated_dilation(p.prediction, make_footprint("cross", 3), int(q))
        )
