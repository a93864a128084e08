"""Provenance records of layers and the JSON header of single-layer files.

Every layer made by napari-conformal carries a JSON-ready dictionary in
``layer.metadata["napari_conformal"]`` (docs/user_guide.md): for result layers the method, α, ν, λ̂, n and
package version; for layers read from a dataset store the store path, its identity and the array
shown. The writers (:mod:`napari_conformal.io.writers`) save that dictionary beside the layer data
in a *layer header*, a JSON object::

    {"format": "napari-conformal-layer", "version": 1,
     "layer_type": "labels", "name": "...", "shape": [...], "dtype": "uint8",
     "scale": [...], "translate": [...], "napari_conformal": {...provenance...}}

and the readers (:mod:`napari_conformal.io.readers`) turn a header back into layer keyword
arguments, so the provenance survives a save/open round trip. Headers are plain JSON: nothing in
them is ever executed or unpickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError

__all__ = [
    "HEADER_FORMAT",
    "HEADER_MEMBER",
    "HEADER_VERSION",
    "LAYER_TYPES",
    "PROVENANCE_KEY",
    "dumps_header",
    "get_provenance",
    "header_to_layer_kwargs",
    "layer_header",
    "loads_header",
    "to_jsonable",
]

PROVENANCE_KEY = "napari_conformal"
HEADER_FORMAT = "napari-conformal-layer"
HEADER_VERSION = 1
#: ``.npz`` member holding the JSON layer header (written by :mod:`napari_conformal.io.writers`).
HEADER_MEMBER = "__napari_conformal__"
LAYER_TYPES = ("image", "labels")


def to_jsonable(value: Any, *, where: str = "value") -> Any:
    """Return a JSON-ready copy of ``value``.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, paths become
    strings, non-finite floats become ``None`` (JSON has no NaN). Dictionary keys must be strings
    or integers (written as strings, as :func:`json.dumps` does).

    Parameters
    ----------
    value : Any
        Nested dicts / lists / tuples of numbers, strings, booleans, None, numpy values and paths.
    where : str
        Name of ``value`` for error messages (nested entries are reported as ``where['key'][i]``).

    Raises
    ------
    ConformalError
        An entry that has no JSON form (an arbitrary object, a non-string key).
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where=where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
                key = str(int(key))  # as json.dumps does (metrics keyed by N)
            if not isinstance(key, str):
                raise ConformalError(f"{where}: keys must be strings to be saved as JSON, got {key!r}")
            out[key] = to_jsonable(item, where=f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item, where=f"{where}[{k}]") for k, item in enumerate(value)]
    if callable(getattr(value, "to_dict", None)):  # a Calibration in a layer's provenance
        return to_jsonable(value.to_dict(), where=where)
    raise ConformalError(f"{where}: a {type(value).__name__} cannot be saved as JSON ({value!r:.80})")


def get_provenance(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The provenance dictionary in a layer's ``metadata``, or None when there is none.

    Raises
    ------
    ConformalError
        ``metadata["napari_conformal"]`` exists but is not a dictionary.
    """
    if not metadata or PROVENANCE_KEY not in metadata:
        return None
    prov = metadata[PROVENANCE_KEY]
    if prov is None:
        return None
    if not isinstance(prov, Mapping):
        raise ConformalError(
            f"metadata[{PROVENANCE_KEY!r}] must be a dict of provenance entries, got {type(prov).__name__}"
        )
    return dict(prov)


def _float_list(name: str, values: Any, ndim: int) -> list[float] | None:
    if values is None:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConformalError(f"layer header: {name} must be a list of numbers, got {values!r}") from None
    if len(out) != ndim or not all(math.isfinite(v) for v in out):
        raise ConformalError(f"layer header: {name} must hold {ndim} finite numbers, got {values!r}")
    return out


def layer_header(
    layer_type: str, shape: Sequence[int], dtype: Any, meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Build the JSON header for one layer about to be written.

    Parameters
    ----------
    layer_type : {"image", "labels"}
        napari layer type.
    shape : sequence of int
        Shape of the data written (all axes, e.g. ``(Z, Y, X)``).
    dtype : numpy dtype-like
        dtype of the data written.
    meta : mapping, optional
        The layer attributes napari hands a writer (``name``, ``scale``, ``translate``,
        ``metadata`` …); only those listed in the module docstring are kept.

    Returns
    -------
    dict
        JSON-ready header; ``header["napari_conformal"]`` is the provenance (``{}`` if none).
    """
    if layer_type not in LAYER_TYPES:
        raise ConformalError(f"layer_type must be one of {LAYER_TYPES}, got {layer_type!r}")
    meta = dict(meta or {})
    ndim = len(shape)
    name = meta.get("name")
    prov = get_provenance(meta.get("metadata")) or {}
    header = {
        "format": HEADER_FORMAT,
        "version": HEADER_VERSION,
        "layer_type": layer_type,
        "name": str(name) if name is not None else None,
        "shape": [int(s) for s in shape],
        "dtype": np.dtype(dtype).str,
        "scale": _float_list("scale", meta.get("scale"), ndim),
        "translate": _float_list("translate", meta.get("translate"), ndim),
        PROVENANCE_KEY: to_jsonable(prov, where=f"metadata[{PROVENANCE_KEY!r}]"),
    }
    return header


def dumps_header(header: Mapping[str, Any]) -> str:
    """Serialise a header to compact JSON (strict: no NaN)."""
    return json.dumps(to_jsonable(header, where="header"), allow_nan=False, separators=(",", ":"))


def loads_header(text: str | bytes, source: str = "file") -> dict[str, Any]:
    """Parse and check a layer header written by :func:`dumps_header`.

    Parameters
    ----------
    text : str or bytes
        The JSON text.
    source : str
        Where the text came from, for error messages.

    Raises
    ------
    ConformalError
        Not JSON, not a napari-conformal layer header, a newer header version, or malformed entries.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConformalError(f"{source}: the napari-conformal header is not UTF-8 text") from None
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise ConformalError(f"{source}: the napari-conformal header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != HEADER_FORMAT:
        raise ConformalError(f"{source}: not a napari-conformal layer header")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConformalError(f"{source}: header version must be an integer, got {version!r}")
    if version > HEADER_VERSION:
        raise ConformalError(
            f"{source}: header version {version} is newer than this napari-conformal reads "
            f"({HEADER_VERSION}); upgrade napari-conformal"
        )
    if header.get("layer_type") not in LAYER_TYPES:
        raise ConformalError(
            f"{source}: header layer_type must be one of {LAYER_TYPES}, got {header.get('layer_type')!r}"
        )
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise ConformalError(f"{source}: header shape must be a list of non-negative integers, got {shape!r}")
    for key in ("scale", "translate"):
        header[key] = _float_list(key, header.get(key), len(shape))
    prov = header.get(PROVENANCE_KEY)
    if prov is None:
        header[PROVENANCE_KEY] = {}
    elif not isinstance(prov, dict):
        raise ConformalError(f"{source}: header entry {PROVENANCE_KEY!r} must be an object, got {prov!r}")
    name = header.get("name")
    if name is not None and not isinstance(name, str):
        raise ConformalError(f"{source}: header name must be a string, got {name!r}")
    return header


def header_to_layer_kwargs(header: Mapping[str, Any]) -> dict[str, Any]:
    """Layer keyword arguments (name, scale, translate, metadata) for a checked header."""
    kwargs: dict[str, Any] = {"metadata": {PROVENANCE_KEY: dict(header.get(PROVENANCE_KEY) or {})}}
    for key in ("name", "scale", "translate"):
        if header.get(key) is not None:
            kwargs[key] = header[key]
    return kwargs
