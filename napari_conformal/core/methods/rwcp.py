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

With ``tune="dice"`` the method first chooses k, β and n_step for Dice on a seeded part of the
calibration images and computes λ̂ on the rest (:meth:`RWCPMethod.iter_tune`,
:mod:`napari_conformal.core.rwcp.tuning`, docs/algorithms.md#rw-cp-tuning).

The diffused maps of every step stay available for viewers:
``prepared.extras["diffusion"]`` is a :class:`~napari_conformal.core.rwcp.diffusion.Diffusion`
(``.step(t)``, ``.all_steps()``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from napari_conformal.core.device import release_device_memory, resolve_device
from napari_conformal.core.methods.base import ConformalMethod, Option, Step, TuningImage, register
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
from napari_conformal.core.validation import check_label
from napari_conformal.errors import ConformalError, ParameterError, StoreValidationError

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
    (``"efficientnet-lite0"`` by default, run on the image enlarged ``input_scale`` times;
    ``"model"`` the segmentation network's own layers, ``feature_model`` and ``feature_layer``;
    ``"dinov2"``/``"dinov3"`` with ``model_dir``; ``"multiscale"`` needs no weights),
    ``grid_stride`` pixels per node (automatic), ``include_self`` self-loops (a lazy walk; off in
    the paper), ``fg_class``, and the tuning options ``tune`` (``"off"`` or ``"dice"``),
    ``tune_fraction``, ``tune_grid`` and ``tune_seed``.

    Parameters
    ----------
    extractor : FeatureExtractor or callable, optional
        Use this extractor object or ``fn(image) -> (C, *S')`` instead of a named one (a user's own
        network, e.g. :class:`~napari_conformal.core.rwcp.model_features.ModelLayerExtractor`);
        recorded in ``params`` by name only, so its calibrations cannot be rebuilt from JSON.
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
        Option(
            "input_scale", "float", None,
            "EfficientNet-Lite0: enlarge the image this many times first (unset: feature cells of at most 2 pixels)",
            label="input scale", minimum=1.0, maximum=8.0, optional=True,
        ),
        Option(
            "feature_model", "text", None,
            "features='model': the segmentation network, demo:<name> for a demo U-Net (your own: Python API)",
            label="feature model", optional=True,
        ),
        Option(
            "feature_layer", "text", None,
            "features='model': comma-separated layer names (unset: the input of its last layer)",
            label="feature layer", optional=True,
        ),
        Option("grid_stride", "int", None, "pixels per graph node along each axis (automatic when unset)", label="grid stride", minimum=1, optional=True),
        Option("include_self", "bool", False, "allow self-loops in the kNN graph (a lazy walk; off in the paper)", label="self-loops"),
        FG_CLASS,
        Option(
            "tune", "choice", "off",
            "dice: choose k, β and steps for Dice on part of the calibration images, λ̂ on the rest",
            label="tuning", choices=("off", "dice"),
        ),
        Option(
            "tune_fraction", "float", 0.25, "share of the calibration images used for tuning (the rest give λ̂)",
            label="tuning share", minimum=0.0, maximum=1.0, exclusive_minimum=True,
        ),
        Option(
            "tune_grid", "json", None,
            'candidate values, e.g. {"k": [10, 20], "rw_beta": [20, 50], "n_step": [0, 5, 10]} (unset: the default grid)',
            label="tuning grid", optional=True,
        ),
        Option("tune_seed", "int", 0, "seed of the choice of tuning images", label="tuning seed", minimum=0),
    )
    k: int
    rw_beta: float
    n_step: int
    features: str
    model_dir: str | None
    grid_stride: int | None
    include_self: bool
    input_scale: float | None
    feature_model: str | None
    feature_layer: str | None
    tune: str
    tune_fraction: float
    tune_grid: dict[str, Any] | None
    tune_seed: int

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
        self._options = {o.name: getattr(self, o.name) for o in self.options}
        if self.tune_fraction >= 1.0:
            raise ParameterError(f"rwcp option tune_fraction must be < 1 (some images must give λ̂), got {self.tune_fraction:g}")
        if self.tune == "dice":
            from napari_conformal.core.rwcp.tuning import check_grid

            check_grid(self.tune_grid)  # fail before any per-image work
        if self._user_extractor is not None:
            self.extractor = make_extractor(self._user_extractor)
            self.features = str(self.extractor.params().get("name", "callable"))
        else:
            self.extractor = make_extractor(self.features, **self._extractor_settings())
        resolve_device(self.device)  # fail early on a device this machine lacks

    def _extractor_settings(self) -> dict[str, Any]:
        """The options the named extractor takes (the others must be unset)."""
        by_extractor = {
            "efficientnet-lite0": {"grid_stride": self.grid_stride, "input_scale": self.input_scale},
            "multiscale": {"grid_stride": self.grid_stride},
            "dinov2": {"model_dir": self.model_dir},
            "dinov3": {"model_dir": self.model_dir},
            "model": {
                "grid_stride": self.grid_stride,
                "feature_model": self.feature_model,
                "layers": self.feature_layer,
            },
        }
        wanted = by_extractor.get(self.features, {"grid_stride": self.grid_stride, "model_dir": self.model_dir})
        given = {
            "model_dir": self.model_dir,
            "input_scale": self.input_scale,
            "feature_model": self.feature_model,
            "feature_layer": self.feature_layer,
        }
        used = set(wanted) | ({"feature_layer"} if "layers" in wanted else set())
        stray = sorted(k for k, v in given.items() if v is not None and k not in used)
        if stray:
            raise ParameterError(f"rwcp option {stray[0]} does not apply to features={self.features!r}")
        return wanted

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
        # no step: the model's own map, bit for bit (RW-CP with n_step = 0 is standard CRC on any grid)
        score = np.array(base) if self.n_step == 0 else np.asarray(diffusion.final, dtype=np.float64)
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

    # -- tuning ------------------------------------------------------------------------------

    def tuning_positions(self, n: int, alpha: float) -> list[int]:
        """With ``tune="dice"``: the seeded ``tune_fraction`` of the n calibration images (else none)."""
        if self.tune == "off":
            return []
        from napari_conformal.core.rwcp.tuning import tuning_split

        return tuning_split(n, self.tune_fraction, alpha, self.tune_seed)[0]

    def iter_tune(
        self,
        images: Iterable[TuningImage],
        *,
        n_tune: int,
        n_lambda: int,
        alpha: float,
        nu: float | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Generator[Step, None, tuple[ConformalMethod[Any, Any, Any], dict[str, Any]]]:
        """Choose k, β and n_step for Dice on the tuning images (:func:`~napari_conformal.core.rwcp.tuning.iter_tune`).

        Returns
        -------
        (RWCPMethod, dict)
            This method with the chosen k, β, n_step (everything else as it is), and the record:
            criterion, α, the target α*, the grid, the chosen setting and every candidate's λ and Dice.
        """
        from napari_conformal.core.rwcp.tuning import Candidate, check_grid, iter_tune

        fg = self.fg_class

        def inputs() -> Iterable[tuple[FeatureMap, np.ndarray, np.ndarray]]:
            for item in images:
                base = foreground_probability(item.samples, fg, stored_dtype=item.stored_dtype, validated=True)
                if item.features is not None:
                    fmap = check_features(item.features, base.shape)
                elif item.image is None:
                    raise ConformalError("RW-CP needs the image (or precomputed features) to tune its graph")
                else:
                    fmap = self.compute_features(item.image, should_stop=should_stop)
                lab = check_label(item.label, n_labels=int(np.shape(item.samples)[1]), shape=base.shape)
                yield fmap, base, lab == fg

        grid = check_grid(self.tune_grid)
        result = yield from iter_tune(
            inputs(),
            n_tune,
            alpha=alpha,
            n_lambda=n_lambda,
            grid=grid,
            default=Candidate(self.n_step, self.k, self.rw_beta),
            include_self=self.include_self,
            device=resolve_device(self.device),
            should_stop=should_stop,
        )
        chosen = result.chosen.as_dict()
        tuned = type(self)(extractor=self._user_extractor, device=self.device, **{**self._options, **chosen})
        record = {
            "criterion": "mean Dice of the sets at the plug-in threshold on the tuning images",
            "alpha": float(alpha),
            "target_fnr": result.level,
            "n_tune": int(result.n_tune),
            "n_lambda": int(n_lambda),
            "fraction": float(self.tune_fraction),
            "seed": int(self.tune_seed),
            "grid": {k: list(v) for k, v in grid.items()},
            "chosen": chosen,
            "candidates": result.table(),
        }
        return tuned, record
