"""What a path is, from its name and the small zarr metadata documents only (never its data).

:func:`path_kind` decides which reader opens a path (:mod:`napari_conformal.io.readers`); the other
helpers are shared by the readers: the suffix (``.nii.gz`` counted as one), the name without it, and
the kind and attributes of a zarr v2/v3 node. None of them raises, whatever the path is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from napari_conformal.io.validate import FORMAT_NAME

__all__ = ["VOLUME_SUFFIXES", "path_kind", "read_json", "stem_of", "suffix_of", "zarr_node"]

#: Files :func:`~napari_conformal.io.read_volume.read_volume` opens (besides zarr arrays).
VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".npz")


def suffix_of(path: Path) -> str:
    """Lower-case suffix, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def stem_of(path: Path) -> str:
    """File name without the suffix returned by :func:`_suffix`."""
    suffix = suffix_of(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def read_json(path: Path) -> Any:
    """The JSON document at ``path`` (at most 16 MiB), or None when unreadable."""
    try:
        if path.stat().st_size > 16 * 2**20:  # metadata documents are small; don't slurp a huge file
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def zarr_node(path: Path) -> tuple[str, dict[str, Any]] | None:
    """``("group" | "array", attributes)`` for a zarr v2/v3 node at ``path``, else None. Never raises."""
    try:
        if not path.is_dir():
            return None
        doc = read_json(path / "zarr.json")
        if isinstance(doc, dict) and doc.get("node_type") in ("group", "array"):
            attrs = doc.get("attributes")
            return doc["node_type"], attrs if isinstance(attrs, dict) else {}
        for marker, kind in ((".zgroup", "group"), (".zarray", "array")):
            if (path / marker).is_file():
                attrs = read_json(path / ".zattrs")
                return kind, attrs if isinstance(attrs, dict) else {}
    except OSError:
        return None
    return None


def path_kind(path: Any) -> str | None:
    """What napari-conformal would open ``path`` as: ``"store"``, ``"samples"``, ``"volume"`` or None.

    Looks only at the name and at zarr metadata documents; never raises.
    """
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return None
    try:
        node = zarr_node(p)
        if node is not None:
            kind, attrs = node
            if kind == "group":
                return "store" if attrs.get("format") == FORMAT_NAME else None
            return "samples" if stem_of(p).endswith("_samples") else "volume"
        if not p.is_file():
            return None
    except OSError:
        return None
    suffix = suffix_of(p)
    if suffix in (".npy", ".npz") and stem_of(p).endswith("_samples"):
        return "samples"
    if suffix in VOLUME_SUFFIXES:
        return "volume"
    return None
