"""The pixel-wise set at λ: ``T_λ(X)_p = {l : s_{l,p} ≤ λ}``, nested in λ.

:class:`PixelwiseScores` is one prepared image (its per-label scores and their order); the
functions here read the set from it: per-label masks, set sizes, the log-volume of the set of
segmentations, uniform members and the member closest to a ground truth.

**Non-empty sets.** At each pixel the label with the lowest score (ties: the lower label index) gets
score 0, so for λ ≥ 0 every pixel's set holds at least that label. This changes nothing for
APS/RAPS (the top label already scores 0) and makes LAC and the randomised APS always include the
most probable label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_conformal.core.validation import check_label, check_lambda
from napari_conformal.errors import ParameterError

__all__ = ["PixelwiseScores", "best_member", "log10_volume", "sample_members", "set_masks", "set_size_map"]

# pixels × samples per chunk when drawing members (bounds the int64 index array to ~32 MB)
_SAMPLE_CHUNK_ELEMENTS = 4 * 2**20


@dataclass(frozen=True)
class PixelwiseScores:
    """One prepared image: per-label nonconformity scores and their order.

    Attributes
    ----------
    scores : ndarray of float64, shape (L, *S)
        ``s_{l,p}``; label l is in the set at λ iff ``scores[l, p] ≤ λ``. At
        each pixel the minimum is 0 (non-empty sets for λ ≥ 0).
    order : ndarray of uint8/uint16, shape (L, *S)
        Labels sorted by ascending score (ties: lower label first), so the set
        at λ is ``order[:k, p]`` with ``k`` the set size.
    """

    scores: np.ndarray
    order: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray) -> PixelwiseScores:
        """Set each pixel's lowest score to 0 and sort the labels by score.

        Parameters
        ----------
        scores : ndarray, shape (L, *S)
            Raw nonconformity scores, finite and ≥ 0.
        """
        scores = np.array(scores, dtype=np.float64, copy=True)
        if scores.ndim < 2 or scores.shape[0] < 2:
            raise ParameterError(f"scores must have shape (L, *S) with L >= 2, got shape {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise ParameterError("scores contain NaN or inf")
        lowest = np.argmin(scores, axis=0)[None]
        np.put_along_axis(scores, lowest, 0.0, axis=0)
        scores = np.maximum(scores, 0.0)
        label_dtype = np.min_scalar_type(scores.shape[0] - 1)
        order = np.argsort(scores, axis=0, kind="stable").astype(label_dtype)
        return cls(scores=scores, order=order)

    @property
    def n_labels(self) -> int:
        """L."""
        return int(self.scores.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """S."""
        return tuple(self.scores.shape[1:])


def _as_prepared(prepared: Any) -> PixelwiseScores:
    if not isinstance(prepared, PixelwiseScores):
        raise ParameterError(
            f"expected the PixelwiseScores returned by prepare(), got {type(prepared).__name__}"
        )
    return prepared


def set_masks(prepared: PixelwiseScores, lam: float) -> np.ndarray:
    """The pixel-wise set at λ as one boolean mask per label.

    Returns
    -------
    ndarray of bool, shape (L, *S)
        ``masks[l, p] = l ∈ T_λ(X)_p``.
    """
    return _as_prepared(prepared).scores <= check_lambda(lam)


def set_size_map(prepared: PixelwiseScores, lam: float) -> np.ndarray:
    """``|T_λ(X)_p|`` at every pixel, shape S, int (1..L for λ ≥ 0)."""
    return np.count_nonzero(set_masks(prepared, lam), axis=0)


def log10_volume(prepared: PixelwiseScores, lam: float) -> float:
    """``log10 Π_p |T_λ(X)_p|``: the number of segmentations in the set (docs/algorithms.md#metrics)."""
    return float(np.log10(set_size_map(prepared, lam)).sum())


def sample_members(
    prepared: PixelwiseScores,
    lam: float,
    n: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw n members of ``C^PW_λ``: at every pixel a label uniform in ``T_λ(X)_p``, independently.

    Parameters
    ----------
    prepared : PixelwiseScores
        From ``prepare``.
    lam : float
        λ ≥ 0.
    n : int
        Number of members, ≥ 1.
    rng : numpy Generator or int seed, optional
        Source of randomness (pass a dedicated stream).

    Returns
    -------
    ndarray of uint8 (uint16 for L > 256), shape (n, *S)
        Label maps.
    """
    prepared = _as_prepared(prepared)
    if int(n) != n or n < 1:
        raise ParameterError(f"n must be a positive integer, got {n}")
    n = int(n)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    sizes = set_size_map(prepared, lam).reshape(-1)
    spatial = prepared.spatial_shape
    order = prepared.order.reshape(prepared.n_labels, -1)
    # pixels grouped by set size k: one scalar-bounded draw per group (exactly uniform on 0..k-1)
    groups = [(k, cols) for k in range(2, prepared.n_labels + 1) if (cols := np.flatnonzero(sizes == k)).size]
    out = np.empty((n, sizes.size), dtype=order.dtype)
    chunk = max(1, _SAMPLE_CHUNK_ELEMENTS // max(sizes.size, 1))
    for start in range(0, n, chunk):
        block = out[start : min(n, start + chunk)]
        block[:] = order[0]
        for k, cols in groups:
            rank = rng.integers(0, k, size=(block.shape[0], cols.size))
            block[:, cols] = order[rank, cols]
    return out.reshape(n, *spatial)


def best_member(prepared: PixelwiseScores, label: np.ndarray, lam: float) -> np.ndarray:
    """The member of ``C^PW_λ`` closest to ``label``: ``Y_p`` where it is in the set, else the lowest-score label.

    Returns
    -------
    ndarray, shape S
        Its label-wise accuracy against ``label`` is :func:`accuracy_in`.
    """
    prepared = _as_prepared(prepared)
    label = check_label(label, n_labels=prepared.n_labels, shape=prepared.spatial_shape)
    inside = np.take_along_axis(prepared.scores, label[None].astype(np.intp), axis=0)[0] <= check_lambda(lam)
    return np.where(inside, label, prepared.order[0]).astype(prepared.order.dtype)


# ------------------------------------------------------------------------------- relaxed membership
