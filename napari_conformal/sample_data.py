"""napari sample-data contributions (File ▸ Open Sample ▸ Conformal segmentation).

Each function builds (first time only) a demo dataset store with
:func:`napari_conformal.demo_data.build_demo_store`, which caches it in the user cache folder, and
returns the layers of that store as the store reader makes them
(:func:`napari_conformal.io.readers.read_store`): images, ground truth, mean prediction and
per-sample predictions, all lazy. Once the store is cached, loading takes about as long as
opening the store.
"""

from __future__ import annotations

import os
from typing import Any

from napari_conformal.io.readers import LayerData, read_store

__all__ = ["brain_mri", "demo_layers", "hippocampus", "nuclei"]


def demo_layers(name: str, **kwargs: Any) -> list[LayerData]:
    """Layer data of the demo store ``name`` (built and cached on first use).

    Parameters
    ----------
    name : str
        A demo name known to :func:`napari_conformal.demo_data.build_demo_store`
        (``"hippocampus-3d"``, ``"hippocampus-2d"``, ``"brain-mri"``, ``"nuclei"``).
    **kwargs
        Passed on to ``build_demo_store``.

    Returns
    -------
    list of (data, kwargs, layer_type)
    """
    from napari_conformal.demo_data import build_demo_store

    built = build_demo_store(name, **kwargs)
    path = built.path if hasattr(built, "path") else built
    return read_store(os.fspath(path))


def hippocampus() -> list[LayerData]:
    """Real 3D hippocampus MRI volumes (MSD) with MC-dropout softmax samples."""
    return demo_layers("hippocampus-3d")


def brain_mri() -> list[LayerData]:
    """Axial slices of the MNI152 T1 template with grey/white-matter samples."""
    return demo_layers("brain-mri")


def nuclei() -> list[LayerData]:
    """The stardist nuclei image with foreground samples."""
    return demo_layers("nuclei")
