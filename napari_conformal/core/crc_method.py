"""Standard conformal risk control of the false-negative rate (ALGORITHMS.md §5.1).

The set of an image is a threshold of a foreground score map ``S``::

    C_λ(X) = {p : 1 − S_p ≤ λ}          (= {p : S_p ≥ 1 − λ})

and λ̂ is calibrated so that the expected false-negative rate of a new image
is at most α (:class:`~napari_conformal.core.crc.ThresholdRiskCurve`, exact
and grid-free).

:class:`ThresholdFNRMethod` holds everything except the choice of ``S``:
standard CRC (:class:`CRCMethod`, registered as ``"crc"``) thresholds the
raw foreground probability ``S⁽⁰⁾`` (mean over the T samples), RW-CP
thresholds a diffused map ``S⁽ⁿ⁾`` by overriding :meth:`~ThresholdFNRMethod.score_map`
(and, to keep intermediate maps, :meth:`~ThresholdFNRMethod.prepare`).

Multi-class stores: ``fg_class`` selects the class that is "foreground";
everything else is background (one-vs-rest). Calibrate one method per class
of interest, e.g. ``make_method("crc", alpha=0.1, fg_class=2)``; each
carries its own FNR guarantee for its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_conformal.core.crc import ThresholdRiskCurve
from napari_conformal.core.method import ConformalMethod, register
from napari_conformal.errors import CalibrationError, ConformalError

__all__ = [
    "CRCMethod",
    "ThresholdFNRMethod",
    "ThresholdPrepared",
    "foreground_probability",
    "validate_label",
]

#: slack allowed on probabilities outside [0, 1] (float16 stores round)
_PROB_ATOL = 1e-3


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not (np.isfinite(a) and 0.0 < a < 1.0):
        raise ConformalError(f"alpha must lie in (0, 1), got {alpha!r}")
    return a


def _check_fg_class(fg_class: int) -> int:
    if isinstance(fg_class, bool) or not isinstance(fg_class, (int, np.integer)) or fg_class < 0:
        raise ConformalError(f"fg_class must be a non-negative integer label, got {fg_class!r}")
    return int(fg_class)


def foreground_probability(samples: np.ndarray, fg_class: int = 1) -> np.ndarray:
    """Mean foreground probability ``S⁽⁰⁾`` over the samples.

    Parameters
    ----------
    samples : ndarray, shape (T, L, *S)
        T softmax samples over L labels (float16/32/64).
    fg_class : int
        Label treated as foreground (0 ≤ fg_class < L).

    Returns
    -------
    ndarray of float64, shape S
        ``mean_t samples[t, fg_class]``, clipped to [0, 1].

    Raises
    ------
    ConformalError
        Wrong number of axes, ``fg_class`` out of range, NaN/inf, or values
        outside [0, 1].
    """
    fg_class = _check_fg_class(fg_class)
    arr = np.asarray(samples)
    if arr.ndim < 3:
        raise ConformalError(
            f"samples must have shape (T, L, *S) with at least one spatial axis, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConformalError(f"samples must be floating-point probabilities, got dtype {arr.dtype}")
    t, n_labels = arr.shape[:2]
    if t < 1:
        raise ConformalError("samples must hold at least one sample (T >= 1)")
    if fg_class >= n_labels:
        raise ConformalError(f"fg_class={fg_class} is out of range for samples with L={n_labels} labels")
    fg = arr[:, fg_class].astype(np.float64)
    if not np.all(np.isfinite(fg)):
        raise ConformalError("samples contain NaN or inf")
    if fg.min() < -_PROB_ATOL or fg.max() > 1 + _PROB_ATOL:
        raise ConformalError(
            f"samples must be probabilities in [0, 1], found range [{fg.min():g}, {fg.max():g}] "
            "(apply softmax to logits first)"
        )
    return np.clip(fg.mean(axis=0), 0.0, 1.0)


def validate_label(label: np.ndarray, shape: tuple[int, ...], n_labels: int | None = None) -> np.ndarray:
    """Check a ground-truth label map and return it as an integer array.

    Parameters
    ----------
    label : ndarray, shape S
        Integer (or boolean) labels in 0..L−1.
    shape : tuple of int
        Expected spatial shape S.
    n_labels : int, optional
        L, the number of labels; values ≥ L are rejected.
    """
    lab = np.asarray(label)
    if lab.shape != tuple(shape):
        raise ConformalError(f"label must have the image's spatial shape {tuple(shape)}, got {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.int64)
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ConformalError(f"label must be an integer label map, got dtype {lab.dtype}")
    if lab.size and (lab.min() < 0 or (n_labels is not None and lab.max() >= n_labels)):
        raise ConformalError(
            f"label values must lie in 0..{'L-1' if n_labels is None else n_labels - 1}, "
            f"found range [{lab.min()}, {lab.max()}]"
        )
    return lab


@dataclass(frozen=True)
class ThresholdPrepared:
    """Label-free per-image state of a threshold method.

    Attributes
    ----------
    base : ndarray of float64, shape S
        Raw foreground probability ``S⁽⁰⁾``; the reference prediction is
        ``Ŷ = base ≥ 0.5``.
    score : ndarray of float64, shape S
        The map that is thresholded (``S⁽⁰⁾`` for CRC, ``S⁽ⁿ⁾`` for RW-CP).
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


class ThresholdFNRMethod(ConformalMethod):
    """FNR conformal risk control of threshold sets ``{p : 1 − S_p ≤ λ}``.

    Subclasses choose the score map by overriding :meth:`score_map`; the
    calibration curve, λ̂, the set and the metrics are shared, so any two
    threshold methods differ only in ``S``.

    Parameters
    ----------
    alpha : float
        Target expected false-negative rate in (0, 1).
    fg_class : int
        Label treated as foreground (one-vs-rest for multi-class stores).
    """

    def __init__(self, alpha: float, *, fg_class: int = 1) -> None:
        super().__init__(_check_alpha(alpha))
        self.fg_class = _check_fg_class(fg_class)
        self._cache: tuple[tuple[Any, ...], ThresholdRiskCurve] | None = None

    # -- the one hook --------------------------------------------------------------------

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

    # -- ConformalMethod -----------------------------------------------------------------

    def prepare(self, image: np.ndarray | None, samples: np.ndarray) -> ThresholdPrepared:
        """Foreground probability and score map of one image.

        Parameters
        ----------
        image : ndarray, shape S, or None
            The image; only its shape is checked here (None skips the check).
        samples : ndarray, shape (T, L, *S)
            Softmax samples.

        Returns
        -------
        ThresholdPrepared
        """
        base = foreground_probability(samples, self.fg_class)
        if image is not None and np.shape(image) != base.shape:
            raise ConformalError(
                f"image shape {np.shape(image)} does not match the samples' spatial shape {base.shape}"
            )
        score = np.asarray(self.score_map(image, base), dtype=np.float64)
        if score.shape != base.shape:
            raise ConformalError(f"score map has shape {score.shape}, expected {base.shape}")
        if not np.all(np.isfinite(score)):
            raise ConformalError("score map contains NaN or inf")
        return ThresholdPrepared(
            base=_readonly(base), score=_readonly(score), n_labels=int(np.shape(samples)[1])
        )

    def curve(self, prepared: ThresholdPrepared, label: np.ndarray) -> np.ndarray:
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
        truth = validate_label(label, prepared.score.shape, prepared.n_labels) == self.fg_class
        if not truth.any():
            raise CalibrationError(
                f"the ground truth of this calibration image has no pixel of class {self.fg_class} "
                "(empty foreground): its false-negative rate is undefined; remove the image from the "
                "calibration set"
            )
        return _readonly(1.0 - prepared.score[truth])

    def risk_curve(self, curves: Sequence[np.ndarray]) -> ThresholdRiskCurve:
        """Exact empirical FNR of the calibration set as a function of λ.

        Cached for the most recent ``curves`` (by identity of the sequence's
        elements), so that moving α re-runs only a binary search.
        """
        key = tuple(curves)
        cached = self._cache
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a is b for a, b in zip(cached[0], key, strict=True))
        ):
            return cached[1]
        risk = ThresholdRiskCurve.from_nonconformity(list(key))
        self._cache = (key, risk)
        return risk

    def lambda_hat(
        self, curves: Sequence[np.ndarray], alpha: float | None = None, nu: float | None = None
    ) -> float:
        """Exact CRC λ̂ for the FNR at level ``alpha`` (default: the method's α).

        Parameters
        ----------
        curves : sequence of n arrays
            Outputs of :meth:`curve` for the calibration images.
        alpha : float, optional
            Target FNR; needs ``n ≥ 1/α − 1``.
        nu : ignored
            Threshold methods have no ν.

        Returns
        -------
        float
            ``λ̂`` on the nonconformity scale (apply with :meth:`predict`).
        """
        a = self.alpha if alpha is None else _check_alpha(alpha)
        return self.risk_curve(curves).lambda_hat(a)

    def predict(self, prepared: ThresholdPrepared, lambda_hat: float) -> np.ndarray:
        """The set ``{p : 1 − S_p ≤ λ̂}`` (float64, bit-consistent with :meth:`curve`).

        Returns
        -------
        ndarray of bool, shape S
        """
        return (1.0 - prepared.score) <= float(lambda_hat)

    def reference_prediction(self, prepared: ThresholdPrepared) -> np.ndarray:
        """The model's hard prediction ``Ŷ = S⁽⁰⁾ ≥ 0.5`` (denominator of the stretch)."""
        return prepared.base >= 0.5

    def evaluate(
        self,
        prepared: ThresholdPrepared,
        label: np.ndarray,
        lambda_hat: float,
        *,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Coverage, stretch, Dice, ASSD and HD95 of the set at ``lambda_hat``.

        ``n_samples`` and ``seed`` are ignored (threshold sets are not sampled).
        Metrics follow :func:`napari_conformal.core.metrics.segmentation_metrics`
        (NaN where undefined, e.g. coverage of an image without foreground).
        """
        from napari_conformal.core.metrics import segmentation_metrics

        truth = validate_label(label, prepared.score.shape, prepared.n_labels) == self.fg_class
        pred = self.predict(prepared, lambda_hat)
        return segmentation_metrics(
            pred, truth, reference=self.reference_prediction(prepared), spacing=spacing
        )

    def params(self) -> dict[str, Any]:
        """``{"fg_class": ...}``."""
        return {"fg_class": self.fg_class}


@register("crc")
class CRCMethod(ThresholdFNRMethod):
    """Standard CRC: threshold the mean foreground probability ``S⁽⁰⁾`` itself."""
