"""CONSIGN members: slider path vs a naive argmax, samples inside the box, always ⊆ member ⊆ possibly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_conformal.core.consign.basis import compute_basis
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.intervals import flip_lambda, label_regions
from napari_conformal.core.consign.members import (
    ConsignSet,
    principal_maps,
    sample_coefficients,
    sample_members,
    segment,
    segment_batch,
)
from napari_conformal.errors import ConformalError


def _samples(t: int, n_labels: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, n_labels, *shape)) + 2 * rng.normal(size=(1, n_labels, *shape))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _naive(basis, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax_l(μ + Σ_k c_k u_k) with explicit loops (float64), and the top-two gap."""
    mu = basis.mean.numpy().astype(np.float64).reshape(basis.n_labels, -1)
    u = basis.directions.numpy().astype(np.float64).reshape(basis.k, basis.n_labels, -1)
    scores = mu.copy()
    for k in range(basis.k):
        scores += float(c[k]) * u[k]
    labels = np.zeros(scores.shape[1], dtype=np.int64)
    best = scores[0].copy()
    for lab in range(1, basis.n_labels):
        better = scores[lab] > best
        labels[better] = lab
        best[better] = scores[lab][better]
    top2 = np.sort(scores, axis=0)[-2:]
    return labels.reshape(basis.spatial_shape), (top2[1] - top2[0]).reshape(basis.spatial_shape)


@pytest.mark.parametrize(("n_labels", "shape"), [(4, (16, 20)), (2, (6, 8, 10)), (3, (5, 6, 7))])
def test_slider_path_equals_naive_argmax(n_labels: int, shape: tuple[int, ...]) -> None:
    basis = compute_basis(_samples(10, n_labels, shape, seed=n_labels), 5)
    box = make_box(basis, 0.05)
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.3, 2.0):
        lo, hi = (x.numpy() for x in box.bounds(lam))
        for _ in range(5):
            c = lo + rng.random(5) * (hi - lo)
            fast = segment(basis, c).numpy()
            slow, gap = _naive(basis, c)
            clear = gap > 1e-5  # float32 vs float64 may differ only at near-ties
            assert clear.mean() > 0.99
            np.testing.assert_array_equal(fast[clear], slow[clear])
            assert fast.shape == shape


def test_segment_batch_matches_segment() -> None:
    basis = compute_basis(_samples(8, 3, (12, 12), seed=5), 4)
    rng = np.random.default_rng(1)
    cs = rng.normal(scale=2.0, size=(7, 4))
    batch = segment_batch(basis, cs, chunk_bytes=1)  # one member per chunk
    for j in range(7):
        np.testing.assert_array_equal(batch[j].numpy(), segment(basis, cs[j]).numpy())


def test_samples_lie_in_the_box_and_are_reproducible() -> None:
    basis = compute_basis(_samples(8, 3, (12, 12), seed=6), 4)
    box = make_box(basis, 0.05)
    cs = sample_coefficients(box, 0.5, 500, np.random.default_rng(2))
    lo, hi = (x.numpy() for x in box.bounds(0.5))
    assert np.all(cs >= lo) and np.all(cs <= hi)
    # uniform: each coordinate's mean is near the box centre
    np.testing.assert_allclose(cs.mean(axis=0), (lo + hi) / 2, atol=0.1 * np.max(hi - lo))
    a = sample_members(basis, box, 0.5, 20, 7).numpy()
    b = sample_members(basis, box, 0.5, 20, np.random.default_rng(7)).numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("n_labels", "shape"), [(2, (14, 14)), (4, (12, 13)), (3, (5, 6, 6))])
def test_always_inside_every_member_inside_possibly(n_labels: int, shape: tuple[int, ...]) -> None:
    basis = compute_basis(_samples(10, n_labels, shape, seed=11), 4)
    box = make_box(basis, 0.05)
    lam = 0.8
    regions = label_regions(basis, box, lam)
    members = sample_members(basis, box, lam, 300, 0).numpy().astype(np.int64)
    lo, hi = (x.numpy() for x in box.bounds(lam))
    corners = np.array(
        [
            [(hi if bit else lo)[k] for k, bit in enumerate(bits)]
            for bits in itertools.product((0, 1), repeat=4)
        ]
    )
    members = np.concatenate([members, segment_batch(basis, corners).numpy().astype(np.int64)])
    always, possibly = regions.always.numpy(), regions.possibly.numpy()
    for lab in range(n_labels):
        is_lab = members == lab
        assert np.all(is_lab[:, always[lab]])  # always ⊆ every member
        assert not np.any(is_lab[:, ~possibly[lab]])  # every member ⊆ possibly
    assert regions.uncertain().any()  # the test is not vacuous


def test_binary_possibly_is_exact() -> None:
    """For L = 2 the score difference is linear in c, so its range over the box is reached at corners."""
    basis = compute_basis(_samples(10, 2, (16, 16), seed=12), 3)
    box = make_box(basis, 0.05)
    lam = 0.6
    regions = label_regions(basis, box, lam)
    lo, hi = (x.numpy() for x in box.bounds(lam))
    corners = np.array(
        [
            [(hi if bit else lo)[k] for k, bit in enumerate(bits)]
            for bits in itertools.product((0, 1), repeat=3)
        ]
    )
    at_corners = segment_batch(basis, corners).numpy()
    reached = np.stack([(at_corners == lab).any(axis=0) for lab in range(2)])
    # a pixel is "possibly l" iff a corner labels it l (up to the rounding margin at near-ties)
    mu = basis.mean.numpy().reshape(2, -1)
    u = basis.directions.numpy().reshape(3, 2, -1)
    centre = box.centre.numpy()
    diff = (mu[1] - mu[0]) + centre @ (u[:, 1] - u[:, 0])
    radius = lam * box.half_width.numpy() @ np.abs(u[:, 1] - u[:, 0])
    clear = (np.abs(diff + radius) > 1e-4) & (np.abs(diff - radius) > 1e-4)
    np.testing.assert_array_equal(
        regions.possibly.numpy().reshape(2, -1)[:, clear], reached.reshape(2, -1)[:, clear]
    )
    np.testing.assert_array_equal(
        regions.always.numpy().reshape(2, -1)[:, clear], (~reached[::-1]).reshape(2, -1)[:, clear]
    )


def test_flip_lambda_agrees_with_always() -> None:
    basis = compute_basis(_samples(10, 3, (12, 12), seed=13), 4)
    box = make_box(basis, 0.05)
    labels, flip = flip_lambda(basis, box)
    for lam in (0.0, 0.2, 1.0, 5.0):
        always = label_regions(basis, box, lam).always.reshape(3, -1)
        fixed = flip.numpy() > lam
        own = always[labels, torch.arange(labels.numel())].numpy()
        np.testing.assert_array_equal(fixed, own)


def test_consign_set_and_principal_maps() -> None:
    basis = compute_basis(_samples(8, 3, (10, 12), seed=14), 4)
    the_set = ConsignSet(basis, make_box(basis, 0.05), 0.4)
    lo, hi = the_set.bounds()
    assert np.all(lo <= the_set.centre()) and np.all(the_set.centre() <= hi)
    maps = the_set.principal_maps()
    assert maps.shape == (4, 3, 10, 12)
    np.testing.assert_array_equal(maps.reshape(4, -1), basis.directions.numpy())
    assert principal_maps(basis).shape == (4, 3, 10, 12)
    assert the_set.sample(5, 0).shape == (5, 10, 12)
    np.testing.assert_array_equal(the_set.segment(the_set.centre()), segment(basis, the_set.centre()).numpy())
    with pytest.raises(ConformalError, match="shape"):
        the_set.segment(np.zeros(3))
    with pytest.raises(ConformalError):
        ConsignSet(basis, make_box(basis, 0.05), -1.0)
