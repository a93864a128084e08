"""Best-accuracy curves acc*_i(λ) and the CRC threshold λ̂(α, ν) computed from them.

For calibration image i the coverage search (:mod:`.search`) evaluates many
coefficient vectors c, each with its hard label-wise accuracy ``acc(c)`` and
the smallest box that holds it, ``λ(c)`` (:meth:`CoefficientBox.lambda_of`).
The image's curve is the running maximum::

    acc*_i(λ) = max{ acc(c) : c evaluated, λ(c) ≤ λ }

stored as its breakpoints (the Pareto front: λ and acc both strictly
increasing). It is non-decreasing by construction, and since every recorded
c lies in the box at λ(c), ``acc*_i(λ) > ν`` proves that the ground truth is
in the set ``C*_λ`` at accuracy rate ν (a search can only miss members, so
errors are conservative). Then::

    λ_i(ν) = inf{λ : acc*_i(λ) > ν} = the first breakpoint with acc > ν
    λ̂(α, ν) = the (n − m)-th smallest λ_i(ν),  m = ⌊(n+1)α − 1⌋

(:func:`~napari_conformal.core.quantiles.order_statistic_lambda_hat`, integer
arithmetic). Changing ν only re-reads the stored fronts: O(n · front length).

Each curve also records how far it was searched: ``searched_to`` (the largest
λ whose box was searched) and ``exhausted`` (searched up to λ_max). Where no
breakpoint exceeds ν, λ_i(ν) is only known to be ``> searched_to``; λ̂ is
exact when every such image has ``searched_to ≥ λ̂`` (they then rank above
λ̂ whatever their true λ_i), otherwise :class:`IncompleteCurvesError` says
that the search must go further.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_conformal.core.metrics.accuracy import AccuracyCurve
from napari_conformal.core.quantiles import max_uncovered, order_statistic_lambda_hat
from napari_conformal.core.validation import check_nu
from napari_conformal.errors import CalibrationError, LambdaMaxReachedError

__all__ = ["CoverageCurve", "CurveSet", "IncompleteCurvesError"]


class IncompleteCurvesError(CalibrationError):
    """The stored curves were not searched far enough to decide λ̂ for this (α, ν)."""


@dataclass(frozen=True)
class CoverageCurve(AccuracyCurve):
    """acc*(λ) of one image at one box quantile level, as a step function.

    Attributes
    ----------
    lambdas : ndarray of float64, shape (J,)
        Breakpoints, strictly increasing (the first is usually 0, the box centre).
    accuracies : ndarray of float64, shape (J,)
        acc* from each breakpoint on, strictly increasing (−inf before the first).
    coefficients : ndarray of float64, shape (J, K)
        A coefficient vector reaching each breakpoint (inside the box at that λ).
    searched_to : float
        Largest λ whose box was searched (beyond it, acc* is a lower bound).
    exhausted : bool
        Whether the search reached λ_max (then "no breakpoint above ν" means
        "not covered at any λ ≤ λ_max").
    quantile_level : float
        The q of the box the curve belongs to.
    lambda_max : float
        The λ_max of the search.
    """

    coefficients: np.ndarray
    searched_to: float
    exhausted: bool
    quantile_level: float
    lambda_max: float


@dataclass(frozen=True)
class CurveSet:
    """The calibration curves of n images, packed for O(n) threshold queries.

    Build with :meth:`from_curves`; ``lambda_hat(alpha, nu)`` then costs a
    comparison over an (n, J_max) array and one partition.
    """

    curves: tuple[CoverageCurve, ...]
    _lam: np.ndarray = field(repr=False)
    _acc: np.ndarray = field(repr=False)
    _searched: np.ndarray = field(repr=False)
    _exhausted: np.ndarray = field(repr=False)

    @classmethod
    def from_curves(cls, curves: Sequence[CoverageCurve]) -> CurveSet:
        """Pack curves of one quantile level and one λ_max."""
        curves = tuple(curves)
        if not curves:
            raise CalibrationError("need at least one calibration curve")
        for c in curves:
            if not isinstance(c, CoverageCurve):
                raise CalibrationError(f"curves must be CoverageCurve objects, got {type(c).__name__}")
        levels = {c.quantile_level for c in curves}
        if len(levels) != 1:
            raise CalibrationError(f"curves mix quantile levels {sorted(levels)}; compute them at one alpha")
        width = max(1, max(c.lambdas.size for c in curves))
        lam = np.full((len(curves), width), np.inf)
        acc = np.full((len(curves), width), -np.inf)
        for i, c in enumerate(curves):
            lam[i, : c.lambdas.size] = c.lambdas
            acc[i, : c.accuracies.size] = c.accuracies
        searched = np.array([c.searched_to for c in curves], dtype=np.float64)
        exhausted = np.array([c.exhausted for c in curves], dtype=bool)
        return cls(curves, lam, acc, searched, exhausted)

    @property
    def n(self) -> int:
        """Number of calibration images."""
        return len(self.curves)

    @property
    def quantile_level(self) -> float:
        """The q shared by the curves."""
        return self.curves[0].quantile_level

    @property
    def lambda_max(self) -> float:
        """λ_max of the search."""
        return max(c.lambda_max for c in self.curves)

    def per_image_lambda(self, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """λ_i(ν) for every image, and which of them are only lower bounds.

        Returns
        -------
        lam : ndarray of float64, shape (n,)
            λ_i(ν); inf where no breakpoint exceeds ν.
        unknown : ndarray of bool, shape (n,)
            True where λ_i(ν) is inf only because the search stopped early
            (the true value is > ``searched_to``).
        """
        nu = check_nu(nu)
        above = self._acc > nu
        has = above.any(axis=1)
        first = above.argmax(axis=1)
        lam = np.where(has, self._lam[np.arange(self.n), first], np.inf)
        unknown = ~has & ~self._exhausted
        return lam, unknown

    def lambda_hat(self, alpha: float, nu: float) -> float:
        """λ̂(α, ν), exactly as Algorithm 1 on the same searches would stop.

        Raises
        ------
        InsufficientCalibrationError
            n < 1/α − 1.
        LambdaMaxReachedError
            More than m images are not covered at any λ ≤ λ_max.
        IncompleteCurvesError
            Some curves stopped before λ̂ could be decided (search further).
        """
        lam, unknown = self.per_image_lambda(nu)
        m = max_uncovered(self.n, alpha)
        k = self.n - m
        known = np.sort(lam[~unknown])
        if known.size >= k and np.isfinite(known[k - 1]):
            value = float(known[k - 1])
            # unknown images rank above λ̂ only if their search passed it
            if not np.all(self._searched[unknown] >= value):
                raise IncompleteCurvesError(
                    f"curves of {int(np.sum(self._searched[unknown] < value))} images stopped below "
                    f"lambda={value:g} without reaching accuracy > nu={nu}; search further (raise nu_max)"
                )
            return order_statistic_lambda_hat(np.where(unknown, np.inf, lam), alpha)
        if not unknown.any():
            raise LambdaMaxReachedError(
                f"{int(np.sum(~np.isfinite(lam)))} of {self.n} calibration images reach no label-wise accuracy "
                f"> nu={nu} at any lambda up to lambda_max={self.lambda_max:g}, but at most {m} may miss "
                f"for alpha={alpha}; raise alpha, lower nu, use more components k, or raise lambda_max"
            )
        raise IncompleteCurvesError(
            f"only {int(np.sum(np.isfinite(lam)))} of {self.n} curves reach accuracy > nu={nu} within their "
            f"search (need {k} for alpha={alpha}); search further (raise nu_max or lambda_max)"
        )
