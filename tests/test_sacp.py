"""Tests of napari_conformal.core.methods.sacp against explicit per-pixel loops (the loops live only here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.sacp import SACP
from napari_conformal.core.scores import neighbourhood as sacp
from napari_conformal.core.scores.aps import aps_scores
from napari_conformal.core.scores.sets import PixelwiseScores
from napari_conformal.errors import ParameterError


def _naive_mean(x: np.ndarray, size: int, include_centre: bool) -> np.ndarray:
    """Per-channel box mean with half-sample symmetric padding (scipy's "reflect"), one pixel at a time."""
    r = size // 2
    nd = x.ndim - 1
    padded = np.pad(x, [(0, 0)] + [(r, r)] * nd, mode="symmetric")
    out = np.empty_like(x, dtype=np.float64)
    for idx in np.ndindex(*x.shape[1:]):
        window = padded[(slice(None), *(slice(i, i + size) for i in idx))]
        total = window.reshape(x.shape[0], -1).sum(axis=1)
        count = size**nd
        if not include_centre:
            total = total - x[(slice(None), *idx)]
            count -= 1
        out[(slice(None), *idx)] = total / count
    return out


def _samples(rng: np.random.Generator, shape: tuple[int, ...], n_labels: int, t: int = 3) -> np.ndarray:
    e = np.exp(rng.normal(scale=2.0, size=(t, n_labels, *shape)))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "size", "centre"),
    [
        ((6, 5), 7, True),
        ((6, 5), 3, False),
        ((5, 6, 7), 3, True),
        ((5, 4, 6), 7, True),
        ((4, 5, 4), 3, False),
    ],
)
def test_neighbourhood_mean_equals_loop(shape, size, centre):
    x = np.random.default_rng(0).random((3, *shape))
    got = sacp.neighbourhood_mean(x, size, include_centre=centre)
    np.testing.assert_allclose(got, _naive_mean(x, size, centre), rtol=0, atol=1e-12)


def test_consign_variant_equals_loop_2d():
    rng = np.random.default_rng(1)
    samples = _samples(rng, (9, 8), 4)
    probs = samples.astype(np.float64).mean(axis=0)
    smoothed = 0.7 * probs + 0.3 * _naive_mean(probs, 7, True)
    np.testing.assert_allclose(smoothed.sum(axis=0), 1.0, atol=1e-12)  # still a distribution
    method = make_method("sacp")
    prepared = method.prepare(None, samples)
    want = PixelwiseScores.from_scores(aps_scores(smoothed))
    np.testing.assert_allclose(prepared.scores, want.scores, rtol=0, atol=1e-12)
    for lam in (0.0, 0.3, 0.6, 0.9):
        np.testing.assert_array_equal(method.predict(prepared, lam), want.scores <= lam)


def test_liu_variant_equals_loop_3d():
    rng = np.random.default_rng(2)
    samples = _samples(rng, (4, 5, 6), 3)
    probs = samples.astype(np.float64).mean(axis=0)
    base = aps_scores(probs)
    fused = 0.5 * base + 0.5 * _naive_mean(base, 3, False)  # lmd·s + lmd·mean over the 26 neighbours
    method = make_method("sacp", variant="liu")
    prepared = method.prepare(None, samples)
    np.testing.assert_allclose(prepared.scores, PixelwiseScores.from_scores(fused).scores, rtol=0, atol=1e-12)
    assert method.predict(prepared, 0.0).any(axis=0).all()  # the lowest fused score is always in


def test_default_box_is_7_wide_in_2d_and_3d():
    # one odd pixel in a constant field: smoothing reaches exactly 3 pixels along every axis
    for shape in [(15, 15), (11, 11, 11)]:
        probs = np.zeros((2, *shape))
        probs[0] = 0.8
        centre = tuple(s // 2 for s in shape)
        probs[(0, *centre)] = 0.2
        probs[1] = 1.0 - probs[0]
        changed = np.abs(sacp.smooth_probabilities(probs)[0] - 0.8) > 1e-12
        ranges = [np.ptp(ix) + 1 for ix in np.nonzero(changed)]
        assert ranges == [7] * len(shape)
        assert changed.sum() == 7 ** len(shape)


def test_weight_zero_and_constant_field_reduce_to_aps():
    rng = np.random.default_rng(3)
    samples = _samples(rng, (6, 7), 3)
    aps = make_method("aps").prepare(None, samples)
    zero = make_method("sacp", weight=0.0).prepare(None, samples)
    np.testing.assert_array_equal(zero.scores, aps.scores)
    flat = np.broadcast_to(samples[:, :, :1, :1], samples.shape).copy()
    np.testing.assert_allclose(
        make_method("sacp").prepare(None, flat).scores,
        make_method("aps").prepare(None, flat).scores,
        rtol=0,
        atol=1e-12,
    )


def test_sacp_calibrates_and_samples_in_3d():
    rng = np.random.default_rng(4)
    method = make_method("sacp")
    data = [(_samples(rng, (5, 6, 7), 3), rng.integers(0, 3, size=(5, 6, 7))) for _ in range(5)]
    prepared = [method.prepare(None, s) for s, _ in data]
    curves = [method.curve(p, y) for p, (_, y) in zip(prepared, data, strict=True)]
    lam = method.lambda_hat(curves, alpha=0.2, nu=0.6)
    assert lam == sorted(c.lambda_for(0.6) for c in curves)[4]  # n = 5, α = 0.2: ⌈6 · 0.8⌉ = 5th
    draws = method.sample_members(prepared[0], lam, 6, rng=1)
    assert draws.shape == (6, 5, 6, 7)
    assert np.take_along_axis(method.predict(prepared[0], lam), draws.astype(np.intp), axis=0).all()


def test_anisotropic_size_and_params():
    method = make_method("sacp", size=(1, 7, 7))
    samples = _samples(np.random.default_rng(5), (3, 8, 8), 3)
    probs = samples.astype(np.float64).mean(axis=0)
    slice_wise = np.stack([_naive_mean(probs[:, z], 7, True) for z in range(3)], axis=1)
    want = PixelwiseScores.from_scores(aps_scores(0.7 * probs + 0.3 * slice_wise)).scores
    np.testing.assert_allclose(method.prepare(None, samples).scores, want, rtol=0, atol=1e-12)
    params = method.params()
    assert params == {
        "variant": "consign",
        "weight": None,  # unset: the variant's default (0.3 consign, 0.5 liu), resolved at scoring
        "size": [1, 7, 7],
        "mode": "reflect",
        "structure": None,
    }
    json.dumps(params)
    assert make_method("sacp", **params).params() == params
    # the unset weight and box are the variant's defaults, bit for bit
    for variant, weight, size in (("consign", 0.3, 7), ("liu", 0.5, 3)):
        unset = make_method("sacp", variant=variant).prepare(None, samples).scores
        given = make_method("sacp", variant=variant, weight=weight, size=size).prepare(None, samples).scores
        np.testing.assert_array_equal(unset, given)
        other = make_method("sacp", variant=variant, weight=0.2).prepare(None, samples).scores
        assert not np.array_equal(unset, other)


def test_bad_arguments():
    with pytest.raises(
        ParameterError, match=r"sacp option variant must be one of consign, liu, got 'bereska'"
    ):
        make_method("sacp", variant="bereska")
    with pytest.raises(ParameterError, match=r"sacp option weight must be >= 0 and <= 1, got 1.5"):
        make_method("sacp", weight=1.5)
    with pytest.raises(ParameterError, match=r"neighbourhood sizes must be odd positive integers, got 4"):
        make_method("sacp", size=4)
    with pytest.raises(
        ParameterError, match=r"neighbourhood sizes must be odd positive integers, got \[7, 6\]"
    ):
        make_method("sacp", size="7,6")
    with pytest.raises(ParameterError, match=r"sacp option size must be >= 1, got 0"):
        make_method("sacp", size=0)
    with pytest.raises(ParameterError, match=r"sacp option mode must be one of reflect, .*, got 'circular'"):
        make_method("sacp", mode="circular")
    with pytest.raises(ParameterError, match=r"method 'sacp' has no option 'alpha'"):
        make_method("sacp", alpha=0.1)
    with pytest.raises(ParameterError, match="one per spatial axis"):
        make_method("sacp", size=(7, 7)).prepare(None, _samples(np.random.default_rng(0), (4, 5, 6), 2))
    with pytest.raises(
        ParameterError, match=r"values must have shape \(L, Y, X\) or \(L, Z, Y, X\), got shape \(3, 4\)"
    ):
        sacp.neighbourhood_mean(np.zeros((3, 4)))
    with pytest.raises(ParameterError, match="empty"):
        sacp.neighbourhood_mean(np.zeros((2, 4, 4)), 1, include_centre=False)
    assert isinstance(make_method("sacp", size="1,7,7"), SACP)
    assert make_method("sacp", size="1,7,7").size == [1, 7, 7]
