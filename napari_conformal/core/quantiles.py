"""Conformal risk control (CRC): from per-image losses to the calibrated λ̂.

Three entry points, one rule. For n calibration images with losses bounded by
``B`` and non-increasing in λ, conformal risk control picks::

    λ̂ = inf{ λ : n/(n+1) · R̂_n(λ) + B/(n+1) ≤ α },   R̂_n(λ) = mean_i L_i(λ)

which guarantees ``E[L_test(λ̂)] ≤ α`` under exchangeability
(Angelopoulos et al., "Conformal risk control", 2022).

* :func:`lambda_hat_from_curves` evaluates the rule on loss curves sampled on
  an increasing λ grid (any bounded loss).
* :class:`ThresholdRiskCurve` is the exact, grid-free version for threshold
  sets ``{p : S_p ≥ 1 − λ}`` under the false-negative-rate loss (standard CRC,
  RW-CP). It is built once from the calibration scores; :meth:`lambda_hat`
  then answers any α in O(log M).
* :func:`order_statistic_lambda_hat` is the 0/1-loss case (CONSIGN, pixel-wise
  sets, Consema): with ``λ_i`` the smallest λ that covers image i, λ̂ is an
  order statistic, found with exact integer arithmetic
  (``#uncovered ≤ ⌊(n+1)α − B⌋``).

All functions are pure numpy and raise subclasses of
:class:`~napari_conformal.errors.CalibrationError` with messages that say how
to fix the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_conformal.core.validation import check_calibration_size, exact_fraction, min_calibration_size
from napari_conformal.errors import (
    CalibrationError,
    LambdaMaxReachedError,
    NonMonotoneCurveError,
)

__all__ = [
    "ThresholdRiskCurve",
    "adjusted_alpha",
    "check_calibration_size",
    "exact_fraction",
    "lambda_hat_from_curves",
    "max_uncovered",
    "min_calibration_size",
    "order_statistic_lambda_hat",
]


def max_uncovered(n: int, alpha: float, bound: float = 1.0) -> int:
    """Number of calibration images the 0/1-loss CRC rule may leave uncovered.

    ``⌊(n+1)α − B⌋`` computed exactly (e.g. 68 for n = 275, α = 0.25).
    Raises :class:`InsufficientCalibrationError` when it is negative.
    """
    check_calibration_size(n, alpha, bound)
    return math.floor((n + 1) * exact_fraction(alpha) - exact_fraction(bound))


def adjusted_alpha(n: int, alpha: float, bound: float = 1.0) -> float:
    """The finite-sample target ``α* = ((n+1)α − B)/n`` for the empirical risk.

    ``λ̂ = inf{λ : R̂_n(λ) ≤ α*}`` is the same rule as in the module docstring.
    """
    check_calibration_size(n, alpha, bound)
    return float(((n + 1) * exact_fraction(alpha) - exact_fraction(bound)) / n)


def lambda_hat_from_curves(
    losses: np.ndarray,
    lambdas: np.ndarray,
    alpha: float,
    bound: float = 1.0,
    *,
    monotone_atol: float = 1e-9,
) -> float:
    """CRC threshold from loss curves sampled on a λ grid.

    Parameters
    ----------
    losses : ndarray, shape (n, G)
        ``losses[i, j] = L_i(λ_j)``: the loss of calibration image i at grid
        point j, in ``[0, B]`` and non-increasing along j.
    lambdas : ndarray, shape (G,)
        Strictly increasing grid of λ values.
    alpha : float
        Target risk in (0, B).
    bound : float
        Loss bound B.
    monotone_atol : float
        Increases smaller than this are treated as round-off.

    Returns
    -------
    float
        The smallest grid λ with ``n/(n+1)·R̂_n(λ) + B/(n+1) ≤ α``.

    Raises
    ------
    InsufficientCalibrationError
        ``n < B/α − 1``.
    NonMonotoneCurveError
        Some curve increases with λ.
    LambdaMaxReachedError
        No grid point satisfies the bound.
    CalibrationError
        Malformed inputs (shapes, NaN, losses outside ``[0, B]``).
    """
    losses = np.asarray(losses, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if losses.ndim != 2:
        raise CalibrationError(f"losses must have shape (n_images, n_lambdas), got shape {losses.shape}")
    if lambdas.ndim != 1 or lambdas.shape[0] != losses.shape[1]:
        raise CalibrationError(
            f"lambdas must have shape ({losses.shape[1]},) to match losses, got shape {lambdas.shape}"
        )
    if lambdas.size == 0 or losses.shape[0] == 0:
        raise CalibrationError("losses must hold at least one image and one lambda")
    if not np.all(np.isfinite(losses)) or not np.all(np.isfinite(lambdas)):
        raise CalibrationError("losses and lambdas must be finite (found NaN or inf)")
    if np.any(np.diff(lambdas) <= 0):
        raise CalibrationError("lambdas must be strictly increasing")
    if losses.min() < 0 or losses.max() > float(bound):
        raise CalibrationError(
            f"losses must lie in [0, B] = [0, {bound}], found range [{losses.min():g}, {losses.max():g}]"
        )
    n = losses.shape[0]
    check_calibration_size(n, alpha, bound)
    rises = np.diff(losses, axis=1) > monotone_atol
    if rises.any():
        i, j = np.argwhere(rises)[0]
        raise NonMonotoneCurveError(
            f"loss curve of calibration image {i} increases between lambda={lambdas[j]:g} and "
            f"lambda={lambdas[j + 1]:g}; conformal risk control needs losses non-increasing in lambda "
            "(use nested prediction sets)"
        )
    # n/(n+1) R̂ + B/(n+1) ≤ α  ⇔  Σ_i L_i ≤ (n+1) α − B; the right side is
    # formed exactly and rounded once, so integer loss sums (0/1 losses)
    # compare exactly (a float (n+1)·α can land just below an integer)
    budget = float((n + 1) * exact_fraction(alpha) - exact_fraction(bound))
    ok = losses.sum(axis=0) <= budget
    if not ok.any():
        best = losses.mean(axis=0).min()
        raise LambdaMaxReachedError(
            f"no lambda up to lambda_max={lambdas[-1]:g} satisfies the risk bound for alpha={alpha} "
            f"(lowest empirical risk {best:.4g}); raise lambda_max or alpha"
        )
    return float(lambdas[int(np.argmax(ok))])


def order_statistic_lambda_hat(
    per_image_lambda: Sequence[float] | np.ndarray,
    alpha: float,
    bound: float = 1.0,
    *,
    lambda_max: float | None = None,
) -> float:
    """CRC threshold for a 0/1 loss (miscoverage) from per-image λ_i.

    Parameters
    ----------
    per_image_lambda : array_like, shape (n,)
        ``λ_i = inf{λ : image i is covered by C_λ}``; ``inf`` where image i is
        not covered by any λ up to λ_max.
    alpha : float
        Target miscoverage in (0, 1).
    bound : float
        Loss bound B (1 for the 0/1 loss).
    lambda_max : float, optional
        Largest λ searched; a λ̂ above it raises :class:`LambdaMaxReachedError`.

    Returns
    -------
    float
        The ``(n − m)``-th smallest λ_i, ``m = ⌊(n+1)α − B⌋``, i.e. the
        ``⌈(n+1)(1−α)⌉``-th order statistic for B = 1.
    """
    lam = np.asarray(per_image_lambda, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise CalibrationError(f"per_image_lambda must be a non-empty 1-D array, got shape {lam.shape}")
    if np.isnan(lam).any():
        raise CalibrationError("per_image_lambda contains NaN")
    n = lam.size
    m = max_uncovered(n, alpha, bound)
    # 1-indexed rank; m ≥ n (only possible for B > 1) lets every image stay
    # uncovered, where the smallest λ_i is a valid (conservative) choice
    k = max(n - m, 1)
    value = float(np.partition(lam, k - 1)[k - 1])
    limit = np.inf if lambda_max is None else float(lambda_max)
    if not np.isfinite(value) or value > limit:
        n_bad = int(np.sum(~(np.isfinite(lam) & (lam <= limit))))
        raise LambdaMaxReachedError(
            f"{n_bad} of {n} calibration images are not covered by any lambda up to lambda_max"
            f"{'' if lambda_max is None else '=' + format(limit, 'g')}, but at most {m} may be for "
            f"alpha={alpha}; raise lambda_max or alpha"
        )
    return value


def _risk_weights(nonconformity: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    values, weights = [], []
    for i, r in enumerate(nonconformity):
        r = np.asarray(r, dtype=np.float64).ravel()
        if r.size == 0:
            raise CalibrationError(
                f"calibration image {i} has an empty ground truth: the false-negative rate is undefined; "
                "remove it from the calibration set"
            )
        if not np.all(np.isfinite(r)):
            raise CalibrationError(f"scores of calibration image {i} contain NaN or inf")
        values.append(r)
        # weights in units of images (1/|Y_i|); divided by n only at the end so
        # that sums of equal-size images (e.g. single pixels) stay exact
        weights.append(np.full(r.size, 1.0 / r.size))
    return np.concatenate(values), np.concatenate(weights)


@dataclass(frozen=True)
class ThresholdRiskCurve:
    """Exact empirical FNR of threshold sets as a step function of λ.

    For a nonconformity score ``r_p = 1 − S_p`` the set ``C_λ = {p : r_p ≤ λ}``
    equals ``{p : S_p ≥ 1 − λ}``, and the false-negative rate of image i is
    ``FNR_i(λ) = #{p ∈ Y_i : r_p > λ} / |Y_i|``. Build this once from the
    ground-truth-foreground scores of the calibration images; every α then
    costs one binary search.

    Attributes
    ----------
    values : ndarray, shape (U,)
        Distinct nonconformity values of ground-truth pixels, descending.
    risk : ndarray, shape (U,)
        ``R̂_n(values[k])``, non-decreasing in k.
    n : int
        Number of calibration images.
    """

    values: np.ndarray
    risk: np.ndarray
    n: int

    @classmethod
    def from_nonconformity(cls, nonconformity: Sequence[np.ndarray]) -> ThresholdRiskCurve:
        """Build from per-image scores ``r = 1 − S`` of ground-truth pixels.

        Parameters
        ----------
        nonconformity : sequence of n arrays, any shape
            Image i's array holds ``1 − S_p`` for every p in its ground-truth
            foreground (|Y_i| values, float).
        """
        if len(nonconformity) == 0:
            raise CalibrationError("need at least one calibration image")
        r, w = _risk_weights(nonconformity)
        order = np.argsort(-r, kind="stable")
        r, w = r[order], w[order]
        n = len(nonconformity)
        cum = np.cumsum(w)  # cum[j] = Σ_i FNR contributions of the j+1 largest scores
        last = np.r_[np.nonzero(np.diff(r))[0], r.size - 1]  # last index of each tie group
        values = r[last]
        # risk at λ = values[k] counts scores strictly greater than values[k];
        # one rounding of (loss sum)/n, the same as the target ((n+1)α − 1)/n
        risk = np.r_[0.0, cum[last[:-1]]] / n
        return cls(values=values, risk=risk, n=n)

    @classmethod
    def from_scores(cls, fg_scores: Sequence[np.ndarray]) -> ThresholdRiskCurve:
        """Build from per-image foreground probabilities ``S_p`` of ground-truth pixels."""
        return cls.from_nonconformity([1.0 - np.asarray(s, dtype=np.float64) for s in fg_scores])

    def empirical_risk(self, lam: float | np.ndarray) -> np.ndarray:
        """``R̂_n(λ)``: mean FNR over calibration images of ``C_λ``."""
        lam = np.asarray(lam, dtype=np.float64)
        # number of distinct values strictly greater than λ
        k = np.searchsorted(-self.values, -lam, side="left")
        total = np.r_[self.risk, 1.0]
        return total[k] if k.ndim else np.float64(total[int(k)])

    def lambda_hat(self, alpha: float) -> float:
        """Exact ``λ̂ = inf{λ ≥ 0 : n/(n+1)·R̂_n(λ) + 1/(n+1) ≤ α}``.

        Returns a value of the nonconformity scale: apply it as
        ``C = {p : 1 − S_p ≤ λ̂}`` (compute ``1 − S`` in float64, as here, so
        that the comparison is bit-exact). The risk comparison is exact when
        every ``|Y_i|`` is a power of two (single-pixel foregrounds included,
        where this is the split-CP order statistic); otherwise ``R̂`` carries
        float64 round-off (~1e-16 relative).
        """
        return self.lambda_for_risk(adjusted_alpha(self.n, alpha, 1.0))

    def lambda_for_risk(self, target: float) -> float:
        """``inf{λ ≥ 0 : R̂_n(λ) ≤ target}``: the smallest λ whose empirical FNR is at most ``target``.

        With ``target = α*`` (:func:`adjusted_alpha`) this is :meth:`lambda_hat`; other targets give
        plug-in thresholds without a guarantee (e.g. for choosing hyper-parameters). A target below
        0 is treated as 0 (every ground-truth pixel kept).
        """
        k = int(np.searchsorted(self.risk, max(float(target), 0.0), side="right")) - 1
        return max(float(self.values[k]), 0.0)
