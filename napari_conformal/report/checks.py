"""Per-split guarantee checks: acceptance bands a correct method leaves with a stated probability.

Each split of a report is one calibration/test experiment of n calibration and m test images
(N = n + m). Its statistic is checked against a band around what a correct method produces; a split
outside its band is flagged ``"below"`` (too little coverage: the guarantee is in doubt) or
``"above"`` (more coverage than a correct, exact method gives: a calibration that is too
conservative, or a λ̂ that is not the method's).

Methods with a 0/1 coverage guarantee (``risk == "miscoverage"``)
-------------------------------------------------------------------
``P(covered) ≥ 1 − α`` (docs/algorithms.md#conformal-rules). λ̂ is the k-th smallest of the per-image
covering values λ_i, ``k = ⌈(n+1)(1 − α)⌉``; for exact, tie-free λ_i the number of covered test
images is ``BetaBinomial(m, k, n + 1 − k)`` and the band is its central interval
(:func:`napari_conformal.core.bands.splitcp_coverage_band`): false-alarm rate at most ``false_alarm``
per split, ``false_alarm / 2`` on each side. The upper limit is dropped (lower limit only, with the
whole ``false_alarm``) where ties or a conservative search can only raise coverage: for methods that
are not :func:`~napari_conformal.report.plan.exact_coverage`, and in a split whose calibration shows
a tie at λ̂ (two or more calibration images whose covering value is exactly λ̂, e.g. images covered by
the model's own segmentation at λ̂ = 0). A λ̂ that is merely too large is no tie (no calibration image
has its covering value there), so the upper limit still catches it.

Methods with an FNR guarantee (``risk == "fnr"``)
--------------------------------------------------
CRC and RW-CP promise ``E[FNR] ≤ α``, and ``E[FNR] ≥ α − 2/(n+1)`` for i.i.d. losses
(docs/algorithms.md#crc); both bounds are on an expectation, and a band on the split's mean test FNR
``X`` also needs its spread. :func:`fnr_band` uses the structure of the CRC rule. λ̂ is the smallest λ
whose calibration risk ``R_cal(λ) ≤ α* = ((n+1)α − 1)/n`` (α* lies in ``[α − 2/(n+1), α]``). With
``R_all`` the mean loss of all N images and ``D(λ) = R_test(λ) − R_cal(λ)``, monotone losses give,
for tie-free scores and every x,

    P(X ≥ x) = P(R_cal(λ_x) ≤ α*) = P(D(λ_x) ≥ x − α*),     λ_x: R_all(λ_x) = α* + (m/N)(x − α*),

so the split's test mean is α* plus a test-minus-calibration difference of means at one fixed λ.
The band holds the per-image losses at λ̂ fixed (``λ_x ≈ λ̂`` near the band) and takes the law of
``D`` over random re-splits of the split's own N images (a finite-population permutation law,
by Monte Carlo with ``draws`` re-splits): ``[α* − J + q_{fa/2}, α* + q_{1−fa/2}]``, where J is the drop
of the calibration risk at λ̂ (ties at λ̂ let ``R_cal(λ̂)`` sit below α*; 0 for tie-free scores). The
quantiles carry the skewness of the losses, which a normal band would miss when n ≠ m.

False-alarm rate per split of the FNR band: ``false_alarm`` up to the approximation λ_x ≈ λ̂ (and the
Monte-Carlo error). Simulated with exact CRC on synthetic skewed FNR losses, fresh data and re-splits
of one fixed set of images, (n, m) = (35, 35), (10, 60), (100, 30), (20, 100), α = 0.2 and 0.1 (also
with tied scores), and on re-splits of the ``hippocampus-2d`` demo store (n = m = 35, α = 0.2, 0.1,
0.05), the rate at nominal 1 % was 0.5 %–1.5 % (0.2 %–1 % per side, nominal 0.5 %).

Independence. The splits of one dataset share images, so a report's splits are not independent
repetitions; each band is a statement about its own split taken alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_conformal.core.bands import splitcp_coverage_band, splitcp_rank
from napari_conformal.core.quantiles import max_uncovered
from napari_conformal.errors import ConformalError

__all__ = [
    "alpha_star",
    "check_fnr_split",
    "check_miscoverage_split",
    "expected_coverage_bracket",
    "fnr_band",
    "nominal_fnr_centre",
    "resplit_differences",
]

#: Monte-Carlo re-splits of the FNR band
DEFAULT_DRAWS = 20000


def alpha_star(n_cal: int, alpha: float) -> float:
    """The calibration risk target ``α* = ((n+1)α − 1)/n`` of the FNR rule, from the exact budget.

    ``(n+1)α − 1`` is formed in exact decimal arithmetic as the rule does
    (:func:`~napari_conformal.core.quantiles.max_uncovered` floors the same quantity).
    """
    from napari_conformal.core.validation import exact_fraction

    return float(((n_cal + 1) * exact_fraction(alpha) - 1) / n_cal)


def resplit_differences(
    losses: Sequence[float] | np.ndarray, n_cal: int, *, draws: int = DEFAULT_DRAWS, seed: int = 0
) -> np.ndarray:
    """``mean(test) − mean(calibration)`` of ``losses`` over random splits into n_cal and the rest.

    Parameters
    ----------
    losses : array_like, shape (N,)
        One loss per image (calibration and test images of a split together).
    n_cal : int
        Calibration images per re-split (1 ≤ n_cal < N).
    draws : int
        Number of random re-splits.
    seed : int
        Seed of the re-splits (the band is reproducible).

    Returns
    -------
    ndarray of float64, shape (draws,)
    """
    v = np.asarray(losses, dtype=np.float64)
    n_total = v.size
    if v.ndim != 1 or not 1 <= n_cal < n_total:
        raise ConformalError(f"need 1 <= n_cal < N losses, got n_cal={n_cal}, N={n_total}")
    if not np.all(np.isfinite(v)):
        raise ConformalError("losses contain NaN or inf")
    m = n_total - n_cal
    rng = np.random.default_rng(seed)
    total = float(v.sum())
    block = max(1, min(draws, 65_536 // n_total))  # about 0.5 MiB of random keys at a time
    sums = []
    for start in range(0, draws, block):
        keys = rng.random((min(block, draws - start), n_total))
        cal = np.argpartition(keys, n_cal - 1, axis=1)[:, :n_cal]
        sums.append(v[cal].sum(axis=1))
    s = np.concatenate(sums)
    return (total - s) / m - s / n_cal


def fnr_band(
    losses: Sequence[float] | np.ndarray,
    n_cal: int,
    alpha: float,
    false_alarm: float,
    *,
    jump: float = 0.0,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided acceptance band ``(low, high)`` of a split's mean test FNR (module docstring).

    Parameters
    ----------
    losses : array_like, shape (N,)
        Per-image FNR at the split's λ̂ of its n_cal calibration images and its test images.
    n_cal : int
        Calibration images n of the split.
    alpha : float
        Risk level α.
    false_alarm : float
        Probability that a correct split falls outside (half on each side).
    jump : float
        Drop ``R_cal(λ̂⁻) − R_cal(λ̂)`` of the calibration risk at λ̂ (ties), ≥ 0; widens the lower limit.

    Returns
    -------
    (float, float)
        Limits on the mean test FNR, clipped to [0, 1].
    """
    fa = float(false_alarm)
    if not 0.0 < fa < 1.0:
        raise ConformalError(f"false_alarm must lie in (0, 1), got {false_alarm!r}")
    d = resplit_differences(losses, n_cal, draws=draws, seed=seed)
    lo_q, hi_q = np.quantile(d, [fa / 2, 1 - fa / 2])
    centre = alpha_star(n_cal, alpha)
    low = max(centre - max(float(jump), 0.0) + float(lo_q), 0.0)
    high = min(centre + float(hi_q), 1.0)
    return low, high


def _verdict(value: float, low: float, high: float) -> str | None:
    if value < low:
        return "below"
    if value > high:
        return "above"
    return None


def check_fnr_split(
    test_coverage: Sequence[float],
    cal_coverage: Sequence[float],
    cal_coverage_left: Sequence[float],
    n_cal: int,
    alpha: float,
    false_alarm: float,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The FNR check of one split, in coverage terms (``1 − FNR``), for ``results.json``.

    Parameters
    ----------
    test_coverage : sequence of float
        Per-test-image coverage 1 − FNR at λ̂ (NaN: no structure, left out).
    cal_coverage : sequence of float
        Per-calibration-image coverage at λ̂, from the calibration curves.
    cal_coverage_left : sequence of float
        The same just below λ̂ (the jump of the calibration risk at λ̂).
    n_cal, alpha, false_alarm
        As in :func:`fnr_band`.

    Returns
    -------
    dict
        ``realised`` (mean test coverage), ``low``/``high`` (the band on coverage), ``inside``,
        ``outside`` ("below", "above" or None), ``n_test``, ``sd`` (of the per-image FNR at λ̂ over
        the split's images), ``cal_realised`` (the calibration coverage at λ̂) and ``jump``.
    """
    test = np.asarray(test_coverage, dtype=np.float64)
    test = test[np.isfinite(test)]
    cal = np.asarray(cal_coverage, dtype=np.float64)
    left = np.asarray(cal_coverage_left, dtype=np.float64)
    entry: dict[str, Any] = {"n_test": int(test.size), "realised": None}
    if not test.size or cal.size != n_cal:
        return entry
    losses = 1.0 - np.concatenate([cal, test])
    jump = max(float(np.mean(cal) - np.mean(left)), 0.0)
    low_fnr, high_fnr = fnr_band(losses, n_cal, alpha, false_alarm, jump=jump, seed=seed)
    realised = float(test.mean())
    low, high = 1.0 - high_fnr, 1.0 - low_fnr
    outside = _verdict(realised, low, high)
    entry.update(
        realised=realised,
        low=low,
        high=high,
        two_sided=True,
        inside=outside is None,
        outside=outside,
        sd=float(np.std(losses, ddof=1)) if losses.size > 1 else 0.0,
        cal_realised=float(np.mean(cal)),
        jump=jump,
    )
    return entry


def check_miscoverage_split(
    test_covered: Sequence[float],
    cal_covered: Sequence[float],
    cal_covered_left: Sequence[float],
    n_cal: int,
    alpha: float,
    false_alarm: float,
    *,
    exact: bool,
) -> dict[str, Any]:
    """The Beta-Binomial check of one split of a 0/1-coverage method, for ``results.json``.

    Parameters
    ----------
    test_covered : sequence of float
        Per-test-image 0/1 ``covered`` (NaN left out).
    cal_covered, cal_covered_left : sequence of float
        Per-calibration-image 0/1 coverage at λ̂ and just below λ̂, from the calibration curves: the
        images covered at λ̂ but not below it have their covering value exactly at λ̂, and two or more
        of them are a tie (may be empty when unknown, then no tie is assumed).
    n_cal, alpha, false_alarm
        As in :func:`~napari_conformal.core.bands.splitcp_coverage_band`.
    exact : bool
        Whether the method's λ_i are exact and tie-free (two-sided band).

    Returns
    -------
    dict
        ``realised`` (fraction covered), ``covered`` (count), ``low``/``high`` (as fractions) and
        ``low_count``/``high_count``, ``two_sided``, ``ties`` (calibration images whose covering value
        is exactly λ̂, beyond the first), ``inside``, ``outside``.
    """
    values = np.asarray(test_covered, dtype=np.float64)
    values = values[np.isfinite(values)]
    entry: dict[str, Any] = {"n_test": int(values.size), "realised": None}
    if not values.size:
        return entry
    rank = splitcp_rank(n_cal, alpha)
    at = np.asarray(cal_covered, dtype=np.float64) > 0.5
    below = np.asarray(cal_covered_left, dtype=np.float64) > 0.5
    atom = int(np.count_nonzero(at & ~below)) if at.size and at.shape == below.shape else 0
    ties = max(atom - 1, 0)
    two_sided = bool(exact) and ties == 0
    m = int(values.size)
    lower, upper = splitcp_coverage_band(
        n_cal, m, alpha, reps=1, false_alarm=false_alarm, two_sided=two_sided
    )
    count = int(values.sum())
    outside = "below" if count < lower else ("above" if count > upper else None)
    entry.update(
        realised=count / m,
        covered=count,
        low=lower / m,
        high=upper / m,
        low_count=int(lower),
        high_count=int(upper),
        two_sided=two_sided,
        ties=ties,
        rank=int(rank),
        allowed_uncovered=int(max_uncovered(n_cal, alpha)),
        inside=outside is None,
        outside=outside,
    )
    return entry


def nominal_fnr_centre(n_cal: int, alpha: float) -> float:
    """``1 − α*``: the mean coverage an exact FNR calibration realises (centre of the band)."""
    return 1.0 - alpha_star(n_cal, alpha)


def expected_coverage_bracket(n_cal: int, alpha: float) -> tuple[float, float]:
    """``[1 − α, min(1, 1 − α + 2/(n+1))]``: what the FNR guarantee says about the expected coverage."""
    return 1.0 - alpha, min(1.0, 1.0 - alpha + 2.0 / (n_cal + 1))
