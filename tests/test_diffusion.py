"""Random-walk diffusion and grid resampling (core/diffusion.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_conformal.core.rwcp.diffusion import Diffusion, diffuse, from_grid, random_walk, to_grid
from napari_conformal.core.rwcp.graph import TransitionMatrix, transition_matrix
from napari_conformal.errors import Cancelled, ConformalError


def _identity(m: int) -> TransitionMatrix:
    return TransitionMatrix(
        torch.arange(m, dtype=torch.int64).unsqueeze(1), torch.ones((m, 1), dtype=torch.float64)
    )


def _random_matrix(m: int, k: int = 5, seed: int = 0) -> TransitionMatrix:
    z = np.random.default_rng(seed).standard_normal((m, 6))
    return transition_matrix(z, k, rw_beta=20.0, device="cpu")


@pytest.mark.parametrize("shape", [(12, 10), (5, 6, 7)])
def test_identity_matrix_leaves_the_map_unchanged(shape):
    s0 = np.random.default_rng(1).random(shape)
    d = diffuse(_identity(int(np.prod(shape))), s0, shape, n_step=4)
    assert d.grid_steps.shape == (5, *shape)
    for t in range(5):
        np.testing.assert_array_equal(d.grid_steps[t], s0)
    np.testing.assert_allclose(d.final, s0, rtol=1e-7)  # float32 output
    np.testing.assert_allclose(d.all_steps(), np.broadcast_to(s0, (5, *shape)), rtol=1e-7)


@pytest.mark.parametrize(
    ("shape", "grid"), [((32, 24), (8, 6)), ((30, 20), (7, 9)), ((9, 12, 10), (3, 4, 5))]
)
def test_constant_map_stays_constant(shape, grid):
    """Area-down, any row-stochastic P, linear-up: a constant survives all three."""
    s0 = np.full(shape, 0.37)
    d = diffuse(_random_matrix(int(np.prod(grid))), s0, grid, n_step=10)
    np.testing.assert_allclose(d.grid_steps, 0.37, atol=1e-12)
    np.testing.assert_allclose(d.all_steps(), 0.37, atol=1e-6)


def test_random_walk_equals_matrix_powers():
    p = _random_matrix(40, k=4, seed=2)
    dense = p.to_scipy().toarray()
    s0 = np.random.default_rng(3).random(40)
    steps = random_walk(p, s0, n_step=6).numpy()
    for t in range(7):
        np.testing.assert_allclose(steps[t], np.linalg.matrix_power(dense, t) @ s0, rtol=1e-10, atol=1e-14)


def test_maximum_principle():
    """Each step averages neighbours: the range can only shrink."""
    p = _random_matrix(100, k=8, seed=4)
    s0 = np.random.default_rng(5).random(100)
    steps = random_walk(p, s0, n_step=10).numpy()
    assert np.all(np.diff(steps.max(axis=1)) <= 1e-15)
    assert np.all(np.diff(steps.min(axis=1)) >= -1e-15)


def test_to_grid_is_block_average():
    s = np.arange(16, dtype=np.float64).reshape(4, 4)
    # 2×2 blocks: (0+1+4+5)/4, (2+3+6+7)/4, (8+9+12+13)/4, (10+11+14+15)/4
    np.testing.assert_array_equal(to_grid(s, (2, 2)).numpy(), [[2.5, 4.5], [10.5, 12.5]])
    vol = np.zeros((2, 2, 2))
    vol[0, 0, 0] = 8.0
    np.testing.assert_array_equal(to_grid(vol, (1, 1, 1)).numpy(), [[[1.0]]])
    batch = np.stack([s, 2 * s])
    np.testing.assert_array_equal(to_grid(batch, (2, 2)).numpy()[1], [[5.0, 9.0], [21.0, 25.0]])


def test_from_grid_is_bilinear_with_half_pixel_centres():
    g = np.array([[0.0, 1.0], [0.0, 1.0]])
    # align_corners=False: output x ↦ source (x + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, 1.25 → clamp to [0, 1]
    up = from_grid(g, (2, 4)).numpy()
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]] * 2)
    vol = np.zeros((2, 1, 1))
    vol[1] = 1.0
    np.testing.assert_allclose(from_grid(vol, (4, 1, 1)).numpy().ravel(), [0.0, 0.25, 0.75, 1.0])


def test_diffusion_steps_are_consistent():
    shape, grid = (16, 12), (4, 3)
    s0 = np.random.default_rng(6).random(shape)
    d = diffuse(_random_matrix(12, k=3), s0, grid, n_step=3)
    assert isinstance(d, Diffusion) and d.n_step == 3 and d.grid_shape == grid
    everything = d.all_steps()
    assert everything.shape == (4, *shape) and everything.dtype == np.float32
    for t in range(4):
        np.testing.assert_array_equal(d.step(t), everything[t])
    np.testing.assert_array_equal(d.step(-1), d.final)
    np.testing.assert_allclose(d.grid_steps[0], to_grid(s0, grid).numpy())
    with pytest.raises(ConformalError, match=r"0\.\.3"):
        d.step(4)


def test_zero_steps_is_the_input_itself():
    """No step resamples nothing: step 0 on the image grid is S⁽⁰⁾, not its blurred grid copy."""
    shape, grid = (8, 8), (4, 4)
    s0 = np.random.default_rng(7).random(shape)
    d = diffuse(_random_matrix(16, k=3), s0, grid, n_step=0)
    np.testing.assert_array_equal(d.final, s0.astype(np.float32))
    np.testing.assert_allclose(d.grid_steps[0], to_grid(s0, grid).numpy())  # the walk starts from the grid copy
    assert not np.allclose(d.final, from_grid(to_grid(s0, grid), shape).numpy(), atol=1e-3)
    two = diffuse(_random_matrix(16, k=3), s0, grid, n_step=2)
    np.testing.assert_array_equal(two.step(0), s0.astype(np.float32))
    np.testing.assert_array_equal(two.all_steps()[0], s0.astype(np.float32))
    np.testing.assert_allclose(two.step(1), from_grid(two.grid_steps[1], shape).numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    ("s0", "grid", "nodes", "match"),
    [
        (np.zeros((8, 8)), (4, 4), 15, "16 nodes but the graph has 15"),
        (np.zeros((8, 8)), (16, 4), 64, "finer than the image"),
        (np.zeros((8, 8)), (2, 2, 2), 8, "numbers of axes"),
        (np.full((8, 8), np.nan), (4, 4), 16, "NaN"),
        (np.zeros(8), (8,), 8, "2 or 3"),
    ],
)
def test_bad_inputs(s0, grid, nodes, match):
    with pytest.raises(ConformalError, match=match):
        diffuse(_identity(nodes), s0, grid, n_step=1)


def test_bad_steps_and_cancel():
    p = _identity(4)
    with pytest.raises(ConformalError, match="n_step"):
        random_walk(p, np.zeros(4), n_step=-1)
    with pytest.raises(ConformalError, match="4 nodes"):
        random_walk(p, np.zeros(5), n_step=1)
    seen = []
    random_walk(p, np.zeros(4), n_step=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(Cancelled):
        random_walk(p, np.zeros(4), n_step=3, should_stop=lambda: True)
