"""Segmentation-set metrics (RW-CP §4.3; docs/algorithms.md#metrics), 2D and 3D, spacing-aware.

All functions take binary masks (bool or integer arrays, nonzero = inside) of
one shape ``S`` = (Y, X) or (Z, Y, X) (any ndim ≥ 1 works) and return Python
floats. Distances are in physical units when ``spacing`` (one positive value
per axis, e.g. mm) is given, in pixels otherwise.

Definitions, with C the prediction set, Y the ground truth, Ŷ the reference
(hard) prediction::

    coverage = |C ∩ Y| / |Y|                 (= 1 − FNR)
    fnr      = 1 − coverage
    stretch  = |C| / |Ŷ|
    dice     = 2 |C ∩ Y| / (|C| + |Y|)
    ∂A       = A XOR erosion(A)              face-connected structuring element
                                             (4-connectivity in 2D, 6 in 3D),
                                             pixels outside the image count as
                                             background, so A touching the image
                                             border has its border pixels on ∂A
    d(p, ∂B) = min Euclidean distance (scaled by ``spacing``) from p to ∂B
    assd     = (Σ_{p∈∂A} d(p,∂B) + Σ_{q∈∂B} d(q,∂A)) / (|∂A| + |∂B|)
               POOLED over both directions, as the RW-CP paper defines it
               (not medpy's mean of the two directed means)
    hd95     = 95th percentile (numpy linear interpolation) of the pooled
               directed distances {d(p,∂B)} ∪ {d(q,∂A)}  (medpy convention)
    hausdorff= max of the pooled directed distances

Empty-mask policy
-----------------
One rule: **a metric is NaN exactly when its defining ratio has a zero
denominator or a distance has no contour to measure from or to.** Nothing
raises for empty masks; means over images use :func:`nanmean_metrics`,
which skips NaN (docs/algorithms.md#choices-where-the-papers-are-silent).

============================  ===============================================
case                          value
============================  ===============================================
coverage/fnr, truth empty     NaN  (0/0: nothing to cover)
coverage, pred empty only     0.0  (fnr 1.0)
stretch, reference empty      NaN  (0/0 or x/0)
stretch, pred empty only      0.0
dice, both empty              NaN  (0/0; see below)
dice, exactly one empty       0.0
assd/hd95/hausdorff, either   NaN  (no contour on one side; the image
mask empty                          diagonal would be an arbitrary penalty)
surface_distances, a empty    d_ab = empty array, d_ba = +inf for every
                              contour pixel of b (and symmetrically)
============================  ===============================================

Why dice(∅, ∅) = NaN rather than 1: with an empty ground truth, coverage is
undefined too, and RW-CP excludes such images (the evaluation slices are
chosen to contain foreground). Reporting 1 would let images with nothing to
segment inflate the mean Dice, while NaN keeps the single rule above and is
skipped by :func:`nanmean_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_conformal.errors import ConformalError

__all__ = [
    "METRIC_KEYS",
    "assd",
    "contour",
    "coverage",
    "dice",
    "fnr",
    "hausdorff",
    "hd95",
    "nanmean_metrics",
    "segmentation_metrics",
    "stretch",
    "surface_distances",
]

#: Keys of the dict returned by :func:`segmentation_metrics`.
METRIC_KEYS = ("coverage", "stretch", "dice", "assd", "hd95")

_NAN = float("nan")


# --------------------------------------------------------------------------- validation


def _as_mask(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        pass
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr != 0
    else:
        raise ConformalError(
            f"{name} must be a boolean or integer mask, got dtype {arr.dtype} "
            "(threshold probabilities before computing metrics)"
        )
    if arr.ndim == 0:
        raise ConformalError(f"{name} must have at least one axis, got a scalar")
    return arr


def _pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a = _as_mask(a, name_a)
    b = _as_mask(b, name_b)
    if a.shape != b.shape:
        raise ConformalError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.ndim(spacing) != 1:
        raise ConformalError(
            f"spacing must be a sequence of {ndim} positive numbers (one per axis), got {spacing!r}"
        )
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ConformalError(f"spacing must have one value per axis ({ndim}), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ConformalError(f"spacing values must be finite and positive, got {values}")
    return values


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den > 0 else _NAN


# --------------------------------------------------------------------------- overlap metrics


def coverage(pred_set: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the ground truth inside the set, ``|C ∩ Y| / |Y|`` (= 1 − FNR).

    Parameters
    ----------
    pred_set, truth : ndarray of bool or int, shape S
        Prediction set C and ground truth Y.

    Returns
    -------
    float
        In [0, 1]; NaN when ``truth`` is empty.
    """
    c, y = _pair(pred_set, truth, "pred_set", "truth")
    return _ratio(np.count_nonzero(c & y), np.count_nonzero(y))


def fnr(pred_set: np.ndarray, truth: np.ndarray) -> float:
    """False-negative rate ``1 − |C ∩ Y| / |Y|``; NaN when ``truth`` is empty."""
    return 1.0 - coverage(pred_set, truth)


def stretch(pred_set: np.ndarray, reference: np.ndarray) -> float:
    """Size of the set relative to the reference prediction, ``|C| / |Ŷ|``.

    Parameters
    ----------
    pred_set, reference : ndarray of bool or int, shape S
        Prediction set C and reference hard prediction Ŷ (RW-CP: ``S⁽⁰⁾ ≥ 0.5``).

    Returns
    -------
    float
        ≥ 0; NaN when ``reference`` is empty.
    """
    c, r = _pair(pred_set, reference, "pred_set", "reference")
    return _ratio(np.count_nonzero(c), np.count_nonzero(r))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity ``2|C ∩ Y| / (|C| + |Y|)`` in [0, 1]; NaN when both are empty."""
    c, y = _pair(pred, truth, "pred", "truth")
    return _ratio(2 * np.count_nonzero(c & y), np.count_nonzero(c) + np.count_nonzero(y))


# --------------------------------------------------------------------------- surface distances


def contour(mask: np.ndarray) -> np.ndarray:
    """Inner contour ``∂A = A XOR erosion(A)`` with the face-connected structuring element.

    Parameters
    ----------
    mask : ndarray of bool or int, shape S

    Returns
    -------
    ndarray of bool, shape S
        Pixels of A with at least one face neighbour outside A (the image
        outside counts as background).
    """
    a = _as_mask(mask, "mask")
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    return a ^ ndimage.binary_erosion(a, structure=structure)


def _crop_box(union: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``union`` grown by one pixel (clipped to the image).

    Within this box the contours and the contour-to-contour distances are the
    same as in the full image: every pixel of A or B keeps all its face
    neighbours (or the image border), and Euclidean distance does not depend
    on what lies outside the box.
    """
    box = []
    for axis, size in enumerate(union.shape):
        others = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(union.any(axis=others)) if others else np.flatnonzero(union)
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, size)))
    return tuple(box)


def _directed(from_contour: np.ndarray, to_contour: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    n_from = int(np.count_nonzero(from_contour))
    if n_from == 0:
        return np.zeros(0, dtype=np.float64)
    if not to_contour.any():
        return np.full(n_from, np.inf)
    dist = ndimage.distance_transform_edt(~to_contour, sampling=sampling)
    return np.asarray(dist[from_contour], dtype=np.float64)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed contour-to-contour distances between two masks.

    Parameters
    ----------
    a, b : ndarray of bool or int, shape S
        Binary masks.
    spacing : sequence of float, optional
        Physical size of a pixel along each axis (length ndim, all > 0), e.g.
        ``(z_mm, y_mm, x_mm)``; default 1 per axis (pixel units).

    Returns
    -------
    d_ab : ndarray of float64, shape (|∂A|,)
        For each contour pixel of ``a`` (C order), the distance to the nearest
        contour pixel of ``b``.
    d_ba : ndarray of float64, shape (|∂B|,)
        The same from ``b`` to ``a``.

    Notes
    -----
    An empty mask has no contour: its own array is empty and the other
    direction is ``+inf`` everywhere (the distance to an empty set).
    """
    a, b = _pair(a, b, "a", "b")
    sampling = _spacing(spacing, a.ndim)
    union = a | b
    if not union.any():
        return np.zeros(0), np.zeros(0)
    box = _crop_box(union)
    ca = contour(a[box])
    cb = contour(b[box])
    return _directed(ca, cb, sampling), _directed(cb, ca, sampling)


def _pooled(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray | None:
    """Pooled directed distances, or None when either mask is empty."""
    a, b = _pair(a, b, "a", "b")
    _spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        return None
    d_ab, d_ba = surface_distances(a, b, spacing)
    return np.concatenate([d_ab, d_ba])


def assd(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance, pooled over both directions.

    ``(Σ_{p∈∂A} d(p,∂B) + Σ_{q∈∂B} d(q,∂A)) / (|∂A| + |∂B|)`` in the units of
    ``spacing``; NaN when either mask is empty. See :func:`surface_distances`.
    """
    pooled = _pooled(a, b, spacing)
    return _NAN if pooled is None else float(pooled.mean())


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance (pooled directed distances, linear interpolation).

    NaN when either mask is empty. See :func:`surface_distances`.
    """
    pooled = _pooled(a, b, spacing)
    return _NAN if pooled is None else float(np.percentile(pooled, 95))


def hausdorff(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Hausdorff distance between the contours (max of both directed maxima); NaN if either is empty."""
    pooled = _pooled(a, b, spacing)
    return _NAN if pooled is None else float(pooled.max())


# --------------------------------------------------------------------------- bundles


def segmentation_metrics(
    pred_set: np.ndarray,
    truth: np.ndarray,
    reference: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """All per-image metrics of a binary prediction set.

    Parameters
    ----------
    pred_set : ndarray of bool or int, shape S
        Prediction set C.
    truth : ndarray of bool or int, shape S
        Ground truth Y.
    reference : ndarray of bool or int, shape S, optional
        Reference hard prediction Ŷ for the stretch; without it ``stretch`` is NaN.
    spacing : sequence of float, optional
        Pixel size per axis for the distance metrics.

    Returns
    -------
    dict
        Keys :data:`METRIC_KEYS` = ``coverage, stretch, dice, assd, hd95``
        (floats, NaN where undefined; see the module docstring).
    """
    c, y = _pair(pred_set, truth, "pred_set", "truth")
    sampling = _spacing(spacing, c.ndim)
    if reference is None:
        stretch_value = _NAN
    else:
        _, r = _pair(pred_set, reference, "pred_set", "reference")
        stretch_value = _ratio(np.count_nonzero(c), np.count_nonzero(r))
    n_c, n_y, n_cy = np.count_nonzero(c), np.count_nonzero(y), np.count_nonzero(c & y)
    pooled = _pooled(c, y, sampling)
    return {
        "coverage": _ratio(n_cy, n_y),
        "stretch": stretch_value,
        "dice": _ratio(2 * n_cy, n_c + n_y),
        "assd": _NAN if pooled is None else float(pooled.mean()),
        "hd95": _NAN if pooled is None else float(np.percentile(pooled, 95)),
    }


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating, np.bool_)) and not isinstance(value, str)
    )


def nanmean_metrics(
    per_image: Iterable[Mapping[str, Any]], exclude: Sequence[str] = ("index",)
) -> dict[str, Any]:
    """Mean of per-image metric dicts over images, skipping NaN (and None).

    Parameters
    ----------
    per_image : iterable of dict
        One dict per image. Values are numbers (bool counts as 0/1, None as
        NaN) or nested dicts of numbers (e.g. ``{"chao1": {10: 3.0, 50: 7.5}}``),
        averaged key by key. A key missing from an image counts as NaN there.
    exclude : sequence of str
        Top-level keys to leave out (default: ``"index"``).

    Returns
    -------
    dict
        Same keys (minus ``exclude``), each the NaN-ignoring mean; NaN where
        every image is NaN or the input is empty.

    Raises
    ------
    ConformalError
        A value is neither a number, None nor a dict.
    """
    rows = list(per_image)
    skip = set(exclude)
    keys: list[Any] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise ConformalError(f"per_image must hold dicts, got {type(row).__name__}")
        keys.extend(k for k in row if k not in skip and k not in keys)
    out: dict[Any, Any] = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        nested = [v for v in values if isinstance(v, Mapping)]
        if nested:
            if len(nested) != sum(v is not None for v in values):
                raise ConformalError(f"metric {key!r} mixes nested dicts and numbers across images")
            out[key] = nanmean_metrics([v if v is not None else {} for v in values], exclude=())
            continue
        for v in values:
            if not _is_number(v):
                raise ConformalError(f"metric {key!r} must be a number or a dict, got {type(v).__name__}")
        arr = np.array([_NAN if v is None else float(v) for v in values], dtype=np.float64)
        finite = arr[~np.isnan(arr)]
        out[key] = float(finite.mean()) if finite.size else _NAN
    return out
