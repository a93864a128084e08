"""LAC scores (Sadinle et al. 2019): one minus the probability of each label."""

from __future__ import annotations

import numpy as np

from napari_conformal.core.validation import check_probabilities

__all__ = ["lac_scores"]


def lac_scores(probs: np.ndarray) -> np.ndarray:
    """LAC score ``s_l = 1 − X̄_l`` of every label (Sadinle et al. 2019), shape (L, *S)."""
    return 1.0 - check_probabilities(probs)
