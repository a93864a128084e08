"""The kNN graph of feature vectors and its random-walk transition matrix P.

RW-CP (Gaillochet et al., eqs. 7–8; docs/algorithms.md#graph) links every node j
(a pixel or voxel of the feature grid) to its k most cosine-similar other
nodes ``N(j)`` and weights the edges with an exponential kernel::

    dist(z_j, z_l) = 1 − cos(z_j, z_l)
    w_jl = exp(−rw_beta · dist(z_j, z_l)),   l ∈ N(j)
    P_jl = w_jl / Σ_{m ∈ N(j)} w_jm          (0 outside N(j))

The graph is purely in feature space (no spatial term), directed (no
symmetrisation) and has no self-loops unless asked for. P is stored as two
(M, k) arrays: neighbour indices and row-normalised weights; every row has
exactly k entries, so memory is O(M·k).

The neighbour search runs on the torch device in row chunks: a chunk of
``c`` rows is compared with all M nodes (a ``c × M`` similarity block) and
only its top k survive, so peak memory is O(M·k + c·M) and the dense M × M
similarity never exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_conformal.core.device import resolve_device, run_with_oom_fallback
from napari_conformal.core.progress import check_stop
from napari_conformal.errors import ConformalError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "TransitionMatrix",
    "default_chunk_size",
    "kernel_weights",
    "knn_cosine",
    "transition_matrix",
]

#: bytes of one similarity block (chunk × M float32) when no chunk size is given
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TransitionMatrix:
    """Row-stochastic sparse M × M matrix with exactly k entries per row.

    Attributes
    ----------
    neighbors : torch.Tensor, shape (M, k), int64
        ``neighbors[j]`` are the column indices of row j (its kNN, most
        similar first), all distinct.
    weights : torch.Tensor, shape (M, k), float64
        ``P[j, neighbors[j, m]] = weights[j, m]``; each row sums to 1.
    """

    neighbors: torch.Tensor
    weights: torch.Tensor

    @property
    def n_nodes(self) -> int:
        """M, the number of nodes (rows)."""
        return int(self.neighbors.shape[0])

    @property
    def k(self) -> int:
        """Entries per row."""
        return int(self.neighbors.shape[1])

    @property
    def device(self) -> torch.device:
        return self.neighbors.device

    def to(self, device: torch.device | str) -> TransitionMatrix:
        """The same matrix on another device."""
        return TransitionMatrix(self.neighbors.to(device), self.weights.to(device))

    def matvec(self, s: torch.Tensor) -> torch.Tensor:
        """``P @ s`` for s of shape (M,) or (M, B); float64 on P's device."""
        s = torch.as_tensor(s, device=self.device, dtype=self.weights.dtype)
        if s.shape[0] != self.n_nodes:
            raise ConformalError(
                f"s must have {self.n_nodes} rows to multiply by P, got shape {tuple(s.shape)}"
            )
        gathered = s[self.neighbors]  # (M, k) or (M, k, B)
        if s.ndim == 1:
            return (gathered * self.weights).sum(dim=1)
        return (gathered * self.weights.unsqueeze(-1)).sum(dim=1)

    def to_scipy(self):
        """P as a ``scipy.sparse.csr_array`` (float64) for inspection and tests."""
        import scipy.sparse as sp

        m, k = self.neighbors.shape
        indptr = np.arange(0, m * k + 1, k, dtype=np.int64)
        return sp.csr_array(
            (
                self.weights.detach().cpu().numpy().ravel(),
                self.neighbors.detach().cpu().numpy().ravel(),
                indptr,
            ),
            shape=(m, m),
        )


def default_chunk_size(n_nodes: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per similarity block so that one block (rows × M float32) fits ``budget_bytes``."""
    return int(max(1, min(n_nodes, budget_bytes // (4 * max(n_nodes, 1)))))


def _as_node_features(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    z = torch.as_tensor(features)
    if z.ndim != 2:
        raise ConformalError(f"node features must have shape (M, C), got shape {tuple(z.shape)}")
    if z.shape[0] < 2 or z.shape[1] < 1:
        raise ConformalError(f"need at least 2 nodes and 1 feature channel, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        z = z.to(torch.float32)
    if not bool(torch.isfinite(z).all()):
        raise ConformalError("node features contain NaN or inf")
    return z


def _check_k(k: int, n_nodes: int, include_self: bool) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConformalError(f"k (neighbours per node) must be a positive integer, got {k!r}")
    available = n_nodes if include_self else n_nodes - 1
    if k > available:
        raise ConformalError(
            f"k={k} neighbours requested but the feature grid has only {n_nodes} nodes "
            f"({available} candidates per node); lower k or use a finer feature grid"
        )
    return int(k)


def knn_cosine(
    features: np.ndarray | torch.Tensor,
    k: int = 20,
    *,
    device: torch.device | str = "auto",
    chunk_size: int | None = None,
    include_self: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar nodes of every node, by chunked brute force.

    Parameters
    ----------
    features : array or tensor, shape (M, C)
        One feature vector per node (any scale; L2-normalised here, float32).
        A zero vector has cosine 0 with every node.
    k : int
        Neighbours per node, ``1 ≤ k ≤ M − 1`` (``≤ M`` with ``include_self``).
    device : torch.device or str
        Where the similarity blocks are computed (see :func:`resolve_device`).
    chunk_size : int, optional
        Rows per similarity block; default :func:`default_chunk_size` (64 MiB
        blocks). On CUDA out-of-memory it is halved, then the CPU is used.
    include_self : bool
        Whether a node may be its own neighbour (a "lazy" walk).
    progress : callable (done, total), optional
        Called after each block with rows done and M.
    should_stop : callable () -> bool, optional
        Polled between blocks; True cancels the search.

    Returns
    -------
    neighbors : torch.Tensor, shape (M, k), int64, on ``device``
        Neighbour indices, most similar first.
    similarity : torch.Tensor, shape (M, k), float32, on ``device``
        Their cosine similarities (non-increasing along each row).
    """
    z = _as_node_features(features)
    m = int(z.shape[0])
    k = _check_k(k, m, include_self)
    device = resolve_device(device)
    if chunk_size is None:
        chunk_size = default_chunk_size(m)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ConformalError(f"chunk_size must be a positive integer, got {chunk_size!r}")

    def run(dev: torch.device, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        zn = torch.nn.functional.normalize(z.to(device=dev, dtype=torch.float32), dim=1)
        out_idx = torch.empty((m, k), dtype=torch.int64, device=dev)
        out_sim = torch.empty((m, k), dtype=torch.float32, device=dev)
        for start in range(0, m, rows):
            check_stop(should_stop)
            stop = min(start + rows, m)
            block = zn[start:stop] @ zn.T  # (rows, M)
            if not include_self:
                local = torch.arange(stop - start, device=dev)
                block[local, local + start] = -torch.inf
            sim, idx = torch.topk(block, k, dim=1, largest=True, sorted=True)
            out_idx[start:stop] = idx
            out_sim[start:stop] = sim
            del block
            if progress is not None:
                progress(stop, m)
        return out_idx, out_sim

    return run_with_oom_fallback(run, device, int(chunk_size))


def kernel_weights(similarity: torch.Tensor, rw_beta: float = 50.0) -> torch.Tensor:
    """Row-normalised kernel weights ``exp(−β(1 − cos)) / Σ_row`` in float64.

    Computed as ``exp(β (cos − max_row cos))`` before normalising (the same
    ratio), so that no weight underflows to zero for any β the float64 range
    allows: rows keep exactly k positive entries.

    Parameters
    ----------
    similarity : torch.Tensor, shape (M, k)
        Cosine similarities of each node to its neighbours.
    rw_beta : float
        Kernel scale β > 0 (the paper's β = 50).

    Returns
    -------
    torch.Tensor, shape (M, k), float64
        Rows sum to 1.
    """
    beta = float(rw_beta)
    if not np.isfinite(beta) or beta < 0:
        raise ConformalError(f"rw_beta must be a finite number >= 0, got {rw_beta!r}")
    sim = similarity.to(torch.float64)
    logits = beta * (sim - sim.max(dim=1, keepdim=True).values)
    w = torch.exp(logits)
    return w / w.sum(dim=1, keepdim=True)


def transition_matrix(
    features: np.ndarray | torch.Tensor,
    k: int = 20,
    rw_beta: float = 50.0,
    *,
    device: torch.device | str = "auto",
    chunk_size: int | None = None,
    include_self: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TransitionMatrix:
    """Build RW-CP's row-stochastic kNN transition matrix P from node features.

    Parameters
    ----------
    features : array or tensor, shape (M, C)
        Node features (e.g. ``FeatureMap.nodes()``).
    k, device, chunk_size, include_self, progress, should_stop
        As in :func:`knn_cosine`.
    rw_beta : float
        Kernel scale β ≥ 0 of ``w = exp(−β · (1 − cos))``; 0 gives uniform
        weights over the k neighbours.

    Returns
    -------
    TransitionMatrix
        On ``device``; exactly k entries per row, rows sum to 1.
    """
    neighbors, sim = knn_cosine(
        features,
        k,
        device=device,
        chunk_size=chunk_size,
        include_self=include_self,
        progress=progress,
        should_stop=should_stop,
    )
    return TransitionMatrix(neighbors, kernel_weights(sim, rw_beta))
