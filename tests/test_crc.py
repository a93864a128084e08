"""Tests of napari_conformal.core.quantiles: hand-computed cases, error paths, brute force."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from napari_conformal.core.quantiles import (
    ThresholdRiskCurve,
    adjusted_alpha,
    check_calibration_size,
    exact_fraction,
    lambda_hat_from_curves,
    max_uncovered,
    min_calibration_size,
    order_statistic_lambda_hat,
)
from napari_conformal.errors import (
    CalibrationError,
    InsufficientCalibrationError,
    LambdaMaxReachedError,
    NonMonotoneCurveError,
    ParameterError,
)

# --------------------------------------------------------------------------- helpers (independent of quantiles.py)


def _alpha_frac(alpha: str) -> Fraction:
    """The exact decimal α from its string, independent of crc.exact_fraction."""
    return Fraction(alpha)


def _rule_holds(loss_sum: Fraction, n: int, alpha: Fraction, bound: Fraction = Fraction(1)) -> bool:
    """n/(n+1)·R̂ + B/(n+1) ≤ α with R̂ = loss_sum/n, in exact arithmetic."""
    return Fraction(n, n + 1) * (loss_sum / n) + bound / (n + 1) <= alpha


def _brute_order_statistic(lams: np.ndarray, alpha: Fraction) -> float:
    """Smallest candidate λ among the λ_i whose uncovered count satisfies the exact CRC rule."""
    n = lams.size
    for cand in np.sort(lams):
        uncovered = int(np.sum(lams > cand))
        if _rule_holds(Fraction(uncovered), n, alpha):
            return float(cand)
    raise AssertionError("no candidate satisfies the rule")


def _brute_threshold_lambda(nonconf: list[np.ndarray], alpha: Fraction) -> float:
    """inf{λ ≥ 0 : rule holds} by evaluating R̂ with masks at every candidate, exactly."""
    n = len(nonconf)
    cands = np.unique(np.r_[0.0, np.concatenate(nonconf)])
    for lam in cands[cands >= 0]:
        loss = sum(Fraction(int(np.sum(r > lam)), r.size) for r in nonconf)
        if _rule_holds(loss, n, alpha):
            return float(lam)
    raise AssertionError("no candidate satisfies the rule")


def _float_fragile_cases() -> list[tuple[int, str]]:
    """(n, α) where the float ⌊(n+1)·α − 1⌋ differs from the exact one."""
    cases = []
    for hundredths in range(1, 100):
        alpha_s = f"{hundredths / 100:.2f}"
        for n in range(1, 400):
            exact = (n + 1) * Fraction(alpha_s) - 1
            if exact < 0:
                continue
            if math.floor((n + 1) * float(alpha_s) - 1) != math.floor(exact):
                cases.append((n, alpha_s))
    return cases


FRAGILE = _float_fragile_cases()

# --------------------------------------------------------------------------- small helpers


def test_exact_fraction_is_the_decimal() -> None:
    assert exact_fraction(0.1) == Fraction(1, 10)
    assert exact_fraction(0.29) == Fraction(29, 100)
    assert exact_fraction(np.float64(0.25)) == Fraction(1, 4)
    assert exact_fraction(3) == Fraction(3)
    assert exact_fraction(Fraction(2, 7)) == Fraction(2, 7)


@pytest.mark.parametrize(("alpha", "need"), [(0.2, 4), (0.1, 9), (0.05, 19), (0.3, 3), (0.25, 3), (0.9, 1)])
def test_min_calibration_size_hand(alpha: float, need: int) -> None:
    # n ≥ 1/α − 1: 1/0.3 − 1 = 2.33 → 3; 1/0.25 − 1 = 3 exactly; 1/0.9 − 1 = 0.11 → at least 1
    assert min_calibration_size(alpha) == need
    check_calibration_size(need, alpha)
    if need > 1:
        with pytest.raises(InsufficientCalibrationError):
            check_calibration_size(need - 1, alpha)


def test_min_calibration_size_bound() -> None:
    # B = 2, α = 0.5: n ≥ 2/0.5 − 1 = 3
    assert min_calibration_size(0.5, bound=2.0) == 3


@pytest.mark.parametrize(
    ("n", "alpha", "m"),
    [
        (275, 0.25, 68),
        (275, 0.3, 81),
        (500, 0.1, 49),
        (500, 0.05, 24),
        (700, 0.2, 139),
        (20, 0.1, 1),
        (9, 0.1, 0),
    ],
)
def test_max_uncovered_table(n: int, alpha: float, m: int) -> None:
    # docs/algorithms.md#conformal-rules; ⌊(n+1)α − 1⌋ by hand, e.g. 276·0.25 − 1 = 68
    assert max_uncovered(n, alpha) == m


def test_adjusted_alpha_hand() -> None:
    # α* = ((n+1)α − 1)/n: n = 20 → 0.16, 0.055, 0.0025 (docs/algorithms.md#crc)
    assert adjusted_alpha(20, 0.2) == pytest.approx(0.16, abs=1e-15)
    assert adjusted_alpha(20, 0.1) == pytest.approx(0.055, abs=1e-15)
    assert adjusted_alpha(20, 0.05) == pytest.approx(0.0025, abs=1e-15)


# --------------------------------------------------------------------------- lambda_hat_from_curves


def test_grid_hand_case_equality_at_boundary() -> None:
    # n = 4, α = 0.4: need Σ L ≤ (n+1)α − B = 1. Column sums 3.5, 1.0, 0 → λ̂ = 0.5 (equality allowed)
    losses = np.array([[1, 0.5, 0], [1, 0.5, 0], [1, 0, 0], [0.5, 0, 0]])
    assert lambda_hat_from_curves(losses, np.array([0.0, 0.5, 1.0]), 0.4) == 0.5


def test_grid_hand_case_first_point() -> None:
    # n = 9, α = 0.3: budget 10·0.3 − 1 = 2; all-zero first column → smallest λ
    losses = np.zeros((9, 3))
    assert lambda_hat_from_curves(losses, np.array([0.1, 0.2, 0.3]), 0.3) == 0.1


def test_grid_hand_case_just_over_budget() -> None:
    # n = 4, α = 0.4 (budget 1): sums 1.25, 1.0 → second point
    losses = np.array([[0.5, 0.5], [0.25, 0.0], [0.25, 0.25], [0.25, 0.25]])
    assert lambda_hat_from_curves(losses, np.array([1.0, 2.0]), 0.4) == 2.0


def test_grid_hand_case_bound_two() -> None:
    # B = 2, n = 5, α = 0.5: budget 6·0.5 − 2 = 1 → sums 2, 1.5, 1 → third point
    losses = np.array([[2, 1.5, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=float)
    assert lambda_hat_from_curves(losses, np.array([0.0, 1.0, 2.0]), 0.5, bound=2.0) == 2.0


def test_grid_float_fragile_budget() -> None:
    # (n+1)·α = 100·0.29 is 28.999999999999996 in floats; the exact budget is 28, so a curve whose
    # 0/1 losses sum to exactly 28 must be accepted at the first grid point
    assert 100 * 0.29 < 29
    losses = np.zeros((99, 2))
    losses[:28, 0] = 1
    assert lambda_hat_from_curves(losses, np.array([0.0, 1.0]), 0.29) == 0.0
    losses[28, 0] = 1  # 29 > 28
    assert lambda_hat_from_curves(losses, np.array([0.0, 1.0]), 0.29) == 1.0


@pytest.mark.parametrize(("n", "alpha_s"), FRAGILE[:: max(len(FRAGILE) // 40, 1)])
def test_grid_matches_exact_rule_on_fragile_cases(n: int, alpha_s: str) -> None:
    m = math.floor((n + 1) * Fraction(alpha_s) - 1)
    losses = np.zeros((n, 3))
    losses[: m + 1, 0] = 1  # one too many at λ_0
    losses[:m, 1] = 1  # exactly the budget at λ_1
    assert lambda_hat_from_curves(losses, np.array([0.0, 1.0, 2.0]), float(alpha_s)) == 1.0


def test_fragile_cases_exist() -> None:
    # the parametrised cases above are only meaningful if floats really misbehave somewhere
    assert len(FRAGILE) > 20


def test_grid_insufficient_n_message() -> None:
    with pytest.raises(
        InsufficientCalibrationError,
        match=r"n = 8, but it needs n >= ceil\(1/alpha\) - 1 = 9.*1/\(n\+1\) = 0\.1112",
    ):
        lambda_hat_from_curves(np.zeros((8, 2)), np.array([0.0, 1.0]), 0.1)
    lambda_hat_from_curves(np.zeros((9, 2)), np.array([0.0, 1.0]), 0.1)  # n = 9 is enough


def test_grid_non_monotone() -> None:
    losses = np.zeros((10, 3))
    losses[3] = [0.2, 0.5, 0.1]
    with pytest.raises(NonMonotoneCurveError, match=r"image 3 increases between lambda=0 and lambda=1"):
        lambda_hat_from_curves(losses, np.array([0.0, 1.0, 2.0]), 0.2)


def test_grid_round_off_increase_tolerated() -> None:
    losses = np.zeros((10, 2))
    losses[0] = [0.3, 0.3 + 1e-12]
    assert lambda_hat_from_curves(losses, np.array([0.0, 1.0]), 0.2) == 0.0


def test_grid_lambda_max_reached() -> None:
    losses = np.full((10, 3), 1.0)
    losses[:, -1] = 0.5
    with pytest.raises(LambdaMaxReachedError, match=r"lambda_max=3.*lowest empirical risk 0.5"):
        lambda_hat_from_curves(losses, np.array([1.0, 2.0, 3.0]), 0.2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_grid_nan_inf(bad: float) -> None:
    losses = np.zeros((10, 2))
    losses[2, 1] = bad
    with pytest.raises(CalibrationError, match="NaN or inf"):
        lambda_hat_from_curves(losses, np.array([0.0, 1.0]), 0.2)
    with pytest.raises(CalibrationError, match="NaN or inf"):
        lambda_hat_from_curves(np.zeros((10, 2)), np.array([0.0, bad]), 0.2)


@pytest.mark.parametrize(
    ("losses", "lambdas", "match"),
    [
        (np.zeros(10), np.zeros(10), "losses must have shape"),
        (np.zeros((10, 2, 1)), np.zeros(2), "losses must have shape"),
        (np.zeros((10, 2)), np.array([0.0, 1.0, 2.0]), r"lambdas must have shape \(2,\)"),
        (np.zeros((10, 2)), np.zeros((2, 1)), r"lambdas must have shape \(2,\)"),
        (np.zeros((10, 0)), np.zeros(0), "at least one image and one lambda"),
        (np.zeros((0, 2)), np.zeros(2), "at least one image and one lambda"),
        (np.zeros((10, 2)), np.array([1.0, 1.0]), "strictly increasing"),
        (np.zeros((10, 2)), np.array([1.0, 0.0]), "strictly increasing"),
    ],
)
def test_grid_shape_errors(losses: np.ndarray, lambdas: np.ndarray, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        lambda_hat_from_curves(losses, lambdas, 0.2)


@pytest.mark.parametrize(("low", "high", "bound"), [(-0.1, 0.5, 1.0), (0.0, 1.1, 1.0), (0.0, 2.5, 2.0)])
def test_grid_losses_out_of_range(low: float, high: float, bound: float) -> None:
    losses = np.zeros((10, 2))
    losses[0, 0] = low
    losses[1, 0] = high
    with pytest.raises(CalibrationError, match=r"losses must lie in \[0, B\]"):
        lambda_hat_from_curves(losses, np.array([0.0, 1.0]), 0.2 * bound, bound=bound)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), "0.1", None])
def test_alpha_outside_open_interval(alpha: object) -> None:
    # a bad α is a bad argument (ParameterError), not a calibration that failed
    with pytest.raises(ParameterError, match=r"^alpha must (be a number in|lie in) \(0, 1\), got"):
        lambda_hat_from_curves(np.zeros((50, 2)), np.array([0.0, 1.0]), alpha)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"^alpha must (be a number in|lie in) \(0, 1\), got"):
        order_statistic_lambda_hat(np.zeros(50), alpha)  # type: ignore[arg-type]


def test_alpha_versus_bound() -> None:
    # α = 1.5 is fine for B = 2 but not for B = 1
    lambda_hat_from_curves(np.zeros((5, 1)), np.array([0.0]), 1.5, bound=2.0)
    with pytest.raises(ParameterError, match=r"alpha must lie in \(0, 2\), got 2.0"):
        lambda_hat_from_curves(np.zeros((5, 1)), np.array([0.0]), 2.0, bound=2.0)


# --------------------------------------------------------------------------- order statistic


def test_order_statistic_hand() -> None:
    # n = 9, α = 0.2: ⌈10·0.8⌉ = 8th smallest of 1..9 → 8
    assert order_statistic_lambda_hat(np.arange(9, 0, -1, dtype=float), 0.2) == 8.0
    # n = 19, α = 0.1: ⌈20·0.9⌉ = 18th smallest
    lam = np.random.default_rng(0).permutation(np.arange(19.0))
    assert order_statistic_lambda_hat(lam, 0.1) == 17.0


def test_order_statistic_coco_animals_edge() -> None:
    # n = 275, α = 0.25: ⌊276·0.25 − 1⌋ = 68 exactly, rank 275 − 68 = 207 = ⌈276·0.75⌉
    lam = np.random.default_rng(1).permutation(np.arange(1.0, 276.0))
    assert order_statistic_lambda_hat(lam, 0.25) == 207.0
    assert order_statistic_lambda_hat(lam, Fraction(1, 4)) == 207.0
    assert order_statistic_lambda_hat(lam, np.float64(0.25)) == 207.0


@pytest.mark.parametrize(("n", "alpha_s"), FRAGILE[:: max(len(FRAGILE) // 60, 1)])
def test_order_statistic_fragile_equals_exact_rank(n: int, alpha_s: str) -> None:
    lam = np.random.default_rng(n).permutation(np.arange(1.0, n + 1.0))
    rank = math.ceil((n + 1) * (1 - Fraction(alpha_s)))
    assert order_statistic_lambda_hat(lam, float(alpha_s)) == float(rank)


def test_order_statistic_brute_force_random_with_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        alpha_s = f"{rng.integers(2, 60) / 100:.2f}"
        alpha = Fraction(alpha_s)
        low = max(math.ceil(1 / alpha - 1), 1)
        n = int(rng.integers(low, low + 60))
        lam = rng.integers(0, 8, size=n).astype(float)  # many ties
        expected = _brute_order_statistic(lam, alpha)
        assert order_statistic_lambda_hat(lam, float(alpha_s)) == expected
        rank = math.ceil((n + 1) * (1 - alpha))
        assert expected == np.sort(lam)[rank - 1]


def test_order_statistic_errors() -> None:
    with pytest.raises(
        InsufficientCalibrationError, match=r"alpha = 0\.05: n = 18, .* = 19;.*1/\(n\+1\) = 0\.05264"
    ):
        order_statistic_lambda_hat(np.zeros(18), 0.05)
    with pytest.raises(CalibrationError, match="NaN"):
        order_statistic_lambda_hat(np.r_[np.zeros(20), np.nan], 0.1)
    with pytest.raises(CalibrationError, match="non-empty 1-D"):
        order_statistic_lambda_hat(np.zeros((5, 4)), 0.3)
    with pytest.raises(CalibrationError, match="non-empty 1-D"):
        order_statistic_lambda_hat([], 0.3)


def test_order_statistic_lambda_max() -> None:
    # n = 19, α = 0.1 allows 1 uncovered image (λ = inf)
    lam = np.r_[np.arange(18.0), np.inf]
    assert order_statistic_lambda_hat(lam, 0.1) == 17.0
    lam2 = np.r_[np.arange(17.0), np.inf, np.inf]
    with pytest.raises(LambdaMaxReachedError, match=r"2 of 19 .* at most 1"):
        order_statistic_lambda_hat(lam2, 0.1)
    with pytest.raises(LambdaMaxReachedError, match="lambda_max=10"):
        order_statistic_lambda_hat(np.arange(19.0), 0.1, lambda_max=10.0)
    assert order_statistic_lambda_hat(np.arange(19.0), 0.1, lambda_max=17.0) == 17.0


def test_order_statistic_large_bound_every_image_may_fail() -> None:
    # B = 2, α = 1.5, n = 10: ⌊11·1.5 − 2⌋ = 14 ≥ n, every λ satisfies the rule → the smallest λ_i
    lam = np.random.default_rng(9).permutation(np.arange(1.0, 11.0))
    assert order_statistic_lambda_hat(lam, 1.5, bound=2.0) == 1.0


# --------------------------------------------------------------------------- ThresholdRiskCurve


def _random_nonconformity(
    rng: np.random.Generator, n: int, sizes: np.ndarray, levels: int
) -> list[np.ndarray]:
    # scores on a coarse grid so that ties within and across images are frequent
    return [rng.integers(0, levels + 1, size=int(s)) / levels for s in sizes[:n]]


def test_threshold_hand_case() -> None:
    # two images, n = 2 (needs α ≥ 1/3). Image 0: r = {0.1, 0.5}; image 1: r = {0.3}
    # R̂(λ) = ½(#{r>λ}/2 + #{r>λ}/1): λ<0.1: 1; [0.1,0.3): ½(½+1)=0.75; [0.3,0.5): 0.25; ≥0.5: 0
    curve = ThresholdRiskCurve.from_nonconformity([np.array([0.1, 0.5]), np.array([0.3])])
    assert curve.empirical_risk(0.0) == 1.0
    assert curve.empirical_risk(0.1) == 0.75
    assert curve.empirical_risk(0.2) == 0.75
    assert curve.empirical_risk(0.3) == 0.25
    assert curve.empirical_risk(0.5) == 0.0
    np.testing.assert_array_equal(curve.empirical_risk(np.array([0.05, 0.4, 0.9])), [1.0, 0.25, 0.0])
    # α* = (3α − 1)/2: α = 0.5 → 0.25 → λ̂ = 0.3; α = 0.45 → 0.175 → λ̂ = 0.5; α = 0.9 → 0.85 → 0.1
    assert curve.lambda_hat(0.5) == 0.3
    assert curve.lambda_hat(0.45) == 0.5
    assert curve.lambda_hat(0.9) == 0.1


def test_threshold_lambda_hat_clamped_at_zero() -> None:
    # α* ≥ 1 is impossible (α < 1), but scores below 0 (S slightly above 1) must still give λ̂ ≥ 0
    curve = ThresholdRiskCurve.from_nonconformity([np.array([-0.2])] * 10)
    assert curve.lambda_hat(0.5) == 0.0


def test_threshold_from_scores() -> None:
    s = [np.array([0.9, 0.5]), np.array([0.7])]
    a = ThresholdRiskCurve.from_scores(s)
    b = ThresholdRiskCurve.from_nonconformity([1 - x for x in s])
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.risk, b.risk)


def test_threshold_brute_force_dyadic_sizes() -> None:
    """|Y_i| ∈ {1, 2, 4, 8}: sums are exact in floating point, so λ̂ must equal the exact brute force."""
    rng = np.random.default_rng(3)
    for _ in range(150):
        alpha_s = f"{rng.integers(5, 50) / 100:.2f}"
        n = int(rng.integers(math.ceil(1 / Fraction(alpha_s) - 1), 40))
        sizes = 2 ** rng.integers(0, 4, size=n)
        r = _random_nonconformity(rng, n, sizes, levels=int(rng.integers(3, 12)))
        curve = ThresholdRiskCurve.from_nonconformity(r)
        assert curve.lambda_hat(float(alpha_s)) == _brute_threshold_lambda(r, Fraction(alpha_s))


def test_threshold_brute_force_any_sizes() -> None:
    """Arbitrary |Y_i|: equal to the exact brute force except where R̂ hits α* within round-off."""
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(150):
        alpha_s = f"{rng.integers(5, 50) / 100:.2f}"
        alpha = Fraction(alpha_s)
        n = int(rng.integers(math.ceil(1 / alpha - 1), 30))
        sizes = rng.integers(1, 12, size=n)
        r = _random_nonconformity(rng, n, sizes, levels=int(rng.integers(3, 20)))
        target = ((n + 1) * alpha - 1) / n
        cands = np.unique(np.r_[0.0, np.concatenate(r)])
        risks = [sum(Fraction(int(np.sum(x > lam)), x.size) for x in r) / n for lam in cands]
        if any(abs(float(risk - target)) < 1e-12 for risk in risks):
            continue
        checked += 1
        curve = ThresholdRiskCurve.from_nonconformity(r)
        assert curve.lambda_hat(float(alpha_s)) == _brute_threshold_lambda(r, alpha)
    assert checked > 100


def test_threshold_single_pixel_equals_order_statistic() -> None:
    """One ground-truth pixel per image: FNR is 0/1, so CRC must pick the same order statistic as split CP."""
    rng = np.random.default_rng(5)
    for n in range(4, 300, 3):
        for alpha in (0.05, 0.1, 0.15, 0.2, 0.25, 0.29, 0.3, 0.33):
            if n < min_calibration_size(alpha):
                continue
            r = rng.random(n)
            curve = ThresholdRiskCurve.from_nonconformity([np.array([x]) for x in r])
            rank = math.ceil((n + 1) * (1 - exact_fraction(alpha)))
            assert curve.lambda_hat(alpha) == np.sort(r)[rank - 1], (n, alpha)


def test_threshold_empirical_risk_matches_direct() -> None:
    rng = np.random.default_rng(6)
    for _ in range(30):
        n = int(rng.integers(1, 15))
        r = _random_nonconformity(rng, n, rng.integers(1, 20, size=n), levels=10)
        curve = ThresholdRiskCurve.from_nonconformity(r)
        lams = np.r_[np.unique(np.concatenate(r)), rng.uniform(-0.2, 1.2, 20)]
        direct = np.array([np.mean([np.mean(x > lam) for x in r]) for lam in lams])
        np.testing.assert_allclose(curve.empirical_risk(lams), direct, rtol=0, atol=1e-14)
        for lam, want in zip(lams[:5], direct[:5], strict=True):
            assert float(curve.empirical_risk(float(lam))) == pytest.approx(want, abs=1e-14)


def test_threshold_curve_structure() -> None:
    rng = np.random.default_rng(7)
    r = _random_nonconformity(rng, 12, rng.integers(1, 30, size=12), levels=7)
    curve = ThresholdRiskCurve.from_nonconformity(r)
    assert curve.n == 12
    assert np.all(np.diff(curve.values) < 0)  # distinct, descending
    assert np.all(np.diff(curve.risk) > 0)  # strictly increasing risk
    assert curve.risk[0] == 0.0
    np.testing.assert_array_equal(curve.values, np.unique(np.concatenate(r))[::-1])


def test_threshold_grid_consistency() -> None:
    """lambda_hat_from_curves on a grid containing every candidate agrees with the exact curve."""
    rng = np.random.default_rng(8)
    for _ in range(60):
        alpha = float(f"{rng.integers(5, 50) / 100:.2f}")
        n = int(rng.integers(min_calibration_size(alpha), 30))
        sizes = 2 ** rng.integers(0, 4, size=n)
        r = _random_nonconformity(rng, n, sizes, levels=int(rng.integers(3, 12)))
        grid = np.unique(np.r_[0.0, np.concatenate(r), rng.uniform(0, 1, 50)])
        losses = np.array([[np.mean(x > lam) for lam in grid] for x in r])
        exact = ThresholdRiskCurve.from_nonconformity(r).lambda_hat(alpha)
        assert lambda_hat_from_curves(losses, grid, alpha) == exact


def test_threshold_errors() -> None:
    with pytest.raises(CalibrationError, match="at least one calibration image"):
        ThresholdRiskCurve.from_nonconformity([])
    with pytest.raises(CalibrationError, match="image 1 has an empty ground truth"):
        ThresholdRiskCurve.from_nonconformity([np.array([0.1]), np.array([])])
    with pytest.raises(CalibrationError, match="image 0 contain NaN"):
        ThresholdRiskCurve.from_nonconformity([np.array([np.nan, 0.1])])
    curve = ThresholdRiskCurve.from_nonconformity([np.array([0.1])] * 5)
    with pytest.raises(
        InsufficientCalibrationError, match=r"alpha = 0\.1: n = 5, .* = 9;.*1/\(n\+1\) = 0\.1667"
    ):
        curve.lambda_hat(0.1)
    with pytest.raises(ParameterError, match="alpha must lie in"):
        curve.lambda_hat(1.0)
