"""Features from inside a segmentation network: the activations of named layers, caught by forward hooks.

RW-CP's graph needs feature vectors that tell the structure from its surroundings
(docs/algorithms.md#features). The segmentation model that produced the probabilities has learnt
exactly that, at the image's own resolution, so its intermediate activations are a natural
feature map. :class:`ModelLayerExtractor` runs any ``torch.nn.Module`` on the image once, in
evaluation mode, and keeps the outputs of the layers it is told (by their names in
``model.named_modules()``); by default it keeps the *input* of the network's last leaf layer, which
for a U-Net is the full-resolution decoder output its classifier reads.

Each kept activation ``(1, C_l, *h)`` is aligned with the image and resampled to the node grid:

* **Alignment.** The map is taken to start at the image's first pixel with ``f = ⌈S/h⌉`` image
  pixels per cell along each axis, and cells beyond ``⌈S/f⌉`` are dropped: they describe padding
  (a U-Net pads its input to a multiple of ``2^depth`` at the far end and its layers see the padded
  image). A map as large as the image is cropped to it.
* **Resampling.** Area average onto a coarser node grid, (bi/tri)linear interpolation onto a finer
  one (``align_corners=False``).
* **Weighting.** Every layer is L2-normalised over its channels at each node before the layers are
  concatenated, so each layer weighs the same in the cosine similarity of the graph.

The network sees the image exactly as stored (``(1, 1, *S)`` float32; no ImageNet or percentile
normalisation): the same input the sampler gave it. A 2D network serves a volume slice by slice
(``spatial_dims=2``). The model's train/eval flags are restored afterwards; its parameters are not
moved: it runs on the device it lives on.

TorchScript modules cannot be hooked (torch refuses hooks on them); pass the Python module.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_conformal.core.progress import check_stop
from napari_conformal.core.rwcp.features import (
    FeatureExtractor,
    Progress,
    ShouldStop,
    _check_stride,
    auto_grid_stride,
    grid_shape_for,
)
from napari_conformal.errors import ConformalError

__all__ = [
    "LAST_LAYER_INPUT",
    "ModelLayerExtractor",
    "align_to_image",
    "default_layer",
    "load_named_model",
    "make_model_extractor",
    "resample_to_grid",
    "state_digest",
]

#: the layer spec that means "the input of the network's last leaf layer" (its classifier's input)
LAST_LAYER_INPUT = "<classifier input>"


def default_layer(model: torch.nn.Module) -> str:
    """Name of the network's last leaf module (in registration order), whose *input* is kept by default.

    Raises
    ------
    ConformalError
        The network has no named submodule.
    """
    leaves = [name for name, mod in model.named_modules() if name and not any(True for _ in mod.children())]
    if not leaves:
        raise ConformalError("the feature model has no layers to hook; name a layer with feature_layer")
    return leaves[-1]


def align_to_image(feature: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Crop a layer's map ``(C, *h)`` to the cells that lie on the image (see the module docstring).

    Parameters
    ----------
    feature : torch.Tensor, shape (C, *h)
        One layer's activation for one image, ``len(h) == len(image_shape)``.
    image_shape : sequence of int
        S, the image shape.

    Returns
    -------
    torch.Tensor, shape (C, *h')
        ``h'_a = ⌈S_a / f_a⌉`` with ``f_a = ⌈S_a / h_a⌉`` pixels per cell.
    """
    shape = tuple(int(s) for s in image_shape)
    if feature.ndim != len(shape) + 1:
        raise ConformalError(
            f"a hooked layer returned shape {tuple(feature.shape)}; expected (C, *h) with {len(shape)} "
            "spatial axes like the image"
        )
    keep = []
    for s, h in zip(shape, feature.shape[1:], strict=True):
        f = max(1, math.ceil(s / int(h)))
        keep.append(slice(0, min(int(h), math.ceil(s / f))))
    return feature[(slice(None), *keep)]


def resample_to_grid(feature: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``(C, *h)`` → ``(C, *grid)``: area average where coarser, linear interpolation where finer.

    Axes are handled together: when every axis shrinks (or stays) the map is area-averaged
    (adaptive average pooling); otherwise it is interpolated to the grid.
    """
    grid = tuple(int(g) for g in grid)
    if tuple(feature.shape[1:]) == grid:
        return feature
    x = feature.unsqueeze(0)
    nd = len(grid)
    if all(h >= g for h, g in zip(feature.shape[1:], grid, strict=True)):
        pool = F.adaptive_avg_pool2d if nd == 2 else F.adaptive_avg_pool3d
        return pool(x, grid)[0]
    mode = "bilinear" if nd == 2 else "trilinear"
    return F.interpolate(x, size=grid, mode=mode, align_corners=False)[0]


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    raise ConformalError(f"a hooked layer produced {type(value).__name__}, not a tensor")


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def state_digest(model: torch.nn.Module) -> str:
    """BLAKE2b-128 of a module's state dict (names, dtypes, shapes and values), to identify its weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        t = t.reshape(-1).contiguous()  # 0-d tensors (batch-norm counters) as one element
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ModelLayerExtractor(FeatureExtractor):
    """The activations of named layers of a torch module as RW-CP features.

    Parameters
    ----------
    model : torch.nn.Module
        Any network that takes ``(B, 1, *S)`` (or ``(B, 1, Y, X)`` slices with ``spatial_dims=2``);
        a plain ``nn.Module``, not TorchScript.
    layers : str or sequence of str, optional
        Module names (``dict(model.named_modules())`` keys) whose **outputs** are kept, concatenated
        in the order given; a comma-separated string is split. None (or
        :data:`LAST_LAYER_INPUT`) keeps the **input** of the last leaf module instead
        (:func:`default_layer`), e.g. a U-Net's last decoder features.
    grid_stride : int, optional
        Image pixels per node along each axis; None picks :func:`auto_grid_stride` with
        ``max_nodes``.
    max_nodes : int, optional
        Node budget of the automatic stride (default 4096 in 2D, 32768 in 3D).
    spatial_dims : {2, 3}, optional
        Axes the network convolves over; None: those of the image. 2 with a volume runs the network
        one axial slice at a time.
    label : str, optional
        How the model is named in :meth:`params` (default: its class); a digest of its state dict
        is always recorded, so cached features of other weights are never reused.
    """

    name = "model"

    def __init__(
        self,
        model: torch.nn.Module,
        layers: str | Sequence[str] | None = None,
        *,
        grid_stride: int | None = None,
        max_nodes: int | None = None,
        spatial_dims: int | None = None,
        label: str | None = None,
    ) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise ConformalError(
                "a TorchScript model cannot be hooked (torch refuses forward hooks on ScriptModules); "
                "pass the Python nn.Module"
            )
        if not isinstance(model, torch.nn.Module):
            raise ConformalError(f"the feature model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if isinstance(layers, str):
            layers = [part.strip() for part in layers.split(",") if part.strip()]
        names = list(layers or [])
        if not names or names == [LAST_LAYER_INPUT]:
            names = [LAST_LAYER_INPUT]
        modules = dict(model.named_modules())
        for n in names:
            if n != LAST_LAYER_INPUT and n not in modules:
                some = ", ".join(k for k in list(modules)[1:12] if k)
                raise ConformalError(f"the feature model has no layer {n!r} (its layers include: {some}, …)")
        if len(set(names)) != len(names):
            raise ConformalError(f"feature layers must be distinct, got {names}")
        self.layers = tuple(names)
        self.grid_stride = _check_stride(grid_stride)
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        if spatial_dims not in (None, 2, 3):
            raise ConformalError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.label = label or f"{type(model).__module__}.{type(model).__qualname__}"
        self._digest: str | None = None

    def stride_for(self, image_shape: Sequence[int]) -> int:
        """The grid stride used for an image of this shape."""
        if self.grid_stride is not None:
            return self.grid_stride
        return auto_grid_stride(image_shape, self.max_nodes)

    def hooked_modules(self) -> list[tuple[str, torch.nn.Module, bool]]:
        """``(name, module, keep_input)`` for every kept layer, in order."""
        modules = dict(self.model.named_modules())
        out = []
        for n in self.layers:
            if n == LAST_LAYER_INPUT:
                last = default_layer(self.model)
                out.append((last, modules[last], True))
            else:
                out.append((n, modules[n], False))
        return out

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the model on ``x`` (B, 1, *S) and return the kept activations, each (B, C_l, *h_l).

        Every hook is removed and the model's train/eval flags are restored, also on error.
        """
        caught: dict[int, torch.Tensor] = {}
        handles = []
        for j, (_name, module, keep_input) in enumerate(self.hooked_modules()):
            if keep_input:
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, inp, j=j: caught.__setitem__(j, _first_tensor(inp))
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda m, inp, out, j=j: caught.__setitem__(j, _first_tensor(out))
                    )
                )
        modes = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()
            with torch.inference_mode():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
            for m, was in modes.items():
                m.training = was
        missing = [self.layers[j] for j in range(len(self.layers)) if j not in caught]
        if missing:
            raise ConformalError(f"the feature model never ran layer(s) {missing} on this input")
        return [caught[j] for j in range(len(self.layers))]

    def _layer_features(
        self, image: np.ndarray, device: torch.device, grid: tuple[int, ...]
    ) -> list[torch.Tensor]:
        """One (C_l, *grid) map per kept layer of one image (or slice), each L2-normalised per node."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
        parts = []
        for act in self.activations(x):
            a = align_to_image(act[0].to("cpu", torch.float32), image.shape)
            parts.append(F.normalize(resample_to_grid(a, grid), dim=0))
        return parts

    def _extract(
        self,
        image: np.ndarray,
        device: torch.device,
        progress: Progress | None,
        should_stop: ShouldStop | None,
    ) -> np.ndarray:
        dims = self.spatial_dims or image.ndim
        if dims > image.ndim:
            raise ConformalError(f"a {dims}D feature model cannot run on a {image.ndim}D image")
        run_on = _model_device(self.model)
        grid = grid_shape_for(image.shape, self.stride_for(image.shape))
        check_stop(should_stop)
        if dims == image.ndim:
            parts = self._layer_features(image, run_on, grid)
            if progress is not None:
                progress(1, 1)
            return torch.cat(parts, dim=0).contiguous().numpy()
        # a 2D network on a volume: slice by slice on the in-plane grid, then area-averaged along Z
        per_slice: list[list[torch.Tensor]] = []
        for z in range(image.shape[0]):
            check_stop(should_stop)
            per_slice.append(self._layer_features(image[z], run_on, grid[1:]))
            if progress is not None:
                progress(z + 1, image.shape[0])
        layers = []
        for j in range(len(self.layers)):
            vol = torch.stack([parts[j] for parts in per_slice], dim=1)  # (C_l, Z, y', x')
            layers.append(F.normalize(resample_to_grid(vol, grid), dim=0))
        return torch.cat(layers, dim=0).contiguous().numpy()

    def params(self) -> dict[str, Any]:
        """Name, model label and weights digest, layers and grid settings (for ``CALIB.json`` and the feature cache)."""
        if self._digest is None:
            self._digest = state_digest(self.model)
        return {
            "name": self.name,
            "model": self.label,
            "weights_blake2b": self._digest,
            "layers": list(self.layers),
            "grid_stride": self.grid_stride,
            "max_nodes": self.max_nodes,
            "spatial_dims": self.spatial_dims,
        }


def load_named_model(spec: str) -> tuple[torch.nn.Module, str]:
    """The network a ``feature_model`` option names, and its label.

    Only names that need no code from the options themselves are accepted, so that reading a
    calibration file never imports or unpickles anything: ``"demo:<name>"`` is the packaged demo
    U-Net of that demo dataset (:mod:`napari_conformal.models.demo`). Any other network is passed as
    a module (:class:`ModelLayerExtractor`) through the Python API.

    Raises
    ------
    ConformalError
        An unknown name.
    """
    text = str(spec).strip()
    if text.startswith("demo:"):
        from napari_conformal.models.demo import demo_model_names, load_demo_model

        name = text[len("demo:") :]
        if name not in demo_model_names():
            raise ConformalError(
                f"unknown demo model {name!r} in feature_model; choose demo:{', demo:'.join(demo_model_names())}"
            )
        return load_demo_model(name, device="cpu"), text
    raise ConformalError(
        f"feature_model {spec!r} is not a model napari-conformal can load by name (demo:<name>); for your own "
        "network pass RWCPMethod(extractor=ModelLayerExtractor(net, layers=...)) in Python"
    )


def make_model_extractor(
    feature_model: str | torch.nn.Module | None = None,
    layers: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> ModelLayerExtractor:
    """:class:`ModelLayerExtractor` of a named (:func:`load_named_model`) or given network."""
    if feature_model is None:
        raise ConformalError(
            "features='model' needs feature_model (demo:<name>), or pass ModelLayerExtractor(net, layers) in Python"
        )
    if isinstance(feature_model, torch.nn.Module):
        return ModelLayerExtractor(feature_model, layers, **kwargs)
    model, label = load_named_model(feature_model)
    return ModelLayerExtractor(model, layers, label=label, **kwargs)
