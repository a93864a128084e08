"""Tests of the bands (core/bands.py), the guarantee checks (testing/guarantees.py) and statistical tests of CRC and Consema.

The ``slow`` tests run R independent calibration/test repetitions on fresh synthetic data with a
known truth and compare the outcome with an exact acceptance band; each docstring states the
false-alarm rate of a correct implementation.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate, stats

from napari_conformal.core.bands import (
    acceptance_probability,
    band_from_pmf,
    bernoulli_kl,
    covered_count_pmf,
    crc_risk_tolerance,
    repeated_splits,
    splitcp_coverage_band,
    splitcp_rank,
    total_covered_pmf,
)
from napari_conformal.core.methods.consema import ConsemaMethod
from napari_conformal.core.methods.threshold import CRCMethod
from napari_conformal.errors import ConformalError, InsufficientCalibrationError
from napari_conformal.testing.guarantees import GuaranteeCheck, check_crc_risk, check_split_coverage
from napari_conformal.testing.synthetic import binary_blobs_dataset

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


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "reps"), [((32, 32), 300), ((16, 16, 16), 200)])
def test_crc_fnr_risk_on_blobs(shape: tuple[int, ...], reps: int) -> None:
    """CRC controls the expected FNR on blob data (2D and 3D): mean realised FNR ≤ α + t.

    Each repetition draws fresh blob images (n_cal = 20, 20 test images, α = 0.1) and records the
    mean test FNR X_r ∈ [0, 1] with E X_r ≤ α. Chernoff–Hoeffding (KL) tolerance t for R
    repetitions: **false-alarm rate ≤ 1e-3** for any loss law (conservative). Over-conservative
    errors in the same code path are caught by the exact two-sided single-pixel test above.
    """
    alpha, n_cal, n_test = 0.1, 20, 20
    m = CRCMethod()
    risks = np.empty(reps)
    for r in range(reps):
        images, samples, labels = binary_blobs_dataset(n_cal + n_test, shape, n_samples=2, seed=1000 + r)
        prepared = [m.prepare(images[i], samples[i]) for i in range(n_cal + n_test)]
        lam = m.lambda_hat([m.curve(prepared[i], labels[i]) for i in range(n_cal)], alpha=alpha)
        fnr = []
        for i in range(n_cal, n_cal + n_test):
            truth = labels[i] == 1
            fnr.append(1.0 - np.count_nonzero(m.predict(prepared[i], lam) & truth) / np.count_nonzero(truth))
        risks[r] = np.mean(fnr)
    check = check_crc_risk(risks, alpha, false_alarm=1e-3)
    assert check.passed, check.message


@pytest.mark.slow
def test_consema_coverage_ratio_guarantee() -> None:
    """Consema: P(|C ∩ Y|/|Y| ≥ τ) ≥ 1 − α with τ = 1 − α = 0.9, α = 0.1, n_cal = 20.

    150 independent repetitions of fresh blob data (2D 32×32), 20 test images each. Scores are
    integer dilation counts (ties), so the covered count is stochastically larger than
    BetaBinomial(20, 19, 2): one-sided (lower) exact band, **false-alarm rate ≤ 1e-3**.
    Images whose hard prediction is empty are dropped before splitting (an i.i.d. filter, so
    calibration and test stay exchangeable).
    """
    alpha, n_cal, n_test, reps = 0.1, 20, 20, 150
    m = ConsemaMethod()  # τ unset: 1 − α
    assert m.tau_at(alpha) == 1 - Fraction("0.1")
    counts = np.empty(reps, int)
    for r in range(reps):
        images, samples, labels = binary_blobs_dataset(
            n_cal + n_test + 10, (32, 32), n_samples=2, seed=5000 + r, bias=0.5
        )
        prepared = [m.prepare(images[i], samples[i]) for i in range(len(images))]
        keep = [i for i, p in enumerate(prepared) if p.prediction.any()][: n_cal + n_test]
        assert len(keep) == n_cal + n_test
        cal, test = keep[:n_cal], keep[n_cal:]
        q = m.lambda_hat([m.curve(prepared[i], labels[i]) for i in cal], alpha=alpha)
        covered = 0
        for i in test:
            truth = labels[i] == 1
            ratio = np.count_nonzero(m.predict(prepared[i], q) & truth) / np.count_nonzero(truth)
            covered += ratio >= 1 - alpha
        counts[r] = covered
    check = check_split_coverage(counts, n_cal, n_test, alpha, false_alarm=1e-3, two_sided=False)
    assert check.passed, check.message
