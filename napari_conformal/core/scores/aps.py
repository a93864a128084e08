"""APS and RAPS scores: the probability mass ranked above each label (docs/algorithms.md#pixel-wise-sets).

At pixel p, with π_(1) ≥ … ≥ π_(L) the sorted probabilities and r(l) the rank of label l (ties go to
the lower label index)::

    APS   s_l = Σ_{j < r(l)} π_(j)
    RAPS  s_l = Σ_{j < r(l)} π_(j) + λ_reg · (r(l) − 1 − k_reg)^+

Label l is in the set at λ iff ``s_l ≤ λ``: eq. 12 of the CONSIGN paper with the crossing label
included, and every label when nothing exceeds λ.
"""

from __future__ import annotations

import math

import numpy as np

from napari_conformal.core.validation import check_probabilities
from napari_conformal.errors import ParameterError

__all__ = ["DEFAULT_REG_WEIGHT", "aps_scores", "default_k_reg"]

#: RAPS regularisation weight λ_reg of the CONSIGN experiments (config ``theta``).
DEFAULT_REG_WEIGHT = 0.05


def default_k_reg(n_labels: int) -> int:
    """RAPS rank offset of the CONSIGN experiments, ``k_reg = ⌊L/2⌋`` (1, 2, 4 for L = 2, 4, 8)."""
    return int(n_labels) // 2


def aps_scores(
    probs: np.ndarray,
    *,
    reg_weight: float = 0.0,
    k_reg: int = 0,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """APS / RAPS score of every label at every pixel.

    Parameters
    ----------
    probs : ndarray, shape (L, *S)
        Per-pixel class probabilities (X̄).
    reg_weight : float
        RAPS weight λ_reg ≥ 0 (0 gives APS).
    k_reg : int
        RAPS rank offset ≥ 0: ranks beyond ``k_reg + 1`` are penalised.
    u : ndarray, shape S, optional
        Uniform draws in [0, 1] for the randomised score; None for eq. 12.

    Returns
    -------
    ndarray of float64, shape (L, *S)
        ``s_l = c_{r(l)−1} + reg_weight·(r(l) − 1 − k_reg)^+ (+ u·π_(r(l)))``,
        with ``c_k`` the sum of the k largest probabilities (0-based rank
        ``r(l) − 1``; ties in probability go to the lower label index).
    """
    probs = check_probabilities(probs)
    if not (math.isfinite(reg_weight) and reg_weight >= 0):
        raise ParameterError(f"reg_weight must be a finite number >= 0, got {reg_weight}")
    if int(k_reg) != k_reg or k_reg < 0:
        raise ParameterError(f"k_reg must be an integer >= 0, got {k_reg}")
    n_labels = probs.shape[0]
    order = np.argsort(-probs, axis=0, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=0)
    ranked_scores = np.zeros_like(ranked)
    np.cumsum(ranked[:-1], axis=0, out=ranked_scores[1:])  # mass strictly above each rank
    if reg_weight > 0:
        penalty = reg_weight * np.maximum(np.arange(n_labels) - int(k_reg), 0)
        ranked_scores += penalty.reshape((n_labels,) + (1,) * (probs.ndim - 1))
    if u is not None:
        u = np.asarray(u, dtype=np.float64)
        if u.shape != probs.shape[1:]:
            raise ParameterError(f"u must have the spatial shape {probs.shape[1:]}, got {u.shape}")
        ranked_scores += u[None] * ranked
    scores = np.empty_like(ranked_scores)
    np.put_along_axis(scores, order, ranked_scores, axis=0)
    return scores
