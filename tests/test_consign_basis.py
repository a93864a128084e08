"""CONSIGN per-image basis (eqs. 4–5) and box (eq. 6): brute-force comparisons and invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_conformal.core.consign.basis import coefficient_quantiles, compute_bases, compute_basis
from napari_conformal.core.consign.box import make_box
from napari_conformal.errors import CalibrationError, StoreValidationError


def _samples(t: int = 12, n_labels: int = 3, shape: tuple[int, ...] = (9, 11), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, n_labels, *shape))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("shape", [(9, 11), (4, 5, 6)])
def test_basis_matches_numpy_svd(shape: tuple[int, ...]) -> None:
    x = _samples(shape=shape)
    basis = compute_basis(x, 4)
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)  # rows of vt: right singular vectors
    np.testing.assert_allclose(basis.mean.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(basis.singular_values.numpy(), sv[:4], rtol=1e-6)
    u = basis.directions.numpy().astype(np.float64)
    for k in range(4):
        # same direction up to sign, and the sign rule: largest-magnitude entry positive
        cos = float(u[k] @ vt[k])
        assert abs(abs(cos) - 1.0) < 1e-5
        assert u[k][np.argmax(np.abs(u[k]))] > 0
    np.testing.assert_allclose(u @ u.T, np.eye(4), atol=1e-5)
    # γ_{k,t} = <u_k, s_t − μ>
    np.testing.assert_allclose(basis.coefficients.numpy(), u @ centred.T, atol=1e-5)
    assert basis.spatial_shape == shape and basis.n_labels == 3 and basis.k == 4 and basis.n_samples == 12


def test_batched_equals_single() -> None:
    xs = np.stack([_samples(seed=s) for s in range(3)])
    batch = compute_bases(xs, 3)
    for i in range(3):
        one = compute_basis(xs[i], 3)
        np.testing.assert_allclose(batch[i].directions.numpy(), one.directions.numpy(), atol=1e-6)
        np.testing.assert_allclose(batch[i].coefficients.numpy(), one.coefficients.numpy(), atol=1e-9)


def test_small_batches_give_the_same_bases() -> None:
    xs = np.stack([_samples(seed=s) for s in range(4)])
    big = compute_bases(xs, 2)
    small = compute_bases(xs, 2, batch_bytes=1)  # one image per batch
    for a, b in zip(big, small, strict=True):
        np.testing.assert_allclose(a.directions.numpy(), b.directions.numpy(), atol=1e-6)


def test_identical_samples_give_degenerate_directions() -> None:
    x = np.repeat(_samples(t=1), 6, axis=0)
    basis = compute_basis(x, 3)
    assert torch.all(basis.singular_values == 0)
    assert torch.all(basis.directions == 0)
    box = make_box(basis, 0.05)
    assert torch.all(box.half_width == 0)


def test_quantiles_are_type7() -> None:
    rng = np.random.default_rng(3)
    gamma = rng.normal(size=(4, 17))
    a, b = coefficient_quantiles(torch.from_numpy(gamma), 0.05)
    np.testing.assert_allclose(a.numpy(), np.quantile(gamma, 0.05, axis=1), rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), np.quantile(gamma, 0.95, axis=1), rtol=1e-12)


def test_box_formula_and_nesting() -> None:
    basis = compute_basis(_samples(), 3)
    box = make_box(basis, 0.1)
    gamma = basis.coefficients.numpy()
    a, b = np.quantile(gamma, 0.1, axis=1), np.quantile(gamma, 0.9, axis=1)
    sigma = basis.singular_values.numpy()
    lam = 0.37
    np.testing.assert_allclose(box.lower(lam).numpy(), (a + b) / 2 - lam * sigma * (b - a) / 2, rtol=1e-12)
    np.testing.assert_allclose(box.upper(lam).numpy(), (a + b) / 2 + lam * sigma * (b - a) / 2, rtol=1e-12)
    lams = np.linspace(0.0, 3.0, 31)
    for small, large in itertools.pairwise(lams):
        assert torch.all(box.lower(large) <= box.lower(small))
        assert torch.all(box.upper(large) >= box.upper(small))


def test_lambda_of_is_the_smallest_containing_box() -> None:
    basis = compute_basis(_samples(), 3)
    box = make_box(basis, 0.05)
    rng = np.random.default_rng(1)
    for _ in range(20):
        lam = float(rng.uniform(0.01, 2.0))
        c = box.lower(lam) + torch.from_numpy(rng.random(3)) * (box.upper(lam) - box.lower(lam))
        lam_c = float(box.lambda_of(c))
        assert lam_c <= lam * (1 + 1e-12)
        assert bool(box.contains(c, lam_c * (1 + 1e-9)))
        assert not bool(box.contains(c, lam_c * (1 - 1e-6)))


def test_bad_inputs_raise_clear_errors() -> None:
    x = _samples(t=4)
    with pytest.raises(CalibrationError, match="T >= k \\+ 1"):
        compute_basis(x, 4)
    bad = x.copy()
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(StoreValidationError, match="NaN"):
        compute_basis(bad, 2)
    with pytest.raises(StoreValidationError, match="shape"):
        compute_bases([x, x[:, :2]], 2)
    with pytest.raises(CalibrationError, match="integer"):
        compute_basis(x, 0)
    with pytest.raises(CalibrationError, match="quantile_level"):
        make_box(compute_basis(x, 2), 0.7)
