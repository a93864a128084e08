"""RW-CP: conformal risk control of the FNR on a random-walk-diffused map.

Gaillochet, Desrosiers, Lombaert, "Anatomically-aware conformal prediction
for medical image segmentation with random walks" (docs/algorithms.md#rw-cp).
Per image (:meth:`RWCPMethod.prepare`)::

    S⁽⁰⁾ = mean over the T samples of the foreground probability   (class fg_class)
    Z    = Φ(X)                      features (C, *S') on a coarse grid   (core.features)
    P    = kNN transition matrix of Z  (k, rw_beta; cosine, directed)   (core.graph)
    S⁽ⁿ⁾ = upsample(Pⁿ · area-downsample(S⁽⁰⁾))                           (core.diffusion)

and then exactly standard CRC with S⁽ⁿ⁾ in place of S⁽⁰⁾ (everything after
``prepare`` is inherited from :class:`~napari_conformal.core.methods.threshold.ThresholdFNRMethod`):
``C_λ = {p : 1 − S⁽ⁿ⁾_p ≤ λ}``, λ̂ exact and grid-free, guarantee
``E[FNR] ≤ α`` for exchangeable calibration and test images.

Multi-class stores: ``fg_class`` picks the structure (one-vs-rest); calibrate
one RW-CP per structure of interest.

The diffused maps of every step stay available for viewers:
``prepared.extras["diffusion"]`` is a :class:`~napari_conformal.core.rwcp.diffusion.Diffusion`
(``.step(t)``, ``.all_steps()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from napari_conformal.core.device import release_device_memory, resolve_device
from napari_conformal.core.methods.base import Option, register
from napari_conformal.core.methods.threshold import FG_CLASS, ThresholdFNRMethod, ThresholdPrepared
from napari_conformal.core.rwcp.diffusion import Diffusion, diffuse
from napari_conformal.core.rwcp.features import (
    FeatureExtractor,
    FeatureMap,
    available_extractors,
    check_features,
    make_extractor,
)
from napari_conformal.core.rwcp.graph import transition_matrix
from napari_conformal.core.scores.probabilities import foreground_probability
from napari_conformal.errors import ConformalError, StoreValidationError

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
    """RW-CP, registered as ``"rwcp"``: CRC of the FNR on a random-walk-diffused foreground map.

    Options (:attr:`options`): ``k`` neighbours per node (20), ``rw_beta`` kernel scale β of
    ``exp(−β (1 − cos))`` (50), ``n_step`` random-walk steps (10), ``features`` the extractor
    (``"efficientnet-lite0"`` by default; ``"dinov2"``/``"dinov3"`` with ``model_dir``;
    ``"multiscale"`` needs no weights), ``grid_stride`` pixels per node (automatic), ``include_self``
    self-loops (a lazy walk; off in the paper) and ``fg_class``.

    Parameters
    ----------
    extractor : FeatureExtractor or callable, optional
        Use this extractor object or ``fn(image) -> (C, *S')`` instead of a named one (a user's own
        network); recorded in ``params`` by name only, so its calibrations cannot be rebuilt from JSON.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
    **options
        See above.
    """

    title: ClassVar[str] = "RW-CP"
    colour: ClassVar[str] = "#ffd700"
    layers: ClassVar[tuple[str, ...]] = ("contour", "diffusion")
    uses_features: ClassVar[bool] = True
    uses_device: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = (
        Option("k", "int", 20, "neighbours per node of the kNN feature graph", label="neighbours k", minimum=1),
        Option("rw_beta", "float", 50.0, "kernel scale β of the edge weights exp(−β·(1 − cos))", label="β", minimum=0.0),
        Option("n_step", "int", 10, "random-walk steps", label="steps", minimum=0, flag="steps"),
        Option(
            "features", "choice", "efficientnet-lite0", "image features the kNN graph is built from",
            choices=tuple(available_extractors()),
        ),
        Option("model_dir", "text", None, "local Hugging Face folder of a DINOv2/DINOv3 model", label="model folder", optional=True),
        Option("grid_stride", "int", None, "pixels per graph node along each axis (automatic when unset)", label="grid stride", minimum=1, optional=True),
        Option("include_self", "bool", False, "allow self-loops in the kNN graph (a lazy walk; off in the paper)", label="self-loops"),
        FG_CLASS,
    )
    k: int
    rw_beta: float
    n_step: int
    features: str
    model_dir: str | None
    grid_stride: int | None
    include_self: bool

    def __init__(
        self,
        *,
        extractor: FeatureExtractor | Callable[[np.ndarray], np.ndarray] | None = None,
        device: str | None = None,
        **options: Any,
    ) -> None:
        self._user_extractor = extractor
        super().__init__(device=device, **options)

    def _setup(self) -> None:
        super()._setup()
        if self._user_extractor is not None:
            self.extractor = make_extractor(self._user_extractor)
            self.features = str(self.extractor.params().get("name", "callable"))
        else:
            settings = {"model_dir": self.model_dir, "grid_stride": self.grid_stride}
            self.extractor = make_extractor(self.features, **settings)
        resolve_device(self.device)  # fail early on a device this machine lacks

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
        stored_dtype: Any = None,
        validated: bool = False,
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
        base = foreground_probability(samples, self.fg_class, stored_dtype=stored_dtype, validated=validated)
        if image is not None and np.shape(image) != base.shape:
            raise StoreValidationError(
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
        """The options; a user's own extractor is recorded by name only (it cannot be rebuilt from JSON)."""
        settings = self.extractor.params()
        out = super().params()
        out.update(
            features=settings.get("name", self.features),
            model_dir=settings.get("model_dir", self.model_dir),
            grid_stride=settings.get("grid_stride", self.grid_stride),
        )
        return out
