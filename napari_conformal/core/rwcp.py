"""RW-CP: conformal risk control of the FNR on a random-walk-diffused map.

Gaillochet, Desrosiers, Lombaert, "Anatomically-aware conformal prediction
for medical image segmentation with random walks" (ALGORITHMS.md §4).
Per image (:meth:`RWCPMethod.prepare`)::

    S⁽⁰⁾ = mean over the T samples of the foreground probability   (class fg_class)
    Z    = Φ(X)                      features (C, *S') on a coarse grid   (core.features)
    P    = kNN transition matrix of Z  (k, rw_beta; cosine, directed)   (core.graph)
    S⁽ⁿ⁾ = upsample(Pⁿ · area-downsample(S⁽⁰⁾))                           (core.diffusion)

and then exactly standard CRC with S⁽ⁿ⁾ in place of S⁽⁰⁾ (everything after
``prepare`` is inherited from :class:`~napari_conformal.core.crc_method.ThresholdFNRMethod`):
``C_λ = {p : 1 − S⁽ⁿ⁾_p ≤ λ}``, λ̂ exact and grid-free, guarantee
``E[FNR] ≤ α`` for exchangeable calibration and test images.

Multi-class stores: ``fg_class`` picks the structure (one-vs-rest); calibrate
one RW-CP per structure of interest.

The diffused maps of every step stay available for viewers:
``prepared.extras["diffusion"]`` is a :class:`~napari_conformal.core.diffusion.Diffusion`
(``.step(t)``, ``.all_steps()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_conformal.core.crc_method import ThresholdFNRMethod, ThresholdPrepared, foreground_probability
from napari_conformal.core.device import release_device_memory, resolve_device
from napari_conformal.core.diffusion import Diffusion, diffuse
from napari_conformal.core.features import FeatureExtractor, FeatureMap, check_features, make_extractor
from napari_conformal.core.graph import transition_matrix
from napari_conformal.core.method import register
from napari_conformal.errors import ConformalError

__all__ = ["RWCPMethod"]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


def _stage(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """Map a stage's (done, n) onto the overall (done, total) scale (stages of 100 units)."""
    if progress is None:
        return None

    def report(done: int, n: int) -> None:
        progress(offset + (100 * done) // max(n, 1), total)

    return report


@register("rwcp")
class RWCPMethod(ThresholdFNRMethod):
    """RW-CP, registered as ``"rwcp"``.

    Parameters
    ----------
    alpha : float
        Target expected false-negative rate in (0, 1).
    k : int, optional
        Neighbours per node of the kNN graph (default 20; None means 20).
        Written as ``k`` in ``CALIB.json``.
    rw_beta : float
        Kernel scale β of ``exp(−β (1 − cos))`` (default 50).
    n_step : int
        Random-walk steps (default 10).
    features : str, FeatureExtractor or callable
        Feature extractor: ``"efficientnet-lite0"`` (default), ``"dinov2"``,
        ``"dinov3"`` (with ``model_dir``), ``"multiscale"``, an extractor
        instance or ``fn(image) -> (C, *S')``.
    model_dir : str, optional
        Local Hugging Face directory for the DINO extractors.
    grid_stride : int, optional
        Pixels per node along each axis for the CNN/multiscale extractors
        (None: automatic, see :mod:`napari_conformal.core.features`).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
    fg_class : int
        Foreground label (one-vs-rest).
    include_self : bool
        Allow self-loops in the kNN graph (a lazy walk; off in the paper).
    """

    def __init__(
        self,
        alpha: float,
        k: int | None = None,
        *,
        rw_beta: float = 50.0,
        n_step: int = 10,
        features: str | FeatureExtractor | Callable[[np.ndarray], np.ndarray] = "efficientnet-lite0",
        model_dir: str | None = None,
        grid_stride: int | None = None,
        device: str = "auto",
        fg_class: int = 1,
        include_self: bool = False,
    ) -> None:
        super().__init__(alpha, fg_class=fg_class)
        k = 20 if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConformalError(f"k (neighbours per node) must be a positive integer, got {k!r}")
        self.k = int(k)
        beta = float(rw_beta)
        if not np.isfinite(beta) or beta < 0:
            raise ConformalError(f"rw_beta must be a finite number >= 0, got {rw_beta!r}")
        self.rw_beta = beta
        if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 0:
            raise ConformalError(f"n_step must be an integer >= 0, got {n_step!r}")
        self.n_step = int(n_step)
        options = {}
        if isinstance(features, str):
            if model_dir is not None:
                options["model_dir"] = model_dir
            if grid_stride is not None:
                options["grid_stride"] = grid_stride
        self.extractor = make_extractor(features, **options)
        self.model_dir = model_dir
        self.grid_stride = grid_stride
        resolve_device(device)  # fail early on a device this machine lacks
        self.device = str(device)
        self.include_self = bool(include_self)

    # -- the pipeline ---------------------------------------------------------------------

    def compute_features(
        self,
        image: np.ndarray,
        *,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> FeatureMap:
        """Features of one image with this method's extractor (what a store may cache)."""
        return self.extractor(image, device=self.device, progress=progress, should_stop=should_stop)

    def diffuse(
        self,
        image: np.ndarray | None,
        base: np.ndarray,
        *,
        features: np.ndarray | FeatureMap | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Diffusion:
        """Features → graph → random walk for one image.

        Parameters
        ----------
        image : ndarray, shape S, or None
            The image (None only when ``features`` is given).
        base : ndarray, shape S
            ``S⁽⁰⁾``.
        features : ndarray (C, *S') or FeatureMap, optional
            Precomputed features (e.g. from the store); skips extraction.
        progress : callable (done, total), optional
            Overall progress in units of 100 per stage (features, graph, walk).
        should_stop : callable () -> bool, optional
            Polled inside every stage.

        Returns
        -------
        Diffusion
            Every ``S⁽ᵗ⁾``, t = 0 … n_step; ``.final`` is the score map.
        """
        base = np.asarray(base)
        total = 300
        if features is None:
            if image is None:
                raise ConformalError("RW-CP needs the image (or precomputed features) to build its graph")
            fmap = self.compute_features(image, progress=_stage(progress, 0, total), should_stop=should_stop)
        else:
            fmap = check_features(features, base.shape)
        if fmap.image_shape != base.shape:
            raise ConformalError(
                f"features were computed for shape {fmap.image_shape}, the probability map has {base.shape}"
            )
        matrix = transition_matrix(
            torch.from_numpy(fmap.nodes()),
            self.k,
            self.rw_beta,
            device=self.device,
            include_self=self.include_self,
            progress=_stage(progress, 100, total),
            should_stop=should_stop,
        )
        try:
            return diffuse(
                matrix,
                base,
                fmap.grid_shape,
                self.n_step,
                progress=_stage(progress, 200, total),
                should_stop=should_stop,
            )
        finally:
            device = matrix.device
            del matrix
            release_device_memory(device)

    # -- ThresholdFNRMethod hooks -----------------------------------------------------------

    def score_map(self, image: np.ndarray | None, base: np.ndarray) -> np.ndarray:
        """``S⁽ⁿ⁾`` on the image grid (features extracted from ``image``)."""
        return self.diffuse(image, base).final

    def prepare(
        self,
        image: np.ndarray | None,
        samples: np.ndarray,
        *,
        features: np.ndarray | FeatureMap | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> ThresholdPrepared:
        """Diffused score map of one image.

        Parameters
        ----------
        image : ndarray, shape S, or None
            The image (None only with ``features``).
        samples : ndarray, shape (T, L, *S)
            Softmax samples; ``S⁽⁰⁾`` is their mean for class ``fg_class``.
        features : ndarray (C, *S') or FeatureMap, optional
            Precomputed features of the image.
        progress, should_stop
            See :meth:`diffuse`.

        Returns
        -------
        ThresholdPrepared
            ``score`` = ``S⁽ⁿ⁾``; ``extras["diffusion"]`` keeps every step.
        """
        base = foreground_probability(samples, self.fg_class)
        if image is not None and np.shape(image) != base.shape:
            raise ConformalError(
                f"image shape {np.shape(image)} does not match the samples' spatial shape {base.shape}"
            )
        diffusion = self.diffuse(image, base, features=features, progress=progress, should_stop=should_stop)
        score = np.asarray(diffusion.final, dtype=np.float64)
        score.flags.writeable = False
        base.flags.writeable = False
        return ThresholdPrepared(
            base=base,
            score=score,
            n_labels=int(np.shape(samples)[1]),
            extras={"diffusion": diffusion, "grid_shape": diffusion.grid_shape},
        )

    def params(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this method (``k`` is written separately, from ``method.k``).

        A user-supplied extractor object or function is recorded by name only
        (``"callable"``/its class name) and cannot be rebuilt from JSON.
        """
        settings = self.extractor.params()
        return {
            "fg_class": self.fg_class,
            "features": settings["name"],
            "model_dir": settings.get("model_dir", self.model_dir),
            "grid_stride": settings.get("grid_stride", self.grid_stride),
            "rw_beta": self.rw_beta,
            "n_step": self.n_step,
            "device": self.device,
            "include_self": self.include_self,
        }
