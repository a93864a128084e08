"""napari writers (npe2 ``writers`` contributions): result layers with provenance, calibration records.

* ``.npz`` — members ``data`` (the layer data, dtype kept) and ``__napari_conformal__`` (a 0-d
  unicode array holding the JSON layer header of :mod:`napari_conformal.io.provenance`: layer type,
  name, shape, dtype, scale, translate and ``metadata["napari_conformal"]``). Compressed; no
  pickles: both members load with ``np.load(..., allow_pickle=False)``.
* ``.tif`` / ``.tiff`` — the data as (zlib-compressed) TIFF pages, the same JSON header as the
  ImageDescription of the first page. Boolean data is stored as uint8.
* ``.json`` — the calibration carried by a result layer (``CALIB.json``, :mod:`napari_conformal.core.calibration`).

Every file is written to a temporary sibling (``.<name>.partial-<random>``), flushed to disk and
renamed over the target with :func:`os.replace`, so an interrupted export leaves either the old
file or the complete new one. A target without one of the writer's suffixes gets the default
suffix appended; the functions return the list of paths written, as npe2 expects.

Reading a written ``.npz`` / ``.tif`` back with :mod:`napari_conformal.io.readers` restores the
layer type, name, scale, translate and provenance. Multiscale layers are written at full
resolution (level 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.io.atomic import atomic_file
from napari_conformal.io.provenance import HEADER_MEMBER, dumps_header, get_provenance, layer_header

__all__ = [
    "atomic_file",
    "calibration_record",
    "write_calibration",
    "write_calibration_json",
    "write_image_npz",
    "write_image_tiff",
    "write_labels_npz",
    "write_labels_tiff",
    "write_layer_npz",
    "write_layer_tiff",
]



def _with_suffix(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> Path:
    p = Path(os.fspath(path))
    if p.is_dir():
        raise ConformalError(f"cannot write {p}: it is a directory")
    if p.suffix.lower() in suffixes:
        return p
    return p.with_name(p.name + suffixes[0])


def _layer_array(data: Any, attributes: Mapping[str, Any] | None) -> np.ndarray:
    """The layer data as a numpy array (level 0 of a multiscale layer)."""
    if (attributes or {}).get("multiscale"):
        data = data[0]
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise ConformalError(f"cannot convert the layer data to an array: {exc}") from None
    if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
        raise ConformalError(f"layer data of dtype {arr.dtype} cannot be written; expected numbers")
    if arr.ndim == 0:
        raise ConformalError("layer data is a scalar; expected an image or a volume")
    return arr


def _check_layer_type(layer_type: str) -> None:
    if layer_type not in ("image", "labels"):
        raise ConformalError(f"layer_type must be 'image' or 'labels', got {layer_type!r}")


def write_layer_npz(
    path: str | os.PathLike[str], data: Any, layer_type: str, attributes: Mapping[str, Any] | None = None
) -> str:
    """Write one image or labels layer with its provenance header to a ``.npz`` file.

    Parameters
    ----------
    path : path-like
        Target; ``.npz`` is appended when missing.
    data : array-like
        Layer data, any shape (e.g. ``(Z, Y, X)``); dtype kept.
    layer_type : {"image", "labels"}
        napari layer type, restored by the reader.
    attributes : mapping, optional
        Layer attributes as napari hands them to writers (``name``, ``scale``, ``translate``,
        ``metadata`` with the ``"napari_conformal"`` provenance, ``multiscale``).

    Returns
    -------
    str
        The path written.
    """
    _check_layer_type(layer_type)
    arr = _layer_array(data, attributes)
    header = layer_header(layer_type, arr.shape, arr.dtype, attributes)
    target = _with_suffix(path, (".npz",))
    with atomic_file(target) as fh:
        np.savez_compressed(fh, data=arr, **{HEADER_MEMBER: np.array(dumps_header(header))})
    return str(target)


def write_layer_tiff(
    path: str | os.PathLike[str], data: Any, layer_type: str, attributes: Mapping[str, Any] | None = None
) -> str:
    """Write one image or labels layer to TIFF with its provenance header as ImageDescription.

    Parameters are those of :func:`write_layer_npz`; ``.tif`` is appended when the target has
    neither ``.tif`` nor ``.tiff``. RGB(A) image layers (``attributes["rgb"]``) are written as RGB
    TIFF, everything else as grey pages (the header keeps the full shape).

    Returns
    -------
    str
        The path written.
    """
    import tifffile

    _check_layer_type(layer_type)
    arr = _layer_array(data, attributes)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    header = layer_header(layer_type, arr.shape, arr.dtype, attributes)
    rgb = layer_type == "image" and bool((attributes or {}).get("rgb")) and arr.shape[-1] in (3, 4)
    target = _with_suffix(path, (".tif", ".tiff"))
    with atomic_file(target) as fh:
        tifffile.imwrite(
            fh,
            arr,
            description=dumps_header(header),
            metadata=None,
            photometric="rgb" if rgb else "minisblack",
            compression="zlib",
        )
    return str(target)


def write_labels_npz(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a labels layer to ``.npz`` (see :func:`write_layer_npz`)."""
    return [write_layer_npz(path, data, "labels", attributes)]


def write_image_npz(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: an image layer to ``.npz`` (see :func:`write_layer_npz`)."""
    return [write_layer_npz(path, data, "image", attributes)]


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a labels layer to TIFF (see :func:`write_layer_tiff`)."""
    return [write_layer_tiff(path, data, "labels", attributes)]


def write_image_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: an image layer to TIFF (see :func:`write_layer_tiff`)."""
    return [write_layer_tiff(path, data, "image", attributes)]


def calibration_record(attributes: Mapping[str, Any] | None) -> Any:
    """The calibration a layer carries in ``metadata["napari_conformal"]["calibration"]``.

    A :class:`~napari_conformal.core.calibration.Calibration` (what the explorers store), or its JSON
    object (what a layer read back from a file holds), checked by
    :meth:`~napari_conformal.core.calibration.Calibration.from_dict`.

    Raises
    ------
    ConformalError
        The layer has no napari-conformal provenance, or it carries no valid calibration.
    """
    from napari_conformal.core.calibration import Calibration

    attributes = attributes or {}
    name = attributes.get("name") or "the layer"
    prov = get_provenance(attributes.get("metadata"))
    if prov is None:
        raise ConformalError(f"{name!s} has no napari-conformal provenance, so there is no calibration to save")
    record = prov.get("calibration")
    if isinstance(record, Calibration):
        return record
    if isinstance(record, Mapping):
        return Calibration.from_dict(dict(record))
    raise ConformalError(f"{name!s} is not a calibration result: its provenance holds no calibration")


def write_calibration(path: str | os.PathLike[str], calibration: Any) -> str:
    """Write a :class:`~napari_conformal.core.calibration.Calibration` as ``CALIB.json`` (``.json`` appended when missing).

    Raises
    ------
    ConformalError
        ``calibration`` is not a Calibration.
    """
    from napari_conformal.core.calibration import Calibration

    if not isinstance(calibration, Calibration):
        raise ConformalError(f"expected a Calibration, got {type(calibration).__name__}")
    target = _with_suffix(path, (".json",))
    calibration.save(target)
    return str(target)


def write_calibration_json(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: the layer's calibration record to ``.json`` (data not written)."""
    del data  # the record lives in the metadata; the pixels are not part of CALIB.json
    return [write_calibration(path, calibration_record(attributes))]
