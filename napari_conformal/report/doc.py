"""Reading a ``results.json`` document: what the page and the figures share.

Everything is read from the document alone (a report can be re-rendered from its ``results.json``):
a method's display name and colour come from ``settings["methods_info"]``, written from the method's
class when the report was computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["alpha_tag", "colour", "fmt", "num", "summary_by_method", "title"]


def title(doc: Mapping[str, Any], method: str) -> str:
    """The method's display name (its class's ``title``)."""
    info = doc["settings"].get("methods_info", {}).get(method, {})
    return str(info.get("title") or method)


def colour(doc: Mapping[str, Any], method: str) -> str | None:
    """The method's colour (its class's ``colour``), None when unknown."""
    return doc["settings"].get("methods_info", {}).get(method, {}).get("colour")


def info(doc: Mapping[str, Any], method: str) -> Mapping[str, Any]:
    """``settings["methods_info"][method]``."""
    return doc["settings"]["methods_info"][method]


def alpha_tag(alpha: float) -> str:
    """File-name-safe text for α (``0.05`` → ``0p05``)."""
    return f"{alpha:g}".replace(".", "p").replace("-", "m")


def num(value: Any) -> float:
    """A number, NaN for None."""
    return math.nan if value is None else float(value)


def fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` with ``digits`` significant digits (– for missing)."""
    if not stat:
        return "–"
    mean, std = num(stat.get("mean")), num(stat.get("std"))
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}g}"
    if math.isfinite(std) and stat.get("n", 0) > 1:
        text += f" ± {std:.2g}"
    return text


def summary_by_method(doc: Mapping[str, Any]) -> dict[str, dict[float, Mapping[str, Any]]]:
    """``{method: {α: summary entry}}``."""
    out: dict[str, dict[float, Mapping[str, Any]]] = {}
    for entry in doc["summary"]:
        out.setdefault(entry["method"], {})[float(entry["alpha"])] = entry
    return out
