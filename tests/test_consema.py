"""Tests of Consema (napari_conformal.core.methods.consema)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.consema import ConsemaMethod, dilation_distance, make_footprint
from napari_conformal.errors import CalibrationError, ConformalError, InsufficientCalibrationError
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
    m = make_method("consema", alpha=0.1)
    assert isinstance(m, ConsemaMethod) and m.name == "consema"
    assert m.tau == 0.9
    assert m.params() == {"tau": 0.9, "fg_class": 1, "footprint": "cross", "max_dilations": None}
    m2 = make_method("consema", alpha=0.2, tau=0.99, footprint="square", max_dilations=7)
    assert m2.params() == {"tau": 0.99, "fg_class": 1, "footprint": "square", "max_dilations": 7}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.1, "tau": 0.0}, "tau"),
        ({"alpha": 0.1, "tau": 1.2}, "tau"),
        ({"alpha": 0.1, "fg_class": -1}, "fg_class"),
        ({"alpha": 0.1, "footprint": "star"}, "footprint"),
        ({"alpha": 0.1, "max_dilations": 0}, "max_dilations"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConformalError, match=match):
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
    m = ConsemaMethod(0.1, tau=tau)
    p = m.prepare(None, _one_sample(fg))
    # need ⌈τ·4⌉ covered pixels: τ = 0.75 → 3 (dist 1), τ = 0.76 → 4 (dist 4)
    assert m.curve(p, label) == score


def test_curve_hand_square_footprint() -> None:
    fg, label = _centre_case()
    m = ConsemaMethod(0.1, tau=1.0, footprint="square")
    # chessboard distance of (0, 0) to (2, 2) is 2
    assert m.curve(m.prepare(None, _one_sample(fg)), label) == 2


def test_tau_ratio_is_exact() -> None:
    """τ = 0.9 with |Y| = 10 needs exactly 9 covered pixels (no float slack either way)."""
    fg = np.zeros((1, 12))
    fg[0, 0] = 0.9
    label = np.zeros((1, 12), dtype=np.int32)
    label[0, :10] = 1  # distances 0..9
    m = ConsemaMethod(0.1, tau=0.9)
    assert m.curve(m.prepare(None, _one_sample(fg)), label) == 8  # 9th smallest distance
    m2 = ConsemaMethod(0.3)  # τ = 1 − 0.3 = 0.7 exactly → 7 pixels → distance 6
    assert m2.curve(m2.prepare(None, _one_sample(fg)), label) == 6


def test_curve_capped_whole_image() -> None:
    fg = np.zeros((1, 30))
    fg[0, 0] = 0.9
    label = np.zeros((1, 30), dtype=np.int32)
    label[0, 29] = 1
    m = ConsemaMethod(0.1, tau=1.0, max_dilations=10)
    p = m.prepare(None, _one_sample(fg))
    assert m.curve(p, label) == 10
    assert m.predict(p, 10.0).all()
    assert m.predict(p, 9.0).sum() == 10


def test_curve_empty_errors() -> None:
    m = ConsemaMethod(0.1)
    fg, label = _centre_case()
    with pytest.raises(CalibrationError, match="empty foreground"):
        m.curve(m.prepare(None, _one_sample(fg)), np.zeros_like(label))
    with pytest.raises(CalibrationError, match=r"hard prediction .* is empty"):
        m.curve(m.prepare(None, _one_sample(np.zeros((5, 5)))), label)


def test_lambda_hat_order_statistic() -> None:
    m = ConsemaMethod(0.1)
    scores = [int(x) for x in np.random.default_rng(0).integers(0, 6, size=19)]
    # ⌈20·0.9⌉ = 18th smallest (1-indexed)
    assert m.lambda_hat(scores) == sorted(scores)[17]
    assert m.lambda_hat(scores, alpha=0.2) == sorted(scores)[math.ceil(20 * 0.8) - 1]
    with pytest.raises(InsufficientCalibrationError):
        m.lambda_hat(scores[:8])


def test_predict_equals_iterated_dilation() -> None:
    m = ConsemaMethod(0.1)
    images, samples, _ = binary_blobs_dataset(2, (24, 20), n_samples=2, seed=3)
    cross = make_footprint("cross", 2)
    for i in range(2):
        p = m.prepare(images[i], samples[i])
        yhat = samples[i, :, 1].astype(np.float64).mean(axis=0) >= 0.5
        np.testing.assert_array_equal(p.prediction, yhat)
        for q in (0, 1, 3, 7):
            np.testing.assert_array_equal(m.predict(p, float(q)), _iterated_dilation(yhat, cross, q))
        assert m.predict(p, float(p.cap)).all()
    with pytest.raises(ConformalError, match="whole number"):
        m.predict(p, 1.5)
    with pytest.raises(ConformalError, match="whole number"):
        m.predict(p, -1.0)


def test_predict_empty_prediction() -> None:
    m = ConsemaMethod(0.1)
    p = m.prepare(None, _one_sample(np.zeros((6, 6))))
    assert not m.predict(p, 3.0).any()
    assert m.predict(p, float(p.cap)).all()


def test_evaluate_covered_matches_score() -> None:
    """covered (ratio ≥ τ) holds exactly when the image's score s ≤ q̂: the event the guarantee is about."""
    m = ConsemaMethod(0.2)
    images, samples, labels = binary_blobs_dataset(15, (20, 20), n_samples=2, seed=4, noise=2.0)
    prepared = [m.prepare(images[i], samples[i]) for i in range(15)]
    keep = [i for i in range(15) if prepared[i].prediction.any()]
    scores = {i: m.curve(prepared[i], labels[i]) for i in keep}
    for q in [*sorted(set(scores.values())), max(scores.values()) + 1]:
        for i in keep:
            out = m.evaluate(prepared[i], labels[i], float(q))
            assert out["covered"] == float(scores[i] <= q)
            assert (out["coverage"] >= 0.8) == (scores[i] <= q)
    out = m.evaluate(prepared[keep[0]], labels[keep[0]], 1.0)
    assert set(out) >= {"coverage", "stretch", "dice", "assd", "hd95", "covered"}


def test_evaluate_hand() -> None:
    fg, label = _centre_case()
    m = ConsemaMethod(0.1, tau=0.75)
    p = m.prepare(None, _one_sample(fg))
    out = m.evaluate(p, label, 1.0)  # set = centre + 4 neighbours; covers 3 of 4
    assert out["coverage"] == pytest.approx(0.75)
    assert out["stretch"] == pytest.approx(5.0)
    assert out["dice"] == pytest.approx(2 * 3 / (5 + 4))
    assert out["covered"] == 1.0
    assert m.evaluate(p, label, 0.0)["covered"] == 0.0
    assert math.isnan(m.evaluate(p, np.zeros_like(label), 1.0)["covered"])


def test_3d_end_to_end() -> None:
    m = ConsemaMethod(0.2)
    images, samples, labels = binary_blobs_dataset(
        12, (12, 14, 14), n_samples=2, seed=8, noise=0.5, radius_range=(0.2, 0.3)
    )
    prepared = [m.prepare(images[i], samples[i]) for i in range(12)]
    assert all(p.prediction.any() for p in prepared)
    scores = [m.curve(p, y) for p, y in zip(prepared[:8], labels[:8], strict=True)]
    q = m.lambda_hat(scores)
    assert q == sorted(scores)[math.ceil(9 * 0.8) - 1]
    for p in prepared[8:]:
        np.testing.assert_array_equal(
            m.predict(p, q), _iterated_dilation(p.prediction, make_footprint("cross", 3), int(q))
        )
