"""Single volumes as napari layers: TIFF, NIfTI, NumPy (``.npy`` / ``.npz``) and zarr arrays.

One layer each (an ``.npz`` one per member):

* ``.tif`` / ``.tiff`` (tifffile). A file written by :mod:`napari_conformal.io.writers` carries a
  JSON layer header in its ImageDescription; the layer type, name, scale, translate and provenance
  come back from it. For other ImageJ files the Z spacing and X/Y resolution give the scale.
* ``.nii`` / ``.nii.gz`` (nibabel, optional dependency). NIfTI stores voxels as ``(i, j, k)``
  (x fastest); the three spatial axes are reversed to napari's ``(Z, Y, X) = (k, j, i)`` order
  (further axes, e.g. time, go first) and the voxel sizes (``pixdim``, converted to mm) reversed
  the same way. Voxels are not resampled or reoriented; the original affine is kept in the
  metadata (``nifti_affine``, in the file's ``(i, j, k)`` order).
* ``.npy`` (memory-mapped, never unpickled) and ``.npz`` (one layer per member; a file written by
  our writer is recognised by its header member, :data:`~napari_conformal.io.provenance.HEADER_MEMBER`).
* zarr arrays (v2 or v3; opened lazily).

Integer or boolean volumes whose file or folder name contains ``label``, ``mask``, ``seg`` or
``truth`` open as labels layers, everything else as images.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.io.layers import LayerData
from napari_conformal.io.paths import VOLUME_SUFFIXES, stem_of, suffix_of, zarr_node
from napari_conformal.io.provenance import (
    HEADER_FORMAT,
    HEADER_MEMBER,
    PROVENANCE_KEY,
    header_to_layer_kwargs,
    loads_header,
)
from napari_conformal.io.safe_load import load_npy, load_npz, open_zarr_array, refuse_objects

__all__ = ["read_volume"]

_LABEL_HINT = re.compile(r"label|mask|seg|truth", re.IGNORECASE)


def _looks_like_labels(path: Path, dtype: np.dtype) -> bool:
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        return False
    return bool(_LABEL_HINT.search(stem_of(path)) or _LABEL_HINT.search(path.parent.name))


def _volume_layer(path: Path, data: Any, kwargs: dict[str, Any], fmt: str) -> LayerData:
    layer_type = "labels" if _looks_like_labels(path, np.dtype(data.dtype)) else "image"
    if layer_type == "labels" and np.dtype(data.dtype) == np.bool_:
        data = np.asarray(data, dtype=np.uint8)
    kwargs = {"name": stem_of(path), **kwargs}
    kwargs.setdefault("metadata", {})
    kwargs["metadata"].setdefault(
        PROVENANCE_KEY, {"source": "volume", "path": str(path.resolve()), "format": fmt}
    )
    return data, kwargs, layer_type


def _from_header(path: Path, header: dict[str, Any], data: np.ndarray) -> LayerData:
    shape = tuple(header["shape"])
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ConformalError(
            f"{path}: the data has {data.size} values but the napari-conformal header says shape {shape}"
        )
    data = data.reshape(shape)
    try:
        dtype = np.dtype(header.get("dtype") or data.dtype)
    except TypeError:
        raise ConformalError(
            f"{path}: bad dtype in the napari-conformal header: {header.get('dtype')!r}"
        ) from None
    if dtype != data.dtype:
        raise ConformalError(f"{path}: the data has dtype {data.dtype} but the header says {dtype}")
    kwargs = header_to_layer_kwargs(header)
    kwargs.setdefault("name", stem_of(path))
    return data, kwargs, header["layer_type"]


def _read_npy_volume(path: Path) -> list[LayerData]:
    data = load_npy(path)
    return [_volume_layer(path, data, {}, "npy")]


def _read_npz_volume(path: Path) -> list[LayerData]:
    members = load_npz(path)
    if not members:
        raise ConformalError(f"{path}: the .npz archive holds no arrays")
    if HEADER_MEMBER in members:
        raw = members[HEADER_MEMBER]
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise ConformalError(f"{path}: member {HEADER_MEMBER!r} must be a JSON string")
        header = loads_header(str(raw[()]), source=str(path))
        if "data" not in members:
            raise ConformalError(f"{path}: napari-conformal layer file without a 'data' member")
        return [_from_header(path, header, members["data"])]
    layers = []
    for key, value in members.items():
        if value.dtype.kind in "USV" or value.ndim < 2:
            continue  # strings, records and scalars/1-D vectors are not images
        data, kwargs, layer_type = _volume_layer(path, value, {}, "npz")
        kwargs["name"] = f"{stem_of(path)} {key}" if len(members) > 1 else stem_of(path)
        kwargs["metadata"][PROVENANCE_KEY]["member"] = key
        layers.append((data, kwargs, layer_type))
    if not layers:
        raise ConformalError(f"{path}: the .npz archive holds no array with 2 or more axes")
    return layers


def _imagej_scale(tif: Any, ndim: int) -> list[float] | None:
    """Physical pixel size from ImageJ metadata for ``(Y, X)`` / ``(Z, Y, X)`` files, else None."""
    if not tif.is_imagej or ndim not in (2, 3) or tif.series[0].axes not in ("YX", "ZYX"):
        return None
    page = tif.pages[0]
    try:
        yres = page.tags["YResolution"].value
        xres = page.tags["XResolution"].value
        sy, sx = yres[1] / yres[0], xres[1] / xres[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    scale = [float(sy), float(sx)]
    if ndim == 3:
        scale.insert(0, float((tif.imagej_metadata or {}).get("spacing", 1.0)))
    if not all(math.isfinite(s) and s > 0 for s in scale):
        return None
    return scale


def _read_tiff(path: Path) -> list[LayerData]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0 or not tif.series:
                raise ConformalError(f"{path}: cannot read the TIFF file: it holds no image")
            description = tif.pages[0].description
            data = tif.asarray()
            scale = _imagej_scale(tif, data.ndim)
    except ConformalError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, …
        raise ConformalError(f"{path}: cannot read the TIFF file: {exc}") from None
    if description.lstrip().startswith("{") and HEADER_FORMAT in description:
        return [_from_header(path, loads_header(description, source=str(path)), data)]
    kwargs = {"scale": scale} if scale is not None else {}
    return [_volume_layer(path, data, kwargs, "tiff")]


_NIFTI_UNIT_TO_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}


def _read_nifti(path: Path) -> list[LayerData]:
    try:
        import nibabel
    except ImportError:
        raise ConformalError(
            f"{path}: reading NIfTI needs nibabel; install it with  pip install 'napari-conformal[io]'"
        ) from None
    try:
        img = nibabel.load(str(path))
        raw = np.asanyarray(img.dataobj)
        zooms = [float(z) for z in img.header.get_zooms()]
        space_unit = img.header.get_xyzt_units()[0]
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, …
        raise ConformalError(f"{path}: cannot read the NIfTI file: {exc}") from None
    if raw.ndim < 2:
        raise ConformalError(f"{path}: NIfTI data has shape {raw.shape}; need at least 2 axes")
    refuse_objects(path, raw.dtype)
    n_space = min(raw.ndim, 3)
    order = list(range(n_space, raw.ndim)) + list(range(n_space - 1, -1, -1))
    data = np.ascontiguousarray(np.transpose(raw, order))
    factor = _NIFTI_UNIT_TO_MM.get(space_unit, 1.0)
    zooms = (zooms + [1.0] * raw.ndim)[: raw.ndim]
    scale = [zooms[a] * (factor if a < n_space else 1.0) for a in order]
    scale = [s if math.isfinite(s) and s > 0 else 1.0 for s in scale]
    meta = {
        PROVENANCE_KEY: {
            "source": "volume",
            "path": str(path.resolve()),
            "format": "nifti",
            "axes": "napari axes = NIfTI axes reversed (k, j, i); no resampling or reorientation",
            "nifti_affine": affine.tolist(),
            "nifti_space_unit": space_unit,
        }
    }
    return [_volume_layer(path, data, {"scale": scale, "metadata": meta}, "nifti")]


def _read_zarr_volume(path: Path) -> list[LayerData]:
    arr = open_zarr_array(path)
    if arr.ndim < 2:
        raise ConformalError(f"{path}: zarr array of shape {arr.shape}; need at least 2 axes")
    return [_volume_layer(path, arr, {}, "zarr")]


def read_volume(path: str | os.PathLike[str]) -> list[LayerData]:
    """Layer for one volume file (see the module docstring for formats, axes and layer types).

    Raises
    ------
    ConformalError
        Unsupported suffix, unreadable or malformed file, object (pickled) data.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise ConformalError(f"{p}: no such file or directory")
    node = zarr_node(p)
    if node is not None and node[0] == "array":
        return _read_zarr_volume(p)
    suffix = suffix_of(p)
    readers = {
        ".tif": _read_tiff,
        ".tiff": _read_tiff,
        ".nii": _read_nifti,
        ".nii.gz": _read_nifti,
        ".npy": _read_npy_volume,
        ".npz": _read_npz_volume,
    }
    if suffix not in readers or not p.is_file():
        raise ConformalError(
            f"{p}: not a volume napari-conformal reads ({', '.join(VOLUME_SUFFIXES)}, zarr array)"
        )
    return readers[suffix](p)
