"""Small synthetic stores and calibrations shared by the widget tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_conformal.api import calibrate
from napari_conformal.io.indices import random_split
from napari_conformal.io.store import create_store
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

#: RW-CP parameters that keep the tests fast (weight-free features, a short walk)
FAST_RWCP = {"features": "multiscale", "n_step": 4, "device": "cpu"}


def binary_store(path: Path, n: int = 16, shape=(24, 24), seed: int = 0):
    """A binary store of ellipse blobs (every image has foreground)."""
    images, samples, labels = binary_blobs_dataset(n, shape, n_samples=6, seed=seed)
    return create_store(path, images, samples, labels, label_names=["background", "foreground"])


def multiclass_store(path: Path, n: int = 16, shape=(24, 24), seed: int = 0):
    """A 3-label store whose samples have low-rank variation."""
    images, samples, labels = lowrank_multiclass_dataset(n, shape, n_classes=3, n_samples=12, seed=seed)
    return create_store(path, images, samples, labels, label_names=["background", "wall", "cavity"])


def calibrated(store, method: str, *, alpha: float, nu: float | None = None, params=None, fraction=0.5, k=None):
    """Calibrate ``method`` on a fixed random split; returns (Calibration, cal, test)."""
    cal, test = random_split(store.n_images, fraction, 0)
    options = dict(params or {})
    if k is not None:
        options["k"] = k
    result = calibrate(store, method, alpha=alpha, nu=nu, cal_indices=cal, **options)
    return result, cal, test


def assert_same(a, b) -> None:
    """Exact equality of two arrays (shapes and values)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(a, b), f"{int(np.count_nonzero(a != b))} of {a.size} values differ"
