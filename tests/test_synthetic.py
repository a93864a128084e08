"""Tests of the synthetic data generators (napari_conformal.testing.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_conformal.errors import ConformalError
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset, smooth_noise


def test_smooth_noise_is_periodic_gaussian_filter() -> None:
    """Equal to scipy's wrap-mode Gaussian filter of the same white noise, then standardised."""
    shape = (24, 30)
    white = np.random.default_rng(3).standard_normal((2, *shape))
    ref = ndimage.gaussian_filter(white, sigma=(0, 2.5, 2.5), mode="wrap", truncate=10.0)
    ref = (ref - ref.mean(axis=(1, 2), keepdims=True)) / ref.std(axis=(1, 2), keepdims=True)
    got = smooth_noise(np.random.default_rng(3), (2,), shape, 2.5)
    np.testing.assert_allclose(got, ref, atol=1e-8)
    np.testing.assert_allclose(got.mean(axis=(1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(got.std(axis=(1, 2)), 1, atol=1e-9)


@pytest.mark.parametrize("shape", [(32, 40), (12, 16, 20)])
def test_binary_blobs_layout(shape: tuple[int, ...]) -> None:
    images, samples, labels = binary_blobs_dataset(6, shape, n_samples=3, seed=1)
    assert images.shape == (6, *shape) and images.dtype == np.float32
    assert samples.shape == (6, 3, 2, *shape) and samples.dtype == np.float32
    assert labels.shape == (6, *shape) and np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1}
    assert all(labels[i].any() for i in range(6))
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-6)
    assert samples.min() >= 0 and samples.max() <= 1
    assert np.all(np.isfinite(images))


def test_binary_blobs_seeded() -> None:
    a = binary_blobs_dataset(3, (16, 16), seed=5)
    b = binary_blobs_dataset(3, (16, 16), seed=5)
    c = binary_blobs_dataset(3, (16, 16), seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_binary_blobs_truth_is_ellipse_union() -> None:
    """With one blob per image, the truth is one convex ellipse: it equals its own convex hull on the grid,
    and its bounding box is filled towards the centre."""
    _, _, labels = binary_blobs_dataset(5, (40, 40), max_blobs=1, seed=2)
    for y in labels:
        ys, xs = np.nonzero(y)
        # each row of a convex region is one contiguous run
        for row in np.unique(ys):
            cols = xs[ys == row]
            assert cols.max() - cols.min() + 1 == cols.size
        cy, cx = round(ys.mean()), round(xs.mean())
        assert y[cy, cx] == 1


def test_binary_blobs_model_informative_but_imperfect() -> None:
    """The mean probability ranks truth above background (AUC > 0.8) but Ŷ = S ≥ 0.5 makes errors."""
    _, samples, labels = binary_blobs_dataset(10, (32, 32), n_samples=4, seed=3)
    s0 = samples[:, :, 1].mean(axis=1)
    fg, bg = s0[labels == 1], s0[labels == 0]
    sub = np.random.default_rng(0).choice(bg, size=2000, replace=False)
    auc = np.mean(fg[:, None] > sub[None, :])
    assert auc > 0.8
    yhat = s0 >= 0.5
    assert np.mean(yhat[labels == 1]) < 0.99  # missed truth exists, so calibration is non-trivial
    assert np.any(yhat & (labels == 0))
    # samples differ from each other (the model is stochastic)
    assert np.std(samples[:, :, 1], axis=1).mean() > 0.01


@pytest.mark.parametrize("layout", ["nested", "adjacent"])
@pytest.mark.parametrize("shape", [(40, 48), (16, 20, 24)])
def test_lowrank_layout(layout: str, shape: tuple[int, ...]) -> None:
    images, samples, labels = lowrank_multiclass_dataset(
        4, shape, n_classes=3, n_samples=6, rank=2, layout=layout
    )
    assert images.shape == (4, *shape) and images.dtype == np.float32
    assert samples.shape == (4, 6, 3, *shape) and samples.dtype == np.float32
    assert labels.shape == (4, *shape)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_lowrank_samples_have_rank_k() -> None:
    """log-softmax, centred over labels, is the logit up to a per-pixel constant: after removing the
    mean over samples the T × (L·S) matrix has rank ≤ K."""
    t, k = 12, 3
    _, samples, _ = lowrank_multiclass_dataset(2, (24, 24), n_classes=4, n_samples=t, rank=k, seed=9)
    for i in range(2):
        logp = np.log(samples[i].astype(np.float64))
        logits = logp - logp.mean(axis=1, keepdims=True)
        centred = (logits - logits.mean(axis=0)).reshape(t, -1)
        sv = np.linalg.svd(centred, compute_uv=False)
        assert sv[k] < 1e-4 * sv[0]
        assert sv[k - 1] > 1e-2 * sv[0]


def test_lowrank_truth_from_the_same_model() -> None:
    """The truth agrees with the samples' argmax where the samples agree among themselves,
    and varies where they disagree (it is one more draw, not the mean)."""
    _, samples, labels = lowrank_multiclass_dataset(8, (32, 32), n_classes=3, n_samples=30, rank=3, seed=4)
    hard = samples.argmax(axis=2)  # (N, T, *S)
    unanimous = np.all(hard == hard[:, :1], axis=1)
    assert np.mean(labels[unanimous] == hard[:, 0][unanimous]) > 0.99
    # where samples disagree, the truth matches a random sample about as often as two samples match
    dis = ~unanimous
    match_truth = np.mean(labels[dis] == hard[:, 0][dis])
    match_samples = np.mean(hard[:, 1][dis] == hard[:, 0][dis])
    assert abs(match_truth - match_samples) < 0.05


def test_lowrank_nested_order() -> None:
    """Nested layout: the innermost class never touches the background in the mean segmentation."""
    _, samples, _ = lowrank_multiclass_dataset(3, (48, 48), n_classes=3, n_samples=4, amplitude=0.0, seed=1)
    mean_seg = samples.mean(axis=1).argmax(axis=1)
    for seg in mean_seg:
        inner = seg == 2
        assert inner.any()
        grown = ndimage.binary_dilation(inner)
        assert not np.any(grown & (seg == 0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: binary_blobs_dataset(2, (4, 4)), "shape"),
        (lambda: binary_blobs_dataset(2, (16,)), "shape"),
        (lambda: binary_blobs_dataset(0, (16, 16)), "n must"),
        (lambda: binary_blobs_dataset(2, (16, 16), radius_range=(0.3, 0.6)), "radius_range"),
        (lambda: lowrank_multiclass_dataset(2, (16, 16), n_classes=1), "n_classes"),
        (lambda: lowrank_multiclass_dataset(2, (16, 16), layout="rings"), "layout"),
        (lambda: lowrank_multiclass_dataset(2, (16, 16), rank=0), "rank"),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises(ConformalError, match=match):
        call()


@pytest.mark.parametrize("layout", ["nested", "adjacent"])
@pytest.mark.parametrize("shape", [(8, 8), (12, 12, 12)])
def test_lowrank_small_grids(shape, layout):
    """Grids below 15 pixels used to leave no room for a centre (numpy 'high - low < 0')."""
    _, samples, labels = lowrank_multiclass_dataset(4, shape, n_classes=3, layout=layout, seed=1)
    assert samples.shape == (4, 20, 3, *shape)
    assert np.allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    assert labels.min() >= 0 and labels.max() <= 2
