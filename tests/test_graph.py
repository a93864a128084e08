"""kNN graph and transition matrix (core/graph.py), checked against brute force and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_conformal.core.rwcp.graph import (
    TransitionMatrix,
    default_chunk_size,
    kernel_weights,
    knn_cosine,
    transition_matrix,
)
from napari_conformal.errors import Cancelled, ConformalError


def _brute_force_knn(z: np.ndarray, k: int, include_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dense float64 cosine similarity, full sort: the reference for the chunked search."""
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn @ zn.T
    if not include_self:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


@pytest.mark.parametrize("chunk_size", [None, 1, 17, 500])
def test_knn_equals_brute_force(chunk_size):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((150, 8))
    idx, sim = knn_cosine(z, 7, device="cpu", chunk_size=chunk_size)
    ref_idx, ref_sim = _brute_force_knn(z, 7)
    assert idx.shape == (150, 7) and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-5)


def test_knn_with_self_loops_equals_brute_force():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((60, 5))
    idx, _ = knn_cosine(z, 4, device="cpu", include_self=True, chunk_size=7)
    ref_idx, _ = _brute_force_knn(z, 4, include_self=True)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    assert np.all(idx.numpy()[:, 0] == np.arange(60))  # every node is its own nearest neighbour


def test_transition_matrix_structure():
    """Row-stochastic, exactly k non-zeros per row, no self-loops, distinct columns."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((300, 12)).astype(np.float32)
    k = 20
    p = transition_matrix(z, k, rw_beta=50.0, device="cpu", chunk_size=64)
    assert isinstance(p, TransitionMatrix) and p.k == k and p.n_nodes == 300
    csr = p.to_scipy()
    csr.eliminate_zeros()
    nnz_per_row = np.diff(csr.indptr)
    assert np.all(nnz_per_row == k)
    np.testing.assert_allclose(np.asarray(csr.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert np.all(csr.diagonal() == 0)
    nb = p.neighbors.numpy()
    assert all(len(set(row)) == k for row in nb)
    assert np.all(p.weights.numpy() > 0)


def test_kernel_weights_hand_computed():
    """Three unit vectors in the plane at 0°, 60° and 90°; node 0's neighbours are 1 and 2."""
    z = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2], [0.0, 1.0]])
    p = transition_matrix(z, 2, rw_beta=2.0, device="cpu")
    # dist(0,1) = 1 − cos 60° = 0.5, dist(0,2) = 1 − cos 90° = 1
    w01, w02 = np.exp(-2.0 * 0.5), np.exp(-2.0 * 1.0)
    dense = p.to_scipy().toarray()
    np.testing.assert_allclose(dense[0], [0.0, w01 / (w01 + w02), w02 / (w01 + w02)], rtol=1e-6)
    # node 1 (60°): dist to node 0 is 1 − cos 60°, to node 2 is 1 − cos 30°
    d10, d12 = 0.5, 1 - np.cos(np.pi / 6)
    w10, w12 = np.exp(-2.0 * d10), np.exp(-2.0 * d12)
    np.testing.assert_allclose(dense[1], [w10 / (w10 + w12), 0.0, w12 / (w10 + w12)], rtol=1e-6)


def test_beta_zero_is_uniform_and_large_beta_keeps_k_entries():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((40, 3))
    p0 = transition_matrix(z, 5, rw_beta=0.0, device="cpu")
    np.testing.assert_allclose(p0.weights.numpy(), 0.2, atol=1e-15)
    sim = torch.tensor([[1.0, 0.0, -0.5]])
    w = kernel_weights(sim, rw_beta=200.0)  # exp(−300) is far below float32 range
    assert torch.all(w > 0) and w.dtype == torch.float64
    np.testing.assert_allclose(w.sum().item(), 1.0)
    assert w[0, 2].item() == pytest.approx(np.exp(-300.0) / (1 + np.exp(-200.0) + np.exp(-300.0)), rel=1e-9)


def test_matvec_equals_dense_product():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((50, 4))
    p = transition_matrix(z, 6, rw_beta=10.0, device="cpu")
    dense = p.to_scipy().toarray()
    s = rng.random(50)
    np.testing.assert_allclose(p.matvec(torch.from_numpy(s)).numpy(), dense @ s, rtol=1e-12)
    s2 = rng.random((50, 3))
    np.testing.assert_allclose(p.matvec(torch.from_numpy(s2)).numpy(), dense @ s2, rtol=1e-12)
    with pytest.raises(ConformalError, match="50 rows"):
        p.matvec(torch.zeros(49))


def test_zero_feature_vectors_give_finite_weights():
    z = np.zeros((10, 4))
    z[5:] = np.random.default_rng(0).standard_normal((5, 4))
    p = transition_matrix(z, 3, device="cpu")
    assert torch.isfinite(p.weights).all()
    np.testing.assert_allclose(p.weights.sum(1).numpy(), 1.0)


def test_default_chunk_size_bounds_the_block():
    assert default_chunk_size(4096) == 4096  # 4096² floats = 64 MiB
    assert default_chunk_size(32768) == 512
    assert default_chunk_size(10**9) == 1
    assert default_chunk_size(1) == 1


@pytest.mark.parametrize(
    ("features", "k", "match"),
    [
        (np.zeros((10, 3)), 10, "k=10"),  # only 9 other nodes
        (np.zeros((10, 3)), 0, "positive integer"),
        (np.zeros((10, 3)), 2.5, "positive integer"),
        (np.zeros(10), 2, r"shape \(M, C\)"),
        (np.zeros((1, 3)), 1, "at least 2 nodes"),
        (np.full((10, 3), np.nan), 2, "NaN"),
    ],
)
def test_bad_inputs(features, k, match):
    with pytest.raises(ConformalError, match=match):
        transition_matrix(features, k, device="cpu")


def test_bad_beta_and_chunk():
    z = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ConformalError, match="rw_beta"):
        transition_matrix(z, 2, rw_beta=-1.0, device="cpu")
    with pytest.raises(ConformalError, match="chunk_size"):
        knn_cosine(z, 2, device="cpu", chunk_size=0)


def test_progress_and_cancel():
    z = np.random.default_rng(0).standard_normal((100, 3))
    seen = []
    knn_cosine(z, 3, device="cpu", chunk_size=30, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(30, 100), (60, 100), (90, 100), (100, 100)]
    polls = []

    def stop_after_two() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        knn_cosine(z, 3, device="cpu", chunk_size=30, should_stop=stop_after_two)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 30])
def test_knn_with_k_close_to_m(chunk_size):
    """Late blocks see fewer than k columns of their own: earlier blocks must fill in."""
    z = np.random.default_rng(8).standard_normal((30, 6))
    idx, sim = knn_cosine(z, 29, device="cpu", chunk_size=chunk_size)
    ref_idx, ref_sim = _brute_force_knn(z, 29)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-5)
