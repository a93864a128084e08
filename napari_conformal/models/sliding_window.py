"""Sliding-window inference: a model with a fixed input size on volumes of any size.

:func:`window_starts` tiles one axis with windows of the patch size that overlap by a fraction;
:func:`sliding_window` runs a sampler on every window of an image and blends the windows' probabilities
with Gaussian weights (largest at a window's centre, σ = patch / 8 per axis), so seams between windows
do not show. A weighted mean of probabilities is again a probability vector at every voxel (the weights
are shared by the L classes), so every blended sample still sums to 1. An image smaller than the patch
along an axis is padded (with its minimum) up to the patch and the output cropped back.

The windows run one after another; for MC dropout each window's forward passes draw their own dropout
masks, so sample ``t`` is stitched from independent passes per window (with a seed, reproducibly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product

import torch

from napari_conformal.errors import ConformalError

__all__ = ["check_patch", "gaussian_weights", "sliding_window", "window_starts"]


def check_patch(patch_size: Sequence[int] | None, overlap: float) -> tuple[tuple[int, ...] | None, float]:
    """``(patch_size, overlap)`` checked: positive integer sizes, overlap in [0, 1)."""
    if patch_size is not None:
        if isinstance(patch_size, int | str) or len(patch_size) not in (2, 3):
            raise ConformalError(f"patch_size must be (Y, X) or (Z, Y, X) sizes, got {patch_size!r}")
        sizes = []
        for k, v in enumerate(patch_size):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConformalError(f"patch_size[{k}] must be a positive integer, got {v!r}")
            sizes.append(int(v))
        patch_size = tuple(sizes)
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ConformalError(f"overlap must lie in [0, 1), got {overlap!r}")
    return patch_size, overlap


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``range(size)`` with the given overlap.

    The step is ``max(1, floor(patch · (1 − overlap)))``; the last window ends exactly at ``size``. An axis
    no longer than the patch has the single start 0.
    """
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def gaussian_weights(patch: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Blending weights of one window, shape ``patch``: a Gaussian with σ = size / 8 per axis, max 1.

    The smallest weight is clipped to 1e-3 of the largest so that voxels near a window's border still
    count where no other window covers them.
    """
    axes = []
    for size in patch:
        x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        sigma = max(size / 8.0, 1e-6)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    w = w / w.max()
    return w.clamp_min(1e-3)


def sliding_window(
    sample: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
) -> torch.Tensor:
    """Samples of a whole image from a sampler that sees one window at a time.

    Parameters
    ----------
    sample : callable
        ``sample(window) -> (T, L, *patch)`` probabilities for an input window ``(1, C, *patch)``.
    x : torch.Tensor, shape (1, C, *S)
        The image (on the model's device).
    patch_size : sequence of int
        The model's input size, one entry per spatial axis.
    overlap : float
        Fraction of a window shared with its neighbour along each axis, in [0, 1).

    Returns
    -------
    torch.Tensor, shape (T, L, *S), float32
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != len(spatial):
        raise ConformalError(
            f"patch_size {patch} has {len(patch)} axes but the image has {len(spatial)} spatial axes {spatial}"
        )
    padded = tuple(max(s, p) for s, p in zip(spatial, patch, strict=True))
    if padded != spatial:
        pad: list[int] = []
        for s, p in zip(reversed(spatial), reversed(padded), strict=True):
            pad += [0, p - s]
        x = torch.nn.functional.pad(x, pad, mode="constant", value=float(x.min()))
    weights = gaussian_weights(patch, x.device)
    acc: torch.Tensor | None = None
    norm = torch.zeros(padded, dtype=torch.float32, device=x.device)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch, strict=True)]
    for corner in product(*starts):
        where = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        probs = sample(x[(slice(None), slice(None), *where)]).float()
        if acc is None:
            acc = torch.zeros((probs.shape[0], probs.shape[1], *padded), dtype=torch.float32, device=x.device)
        acc[(slice(None), slice(None), *where)] += probs * weights
        norm[where] += weights
    assert acc is not None
    out = acc / norm
    crop = tuple(slice(0, s) for s in spatial)
    return out[(slice(None), slice(None), *crop)]
