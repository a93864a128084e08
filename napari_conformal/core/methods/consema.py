"""Consema: conformal morphological dilation of the hard prediction (docs/algorithms.md#consema).

Mossina and Friedrich (MICCAI 2025). With ``Ŷ = S⁽⁰⁾ ≥ 0.5`` the model's
hard prediction and ``δ`` the binary dilation by a structuring element
(default: the face-connected cross, 3×3 in 2D, 6-connected in 3D)::

    s_i = min{ d ∈ ℕ : |δ^d(Ŷ_i) ∩ Y_i| / |Y_i| ≥ τ }     (capped at d_max = 2·max(S))
    q̂   = s_(⌈(n+1)(1−α)⌉)                               (1-indexed order statistic)
    C   = δ^{q̂}(Ŷ)                                        (the whole image when q̂ = d_max)

guarantees ``P(|C ∩ Y| / |Y| ≥ τ) ≥ 1 − α`` for an exchangeable test image.
The ratio test is exact: ``|δ^d(Ŷ) ∩ Y| ≥ ⌈τ·|Y|⌉`` with τ as the decimal the
user typed (:func:`~napari_conformal.core.quantiles.exact_fraction`).

Computation: ``δ^d(Ŷ) = {p : D_p ≤ d}`` where ``D`` is the number of
dilations needed to reach p. For the cross (square) element ``D`` is the
city-block (chessboard) distance to Ŷ, computed in one pass by
:func:`scipy.ndimage.distance_transform_cdt` (paths of unit steps stay inside
the box-shaped image, so the bounded image changes nothing). Any other
element is handled by repeated dilation. So s_i is the ``⌈τ|Y_i|⌉``-th
smallest ``D`` over the ground-truth pixels, and C is one comparison.

τ is ``1 − α`` at every α unless the ``tau`` option fixes it (the RW-CP paper does not say
which τ it used; docs/algorithms.md#consema): λ̂ at another α then moves both the quantile and τ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from napari_conformal.core.arrays_json import decode_array, encode_array
from napari_conformal.core.methods.base import ConformalMethod, Option, register
from napari_conformal.core.methods.threshold import FG_CLASS, percent, structure_words
from napari_conformal.core.quantiles import order_statistic_lambda_hat
from napari_conformal.core.scores.probabilities import foreground_probability
from napari_conformal.core.validation import check_alpha, check_fg_class, check_label, exact_fraction
from napari_conformal.errors import (
    CalibrationError,
    CalibrationFileError,
    ConformalError,
    ParameterError,
    StoreValidationError,
)

__all__ = ["ConsemaCurve", "ConsemaMethod", "ConsemaPrepared", "dilation_distance", "make_footprint"]

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


@dataclass(frozen=True)
class ConsemaCurve:
    """A calibration image's dilation distances: what Consema's score is at every τ.

    Attributes
    ----------
    distances : ndarray of int64, shape (|Y|,)
        Dilations of Ŷ needed to reach each ground-truth pixel, ascending (capped at ``cap + 1``).
    cap : int
        ``d_max`` of the image: at ``cap`` dilations the set is the whole image.
    """

    distances: np.ndarray
    cap: int

    def score(self, tau: Fraction) -> int:
        """``s_i(τ)``: the fewest dilations whose coverage ratio of Y is ≥ τ (at most ``cap``)."""
        need = max(math.ceil(tau * self.distances.size), 1)
        return int(min(self.distances[need - 1], self.cap))


@register("consema")
class ConsemaMethod(ConformalMethod[ConsemaPrepared, ConsemaCurve, np.ndarray]):
    """Conformal dilation of the hard prediction with coverage-ratio target τ.

    Options: ``tau`` the coverage ratio in (0, 1] — unset (the default), τ = 1 − α at every α, so
    moving α moves τ too; ``fg_class``; ``footprint`` ``"cross"`` (face neighbours, the default) or
    ``"square"``; ``max_dilations`` the cap ``d_max`` (default ``2·max(S)`` per image).

    The calibration curve of an image keeps the dilation distance of every ground-truth pixel, so
    the score ``s_i(τ)`` — and λ̂ — is a re-reduction for any α and τ.
    """

    title: ClassVar[str] = "Consema"
    colour: ClassVar[str] = "#ff4fa3"
    lambda_name: ClassVar[str] = "dilations q̂"
    lambda_unit: ClassVar[str] = "dilation steps of the model's segmentation (one pixel each)"
    lambda_is_count: ClassVar[bool] = True
    layers: ClassVar[tuple[str, ...]] = ("contour",)
    options: ClassVar[tuple[Option, ...]] = (
        Option(
            "tau", "float", None, "coverage ratio τ a covered image reaches (unset: τ = 1 − α)",
            label="τ", minimum=0.0, maximum=1.0, exclusive_minimum=True, optional=True,
        ),
        FG_CLASS,
        Option("footprint", "choice", "cross", "structuring element of one dilation", choices=("cross", "square")),
        Option(
            "max_dilations", "int", None, "largest number of dilations (unset: twice the largest image side)",
            label="max dilations", minimum=1, optional=True,
        ),
    )
    structure_option: ClassVar[str | None] = "fg_class"
    tau: float | None
    fg_class: int
    footprint: str
    max_dilations: int | None

    # -- helpers -------------------------------------------------------------------------

    def tau_at(self, alpha: float) -> Fraction:
        """τ at level α: the ``tau`` option when set, else ``1 − α`` (both as exact decimals)."""
        if self.tau is not None:
            return exact_fraction(self.tau)
        return Fraction(1) - exact_fraction(check_alpha(alpha))

    def _truth(self, prepared: ConsemaPrepared, label: np.ndarray) -> np.ndarray:
        lab = check_label(label, n_labels=prepared.n_labels, shape=prepared.prediction.shape)
        return lab == self.fg_class

    # -- the steps -------------------------------------------------------------------------

    def prepare(self, image: np.ndarray | None, samples: np.ndarray, **kwargs: Any) -> ConsemaPrepared:
        """``S⁽⁰⁾``, ``Ŷ`` and the dilation-count map of one image (``stored_dtype=`` sets the sum tolerance)."""
        base = foreground_probability(
            samples, self.fg_class, stored_dtype=kwargs.get("stored_dtype"), validated=kwargs.get("validated", False)
        )
        if image is not None and np.shape(image) != base.shape:
            raise StoreValidationError(
                f"image shape {np.shape(image)} does not match the samples' spatial shape {base.shape}"
            )
        pred = base >= 0.5
        cap = 2 * max(base.shape) if self.max_dilations is None else self.max_dilations
        dist = dilation_distance(pred, self.footprint, cap)
        return ConsemaPrepared(base=base, prediction=pred, distance=dist, cap=cap, n_labels=int(np.shape(samples)[1]))

    def curve(
        self, prepared: ConsemaPrepared, label: np.ndarray, *, alpha: float | None = None, nu: float | None = None
    ) -> ConsemaCurve:
        """The sorted dilation distances of the ground-truth pixels.

        An empty Ŷ has nothing to dilate: every distance is ``cap + 1``, so the image's score is
        ``d_max`` at every τ (only the whole image, the set at q̂ = d_max, covers it). Its images
        stay in the calibration set, which keeps the guarantee about every image, those the model
        misses included.

        Raises
        ------
        CalibrationError
            Y is empty (ratio undefined).
        """
        truth = self._truth(prepared, label)
        if not truth.any():
            raise CalibrationError(
                f"the ground truth has no pixel of class {self.fg_class} (empty foreground): its coverage "
                "ratio is undefined; remove the image from the calibration set"
            )
        d = np.sort(prepared.distance[truth]).astype(np.int64)
        d.flags.writeable = False
        return ConsemaCurve(d, int(prepared.cap))

    def lambda_hat(self, curves: Sequence[ConsemaCurve], *, alpha: float, nu: float | None = None) -> float:
        """``q̂``: the ⌈(n+1)(1−α)⌉-th smallest ``s_i(τ)`` (a whole number of dilations)."""
        a = check_alpha(alpha)
        tau = self.tau_at(a)
        return order_statistic_lambda_hat(np.array([c.score(tau) for c in curves], dtype=np.float64), a)

    def predict(
        self, prepared: ConsemaPrepared, lambda_hat: float, *, alpha: float | None = None, nu: float | None = None
    ) -> np.ndarray:
        """``δ^{q̂}(Ŷ)``, the whole image when ``q̂ ≥ d_max``; bool of shape S.

        A test image with an empty Ŷ gets an empty set (unless ``q̂ ≥ d_max``), as a calibration
        image with an empty Ŷ scores ``d_max``.
        """
        q = float(lambda_hat)
        if not (math.isfinite(q) and q >= 0 and q == math.floor(q)):
            raise ParameterError(f"Consema's lambda_hat must be a whole number of dilations, got {lambda_hat!r}")
        if q >= prepared.cap:
            return np.ones(prepared.prediction.shape, dtype=bool)
        return prepared.distance <= int(q)

    def realised(self, curve: ConsemaCurve, lambda_hat: float, *, alpha: float, nu: float | None = None) -> float:
        """1.0 when the set at ``lambda_hat`` covers a fraction ≥ τ(α) of the structure, else 0.0."""
        return float(curve.score(self.tau_at(alpha)) <= float(lambda_hat))

    def evaluate(
        self,
        prepared: ConsemaPrepared,
        label: np.ndarray,
        lambda_hat: float,
        *,
        alpha: float,
        nu: float | None = None,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Coverage, stretch, Dice, ASSD, HD95 and ``covered`` (ratio ≥ τ, 0/1; NaN without truth)."""
        from napari_conformal.core.metrics.segmentation import segmentation_metrics

        truth = self._truth(prepared, label)
        pred = self.predict(prepared, lambda_hat)
        out: dict[str, Any] = segmentation_metrics(pred, truth, reference=prepared.prediction, spacing=spacing)
        n_truth = int(truth.sum())
        need = max(math.ceil(self.tau_at(alpha) * n_truth), 1)
        out["covered"] = float(np.count_nonzero(pred & truth) >= need) if n_truth else float("nan")
        return out

    # -- what callers need to know -----------------------------------------------------------

    def guarantee(self, alpha: float, nu: float | None = None) -> str:
        """e.g. "With probability ≥ 90 %, the set covers at least 90 % of the structure"."""
        a = check_alpha(alpha)
        return (
            f"With probability ≥ {percent(1 - a)}, the set covers at least {percent(float(self.tau_at(a)))} "
            f"of {structure_words(self.fg_class)}."
        )

    def lambda_note(self, lambda_hat: float, *, alpha: float, nu: float | None = None) -> str | None:
        """At q̂ = 0 the set is the model's own segmentation."""
        if float(lambda_hat) == 0.0:
            return "at this α the set is the model's own segmentation (no dilation needed)"
        return None

    def check_data(self, *, n_labels: int, n_samples: int, ndim: int) -> None:
        """The foreground class must be a label of the data."""
        check_fg_class(self.fg_class, n_labels)

    def check_lambda(self, lambda_hat: float) -> float:
        """A whole number of dilations ≥ 0."""
        from napari_conformal.core.validation import check_lambda

        q = check_lambda(lambda_hat, "lambda_hat")
        if q != math.floor(q):
            raise ParameterError(f"Consema's lambda_hat must be a whole number of dilations, got {lambda_hat!r}")
        return q

    def encode_curve(self, curve: ConsemaCurve) -> dict[str, Any]:
        """``{"distances": int array, "cap": int}``."""
        return {"distances": encode_array(curve.distances.astype(np.int64)), "cap": int(curve.cap)}

    def decode_curve(self, doc: Mapping[str, Any]) -> ConsemaCurve:
        """The inverse of :meth:`encode_curve` (sorted, non-negative distances; a positive cap)."""
        if not isinstance(doc, Mapping) or set(doc) != {"distances", "cap"}:
            raise CalibrationFileError("a Consema curve must be {distances, cap}")
        cap = doc["cap"]
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise CalibrationFileError(f"a Consema curve's cap must be a positive integer, got {cap!r}")
        d = decode_array(doc["distances"], "distances")
        if d.dtype != np.int64 or d.ndim != 1 or d.size == 0 or d[0] < 0 or np.any(np.diff(d) < 0):
            raise CalibrationFileError("Consema distances must be a non-empty ascending vector of integers >= 0")
        d = np.array(d)
        d.flags.writeable = False
        return ConsemaCurve(d, cap)
