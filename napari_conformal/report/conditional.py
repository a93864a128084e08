"""Conditional coverage: where the marginal guarantee is thin.

Every guarantee of the report is *marginal*: an average over images (docs/algorithms.md#conformal-rules).
A method can meet it on average while covering small structures, or images the model segments
badly, far less often. This module splits the test images into tertiles of two properties and
reports the realised coverage in each:

* **structure size**: the number of ground-truth foreground pixels of the image;
* **base-model Dice**: the Dice of the model's own segmentation (mean foreground probability ≥ 0.5),
  a measure of how hard the image is for the model.

Both are computed per foreground (:mod:`napari_conformal.report.reference`): a binary method's
``fg_class``, or every structure for the others. The tertiles are fixed per image over the union of
the test images of all splits: the images are ranked by the property (ties broken by image index)
and cut into three groups whose sizes differ by at most one; an image whose property is undefined
(a Dice of two empty masks) is in none and counted under ``undefined``.

The realised coverage of an image is what its method's guarantee is about: the 0/1 ``covered`` for
methods with a coverage guarantee, ``coverage`` = 1 − FNR for FNR methods. A cell of the table pools
every (split, test image) pair of the tertile over the splits with a λ̂, so its count adds up, over
the three tertiles and ``undefined``, to the number of test images times the number of such splits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BY", "TERTILE_NAMES", "conditional_coverage", "realised_key", "tertiles"]

#: the properties the test images are split by: (key, heading, names of the three tertiles)
BY = (
    ("size", "structure size (ground-truth foreground pixels)", ("small", "medium", "large")),
    ("dice", "base-model Dice (mean foreground ≥ 0.5)", ("low", "middle", "high")),
)
TERTILE_NAMES = {key: names for key, _, names in BY}


def realised_key(risk: str) -> str:
    """The per-image metric a guarantee of kind ``risk`` is about: ``coverage`` (FNR) or ``covered``."""
    return "coverage" if risk == "fnr" else "covered"


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def tertiles(values: Mapping[int, float | None]) -> dict[str, Any]:
    """Rank-based tertiles of a per-image property.

    Parameters
    ----------
    values : mapping
        ``{image index: value}`` (None or NaN: undefined).

    Returns
    -------
    dict
        ``{"group": {index: 0, 1, 2 or None}, "ranges": [[low, high] per tertile (None when empty)]}``.
    """
    defined = sorted((float(v), int(i)) for i, v in values.items() if _finite(v))
    group: dict[int, int | None] = {int(i): None for i in values}
    ranges: list[list[float] | None] = []
    for t, part in enumerate(np.array_split(np.arange(len(defined)), 3)):
        members = [defined[j] for j in part]
        for _, i in members:
            group[i] = t
        ranges.append([members[0][0], members[-1][0]] if members else None)
    return {"group": group, "ranges": ranges}


def conditional_coverage(
    runs: Sequence[Mapping[str, Any]],
    facts: Mapping[int, Mapping[str, Any]],
    methods_info: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Realised coverage by tertile of structure size and base-model Dice, per method and α.

    Parameters
    ----------
    runs : sequence of dict
        The report's runs (per-image rows with ``index``).
    facts : mapping
        ``{image index: image_facts(...)}`` for every test image.
    methods_info : mapping
        ``settings["methods_info"]`` (risk and foreground of each method).

    Returns
    -------
    dict
        ``{"foregrounds": {key: {"images": [...], "size": [...], "dice": [...], "size_tertiles": …,
        "dice_tertiles": …}}, "rows": [{"method", "alpha", "foreground", "by", "cells": [3 cells],
        "undefined": {...}, "n_total", "n_splits"}]}``; a cell is ``{"tertile", "name", "range", "n",
        "n_images", "realised"}`` with ``realised`` the mean over the cell's finite values.
    """
    from napari_conformal.report.reference import foreground_key

    indices = sorted(int(i) for i in facts)
    foregrounds: dict[str, Any] = {}
    for info in methods_info.values():
        key = foreground_key(info["fg_class"] if info["binary"] else None)
        if key in foregrounds:
            continue
        per = {i: facts[i]["foregrounds"][key] for i in indices}
        entry: dict[str, Any] = {"images": indices}
        for by, _, _ in BY:
            entry[by] = [per[i][by] for i in indices]
            entry[f"{by}_tertiles"] = tertiles({i: per[i][by] for i in indices})
        foregrounds[key] = entry

    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], float(run["alpha"])), []).append(run)
    rows = []
    for (name, alpha), group in groups.items():
        info = methods_info[name]
        key = foreground_key(info["fg_class"] if info["binary"] else None)
        metric = realised_key(info["risk"])
        done = [r for r in group if r.get("lambda_hat") is not None]
        for by, _, names in BY:
            assign = foregrounds[key][f"{by}_tertiles"]["group"]
            pools: dict[int | None, list[tuple[int, float]]] = {0: [], 1: [], 2: [], None: []}
            for run in done:
                for row in run["per_image"]:
                    value = row.get(metric)
                    pools[assign[int(row["index"])]].append((int(row["index"]), value))

            def cell(items: list[tuple[int, Any]]) -> dict[str, Any]:
                vals = [float(v) for _, v in items if _finite(v)]
                return {
                    "n": len(items),
                    "n_images": len({i for i, _ in items}),
                    "n_defined": len(vals),
                    "realised": float(np.mean(vals)) if vals else None,
                }

            ranges = foregrounds[key][f"{by}_tertiles"]["ranges"]
            cells = [{"tertile": t, "name": names[t], "range": ranges[t], **cell(pools[t])} for t in range(3)]
            rows.append(
                {
                    "method": name,
                    "alpha": alpha,
                    "foreground": key,
                    "by": by,
                    "metric": metric,
                    "cells": cells,
                    "undefined": cell(pools[None]),
                    "n_total": sum(len(p) for p in pools.values()),
                    "n_splits": len(done),
                }
            )
    return {"by": {by: heading for by, heading, _ in BY}, "foregrounds": foregrounds, "rows": rows}
