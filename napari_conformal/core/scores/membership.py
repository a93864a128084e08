"""Relaxed ν-membership of a ground truth in a pixel-wise set, and its exact per-image threshold.

``Y ∈ C^PW_{λ,ν}`` iff some member of the set matches Y at label-wise accuracy > ν (eq. 13 of the
CONSIGN paper). The best member takes ``Y_p`` wherever ``Y_p ∈ T_λ(X)_p``, so::

    acc_in(λ) = (1/|𝓛(Y)|) Σ_{l∈𝓛(Y)} |{p : Y_p = l, s_{l,p} ≤ λ}| / |{p : Y_p = l}|
    covered(λ) ⇔ acc_in(λ) > ν

``acc_in`` is a non-decreasing, right-continuous step function of λ that jumps only at the
true-label scores ``t_p = s_{Y_p,p}``. The smallest covering λ, ``λ_i(ν) = min{λ : acc_in(λ) > ν}``,
is one of the ``t_p``: sorting them once per image (:class:`MembershipCurve`) and computing
``acc_in`` at each answers every ν with a binary search, and the accuracy is computed in the floating-point order of
:func:`napari_conformal.core.metrics.accuracy.labelwise_accuracy`, so ``covered`` agrees bit for
bit with the accuracy of the best member.

λ̂ is then the order statistic of the λ_i(ν) (docs/algorithms.md#pixel-wise-sets): the exact
infimum of the reference's 0.01-grid search.

``labels=K`` counts only the labels of K (``K = {c}``: ``acc_in`` is the recall of structure c
inside the set; docs/algorithms.md#per-structure-guarantees); the curve's breakpoints are then the
true-label scores of the counted pixels only, so it still reaches 1 at its last breakpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from napari_conformal.core.metrics.accuracy import AccuracyCurve, check_counted, counted_present
from napari_conformal.core.quantiles import order_statistic_lambda_hat
from napari_conformal.core.scores.sets import PixelwiseScores, _as_prepared
from napari_conformal.core.validation import check_label, check_lambda, check_nu
from napari_conformal.errors import CalibrationError, ConformalError

__all__ = ["MembershipCurve", "accuracy_in", "calibrate_lambda"]

def _labelwise_from_hits(hits: np.ndarray, sizes: np.ndarray) -> float:
    """``(1/C) Σ_c hits_c / sizes_c`` in the floating-point order of ``accuracy.labelwise_accuracy``."""
    total = np.float64(0.0)
    for h, s in zip(hits.tolist(), sizes.tolist(), strict=True):
        total = total + np.float64(h) / np.float64(s)
    return float(total / np.float64(len(sizes)))


def _present(counts: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    """``𝓛(Y) ∩ K``; a ground truth without a counted label is a :class:`CalibrationError`."""
    try:
        return counted_present(counts, labels)
    except ConformalError as exc:
        raise CalibrationError(f"{exc}; leave the image out of this structure's images") from None


def accuracy_in(
    prepared: PixelwiseScores, label: np.ndarray, lam: float, *, labels: Sequence[int] | None = None
) -> float:
    """``acc_in(T_λ; Y)`` of eq. 13: label-wise accuracy of the best member of the set.

    Parameters
    ----------
    prepared : PixelwiseScores
        From ``prepare``.
    label : ndarray of int, shape S
        Ground truth Y in 0..L−1.
    lam : float
        λ ≥ 0.
    labels : sequence of int, optional
        Counted labels K (``[c]``: the recall of structure c inside the set); None counts every
        label present.

    Returns
    -------
    float
        In [0, 1]; ``Y ∈ C^PW_{λ,ν}`` iff it is > ν.

    Raises
    ------
    CalibrationError
        No counted label is present in ``label``.
    """
    prepared = _as_prepared(prepared)
    label = check_label(label, n_labels=prepared.n_labels, shape=prepared.spatial_shape)
    counted = check_counted(labels, prepared.n_labels)
    true_scores = np.take_along_axis(prepared.scores, label[None].astype(np.intp), axis=0)[0]
    flat = label.reshape(-1)
    sizes = np.bincount(flat, minlength=prepared.n_labels)
    hits = np.bincount(flat[true_scores.reshape(-1) <= check_lambda(lam)], minlength=prepared.n_labels)
    present = _present(sizes, counted)
    return _labelwise_from_hits(hits[present], sizes[present])


@dataclass(frozen=True)
class MembershipCurve(AccuracyCurve):
    """Per-image calibration statistic of a pixel-wise set: ``acc_in(λ)`` as an exact step function.

    ``lambdas`` are the distinct true-label scores ``t_p = s_{Y_p,p}`` (ascending, where ``acc_in``
    jumps) and ``accuracies[g] = acc_in(lambdas[g])``, each computed with the exact formula of
    :func:`accuracy_in` (same floating-point order), so ``λ_i(ν) = lambda_for(ν)`` decides
    coverage exactly as the best member's accuracy does. ``acc_in`` reaches 1 at the largest
    score, so λ_i(ν) is finite for every ν in [0, 1).
    """

    before: ClassVar[float] = 0.0

    @classmethod
    def from_prepared(
        cls, prepared: PixelwiseScores, label: np.ndarray, *, labels: Sequence[int] | None = None
    ) -> MembershipCurve:
        """Sort the true-label scores of one image (O(M log M), M pixels).

        ``labels`` (counted labels K, as in :func:`accuracy_in`) keeps only the pixels of K; a
        ground truth without a counted label raises :class:`CalibrationError`.
        """
        prepared = _as_prepared(prepared)
        label = check_label(label, n_labels=prepared.n_labels, shape=prepared.spatial_shape)
        counted = check_counted(labels, prepared.n_labels)
        flat = label.reshape(-1).astype(np.intp)
        counts = np.bincount(flat, minlength=prepared.n_labels)
        present = _present(counts, counted)
        by_label = prepared.scores.reshape(prepared.n_labels, -1)
        true_scores = np.take_along_axis(by_label, flat[None], axis=0)[0]
        if counted is not None:  # only the counted pixels move acc_in
            keep = np.isin(flat, present)
            true_scores, flat = true_scores[keep], flat[keep]
        order = np.argsort(true_scores, kind="stable")
        sorted_scores = true_scores[order]
        sorted_labels = flat[order]
        last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
        ends = last + 1  # pixels with t_p ≤ lambdas[g]
        total = np.zeros(last.size, dtype=np.float64)
        for lab in present.tolist():  # the order of accuracy_in: label by label, then / C
            positions = np.flatnonzero(sorted_labels == lab)
            hits = np.searchsorted(positions, ends, side="left").astype(np.float64)
            total = total + hits / np.float64(counts[lab])
        accuracies = total / np.float64(present.size)
        values = sorted_scores[last]
        values.flags.writeable = False
        accuracies.flags.writeable = False
        return cls(lambdas=values, accuracies=accuracies)

    def accuracy(self, lam: float) -> float:
        """``acc_in(λ)``, identical to :func:`accuracy_in` on the same image."""
        return float(self.accuracy_at(check_lambda(lam, "lambda")))

    def lambda_for(self, nu: float) -> float:
        """``λ_i(ν)``: the smallest λ at which the image is covered (``acc_in(λ) > ν``)."""
        return super().lambda_for(check_nu(nu))


def calibrate_lambda(curves: Sequence[MembershipCurve], alpha: float, nu: float) -> float:
    """Algorithm 3 with exact per-image thresholds: the ⌈(n+1)(1−α)⌉-th smallest ``λ_i(ν)``.

    Parameters
    ----------
    curves : sequence of MembershipCurve, length n
        One per calibration image.
    alpha : float
        Target miscoverage in (0, 1); needs ``n ≥ ⌈1/α⌉ − 1``.
    nu : float
        Label-wise accuracy rate in [0, 1).
    """
    if len(curves) == 0:
        raise CalibrationError("need at least one calibration image")
    for i, c in enumerate(curves):
        if not isinstance(c, MembershipCurve):
            raise CalibrationError(f"curve {i} is a {type(c).__name__}, expected a MembershipCurve from curve()")
    nu = check_nu(nu)
    return order_statistic_lambda_hat([c.lambda_for(nu) for c in curves], alpha)
