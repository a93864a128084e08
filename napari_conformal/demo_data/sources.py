"""Read and preprocess the raw demo sources (used by ``scripts/pack_demo_data.py`` and
``scripts/train_demo_models.py``; an installed plugin never needs them).

* Hippocampus MRI (Medical Segmentation Decathlon Task04, CC BY-SA 4.0): the NIfTI pairs of a
  ``msd_hippocampus`` folder, centre-cropped/zero-padded to :data:`HIPPOCAMPUS_SHAPE` (no label
  voxel is lost at that size) and scaled to uint8 per volume between the 0.5th and 99.5th
  intensity percentiles.
* Brain MRI: the MNI ICBM152 2009a T1 template shipped with nilearn and its white-matter
  probability map, 1 mm; axial slices cropped to the brain, 2×2-averaged to 2 mm pixels; ground
  truth = white-matter probability (averaged over the 2×2 block) ≥ 0.5. This ground truth is a
  thresholded population *probability* map, not a manual segmentation.
* Nuclei: the 512² fluorescence image ``img2d.tif`` and its 125 instance masks ``mask2d.tif`` from
  the ``stardist`` wheel (BSD-3-Clause; image from the 2018 Data Science Bowl), read straight from
  the wheel zip; the mask is made binary (nucleus vs background).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BRAIN_CROP",
    "HIPPOCAMPUS_SHAPE",
    "center_crop_or_pad",
    "read_hippocampus",
    "read_mni152_axial",
    "read_stardist_nuclei",
    "scale_to_uint8",
]

#: Common (X, Y, Z) shape of the hippocampus volumes (1 mm voxels).
HIPPOCAMPUS_SHAPE = (36, 52, 36)
#: Crop of the 1 mm MNI152 grid (x range, y range) holding the whole brain, before 2× down-sampling.
BRAIN_CROP = ((24, 176), (24, 208))
#: Axial slices kept: at least this many white-matter voxels (1 mm grid, probability ≥ 0.5).
BRAIN_MIN_WM_VOXELS = 200

_CASE = re.compile(r"hippocampus_(\d+)\.nii(\.gz)?$")


def center_crop_or_pad(volume: np.ndarray, shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) every axis of ``volume`` to ``shape``.

    On an axis of size s cropped to t < s the kept range starts at ``(s - t) // 2``; padded to
    t > s the volume starts at ``(t - s) // 2``.
    """
    volume = np.asarray(volume)
    if volume.ndim != len(shape):
        raise ValueError(f"volume has {volume.ndim} axes, shape has {len(shape)}")
    out = np.full(tuple(shape), fill, dtype=volume.dtype)
    src, dst = [], []
    for s, t in zip(volume.shape, shape, strict=True):
        n = min(s, t)
        a = (s - t) // 2 if s > t else 0
        b = (t - s) // 2 if t > s else 0
        src.append(slice(a, a + n))
        dst.append(slice(b, b + n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def scale_to_uint8(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the ``low``–``high`` percentile range of ``image`` linearly onto 0–255 (clipped), as uint8."""
    values = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def read_hippocampus(root: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All labelled volumes of an MSD hippocampus folder, preprocessed.

    Parameters
    ----------
    root : path-like
        Folder with ``imagesTr/hippocampus_XXX.nii.gz`` and ``labelsTr/`` of the same names.

    Returns
    -------
    case_ids : int array ``(N,)``, sorted
    images : uint8 array ``(N, 36, 52, 36)``
    labels : uint8 array ``(N, 36, 52, 36)`` in {0, 1, 2}
    """
    import nibabel as nib

    root = Path(root)
    found = []
    for path in sorted((root / "imagesTr").glob("hippocampus_*.nii*")):
        m = _CASE.search(path.name)
        if m and not path.name.startswith("."):
            found.append((int(m.group(1)), path))
    if not found:
        raise FileNotFoundError(f"no hippocampus_XXX.nii.gz volumes under {root / 'imagesTr'}")
    ids, images, labels = [], [], []
    for case, path in sorted(found):
        label_path = root / "labelsTr" / path.name
        image = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        label = np.rint(np.asarray(nib.load(label_path).dataobj, dtype=np.float64)).astype(np.uint8)
        if image.shape != label.shape:
            raise ValueError(f"case {case}: image shape {image.shape} != label shape {label.shape}")
        ids.append(case)
        images.append(center_crop_or_pad(scale_to_uint8(image), HIPPOCAMPUS_SHAPE))
        labels.append(center_crop_or_pad(label, HIPPOCAMPUS_SHAPE))
    return np.asarray(ids, dtype=np.int64), np.stack(images), np.stack(labels)


def _downsample2(plane: np.ndarray) -> np.ndarray:
    """Mean over 2×2 blocks (both sizes even)."""
    y, x = plane.shape
    return plane.reshape(y // 2, 2, x // 2, 2).mean(axis=(1, 3))


def read_mni152_axial() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial slices of the MNI ICBM152 T1 template with binary white-matter ground truth (nilearn).

    Returns
    -------
    z : int array ``(N,)``
        Index of each slice on the 1 mm template grid (inferior → superior).
    images : uint8 array ``(N, 92, 76)``
        T1 intensity (template range [0, 1] × 255), anterior up, 2 mm pixels.
    labels : uint8 array ``(N, 92, 76)``
        1 where the 2×2-block mean white-matter probability is ≥ 0.5.
    """
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), dtype=np.float64)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float64)
    (x0, x1), (y0, y1) = BRAIN_CROP
    zs, images, labels = [], [], []
    for z in range(t1.shape[2]):
        if int((wm[:, :, z] >= 0.5).sum()) < BRAIN_MIN_WM_VOXELS:
            continue
        # (x, y) plane → (y, x) with anterior (large y) up
        t_plane = t1[x0:x1, y0:y1, z].T[::-1]
        w_plane = wm[x0:x1, y0:y1, z].T[::-1]
        zs.append(z)
        images.append(np.rint(np.clip(_downsample2(t_plane), 0.0, 1.0) * 255.0).astype(np.uint8))
        labels.append((_downsample2(w_plane) >= 0.5).astype(np.uint8))
    return np.asarray(zs, dtype=np.int64), np.stack(images), np.stack(labels)


def read_stardist_nuclei(wheel: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 2D nuclei image and its binary mask, read from a ``stardist`` wheel (not installed).

    Parameters
    ----------
    wheel : path-like
        A ``stardist-*.whl`` (``pip download stardist --no-deps``).

    Returns
    -------
    image : uint8 array ``(512, 512)`` (the original values, 0–235)
    mask : uint8 array ``(512, 512)`` in {0, 1}
    """
    import tifffile

    with zipfile.ZipFile(wheel) as z:
        image = tifffile.imread(io.BytesIO(z.read("stardist/data/images/img2d.tif")))
        instances = tifffile.imread(io.BytesIO(z.read("stardist/data/images/mask2d.tif")))
    if image.shape != instances.shape or image.ndim != 2:
        raise ValueError(f"unexpected shapes {image.shape}, {instances.shape} in {wheel}")
    if image.min() < 0 or image.max() > 255:
        raise ValueError(f"nuclei image values {image.min()}..{image.max()} do not fit uint8")
    return image.astype(np.uint8), (instances > 0).astype(np.uint8)
