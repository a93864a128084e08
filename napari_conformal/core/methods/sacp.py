"""SACP: pixel-wise sets whose scores are aggregated over a spatial neighbourhood.

Spatial-aware conformal prediction (Liu et al. 2025) as the CONSIGN paper uses
it as a baseline (docs/algorithms.md#sacp); not the distance-weighted SACP of Bereska,
Karimi and Samavi (MIDL 2025), which shares the acronym. Two variants:

* ``"consign"`` (default; the CONSIGN reference code's APS branch): smooth the
  mean probabilities, then score with APS::

      X̃ = (1 − w)·X̄ + w·Avg_N(X̄),   w = 0.3,  N = 7×7 (2D) / 7×7×7 (3D) box incl. the centre

  ``X̃`` still sums to 1 at every pixel (the box mean is linear), so APS on it
  is eq. 12 with the labels ranked by ``X̃``.
* ``"liu"`` (Liu et al.'s ``fusion_scores``): APS scores first, then blend each
  label's score map with its mean over the 8-neighbourhood (26 in 3D; the
  3×3(×3) box without the centre)::

      s̃_l = (1 − w)·s_l + w·mean_{N \\ centre}(s_l),   w = 0.5

Both use ``scipy.ndimage.uniform_filter`` over the spatial axes only (one pass,
separable, no Python loop over pixels), with ``mode="reflect"`` (half-sample
symmetric: ``d c b a | a b c d``) at the border. The sets, the relaxed
ν-membership and the calibration are those of :mod:`~napari_conformal.core.methods.pixelwise`
(the lowest-scoring label of each pixel is always in the set, which matters
only for ``"liu"``). The CONSIGN code's RAPS branch (smoothing cumulative
scores per label permutation) is not implemented: its ranking is inconsistent
(docs/algorithms.md#sacp) and the paper reports APS ≈ RAPS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from napari_conformal.core.methods.base import Option, register
from napari_conformal.core.methods.pixelwise import STRUCTURE, PixelwiseMethod
from napari_conformal.core.scores.aps import aps_scores
from napari_conformal.core.scores.neighbourhood import (
    BORDER_MODES,
    VARIANTS,
    aggregate_scores,
    check_box,
    check_weight,
    smooth_probabilities,
)

__all__ = ["SACP"]


@register("sacp")
class SACP(PixelwiseMethod):
    """SACP baseline (APS on neighbourhood-aggregated scores).

    Options: ``variant`` ``"consign"`` (default) or ``"liu"`` (module docstring); ``weight`` the
    neighbourhood weight w (unset: 0.3 for consign, 0.5 for liu); ``size`` odd box side(s) (unset:
    7 for consign, 3 for liu; one per spatial axis allowed); ``mode`` border handling ("reflect").
    """

    title: ClassVar[str] = "SACP"
    colour: ClassVar[str] = "#17becf"
    options: ClassVar[tuple[Option, ...]] = (
        Option("variant", "choice", "consign", "which SACP: the CONSIGN paper's (consign) or Liu et al.'s (liu); not Bereska et al.'s (MIDL 2025)", choices=tuple(VARIANTS)),
        Option("weight", "float", None, "neighbourhood weight w (unset: 0.3 consign, 0.5 liu)", label="w", minimum=0.0, maximum=1.0, optional=True),
        Option("size", "ints", None, "odd neighbourhood side(s) in pixels (unset: 7 consign, 3 liu)", minimum=1, optional=True),
        Option("mode", "choice", "reflect", "border handling of the neighbourhood mean", choices=BORDER_MODES, label="border"),
        STRUCTURE,
    )
    variant: str
    weight: float | None
    size: int | list[int] | None
    mode: str

    def _setup(self) -> None:
        if self.size is not None:
            check_box(self.size, 1 if np.ndim(self.size) == 0 else len(self.size))  # odd positive sizes

    def _resolved(self) -> tuple[float, int | Sequence[int]]:
        default_weight, default_size, _ = VARIANTS[self.variant]
        weight = default_weight if self.weight is None else self.weight
        return check_weight(weight), default_size if self.size is None else self.size

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """SACP scores of the chosen variant, shape (L, *S)."""
        weight, size = self._resolved()
        if self.variant == "consign":
            return aps_scores(smooth_probabilities(probs, weight, size, mode=self.mode))
        return aggregate_scores(aps_scores(probs), weight, size, mode=self.mode)
