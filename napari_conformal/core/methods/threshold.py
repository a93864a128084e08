"""Conformal risk control of the false-negative rate for threshold sets, and standard CRC.

The set of an image is a threshold of a foreground score map ``S`` (docs/algorithms.md#crc)::

    C_λ(X) = {p : 1 − S_p ≤ λ}          (= {p : S_p ≥ 1 − λ})

and λ̂ is calibrated so that the expected false-negative rate of a new image is at most α
(:class:`~napari_conformal.core.quantiles.ThresholdRiskCurve`, exact and grid-free). The curve of a
calibration image is the nonconformity ``1 − S_p`` of its ground-truth foreground pixels, which
answers every α.

:class:`ThresholdFNRMethod` holds everything except the choice of ``S``: standard CRC
(:class:`CRCMethod`, ``"crc"``) thresholds the mean foreground probability ``S⁽⁰⁾``; RW-CP
thresholds a diffused map by overriding :meth:`~ThresholdFNRMethod.score_map` (and ``prepare``).

Multi-class data: ``fg_class`` selects the structure that is "foreground" (one-vs-rest); calibrate
one method per structure, each with its own FNR guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from napari_conformal.core.arrays_json import decode_array, encode_array
from napari_conformal.core.methods.base import ConformalMethod, Option, register
from napari_conformal.core.quantiles import ThresholdRiskCurve
from napari_conformal.core.scores.probabilities import foreground_probability
from napari_conformal.core.validation import check_alpha, check_fg_class, check_label
from napari_conformal.errors import CalibrationError, CalibrationFileError, StoreValidationError

__all__ = ["FG_CLASS", "CRCMethod", "ThresholdFNRMethod", "ThresholdPrepared", "percent", "structure_words"]

#: the foreground-class option of every binary method
FG_CLASS = Option(
    "fg_class", "int", 1, "the structure (label) treated as foreground; everything else is background",
    label="structure", minimum=0,
)


def structure_words(structure: int | None, binary: int | None = 1) -> str:
    """How a guarantee names its structure: "the structure" for ``binary`` (or None), else "structure c"."""
    return "the structure" if structure is None or structure == binary else f"structure {int(structure)}"


def percent(x: float) -> str:
    """``0.9`` → ``"90 %"``, ``0.875`` → ``"87.5 %"`` (no rounding that would overstate a guarantee)."""
    return f"{float(x) * 100:.4g} %"


@dataclass(frozen=True)
class ThresholdPrepared:
    """Label-free per-image state of a threshold method.

    Attributes
    ----------
    base : ndarray of float64, shape S
        Mean foreground probability ``S⁽⁰⁾``; the model's own prediction is ``Ŷ = base ≥ 0.5``.
    score : ndarray of float64, shape S
        The map that is thresholded (``S⁽⁰⁾`` for CRC, the diffused ``S⁽ⁿ⁾`` for RW-CP).
    n_labels : int
        L of the samples (to validate labels).
    extras : dict
        Method-specific extras (e.g. RW-CP's intermediate maps).
    """

    base: np.ndarray
    score: np.ndarray
    n_labels: int
    extras: dict[str, Any] = field(default_factory=dict)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class ThresholdFNRMethod(ConformalMethod[ThresholdPrepared, np.ndarray, np.ndarray]):
    """FNR conformal risk control of threshold sets ``{p : 1 − S_p ≤ λ}``.

    Subclasses choose the score map by overriding :meth:`score_map`; the calibration curve, λ̂, the
    set and the metrics are shared, so two threshold methods differ only in ``S``.
    """

    risk: ClassVar[str] = "fnr"
    lambda_name: ClassVar[str] = "threshold λ"
    lambda_unit: ClassVar[str] = "1 − score: the set keeps the pixels whose score is ≥ 1 − λ"
    layers: ClassVar[tuple[str, ...]] = ("contour",)
    options: ClassVar[tuple[Option, ...]] = (FG_CLASS,)
    structure_option: ClassVar[str | None] = "fg_class"
    fg_class: int

    def _setup(self) -> None:
        self._cache: tuple[tuple[Any, ...], ThresholdRiskCurve] | None = None

    # -- the one hook ------------------------------------------------------------------------------

    def score_map(self, image: np.ndarray | None, base: np.ndarray) -> np.ndarray:
        """The map to threshold, shape S, values in [0, 1] (default: ``base`` itself).

        Parameters
        ----------
        image : ndarray, shape S, or None
            The image (RW-CP extracts features from it).
        base : ndarray of float64, shape S
            ``S⁽⁰⁾``, the mean foreground probability.
        """
        return base

    # -- the steps ---------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray | None, samples: np.ndarray, **kwargs: Any) -> ThresholdPrepared:
        """Foreground probability and score map of one image.

        Parameters
        ----------
        image : ndarray, shape S, or None
            The image; only its shape is checked here (None skips the check).
        samples : ndarray, shape (T, L, *S)
            Softmax samples.
        stored_dtype : dtype, optional
            How the samples were stored (sets the sum tolerance).
        """
        base = foreground_probability(
            samples, self.fg_class, stored_dtype=kwargs.get("stored_dtype"), validated=kwargs.get("validated", False)
        )
        if image is not None and np.shape(image) != base.shape:
            raise StoreValidationError(
                f"image shape {np.shape(image)} does not match the samples' spatial shape {base.shape}"
            )
        score = np.asarray(self.score_map(image, base), dtype=np.float64)
        if score.shape != base.shape:
            raise StoreValidationError(f"score map has shape {score.shape}, expected {base.shape}")
        if not np.all(np.isfinite(score)):
            raise StoreValidationError("score map contains NaN or inf")
        return ThresholdPrepared(base=_readonly(base), score=_readonly(score), n_labels=int(np.shape(samples)[1]))

    def _truth(self, prepared: ThresholdPrepared, label: np.ndarray) -> np.ndarray:
        lab = check_label(label, n_labels=prepared.n_labels, shape=prepared.score.shape)
        return lab == self.fg_class

    def curve(
        self, prepared: ThresholdPrepared, label: np.ndarray, *, alpha: float | None = None, nu: float | None = None
    ) -> np.ndarray:
        """Nonconformity ``1 − S_p`` of the ground-truth foreground pixels.

        Returns
        -------
        ndarray of float64, shape (|Y|,)
            Read-only (the λ̂ cache relies on curves not changing).

        Raises
        ------
        CalibrationError
            The image has no pixel of class ``fg_class`` (its FNR is undefined).
        """
        truth = self._truth(prepared, label)
        if not truth.any():
            raise CalibrationError(
                f"the ground truth has no pixel of class {self.fg_class} (empty foreground): its "
                "false-negative rate is undefined; remove the image from the calibration set"
            )
        return _readonly(1.0 - prepared.score[truth])

    def risk_curve(self, curves: Sequence[np.ndarray]) -> ThresholdRiskCurve:
        """Exact empirical FNR of the calibration set as a function of λ.

        Cached for the most recent ``curves`` (by identity of their elements), so that moving α
        re-runs only a binary search.
        """
        key = tuple(curves)
        cached = self._cache
        if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        risk = ThresholdRiskCurve.from_nonconformity(list(key))
        self._cache = (key, risk)
        return risk

    def lambda_hat(self, curves: Sequence[np.ndarray], *, alpha: float, nu: float | None = None) -> float:
        """Exact CRC λ̂ for the FNR at level α (needs ``n ≥ ⌈1/α⌉ − 1``), on the ``1 − S`` scale."""
        return self.risk_curve(curves).lambda_hat(check_alpha(alpha))

    def predict(
        self, prepared: ThresholdPrepared, lambda_hat: float, *, alpha: float | None = None, nu: float | None = None
    ) -> np.ndarray:
        """The set ``{p : 1 − S_p ≤ λ̂}``, bool of shape S (float64, bit-consistent with :meth:`curve`)."""
        return (1.0 - prepared.score) <= float(lambda_hat)

    def realised(self, curve: np.ndarray, lambda_hat: float, *, alpha: float | None = None, nu: float | None = None) -> float:
        """``1 − FNR``: the fraction of the image's ground-truth foreground inside the set."""
        arr = np.asarray(curve)
        return float(np.count_nonzero(arr <= float(lambda_hat)) / arr.size) if arr.size else float("nan")

    def reference_prediction(self, prepared: ThresholdPrepared) -> np.ndarray:
        """The model's hard prediction ``Ŷ = S⁽⁰⁾ ≥ 0.5`` (denominator of the stretch)."""
        return prepared.base >= 0.5

    def evaluate(
        self,
        prepared: ThresholdPrepared,
        label: np.ndarray,
        lambda_hat: float,
        *,
        alpha: float | None = None,
        nu: float | None = None,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Coverage, stretch, Dice, ASSD and HD95 of the set at ``lambda_hat`` (NaN where undefined)."""
        from napari_conformal.core.metrics.segmentation import segmentation_metrics

        truth = self._truth(prepared, label)
        pred = self.predict(prepared, lambda_hat)
        return segmentation_metrics(pred, truth, reference=self.reference_prediction(prepared), spacing=spacing)

    # -- what callers need to know -----------------------------------------------------------------

    def guarantee(self, alpha: float, nu: float | None = None) -> str:
        """e.g. "On average the set misses at most 10 % of the structure" ("of structure 2" for class 2)."""
        return (
            f"On average over new images, the set misses at most {percent(check_alpha(alpha))} of "
            f"{structure_words(self.fg_class)} (expected false-negative rate)."
        )

    def check_data(self, *, n_labels: int, n_samples: int, ndim: int) -> None:
        """The foreground class must be a label of the data."""
        check_fg_class(self.fg_class, n_labels)

    def lambda_limit(self) -> float:
        """λ ∈ [0, 1] (λ = 1 keeps every pixel)."""
        return 1.0

    def full_set_lambda(self) -> float:
        """λ = 1: ``1 − S_p ≤ 1`` at every pixel (S ∈ [0, 1]), so the set is the whole image (FNR 0)."""
        return 1.0

    def encode_curve(self, curve: np.ndarray) -> dict[str, Any]:
        """``{"nonconformity": array}``."""
        return {"nonconformity": encode_array(np.asarray(curve, dtype=np.float64))}

    def decode_curve(self, doc: Mapping[str, Any]) -> np.ndarray:
        """The inverse of :meth:`encode_curve` (values in [0, 1], at least one pixel)."""
        if not isinstance(doc, Mapping) or set(doc) != {"nonconformity"}:
            raise CalibrationFileError("a threshold curve must be {nonconformity: array}")
        arr = decode_array(doc["nonconformity"], "nonconformity")
        if arr.dtype != np.float64 or arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() > 1:
            raise CalibrationFileError("nonconformity must be a non-empty float64 vector in [0, 1]")
        return _readonly(np.array(arr))


@register("crc")
class CRCMethod(ThresholdFNRMethod):
    """Standard CRC: threshold the mean foreground probability ``S⁽⁰⁾`` itself."""

    title: ClassVar[str] = "CRC"
    colour: ClassVar[str] = "#00bfff"
