"""Stores larger than memory stream image by image, and distributed runs equal serial ones.

Streaming: a store whose samples take ten times a memory cap is written with the streaming
writer and calibrated, evaluated and reported on while ``tracemalloc`` watches every Python and
numpy allocation; the peak must stay under the cap. The same measurement of loading the samples
array whole exceeds the cap, so the check can fail.

Distributed (``slow``): a two-process ``LocalCluster`` gives bit-identical λ̂ and metrics to the
serial run for a pixel-wise method, RW-CP and (when registered) CONSIGN. CRC is covered by
``tests/test_cli.py``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_conformal.api import calibrate, evaluate
from napari_conformal.io.store import DatasetStore, create_store, open_store
from napari_conformal.report import build_report
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

N_IMAGES = 120
SHAPE = (64, 64)
T = 16
MiB = 2**20
#: memory cap for one streaming run; the store's samples (60 MiB as float32) take 10× this
CAP = 6 * MiB


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """120 images with float32 samples (T=16, L=2, 64×64): 60 MiB of samples, written one by one.

    Twelve distinct images are cycled (the test itself never holds the store). Small single
    blobs keep the calibration curves (|Y| numbers per image) small beside the samples, so the
    peak measures the streaming of the store rather than the size of the curves.
    """
    path = tmp_path_factory.mktemp("stream") / "big.zarr"
    store = DatasetStore.create_empty(path, N_IMAGES, SHAPE, T, 2, samples_dtype="float32")
    images, samples, labels = binary_blobs_dataset(
        12, SHAPE, T, max_blobs=1, radius_range=(0.05, 0.1), seed=7
    )
    for i in range(N_IMAGES):
        j = i % len(images)
        store.write_image(i, image=images[j], samples=samples[j], label=labels[j])
    return path


def _peak(fn: Callable[[], Any]) -> int:
    """Peak traced allocation (bytes above the level before the call) while ``fn`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def warm(big_store) -> None:
    """Import everything the runs import (module objects count as allocations) before measuring."""
    store = open_store(big_store)
    calib = calibrate(store, "crc", alpha=0.5, cal_indices=range(3))
    evaluate(store, calib, test_indices=[3])
    build_report(store, ("crc",), (0.5,), splits=1, n_cal=3, n_samples=())


def test_store_is_ten_times_the_cap(big_store):
    store = open_store(big_store)
    assert store.n_images * T * 2 * np.prod(SHAPE) * 4 >= 10 * CAP
    assert store.samples(0).nbytes * N_IMAGES >= 10 * CAP


def test_loading_whole_exceeds_the_cap(big_store, warm):
    """The measurement sees a whole-store load (so the streaming checks below can fail)."""
    store = open_store(big_store)
    assert _peak(lambda: np.asarray(store.array("samples")[:])) > 10 * CAP


def test_calibrate_streams(big_store, warm):
    store = open_store(big_store)
    peak = _peak(lambda: calibrate(store, "crc", alpha=0.1, cal_indices=range(N_IMAGES)))
    assert peak < CAP, f"calibrate peaked at {peak / MiB:.1f} MiB"


def test_evaluate_streams(big_store, warm):
    store = open_store(big_store)
    calib = calibrate(store, "crc", alpha=0.1, cal_indices=range(0, N_IMAGES, 3))
    peak = _peak(lambda: evaluate(store, calib))
    assert peak < CAP, f"evaluate peaked at {peak / MiB:.1f} MiB"


def test_report_streams(big_store, warm):
    store = open_store(big_store)
    peak = _peak(lambda: build_report(store, ("crc",), (0.1,), splits=1, n_samples=()))
    assert peak < CAP, f"report peaked at {peak / MiB:.1f} MiB"


# ------------------------------------------------------------------------------------------ distributed


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from napari_conformal.parallel import local_cluster

    c = local_cluster(n_workers=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    out = {}
    images, samples, labels = binary_blobs_dataset(16, (24, 24), 4, seed=5)
    out["binary"] = root / "binary.zarr"
    create_store(out["binary"], images, samples, labels)
    images, samples, labels = lowrank_multiclass_dataset(16, (24, 24), 3, 10, seed=6)
    out["multi"] = root / "multi.zarr"
    create_store(out["multi"], images, samples, labels)
    return out


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    def eq(x, y):
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, float) and np.isnan(x):
            return isinstance(y, float) and np.isnan(y)
        return x == y

    return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_distributed_rwcp_equals_serial(small_stores, cluster):
    store = open_store(small_stores["binary"])
    kwargs = {
        "alpha": 0.2,
        "k": 8,
        "cal_indices": range(8),
        "features": "multiscale",
        "grid_stride": 2,
        "n_step": 5,
    }
    serial = calibrate(store, "rwcp", **kwargs)
    dist = calibrate(store, "rwcp", scheduler=cluster, **kwargs)
    assert dist.lambda_hat == serial.lambda_hat
    ms = evaluate(store, serial)
    md = evaluate(store, serial, scheduler=cluster)
    assert _same_rows(md["per_image"], ms["per_image"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aps", "sacp"])
def test_distributed_pixelwise_equals_serial(small_stores, cluster, method):
    """λ̂ from api.calibrate, and λ̂ plus every per-image metric (sampled members included) from the report."""
    store = open_store(small_stores["multi"])
    serial = calibrate(store, method, alpha=0.2, nu=0.8, cal_indices=range(8))
    dist = calibrate(store, method, alpha=0.2, nu=0.8, cal_indices=range(8), scheduler=cluster)
    assert dist.lambda_hat == serial.lambda_hat
    args = {"nu": 0.8, "splits": 2, "n_cal": 8, "n_samples": (5, 20), "diversity_alphas": (0.2,)}
    rs = build_report(store, (method,), (0.2,), **args)
    rd = build_report(store, (method,), (0.2,), scheduler=cluster, **args)
    for a, b in zip(rs["runs"], rd["runs"], strict=True):
        assert a["lambda_hat"] == b["lambda_hat"]
        assert _same_rows(a["per_image"], b["per_image"])


@pytest.mark.slow
def test_distributed_consign_equals_serial(small_stores, cluster):
    store = open_store(small_stores["multi"])
    kwargs = {"alpha": 0.2, "nu": 0.8, "k": 3, "cal_indices": range(8)}
    serial = calibrate(store, "consign", **kwargs)
    dist = calibrate(store, "consign", scheduler=cluster, **kwargs)
    assert dist.lambda_hat == serial.lambda_hat
    ms = evaluate(store, serial, n_samples=(5,))
    md = evaluate(store, serial, n_samples=(5,), scheduler=cluster)
    assert _same_rows(md["per_image"], ms["per_image"])
