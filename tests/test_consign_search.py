"""CONSIGN coverage search and curves: exact evaluators, monotone curves, λ̂ behaviour, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_conformal.core.consign.basis import compute_bases
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.curves import CoverageCurve, CurveSet, IncompleteCurvesError
from napari_conformal.core.consign.members import segment
from napari_conformal.core.consign.restricted import build_restricted_batch
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig, lambda_grid, search_curves
from napari_conformal.core.metrics.accuracy import labelwise_accuracy
from napari_conformal.errors import (
    CalibrationError,
    InsufficientCalibrationError,
    LambdaMaxReachedError,
    StoreValidationError,
)
from napari_conformal.testing.phantom import cardiac_phantom

FAST = {"lambda_max": 2.0, "ratio": 1.15, "lhs_points": 32, "lhs_per_block": 16}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    _, samples, labels = cardiac_phantom(10, (32, 32), n_labels=4, n_samples=10, rank=3, size=2.0, seed=4)
    return samples, labels


@pytest.fixture(scope="module")
def bases(data):
    return compute_bases(data[0], 4)


@pytest.fixture(scope="module")
def searched(data, bases):
    box = make_box(bases, 0.1)
    search = CoverageSearch(bases, list(data[1]), box, SearchConfig(nu_max=0.9, **FAST))
    search.run()
    return search, box


def _batch(bases, labels, box, lam):
    from napari_conformal.core.consign.intervals import flip_lambda

    frees, centres, truths = [], [], []
    for i, b in enumerate(bases):
        lab, flip = flip_lambda(b, box[i])
        frees.append(flip <= lam)
        centres.append(lab)
        truths.append(torch.from_numpy(labels[i].reshape(-1).astype(np.int64)))
    return build_restricted_batch(bases, truths, frees, centres)


def _exact_accuracy(basis, c: np.ndarray, truth: np.ndarray) -> float:
    """Label-wise accuracy of argmax(μ + Σ_k c_k u_k), evaluated naively in float64."""
    mu = basis.mean.numpy().astype(np.float64).reshape(basis.n_labels, -1)
    u = basis.directions.numpy().astype(np.float64).reshape(basis.k, basis.n_labels, -1)
    scores = mu + sum(float(c[k]) * u[k] for k in range(basis.k))
    return labelwise_accuracy(scores.argmax(axis=0).reshape(truth.shape), truth)


def test_restricted_accuracy_equals_full_accuracy(data, bases) -> None:
    labels = data[1]
    box = make_box(bases, 0.1)
    lam = 0.4
    batch = _batch(bases, labels, box, lam)
    rng = np.random.default_rng(0)
    lo, hi = box.bounds(lam)
    c = lo[:, None, :] + torch.from_numpy(rng.random((len(bases), 6, 4))) * (hi - lo)[:, None, :]
    fast = batch.hard_accuracy(c).numpy()
    for i, b in enumerate(bases):
        for s in range(6):
            assert fast[i, s] == pytest.approx(_exact_accuracy(b, c[i, s].numpy(), labels[i]), abs=1e-12)
            # the float32 slider rendering agrees away from float32 near-ties
            assert abs(labelwise_accuracy(segment(b, c[i, s]).numpy(), labels[i]) - fast[i, s]) < 0.02
    assert batch.n_free < labels[0].size  # the restriction is real


def test_soft_gradient_matches_autograd(data, bases) -> None:
    box = make_box(bases[:3], 0.1)
    batch = _batch(bases[:3], data[1][:3], box, 0.4)
    c = box.centre[:, None, :].repeat(1, 2, 1) + 0.3 * torch.randn(3, 2, 4, dtype=torch.float64)
    hard, soft, grad = batch.evaluate(c, 0.05)
    cf = c.to(torch.float32).requires_grad_(True)
    z = batch.scores(cf) / 0.05
    q = torch.softmax(z, dim=2)
    q_true = torch.gather(q, 2, batch.truth[:, None, None, :].expand(3, 2, 1, -1))[:, :, 0]
    auto_soft = (q_true * batch.weight[:, None, :]).sum(dim=2)
    (auto_grad,) = torch.autograd.grad(auto_soft.sum(), cf)
    np.testing.assert_allclose(
        soft.numpy() - batch.fixed_accuracy()[:, None].numpy(), auto_soft.detach().numpy(), atol=1e-5
    )
    np.testing.assert_allclose(grad.numpy(), auto_grad.numpy(), rtol=1e-3, atol=1e-4)
    assert torch.allclose(hard, batch.hard_accuracy(c))


def test_coordinate_sweep_finds_the_line_maximum(data, bases) -> None:
    labels = data[1]
    box = make_box(bases[:4], 0.1)
    lam = 0.5
    batch = _batch(bases[:4], labels[:4], box, lam)
    lo, hi = (x[:, None, :].repeat(1, 3, 1) for x in box.bounds(lam))
    rng = np.random.default_rng(2)
    c = lo + torch.from_numpy(rng.random((4, 3, 4))) * (hi - lo)
    for k in range(4):
        moved = batch.coordinate_sweep(c, lo, hi, k, box.centre)
        got = batch.hard_accuracy(moved)
        # brute force: 400 points along the segment
        ts = torch.linspace(0, 1, 400, dtype=torch.float64)
        line = c[:, :, None, :].repeat(1, 1, 400, 1)
        line[..., k] = lo[:, :, None, k] + ts * (hi - lo)[:, :, None, k]
        brute = batch.hard_accuracy(line.view(4, 3 * 400, 4)).view(4, 3, 400).amax(dim=2)
        assert torch.all(got >= brute - 1e-12)
        # only coordinate k moved, and it stayed in the box
        others = [j for j in range(4) if j != k]
        assert torch.equal(moved[..., others], c[..., others])
        assert torch.all(moved[..., k] >= lo[..., k]) and torch.all(moved[..., k] <= hi[..., k])


def test_descent_keeps_accuracy_and_does_not_grow_lambda(data, bases) -> None:
    box = make_box(bases[:4], 0.1)
    lam = 0.5
    batch = _batch(bases[:4], data[1][:4], box, lam)
    lo, hi = (x[:, None, :].repeat(1, 3, 1) for x in box.bounds(lam))
    c = lo + torch.rand(4, 3, 4, dtype=torch.float64) * (hi - lo)
    level = batch.hard_accuracy(c)
    for k in range(4):
        moved = batch.coordinate_sweep(c, lo, hi, k, box.centre, level=level)
        assert torch.all(batch.hard_accuracy(moved) >= level - 1e-12)
        assert torch.all(
            (moved[..., k] - box.centre[:, None, k]).abs()
            <= (c[..., k] - box.centre[:, None, k]).abs() + 1e-12
        )


def test_curves_are_monotone_and_verified(data, bases, searched) -> None:
    search, box = searched
    curves = search.curves()
    for i, curve in enumerate(curves.curves):
        assert np.all(np.diff(curve.lambdas) > 0) and np.all(np.diff(curve.accuracies) > 0)
        assert curve.lambdas[0] == 0.0  # the box centre is always evaluated
        for lam, acc, c in zip(curve.lambdas, curve.accuracies, curve.coefficients, strict=True):
            c_t = torch.from_numpy(c)
            assert (
                bool(box[i].contains(c_t, lam * (1 + 1e-9) + 1e-12))
                or lam >= float(box[i].lambda_of(c_t)) - 1e-12
            )
            assert acc == pytest.approx(_exact_accuracy(bases[i], c, data[1][i]), abs=1e-12)  # hard argmax
        grid = np.linspace(0, curve.searched_to, 50)
        values = curve.accuracy_at(grid)
        assert np.all(np.diff(values) >= 0)


def test_lambda_hat_grows_as_alpha_falls_or_nu_rises(searched) -> None:
    curves = searched[0].curves()
    nus = [0.6, 0.7, 0.8, 0.85]
    alphas = [0.4, 0.3, 0.2]
    table = np.array([[curves.lambda_hat(a, nu) for nu in nus] for a in alphas])
    assert np.all(np.diff(table, axis=1) >= 0)  # ν rises → λ̂ grows
    assert np.all(np.diff(table, axis=0) >= 0)  # α falls → λ̂ grows
    assert table[-1, -1] > table[0, 0]  # and not trivially constant


def test_lambda_hat_is_the_algorithm1_stopping_point(searched) -> None:
    """Brute force: walk a fine λ grid, count covered images, stop at the CRC rule."""
    curves = searched[0].curves()
    for alpha, nu in [(0.3, 0.7), (0.2, 0.8)]:
        n = curves.n
        allowed = int(np.floor((n + 1) * alpha - 1 + 1e-12))
        lam_i, _ = curves.per_image_lambda(nu)
        candidates = np.unique(lam_i[np.isfinite(lam_i)])
        walk = next(
            lam
            for lam in candidates
            if np.sum([c.accuracy_at(lam) > nu for c in curves.curves]) >= n - allowed
        )
        assert curves.lambda_hat(alpha, nu) == walk


def test_batched_and_per_image_search_agree(data, bases) -> None:
    box = make_box(bases[:4], 0.1)
    config = SearchConfig(nu_max=0.8, **FAST)
    together = search_curves(bases[:4], list(data[1][:4]), box, config)
    for i in range(4):
        alone = search_curves([bases[i]], [data[1][i]], box[i : i + 1], config)
        # an image's search does not depend on its batch (up to float64 round-off of BLAS kernels)
        np.testing.assert_allclose(alone.curves[0].lambdas, together.curves[i].lambdas, rtol=1e-12)
        np.testing.assert_array_equal(alone.curves[0].accuracies, together.curves[i].accuracies)


def test_membership_mode_matches_the_curve(data, bases, searched) -> None:
    search, box = searched
    curves = search.curves()
    lam_hat = curves.lambda_hat(0.2, 0.8)
    for i in range(4):
        single = CoverageSearch([bases[i]], [data[1][i]], box[i : i + 1], search.config)
        single.run(until_lambda=lam_hat, until_nu=0.8)
        covered = single.accuracy_at(0, lam_hat) > 0.8
        assert covered == (curves.curves[i].accuracy_at(lam_hat) > 0.8)


def test_progress_and_cancel(data, bases) -> None:
    from napari_conformal.errors import Cancelled

    box = make_box(bases[:3], 0.1)
    seen: list[tuple[int, int]] = []
    search = CoverageSearch(bases[:3], list(data[1][:3]), box, SearchConfig(nu_max=0.99, **FAST))
    search.run(progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and all(b[0] >= a[0] for a, b in itertools.pairwise(seen))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        CoverageSearch(bases[:3], list(data[1][:3]), box, SearchConfig(**FAST)).run(should_stop=stop)


def test_curve_set_hand_computed() -> None:
    def curve(lams, accs, searched=5.0, exhausted=True):
        lams, accs = np.asarray(lams, float), np.asarray(accs, float)
        return CoverageCurve(lams, accs, np.zeros((lams.size, 2)), searched, exhausted, 0.05, 5.0)

    curves = CurveSet.from_curves(
        [
            curve([0.0, 0.1], [0.5, 0.9]),
            curve([0.0, 0.2], [0.7, 0.85]),
            curve([0.0, 0.15, 0.3], [0.6, 0.8, 0.95]),
            curve([0.0, 0.4], [0.1, 0.81]),
            curve([0.0], [0.3]),
        ]
    )
    # λ_i(0.8) = 0.1, 0.2, 0.3, 0.4, inf (strict >: 0.8 itself does not count);
    # n = 5, α = 0.4 → m = ⌊6·0.4 − 1⌋ = 1 uncovered allowed → 4th smallest
    lam, unknown = curves.per_image_lambda(0.8)
    np.testing.assert_array_equal(lam, [0.1, 0.2, 0.3, 0.4, np.inf])
    assert not unknown.any()
    assert curves.lambda_hat(0.4, 0.8) == 0.4
    # ν = 0.84: 0.1, 0.2, 0.3, inf, inf; α = 0.5 → m = 2 → 3rd smallest
    assert curves.lambda_hat(0.5, 0.84) == 0.3
    with pytest.raises(LambdaMaxReachedError):  # ν = 0.84, α = 0.4 needs 4 covered, only 3 ever are
        curves.lambda_hat(0.4, 0.84)
    with pytest.raises(InsufficientCalibrationError):  # n = 5 < 1/0.1 − 1
        curves.lambda_hat(0.1, 0.8)
    # unfinished searches decide λ̂ only when they passed it
    done = [curve([0.0, 0.1], [0.5, 0.9])] * 4
    assert CurveSet.from_curves([*done, curve([0.0], [0.5], 0.2, False)]).lambda_hat(0.4, 0.8) == 0.1
    with pytest.raises(IncompleteCurvesError):
        CurveSet.from_curves([*done, curve([0.0], [0.5], 0.05, False)]).lambda_hat(0.4, 0.8)
    with pytest.raises(IncompleteCurvesError):
        CurveSet.from_curves([*done[:3], *[curve([0.0], [0.5], 0.2, False)] * 2]).lambda_hat(0.4, 0.8)


def test_bad_inputs(data, bases) -> None:
    _samples, labels = data
    box = make_box(bases[:2], 0.1)
    with pytest.raises(StoreValidationError, match=r"outside 0\.\.L-1"):
        CoverageSearch(bases[:2], [labels[0], labels[1] + 4], box)
    with pytest.raises(StoreValidationError, match="shape"):
        CoverageSearch(bases[:2], [labels[0], labels[1][:5]], box)
    with pytest.raises(CalibrationError):
        CoverageSearch(bases[:2], [labels[0]], box)
    with pytest.raises(CalibrationError, match="ratio"):
        SearchConfig(ratio=1.0)
    with pytest.raises(CalibrationError, match="lambda_min"):
        SearchConfig(lambda_min=3.0, lambda_max=1.0)
    grid = lambda_grid(SearchConfig(lambda_max=1.0, lambda_min=0.01, ratio=1.5))
    assert grid[0] == 0.01 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)


def test_lambda_max_reached(data, bases) -> None:
    box = make_box(bases, 0.1)
    curves = search_curves(
        bases, list(data[1]), box, SearchConfig(**{**FAST, "lambda_max": 0.02, "lambda_min": 0.01})
    )
    with pytest.raises(LambdaMaxReachedError, match="lambda_max"):
        curves.lambda_hat(0.1, 0.99)
