"""Consema: conformal morphological dilation of the hard prediction (ALGORITHMS.md §5.2).

Mossina and Friedrich (MICCAI 2025). With ``Ŷ = S⁽⁰⁾ ≥ 0.5`` the model's
hard prediction and ``δ`` the binary dilation by a structuring element
(default: the face-connected cross, 3×3 in 2D, 6-connected in 3D)::

    s_i = min{ d ∈ ℕ : |δ^d(Ŷ_i) ∩ Y_i| / |Y_i| ≥ τ }     (capped at d_max = 2·max(S))
    q̂   = s_(⌈(n+1)(1−α)⌉)                               (1-indexed order statistic)
    C   = δ^{q̂}(Ŷ)                                        (the whole image when q̂ = d_max)

guarantees ``P(|C ∩ Y| / |Y| ≥ τ) ≥ 1 − α`` for an exchangeable test image.
The ratio test is exact: ``|δ^d(Ŷ) ∩ Y| ≥ ⌈τ·|Y|⌉`` with τ as the decimal the
user typed (:func:`~napari_conformal.core.crc.exact_fraction`).

Computation: ``δ^d(Ŷ) = {p : D_p ≤ d}`` where ``D`` is the number of
dilations needed to reach p. For the cross (square) element ``D`` is the
city-block (chessboard) distance to Ŷ, computed in one pass by
:func:`scipy.ndimage.distance_transform_cdt` (paths of unit steps stay inside
the box-shaped image, so the bounded image changes nothing). Any other
element is handled by repeated dilation. So s_i is the ``⌈τ|Y_i|⌉``-th
smallest ``D`` over the ground-truth pixels, and C is one comparison.

τ defaults to ``1 − α`` of the constructor (ALGORITHMS.md §6 item 16) and is
fixed once the scores are computed: calling :meth:`ConsemaMethod.lambda_hat`
with another α changes the quantile, not τ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import ndimage

from napari_conformal.core.crc import exact_fraction, order_statistic_lambda_hat
from napari_conformal.core.crc_method import foreground_probability, validate_label
from napari_conformal.core.method import ConformalMethod, register
from napari_conformal.errors import CalibrationError, ConformalError

__all__ = ["ConsemaMethod", "ConsemaPrepared", "dilation_distance", "make_footprint"]

_NAMED = {"cross": 1, "square": None}


def make_footprint(footprint: str | np.ndarray, ndim: int) -> np.ndarray:
    """Boolean structuring element for ``ndim`` axes.

    Parameters
    ----------
    footprint : {"cross", "square"} or ndarray of bool
        ``cross``: face neighbours (3×3 cross, 6-connected in 3D);
        ``square``: the full 3^ndim box; an array: odd size on every axis,
        ``ndim`` axes, centre True (so dilations are nested).
    ndim : int
        Number of spatial axes.
    """
    if isinstance(footprint, str):
        if footprint not in _NAMED:
            raise ConformalError(f"footprint must be 'cross', 'square' or a boolean array, got {footprint!r}")
        conn = _NAMED[footprint]
        return ndimage.generate_binary_structure(ndim, ndim if conn is None else conn)
    fp = np.asarray(footprint)
    if fp.dtype != np.bool_ and not np.issubdtype(fp.dtype, np.integer):
        raise ConformalError(f"footprint array must be boolean, got dtype {fp.dtype}")
    fp = fp.astype(bool)
    if fp.ndim != ndim or any(s % 2 == 0 for s in fp.shape):
        raise ConformalError(f"footprint array must have {ndim} axes of odd size, got shape {fp.shape}")
    if not fp[tuple(s // 2 for s in fp.shape)]:
        raise ConformalError("footprint array must contain its centre (otherwise dilations are not nested)")
    return fp


def dilation_distance(
    prediction: np.ndarray, footprint: str | np.ndarray = "cross", cap: int | None = None
) -> np.ndarray:
    """Number of dilations of ``prediction`` needed to reach each pixel.

    Parameters
    ----------
    prediction : ndarray of bool, shape S
        The hard prediction Ŷ.
    footprint : {"cross", "square"} or ndarray of bool
        Structuring element (see :func:`make_footprint`).
    cap : int, optional
        Largest count computed; pixels not reached within ``cap`` dilations
        get ``cap + 1``. Default ``2·max(S)``.

    Returns
    -------
    ndarray of int64, shape S
        ``D`` with ``δ^d(Ŷ) = {p : D_p ≤ d}`` for every ``0 ≤ d ≤ cap``
        (0 inside Ŷ; ``cap + 1`` everywhere when Ŷ is empty).
    """
    pred = np.asarray(prediction, dtype=bool)
    cap = 2 * max(pred.shape) if cap is None else int(cap)
    if not pred.any():
        return np.full(pred.shape, cap + 1, dtype=np.int64)
    if isinstance(footprint, str):
        make_footprint(footprint, pred.ndim)
        metric = "taxicab" if footprint == "cross" else "chessboard"
        dist = ndimage.distance_transform_cdt(~pred, metric=metric).astype(np.int64)
        return np.minimum(dist, cap + 1)
    fp = make_footprint(footprint, pred.ndim)
    dist = np.full(pred.shape, cap + 1, dtype=np.int64)
    dist[pred] = 0
    current = pred
    for d in range(1, cap + 1):
        grown = ndimage.binary_dilation(current, structure=fp)
        new = grown & ~current
        if not new.any():
            break
        dist[new] = d
        current = grown
    return dist


@dataclass(frozen=True)
class ConsemaPrepared:
    """Label-free per-image state of Consema.

    Attributes
    ----------
    base : ndarray of float64, shape S
        Mean foreground probability ``S⁽⁰⁾``.
    prediction : ndarray of bool, shape S
        ``Ŷ = S⁽⁰⁾ ≥ 0.5``.
    distance : ndarray of int64, shape S
        Dilations needed to reach each pixel (:func:`dilation_distance`).
    cap : int
        Largest number of dilations ``d_max``; at ``d_max`` the set is the image.
    n_labels : int
        L of the samples.
    """

    base: np.ndarray
    prediction: np.ndarray
    distance: np.ndarray
    cap: int
    n_labels: int


@register("consema")
class ConsemaMethod(ConformalMethod):
    """Conformal dilation of the hard prediction with coverage-ratio target τ.

    Parameters
    ----------
    alpha : float
        Miscoverage level in (0, 1).
    tau : float, optional
        Coverage ratio target in (0, 1]; default ``1 − alpha``.
    fg_class : int
        Label treated as foreground (one-vs-rest for multi-class stores).
    footprint : {"cross", "square"} or ndarray of bool
        Structuring element of one dilation (default the face-connected cross).
    max_dilations : int, optional
        Cap ``d_max`` on the number of dilations; default ``2·max(S)`` per image.
    """

    def __init__(
        self,
        alpha: float,
        *,
        tau: float | None = None,
        fg_class: int = 1,
        footprint: str | np.ndarray = "cross",
        max_dilations: int | None = None,
    ) -> None:
        a = float(alpha)
        if not (math.isfinite(a) and 0 < a < 1):
            raise ConformalError(f"alpha must lie in (0, 1), got {alpha!r}")
        super().__init__(a)
        self._tau = Fraction(1) - exact_fraction(a) if tau is None else exact_fraction(float(tau))
        if not 0 < self._tau <= 1:
            raise ConformalError(f"tau must lie in (0, 1], got {tau!r}")
        self.tau = float(self._tau)
        if isinstance(fg_class, bool) or not isinstance(fg_class, (int, np.integer)) or fg_class < 0:
            raise ConformalError(f"fg_class must be a non-negative integer label, got {fg_class!r}")
        self.fg_class = int(fg_class)
        if isinstance(footprint, str):
            make_footprint(footprint, 2)  # validates the name
        self.footprint = footprint
        if max_dilations is not None and (isinstance(max_dilations, bool) or int(max_dilations) < 1):
            raise ConformalError(f"max_dilations must be a positive integer, got {max_dilations!r}")
        self.max_dilations = None if max_dilations is None else int(max_dilations)

    # -- helpers -------------------------------------------------------------------------

    def _needed(self, n_truth: int) -> int:
        """``⌈τ·|Y|⌉``: covered truth pixels needed for a ratio ≥ τ (exact)."""
        return max(math.ceil(self._tau * n_truth), 1)

    def _truth(self, prepared: ConsemaPrepared, label: np.ndarray) -> np.ndarray:
        return validate_label(label, prepared.prediction.shape, prepared.n_labels) == self.fg_class

    # -- ConformalMethod -----------------------------------------------------------------

    def prepare(self, image: np.ndarray | None, samples: np.ndarray) -> ConsemaPrepared:
        """``S⁽⁰⁾``, ``Ŷ`` and the dilation-count map of one image.

        Parameters
        ----------
        image : ndarray, shape S, or None
            Only its shape is checked.
        samples : ndarray, shape (T, L, *S)
        """
        base = foreground_probability(samples, self.fg_class)
        if image is not None and np.shape(image) != base.shape:
            raise ConformalError(
                f"image shape {np.shape(image)} does not match the samples' spatial shape {base.shape}"
            )
        pred = base >= 0.5
        cap = 2 * max(base.shape) if self.max_dilations is None else self.max_dilations
        dist = dilation_distance(pred, self.footprint, cap)
        return ConsemaPrepared(
            base=base, prediction=pred, distance=dist, cap=cap, n_labels=int(np.shape(samples)[1])
        )

    def curve(self, prepared: ConsemaPrepared, label: np.ndarray) -> int:
        """Score ``s_i``: fewest dilations of Ŷ whose coverage ratio of Y is ≥ τ (≤ d_max).

        Raises
        ------
        CalibrationError
            Ŷ is empty (nothing to dilate) or Y is empty (ratio undefined).
        """
        truth = self._truth(prepared, label)
        if not truth.any():
            raise CalibrationError(
                f"the ground truth of this calibration image has no pixel of class {self.fg_class} "
                "(empty foreground): its coverage ratio is undefined; remove the image from the calibration set"
            )
        if not prepared.prediction.any():
            raise CalibrationError(
                "the model's hard prediction (mean foreground probability >= 0.5) of this calibration image "
                "is empty, so Consema has nothing to dilate; remove the image or use the 'crc' method"
            )
        d = np.sort(prepared.distance[truth])
        return int(min(d[self._needed(d.size) - 1], prepared.cap))

    def lambda_hat(self, curves: Sequence[int], alpha: float | None = None, nu: float | None = None) -> float:
        """``q̂``: the ⌈(n+1)(1−α)⌉-th smallest score (a whole number of dilations).

        Needs ``n ≥ 1/α − 1`` calibration images.
        """
        a = self.alpha if alpha is None else float(alpha)
        return order_statistic_lambda_hat(np.asarray(curves, dtype=np.float64), a)

    def predict(self, prepared: ConsemaPrepared, lambda_hat: float) -> np.ndarray:
        """``δ^{q̂}(Ŷ)``, the whole image when ``q̂ ≥ d_max``.

        A test image with an empty Ŷ gets an empty set (unless ``q̂ ≥ d_max``);
        the guarantee covers the images Consema can calibrate on (non-empty Ŷ).

        Returns
        -------
        ndarray of bool, shape S
        """
        q = float(lambda_hat)
        if not (math.isfinite(q) and q >= 0 and q == math.floor(q)):
            raise ConformalError(
                f"Consema's lambda_hat must be a whole number of dilations, got {lambda_hat!r}"
            )
        if q >= prepared.cap:
            return np.ones(prepared.prediction.shape, dtype=bool)
        return prepared.distance <= int(q)

    def evaluate(
        self,
        prepared: ConsemaPrepared,
        label: np.ndarray,
        lambda_hat: float,
        *,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Coverage, stretch, Dice, ASSD, HD95 and ``covered`` (ratio ≥ τ, 0/1; NaN without truth)."""
        from napari_conformal.core.metrics import segmentation_metrics

        truth = self._truth(prepared, label)
        pred = self.predict(prepared, lambda_hat)
        out: dict[str, Any] = segmentation_metrics(
            pred, truth, reference=prepared.prediction, spacing=spacing
        )
        n_truth = int(truth.sum())
        out["covered"] = (
            float(np.count_nonzero(pred & truth) >= self._needed(n_truth)) if n_truth else float("nan")
        )
        return out

    def params(self) -> dict[str, Any]:
        """τ, fg_class, footprint (name or nested list) and max_dilations."""
        fp = (
            self.footprint
            if isinstance(self.footprint, str)
            else np.asarray(self.footprint).astype(int).tolist()
        )
        return {
            "tau": self.tau,
            "fg_class": self.fg_class,
            "footprint": fp,
            "max_dilations": self.max_dilations,
        }
