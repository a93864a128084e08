"""Checks of a conformal guarantee from independent repetitions, with a stated false-alarm rate.

The statistical tests run a method on ``R`` fresh calibration/test draws of data with known truth and
hand the outcome to one of these checks; the bands are those of :mod:`napari_conformal.core.bands`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_conformal.core.bands import crc_risk_tolerance, splitcp_coverage_band, splitcp_rank
from napari_conformal.errors import ConformalError

__all__ = ["GuaranteeCheck", "check_crc_risk", "check_split_coverage"]


@dataclass(frozen=True)
class GuaranteeCheck:
    """Outcome of a statistical guarantee check.

    Attributes
    ----------
    passed : bool
        Whether the statistic lies inside the acceptance band.
    statistic : float
        The observed statistic (total covered count, or mean realised risk).
    band : tuple of float
        Closed acceptance interval ``(low, high)``.
    false_alarm : float
        Upper bound on the probability that a correct implementation fails.
    message : str
        One-line human-readable summary.
    """

    passed: bool
    statistic: float
    band: tuple[float, float]
    false_alarm: float
    message: str


def check_split_coverage(
    covered_counts: Sequence[int] | np.ndarray,
    n_cal: int,
    n_test: int,
    alpha: float,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
) -> GuaranteeCheck:
    """Test split-CP coverage from the covered counts of independent repetitions.

    Parameters
    ----------
    covered_counts : array_like of int, shape (R,)
        Number of covered test points in each repetition (each in 0..n_test).
    n_cal, n_test, alpha, false_alarm, bound, two_sided
        As in :func:`splitcp_coverage_band`.

    Returns
    -------
    GuaranteeCheck
        ``statistic`` is the total covered count.
    """
    counts = np.asarray(covered_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ConformalError(f"covered_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        if not (np.all(np.isfinite(counts)) and np.all(counts == np.round(counts))):
            raise ConformalError("covered_counts must hold whole numbers")
        counts = counts.astype(np.int64)
    if counts.min() < 0 or counts.max() > n_test:
        raise ConformalError(f"covered_counts must lie in 0..n_test={n_test}")
    reps = counts.size
    lower, upper = splitcp_coverage_band(n_cal, n_test, alpha, reps, false_alarm, bound, two_sided)
    total = int(counts.sum())
    passed = lower <= total <= upper
    kind = "two-sided" if two_sided else "one-sided (lower)"
    nominal = splitcp_rank(n_cal, alpha, bound) / (n_cal + 1)
    message = (
        f"{'PASS' if passed else 'FAIL'}: {total} of {reps * n_test} test points covered "
        f"(rate {total / (reps * n_test):.4f}, expected {nominal:.4f}); {kind} exact band "
        f"[{lower}, {upper}] at false-alarm {false_alarm:g} over {reps} repetitions of n_cal={n_cal}"
    )
    return GuaranteeCheck(passed, float(total), (float(lower), float(upper)), float(false_alarm), message)


def check_crc_risk(
    realised_risks: Sequence[float] | np.ndarray,
    alpha: float,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
) -> GuaranteeCheck:
    """Test ``E[risk] ≤ α`` from the realised risks of independent repetitions.

    Parameters
    ----------
    realised_risks : array_like of float, shape (R,)
        Mean test loss of each repetition, each in ``[0, B]``.
    alpha, false_alarm, bound
        As in :func:`crc_risk_tolerance`.

    Returns
    -------
    GuaranteeCheck
        ``statistic`` is the mean realised risk; the band is ``[0, α + t]``.
    """
    risks = np.asarray(realised_risks, dtype=np.float64)
    if risks.ndim != 1 or risks.size == 0:
        raise ConformalError(f"realised_risks must be a non-empty 1-D array, got shape {risks.shape}")
    if not np.all(np.isfinite(risks)):
        raise ConformalError("realised_risks contain NaN or inf")
    if risks.min() < 0 or risks.max() > float(bound):
        raise ConformalError(f"realised_risks must lie in [0, B] = [0, {bound}]")
    t = crc_risk_tolerance(alpha, risks.size, false_alarm, bound)
    mean = float(risks.mean())
    high = float(alpha) + t
    passed = mean <= high
    message = (
        f"{'PASS' if passed else 'FAIL'}: mean realised risk {mean:.4f} over {risks.size} repetitions "
        f"vs alpha={float(alpha):g} + tolerance {t:.4f} (Chernoff-Hoeffding, false-alarm {false_alarm:g})"
    )
    return GuaranteeCheck(passed, mean, (0.0, high), float(false_alarm), message)
