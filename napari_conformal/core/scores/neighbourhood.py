"""SACP's spatial aggregation: a label's probabilities or scores blended with their neighbourhood mean.

Two variants (docs/algorithms.md#sacp):

* ``"consign"`` (the CONSIGN reference's APS branch): ``X̃ = (1 − w)·X̄ + w·Avg_N(X̄)``, w = 0.3, N the
  7×7 (7×7×7) box including the centre;
* ``"liu"`` (Liu et al.'s ``fusion_scores``): ``s̃_l = (1 − w)·s_l + w·mean_{N \\ centre}(s_l)``, w = 0.5,
  N the 3×3(×3) box without the centre.

Both use ``scipy.ndimage.uniform_filter`` over the spatial axes only, with ``mode="reflect"`` at the
border.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_conformal.errors import ParameterError

__all__ = [
    "BORDER_MODES",
    "VARIANTS",
    "aggregate_scores",
    "check_box",
    "check_weight",
    "neighbourhood_mean",
    "smooth_probabilities",
]

#: variant → (default weight w, default box size per axis, centre included)
VARIANTS: dict[str, tuple[float, int, bool]] = {
    "consign": (0.3, 7, True),
    "liu": (0.5, 3, False),
}
#: border handling accepted by ``scipy.ndimage.uniform_filter``
BORDER_MODES = ("reflect", "nearest", "mirror", "wrap", "constant")


def check_box(size: int | Sequence[int], spatial_ndim: int) -> tuple[int, ...]:
    """Odd positive box sides, one per spatial axis (one int applies to every axis)."""
    sizes = (size,) * spatial_ndim if np.ndim(size) == 0 else tuple(size)
    if len(sizes) != spatial_ndim:
        raise ParameterError(
            f"size must be one int or {spatial_ndim} ints (one per spatial axis), got {size}"
        )
    for s in sizes:
        if int(s) != s or s < 1 or s % 2 == 0:
            raise ParameterError(f"neighbourhood sizes must be odd positive integers, got {size}")
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
        raise ParameterError(f"values must have shape (L, Y, X) or (L, Z, Y, X), got shape {values.shape}")
    if mode not in BORDER_MODES:
        raise ParameterError(f"mode must be one of {', '.join(BORDER_MODES)}, got {mode!r}")
    box = check_box(size, values.ndim - 1)
    count = math.prod(box)
    if not include_centre and count == 1:
        raise ParameterError("a 1-pixel neighbourhood without its centre is empty; use a larger size")
    mean = ndimage.uniform_filter(values, size=(1, *box), mode=mode)
    if include_centre:
        return mean
    return (mean * count - values) / (count - 1)


def smooth_probabilities(
    probs: np.ndarray, weight: float = 0.3, size: int | Sequence[int] = 7, *, mode: str = "reflect"
) -> np.ndarray:
    """``X̃ = (1 − w)·X̄ + w·Avg_box(X̄)`` (CONSIGN-code SACP), shape (L, *S)."""
    weight = check_weight(weight)
    probs = np.asarray(probs, dtype=np.float64)
    return (1.0 - weight) * probs + weight * neighbourhood_mean(probs, size, include_centre=True, mode=mode)


def aggregate_scores(
    scores: np.ndarray, weight: float = 0.5, size: int | Sequence[int] = 3, *, mode: str = "reflect"
) -> np.ndarray:
    """``s̃ = (1 − w)·s + w·mean_{box \\ centre}(s)`` (Liu et al.'s SACP), shape (L, *S)."""
    weight = check_weight(weight)
    scores = np.asarray(scores, dtype=np.float64)
    return (1.0 - weight) * scores + weight * neighbourhood_mean(
        scores, size, include_centre=False, mode=mode
    )


def check_weight(weight: float) -> float:
    """The neighbourhood weight w in [0, 1]."""
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ParameterError(f"the neighbourhood weight must lie in [0, 1], got {weight}")
    return weight
