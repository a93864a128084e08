"""Exact acceptance bands for testing conformal guarantees by repetition.

A conformal method promises something about the *distribution* of its
test-time behaviour. This module turns that promise into a test with a
known false-alarm rate: run ``R`` independent calibration/test repetitions,
reduce them to one statistic, and accept when the statistic falls inside a
band that a correct implementation leaves with probability at most
``false_alarm``. Used by the ``report`` command and by the statistical tests (:mod:`napari_conformal.testing.guarantees`).

Split conformal prediction (0/1 loss, exact band)
-------------------------------------------------
With ``n`` calibration points, CRC with the 0/1 loss (equivalently split CP)
may leave ``m = ⌊(n+1)α − B⌋`` calibration points uncovered
(:func:`napari_conformal.core.quantiles.max_uncovered`), so the threshold ``λ̂`` is
the ``k = n − m``-th smallest calibration score (``k = ⌈(n+1)(1−α)⌉`` for
B = 1). For continuous, tie-free scores with distribution function ``F``,
``U_i = F(s_i)`` are i.i.d. uniform, so the conditional coverage
``F(λ̂) = U_(k)`` is the k-th uniform order statistic::

    F(λ̂) ~ Beta(k, n + 1 − k) = Beta(n − m, m + 1)

Given the calibration data the ``n_test`` test points are covered
independently with probability ``F(λ̂)``, hence the number covered in one
repetition is ``BetaBinomial(n_test, n − m, m + 1)``, and the total over ``R``
independent repetitions has the ``R``-fold convolution of that pmf
(:func:`total_covered_pmf`). The band is two-sided for exact methods (too
much coverage means a wrong order statistic as surely as too little). Scores
with ties (e.g. integer dilation counts) make the covered count
stochastically *larger* (``F(F⁻¹(u)) ≥ u``), so for such conservative methods
only the lower tail applies, with the full ``false_alarm``.

Conformal risk control of a bounded loss (tolerance)
----------------------------------------------------
For a loss in ``[0, B]`` CRC guarantees ``E[L_test(λ̂)] ≤ α`` but the law of
the realised risk depends on the data. Let ``X_r ∈ [0, B]`` be the mean test
loss of repetition r (independent across r, ``E X_r ≤ α``). Hoeffding's
(1963, Thm. 1) Chernoff bound for ``[0, 1]``-valued independent variables
with mean ``μ̄`` gives ``P(X̄ ≥ μ̄ + t) ≤ exp(−R·KL(μ̄ + t ‖ μ̄))`` with the
Bernoulli relative entropy ``KL(q‖p) = q ln(q/p) + (1−q) ln((1−q)/(1−p))``.
Since ``KL(q‖p)`` decreases in ``p`` for ``p < q``, ``μ̄ ≤ a`` implies
``P(X̄ ≥ a + t) ≤ exp(−R·KL(a + t ‖ a))``; rescaling by ``B`` (``a = α/B``)
gives :func:`crc_risk_tolerance`. The bound holds for any loss law, so it is
conservative (the true false-alarm rate is far below the stated one).

Ties: a sandwich instead of a lower band
----------------------------------------
Write the per-image scores as ``s = F⁻¹(U)`` with ``U`` uniform (any ``F``,
atoms included) and couple calibration and test points through their
uniforms. ``F⁻¹`` is non-decreasing, so for every test point
``V ≤ U_(k) ⇒ s_test ≤ λ̂`` and ``s_test < λ̂ ⇒ V < U_(k)``: pathwise,

    #{s_test < λ̂}  ≤  #{V < U_(k)}  ≤  #{s_test ≤ λ̂},

and the middle count is exactly ``BetaBinomial(n_test, k, n + 1 − k)`` (the
same over ``R`` independent repetitions, summed). The covered count (≤)
therefore keeps the exact *lower* tail and the count strictly below λ̂ (<)
the exact *upper* tail, whatever the ties (:func:`total_covered_pmf` serves
both sides). Without ties the two counts coincide and this is the exact
two-sided band; with ties (integer dilation counts, scores of 0 where the
model alone already covers) it stays valid with the same false-alarm rate.
It needs the realised coverage to be exactly ``1[λ_test ≤ λ̂]`` (exact
per-image thresholds) and i.i.d. calibration and test images. :func:`splitcp_power` is the exact
power of the band against a wrong rank for tie-free scores, and
:func:`splitcp_false_alarm` its exact false-alarm rate (at most the nominal
one, smaller because the counts are discrete).

Conformal risk control: a two-sided betting test
------------------------------------------------
:func:`crc_risk_tolerance` treats every repetition as if it could be a coin
flip, which is the worst case of a ``[0, 1]`` variable but far from the mean
test FNR of a repetition (whose spread is a few percent), so it accepts
almost anything. :func:`betting_mean_interval` uses the spread of the data
instead, and is still exact for any law in ``[0, B]``. For independent
``X_r ∈ [0, 1]`` with ``E X_r ≤ μ`` and any fixed ``c ∈ (0, 1]`` the
product ``W_c(μ) = Π_r (1 + c·(X_r − μ)/μ)`` has ``E W_c(μ) =
Π_r (1 + c·(E X_r − μ)/μ) ≤ 1`` and is non-negative (``X_r ≥ 0``); so has
the average ``W(μ)`` of ``W_c`` over a fixed grid of ``c``
(:data:`BETTING_FRACTIONS`), and Markov's inequality gives
``P(W(μ) ≥ 1/δ) ≤ δ``. Mirrored, ``Π_r (1 − c·(X_r − μ)/(1 − μ))`` tests
``E X_r ≥ μ``. Both products are monotone in ``μ``, so the values of μ that
are not rejected form the interval ``[L, U]`` (the betting confidence
interval of Waudby-Smith and Ramdas, "Estimating means of bounded random
variables by betting", JRSS-B 2024, with fixed bets; fixed bets make it
independent of the order of the repetitions). Its width shrinks like
``σ·sqrt(2 ln(1/δ)/R)`` when the bet ``c/μ`` matches ``Δ/σ²``, i.e. like a
Gaussian test with the true standard deviation σ, not the worst-case 1/2.

CRC guarantees ``E[FNR] ≤ α`` (Angelopoulos et al. 2022, Thm. 1) and, for
i.i.d. images whose losses have no jump at any fixed λ (continuous scores),
``E[FNR] ≥ α − 2B/(n+1)`` (their Thm. 2; :func:`crc_risk_lower_bound`). A
correct implementation therefore leaves ``[L, U] ∩ [α − 2B/(n+1), α] = ∅``
with probability at most ``false_alarm`` (each side ``false_alarm/2``).

Independence
------------
All bands assume **independent** repetitions, i.e. fresh data for every
repetition (the statistical tests draw new synthetic data each time).
Repeated random splits of one finite dataset (:func:`repeated_splits`) are
dependent through the shared images; for them the bands are only a guide.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from napari_conformal.core.quantiles import max_uncovered
from napari_conformal.errors import ConformalError

__all__ = [
    "BETTING_FRACTIONS",
    "acceptance_probability",
    "band_from_pmf",
    "bernoulli_kl",
    "betting_log_wealth",
    "betting_mean_interval",
    "covered_count_pmf",
    "crc_risk_lower_bound",
    "crc_risk_tolerance",
    "repeated_splits",
    "splitcp_coverage_band",
    "splitcp_false_alarm",
    "splitcp_power",
    "splitcp_rank",
    "total_covered_pmf",
]


# --------------------------------------------------------------------------- validation


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConformalError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_prob(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise ConformalError(f"{name} must lie in (0, 1), got {value!r}")
    return v


# --------------------------------------------------------------------------- split CP: exact law


def splitcp_rank(n_cal: int, alpha: float, bound: float = 1.0) -> int:
    """1-indexed rank ``k = n − ⌊(n+1)α − B⌋`` of the order statistic split CP uses.

    Raises :class:`~napari_conformal.errors.InsufficientCalibrationError` when
    ``n < B/α − 1``.
    """
    n = _check_int(n_cal, "n_cal", 1)
    return max(n - max_uncovered(n, alpha, bound), 1)


def covered_count_pmf(n_cal: int, n_test: int, rank: int) -> np.ndarray:
    """Law of the number of covered test points in one repetition.

    Parameters
    ----------
    n_cal : int
        Calibration size n.
    n_test : int
        Test points per repetition.
    rank : int
        1-indexed rank k (1..n) of the calibration order statistic used as λ̂.

    Returns
    -------
    ndarray, shape (n_test + 1,)
        ``BetaBinomial(n_test, k, n + 1 − k)`` pmf (continuous tie-free scores).
    """
    from scipy.stats import betabinom

    n = _check_int(n_cal, "n_cal", 1)
    n_test = _check_int(n_test, "n_test", 1)
    k = _check_int(rank, "rank", 1)
    if k > n:
        raise ConformalError(f"rank must lie in 1..n_cal={n}, got {k}")
    pmf = betabinom.pmf(np.arange(n_test + 1), n_test, k, n + 1 - k)
    return pmf / pmf.sum()


def total_covered_pmf(n_cal: int, n_test: int, reps: int, rank: int) -> np.ndarray:
    """Law of the total covered count over ``reps`` independent repetitions.

    The ``reps``-fold convolution of :func:`covered_count_pmf`, computed as
    the ``reps``-th power of its discrete Fourier transform on a support long
    enough to avoid wrap-around (absolute error ~1e-15 per entry).

    Returns
    -------
    ndarray, shape (reps · n_test + 1,)
    """
    reps = _check_int(reps, "reps", 1)
    pmf = covered_count_pmf(n_cal, n_test, rank)
    if reps == 1:
        return pmf
    size = reps * (pmf.size - 1) + 1
    total = np.fft.irfft(np.fft.rfft(pmf, size) ** reps, size)
    total = np.clip(total, 0.0, None)
    return total / total.sum()


def band_from_pmf(pmf: np.ndarray, false_alarm: float, two_sided: bool = True) -> tuple[int, int]:
    """Acceptance interval ``[lower, upper]`` of an integer statistic with law ``pmf``.

    Parameters
    ----------
    pmf : ndarray, shape (M + 1,)
        ``pmf[j] = P(statistic = j)``.
    false_alarm : float
        Total rejection probability allowed under ``pmf``.
    two_sided : bool
        Split ``false_alarm`` equally between both tails; otherwise only the
        lower tail is used (``upper = M``).

    Returns
    -------
    (int, int)
        ``lower`` is the largest value with ``P(stat < lower) ≤ tail`` and
        ``upper`` the smallest with ``P(stat > upper) ≤ tail``, so a correct
        statistic leaves the band with probability ≤ ``false_alarm``.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    if pmf.ndim != 1 or pmf.size == 0 or not np.all(np.isfinite(pmf)) or pmf.min() < 0:
        raise ConformalError("pmf must be a non-empty 1-D array of non-negative finite numbers")
    fa = _check_prob(false_alarm, "false_alarm")
    tail = fa / 2 if two_sided else fa
    cdf = np.cumsum(pmf)  # cdf[j] = P(stat ≤ j)
    sf = np.r_[np.cumsum(pmf[::-1])[::-1][1:], 0.0]  # sf[j] = P(stat > j), summed from the tail
    lower = int(np.searchsorted(cdf, tail, side="right"))
    upper = int(np.argmax(sf <= tail)) if two_sided else pmf.size - 1
    return lower, upper


def acceptance_probability(pmf: np.ndarray, band: tuple[float, float]) -> float:
    """Probability that a statistic with law ``pmf`` lands inside ``band``.

    Under an alternative (a wrong implementation) this is the miss
    probability of the check; one minus it is the power.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    j = np.arange(pmf.size)
    return float(pmf[(j >= band[0]) & (j <= band[1])].sum())


def splitcp_coverage_band(
    n_cal: int,
    n_test: int,
    alpha: float,
    reps: int,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
) -> tuple[int, int]:
    """Exact acceptance band for the total covered count of split CP.

    Parameters
    ----------
    n_cal, n_test : int
        Calibration and test points per repetition.
    alpha : float
        Miscoverage level α.
    reps : int
        Number of independent repetitions R (fresh data each).
    false_alarm : float
        Probability that a correct implementation with continuous tie-free
        scores falls outside the band.
    bound : float
        Loss bound B of the CRC rule (1 for the 0/1 loss).
    two_sided : bool
        Two-sided band for exact methods; lower tail only (with the full
        ``false_alarm``) for conservative methods or scores with ties.

    Returns
    -------
    (int, int)
        ``(lower, upper)`` on the total number of covered test points (out of
        ``reps · n_test``); see the module docstring for the derivation.
    """
    rank = splitcp_rank(n_cal, alpha, bound)
    pmf = total_covered_pmf(n_cal, n_test, reps, rank)
    return band_from_pmf(pmf, false_alarm, two_sided)


def splitcp_power(
    n_cal: int,
    n_test: int,
    alpha: float,
    reps: int,
    rank: int,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Exact probability that :func:`splitcp_coverage_band` rejects a rule using order statistic ``rank``.

    For tie-free scores a rule that takes the ``rank``-th smallest calibration score (instead of
    :func:`splitcp_rank`'s) has the total covered count ``total_covered_pmf(n_cal, n_test, reps,
    rank)``; this is the mass of that law outside the band. With ``rank`` the correct one it is
    :func:`splitcp_false_alarm`.
    """
    band = splitcp_coverage_band(n_cal, n_test, alpha, reps, false_alarm, bound, two_sided)
    return 1.0 - acceptance_probability(total_covered_pmf(n_cal, n_test, reps, rank), band)


def splitcp_false_alarm(
    n_cal: int,
    n_test: int,
    alpha: float,
    reps: int,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Exact rejection probability of :func:`splitcp_coverage_band` for a correct rule (≤ ``false_alarm``).

    Exact for tie-free scores; with ties each side is bounded by its share of ``false_alarm`` (module
    docstring: the sandwich), and the lower band of a conservative method only gets smaller.
    """
    rank = splitcp_rank(n_cal, alpha, bound)
    return splitcp_power(n_cal, n_test, alpha, reps, rank, false_alarm, bound, two_sided)


# --------------------------------------------------------------------------- CRC: bounded risk


def bernoulli_kl(q: float, p: float) -> float:
    """Relative entropy ``KL(Bernoulli(q) ‖ Bernoulli(p))`` in nats (``0 ln 0 = 0``)."""
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def crc_risk_tolerance(alpha: float, reps: int, false_alarm: float = 1e-3, bound: float = 1.0) -> float:
    """Tolerance ``t`` with ``P(mean_r X_r ≥ α + t) ≤ false_alarm``.

    Parameters
    ----------
    alpha : float
        Risk level α in (0, B); each repetition has ``E X_r ≤ α``.
    reps : int
        Number R of independent repetitions.
    false_alarm : float
        Allowed exceedance probability.
    bound : float
        Bound B of the per-repetition realised risk ``X_r ∈ [0, B]``.

    Returns
    -------
    float
        The root of ``R·KL(a + t/B ‖ a) = ln(1/false_alarm)`` (``a = α/B``), in
        the units of the loss; ``B − α`` (no exceedance possible) when
        ``R·KL(1 ‖ a) ≤ ln(1/false_alarm)``. See the module docstring.
    """
    from scipy.optimize import brentq

    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ConformalError(f"bound must be positive and finite, got {bound!r}")
    a = float(alpha) / b
    if not (math.isfinite(a) and 0 < a < 1):
        raise ConformalError(f"alpha must lie in (0, B) = (0, {bound}), got {alpha!r}")
    reps = _check_int(reps, "reps", 1)
    fa = _check_prob(false_alarm, "false_alarm")
    level = math.log(1.0 / fa) / reps
    if bernoulli_kl(1.0, a) <= level:
        return (1.0 - a) * b
    xtol = 1e-13
    t = brentq(lambda x: bernoulli_kl(min(a + x, 1.0), a) - level, 0.0, 1.0 - a, xtol=xtol)
    # brentq lands within xtol of the root; step past it so the bound holds at t
    return min(t + 2 * xtol, 1.0 - a) * b


#: bet fractions c of the betting test (the bet on X − μ is c/μ, or c/(1 − μ) mirrored):
#: a geometric grid from 1 (the largest bet that keeps the wealth non-negative) to 1/16
BETTING_FRACTIONS: tuple[float, ...] = tuple(2.0 ** (-j / 2) for j in range(9))


def crc_risk_lower_bound(alpha: float, n_cal: int, bound: float = 1.0) -> float:
    """``α − 2B/(n+1)``: CRC's lower bound on the expected risk (Angelopoulos et al. 2022, Thm. 2).

    Holds for i.i.d. calibration and test images whose loss curves have no jump at any fixed λ
    (e.g. threshold sets of continuous scores); may be negative (then it says nothing).
    """
    n = _check_int(n_cal, "n_cal", 1)
    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ConformalError(f"bound must be positive and finite, got {bound!r}")
    return float(alpha) - 2.0 * b / (n + 1)


def _scaled(values: np.ndarray | list[float], bound: float) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ConformalError(f"bound must be positive and finite, got {bound!r}")
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ConformalError("values must be a non-empty 1-D array of finite numbers")
    if x.min() < 0 or x.max() > b:
        raise ConformalError(f"values must lie in [0, B] = [0, {bound}]")
    return x / b


def _log_wealth(x: np.ndarray, mu: float, upper: bool, fractions: np.ndarray) -> float:
    """log of the mixture wealth on [0, 1]-scaled data (see :func:`betting_log_wealth`)."""
    if upper:  # evidence that E X > μ: bets c/μ on X − μ
        if mu <= 0.0:
            return math.inf if np.any(x > 0) else 0.0
        factors = 1.0 + np.outer(fractions, x - mu) / mu
    else:  # evidence that E X < μ: bets c/(1 − μ) on μ − X
        if mu >= 1.0:
            return math.inf if np.any(x < 1) else 0.0
        factors = 1.0 - np.outer(fractions, x - mu) / (1.0 - mu)
    with np.errstate(divide="ignore"):
        logs = np.log(np.clip(factors, 0.0, None)).sum(axis=1)
    top = logs.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + math.log(np.exp(logs - top).mean()))


def betting_log_wealth(
    values: np.ndarray | list[float],
    mean: float,
    upper: bool = True,
    bound: float = 1.0,
    fractions: tuple[float, ...] = BETTING_FRACTIONS,
) -> float:
    """log of the mixture wealth ``W(μ)`` of the betting test (module docstring).

    Parameters
    ----------
    values : array_like, shape (R,)
        Independent observations ``X_r ∈ [0, B]``.
    mean : float
        The hypothesised bound μ (in units of the loss).
    upper : bool
        True: evidence against ``E X_r ≤ μ`` for every r (bets on X above μ); False: against
        ``E X_r ≥ μ``.
    bound : float
        B.
    fractions : tuple of float
        Bet fractions c in (0, 1], fixed in advance (the wealth is their average).

    Returns
    -------
    float
        ``log W(μ)``; under the hypothesis ``P(log W ≥ ln(1/δ)) ≤ δ`` for every δ.
    """
    x = _scaled(values, bound)
    c = np.asarray(fractions, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or c.min() <= 0 or c.max() > 1:
        raise ConformalError("fractions must be a non-empty sequence of numbers in (0, 1]")
    return _log_wealth(x, float(mean) / float(bound), bool(upper), c)


def betting_mean_interval(
    values: np.ndarray | list[float],
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
    fractions: tuple[float, ...] = BETTING_FRACTIONS,
) -> tuple[float, float]:
    """Confidence interval ``[L, U]`` for the mean of independent ``X_r ∈ [0, B]``, by betting.

    ``L`` is the smallest μ whose hypothesis ``E X_r ≤ μ`` the betting test does not reject at level
    ``false_alarm/2`` (``false_alarm`` one-sided), ``U`` the largest μ whose ``E X_r ≥ μ`` it does
    not reject (``U = B`` one-sided). If every ``E X_r`` lies in an interval I, then
    ``P([L, U] ∩ I = ∅) ≤ false_alarm`` for any law on ``[0, B]`` (module docstring).

    Returns
    -------
    (float, float)
        ``(L, U)`` in the units of the loss, found by bisection to 1e-12·B.
    """
    x = _scaled(values, bound)
    fa = _check_prob(false_alarm, "false_alarm")
    c = np.asarray(fractions, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or c.min() <= 0 or c.max() > 1:
        raise ConformalError("fractions must be a non-empty sequence of numbers in (0, 1]")
    level = math.log((2.0 if two_sided else 1.0) / fa)

    def edge(upper: bool) -> float:
        # log W is decreasing in μ for upper bets and increasing for lower bets: bisect the crossing
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            rejected = _log_wealth(x, mid, upper, c) >= level
            if upper == rejected:  # upper: rejected means μ is below L
                lo = mid
            else:
                hi = mid
        return hi if upper else lo

    b = float(bound)
    low = edge(True)
    high = edge(False) if two_sided else 1.0
    return low * b, high * b


# --------------------------------------------------------------------------- splits of a finite dataset


def repeated_splits(
    n_total: int, n_cal: int, reps: int, seed: int = 0, n_test: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random disjoint calibration/test splits of one finite dataset.

    Parameters
    ----------
    n_total : int
        Number of images in the dataset.
    n_cal : int
        Calibration images per split.
    reps : int
        Number of splits.
    seed : int
        Seed of the one random stream that draws all splits.
    n_test : int, optional
        Test images per split; default all the others.

    Yields
    ------
    cal_idx, test_idx : ndarray of int64
        Sorted, disjoint image indices.

    Notes
    -----
    Splits of one finite dataset share images, so their outcomes are **not
    independent**: the exact bands above assume fresh data per repetition,
    and applied to these splits they are approximate (the spread across
    splits is smaller than across fresh datasets, while each split's
    coverage still has the exact marginal law).
    """
    n_total = _check_int(n_total, "n_total", 2)
    n_cal = _check_int(n_cal, "n_cal", 1)
    reps = _check_int(reps, "reps", 1)
    rest = n_total - n_cal
    n_test = rest if n_test is None else _check_int(n_test, "n_test", 1)
    if n_cal + n_test > n_total:
        raise ConformalError(f"n_cal + n_test = {n_cal + n_test} exceeds n_total = {n_total}")
    if n_test < 1:
        raise ConformalError(f"n_cal={n_cal} leaves no test images out of n_total={n_total}")
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        perm = rng.permutation(n_total)
        yield np.sort(perm[:n_cal]), np.sort(perm[n_cal : n_cal + n_test])
