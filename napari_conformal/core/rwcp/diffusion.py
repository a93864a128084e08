"""Random-walk diffusion of a probability map over the feature graph.

RW-CP (Gaillochet et al., eq. 9 and §4.2.2; docs/algorithms.md#diffusion)
moves the foreground probability S⁽⁰⁾ of the segmentation model to the
feature grid, applies the transition matrix n_step times and brings the
result back to the image grid::

    s⁽⁰⁾   = area-average of S⁽⁰⁾ onto the feature grid S'   (M = prod(S') nodes)
    s⁽ᵗ⁺¹⁾ = P s⁽ᵗ⁾,  t = 0 … n_step − 1                      (each node: weighted mean of its kNN)
    S⁽ᵗ⁾   = (bi/tri)linear upsampling of s⁽ᵗ⁾ to S, align_corners=False   (t ≥ 1)
    S⁽⁰⁾   = the input map itself (no step: nothing is resampled)

All steps are kept (on the small feature grid) so a viewer can show every
S⁽ᵗ⁾; :class:`Diffusion` upsamples a step only when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_conformal.core.progress import check_stop
from napari_conformal.core.rwcp.graph import TransitionMatrix
from napari_conformal.errors import ConformalError

__all__ = ["Diffusion", "diffuse", "from_grid", "random_walk", "to_grid"]


def _shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(s) for s in shape)
    if len(out) not in (2, 3) or min(out) < 1:
        raise ConformalError(f"{what} must be 2 or 3 positive sizes (Y, X) or (Z, Y, X), got {tuple(shape)}")
    return out


def to_grid(s: np.ndarray | torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
    """Area-average a map onto a coarser grid (adaptive average pooling).

    Parameters
    ----------
    s : array or tensor, shape (*S,) or (B, *S)
        Map(s) on the image grid, 2D or 3D.
    grid_shape : sequence of int
        S', the feature grid, with ``len(S') == len(S)``. A grid equal to S
        returns the input unchanged; non-divisible sizes average over
        overlapping windows (torch's adaptive pooling).

    Returns
    -------
    torch.Tensor, shape (*S',) or (B, *S'), float64
    """
    grid_shape = _shape(grid_shape, "grid_shape")
    t = torch.as_tensor(s).to(torch.float64)
    nd = len(grid_shape)
    batched = t.ndim == nd + 1
    if t.ndim not in (nd, nd + 1):
        raise ConformalError(
            f"map of shape {tuple(t.shape)} does not match a {nd}D feature grid {grid_shape}"
        )
    x = t if batched else t.unsqueeze(0)
    if tuple(x.shape[1:]) == grid_shape:
        out = x
    else:
        pool = F.adaptive_avg_pool2d if nd == 2 else F.adaptive_avg_pool3d
        out = pool(x.unsqueeze(0), grid_shape)[0]  # channels = batch
    return out if batched else out[0]


def from_grid(g: np.ndarray | torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Upsample grid map(s) to the image grid, bilinear (2D) or trilinear (3D).

    Parameters
    ----------
    g : array or tensor, shape (*S',) or (B, *S')
    out_shape : sequence of int
        S, with ``len(S) == len(S')``. ``align_corners=False`` as in the
        paper; a grid equal to S returns the input unchanged.

    Returns
    -------
    torch.Tensor, shape (*S,) or (B, *S), dtype of ``g`` (float64 for integers)
    """
    out_shape = _shape(out_shape, "out_shape")
    t = torch.as_tensor(g)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    nd = len(out_shape)
    if t.ndim not in (nd, nd + 1):
        raise ConformalError(f"grid map of shape {tuple(t.shape)} cannot be upsampled to {out_shape}")
    batched = t.ndim == nd + 1
    x = t if batched else t.unsqueeze(0)
    if tuple(x.shape[1:]) == out_shape:
        out = x
    else:
        mode = "bilinear" if nd == 2 else "trilinear"
        out = F.interpolate(x.unsqueeze(0), size=out_shape, mode=mode, align_corners=False)[0]
    return out if batched else out[0]


def random_walk(
    matrix: TransitionMatrix,
    s0: np.ndarray | torch.Tensor,
    n_step: int = 10,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """All iterates ``s⁽ᵗ⁾ = Pᵗ s⁽⁰⁾`` for t = 0 … n_step.

    Parameters
    ----------
    matrix : TransitionMatrix
        P, M × M.
    s0 : array or tensor, shape (M,)
        Values on the nodes.
    n_step : int
        Number of steps (≥ 0).
    progress : callable (done, total), optional
        Called after each step.
    should_stop : callable () -> bool, optional
        Polled before each step.

    Returns
    -------
    torch.Tensor, shape (n_step + 1, M), float64, on P's device
    """
    n_step = _check_n_step(n_step)
    s = torch.as_tensor(s0).to(device=matrix.device, dtype=torch.float64)
    if s.shape != (matrix.n_nodes,):
        raise ConformalError(
            f"the map has {tuple(s.shape)} values but the graph has {matrix.n_nodes} nodes; "
            "the map and the features must live on the same grid"
        )
    steps = torch.empty((n_step + 1, matrix.n_nodes), dtype=torch.float64, device=matrix.device)
    steps[0] = s
    for t in range(n_step):
        check_stop(should_stop)
        steps[t + 1] = matrix.matvec(steps[t])
        if progress is not None:
            progress(t + 1, n_step)
    return steps


def _check_n_step(n_step: int) -> int:
    if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 0:
        raise ConformalError(f"n_step must be an integer >= 0, got {n_step!r}")
    return int(n_step)


@dataclass
class Diffusion:
    """The diffused maps of one image, kept on the feature grid.

    Attributes
    ----------
    grid_steps : ndarray, shape (n_step + 1, *S'), float64
        ``s⁽ᵗ⁾`` on the feature grid; ``grid_steps[0]`` is the area-averaged S⁽⁰⁾.
    image_shape : tuple of int
        S, the grid the maps are returned on.
    base : ndarray, shape S, optional
        S⁽⁰⁾ on the image grid: step 0 is this map itself (not its down- and up-sampled copy), so
        zero steps leave the model's map unchanged on any feature grid. None: step 0 is resampled
        like the others.
    """

    grid_steps: np.ndarray
    image_shape: tuple[int, ...]
    base: np.ndarray | None = field(default=None, repr=False)
    _final: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_step(self) -> int:
        return int(self.grid_steps.shape[0]) - 1

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.grid_steps.shape[1:])

    def step(self, t: int) -> np.ndarray:
        """``S⁽ᵗ⁾`` on the image grid, shape (*S,), float32 (t may be negative, as in indexing)."""
        if not -self.n_step - 1 <= int(t) <= self.n_step:
            raise ConformalError(f"step t must lie in 0..{self.n_step}, got {t}")
        t = int(t) % (self.n_step + 1)
        if t == self.n_step:
            return self.final
        if t == 0 and self.base is not None:
            return np.asarray(self.base, dtype=np.float32)
        return from_grid(self.grid_steps[t], self.image_shape).to(torch.float32).numpy()

    @property
    def final(self) -> np.ndarray:
        """``S⁽ⁿ_step⁾`` on the image grid, shape (*S,), float32 (computed once)."""
        if self._final is None:
            if self.n_step == 0 and self.base is not None:
                up = np.asarray(self.base, dtype=np.float32)
            else:
                up = from_grid(self.grid_steps[-1], self.image_shape).to(torch.float32).numpy()
            self._final = np.ascontiguousarray(up)
        return self._final

    def all_steps(self) -> np.ndarray:
        """Every ``S⁽ᵗ⁾`` on the image grid, shape (n_step + 1, *S), float32."""
        out = from_grid(self.grid_steps, self.image_shape).to(torch.float32).numpy()
        if self.base is not None:
            out[0] = np.asarray(self.base, dtype=np.float32)
        return out


def diffuse(
    matrix: TransitionMatrix,
    s0: np.ndarray,
    grid_shape: Sequence[int],
    n_step: int = 10,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Diffusion:
    """Diffuse a probability map of the image grid over a feature-grid graph.

    Parameters
    ----------
    matrix : TransitionMatrix
        P over the ``prod(grid_shape)`` nodes of the feature grid, in C order.
    s0 : ndarray, shape (*S,)
        S⁽⁰⁾ on the image grid (values in [0, 1] for RW-CP, any finite value works).
    grid_shape : sequence of int
        S', same number of axes as S, each ≤ the matching size of S.
    n_step : int
        Steps of the walk.
    progress, should_stop
        As in :func:`random_walk`.

    Returns
    -------
    Diffusion
        Step 0 on the image grid is ``s0`` itself.
    """
    s0 = np.asarray(s0)
    grid_shape = _shape(grid_shape, "grid_shape")
    image_shape = _shape(s0.shape, "the probability map")
    if len(grid_shape) != len(image_shape):
        raise ConformalError(
            f"feature grid {grid_shape} and probability map {image_shape} have different numbers of axes"
        )
    if any(g > s for g, s in zip(grid_shape, image_shape, strict=True)):
        raise ConformalError(
            f"feature grid {grid_shape} is finer than the image {image_shape}; features must be on "
            "the image grid or a coarser one"
        )
    if int(np.prod(grid_shape)) != matrix.n_nodes:
        raise ConformalError(
            f"feature grid {grid_shape} has {int(np.prod(grid_shape))} nodes but the graph has "
            f"{matrix.n_nodes}"
        )
    if not np.all(np.isfinite(s0)):
        raise ConformalError("the probability map contains NaN or inf")
    coarse = to_grid(s0, grid_shape).reshape(-1)
    steps = random_walk(matrix, coarse, n_step, progress=progress, should_stop=should_stop)
    grid_steps = steps.reshape((steps.shape[0], *grid_shape)).cpu().numpy()
    base = np.array(s0, dtype=np.float64)
    base.flags.writeable = False
    return Diffusion(grid_steps=grid_steps, image_shape=image_shape, base=base)
