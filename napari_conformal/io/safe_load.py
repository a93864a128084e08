"""Loading NumPy and zarr files without ever unpickling (docs/store.md: nothing is unpickled).

``np.load(..., allow_pickle=False)`` everywhere; object arrays are refused with an error naming the
file before any data is read; a zarr array whose metadata asks for objects or a pickle codec is
refused from its metadata document, before zarr opens it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.io.paths import read_json

__all__ = ["check_zarr_array_safe", "load_npy", "load_npz", "open_zarr_array", "refuse_objects"]


def refuse_objects(path: Path, dtype: np.dtype, member: str | None = None) -> None:
    """ConformalError when ``dtype`` holds Python objects (reading them would unpickle)."""
    if dtype.hasobject:
        where = f"{path}" + (f" (member {member!r})" if member else "")
        raise ConformalError(
            f"{where} holds Python objects (dtype {dtype}); loading it would unpickle data, which can run "
            "arbitrary code, so napari-conformal refuses. Save plain numeric arrays instead."
        )


def _npy_dtype(path: Path) -> np.dtype:
    """dtype from a ``.npy`` header (no data read); ConformalError if the file is not ``.npy``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                _shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
            else:
                _shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise ConformalError(f"{path}: not a valid .npy file: {exc}") from None
    return np.dtype(dtype)


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only; object arrays are refused before any data is read."""
    p = Path(path)
    refuse_objects(p, _npy_dtype(p))
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        try:  # e.g. a file system that cannot map: read it instead
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError):
            raise ConformalError(f"{p}: cannot read the .npy file: {exc}") from None


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All members of a ``.npz`` file (no pickles; an object member gives a ConformalError)."""
    p = Path(path)
    try:
        npz = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConformalError(f"{p}: not a valid .npz file: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ConformalError(f"{p}: not a .npz archive (it holds a single .npy array)")
    out = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    refuse_objects(p, np.dtype(object), key)
                raise ConformalError(f"{p}: cannot read member {key!r}: {exc}") from None
            except (OSError, EOFError) as exc:
                raise ConformalError(f"{p}: cannot read member {key!r}: {exc}") from None
    return out


def _codec_names(doc: Any) -> list[str]:
    """Every ``name`` / ``id`` string in a zarr metadata document (codecs, filters, nested shards)."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("name", "id") and isinstance(value, str):
                found.append(value)
            else:
                found += _codec_names(value)
    elif isinstance(doc, list):
        for value in doc:
            found += _codec_names(value)
    return found


def check_zarr_array_safe(path: str | os.PathLike[str]) -> None:
    """Refuse a zarr array whose metadata asks for unpickling (object dtype or a pickle codec).

    Reads only the metadata document (``zarr.json`` or ``.zarray``), before zarr opens the array.

    Raises
    ------
    ConformalError
        Unreadable metadata, an object dtype, or a codec / filter whose name mentions pickle.
    """
    p = Path(path)
    doc = read_json(p / "zarr.json")
    if not isinstance(doc, dict):
        doc = read_json(p / ".zarray")
    if not isinstance(doc, dict):
        raise ConformalError(f"{p}: cannot read the zarr array metadata (zarr.json or .zarray)")
    dtype = doc.get("data_type", doc.get("dtype"))
    if dtype in ("|O", "O", "object") or any("pickle" in n.lower() for n in _codec_names(doc)):
        raise ConformalError(
            f"{p}: the zarr array stores Python objects (dtype {dtype!r} / a pickle codec); reading it "
            "would unpickle data, which can run arbitrary code, so napari-conformal refuses"
        )


def open_zarr_array(path: Path) -> Any:
    """A zarr array opened read-only after :func:`check_zarr_array_safe`; numbers or booleans only."""
    import zarr

    check_zarr_array_safe(path)
    try:
        arr = zarr.open_array(str(path), mode="r")
        dtype = np.dtype(arr.dtype)
    except Exception as exc:  # zarr raises many types for broken metadata
        raise ConformalError(f"{path}: cannot open the zarr array: {exc}") from None
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ConformalError(f"{path}: zarr array of dtype {dtype}; expected numbers")
    return arr
