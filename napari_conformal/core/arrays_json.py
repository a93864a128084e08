"""Numeric arrays inside JSON documents, exactly: dtype, shape and the raw bytes (zlib, base64).

A calibration file keeps every calibration curve, so that any α or ν in the calibrated range is a
re-reduction. Curves are float64 (or integer) arrays; writing them as JSON numbers would round or
bloat them, so each array is one object ``{"dtype": "<f8", "shape": [n], "data": "<base64>"}``
holding the little-endian bytes, deflated. Decoding checks everything a tampered file could break:
the dtype is a plain number type, the byte count matches the shape, the values are finite.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_conformal.errors import CalibrationFileError

__all__ = ["decode_array", "encode_array"]

_ALLOWED = {"<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1"}
_MAX_ELEMENTS = 1 << 31


def encode_array(values: Any) -> dict[str, Any]:
    """``values`` as ``{"dtype", "shape", "data"}`` (little-endian bytes, zlib level 6, base64)."""
    arr = np.ascontiguousarray(values)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder not in ("|", "<", "=") else arr.dtype
    arr = arr.astype(dt.newbyteorder("<") if dt.byteorder == "=" else dt, copy=False)
    code = arr.dtype.str
    if code not in _ALLOWED:
        raise TypeError(f"cannot encode arrays of dtype {arr.dtype}")
    data = base64.b64encode(zlib.compress(arr.tobytes(), 6)).decode("ascii")
    return {"dtype": code, "shape": [int(s) for s in arr.shape], "data": data}


def decode_array(doc: Any, where: str = "array", *, finite: bool = True) -> np.ndarray:
    """The array an :func:`encode_array` object holds (read-only).

    Raises
    ------
    CalibrationFileError
        The object is malformed, its bytes do not match its shape, or (``finite``) a value is NaN/inf.
    """
    if not isinstance(doc, Mapping) or set(doc) != {"dtype", "shape", "data"}:
        raise CalibrationFileError(f"{where}: expected an encoded array {{dtype, shape, data}}")
    code, shape, data = doc["dtype"], doc["shape"], doc["data"]
    if code not in _ALLOWED:
        raise CalibrationFileError(f"{where}: unsupported dtype {code!r}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise CalibrationFileError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > _MAX_ELEMENTS:
        raise CalibrationFileError(f"{where}: {count} elements is more than a calibration can hold")
    if not isinstance(data, str):
        raise CalibrationFileError(f"{where}: data must be base64 text")
    try:
        raw = zlib.decompress(base64.b64decode(data.encode("ascii"), validate=True))
    except (binascii.Error, ValueError, zlib.error, UnicodeEncodeError):
        raise CalibrationFileError(f"{where}: data is not valid base64-encoded zlib (truncated or edited?)") from None
    dtype = np.dtype(code)
    if len(raw) != count * dtype.itemsize:
        raise CalibrationFileError(
            f"{where}: {len(raw)} bytes do not hold shape {tuple(shape)} of {dtype} ({count * dtype.itemsize} bytes)"
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if finite and dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise CalibrationFileError(f"{where}: holds NaN or infinite values")
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == "<" and np.little_endian is False else arr
