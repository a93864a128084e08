"""SACP: pixel-wise sets whose scores are aggregated over a spatial neighbourhood.

Spatial-aware conformal prediction (Liu et al. 2025) as the CONSIGN paper uses
it as a baseline (ALGORITHMS.md §2.2, §6 item 7). Two variants:

* ``"consign"`` (default; the CONSIGN reference code's APS branch): smooth the
  mean probabilities, then score with APS::

      X̃ = (1 − w)·X̄ + w·Avg_N(X̄),   w = 0.3,  N = 7×7 (2D) / 7×7×7 (3D) box incl. the centre

  ``X̃`` still sums to 1 at every pixel (the box mean is linear), so APS on it
  is eq. 12 with the labels ranked by ``X̃``.
* ``"liu"`` (Liu et al.'s ``fusion_scores``): APS scores first, then blend each
  label's score map with its mean over the 8-neighbourhood (26 in 3D; the
  3×3(×3) box without the centre)::

      s̃_l = (1 − w)·s_l + w·mean_{N \\ centre}(s_l),   w = 0.5

Both use ``scipy.ndimage.uniform_filter`` over the spatial axes only (one pass,
separable, no Python loop over pixels), with ``mode="reflect"`` (half-sample
symmetric: ``d c b a | a b c d``) at the border. The sets, the relaxed
ν-membership and the calibration are those of :mod:`~napari_conformal.core.pixelwise`
(the lowest-scoring label of each pixel is always in the set, which matters
only for ``"liu"``). The CONSIGN code's RAPS branch (smoothing cumulative
scores per label permutation) is not implemented: its ranking is inconsistent
(ALGORITHMS.md §2.2) and the paper reports APS ≈ RAPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_conformal.core.method import register
from napari_conformal.core.pixelwise import PixelwiseMethod, aps_scores
from napari_conformal.errors import ConformalError

__all__ = ["SACP", "VARIANTS", "aggregate_scores", "neighbourhood_mean", "smooth_probabilities"]

#: variant → (default weight w, default box size per axis, centre included)
VARIANTS: dict[str, tuple[float, int, bool]] = {
    "consign": (0.3, 7, True),
    "liu": (0.5, 3, False),
}
_MODES = ("reflect", "nearest", "mirror", "wrap", "constant")


def _box(size: int | Sequence[int], spatial_ndim: int) -> tuple[int, ...]:
    sizes = (size,) * spatial_ndim if np.ndim(size) == 0 else tuple(size)
    if len(sizes) != spatial_ndim:
        raise ConformalError(
            f"size must be one int or {spatial_ndim} ints (one per spatial axis), got {size}"
        )
    for s in sizes:
        if int(s) != s or s < 1 or s % 2 == 0:
            raise ConformalError(f"neighbourhood sizes must be odd positive integers, got {size}")
    return tuple(int(s) for s in sizes)


def neighbourhood_mean(
    values: np.ndarray,
    size: int | Sequence[int] = 7,
    *,
    include_centre: bool = True,
    mode: str = "reflect",
) -> np.ndarray:
    """Per-channel mean over a box neighbourhood of every pixel.

    Parameters
    ----------
    values : ndarray, shape (L, *S)
        One map per channel; S has 2 or 3 axes.
    size : int or sequence of int
        Odd box side per spatial axis (one int for all axes).
    include_centre : bool
        Include the pixel itself (a box mean) or not (mean of the other
        ``Π size − 1`` pixels).
    mode : str
        Border handling of ``scipy.ndimage.uniform_filter``.

    Returns
    -------
    ndarray of float64, shape (L, *S)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (3, 4):
        raise ConformalError(f"values must have shape (L, Y, X) or (L, Z, Y, X), got shape {values.shape}")
    if mode not in _MODES:
        raise ConformalError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    box = _box(size, values.ndim - 1)
    count = math.prod(box)
    if not include_centre and count == 1:
        raise ConformalError("a 1-pixel neighbourhood without its centre is empty; use a larger size")
    mean = ndimage.uniform_filter(values, size=(1, *box), mode=mode)
    if include_centre:
        return mean
    return (mean * count - values) / (count - 1)


def smooth_probabilities(
    probs: np.ndarray, weight: float = 0.3, size: int | Sequence[int] = 7, *, mode: str = "reflect"
) -> np.ndarray:
    """``X̃ = (1 − w)·X̄ + w·Avg_box(X̄)`` (CONSIGN-code SACP), shape (L, *S)."""
    weight = _check_weight(weight)
    probs = np.asarray(probs, dtype=np.float64)
    return (1.0 - weight) * probs + weight * neighbourhood_mean(probs, size, include_centre=True, mode=mode)


def aggregate_scores(
    scores: np.ndarray, weight: float = 0.5, size: int | Sequence[int] = 3, *, mode: str = "reflect"
) -> np.ndarray:
    """``s̃ = (1 − w)·s + w·mean_{box \\ centre}(s)`` (Liu et al.'s SACP), shape (L, *S)."""
    weight = _check_weight(weight)
    scores = np.asarray(scores, dtype=np.float64)
    return (1.0 - weight) * scores + weight * neighbourhood_mean(
        scores, size, include_centre=False, mode=mode
    )


def _check_weight(weight: float) -> float:
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ConformalError(f"the neighbourhood weight must lie in [0, 1], got {weight}")
    return weight


@register("sacp")
class SACP(PixelwiseMethod):
    """SACP baseline (APS on neighbourhood-aggregated scores).

    Parameters
    ----------
    alpha, nu, k, sum_atol
        See :class:`~napari_conformal.core.pixelwise.PixelwiseMethod`.
    variant : {"consign", "liu"}
        Which SACP (module docstring).
    weight : float, optional
        Neighbourhood weight w; default 0.3 (consign) / 0.5 (liu).
    size : int or sequence of int, optional
        Odd box side(s); default 7 (consign: 7×7 or 7×7×7) / 3 (liu).
    mode : str
        Border handling (default ``"reflect"``).
    """

    def __init__(
        self,
        alpha: float,
        nu: float | None = None,
        k: int | None = None,
        *,
        variant: str = "consign",
        weight: float | None = None,
        size: int | Sequence[int] | None = None,
        mode: str = "reflect",
        sum_atol: float | None = None,
    ) -> None:
        super().__init__(alpha, nu, k, sum_atol=sum_atol)
        if variant not in VARIANTS:
            raise ConformalError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if mode not in _MODES:
            raise ConformalError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        default_weight, default_size, _ = VARIANTS[variant]
        self.variant = variant
        self.weight = _check_weight(default_weight if weight is None else weight)
        self.size = default_size if size is None else size
        _box(self.size, 1 if np.ndim(self.size) == 0 else len(self.size))  # odd positive sizes
        self.mode = mode

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """SACP scores of the chosen variant, shape (L, *S)."""
        if self.variant == "consign":
            return aps_scores(smooth_probabilities(probs, self.weight, self.size, mode=self.mode))
        return aggregate_scores(aps_scores(probs), self.weight, self.size, mode=self.mode)

    def params(self) -> dict[str, Any]:
        """``variant``, ``weight``, ``size``, ``mode``."""
        size = self.size if np.ndim(self.size) == 0 else [int(s) for s in self.size]
        return {
            "variant": self.variant,
            "weight": self.weight,
            "size": size,
            "mode": self.mode,
        }
