"""Tests of the bands (core/bands.py), the guarantee checks and harness (testing/guarantees.py), and statistical tests of CRC and Consema.

The ``slow`` tests run R independent calibration/test repetitions on fresh synthetic data with a
known truth and compare the outcome with an acceptance band; each docstring states the
false-alarm rate of a correct implementation and, for the tests of the tests (the same harness
on a deliberately wrong rule, ``tests/_wrong_rules.py``), the power against that rule and how it
was computed. Seeds are fixed (base seeds as before this design, or the next free thousand), not
chosen by looking at outcomes.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from _wrong_rules import scaled_target, shifted_rank
from scipy import integrate, stats

from napari_conformal.core.bands import (
    BETTING_FRACTIONS,
    acceptance_probability,
    band_from_pmf,
    bernoulli_kl,
    betting_log_wealth,
    betting_mean_interval,
    covered_count_pmf,
    crc_risk_lower_bound,
    crc_risk_tolerance,
    repeated_splits,
    splitcp_coverage_band,
    splitcp_false_alarm,
    splitcp_power,
    splitcp_rank,
    total_covered_pmf,
)
from napari_conformal.core.methods.consema import ConsemaMethod
from napari_conformal.core.methods.pixelwise import APS
from napari_conformal.core.methods.threshold import CRCMethod
from napari_conformal.errors import ConformalError, InsufficientCalibrationError
from napari_conformal.testing.guarantees import (
    GuaranteeCheck,
    check_crc_risk,
    check_fnr_risk,
    check_split_coverage,
    run_repetitions,
)
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

# --------------------------------------------------------------------------- exact laws


def test_splitcp_rank_hand() -> None:
    assert splitcp_rank(20, 0.1) == 19  # ⌈21·0.9⌉
    assert splitcp_rank(19, 0.1) == 18  # ⌈20·0.9⌉
    assert splitcp_rank(275, 0.25) == 207
    assert splitcp_rank(9, 0.1) == 9
    with pytest.raises(InsufficientCalibrationError):
        splitcp_rank(8, 0.1)


def test_covered_count_pmf_uniform_case() -> None:
    # n = 1, rank 1: coverage ~ Beta(1, 1) = U(0, 1), so the count is uniform on 0..n_test
    np.testing.assert_allclose(covered_count_pmf(1, 7, 1), np.full(8, 1 / 8), rtol=1e-12)


def test_covered_count_pmf_matches_integral() -> None:
    """BetaBinomial pmf = ∫ Beta(u; k, n+1−k) · Binom(j; n_test, u) du, by quadrature."""
    n, n_test, k = 12, 6, 10
    pmf = covered_count_pmf(n, n_test, k)
    for j in range(n_test + 1):
        val, _ = integrate.quad(
            lambda u, j=j: stats.beta.pdf(u, k, n + 1 - k) * stats.binom.pmf(j, n_test, u), 0, 1
        )
        assert pmf[j] == pytest.approx(val, rel=1e-7, abs=1e-12)


def test_total_pmf_is_convolution() -> None:
    one = covered_count_pmf(10, 5, 9)
    want = np.convolve(np.convolve(one, one), one)
    np.testing.assert_allclose(total_covered_pmf(10, 5, 3, 9), want, atol=1e-15)
    np.testing.assert_allclose(total_covered_pmf(10, 5, 1, 9), one)


def test_total_pmf_moments() -> None:
    n, n_test, reps, k = 20, 30, 40, 19
    pmf = total_covered_pmf(n, n_test, reps, k)
    j = np.arange(pmf.size)
    p = k / (n + 1)
    mean = float((j * pmf).sum())
    assert mean == pytest.approx(reps * n_test * p, rel=1e-10)
    # Var of one repetition: n_test p(1−p) + n_test(n_test−1) Var(U_(k)), Var U = p(1−p)/(n+2)
    var_one = n_test * p * (1 - p) + n_test * (n_test - 1) * p * (1 - p) / (n + 2)
    assert float(((j - mean) ** 2 * pmf).sum()) == pytest.approx(reps * var_one, rel=1e-8)


def test_band_from_pmf_hand() -> None:
    pmf = np.full(8, 1 / 8)  # uniform on 0..7, dyadic so the sums are exact
    # two-sided 0.25: tails 0.125 → P(X < 1) = 0.125 ok, P(X < 2) = 0.25 not; P(X > 6) = 0.125 ok
    assert band_from_pmf(pmf, 0.25) == (1, 6)
    # one-sided 0.25: P(X < 2) = 0.25 ok, P(X < 3) too much
    assert band_from_pmf(pmf, 0.25, two_sided=False) == (2, 7)
    assert band_from_pmf(pmf, 0.1) == (0, 7)


def test_band_from_pmf_maximal_property() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        pmf = rng.dirichlet(np.ones(int(rng.integers(2, 40))))
        fa = float(rng.uniform(0.01, 0.5))
        lo, hi = band_from_pmf(pmf, fa)
        below = pmf[:lo].sum()
        above = pmf[hi + 1 :].sum()
        assert below <= fa / 2 + 1e-15 and above <= fa / 2 + 1e-15
        assert pmf[: lo + 1].sum() > fa / 2 - 1e-15  # one more would exceed
        assert pmf[hi:].sum() > fa / 2 - 1e-15
        lo1, hi1 = band_from_pmf(pmf, fa, two_sided=False)
        assert hi1 == pmf.size - 1 and pmf[:lo1].sum() <= fa + 1e-15 < pmf[: lo1 + 1].sum() + 1e-15


def test_band_from_pmf_errors() -> None:
    with pytest.raises(ConformalError, match="pmf"):
        band_from_pmf(np.array([0.5, -0.1, 0.6]), 0.1)
    with pytest.raises(ConformalError, match="false_alarm"):
        band_from_pmf(np.array([0.5, 0.5]), 0.0)


def test_splitcp_law_against_simulation() -> None:
    """Simulate split CP from first principles (order statistic of n uniforms, then test uniforms).

    The empirical cdf of 20 000 draws must be within 0.02 of the exact law everywhere; by the DKW
    inequality a correct law fails with probability ≤ 2·exp(−2·20000·0.02²) ≈ 2e-7.
    """
    rng = np.random.default_rng(1)
    n, n_test, alpha, sims = 19, 8, 0.2, 20000
    k = splitcp_rank(n, alpha)
    cal = np.sort(rng.random((sims, n)), axis=1)
    lam = cal[:, k - 1]
    covered = (rng.random((sims, n_test)) <= lam[:, None]).sum(axis=1)
    emp = np.bincount(covered, minlength=n_test + 1) / sims
    exact = covered_count_pmf(n, n_test, k)
    assert np.max(np.abs(np.cumsum(emp) - np.cumsum(exact))) < 0.02


def test_check_split_coverage_pass_fail() -> None:
    n, n_test, alpha, reps = 20, 30, 0.1, 50
    lo, hi = splitcp_coverage_band(n, n_test, alpha, reps)
    mean_count = n_test * 19 / 21
    ok = check_split_coverage(np.full(reps, round(mean_count)), n, n_test, alpha)
    assert isinstance(ok, GuaranteeCheck) and ok.passed and ok.band == (lo, hi) and ok.false_alarm == 1e-3
    assert "PASS" in ok.message
    low = check_split_coverage(np.full(reps, 20), n, n_test, alpha)
    assert not low.passed and "FAIL" in low.message and low.statistic == 20 * reps
    high = check_split_coverage(np.full(reps, n_test), n, n_test, alpha)
    assert not high.passed
    assert check_split_coverage(np.full(reps, n_test), n, n_test, alpha, two_sided=False).passed
    assert check_split_coverage(np.full(reps, 27.0), n, n_test, alpha).passed  # whole floats accepted


@pytest.mark.parametrize(
    ("counts", "match"),
    [(np.array([1, 2, 31]), "0..n_test"), (np.array([-1, 2]), "0..n_test"), (np.array([1.5]), "whole"),
     (np.zeros((2, 2), int), "1-D"), (np.array([], int), "1-D")],
)  # fmt: skip
def test_check_split_coverage_errors(counts: np.ndarray, match: str) -> None:
    with pytest.raises(ConformalError, match=match):
        check_split_coverage(counts, 20, 30, 0.1)


# --------------------------------------------------------------------------- CRC risk tolerance


def test_bernoulli_kl_hand() -> None:
    assert bernoulli_kl(0.1, 0.1) == 0.0
    assert bernoulli_kl(1.0, 0.25) == pytest.approx(math.log(4))
    assert bernoulli_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert bernoulli_kl(0.2, 0.1) == pytest.approx(0.2 * math.log(2) + 0.8 * math.log(0.8 / 0.9))


@pytest.mark.parametrize(("alpha", "reps", "fa"), [(0.1, 400, 1e-3), (0.2, 100, 1e-4), (0.05, 1000, 1e-3)])
def test_crc_tolerance_solves_kl_equation(alpha: float, reps: int, fa: float) -> None:
    t = crc_risk_tolerance(alpha, reps, fa)
    level = math.log(1 / fa) / reps
    assert bernoulli_kl(alpha + t, alpha) >= level
    assert bernoulli_kl(alpha + t, alpha) == pytest.approx(level, rel=1e-9)
    assert t <= math.sqrt(level / 2) + 1e-12  # Pinsker: KL ≥ 2t², so never looser than Hoeffding


def test_crc_tolerance_bound_holds_for_bernoulli_worst_case() -> None:
    """For Bernoulli(α) repetitions (the extremal law), the exact binomial tail is ≤ false_alarm."""
    for alpha, reps, fa in [(0.1, 50, 0.01), (0.2, 200, 1e-3), (0.3, 30, 0.05)]:
        t = crc_risk_tolerance(alpha, reps, fa)
        # P(mean ≥ α + t) = P(Bin(R, α) ≥ ⌈R(α+t)⌉)
        k = math.ceil(reps * (alpha + t) - 1e-12)
        assert stats.binom.sf(k - 1, reps, alpha) <= fa


def test_crc_tolerance_scaling_and_limits() -> None:
    assert crc_risk_tolerance(0.2, 100, 1e-3, bound=2.0) == pytest.approx(
        2 * crc_risk_tolerance(0.1, 100, 1e-3)
    )
    assert crc_risk_tolerance(0.1, 2, 1e-3) == pytest.approx(0.9)  # vacuous: R·KL(1‖α) < ln 1000
    ts = [crc_risk_tolerance(0.1, r, 1e-3) for r in (10, 100, 1000)]
    assert ts[0] > ts[1] > ts[2] > 0
    with pytest.raises(ConformalError, match="alpha"):
        crc_risk_tolerance(1.0, 10)
    with pytest.raises(ConformalError, match="reps"):
        crc_risk_tolerance(0.1, 0)
    with pytest.raises(ConformalError, match="false_alarm"):
        crc_risk_tolerance(0.1, 10, false_alarm=1.0)


def test_check_crc_risk() -> None:
    t = crc_risk_tolerance(0.1, 100, 1e-3)
    ok = check_crc_risk(np.full(100, 0.1 + t - 1e-9), 0.1)
    assert ok.passed and ok.band == (0.0, pytest.approx(0.1 + t))
    bad = check_crc_risk(np.full(100, 0.1 + t + 1e-9), 0.1)
    assert not bad.passed and "FAIL" in bad.message
    with pytest.raises(ConformalError, match=r"\[0, B\]"):
        check_crc_risk(np.array([0.1, 1.2]), 0.1)
    with pytest.raises(ConformalError, match="NaN"):
        check_crc_risk(np.array([0.1, np.nan]), 0.1)


# --------------------------------------------------------------------------- split CP: power and ties


def test_splitcp_power_and_false_alarm() -> None:
    n, n_test, alpha, reps, fa = 9, 20, 0.2, 40, 1e-3
    k = splitcp_rank(n, alpha)
    band = splitcp_coverage_band(n, n_test, alpha, reps, fa)
    want = 1 - acceptance_probability(total_covered_pmf(n, n_test, reps, k - 1), band)
    assert splitcp_power(n, n_test, alpha, reps, k - 1, fa) == pytest.approx(want, abs=1e-15)
    exact = splitcp_false_alarm(n, n_test, alpha, reps, fa)
    assert exact == pytest.approx(splitcp_power(n, n_test, alpha, reps, k, fa)) and 0 < exact <= fa
    assert splitcp_false_alarm(n, n_test, alpha, reps, fa, two_sided=False) <= fa
    # more repetitions: more power against the same wrong rank
    assert splitcp_power(n, n_test, alpha, 4 * reps, k - 1, fa) > splitcp_power(
        n, n_test, alpha, reps, k - 1, fa
    )


def test_sandwich_band_keeps_both_tails_under_ties() -> None:
    """Scores on a grid of 0.05 (ties): the covered count overshoots the exact law, the strict count undershoots it.

    20 000 simulated experiments of R = 5 repetitions of split CP from first principles (n = 9,
    α = 0.2, 20 test points each). At a false-alarm rate of 0.2 (0.1 per side, large so that tails
    are measurable), the lower tail of the covered count and the upper tail of the count strictly
    below λ̂ stay within their 0.1 (the exact pathwise sandwich of core/bands.py; observed 0.04
    each); the covered count's upper tail (0.19) and the strict count's lower tail (0.15) do not,
    which is why the two-sided check takes one side from each. An estimated tail probability has
    standard error ≤ 0.003; the margins are ≥ 0.01.
    """
    rng = np.random.default_rng(11)
    n, n_test, alpha, sims, reps, fa = 9, 20, 0.2, 20_000, 5, 0.2
    k = splitcp_rank(n, alpha)
    cal = np.sort(np.floor(20 * rng.random((sims, reps, n))) / 20, axis=2)
    lam = cal[:, :, k - 1 : k]
    test = np.floor(20 * rng.random((sims, reps, n_test))) / 20
    at, below = (test <= lam).sum(axis=2), (test < lam).sum(axis=2)
    lower, upper = splitcp_coverage_band(n, n_test, alpha, reps, fa)
    assert np.mean(at.sum(axis=1) < lower) <= fa / 2 + 0.01
    assert np.mean(below.sum(axis=1) > upper) <= fa / 2 + 0.01
    assert np.mean(at.sum(axis=1) > upper) > fa / 2 + 0.05  # the naive upper side fails under ties
    assert np.mean(below.sum(axis=1) < lower) > fa / 2 + 0.02  # and so would a strict lower side
    passed = [
        check_split_coverage(a, n, n_test, alpha, fa, strict_counts=b).passed
        for a, b in zip(at[:2000], below[:2000], strict=True)
    ]
    assert 1 - np.mean(passed) <= fa + 0.03  # the check itself (2000 experiments: s.e. ≤ 0.01)
    with pytest.raises(ConformalError, match="strict_counts"):
        check_split_coverage(at[0], n, n_test, alpha, fa, strict_counts=at[0] + 1)


# --------------------------------------------------------------------------- betting test of a bounded mean


@pytest.mark.parametrize(
    ("law", "mean"),
    [("bernoulli", 0.1), ("beta", 0.1), ("beta", 0.3), ("two-point", 0.2)],
)
def test_betting_wealth_is_a_valid_test(law: str, mean: float) -> None:
    """At the true mean, P(log W ≥ ln(1/δ)) ≤ δ for both directions (Markov on E W ≤ 1), by simulation.

    4000 simulated experiments of R = 25 draws each, δ = 0.1: an estimated rejection rate has
    standard error ≤ 0.005, the margin is 0.02. The laws include the extremal Bernoulli.
    """
    rng = np.random.default_rng(5)
    sims, reps, delta = 4000, 25, 0.1
    if law == "bernoulli":
        x = (rng.random((sims, reps)) < mean).astype(float)
    elif law == "beta":
        x = rng.beta(20 * mean, 20 * (1 - mean), (sims, reps))
    else:  # 0 or 2μ with equal probability
        x = 2 * mean * (rng.random((sims, reps)) < 0.5)
    for upper in (True, False):
        rejected = np.mean([betting_log_wealth(row, mean, upper) >= math.log(1 / delta) for row in x])
        assert rejected <= delta + 0.02, (law, upper, rejected)


def test_betting_interval_is_tight_and_consistent() -> None:
    rng = np.random.default_rng(2)
    x = np.clip(rng.normal(0.1, 0.03, 60), 0, 1)
    lo, hi = betting_mean_interval(x, 1e-3)
    assert lo < x.mean() < hi
    level = math.log(2 / 1e-3)
    # the edges are where the wealth crosses the threshold
    assert (
        betting_log_wealth(x, lo - 1e-6, upper=True) >= level > betting_log_wealth(x, lo + 1e-6, upper=True)
    )
    assert (
        betting_log_wealth(x, hi + 1e-6, upper=False) >= level > betting_log_wealth(x, hi - 1e-6, upper=False)
    )
    # far tighter above the mean than the Chernoff–Hoeffding tolerance of the same false-alarm rate
    assert x.mean() - lo < 0.25 * crc_risk_tolerance(0.1, 60, 1e-3)
    lo1, hi1 = betting_mean_interval(x, 1e-3, two_sided=False)
    assert hi1 == 1.0 and lo < lo1 < x.mean()  # one-sided: the whole false-alarm rate on the lower edge
    lo2, hi2 = betting_mean_interval(2 * x, 1e-3, bound=2.0)
    assert (lo2, hi2) == pytest.approx((2 * lo, 2 * hi), abs=1e-9)
    assert len(BETTING_FRACTIONS) == 9 and max(BETTING_FRACTIONS) == 1.0
    with pytest.raises(ConformalError, match=r"\[0, B\]"):
        betting_mean_interval(np.array([0.1, 1.5]))
    with pytest.raises(ConformalError, match="fractions"):
        betting_log_wealth(x, 0.1, fractions=(0.0, 0.5))


def test_crc_risk_lower_bound() -> None:
    assert crc_risk_lower_bound(0.1, 99) == pytest.approx(0.08)
    assert crc_risk_lower_bound(0.2, 9, bound=0.5) == pytest.approx(0.1)
    assert crc_risk_lower_bound(0.1, 10) < 0  # vacuous
    with pytest.raises(ConformalError):
        crc_risk_lower_bound(0.1, 0)


def test_check_fnr_risk() -> None:
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(0.09, 0.02, 80), 0, 1)
    ok = check_fnr_risk(x, 0.1, 100)
    assert ok.passed and ok.band == (pytest.approx(0.1 - 2 / 101), 0.1) and ok.interval is not None
    assert "PASS" in ok.message and ok.statistic == pytest.approx(x.mean())
    high = check_fnr_risk(x + 0.05, 0.1, 100)
    assert not high.passed and "above alpha" in high.message
    low = check_fnr_risk(np.full(200, 0.0), 0.1, 100)
    assert not low.passed and "below the CRC lower bound" in low.message
    assert check_fnr_risk(np.full(200, 0.0), 0.1, 100, two_sided=False).passed
    # the old Chernoff–Hoeffding check accepts what the betting interval rejects
    assert check_crc_risk(x + 0.05, 0.1).passed
    for bad, match in (
        (np.array([0.1, np.nan]), "NaN"),
        (np.array([0.1, 1.2]), r"\[0, B\]"),
        (np.zeros((2, 2)), "1-D"),
    ):
        with pytest.raises(ConformalError, match=match):
            check_fnr_risk(bad, 0.1, 20)
    with pytest.raises(ConformalError, match="alpha"):
        check_fnr_risk(x, 1.5, 20)


# --------------------------------------------------------------------------- the harness


def test_run_repetitions_bookkeeping() -> None:
    """λ̂ and realised values are those of the method's own steps; variants reuse the curves."""
    n_cal, n_test, reps = 9, 6, 3

    def draw(r):
        _, samples, labels = lowrank_multiclass_dataset(n_cal + n_test, (16, 16), n_samples=4, seed=70 + r)
        return None, samples, labels

    aps = APS()
    out = run_repetitions(
        {"aps": aps},
        draw,
        n_cal=n_cal,
        n_test=n_test,
        reps=reps,
        levels=[(0.2, 0.8), (0.1, 0.9)],
        variants={"up": ("aps", shifted_rank(APS, +1)())},
        strict=True,
    )
    for r in range(reps):
        _, samples, labels = draw(r)
        prepared = [aps.prepare(None, s) for s in samples]
        curves = [aps.curve(p, y) for p, y in zip(prepared[:n_cal], labels[:n_cal], strict=True)]
        lam = aps.lambda_hat(curves, alpha=0.2, nu=0.8)
        assert out.lambda_hats["aps", 0.2, 0.8][r] == lam
        covered = [
            aps.evaluate(p, y, lam, alpha=0.2, nu=0.8)["covered"]
            for p, y in zip(prepared[n_cal:], labels[n_cal:], strict=True)
        ]
        assert list(out.realised["aps", 0.2, 0.8][r]) == covered
    assert np.all(out.strict_counts("aps", 0.2, 0.8) <= out.covered_counts("aps", 0.2, 0.8))
    # rank k + 1 = 10 of 9 at α = 0.1 is the trivial set: λ̂ = ∞ covers every test image
    assert np.all(np.isinf(out.lambda_hats["up", 0.1, 0.9]))
    assert np.all(out.covered_counts("up", 0.1, 0.9) == n_test)
    assert out.risk == {"aps": "miscoverage", "up": "miscoverage"}
    with pytest.raises(ConformalError, match="no outcome"):
        out.covered_counts("aps", 0.3, 0.8)
    with pytest.raises(ConformalError, match="unknown base"):
        run_repetitions(
            {"aps": aps},
            draw,
            n_cal=n_cal,
            n_test=n_test,
            reps=1,
            levels=[(0.2, 0.8)],
            variants={"x": ("y", aps)},
        )
    with pytest.raises(ConformalError, match="need n_cal"):
        run_repetitions({"aps": aps}, draw, n_cal=n_cal, n_test=n_test + 1, reps=1, levels=[(0.2, 0.8)])
    fnr = run_repetitions(
        {"crc": CRCMethod()},
        lambda r: binary_blobs_dataset(15, (16, 16), n_samples=2, seed=r),
        n_cal=10,
        n_test=5,
        reps=2,
        levels=[(0.2, None)],
        strict=True,
    )
    assert fnr.strict == {} and fnr.mean_risks("crc", 0.2).shape == (2,)
    with pytest.raises(ConformalError, match="strict counts"):
        run_repetitions({"aps": aps}, draw, n_cal=n_cal, n_test=n_test, reps=1, levels=[(0.2, 0.8)]).check(
            "aps", 0.2, 0.8
        )


def test_wrong_rules_differ_only_where_intended() -> None:
    """shifted_rank(·, 0) is the real order statistic; scaled_target(·, 1) the real CRC λ̂; nothing is registered."""
    from napari_conformal.core.methods.base import available_methods

    images, samples, labels = binary_blobs_dataset(25, (32, 32), n_samples=2, seed=3, bias=0.5)
    consema, crc = ConsemaMethod(), CRCMethod()
    prep = [consema.prepare(images[i], samples[i]) for i in range(25)]
    curves = [consema.curve(p, labels[i]) for i, p in enumerate(prep) if p.prediction.any()]
    same = shifted_rank(ConsemaMethod, 0)()
    for alpha in (0.1, 0.2, 0.3):
        assert same.lambda_hat(curves, alpha=alpha) == consema.lambda_hat(curves, alpha=alpha)
    fnr_curves = [crc.curve(crc.prepare(images[i], samples[i]), labels[i]) for i in range(25)]
    for alpha in (0.1, 0.2):
        assert scaled_target(CRCMethod, 1.0)().lambda_hat(fnr_curves, alpha=alpha) == crc.lambda_hat(
            fnr_curves, alpha=alpha
        )
        assert scaled_target(CRCMethod, 1.5)().lambda_hat(fnr_curves, alpha=alpha) == crc.lambda_hat(
            fnr_curves, alpha=1.5 * alpha
        )
    assert sorted(available_methods()) == ["aps", "consema", "consign", "crc", "lac", "raps", "rwcp", "sacp"]


# --------------------------------------------------------------------------- splits


def test_repeated_splits() -> None:
    splits = list(repeated_splits(30, 10, 5, seed=3))
    assert len(splits) == 5
    for cal, test in splits:
        assert cal.size == 10 and test.size == 20
        assert not np.intersect1d(cal, test).size
        assert np.all(np.diff(cal) > 0) and np.all(np.diff(test) > 0)
        assert set(cal) | set(test) == set(range(30))
    again = list(repeated_splits(30, 10, 5, seed=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(splits, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in itertools.pairwise(splits))
    cal, test = next(repeated_splits(30, 10, 1, seed=0, n_test=5))
    assert test.size == 5
    with pytest.raises(ConformalError, match="exceeds"):
        next(repeated_splits(10, 8, 1, n_test=5))
    with pytest.raises(ConformalError, match="no test images"):
        next(repeated_splits(10, 10, 1))


# --------------------------------------------------------------------------- statistical tests

N_CAL, N_TEST, ALPHA, REPS = 20, 50, 0.1, 150


def _single_pixel_rep(rng: np.random.Generator, method: CRCMethod, n_img: int):
    """Fresh i.i.d. images (4×4) with one ground-truth pixel and continuous random probabilities."""
    fg = rng.random((n_img, 2, 4, 4))  # T = 2 samples
    samples = np.stack([1.0 - fg, fg], axis=2)
    labels = np.zeros((n_img, 4, 4), dtype=np.int32)
    pos = rng.integers(0, 16, size=n_img)
    labels.reshape(n_img, 16)[np.arange(n_img), pos] = 1
    prepared = [method.prepare(None, samples[i]) for i in range(n_img)]
    return prepared, labels


def _single_pixel_experiment(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Covered counts per repetition for the correct λ̂ and for the naive rule R̂ ≤ α."""
    rng = np.random.default_rng(seed)
    m = CRCMethod()
    good, naive = np.empty(REPS, int), np.empty(REPS, int)
    for r in range(REPS):
        prepared, labels = _single_pixel_rep(rng, m, N_CAL + N_TEST)
        curves = [m.curve(p, y) for p, y in zip(prepared[:N_CAL], labels[:N_CAL], strict=True)]
        lam = m.lambda_hat(curves, alpha=ALPHA)
        # the wrong rule, inline: plain empirical risk R̂(λ) ≤ α, no finite-sample correction
        risk = m.risk_curve(curves)
        lam_naive = float(risk.values[int(np.searchsorted(risk.risk, ALPHA, side="right")) - 1])
        hits = [(m.predict(p, lam)[y == 1][0], m.predict(p, lam_naive)[y == 1][0])
                for p, y in zip(prepared[N_CAL:], labels[N_CAL:], strict=True)]  # fmt: skip
        good[r], naive[r] = np.sum(hits, axis=0)
    return good, naive


@pytest.mark.slow
def test_crc_single_pixel_exact_band_and_naive_rule_rejected() -> None:
    """Standard CRC with one ground-truth pixel per image: the FNR is 0/1, so CRC is split CP.

    150 independent repetitions, each with fresh data (n_cal = 20, 50 test images, α = 0.1):
    λ̂ is the 19th of 20 calibration scores and the total covered count is the 150-fold
    convolution of BetaBinomial(50, 19, 2). Two-sided exact band, **false-alarm rate 1e-3**.

    The naive rule R̂(λ) ≤ α (no (n+1)/n correction) allows 2 uncovered images instead of 1, i.e.
    the 18th order statistic, covered count ~ BetaBinomial(50, 18, 3). The band must reject it;
    its exact miss probability (computed below from the band) is ≈ 6e-5.
    """
    good, naive = _single_pixel_experiment(seed=20240601)
    check = check_split_coverage(good, N_CAL, N_TEST, ALPHA, false_alarm=1e-3)
    assert check.passed, check.message
    wrong = check_split_coverage(naive, N_CAL, N_TEST, ALPHA, false_alarm=1e-3)
    band = splitcp_coverage_band(N_CAL, N_TEST, ALPHA, REPS, false_alarm=1e-3)
    miss = acceptance_probability(total_covered_pmf(N_CAL, N_TEST, REPS, 18), band)
    assert miss < 1e-4  # the design has power; the number itself is what the docstring states
    assert not wrong.passed, wrong.message


@pytest.mark.slow
def test_crc_single_pixel_wrong_alpha_star_rejected() -> None:
    """The misprinted target α* = (n+1)/n·α − 1/(n+1) instead of − 1/n must be caught.

    It differs from the correct rule only when (n+1)α lies just below an integer; with n = 19 and
    α = 0.149, (n+1)α = 2.98: the correct rule allows ⌊1.98⌋ = 1 uncovered image (18th of 19), the
    wrong one ⌊2.98 − 0.95⌋ = 2 (17th). 150 fresh repetitions with 50 test images each.
    The correct λ̂ passes the two-sided exact band (**false-alarm rate 1e-3**); the wrong one is
    rejected with exact miss probability < 1e-4 (asserted from the band).
    """
    n, alpha = 19, 0.149
    rng = np.random.default_rng(77)
    m = CRCMethod()
    good, wrong = np.empty(REPS, int), np.empty(REPS, int)
    for r in range(REPS):
        prepared, labels = _single_pixel_rep(rng, m, n + N_TEST)
        curves = [m.curve(p, y) for p, y in zip(prepared[:n], labels[:n], strict=True)]
        lam = m.lambda_hat(curves, alpha=alpha)
        risk = m.risk_curve(curves)
        target = (n + 1) / n * alpha - 1 / (n + 1)
        lam_wrong = float(risk.values[int(np.searchsorted(risk.risk, target, side="right")) - 1])
        test_scores = np.array(
            [1.0 - p.score[y == 1][0] for p, y in zip(prepared[n:], labels[n:], strict=True)]
        )
        good[r] = np.sum(test_scores <= lam)
        wrong[r] = np.sum(test_scores <= lam_wrong)
    assert splitcp_rank(n, alpha) == 18
    band = splitcp_coverage_band(n, N_TEST, alpha, REPS, false_alarm=1e-3)
    assert acceptance_probability(total_covered_pmf(n, N_TEST, REPS, 17), band) < 1e-4
    check = check_split_coverage(good, n, N_TEST, alpha, false_alarm=1e-3)
    assert check.passed, check.message
    assert not check_split_coverage(wrong, n, N_TEST, alpha, false_alarm=1e-3).passed


# --------------------------------------------------------------------------- CRC on blobs: the FNR family

CRC_N_CAL, CRC_N_TEST = 100, 20
CRC_LEVELS = ((0.1, None), (0.2, None))
# dimension → (shape, repetitions, base seed)
CRC_DESIGN = {"2d": ((32, 32), 120, 1000), "3d": ((16, 16, 16), 60, 2000)}
CRC_WRONG = {"target x1.5": 1.5, "target x2.5": 2.5, "target x0.5": 0.5}


@pytest.fixture(scope="module", params=sorted(CRC_DESIGN))
def crc_outcome(request):
    """One harness run per dimension: standard CRC and three wrong targets on the same draws."""
    shape, reps, seed0 = CRC_DESIGN[request.param]
    n = CRC_N_CAL + CRC_N_TEST
    out = run_repetitions(
        {"crc": CRCMethod()},
        lambda r: binary_blobs_dataset(n, shape, n_samples=2, seed=seed0 + r),
        n_cal=CRC_N_CAL,
        n_test=CRC_N_TEST,
        reps=reps,
        levels=CRC_LEVELS,
        variants={name: ("crc", scaled_target(CRCMethod, f)()) for name, f in CRC_WRONG.items()},
    )
    return request.param, out


@pytest.mark.slow
def test_crc_fnr_risk_on_blobs(crc_outcome) -> None:
    """CRC keeps α − 2/(n+1) ≤ E[FNR] ≤ α on blob data (2D and 3D), at α = 0.1 and 0.2.

    Each repetition draws fresh blob images (n_cal = 100, 20 test images) and records the mean
    test FNR X_r. :func:`~napari_conformal.testing.guarantees.check_fnr_risk` (the two-sided
    betting interval of E[X_r], exact for any law on [0, 1]) at false-alarm 5e-4 per level:
    **false-alarm rate ≤ 1e-3 per dimension** (two levels, union bound). The lower bound
    α − 2/101 holds because the blob scores are continuous (no jump of the loss at a fixed λ).
    """
    dim, out = crc_outcome
    for alpha, _ in CRC_LEVELS:
        check = out.check("crc", alpha, false_alarm=5e-4)
        assert check.passed, f"{dim}: {check.message}"


@pytest.mark.slow
def test_crc_wrong_target_is_rejected(crc_outcome) -> None:
    """The same check rejects CRC calibrated at 1.5α and 2.5α (both levels), and at 0.5α (α = 0.2, 2D).

    Power, by simulation: a pool of 400 (2D) / 300 (3D) further independent repetitions of the
    same design (seeds 7 000 000 +, disjoint from the test's) resampled 400 times into experiments
    of the test's size. Target 1.5α: mean FNR 0.142 at α = 0.1 and 0.293 at α = 0.2 (2D; 3D 0.144
    and 0.296), rejected in 1.000 of the resampled experiments at both levels in 2D (R = 120) and
    3D (R = 60; R = 40 would give 0.72 at α = 0.1). Target 2.5α: mean 0.243 / 0.492, power 1.000.
    Target 0.5α at α = 0.2 (mean 0.091, allowed ≥ 0.180): power 1.000 with R = 120 in 2D (0.28 at
    R = 100, 0 at R ≤ 80: the lower side is the weaker one, its bet is capped because a single
    repetition could have FNR 1); it is not asserted in 3D (R = 60) nor at α = 0.1 (allowed ≥ 0.080
    against a mean of 0.041). The old Chernoff–Hoeffding tolerance (:func:`check_crc_risk`, which
    accepts a mean up to 0.35 at α = 0.1 for R = 30) accepts target 1.5α here, as asserted.
    """
    dim, out = crc_outcome
    for alpha, _ in CRC_LEVELS:
        for name in ("target x1.5", "target x2.5"):
            check = out.check(name, alpha, false_alarm=5e-4)
            assert not check.passed and "above alpha" in check.message, f"{dim} {name}: {check.message}"
    if dim == "2d":
        check = out.check("target x0.5", 0.2, false_alarm=5e-4)
        assert not check.passed and "below" in check.message, check.message
    assert check_crc_risk(out.mean_risks("target x1.5", 0.1)[:30], 0.1, false_alarm=5e-4).passed


# --------------------------------------------------------------------------- Consema

CONSEMA_N_CAL, CONSEMA_N_TEST, CONSEMA_REPS = 9, 20, 120
CONSEMA_LEVELS = ((0.1, None), (0.2, None))  # τ = 1 − α
# blobs whose model misses a lot (wide logit slope, smooth large errors, negative bias), so that the
# dilation counts spread over ~30 values and rarely tie at the top order statistics
CONSEMA_DATA = {"width": 4.0, "smoothness": 8.0, "noise": 2.0, "bias": -1.0}


def _consema_draw(r: int):
    """Fresh 64×64 blob images with a non-empty hard prediction (an i.i.d. filter: exchangeability stays)."""
    n = CONSEMA_N_CAL + CONSEMA_N_TEST
    images, samples, labels = binary_blobs_dataset(
        n + 15, (64, 64), n_samples=2, seed=5000 + r, **CONSEMA_DATA
    )
    keep = np.flatnonzero((samples[:, :, 1].mean(axis=1) >= 0.5).reshape(len(samples), -1).any(axis=1))[:n]
    assert keep.size == n
    return images[keep], samples[keep], labels[keep]


@pytest.fixture(scope="module")
def consema_outcome():
    return run_repetitions(
        {"consema": ConsemaMethod()},
        _consema_draw,
        n_cal=CONSEMA_N_CAL,
        n_test=CONSEMA_N_TEST,
        reps=CONSEMA_REPS,
        levels=CONSEMA_LEVELS,
        variants={f"rank{s:+d}": ("consema", shifted_rank(ConsemaMethod, s)()) for s in (-1, +1)},
        strict=True,
    )


@pytest.mark.slow
def test_consema_coverage_ratio_guarantee(consema_outcome) -> None:
    """Consema: P(|C ∩ Y|/|Y| ≥ τ) ≥ 1 − α with τ = 1 − α, at α = 0.1 and 0.2, n_cal = 9.

    120 independent repetitions of fresh blob data (2D 64×64), 20 test images each. Scores are
    integer dilation counts (ties), so the check is the two-sided sandwich band: the exact lower
    tail on the covered count, the exact upper tail on the count strictly below q̂ (covered
    with one dilation less). False-alarm 5e-4 per level, **≤ 1e-3 for the test** (exactly
    4.8e-4 + 4.7e-4 for tie-free scores, less with ties).
    """
    assert ConsemaMethod().tau_at(0.1) == 1 - Fraction("0.1")  # τ unset: 1 − α, exactly
    for alpha, _ in CONSEMA_LEVELS:
        check = consema_outcome.check("consema", alpha, false_alarm=5e-4)
        assert check.passed, check.message


@pytest.mark.slow
def test_consema_wrong_quantile_index_is_rejected(consema_outcome) -> None:
    """The reference code's off-by-one (rank k + 1) and rank k − 1 are rejected by the same band.

    Power per check: exact for tie-free scores (:func:`splitcp_power`, R = 120, n = 9, 20 test
    images, 5e-4): rank k + 1 at α = 0.2 (9 of 9 instead of 8) 1.000; rank k − 1 1.000 at α = 0.1
    and 0.9996 at α = 0.2. With the ties of these integer scores, by simulation (a pool of 300
    further independent repetitions, seeds 8 000 000 +, resampled 1000 times into experiments of
    120): k + 1 at α = 0.2 1.000, k − 1 1.000 at α = 0.1 and 0.996 at α = 0.2 (the scores
    tie at the order statistic in 5 % (k + 1) and 14 % (k − 1) of the pool's repetitions). At α = 0.1 the
    reference's index runs past the end of the 9 scores (rank 10): here the trivial set, rejected
    on the upper side (asserted too).
    """
    for alpha, shift in ((0.2, +1), (0.1, -1), (0.2, -1), (0.1, +1)):
        check = consema_outcome.check(f"rank{shift:+d}", alpha, false_alarm=5e-4)
        assert not check.passed, f"rank k{shift:+d} at alpha={alpha}: {check.message}"
