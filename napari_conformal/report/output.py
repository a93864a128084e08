"""The report directory: ``results.json``, the figures and ``index.html``, written atomically.

An existing directory is replaced only with ``overwrite`` and only when it is empty or holds an
earlier report (a ``results.json`` of this format), never an unrelated folder; the new one is built
under a temporary sibling name and renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.report.plan import REPORT_FORMAT

__all__ = ["check_report_target", "jsonable", "write_report"]


def check_report_target(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check before any work that the report directory ``out`` may be written.

    An existing ``out`` is replaced only with ``overwrite`` and only when it is empty or holds an
    earlier report (a ``results.json`` of this format), never an unrelated folder.
    """
    target = Path(out)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise ConformalError(
            f"{target} already exists; pass --overwrite (overwrite=True) to replace the report"
        )
    is_dir = target.is_dir() and not target.is_symlink()
    if is_dir and (not any(target.iterdir()) or _is_report_dir(target)):
        return target
    raise ConformalError(f"refusing to overwrite {target}: it exists and is not a napari-conformal report")


def _is_report_dir(path: Path) -> bool:
    try:
        doc = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == REPORT_FORMAT


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays → Python, NaN/inf → None (JSON has no NaN), keys → text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def write_report(results: Mapping[str, Any], out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``results.json``, the PNG figures and ``index.html`` into the new directory ``out``.

    The directory is built under a temporary sibling name and renamed into place when complete,
    so an interrupted run never leaves a half-written report (nor touches an existing one unless
    the new one is complete and ``overwrite`` is set).

    Returns
    -------
    Path
        ``out``.
    """
    from napari_conformal.io.atomic import atomic_directory
    from napari_conformal.report.html import render_report

    target = check_report_target(out, overwrite)
    doc = jsonable(results)
    text = json.dumps(doc, indent=1, allow_nan=False)
    with atomic_directory(
        target, overwrite=overwrite, replaceable=_is_report_dir, what="report directory"
    ) as tmp:
        (tmp / "results.json").write_text(text + "\n", encoding="utf-8")
        render_report(doc, tmp)
    return target
