"""Deliberately wrong calibration rules for the tests of the guarantee tests.

Each is a subclass of a real method that changes only ``lambda_hat`` (the reduction), so the harness
(:func:`napari_conformal.testing.guarantees.run_repetitions`) runs it as a ``variant`` on the real
method's prepared images and curves. Nothing is registered: :func:`~napari_conformal.core.methods.base.register`
is a decorator these classes never pass through, so ``make_method`` and ``available_methods`` do not
see them.

* :func:`shifted_rank` — the order statistic ``k + shift`` instead of split CP's
  ``k = n − ⌊(n+1)α − 1⌋`` (``shift = -1``: one rank too small, a coverage bug; ``+1``: one too
  large, e.g. Consema's reference code, which indexes its sorted scores at ``⌈(n+1)(1−α)⌉`` from
  zero). ``shift = 0`` must reproduce the real λ̂ (asserted by the tests), so a test of a test
  really changes only the rank.
* :func:`scaled_target` — CRC (or RW-CP) calibrated at ``factor · α`` instead of α.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_conformal.core.bands import splitcp_rank
from napari_conformal.core.consign.curves import CurveSet
from napari_conformal.core.methods.consema import ConsemaMethod
from napari_conformal.core.methods.consign import ConsignMethod
from napari_conformal.core.methods.pixelwise import PixelwiseMethod
from napari_conformal.core.validation import check_nu
from napari_conformal.errors import ConformalError, LambdaMaxReachedError


def per_image_lambdas(method: Any, curves: Sequence[Any], alpha: float, nu: float | None) -> np.ndarray:
    """``λ_i`` of each calibration image: the smallest λ that covers it (inf: none up to λ_max)."""
    if isinstance(method, PixelwiseMethod):
        return np.array([c.lambda_for(check_nu(nu)) for c in curves])
    if isinstance(method, ConsemaMethod):
        tau = method.tau_at(alpha)
        return np.array([c.score(tau) for c in curves], dtype=np.float64)
    if isinstance(method, ConsignMethod):
        lam, unknown = CurveSet.from_curves([c.at(method.q(alpha)) for c in curves]).per_image_lambda(
            check_nu(nu)
        )
        # an image whose search stopped early lies above every searched box: above λ̂, so above rank k − 1
        return np.where(unknown, np.inf, lam)
    raise TypeError(f"no per-image lambda for {type(method).__name__}")


def shifted_rank(cls: type, shift: int) -> type:
    """``cls`` with λ̂ the ``(k + shift)``-th smallest ``λ_i`` (k of split CP; 1-indexed)."""

    class ShiftedRank(cls):  # type: ignore[misc, valid-type]
        def lambda_hat(self, curves: Sequence[Any], *, alpha: float, nu: float | None = None) -> float:
            lam = np.sort(per_image_lambdas(self, curves, alpha, nu))
            k = splitcp_rank(len(lam), alpha) + shift
            if k < 1:
                raise ConformalError(f"rank {k} is below 1")
            if k > lam.size or not np.isfinite(lam[k - 1]):  # rank n + 1: the trivial set
                raise LambdaMaxReachedError("the wrong rank lies beyond lambda_max")
            return float(lam[k - 1])

    ShiftedRank.__name__ = ShiftedRank.__qualname__ = f"{cls.__name__}Rank{shift:+d}"
    return ShiftedRank


def scaled_target(cls: type, factor: float) -> type:
    """``cls`` (a threshold FNR method) calibrated at ``factor · α``."""

    class ScaledTarget(cls):  # type: ignore[misc, valid-type]
        def lambda_hat(self, curves: Sequence[Any], *, alpha: float, nu: float | None = None) -> float:
            return super().lambda_hat(curves, alpha=factor * alpha, nu=nu)

    ScaledTarget.__name__ = ScaledTarget.__qualname__ = f"{cls.__name__}Target{factor:g}"
    return ScaledTarget
