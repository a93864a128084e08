"""What each demo dataset is: data file, model, classes, spacing, licence and attribution."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEMOS", "DemoSpec", "demo_names", "get_demo"]

_HIPPOCAMPUS_ATTRIBUTION = (
    "Hippocampus MRI from the Medical Segmentation Decathlon, Task04_Hippocampus (Antonelli et al., "
    "'The Medical Segmentation Decathlon', Nature Communications 13, 4128, 2022; Simpson et al., "
    "arXiv:1902.09063), data from Vanderbilt University Medical Center, licensed CC BY-SA 4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/). Modified by napari-conformal: volumes "
    "centre-cropped/padded to 36x52x36, intensities rescaled to 8 bits; samples from a model trained "
    "on other volumes of the same set. This derived data is licensed CC BY-SA 4.0."
)
_MNI_ATTRIBUTION = (
    "MNI ICBM152 2009a nonlinear symmetric T1 template and white-matter probability map as shipped "
    "by nilearn. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University (see LICENSE-mni152.txt). Ground truth = white-matter "
    "probability >= 0.5, a thresholded population probability map, not a manual segmentation."
)
_NUCLEI_ATTRIBUTION = (
    "Fluorescence nuclei image and annotations from the stardist package "
    "(stardist/data/images/img2d.tif, mask2d.tif; BSD-3-Clause, Copyright (c) 2018-2025 Uwe Schmidt, "
    "Martin Weigert), originally from the 2018 Data Science Bowl (Caicedo et al., Nature Methods 16, "
    "1247-1253, 2019). Instance masks merged into a binary nucleus mask."
)


@dataclass(frozen=True)
class DemoSpec:
    """One demo dataset.

    Attributes
    ----------
    name : str
        Identifier (also the name of its demo model).
    title : str
        One line for menus.
    data_file : str
        Packaged ``.npz`` under ``napari_conformal/data/demo/``.
    ndim : int
        Spatial dimensions of the store's images.
    label_names : tuple of str
        Class names, background first.
    spacing : tuple of float
        Pixel/voxel size in mm per spatial axis (1.0 = unknown size, pixel units).
    licence : str
        Short licence identifier of the derived data.
    licence_file : str
        Licence/attribution note under ``napari_conformal/data/demo/``.
    attribution : str
        Attribution text carried into the store's attributes.
    """

    name: str
    title: str
    data_file: str
    ndim: int
    label_names: tuple[str, ...]
    spacing: tuple[float, ...]
    licence: str
    licence_file: str
    attribution: str


DEMOS: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        DemoSpec(
            "hippocampus-3d",
            "Hippocampus MRI volumes (3D, 3 classes)",
            "hippocampus.npz",
            3,
            ("background", "anterior", "posterior"),
            (1.0, 1.0, 1.0),
            "CC-BY-SA-4.0",
            "LICENSE-hippocampus.txt",
            _HIPPOCAMPUS_ATTRIBUTION,
        ),
        DemoSpec(
            "hippocampus-2d",
            "Hippocampus MRI slices (2D, 3 classes)",
            "hippocampus.npz",
            2,
            ("background", "anterior", "posterior"),
            (1.0, 1.0),
            "CC-BY-SA-4.0",
            "LICENSE-hippocampus.txt",
            _HIPPOCAMPUS_ATTRIBUTION,
        ),
        DemoSpec(
            "hippocampus-2d-fewshot",
            "Hippocampus MRI slices, a weak few-shot model (2D, 3 classes)",
            "hippocampus.npz",
            2,
            ("background", "anterior", "posterior"),
            (1.0, 1.0),
            "CC-BY-SA-4.0",
            "LICENSE-hippocampus.txt",
            _HIPPOCAMPUS_ATTRIBUTION,
        ),
        DemoSpec(
            "brain-mri",
            "Brain MRI template slices, white matter (2D, binary)",
            "brain_mri.npz",
            2,
            ("background", "white matter"),
            (2.0, 2.0),
            "MNI-ICBM152 (permissive, notice required)",
            "LICENSE-mni152.txt",
            _MNI_ATTRIBUTION,
        ),
        DemoSpec(
            "nuclei",
            "Fluorescence nuclei tiles (2D, binary)",
            "nuclei.npz",
            2,
            ("background", "nucleus"),
            (1.0, 1.0),
            "BSD-3-Clause",
            "LICENSE-nuclei.txt",
            _NUCLEI_ATTRIBUTION,
        ),
    )
}


def demo_names() -> list[str]:
    """Names accepted by :func:`napari_conformal.demo_data.build_demo_store`."""
    return list(DEMOS)


def get_demo(name: str) -> DemoSpec:
    """The :class:`DemoSpec` called ``name``.

    Raises
    ------
    ConformalError
        Unknown name (the message lists the valid ones).
    """
    from napari_conformal.errors import ConformalError

    try:
        return DEMOS[name]
    except KeyError:
        raise ConformalError(f"unknown demo dataset {name!r}; choose one of {', '.join(DEMOS)}") from None
