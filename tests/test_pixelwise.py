"""Tests of napari_conformal.core.methods.pixelwise: APS/RAPS/LAC scores and sets, relaxed ν-membership, Algorithm 3.

Expected values are computed by hand (dyadic probabilities, so every sum is
exact in floating point) or by brute force written independently here (eq. 12
as an explicit loop over k, a search over every candidate λ with
``labelwise_accuracy`` of the best member).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_conformal.core.methods import pixelwise as pw
from napari_conformal.core.methods.base import available_methods, make_method
from napari_conformal.core.metrics.accuracy import labelwise_accuracy
from napari_conformal.core.scores import sets as sets_module
from napari_conformal.core.scores.aps import aps_scores, default_k_reg
from napari_conformal.core.scores.lac import lac_scores
from napari_conformal.core.scores.membership import MembershipCurve, accuracy_in
from napari_conformal.core.scores.sets import (
    PixelwiseScores,
    best_member,
    sample_members,
    set_masks,
    set_size_map,
)
from napari_conformal.errors import (
    CalibrationError,
    InsufficientCalibrationError,
    ParameterError,
    StoreValidationError,
)

P1 = (0.5, 0.375, 0.125)
P2 = (0.125, 0.25, 0.625)


def _probs(*pixels: tuple[float, ...]) -> np.ndarray:
    """X̄ of shape (L, 1, n_pixels) from per-pixel probability tuples."""
    return np.asarray(pixels, dtype=np.float64).T[:, None, :]


def _random_samples(
    rng: np.random.Generator, shape: tuple[int, ...], n_labels: int, t: int = 3
) -> np.ndarray:
    logits = rng.normal(scale=2.0, size=(t, n_labels, *shape))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sets(prepared: PixelwiseScores, lam: float) -> list[set[int]]:
    masks = set_masks(prepared, lam).reshape(prepared.n_labels, -1)
    return [set(np.flatnonzero(masks[:, p]).tolist()) for p in range(masks.shape[1])]


# ------------------------------------------------------------------------------------ hand-made scores


def test_aps_scores_and_sets_by_hand():
    # pixel 1: ranks 0 > 1 > 2, scores 0, 0.5, 0.875 ; pixel 2: ranks 2 > 1 > 0, scores 0.875, 0.625, 0
    scores = aps_scores(_probs(P1, P2))
    np.testing.assert_array_equal(scores[:, 0, 0], [0.0, 0.5, 0.875])
    np.testing.assert_array_equal(scores[:, 0, 1], [0.875, 0.625, 0.0])
    prepared = PixelwiseScores.from_scores(scores)
    assert _sets(prepared, 0.0) == [{0}, {2}]
    assert _sets(prepared, 0.49) == [{0}, {2}]
    assert _sets(prepared, 0.5) == [{0, 1}, {2}]  # c_1 = 0.5 is not > 0.5: the crossing label joins
    assert _sets(prepared, 0.625) == [{0, 1}, {1, 2}]
    assert _sets(prepared, 0.874) == [{0, 1}, {1, 2}]
    assert _sets(prepared, 0.875) == [{0, 1, 2}, {0, 1, 2}]


def _k_star_eq12(p: np.ndarray, lam: float, reg_weight: float, k_reg: int) -> set[int]:
    """Eq. 12 literally: k* = min{k : c_k + reg_k > λ}, else L (the fixed reference bug)."""
    order = sorted(range(len(p)), key=lambda lab: (-p[lab], lab))
    cum = 0.0
    k_star = len(p)
    for k in range(1, len(p) + 1):
        cum += p[order[k - 1]]
        if cum + reg_weight * max(k - k_reg, 0) > lam:
            k_star = k
            break
    return set(order[:k_star])


@pytest.mark.parametrize(("reg_weight", "k_reg"), [(0.0, 0), (0.05, 2), (0.2, 1)])
def test_sets_match_eq12_loop(reg_weight, k_reg):
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=40).T.reshape(5, 5, 8)
    prepared = PixelwiseScores.from_scores(aps_scores(probs, reg_weight=reg_weight, k_reg=k_reg))
    flat = probs.reshape(5, -1)
    for lam in (0.0, 0.2, 0.5, 0.77, 0.95, 0.999, 1.0, 1.3):
        got = _sets(prepared, lam)
        for p in range(flat.shape[1]):
            assert got[p] == _k_star_eq12(flat[:, p].tolist(), lam, reg_weight, k_reg), (lam, p)


def test_k_star_is_L_when_nothing_exceeds_lambda():
    # c_L = 1 is never > λ = 1: the reference argmax gave k* = 1 (top label only); eq. 12 wants all labels
    prepared = PixelwiseScores.from_scores(aps_scores(_probs(P1, P2)))
    assert _sets(prepared, 1.0) == [{0, 1, 2}, {0, 1, 2}]
    np.testing.assert_array_equal(set_size_map(prepared, 1.0), [[3, 3]])
    np.testing.assert_array_equal(set_size_map(prepared, 7.5), [[3, 3]])


def test_raps_penalty_by_hand_and_kept_at_test_time():
    # L = 4, k_reg = ⌊4/2⌋ = 2, λ_reg = 0.05: rank-4 score 0.875 + 0.05·(3 − 2) = 0.925
    p = (0.5, 0.25, 0.125, 0.125)
    scores = aps_scores(_probs(p), reg_weight=0.05, k_reg=2)
    np.testing.assert_allclose(scores[:, 0, 0], [0.0, 0.5, 0.75, 0.925], rtol=0, atol=1e-15)
    method = make_method("raps")
    samples = np.asarray(p, dtype=np.float32).reshape(1, 4, 1, 1)
    prepared = method.prepare(None, samples)
    # at λ = 0.9 APS holds all four labels, RAPS three
    assert method.predict(prepared, 0.9)[:, 0, 0].tolist() == [True, True, True, False]
    aps = make_method("aps")
    assert aps.predict(aps.prepare(None, samples), 0.9).all()
    draws = method.sample_members(prepared, 0.9, 300, rng=0)
    assert set(np.unique(draws).tolist()) == {0, 1, 2}
    assert method.predict(prepared, 0.925)[:, 0, 0].all()


def test_raps_default_k_reg_is_half_l():
    assert [default_k_reg(n) for n in (2, 3, 4, 8)] == [1, 1, 2, 4]
    p = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32).reshape(1, 4, 1, 1)
    got = make_method("raps").prepare(None, p).scores[:, 0, 0]
    want = aps_scores(p[0].astype(np.float64), reg_weight=0.05, k_reg=2)[:, 0, 0]
    np.testing.assert_array_equal(got, want)


def test_lac_by_hand_includes_argmax():
    prepared = PixelwiseScores.from_scores(lac_scores(_probs(P1, (0.375, 0.375, 0.25))))
    # pixel 1: 1 − p = 0.5, 0.625, 0.875 → argmax set to 0 ; pixel 2: tie → label 0 scores 0
    np.testing.assert_array_equal(prepared.scores[:, 0, 0], [0.0, 0.625, 0.875])
    np.testing.assert_array_equal(prepared.scores[:, 0, 1], [0.0, 0.625, 0.75])
    assert _sets(prepared, 0.0) == [{0}, {0}]
    assert _sets(prepared, 0.625) == [{0, 1}, {0, 1}]
    assert _sets(prepared, 0.75) == [{0, 1}, {0, 1, 2}]


def test_probability_ties_go_to_lower_label():
    scores = aps_scores(_probs((0.375, 0.375, 0.25), (0.25, 0.375, 0.375)))
    np.testing.assert_array_equal(scores[:, 0, 0], [0.0, 0.375, 0.75])
    np.testing.assert_array_equal(scores[:, 0, 1], [0.75, 0.0, 0.375])


def test_randomised_aps_by_hand():
    # u = 0.5: raw 0.25, 0.5 + 0.1875, 0.875 + 0.0625; the top label is then set to 0
    raw = aps_scores(_probs(P1), u=np.full((1, 1), 0.5))
    np.testing.assert_array_equal(raw[:, 0, 0], [0.25, 0.6875, 0.9375])
    np.testing.assert_array_equal(PixelwiseScores.from_scores(raw).scores[:, 0, 0], [0.0, 0.6875, 0.9375])


def test_randomised_aps_method_is_seeded_and_bounded():
    rng = np.random.default_rng(5)
    samples = _random_samples(rng, (6, 7), 4)
    probs = samples.astype(np.float64).mean(axis=0)
    plain = aps_scores(probs)
    a = make_method("aps", randomized=True, seed=1)
    s1 = a.prepare(None, samples).scores
    np.testing.assert_array_equal(s1, a.prepare(None, samples).scores)  # same image, same u
    s2 = make_method("aps", randomized=True, seed=2).prepare(None, samples).scores
    assert not np.array_equal(s1, s2)
    # c_{r-1} ≤ s ≤ c_{r-1} + π_r, and the top label scores 0
    assert np.all(s1 >= plain - 1e-12) and np.all(s1 <= plain + probs + 1e-12)
    np.testing.assert_array_equal(s1.min(axis=0), 0.0)


# ----------------------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", ["aps", "raps", "lac", "sacp"])
def test_sets_nested_nonempty_and_full_at_max(name):
    rng = np.random.default_rng(11)
    method = make_method(name)
    samples = _random_samples(rng, (9, 10), 4)
    prepared = method.prepare(None, samples)
    lams = np.r_[0.0, np.sort(rng.uniform(0, 1.3, size=12))]
    previous = None
    for lam in lams:
        masks = method.predict(prepared, lam)
        assert masks.shape == (4, 9, 10) and masks.dtype == bool
        assert masks.any(axis=0).all()  # never empty
        if previous is not None:
            assert np.all(masks >= previous)  # nested
        previous = masks
    assert method.predict(prepared, float(prepared.scores.max())).all()
    if name != "sacp":  # the most probable label of X̄ is in every set (SACP ranks by the smoothed X̃)
        top = np.argmax(samples.astype(np.float64).mean(axis=0), axis=0)
        assert np.take_along_axis(method.predict(prepared, 0.0), top[None], axis=0).all()


def test_order_lists_set_members_first():
    rng = np.random.default_rng(2)
    prepared = make_method("raps").prepare(None, _random_samples(rng, (5, 6), 5))
    for lam in (0.0, 0.4, 0.8, 1.1):
        sizes = set_size_map(prepared, lam)
        masks = set_masks(prepared, lam)
        first = np.arange(5).reshape(5, 1, 1) < sizes[None]
        members = np.take_along_axis(masks, prepared.order.astype(np.intp), axis=0)
        np.testing.assert_array_equal(members, first)


# --------------------------------------------------------------------------------- relaxed membership


def _brute_lambda(prepared: PixelwiseScores, label: np.ndarray, nu: float) -> float:
    """min over every candidate λ (0 and every score) with labelwise_accuracy(best member) > ν."""
    for lam in np.unique(np.r_[0.0, prepared.scores.ravel()]):
        member = best_member(prepared, label, lam)
        if labelwise_accuracy(member, label) > nu:
            return float(lam)
    raise AssertionError("never covered")


@pytest.mark.parametrize("name", ["aps", "raps", "lac"])
def test_exact_lambda_i_equals_brute_force(name):
    rng = np.random.default_rng(7)
    method = make_method(name)
    for trial in range(6):
        shape = (5, 6) if trial % 2 else (3, 3, 4)
        prepared = method.prepare(None, _random_samples(rng, shape, 3))
        label = rng.integers(0, 3 if trial != 3 else 2, size=shape)  # trial 3: one label absent
        curve = method.curve(prepared, label)
        for nu in (0.0, 0.3, 0.5, 0.7, 0.9, 0.99):
            assert curve.lambda_for(nu) == _brute_lambda(prepared, label, nu), (trial, nu)


def test_exact_lambda_i_when_accuracy_hits_nu_exactly():
    # 4 pixels of label 0 and 4 of label 1; true-label scores 0.1·j: acc after j hits = j/8 (up to
    # rounding), so ν = j/8 is hit exactly and the strict ">" must move λ_i one step further
    label = np.array([[0, 1, 0, 1, 0, 1, 0, 1]])
    scores = np.zeros((2, 1, 8))
    for j in range(8):
        scores[label[0, j], 0, j] = 0.1 * (j + 1)
        scores[1 - label[0, j], 0, j] = 0.0  # the other label is the top one
    prepared = PixelwiseScores.from_scores(scores)
    curve = MembershipCurve.from_prepared(prepared, label)
    for j in range(8):
        nu = j / 8
        assert curve.lambda_for(nu) == _brute_lambda(prepared, label, nu)
        assert curve.lambda_for(nu) == pytest.approx(0.1 * (j + 1))
    # at λ = 0.4 four of eight pixels are in: acc_in = 0.5 exactly, which is not > ν = 0.5
    method = make_method("aps")
    assert accuracy_in(prepared, label, 0.4) == 0.5
    assert method.evaluate(prepared, label, 0.4, alpha=0.1, nu=0.5)["covered"] == 0
    assert method.evaluate(prepared, label, 0.5, alpha=0.1, nu=0.5)["covered"] == 1
    assert method.realised(curve, 0.4, alpha=0.1, nu=0.5) == 0.0
    assert method.realised(curve, 0.5, alpha=0.1, nu=0.5) == 1.0


@pytest.mark.parametrize("name", ["aps", "lac", "sacp"])
def test_accuracy_in_is_labelwise_accuracy_of_best_member(name):
    rng = np.random.default_rng(13)
    method = make_method(name)
    prepared = method.prepare(None, _random_samples(rng, (8, 9), 4))
    label = rng.integers(0, 4, size=(8, 9))
    curve = method.curve(prepared, label)
    for lam in (0.0, 0.3, 0.6, 0.9, 1.0):
        member = best_member(prepared, label, lam)
        masks = set_masks(prepared, lam)
        assert np.take_along_axis(masks, member[None].astype(np.intp), axis=0).all()  # it is a member
        acc = accuracy_in(prepared, label, lam)
        assert acc == labelwise_accuracy(member, label)  # bit for bit
        assert curve.accuracy(lam) == acc
    # no member does better: changing any pixel of the best member can only lose hits
    assert accuracy_in(prepared, label, 1e9) == 1.0


def test_calibration_is_the_order_statistic_and_covers_iff_lambda_i_below():
    rng = np.random.default_rng(17)
    method = make_method("aps")
    data = []
    for _ in range(30):
        prepared = method.prepare(None, _random_samples(rng, (6, 6), 3))
        data.append((prepared, rng.integers(0, 3, size=(6, 6))))
    cal, test = data[:19], data[19:]
    curves = [method.curve(p, y) for p, y in cal]
    lam_i = sorted(c.lambda_for(0.85) for c in curves)
    # n = 19, α = 0.1: ⌈20 · 0.9⌉ = 18th smallest
    lam_hat = method.lambda_hat(curves, alpha=0.1, nu=0.85)
    assert lam_hat == lam_i[17]
    assert method.lambda_hat(curves, alpha=0.2, nu=0.85) == lam_i[15]  # ⌈20 · 0.8⌉ = 16
    assert method.lambda_hat(curves, alpha=0.1, nu=0.5) == sorted(c.lambda_for(0.5) for c in curves)[17]
    covered_cal = [method.evaluate(p, y, lam_hat, alpha=0.1, nu=0.85)["covered"] for p, y in cal]
    assert sum(covered_cal) >= 18
    assert covered_cal == [int(method.realised(c, lam_hat, alpha=0.1, nu=0.85)) for c in curves]
    for p, y in test:
        out = method.evaluate(p, y, lam_hat, alpha=0.1, nu=0.85)
        assert out["covered"] == int(method.curve(p, y).lambda_for(0.85) <= lam_hat)
        assert out["covered"] == int(out["accuracy_in"] > 0.85)


def test_calibration_errors():
    method = make_method("lac")
    rng = np.random.default_rng(1)
    prepared = method.prepare(None, _random_samples(rng, (4, 4), 3))
    curve = method.curve(prepared, rng.integers(0, 3, size=(4, 4)))
    with pytest.raises(InsufficientCalibrationError, match=r"n = 8, .*1/\(n\+1\) = 0\.1112"):
        method.lambda_hat([curve] * 8, alpha=0.1, nu=0.8)  # n = 8 < 1/0.1 − 1
    assert method.lambda_hat([curve] * 9, alpha=0.1, nu=0.8) == curve.lambda_for(0.8)
    with pytest.raises(CalibrationError, match="at least one calibration image"):
        method.lambda_hat([], alpha=0.1, nu=0.8)
    with pytest.raises(CalibrationError, match="curve 0 is a float, expected a MembershipCurve"):
        method.lambda_hat([0.3] * 10, alpha=0.1, nu=0.8)
    with pytest.raises(ParameterError, match=r"nu must lie in \[0, 1\), got 1.0"):
        method.lambda_hat([curve] * 10, alpha=0.1, nu=1.0)
    with pytest.raises(ParameterError, match=r"nu \(label-wise accuracy, a number in \[0, 1\)\) is required"):
        method.lambda_hat([curve] * 10, alpha=0.1)


# -------------------------------------------------------------------------------------------- sampling


def test_sampling_is_uniform_within_the_set():
    # pixel 1 set {0, 1, 2} at λ = 0.9 ; pixel 2 set {1, 2}
    prepared = PixelwiseScores.from_scores(aps_scores(_probs(P1, P2)))
    draws = sample_members(prepared, 0.7, 6000, np.random.default_rng(4))
    assert draws.shape == (6000, 1, 2) and draws.dtype == np.uint8
    counts1 = np.bincount(draws[:, 0, 0], minlength=3)
    counts2 = np.bincount(draws[:, 0, 1], minlength=3)
    assert counts1[2] == 0 and counts2[0] == 0  # never outside the set
    # binomial(6000, 1/2): sd ≈ 38.7; 6 sd
    assert abs(counts1[0] - 3000) < 233 and abs(counts2[1] - 3000) < 233
    draws = sample_members(prepared, 0.9, 6000, np.random.default_rng(4))
    # binomial(6000, 1/3): sd ≈ 36.5; 6 sd
    assert np.all(np.abs(np.bincount(draws[:, 0, 0], minlength=3) - 2000) < 219)


def test_sampling_members_belong_and_are_reproducible():
    rng = np.random.default_rng(8)
    method = make_method("raps")
    prepared = method.prepare(None, _random_samples(rng, (7, 5), 4))
    draws = method.sample_members(prepared, 0.8, 50, rng=123)
    masks = method.predict(prepared, 0.8)
    assert np.take_along_axis(masks, draws.astype(np.intp), axis=0).all()
    np.testing.assert_array_equal(draws, sample_members(prepared, 0.8, 50, 123))
    # singleton sets: every draw is the set's label
    single = sample_members(prepared, 0.0, 3, 0)
    np.testing.assert_array_equal(single, np.broadcast_to(prepared.order[0], single.shape))


def test_sampling_chunks_agree_with_shapes(monkeypatch):
    monkeypatch.setattr(sets_module, "_SAMPLE_CHUNK_ELEMENTS", 7)  # forces one sample per chunk
    prepared = PixelwiseScores.from_scores(aps_scores(_probs(P1, P2)))
    draws = sample_members(prepared, 0.9, 5, 0)
    assert draws.shape == (5, 1, 2)
    masks = set_masks(prepared, 0.9)
    assert np.take_along_axis(masks, draws.astype(np.intp), axis=0).all()


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_metrics_keys_and_singleton_sets():
    rng = np.random.default_rng(21)
    method = make_method("aps")
    samples = _random_samples(rng, (8, 8), 3)
    prepared = method.prepare(None, samples)
    label = np.argmax(samples.astype(np.float64).mean(axis=0), axis=0)
    label[0, :4] = (label[0, :4] + 1) % 3
    out = method.evaluate(prepared, label, 0.0, alpha=0.1, nu=0.6, n_samples=(10, 50), seed=3)
    assert set(out) >= {
        "covered",
        "accuracy_in",
        "mean_set_size",
        "log10_volume",
        "chao1",
        "sec",
        "correlation",
    }
    assert out["mean_set_size"] == 1.0 and out["log10_volume"] == 0.0
    # λ = 0: one member (the argmax map): Chao1 = 1, correlation = 1, SEC = its own coverage
    acc = labelwise_accuracy(np.argmax(samples.astype(np.float64).mean(axis=0), axis=0), label)
    assert out["accuracy_in"] == acc
    assert out["chao1"] == {"10": 1.0, "50": 1.0}
    assert out["correlation"] == {"10": 1.0, "50": 1.0}
    assert out["sec"] == {"10": float(acc > 0.6), "50": float(acc > 0.6)}
    json.dumps(out)
    big = method.evaluate(prepared, label, 1.0, alpha=0.1, nu=0.6, n_samples=(10,), seed=3)
    assert big["covered"] == 1 and big["mean_set_size"] == 3.0
    assert big["log10_volume"] == pytest.approx(64 * math.log10(3))
    assert big["chao1"]["10"] > 10  # ten distinct maps of 3^64 possible
    assert big == method.evaluate(prepared, label, 1.0, alpha=0.1, nu=0.6, n_samples=(10,), seed=3)
    assert big["chao1_classical"] is not None


# ------------------------------------------------------------------------------------------ 3D, float16


def test_3d_path_end_to_end():
    rng = np.random.default_rng(31)
    method = make_method("raps")
    data = [(_random_samples(rng, (4, 5, 6), 3), rng.integers(0, 3, size=(4, 5, 6))) for _ in range(6)]
    prepared = [method.prepare(np.zeros((4, 5, 6), np.float32), s) for s, _ in data]
    curves = [method.curve(p, y) for p, (_, y) in zip(prepared, data, strict=True)]
    lam = method.lambda_hat(curves, alpha=0.2, nu=0.7)
    assert method.predict(prepared[0], lam).shape == (3, 4, 5, 6)
    assert method.set_size_map(prepared[0], lam).shape == (4, 5, 6)
    assert method.sample_members(prepared[0], lam, 4, 0).shape == (4, 4, 5, 6)
    assert curves[0].lambda_for(0.7) == _brute_lambda(prepared[0], data[0][1], 0.7)


def test_float16_samples_are_accepted():
    rng = np.random.default_rng(9)
    samples = _random_samples(rng, (5, 5), 4).astype(np.float16)
    prepared = make_method("lac").prepare(None, samples)
    assert prepared.scores.dtype == np.float64


@pytest.mark.parametrize("name", ["aps", "raps", "lac", "sacp"])
def test_sum_tolerance_is_that_of_the_stored_dtype(name):
    """float16 samples off by 5e-4 (float16 rounding) pass; the same values claimed float32 do not."""
    samples = _random_samples(np.random.default_rng(10), (4, 5), 3).astype(np.float16).astype(np.float64)
    samples[:, 0] += 1 - samples.sum(axis=1)  # exact sums …
    samples[0, 0, 1, 2] += (
        5e-4  # … but one off by 5e-4: within 1e-3, beyond 1e-4 (after float16 rounding too)
    )
    method = make_method(name)
    as16 = samples.astype(np.float16)
    dev = np.abs(as16.astype(np.float64).sum(axis=1) - 1).max()
    assert 1e-4 < dev <= 1e-3
    method.prepare(None, as16)
    method.prepare(None, as16.astype(np.float32), stored_dtype=np.float16)  # read from a float16 store
    with pytest.raises(StoreValidationError, match=r"more than 0\.0001"):
        method.prepare(None, as16.astype(np.float32))
    with pytest.raises(StoreValidationError, match="do not sum to 1"):
        method.prepare(None, as16.astype(np.float64), stored_dtype=np.float32)


def test_membership_curve_is_the_exact_step_function():
    """(lambdas, accuracies): the distinct true-label scores, acc_in at each bit for bit, ending at 1."""
    rng = np.random.default_rng(12)
    method = make_method("raps")
    for shape in ((6, 7), (3, 4, 5)):
        prepared = method.prepare(None, _random_samples(rng, shape, 4))
        label = rng.integers(0, 3, size=shape)  # label 3 absent
        curve = method.curve(prepared, label)
        assert isinstance(curve, MembershipCurve)
        true = np.take_along_axis(prepared.scores, label[None], axis=0)[0]
        np.testing.assert_array_equal(curve.lambdas, np.unique(true))
        assert not curve.lambdas.flags.writeable and not curve.accuracies.flags.writeable
        assert [accuracy_in(prepared, label, lam) for lam in curve.lambdas] == curve.accuracies.tolist()
        assert curve.accuracies[-1] == 1.0 and np.all(np.diff(curve.accuracies) >= 0)
        # between breakpoints acc_in stays at the left one; below the first it is 0
        mids = (curve.lambdas[:-1] + curve.lambdas[1:]) / 2
        assert [curve.accuracy(m) for m in mids] == curve.accuracies[:-1].tolist()
        assert [accuracy_in(prepared, label, m) for m in mids] == curve.accuracies[:-1].tolist()
        if curve.lambdas[0] > 0:
            assert (
                curve.accuracy(curve.lambdas[0] / 2)
                == 0.0
                == accuracy_in(prepared, label, curve.lambdas[0] / 2)
            )
        # λ_i(ν) is the first breakpoint whose accuracy is > ν
        for nu in (0.0, 0.25, 0.5, 0.9, 0.999):
            j = int(np.argmax(curve.accuracies > nu))
            assert curve.lambda_for(nu) == curve.lambdas[j]
        # encode/decode round trip is exact
        again = method.decode_curve(json.loads(json.dumps(method.encode_curve(curve))))
        np.testing.assert_array_equal(again.lambdas, curve.lambdas)
        np.testing.assert_array_equal(again.accuracies, curve.accuracies)
        assert again.lambda_for(0.7) == curve.lambda_for(0.7)


# ---------------------------------------------------------------------------------------- validation


def _good() -> np.ndarray:
    return _random_samples(np.random.default_rng(0), (4, 5), 3)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s[0], r"shape \(3, 4, 5\), expected \(T, L, Y, X\) or \(T, L, Z, Y, X\)"),
        (lambda s: s[:, :1], "L >= 2 labels"),
        (lambda s: (s * 100).astype(np.int64), "dtype int64, expected floating-point probabilities"),
        (
            lambda s: np.where(np.arange(5) == 2, np.nan, s).astype(np.float32),
            r"non-finite value\(s\) \(NaN\)",
        ),
        (lambda s: s * 1.5, r"probability \S+ > 1 at \(t, l, \*pixel\)"),
        (lambda s: s * 0.9, r"do not sum to 1 over the L=3 labels: sum 0\.9"),
    ],
)
def test_bad_samples(mutate, message):
    with pytest.raises(StoreValidationError, match=message):
        make_method("aps").prepare(None, mutate(_good()))


def test_bad_image_label_and_lambda():
    method = make_method("aps")
    with pytest.raises(
        StoreValidationError, match=r"spatial shape \(4, 5\) differs from the image's \(5, 4\)"
    ):
        method.prepare(np.zeros((5, 4)), _good())
    prepared = method.prepare(None, _good())
    with pytest.raises(
        StoreValidationError, match=r"labels: shape \(5, 4\), expected the image's shape \(4, 5\)"
    ):
        method.curve(prepared, np.zeros((5, 4), int))
    with pytest.raises(
        StoreValidationError, match=r"value 3 at pixel \(0, 0\) is outside 0\.\.2 \(L=3 labels\)"
    ):
        method.curve(prepared, np.full((4, 5), 3))  # label L = 3 is out of 0..L−1
    with pytest.raises(StoreValidationError, match="dtype float64, expected an integer label map"):
        method.curve(prepared, np.zeros((4, 5)))
    with pytest.raises(ParameterError, match=r"lambda_hat must be a finite number >= 0, got -0.1"):
        method.predict(prepared, -0.1)
    with pytest.raises(ParameterError, match=r"lambda_hat must be a finite number >= 0, got nan"):
        method.predict(prepared, float("nan"))
    with pytest.raises(ParameterError, match="expected the PixelwiseScores returned by prepare"):
        method.predict(np.zeros((3, 4, 5)), 0.5)
    with pytest.raises(ParameterError, match="n must be a positive integer, got 0"):
        method.sample_members(prepared, 0.5, 0)
    with pytest.raises(ParameterError, match=r"lambda_hat must be a number in \[0, 1\], got 1.5"):
        method.check_lambda(1.5)  # APS scores lie in [0, 1] …
    assert make_method("raps").check_lambda(1.5) == 1.5  # … RAPS's penalty is unbounded


def test_bad_method_arguments():
    # α and ν are arguments of the steps, never options
    with pytest.raises(
        ParameterError, match=r"method 'aps' has no option 'alpha' \(its options: randomized, seed, structure\)"
    ):
        make_method("aps", alpha=0.1)
    with pytest.raises(ParameterError, match=r"method 'lac' has no option 'nu' \(its options: structure\)"):
        make_method("lac", nu=0.8)
    lac = make_method("lac")
    with pytest.raises(ParameterError, match=r"nu .* is required"):
        lac.check_levels(0.1)
    with pytest.raises(ParameterError, match=r"nu must lie in \[0, 1\), got 1.2"):
        lac.check_levels(0.1, 1.2)
    with pytest.raises(ParameterError, match=r"alpha must lie in \(0, 1\), got 1.5"):
        make_method("raps").check_levels(1.5, 0.8)
    with pytest.raises(ParameterError, match=r"alpha must lie in \(0, 1\), got 1.5"):
        make_method("raps").guarantee(1.5, 0.8)
    assert lac.check_levels(0.1, 0.8) == (0.1, 0.8)
    with pytest.raises(ParameterError, match=r"method 'aps' has no option 'k'"):
        make_method("aps", k=3)
    with pytest.raises(ParameterError, match=r"raps option reg_weight must be >= 0, got -1"):
        make_method("raps", reg_weight=-1)
    with pytest.raises(ParameterError, match=r"raps option k_reg must be an integer, got 1.5"):
        make_method("raps", k_reg=1.5)
    with pytest.raises(ParameterError, match="u must"):
        aps_scores(_probs(P1), u=np.zeros(3))


def test_registration_and_params():
    assert {"aps", "raps", "lac", "sacp"} <= set(available_methods())
    for name, cls in [("aps", pw.APS), ("raps", pw.RAPS), ("lac", pw.LAC)]:
        method = make_method(name)
        assert isinstance(method, cls) and method.name == name
        assert method.uses_nu and method.samples_members and method.k is None
        json.dumps(method.params())
    assert make_method("raps").params() == {
        "reg_weight": 0.05,
        "k_reg": None,
        "structure": None,
    }
    assert make_method("aps", randomized=True, seed=4).params()["randomized"] is True
    for name in ("aps", "raps", "lac", "sacp"):  # params() rebuild an equal method
        method = make_method(name)
        assert make_method(name, **method.params()).params() == method.params()
