"""Pixel-wise conformal sets (APS, RAPS, LAC) with CONSIGN's relaxed ν-membership.

These are the baselines of the CONSIGN paper (ALGORITHMS.md §2). All of them
work on the mean softmax over the T samples, ``X̄ = mean_t f^(t)(X)`` with
shape (L, *S), and give every label l at every pixel p a nonconformity score
``s_{l,p}``. The set at λ is::

    T_λ(X)_p = { l : s_{l,p} ≤ λ }                           (nested in λ)

Scores (π_(1) ≥ … ≥ π_(L) are X̄_{·,p} sorted; label l sits at rank r(l), ties
broken by the lower label index)::

    APS   s_l = Σ_{j < r(l)} π_(j)                           (eq. 12 with reg ≡ 0)
    RAPS  s_l = Σ_{j < r(l)} π_(j) + λ_reg · (r(l) − 1 − k_reg)^+
    LAC   s_l = 1 − X̄_{l,p}

APS/RAPS reproduce eq. 12, ``k*(p) = min{k : c_k + reg_k > λ}`` with the
crossing label included: label l is in the set iff ``c_{r(l)−1} + reg_{r(l)−1}
≤ λ``, and when nothing exceeds λ every label is in (``k* = L``; the reference
code's ``argmax`` returns 1 there, a bug this formulation cannot have). The
RAPS penalty is part of the score, so it is kept at test time (the reference
``PW_sample`` drops it). The randomised APS option adds ``u·π_(r(l))`` with one
``u ~ U(0, 1)`` per pixel (Romano et al. 2020), seeded by the method seed and a
hash of X̄ so that a distributed run draws the same ``u`` as a serial one.

**Non-empty sets.** At each pixel the label with the lowest score (ties: the
lower label index) gets score 0, so for λ ≥ 0 every pixel's set holds at least
that label. This changes nothing for APS/RAPS (the top label already scores 0)
and makes LAC and the randomised APS always include the most probable label;
without it ``C^PW_λ`` would be empty and eq. 13's membership test meaningless.

**Relaxed membership (eq. 13).** ``Y ∈ C^PW_{λ,ν}`` iff some member of the set
matches Y at label-wise accuracy > ν; the best member takes ``Y_p`` wherever
``Y_p ∈ T_λ(X)_p``, so::

    acc_in(λ) = (1/|𝓛(Y)|) Σ_{l∈𝓛(Y)} |{p : Y_p = l, s_{l,p} ≤ λ}| / |{p : Y_p = l}|
    covered(λ) ⇔ acc_in(λ) > ν

``acc_in`` is a non-decreasing, right-continuous step function of λ that jumps
only at the true-label scores ``t_p = s_{Y_p,p}``. So the smallest covering λ,
``λ_i(ν) = min{λ : acc_in(λ) > ν}``, is one of the ``t_p``: sort them once per
image (:class:`MembershipCurve`) and every ν is a binary search on the sorted
weighted cumulative sum; no λ grid. The accuracy is computed in the same
floating-point order as :func:`napari_conformal.core.accuracy.labelwise_accuracy`
so that ``covered`` agrees bit for bit with ``is_covered(labelwise_accuracy(best
member), ν)``.

**Algorithm 3** then becomes ``λ̂ = order_statistic_lambda_hat([λ_i(ν)], α)``:
the ⌈(n+1)(1−α)⌉-th smallest λ_i, the exact infimum of the reference's 0.01
grid search (whose answer is this λ̂ rounded up to the grid), and a test image
is covered iff its own ``λ_test(ν) ≤ λ̂``, which gives
``P(Y_test ∈ C^PW_{λ̂,ν}(X_test)) ≥ 1 − α`` under exchangeability.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from napari_conformal.core.crc import order_statistic_lambda_hat
from napari_conformal.core.method import ConformalMethod, register
from napari_conformal.errors import CalibrationError, ConformalError, StoreValidationError

__all__ = [
    "APS",
    "DEFAULT_REG_WEIGHT",
    "LAC",
    "RAPS",
    "MembershipCurve",
    "PixelwiseMethod",
    "PixelwiseScores",
    "accuracy_in",
    "aps_scores",
    "best_member",
    "calibrate_lambda",
    "default_k_reg",
    "lac_scores",
    "log10_volume",
    "mean_probabilities",
    "sample_members",
    "set_masks",
    "set_size_map",
]

#: RAPS regularisation weight λ_reg of the CONSIGN experiments (config ``theta``).
DEFAULT_REG_WEIGHT = 0.05
# pixels × samples per chunk when drawing members (bounds the int64 index array to ~32 MB)
_SAMPLE_CHUNK_ELEMENTS = 4 * 2**20
# slack between the float cumulative weights and the exact accuracy formula
_CUMSUM_SLACK = 1e-9


# --------------------------------------------------------------------------------------------- inputs


def mean_probabilities(
    samples: np.ndarray, image: np.ndarray | None = None, *, sum_atol: float | None = None
) -> np.ndarray:
    """Validate T softmax samples and return their mean X̄ in float64.

    Parameters
    ----------
    samples : ndarray, shape (T, L, *S)
        Softmax samples, S = (Y, X) or (Z, Y, X); float16/32/64 in [0, 1], each
        (t, pixel) summing to 1 over the L labels.
    image : ndarray, shape S, optional
        The image; only its shape is checked.
    sum_atol : float, optional
        Tolerance on ``|Σ_l p − 1|``; default 1e-3 for float16, 1e-4 otherwise.

    Returns
    -------
    ndarray of float64, shape (L, *S)
        ``X̄``, clipped to [0, 1].

    Raises
    ------
    StoreValidationError
        Wrong number of axes, fewer than 2 labels, non-float dtype, NaN/inf,
        values outside [0, 1], sums off by more than ``sum_atol``, or an
        ``image`` whose shape is not S.
    """
    arr = np.asarray(samples)
    if arr.ndim not in (4, 5):
        raise StoreValidationError(
            f"samples must have shape (T, L, Y, X) or (T, L, Z, Y, X), got shape {arr.shape}"
        )
    t, n_labels = arr.shape[:2]
    if t < 1 or n_labels < 2 or 0 in arr.shape[2:]:
        raise StoreValidationError(
            f"samples need T >= 1 samples, L >= 2 labels and a non-empty image, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise StoreValidationError(f"samples must be floating-point probabilities, got dtype {arr.dtype}")
    lo, hi = float(arr.min()), float(arr.max())
    if math.isnan(lo) or math.isnan(hi):
        raise StoreValidationError(f"samples contain {int(np.isnan(arr).sum())} NaN value(s)")
    if lo < 0.0 or hi > 1.0:
        raise StoreValidationError(
            f"samples must be probabilities in [0, 1], found values in [{lo:g}, {hi:g}]"
        )
    if sum_atol is None:
        sum_atol = 1e-3 if arr.dtype == np.float16 else 1e-4
    spatial = arr.shape[2:]
    if image is not None and tuple(np.shape(image)) != spatial:
        raise StoreValidationError(
            f"image shape {tuple(np.shape(image))} does not match the samples' spatial shape {spatial}"
        )
    total = np.zeros(arr.shape[1:], dtype=np.float64)
    for t_index in range(t):  # one sample at a time: float64 temporaries of one (L, *S) only
        sample = arr[t_index].astype(np.float64)
        dev = np.abs(sample.sum(axis=0) - 1.0)
        worst = float(dev.max())
        if worst > sum_atol:
            at = tuple(int(i) for i in np.unravel_index(int(np.argmax(dev)), dev.shape))
            raise StoreValidationError(
                f"samples do not sum to 1 over the L={n_labels} labels: off by {worst:.3g} at sample {t_index}, "
                f"pixel {at}; {int((dev > sum_atol).sum())} pixel(s) of that sample beyond sum_atol={sum_atol:g}"
            )
        total += sample
    return np.clip(total / t, 0.0, 1.0)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise ConformalError(f"probs must have shape (L, *S) with L >= 2, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ConformalError("probs contain NaN or inf")
    return probs


def _check_label(label: np.ndarray, n_labels: int, spatial: tuple[int, ...]) -> np.ndarray:
    label = np.asarray(label)
    if label.shape != spatial:
        raise StoreValidationError(f"label shape {label.shape} does not match the image shape {spatial}")
    if not np.issubdtype(label.dtype, np.integer):
        raise StoreValidationError(f"label must be an integer label map, got dtype {label.dtype}")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= n_labels:
        raise StoreValidationError(f"label values must lie in 0..L-1 = 0..{n_labels - 1}, found {lo}..{hi}")
    return label


def _check_lambda(lam: float) -> float:
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ConformalError(f"lambda must be a finite number >= 0, got {lam}")
    return lam


def _check_nu(nu: float | None) -> float:
    if nu is None:
        raise ConformalError("pixel-wise methods need the label-wise accuracy nu (a number in [0, 1))")
    nu = float(nu)
    if not 0.0 <= nu < 1.0:
        raise ConformalError(f"nu must lie in [0, 1), got {nu}")
    return nu


# --------------------------------------------------------------------------------------------- scores


def default_k_reg(n_labels: int) -> int:
    """RAPS rank offset of the CONSIGN experiments, ``k_reg = ⌊L/2⌋`` (1, 2, 4 for L = 2, 4, 8)."""
    return int(n_labels) // 2


def aps_scores(
    probs: np.ndarray,
    *,
    reg_weight: float = 0.0,
    k_reg: int = 0,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """APS / RAPS score of every label at every pixel.

    Parameters
    ----------
    probs : ndarray, shape (L, *S)
        Per-pixel class probabilities (X̄).
    reg_weight : float
        RAPS weight λ_reg ≥ 0 (0 gives APS).
    k_reg : int
        RAPS rank offset ≥ 0: ranks beyond ``k_reg + 1`` are penalised.
    u : ndarray, shape S, optional
        Uniform draws in [0, 1] for the randomised score; None for eq. 12.

    Returns
    -------
    ndarray of float64, shape (L, *S)
        ``s_l = c_{r(l)−1} + reg_weight·(r(l) − 1 − k_reg)^+ (+ u·π_(r(l)))``,
        with ``c_k`` the sum of the k largest probabilities (0-based rank
        ``r(l) − 1``; ties in probability go to the lower label index).
    """
    probs = _check_probs(probs)
    if not (math.isfinite(reg_weight) and reg_weight >= 0):
        raise ConformalError(f"reg_weight must be a finite number >= 0, got {reg_weight}")
    if int(k_reg) != k_reg or k_reg < 0:
        raise ConformalError(f"k_reg must be an integer >= 0, got {k_reg}")
    n_labels = probs.shape[0]
    order = np.argsort(-probs, axis=0, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=0)
    ranked_scores = np.zeros_like(ranked)
    np.cumsum(ranked[:-1], axis=0, out=ranked_scores[1:])  # mass strictly above each rank
    if reg_weight > 0:
        penalty = reg_weight * np.maximum(np.arange(n_labels) - int(k_reg), 0)
        ranked_scores += penalty.reshape((n_labels,) + (1,) * (probs.ndim - 1))
    if u is not None:
        u = np.asarray(u, dtype=np.float64)
        if u.shape != probs.shape[1:]:
            raise ConformalError(f"u must have the spatial shape {probs.shape[1:]}, got {u.shape}")
        ranked_scores += u[None] * ranked
    scores = np.empty_like(ranked_scores)
    np.put_along_axis(scores, order, ranked_scores, axis=0)
    return scores


def lac_scores(probs: np.ndarray) -> np.ndarray:
    """LAC score ``s_l = 1 − X̄_l`` of every label (Sadinle et al. 2019), shape (L, *S)."""
    return 1.0 - _check_probs(probs)


def _content_seed(probs: np.ndarray) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(probs).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ------------------------------------------------------------------------------------ prepared image


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
            raise ConformalError(f"scores must have shape (L, *S) with L >= 2, got shape {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise ConformalError("scores contain NaN or inf")
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
        raise ConformalError(
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
    return _as_prepared(prepared).scores <= _check_lambda(lam)


def set_size_map(prepared: PixelwiseScores, lam: float) -> np.ndarray:
    """``|T_λ(X)_p|`` at every pixel, shape S, int (1..L for λ ≥ 0)."""
    return np.count_nonzero(set_masks(prepared, lam), axis=0)


def log10_volume(prepared: PixelwiseScores, lam: float) -> float:
    """``log10 Π_p |T_λ(X)_p|``: the number of segmentations in the set (ALGORITHMS.md §3)."""
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
        raise ConformalError(f"n must be a positive integer, got {n}")
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
    label = _check_label(label, prepared.n_labels, prepared.spatial_shape)
    inside = np.take_along_axis(prepared.scores, label[None].astype(np.intp), axis=0)[0] <= _check_lambda(lam)
    return np.where(inside, label, prepared.order[0]).astype(prepared.order.dtype)


# ------------------------------------------------------------------------------- relaxed membership


def _labelwise_from_hits(hits: np.ndarray, sizes: np.ndarray) -> float:
    """``(1/C) Σ_c hits_c / sizes_c`` in the floating-point order of ``accuracy.labelwise_accuracy``."""
    total = np.float64(0.0)
    for h, s in zip(hits.tolist(), sizes.tolist(), strict=True):
        total = total + np.float64(h) / np.float64(s)
    return float(total / np.float64(len(sizes)))


def accuracy_in(prepared: PixelwiseScores, label: np.ndarray, lam: float) -> float:
    """``acc_in(T_λ; Y)`` of eq. 13: label-wise accuracy of the best member of the set.

    Parameters
    ----------
    prepared : PixelwiseScores
        From ``prepare``.
    label : ndarray of int, shape S
        Ground truth Y in 0..L−1.
    lam : float
        λ ≥ 0.

    Returns
    -------
    float
        In [0, 1]; ``Y ∈ C^PW_{λ,ν}`` iff it is > ν.
    """
    prepared = _as_prepared(prepared)
    label = _check_label(label, prepared.n_labels, prepared.spatial_shape)
    true_scores = np.take_along_axis(prepared.scores, label[None].astype(np.intp), axis=0)[0]
    flat = label.reshape(-1)
    sizes = np.bincount(flat, minlength=prepared.n_labels)
    hits = np.bincount(flat[true_scores.reshape(-1) <= _check_lambda(lam)], minlength=prepared.n_labels)
    present = np.flatnonzero(sizes)
    return _labelwise_from_hits(hits[present], sizes[present])


@dataclass(frozen=True)
class MembershipCurve:
    """Per-image calibration statistic: ``acc_in(λ)`` as an exact step function.

    Built once per calibration image by :meth:`from_prepared`; then
    :meth:`lambda_for` gives ``λ_i(ν) = min{λ ≥ 0 : acc_in(λ) > ν}`` for any ν.

    Attributes
    ----------
    values : ndarray of float64, shape (G,)
        Distinct true-label scores ``t_p = s_{Y_p,p}``, ascending (the λ where
        ``acc_in`` jumps).
    cum_weight : ndarray of float64, shape (G,)
        ``acc_in(values[g])`` up to rounding (cumulative pixel weights
        ``1/(|𝓛(Y)|·|{q : Y_q = Y_p}|)``); used to locate ν, then checked exactly.
    ends : ndarray of int64, shape (G,)
        Number of pixels with ``t_p ≤ values[g]``.
    classes : ndarray of uint8/uint16, shape (M,)
        Index into ``present`` of the true label of each pixel, pixels in
        ascending ``t_p`` order.
    sizes : ndarray of int64, shape (C,)
        Pixel count of each present label.
    present : ndarray of int64, shape (C,)
        Labels present in Y, ascending.
    """

    values: np.ndarray
    cum_weight: np.ndarray
    ends: np.ndarray
    classes: np.ndarray
    sizes: np.ndarray
    present: np.ndarray

    @classmethod
    def from_prepared(cls, prepared: PixelwiseScores, label: np.ndarray) -> MembershipCurve:
        """Sort the true-label scores of one image (O(M log M), M pixels)."""
        prepared = _as_prepared(prepared)
        label = _check_label(label, prepared.n_labels, prepared.spatial_shape)
        flat = label.reshape(-1).astype(np.intp)
        by_label = prepared.scores.reshape(prepared.n_labels, -1)
        true_scores = np.take_along_axis(by_label, flat[None], axis=0)[0]
        counts = np.bincount(flat, minlength=prepared.n_labels)
        present = np.flatnonzero(counts)
        index_of = np.zeros(prepared.n_labels, dtype=np.intp)
        index_of[present] = np.arange(present.size)
        order = np.argsort(true_scores, kind="stable")
        sorted_scores = true_scores[order]
        classes = index_of[flat[order]].astype(np.min_scalar_type(max(present.size - 1, 0)))
        sizes = counts[present].astype(np.int64)
        weight = 1.0 / (present.size * sizes.astype(np.float64))
        cum = np.cumsum(weight[classes])
        last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
        return cls(
            values=sorted_scores[last],
            cum_weight=cum[last],
            ends=(last + 1).astype(np.int64),
            classes=classes,
            sizes=sizes,
            present=present.astype(np.int64),
        )

    def _accuracy_at(self, g: int) -> float:
        hits = np.bincount(self.classes[: int(self.ends[g])], minlength=self.sizes.size)
        return _labelwise_from_hits(hits, self.sizes)

    def accuracy(self, lam: float) -> float:
        """``acc_in(λ)``, identical to :func:`accuracy_in` on the same image."""
        g = int(np.searchsorted(self.values, _check_lambda(lam), side="right")) - 1
        return 0.0 if g < 0 else self._accuracy_at(g)

    def lambda_for(self, nu: float) -> float:
        """``λ_i(ν)``: the smallest λ at which the image is covered (``acc_in(λ) > ν``).

        Finite for every ν in [0, 1) because ``acc_in`` reaches 1 at the
        largest true-label score. The float cumulative weights narrow the
        search to the few steps within 1e-9 of ν; those are decided with the
        exact accuracy formula (binary search, ``acc_in`` is monotone).
        """
        nu = _check_nu(nu)
        last = self.values.size - 1
        lo = int(np.searchsorted(self.cum_weight, nu - _CUMSUM_SLACK, side="right"))
        hi = min(int(np.searchsorted(self.cum_weight, nu + _CUMSUM_SLACK, side="right")), last)
        lo = min(lo, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._accuracy_at(mid) > nu:
                hi = mid
            else:
                lo = mid + 1
        return float(self.values[hi])


def calibrate_lambda(curves: Sequence[MembershipCurve], alpha: float, nu: float) -> float:
    """Algorithm 3 with exact per-image thresholds.

    Parameters
    ----------
    curves : sequence of MembershipCurve, length n
        One per calibration image.
    alpha : float
        Target miscoverage in (0, 1); needs ``n ≥ 1/α − 1``.
    nu : float
        Label-wise accuracy rate in [0, 1).

    Returns
    -------
    float
        ``λ̂``, the ⌈(n+1)(1−α)⌉-th smallest ``λ_i(ν)``.
    """
    if len(curves) == 0:
        raise CalibrationError("need at least one calibration image")
    for i, c in enumerate(curves):
        if not isinstance(c, MembershipCurve):
            raise CalibrationError(
                f"curve {i} is a {type(c).__name__}, expected a MembershipCurve from curve()"
            )
    nu = _check_nu(nu)
    return order_statistic_lambda_hat([c.lambda_for(nu) for c in curves], alpha)


# -------------------------------------------------------------------------------------------- methods


class PixelwiseMethod(ConformalMethod):
    """Shared machinery of the pixel-wise methods; subclasses define :meth:`scores`.

    Parameters
    ----------
    alpha : float
        Target miscoverage in (0, 1).
    nu : float
        Label-wise accuracy rate ν in [0, 1) (the CONSIGN paper's β); required.
    k : None
        Pixel-wise methods have no K; anything but None raises.
    sum_atol : float, optional
        Tolerance of the probability-sum check (default 1e-3 float16, 1e-4 otherwise).
    """

    uses_nu: ClassVar[bool] = True
    samples_members: ClassVar[bool] = True

    def __init__(
        self, alpha: float, nu: float | None = None, k: int | None = None, *, sum_atol: float | None = None
    ) -> None:
        if k is not None:
            raise ConformalError(f"method {self.name!r} has no number of components K; got k={k}")
        alpha_f = float(alpha)
        if not 0.0 < alpha_f < 1.0:
            raise ConformalError(f"alpha must lie in (0, 1), got {alpha}")
        super().__init__(alpha_f, _check_nu(nu), None)
        if sum_atol is not None and not float(sum_atol) > 0:
            raise ConformalError(f"sum_atol must be positive, got {sum_atol}")
        self.sum_atol = None if sum_atol is None else float(sum_atol)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """Raw per-label nonconformity scores, shape (L, *S), from X̄ (L, *S)."""
        raise NotImplementedError

    # ---- the ConformalMethod steps

    def prepare(self, image: np.ndarray | None, samples: np.ndarray) -> PixelwiseScores:
        """Validate the samples, average them and score every label (label-free)."""
        probs = mean_probabilities(samples, image, sum_atol=self.sum_atol)
        return PixelwiseScores.from_scores(self.scores(probs))

    def curve(self, prepared: PixelwiseScores, label: np.ndarray) -> MembershipCurve:
        """The image's :class:`MembershipCurve` (sorted true-label scores)."""
        return MembershipCurve.from_prepared(prepared, label)

    def lambda_hat(
        self, curves: Sequence[MembershipCurve], alpha: float | None = None, nu: float | None = None
    ) -> float:
        """Algorithm 3, exact: see :func:`calibrate_lambda`."""
        return calibrate_lambda(curves, self.alpha if alpha is None else alpha, self.nu if nu is None else nu)

    def predict(self, prepared: PixelwiseScores, lambda_hat: float) -> np.ndarray:
        """The set at λ̂ as boolean masks, shape (L, *S) (see :func:`set_masks`)."""
        return set_masks(prepared, lambda_hat)

    def set_size_map(self, prepared: PixelwiseScores, lambda_hat: float) -> np.ndarray:
        """Per-pixel set size, shape S."""
        return set_size_map(prepared, lambda_hat)

    def sample_members(
        self,
        prepared: PixelwiseScores,
        lambda_hat: float,
        n: int,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """n uniform members of the set, shape (n, *S) (see :func:`sample_members`)."""
        return sample_members(prepared, lambda_hat, n, rng)

    def _stream_seed(self, seed: int) -> int:
        # a stream of its own per method: the same seed never couples two methods' draws
        tag = zlib.crc32(self.name.encode())
        return int(np.random.SeedSequence([int(seed), tag]).generate_state(1, dtype=np.uint64)[0])

    def evaluate(
        self,
        prepared: PixelwiseScores,
        label: np.ndarray,
        lambda_hat: float,
        *,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics of the set at λ̂.

        Returns
        -------
        dict
            ``covered`` (0/1, ``acc_in > ν``), ``accuracy_in``, ``mean_set_size``,
            ``log10_volume``; with ``n_samples`` also ``chao1`` (bias-corrected),
            ``chao1_classical``, ``sec`` (0/1 per N), ``correlation`` (full mean)
            and ``correlation_offdiag``, each a dict keyed by ``str(N)``.
            ``spacing`` is unused (no distance metric applies).
        """
        prepared = _as_prepared(prepared)
        lam = _check_lambda(lambda_hat)
        acc = accuracy_in(prepared, label, lam)
        sizes = set_size_map(prepared, lam)
        out: dict[str, Any] = {
            "covered": int(acc > self.nu),
            "accuracy_in": acc,
            "mean_set_size": float(sizes.mean()),
            "log10_volume": float(np.log10(sizes).sum()),
        }
        if len(n_samples):
            from napari_conformal.core.diversity import diversity_curves

            curves = diversity_curves(
                lambda n, rng: sample_members(prepared, lam, n, rng),
                np.asarray(label),
                self.nu,
                n_samples,
                self._stream_seed(seed),
                n_labels=prepared.n_labels,
            )
            for key, per_n in curves.items():
                out[key] = {str(n): float(v) for n, v in per_n.items()}
        return out


@register("aps")
class APS(PixelwiseMethod):
    """Pixel-wise APS (eq. 12 without regularisation), optionally randomised.

    Parameters
    ----------
    alpha, nu, k, sum_atol
        See :class:`PixelwiseMethod`.
    randomized : bool
        Add ``u·π_(r(l))`` with one ``u ~ U(0, 1)`` per pixel (Romano et al.).
    seed : int
        Seed of ``u`` (combined with a hash of X̄, so each image has its own draw).
    """

    def __init__(
        self,
        alpha: float,
        nu: float | None = None,
        k: int | None = None,
        *,
        randomized: bool = False,
        seed: int = 0,
        sum_atol: float | None = None,
    ) -> None:
        super().__init__(alpha, nu, k, sum_atol=sum_atol)
        self.randomized = bool(randomized)
        self.seed = int(seed)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """APS scores; with ``randomized``, one seeded ``u`` per pixel."""
        u = None
        if self.randomized:
            rng = np.random.default_rng([self.seed, _content_seed(probs)])
            u = rng.random(probs.shape[1:])
        return aps_scores(probs, u=u)

    def params(self) -> dict[str, Any]:
        """``randomized``, ``seed`` (the score is the method name)."""
        return {"randomized": self.randomized, "seed": self.seed}


@register("raps")
class RAPS(PixelwiseMethod):
    """Pixel-wise RAPS (eq. 12), penalty kept at calibration and test time.

    Parameters
    ----------
    alpha, nu, k, sum_atol
        See :class:`PixelwiseMethod`.
    reg_weight : float
        λ_reg (config ``theta``), default 0.05.
    k_reg : int, optional
        Rank offset; default ``⌊L/2⌋`` of each image's L.
    """

    def __init__(
        self,
        alpha: float,
        nu: float | None = None,
        k: int | None = None,
        *,
        reg_weight: float = DEFAULT_REG_WEIGHT,
        k_reg: int | None = None,
        sum_atol: float | None = None,
    ) -> None:
        super().__init__(alpha, nu, k, sum_atol=sum_atol)
        if not (math.isfinite(float(reg_weight)) and float(reg_weight) >= 0):
            raise ConformalError(f"reg_weight must be a finite number >= 0, got {reg_weight}")
        if k_reg is not None and (int(k_reg) != k_reg or k_reg < 0):
            raise ConformalError(f"k_reg must be an integer >= 0, got {k_reg}")
        self.reg_weight = float(reg_weight)
        self.k_reg = None if k_reg is None else int(k_reg)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """RAPS scores with ``k_reg`` defaulting to ⌊L/2⌋."""
        k_reg = default_k_reg(probs.shape[0]) if self.k_reg is None else self.k_reg
        return aps_scores(probs, reg_weight=self.reg_weight, k_reg=k_reg)

    def params(self) -> dict[str, Any]:
        """``reg_weight``, ``k_reg`` (None = ⌊L/2⌋)."""
        return {"reg_weight": self.reg_weight, "k_reg": self.k_reg}


@register("lac")
class LAC(PixelwiseMethod):
    """Pixel-wise LAC, ``s_l = 1 − X̄_l``, with the most probable label always in the set."""

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """LAC scores."""
        return lac_scores(probs)

    def params(self) -> dict[str, Any]:
        """None: LAC has no parameters beyond α and ν."""
        return {}


# SACP builds on this module; importing it here registers "sacp" with the built-in lookup of method.py
from napari_conformal.core import sacp as _sacp  # noqa: E402, F401
