"""napari layer data tuples as the readers return them, and the pieces they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["LayerData", "ReaderFunction", "class_features"]

#: ``(data, kwargs, layer_type)``, as napari's ``viewer.add_<layer_type>(data, **kwargs)`` takes them.
LayerData = tuple[Any, dict[str, Any], str]
#: What an npe2 ``get_reader`` returns: path or paths → layer data.
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]


def class_features(label_names: Sequence[str]) -> dict[str, Any]:
    """Features table of a labels layer (``index``, ``class``), so the status bar names the class."""
    return {"index": np.arange(len(label_names)), "class": np.asarray(list(label_names), dtype=object)}
