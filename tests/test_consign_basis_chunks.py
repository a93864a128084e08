"""The principal basis computed in column chunks (large volumes) is the one computed in one piece."""

from __future__ import annotations

import numpy as np
import torch

from napari_conformal.core.consign.basis import _basis_batch, compute_basis


def _samples(seed=0, t=7, shape=(3, 9, 10, 11)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, *shape))
    p = np.exp(logits)
    return torch.from_numpy((p / p.sum(axis=1, keepdims=True)).astype(np.float32))


def test_chunked_basis_equals_the_single_pass():
    x = torch.stack([_samples(0), _samples(1)]).reshape(2, 7, -1)  # (B, T, D), D = 2970
    whole = _basis_batch(x, 4, 1e-6, chunk=10**9)
    for chunk in (1, 97, 1000, 2969):
        parts = _basis_batch(x, 4, 1e-6, chunk=chunk)
        np.testing.assert_allclose(parts[0], whole[0], rtol=0, atol=1e-7)  # mean
        np.testing.assert_allclose(parts[1], whole[1], rtol=0, atol=1e-6)  # directions, same signs
        np.testing.assert_allclose(parts[2], whole[2], rtol=1e-10)  # σ
        np.testing.assert_allclose(parts[3], whole[3], rtol=1e-8, atol=1e-12)  # coefficients


def test_single_chunk_is_the_plain_formula():
    """One chunk: μ, the Gram matrix's eigenvectors and u_k = Mᵀv_k/σ_k, largest entry positive."""
    x = _samples(2)
    basis = compute_basis(x, 3)
    m = x.reshape(7, -1).double()
    mu = m.mean(dim=0)
    c = m - mu
    evals, evecs = torch.linalg.eigh(c @ c.T)
    v = evecs.flip(-1)[:, :3]
    sigma = evals.flip(-1)[:3].sqrt()
    u = (v / sigma).T @ c
    u *= torch.sign(torch.gather(u, 1, u.abs().argmax(dim=1, keepdim=True)))
    assert torch.equal(basis.mean, mu.float())
    np.testing.assert_allclose(basis.directions, u.float(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(basis.singular_values, sigma, rtol=1e-12)
