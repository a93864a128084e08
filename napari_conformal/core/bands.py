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
    "acceptance_probability",
    "band_from_pmf",
    "bernoulli_kl",
    "covered_count_pmf",
    "crc_risk_tolerance",
    "repeated_splits",
    "splitcp_coverage_band",
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
