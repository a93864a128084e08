"""What the model alone does on each test image: the reference row, structure sizes, base Dice.

One cheap pass over the test images reads each image once (:func:`~napari_conformal.io.dataset.read_image`)
and records, for every *foreground* the report's methods look at:

* ``size``: the number of ground-truth foreground pixels (the structure's size);
* ``dice``: the Dice of the model's own segmentation, mean foreground probability ≥ 0.5, against
  that foreground (NaN when both are empty);
* for the reference foreground (the first binary method's class), the binary metrics of the model's
  own segmentation: the "Model (no CP)" row of the RW-CP paper's Table 1.

A binary method's foreground is its ``fg_class`` (one-vs-rest); a method without one (CONSIGN,
pixel-wise, SACP) sets every label of the image, so its foreground is every non-background label,
and the model's foreground probability is ``1 − P(background)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["foreground_key", "image_facts"]


def foreground_key(fg_class: int | None) -> str:
    """The key of a foreground in ``results.json``: ``"class 1"`` or ``"all structures"``."""
    return "all structures" if fg_class is None else f"class {int(fg_class)}"


def _foreground(
    samples: np.ndarray, label: np.ndarray, fg_class: int | None, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(model's foreground probability, ground-truth foreground mask) of one image."""
    from napari_conformal.core.scores.probabilities import foreground_probability

    if fg_class is None:
        prob = 1.0 - foreground_probability(samples, 0, stored_dtype=dtype)
        return prob, np.asarray(label) != 0
    return foreground_probability(samples, int(fg_class), stored_dtype=dtype), np.asarray(label) == int(
        fg_class
    )


def image_facts(
    data: Any, i: int, foregrounds: Sequence[int | None], reference_fg: int | None
) -> dict[str, Any]:
    """Sizes, base Dice and (for ``reference_fg``) the model's own metrics of image ``i``.

    Returns
    -------
    dict
        ``{"foregrounds": {key: {"size": int, "dice": float}}, "reference": metrics or None}``.
    """
    from napari_conformal.core.metrics.segmentation import dice, segmentation_metrics
    from napari_conformal.io.dataset import read_image

    image = read_image(data, i)
    out: dict[str, Any] = {"foregrounds": {}, "reference": None}
    for fg in foregrounds:
        prob, truth = _foreground(image.samples, image.label, fg, data.samples_dtype)
        pred = prob >= 0.5
        out["foregrounds"][foreground_key(fg)] = {
            "size": int(np.count_nonzero(truth)),
            "dice": dice(pred, truth),
        }
        if fg is not None and fg == reference_fg:
            out["reference"] = segmentation_metrics(pred, truth, reference=pred, spacing=data.spacing)
    return out
