"""The demo models: small U-Nets with dropout whose weights ship inside the package.

One model per demo dataset (:data:`DEMO_MODELS`). The weights are float16 state dicts under
``napari_conformal/data/demo/models/<name>.pt``, produced by ``scripts/train_demo_models.py`` and
read with ``torch.load(..., weights_only=True)``; nothing is trained at demo time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from napari_conformal.errors import ConformalError
from napari_conformal.models.loading import load_model
from napari_conformal.models.unet import UNet

__all__ = [
    "DEMO_MODELS",
    "DemoModelSpec",
    "build_demo_model",
    "demo_model_names",
    "demo_weights_path",
    "demo_weights_sha256",
    "load_demo_model",
]


@dataclass(frozen=True)
class DemoModelSpec:
    """Architecture of one demo model (arguments of :class:`~napari_conformal.models.unet.UNet`)."""

    name: str
    ndim: int
    n_classes: int
    unet: dict[str, Any] = field(default_factory=dict)

    def build(self) -> UNet:
        """An untrained network of this architecture."""
        return UNet(self.ndim, 1, self.n_classes, **self.unet)


DEMO_MODELS: dict[str, DemoModelSpec] = {
    spec.name: spec
    for spec in (
        DemoModelSpec("hippocampus-3d", 3, 3, {"base_channels": 8, "depth": 2, "dropout": 0.2}),
        DemoModelSpec("hippocampus-2d", 2, 3, {"base_channels": 16, "depth": 3, "dropout": 0.2}),
        # deliberately weak: 3 training volumes, 300 iterations (scripts/train_demo_models.py)
        DemoModelSpec("hippocampus-2d-fewshot", 2, 3, {"base_channels": 8, "depth": 3, "dropout": 0.2}),
        DemoModelSpec("brain-mri", 2, 2, {"base_channels": 16, "depth": 3, "dropout": 0.2}),
        DemoModelSpec("nuclei", 2, 2, {"base_channels": 16, "depth": 3, "dropout": 0.2}),
    )
}


def demo_model_names() -> list[str]:
    """Names of the demo models (the same as the demo datasets)."""
    return list(DEMO_MODELS)


def _spec(name: str) -> DemoModelSpec:
    try:
        return DEMO_MODELS[name]
    except KeyError:
        raise ConformalError(f"unknown demo model {name!r}; choose one of {', '.join(DEMO_MODELS)}") from None


def build_demo_model(name: str) -> UNet:
    """The untrained architecture of demo model ``name``."""
    return _spec(name).build()


def demo_weights_path(name: str) -> Path:
    """Path of the packaged weights of demo model ``name`` (it may be missing in a source tree)."""
    _spec(name)
    return Path(str(resources.files("napari_conformal") / "data" / "demo" / "models" / f"{name}.pt"))


def demo_weights_sha256(name: str) -> str:
    """SHA-256 of the packaged weights file (identifies the model in store provenance)."""
    path = demo_weights_path(name)
    if not path.is_file():
        raise ConformalError(
            f"the weights of demo model {name!r} are missing ({path}); run scripts/train_demo_models.py"
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_demo_model(name: str, device: str | torch.device = "cpu") -> UNet:
    """Demo model ``name`` with its packaged weights, in evaluation mode on ``device``.

    Raises
    ------
    ConformalError
        Unknown name, or the weights file is missing.
    """
    spec = _spec(name)
    path = demo_weights_path(name)
    if not path.is_file():
        raise ConformalError(
            f"the weights of demo model {name!r} are missing ({path}); run scripts/train_demo_models.py"
        )
    return load_model(path, spec.build, device=device)  # type: ignore[return-value]
