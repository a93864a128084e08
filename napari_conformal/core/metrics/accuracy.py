"""Label-wise accuracy of candidate segmentations (CONSIGN's membership test).

For a ground truth ``Y`` and a candidate label map ``Ŷ`` (both integer label
maps over the same pixels/voxels)::

    acc(Ŷ; Y) = (1/|𝓛(Y)|) Σ_{l ∈ 𝓛(Y)}  |{p : Ŷ_p = l ∧ Y_p = l}| / |{p : Y_p = l}|

where 𝓛(Y) is the set of labels *present in Y* (docs/algorithms.md#membership-and-loss): the per-label term is the recall of label ``l``, and labels absent
from the ground truth are skipped, so the ratio is never 0/0. A candidate
covers ``Y`` at accuracy rate ν iff ``acc(Ŷ; Y) > ν`` (strict).

**Counted labels.** ``labels=K`` restricts the average to the labels of K present in Y,
``𝓛(Y) ∩ K``; with one label ``K = {c}`` the accuracy is the recall of structure c (a per-structure
guarantee, docs/algorithms.md#per-structure-guarantees). A ground truth with no pixel of any
counted label has no accuracy: that is an error (:class:`~napari_conformal.errors.ConformalError`)
naming the labels. ``labels=None`` (the default) counts every label present, bit for bit as before.

Two implementations with the same semantics:

* :func:`labelwise_accuracy` for numpy arrays;
* :func:`labelwise_accuracy_torch` for torch tensors on any device (torch is
  imported inside the function, so this module stays light).

Both take a batch of candidates ``(B, *S)`` (or a single ``(*S)`` map) against
one ground truth ``(*S)`` and loop only over the labels present in ``Y``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from napari_conformal.errors import ConformalError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "AccuracyCurve",
    "check_counted",
    "counted_present",
    "is_covered",
    "labelwise_accuracy",
    "labelwise_accuracy_torch",
]


def _check_shapes(pred_shape: tuple[int, ...], truth_shape: tuple[int, ...]) -> bool:
    """Return True when ``pred`` is a batch ``(B, *S)``, False when it is one map ``(*S)``."""
    if len(truth_shape) == 0:
        raise ConformalError("truth must have at least one spatial axis, got a scalar")
    if tuple(pred_shape) == tuple(truth_shape):
        return False
    if tuple(pred_shape[1:]) == tuple(truth_shape):
        return True
    raise ConformalError(
        f"pred must have shape S or (B, *S) with S = truth.shape = {tuple(truth_shape)}, "
        f"got pred.shape = {tuple(pred_shape)}"
    )


def check_counted(labels: Sequence[int] | None, n_labels: int) -> tuple[int, ...] | None:
    """Counted labels ``K`` as a sorted tuple of distinct labels in 0..L−1 (None: every label).

    Raises
    ------
    ConformalError
        Empty, not integers, or outside 0..L−1.
    """
    if labels is None:
        return None
    out = []
    for lab in labels:
        if isinstance(lab, bool) or not isinstance(lab, int | np.integer):
            raise ConformalError(f"counted labels must be integers, got {lab!r}")
        if not 0 <= int(lab) < int(n_labels):
            raise ConformalError(
                f"counted label {int(lab)} is not a label of this data (labels 0..{int(n_labels) - 1})"
            )
        out.append(int(lab))
    if not out:
        raise ConformalError("counted labels must name at least one label")
    return tuple(sorted(set(out)))


def counted_present(counts: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    """The labels the accuracy averages over: present in Y (``counts > 0``) and counted.

    Parameters
    ----------
    counts : ndarray of int, shape (L,)
        Pixels of each label in the ground truth.
    labels : sequence of int, optional
        Counted labels K (None: every label).

    Returns
    -------
    ndarray of intp, shape (C,)
        ``𝓛(Y) ∩ K`` ascending (C ≥ 1).

    Raises
    ------
    ConformalError
        No counted label is present (the accuracy is undefined).
    """
    present = np.flatnonzero(counts)
    if labels is None:
        return present
    kept = present[np.isin(present, np.asarray(list(labels), dtype=np.intp))]
    if kept.size == 0:
        what = f"structure {labels[0]}" if len(labels) == 1 else f"labels {', '.join(map(str, labels))}"
        raise ConformalError(
            f"the ground truth has no pixel of {what}: its label-wise accuracy restricted to it is undefined"
        )
    return kept


def labelwise_accuracy(
    pred: np.ndarray, truth: np.ndarray, n_labels: int | None = None, *, labels: Sequence[int] | None = None
) -> np.ndarray | float:
    """Label-wise accuracy of one or many candidate label maps against a ground truth.

    Parameters
    ----------
    pred : ndarray of int, shape (B, *S) or (*S)
        Candidate label maps. Values outside ``0..n_labels-1`` are allowed and
        simply never match.
    truth : ndarray of int, shape (*S)
        Ground-truth label map with values in ``0..n_labels-1``.
    n_labels : int, optional
        Number of labels L; default ``truth.max() + 1``. Only used to validate
        ``truth``: the average runs over the labels present in ``truth``.
    labels : sequence of int, optional
        Counted labels K: average over the labels of K present in ``truth`` only
        (``labels=[c]``: the recall of structure c). None: every label present.

    Returns
    -------
    ndarray of float64, shape (B,), or float
        ``acc(Ŷ_b; Y)`` in [0, 1] for each candidate (a float for a single map).

    Raises
    ------
    ConformalError
        Shapes do not match, non-integer dtypes, ``truth`` out of range, or no
        counted label present in ``truth``.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    batched = _check_shapes(pred.shape, truth.shape)
    if not np.issubdtype(truth.dtype, np.integer):
        raise ConformalError(f"truth must be an integer label map, got dtype {truth.dtype}")
    if not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == np.bool_):
        raise ConformalError(f"pred must be integer label maps, got dtype {pred.dtype}")
    n_labels = _validate_truth_range(int(truth.min()), int(truth.max()), n_labels)
    labels = check_counted(labels, n_labels)

    flat_truth = truth.reshape(-1)
    flat_pred = pred.reshape(pred.shape[0] if batched else 1, -1)
    counts = np.bincount(flat_truth, minlength=n_labels)
    present = counted_present(counts, labels)
    total = np.zeros(flat_pred.shape[0], dtype=np.float64)
    for label in present:
        where = flat_truth == label
        hits = np.count_nonzero(flat_pred[:, where] == label, axis=1)
        total += hits / counts[label]
    acc = total / present.size
    return acc if batched else float(acc[0])


def _validate_truth_range(lo: int, hi: int, n_labels: int | None) -> int:
    if n_labels is None:
        n_labels = hi + 1
    if int(n_labels) < 1:
        raise ConformalError(f"n_labels must be a positive integer, got {n_labels}")
    if lo < 0 or hi >= int(n_labels):
        raise ConformalError(
            f"truth labels must lie in 0..n_labels-1 = 0..{int(n_labels) - 1}, found {lo}..{hi}"
        )
    return int(n_labels)


def labelwise_accuracy_torch(
    pred: torch.Tensor,
    truth: torch.Tensor,
    n_labels: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    labels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Torch version of :func:`labelwise_accuracy` (same definition, any device).

    Parameters
    ----------
    pred : Tensor of int, shape (B, *S) or (*S)
        Candidate label maps on the same device as ``truth``.
    truth : Tensor of int, shape (*S)
        Ground-truth label map with values in ``0..n_labels-1``.
    n_labels : int, optional
        Number of labels L; default ``truth.max() + 1``.
    dtype : torch.dtype, optional
        Floating dtype of the result; float64 by default (exact ratios, so the
        strict test ``acc > ν`` agrees with the numpy version), float32 on
        devices without float64 (MPS).
    labels : sequence of int, optional
        Counted labels, as in :func:`labelwise_accuracy`.

    Returns
    -------
    Tensor, shape (B,) or ()
        ``acc(Ŷ_b; Y)`` on ``truth.device``.
    """
    import torch

    batched = _check_shapes(tuple(pred.shape), tuple(truth.shape))
    if truth.dtype.is_floating_point or truth.dtype.is_complex or truth.dtype == torch.bool:
        raise ConformalError(f"truth must be an integer label map, got dtype {truth.dtype}")
    if pred.dtype.is_floating_point or pred.dtype.is_complex:
        raise ConformalError(f"pred must be integer label maps, got dtype {pred.dtype}")
    if pred.device != truth.device:
        raise ConformalError(
            f"pred and truth must be on the same device, got {pred.device} and {truth.device}"
        )
    if dtype is None:
        dtype = torch.float32 if truth.device.type == "mps" else torch.float64
    flat_truth = truth.reshape(-1).long()
    n_labels = _validate_truth_range(int(flat_truth.min()), int(flat_truth.max()), n_labels)
    labels = check_counted(labels, n_labels)
    flat_pred = pred.reshape(pred.shape[0] if batched else 1, -1)

    counts = torch.bincount(flat_truth, minlength=n_labels)
    present = counted_present(counts.cpu().numpy(), labels).tolist()
    total = torch.zeros(flat_pred.shape[0], dtype=dtype, device=truth.device)
    for label in present:
        where = flat_truth == label
        hits = (flat_pred[:, where] == label).sum(dim=1).to(dtype)
        total += hits / int(counts[label])
    acc = total / len(present)
    return acc if batched else acc[0]


def is_covered(accuracy: np.ndarray | float, nu: float) -> np.ndarray | bool:
    """CONSIGN's membership ``Y ≈_ν Ŷ`` : ``acc(Ŷ; Y) > ν`` (strict).

    Parameters
    ----------
    accuracy : float or ndarray
        Label-wise accuracies from :func:`labelwise_accuracy`.
    nu : float
        Accuracy rate ν in [0, 1).
    """
    nu = float(nu)
    if not 0.0 <= nu < 1.0:
        raise ConformalError(f"nu must lie in [0, 1), got {nu}")
    result = np.asarray(accuracy) > nu
    return bool(result) if result.ndim == 0 else result


@dataclass(frozen=True)
class AccuracyCurve:
    """The best label-wise accuracy a set reaches as a step function of λ: ``acc*(λ)``.

    The calibration statistic of CONSIGN and of the pixel-wise sets: an image is covered at λ and
    accuracy rate ν iff ``acc*(λ) > ν``, so its per-image threshold is the first breakpoint above
    ν, ``λ_i(ν) = inf{λ : acc*(λ) > ν}``, and λ̂ is an order statistic of the λ_i.

    Attributes
    ----------
    lambdas : ndarray of float64, shape (J,)
        Breakpoints, strictly increasing.
    accuracies : ndarray of float64, shape (J,)
        ``acc*`` from each breakpoint on, non-decreasing.
    """

    lambdas: np.ndarray
    accuracies: np.ndarray

    #: acc* before the first breakpoint
    before: ClassVar[float] = -math.inf

    def accuracy_at(self, lam: float | np.ndarray) -> np.ndarray | float:
        """``acc*(λ)`` (``before`` ahead of the first breakpoint)."""
        lam_arr = np.asarray(lam, dtype=np.float64)
        j = np.searchsorted(self.lambdas, lam_arr, side="right") - 1
        acc = np.where(j >= 0, self.accuracies[np.clip(j, 0, None)] if self.accuracies.size else self.before, self.before)
        return acc if acc.ndim else float(acc)

    def lambda_for(self, nu: float) -> float:
        """``λ_i(ν)``: the first breakpoint with accuracy > ν; inf when none."""
        j = int(np.searchsorted(self.accuracies, float(nu), side="right"))
        return float(self.lambdas[j]) if j < self.lambdas.size else math.inf

    def best_accuracy(self) -> float:
        """The largest accuracy reached (``before`` for an empty curve)."""
        return float(self.accuracies[-1]) if self.accuracies.size else self.before

    def encode(self) -> dict[str, Any]:
        """``{"lambdas": array, "accuracies": array}`` for a calibration file."""
        from napari_conformal.core.arrays_json import encode_array

        return {"lambdas": encode_array(self.lambdas), "accuracies": encode_array(self.accuracies)}

    @staticmethod
    def decode_arrays(
        doc: Mapping[str, Any], *, complete: bool, extra: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lambdas, accuracies)`` of an encoded curve whose keys are those two and ``extra``.

        Checks what a step curve must satisfy: as many λ as accuracies, λ ≥ 0 strictly increasing,
        accuracies in [0, 1] non-decreasing, and (``complete``) ending at accuracy 1.

        Raises
        ------
        CalibrationFileError
            Anything else.
        """
        from napari_conformal.core.arrays_json import decode_array
        from napari_conformal.errors import CalibrationFileError

        keys = {"lambdas", "accuracies", *extra}
        if not isinstance(doc, Mapping) or set(doc) != keys:
            raise CalibrationFileError(f"an accuracy curve must have the keys {sorted(keys)}")
        lam = np.array(decode_array(doc["lambdas"], "lambdas"))
        acc = np.array(decode_array(doc["accuracies"], "accuracies"))
        ok = lam.dtype == acc.dtype == np.float64 and lam.ndim == acc.ndim == 1 and lam.size == acc.size
        ok = ok and (lam.size == 0 or (lam[0] >= 0 and bool(np.all(np.diff(lam) > 0))))
        ok = ok and (acc.size == 0 or (acc.min() >= 0 and acc.max() <= 1 and bool(np.all(np.diff(acc) >= 0))))
        if complete:
            ok = ok and lam.size > 0 and acc[-1] == 1.0
        if not ok:
            raise CalibrationFileError(
                "an accuracy curve needs as many λ as accuracies, λ >= 0 strictly increasing and accuracies in "
                "[0, 1] non-decreasing" + (" up to 1" if complete else "")
            )
        lam.flags.writeable = False
        acc.flags.writeable = False
        return lam, acc
