"""RW-CP features cached in the dataset store (docs/store.md#cached-rw-cp-features) and read by calibrate/evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_conformal import cli
from napari_conformal.api import (
    Calibration,
    cache_features,
    calibrate,
    evaluate,
    feature_cache_matches,
    iter_cache_features,
)
from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.errors import Cancelled, ConformalError
from napari_conformal.io.store import create_store, open_store
from napari_conformal.testing.synthetic import binary_blobs_dataset

N_IMAGES = 30
CAL = list(range(15))
ALPHA = 0.2
#: multiscale features on a 12×12 grid, a small graph: the file runs in seconds
PARAMS = {"features": "multiscale", "grid_stride": 2, "device": "cpu", "n_step": 3}
K = 5


def quantized_features(image: np.ndarray) -> np.ndarray:
    """2×2 block means of intensity and its square rounded to 1/64: exact in float16, as stored."""
    y, x = image.shape
    blocks = image[: y - y % 2, : x - x % 2].reshape(y // 2, 2, x // 2, 2).mean(axis=(1, 3))
    blocks = np.clip(blocks, -4, 4)
    return np.round(np.stack([blocks, blocks**2, np.ones_like(blocks)]) * 64) / 64


@pytest.fixture(scope="module")
def arrays():
    return binary_blobs_dataset(N_IMAGES, (24, 24), n_samples=3, seed=5)


@pytest.fixture
def store_path(tmp_path: Path, arrays) -> Path:
    images, samples, labels = arrays
    path = tmp_path / "data.zarr"
    create_store(path, images, samples, labels, spacing=(1.0, 1.0), sampler="test")
    return path


def _calibrate(store, **params):
    return calibrate(store, "rwcp", alpha=ALPHA, k=K, cal_indices=CAL, **{**PARAMS, **params})


def _fp16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float16).astype(np.float32)


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- (a) the cache gives what the stored (float16) features give ------------------------------------


def test_cached_run_equals_the_stored_features_by_hand(store_path: Path):
    store = open_store(store_path, mode="r+")
    fresh = _calibrate(store)
    fresh_metrics = evaluate(store, fresh)
    seen = []
    info = cache_features(store, "rwcp", **PARAMS, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, N_IMAGES) for i in range(N_IMAGES + 1)]
    assert info == store.features_info
    assert info["extractor"] == make_method("rwcp", **PARAMS).extractor.params()
    assert info["grid_shape"] == [12, 12] and store.feature_shape == (info["n_channels"], 12, 12)

    method = make_method("rwcp", k=K, **PARAMS)
    assert feature_cache_matches(store, method)
    cached = _calibrate(store)
    cached_metrics = evaluate(store, cached)
    assert cached.params == fresh.params  # the record names the extractor either way

    # by hand: the features as stored (float16) give exactly the cached run
    def prepare(i):
        feats = _fp16(method.compute_features(store.image(i)).features)
        return method.prepare(store.image(i), store.samples(i), features=feats)

    curves = [method.curve(prepare(i), store.label(i), alpha=ALPHA) for i in CAL]
    assert cached.lambda_hat == float(method.lambda_hat(curves, alpha=ALPHA))
    lam = cached.lambda_hat
    for row in cached_metrics["per_image"]:
        i = row["index"]
        expect = method.evaluate(
            prepare(i), store.label(i), lam, alpha=ALPHA, spacing=store.spacing, n_samples=[], seed=i
        )
        assert _same_rows([row], [{"index": i, **expect}])
    # and float16 rounding of the features moves the results only a little
    assert cached.lambda_hat == pytest.approx(fresh.lambda_hat, abs=0.02)
    for key in ("coverage", "dice"):
        assert cached_metrics["mean"][key] == pytest.approx(fresh_metrics["mean"][key], abs=0.02)


def test_float16_exact_features_give_identical_results(store_path: Path):
    """With features that float16 stores exactly, λ̂ and every metric are bit-identical."""
    store = open_store(store_path, mode="r+")

    def method():
        return RWCPMethod(k=K, extractor=quantized_features, device="cpu", n_step=3)

    fresh = calibrate(store, method(), alpha=ALPHA, cal_indices=CAL)
    cache_features(store, method())
    assert feature_cache_matches(store, method())
    cached = calibrate(store, method(), alpha=ALPHA, cal_indices=CAL)
    assert cached.lambda_hat == fresh.lambda_hat
    assert cached.to_dict()["curves"] == fresh.to_dict()["curves"]  # every calibration curve, bit for bit


# -- (b) the cache is read -------------------------------------------------------------------------


def test_calibrate_and_evaluate_read_the_cache(store_path: Path, monkeypatch):
    store = open_store(store_path, mode="r+")
    cache_features(store, "rwcp", **PARAMS)
    cached = _calibrate(store)
    cached_metrics = evaluate(store, cached)

    # no feature is computed while the cache matches
    def boom(self, image, **kw):
        raise AssertionError("features recomputed despite the cache")

    with monkeypatch.context() as m:
        m.setattr(RWCPMethod, "compute_features", boom)
        assert _calibrate(store).lambda_hat == cached.lambda_hat
        assert evaluate(store, cached)["mean"] == cached_metrics["mean"]

    # other values under the same extractor description change λ̂ and the metrics
    rng = np.random.default_rng(0)
    shape = store.feature_shape
    info = {"extractor": store.features_info["extractor"]}
    store.write_features((rng.normal(size=shape) for _ in range(N_IMAGES)), info=info, overwrite=True)
    other = _calibrate(store)
    assert other.lambda_hat != cached.lambda_hat
    assert evaluate(store, other)["per_image"] != cached_metrics["per_image"]


# -- (c) other extractor settings ignore the cache -------------------------------------------------


def test_other_extractor_settings_ignore_the_cache(store_path: Path, tmp_path: Path, arrays):
    store = open_store(store_path, mode="r+")
    before = {g: _calibrate(store, grid_stride=g).lambda_hat for g in (2, 4)}
    cache_features(store, "rwcp", **PARAMS)  # grid_stride 2
    assert not feature_cache_matches(store, make_method("rwcp", **{**PARAMS, "grid_stride": 4}))
    assert _calibrate(store, grid_stride=4).lambda_hat == before[4]
    assert _calibrate(store, grid_stride=2).lambda_hat != before[2]  # (float16) cache used here

    # features written without an extractor description are never used
    rng = np.random.default_rng(1)
    shape = store.feature_shape
    store.write_features(
        (rng.normal(size=shape) for _ in range(N_IMAGES)), info={"by": "hand"}, overwrite=True
    )
    assert not feature_cache_matches(store, make_method("rwcp", **PARAMS))
    assert _calibrate(store).lambda_hat == before[2]

    # a store without a cache, and methods without features
    images, samples, labels = arrays
    bare = create_store(tmp_path / "bare.zarr", images, samples, labels)
    assert not feature_cache_matches(bare, make_method("rwcp", **PARAMS))
    assert not feature_cache_matches(store, make_method("crc"))


def test_distributed_scheduler_reads_the_cache(store_path: Path, monkeypatch):
    """The per-image function (with the cache decision) is pickled to the workers."""
    cloudpickle = pytest.importorskip("cloudpickle")

    from napari_conformal import api

    store = open_store(store_path, mode="r+")
    cache_features(store, "rwcp", **PARAMS)
    serial = _calibrate(store)
    shipped = []

    def fake_cluster(fn, indices, *, scheduler):
        fn = cloudpickle.loads(cloudpickle.dumps(fn))  # as a dask worker receives it
        shipped.append(scheduler)
        return (yield from api.iter_map_images(fn, indices))

    monkeypatch.setattr("napari_conformal.parallel.iter_map_on_cluster", fake_cluster)
    dist = calibrate(store, "rwcp", alpha=ALPHA, k=K, cal_indices=CAL, **PARAMS, scheduler="tcp://nowhere:1")
    assert shipped == ["tcp://nowhere:1"] and dist.lambda_hat == serial.lambda_hat


# -- iter_cache_features: partial updates, cancelling, errors --------------------------------------


def test_recompute_some_images_keeps_the_others(store_path: Path):
    store = open_store(store_path, mode="r+")
    cache_features(store, "rwcp", **PARAMS)
    rng = np.random.default_rng(2)
    shape = store.feature_shape
    garbage = [rng.normal(size=shape).astype(np.float16) for _ in range(N_IMAGES)]
    store.write_features(iter(garbage), info={"extractor": store.features_info["extractor"]}, overwrite=True)
    gen = iter_cache_features(store, "rwcp", **PARAMS, indices=[3, 7], overwrite=True)
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration:
        pass
    assert steps == [(0, 2), (1, 2), (2, 2)]
    method = make_method("rwcp", **PARAMS)
    for i in range(N_IMAGES):
        if i in (3, 7):
            expect = _fp16(method.compute_features(store.image(i)).features)
        else:
            expect = garbage[i].astype(np.float32)
        np.testing.assert_array_equal(store.features(i), expect)


def test_cancel_leaves_the_store_as_it_was(store_path: Path):
    store = open_store(store_path, mode="r+")
    steps = []
    with pytest.raises(Cancelled):
        cache_features(
            store,
            "rwcp",
            **PARAMS,
            progress=lambda d, t: steps.append(d),
            should_stop=lambda: len(steps) > 2,
        )
    assert not store.has_features and not open_store(store_path).has_features
    assert sorted(p.name for p in store_path.iterdir() if "feature" in p.name) == []

    cache_features(store, "rwcp", **PARAMS)
    before = [store.features(i) for i in range(N_IMAGES)]
    gen = iter_cache_features(store, "rwcp", **{**PARAMS, "grid_stride": 3}, overwrite=True)
    next(gen), next(gen)
    gen.close()  # closing the generator cancels too
    assert store.features_info["grid_shape"] == [12, 12]
    for i in range(N_IMAGES):
        np.testing.assert_array_equal(store.features(i), before[i])


def test_cache_errors(store_path: Path):
    with pytest.raises(ConformalError, match=r"read-only.*mode='r\+'"):
        cache_features(open_store(store_path), "rwcp", **PARAMS)
    store = open_store(store_path, mode="r+")
    with pytest.raises(ConformalError, match="'crc' does not use image features"):
        cache_features(store, make_method("crc"))
    with pytest.raises(ConformalError, match="'lac' does not use image features"):
        cache_features(store, "lac")
    with pytest.raises(ConformalError, match="no features from this extractor"):
        cache_features(store, "rwcp", **PARAMS, indices=[0, 1])
    with pytest.raises(ConformalError, match="out of range"):
        cache_features(store, "rwcp", **PARAMS, indices=[N_IMAGES])
    cache_features(store, "rwcp", **PARAMS)
    with pytest.raises(ConformalError, match="already has features; pass overwrite=True"):
        cache_features(store, "rwcp", **PARAMS)
    with pytest.raises(ConformalError, match="no features from this extractor"):
        cache_features(store, "rwcp", **{**PARAMS, "grid_stride": 3}, indices=[0], overwrite=True)
    # a cache with a grid finer than the image names the image
    info = {"extractor": store.features_info["extractor"]}
    store.write_features(np.ones((N_IMAGES, 2, 30, 30)), info=info, overwrite=True)
    with pytest.raises(ConformalError, match=r"image 0: feature grid \(30, 30\)"):
        _calibrate(store)


# -- (d) command line ------------------------------------------------------------------------------


def _fails(capsys, argv: list[str], needle: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-conformal: error:") and needle in err, err


def test_cli_features_then_calibrate_and_evaluate(store_path: Path, tmp_path: Path, capsys, monkeypatch):
    feat = ["features", str(store_path), "--features", "multiscale", "-o", "grid_stride=2", "--device", "cpu"]
    assert cli.main(feat) == 0
    err = capsys.readouterr().err
    assert f"for {N_IMAGES} images" in err and "12x12 grid" in err
    store = open_store(store_path)
    assert store.features_info["extractor"]["name"] == "multiscale"
    assert store.features_info["extractor"]["grid_stride"] == 2

    calib, metrics = tmp_path / "calib.json", tmp_path / "metrics.json"
    cal = [
        "calibrate",
        str(store_path),
        "--method",
        "rwcp",
        "--alpha",
        str(ALPHA),
        "--k",
        str(K),
        "--cal",
        "0-14",
    ]
    cal += ["--features", "multiscale", "-o", "grid_stride=2", "--steps", "3", "--device", "cpu"]

    def boom(self, image, **kw):
        raise AssertionError("features recomputed despite the cache")

    with monkeypatch.context() as m:
        m.setattr(RWCPMethod, "compute_features", boom)
        assert cli.main([*cal, "--out", str(calib), "-q"]) == 0
        assert (
            cli.main(["evaluate", str(store_path), "--calibration", str(calib), "--out", str(metrics), "-q"])
            == 0
        )
    record = json.loads(calib.read_text())
    assert record["lambda_hat"] == _calibrate(store).lambda_hat
    assert json.loads(metrics.read_text())["n_test"] == N_IMAGES - 15
    method = Calibration.load(calib).build_method("cpu")
    assert feature_cache_matches(store, method)

    # another grid recomputes (and so still works)
    assert cli.main([*cal[:-4], "-o", "grid_stride=4", "--steps", "3", "--out", str(calib), "-q"]) == 0

    # errors: one line, status 2, the store untouched
    _fails(capsys, [*feat, "-q"], "already has features; pass --overwrite")
    assert cli.main([*feat, "-o", "grid_stride=3", "--overwrite", "-q"]) == 0
    assert open_store(store_path).features_info["grid_shape"] == [8, 8]
    _fails(capsys, ["features", str(tmp_path / "nope.zarr"), "--features", "multiscale"], "store not found")
    _fails(
        capsys,
        ["features", str(store_path), "--features", "nope", "--overwrite"],
        "must be one of",
    )
    _fails(capsys, ["features", str(store_path), "--overwrite"], "--features")
    real_access = os.access
    monkeypatch.setattr(
        cli.os, "access", lambda p, mode: False if Path(p) == store_path else real_access(p, mode)
    )
    _fails(capsys, [*feat, "--overwrite"], "is not writable")
    monkeypatch.undo()
    assert open_store(store_path).features_info["grid_shape"] == [8, 8]


def test_cli_mismatched_cache_exits_2(store_path: Path, tmp_path: Path, capsys):
    """A cache that claims the extractor but holds features of another grid fails on one line."""
    store = open_store(store_path, mode="r+")
    info = {"extractor": make_method("rwcp", **PARAMS).extractor.params()}
    store.write_features(np.ones((N_IMAGES, 2, 30, 30)), info=info)
    argv = ["calibrate", str(store_path), "--method", "rwcp", "--alpha", "0.2", "--cal", "0-14"]
    argv += [
        "--features",
        "multiscale",
        "-o",
        "grid_stride=2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "c.json"),
    ]
    _fails(capsys, argv, "image 0: feature grid (30, 30)")
    assert not (tmp_path / "c.json").exists()


def test_cli_help_lists_features(capsys):
    assert cli.main(["--help"]) == 0
    assert "features" in capsys.readouterr().out
    assert cli.main(["features", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--overwrite" in out and "grid_stride" in out


def test_report_reads_the_feature_cache(store_path: Path):
    """``report`` prepares RW-CP through the cache too: garbage features under a matching record change λ̂."""
    from napari_conformal.report import build_report

    params = {"rwcp": {**PARAMS, "k": K}}
    kwargs = {"splits": 2, "n_cal": 15, "seed": 0}
    plain = build_report(open_store(store_path), ("rwcp",), (ALPHA,), params=params, **kwargs)
    store = open_store(store_path, mode="r+")
    info = cache_features(store, "rwcp", **PARAMS)
    rng = np.random.default_rng(1)
    garbage = rng.normal(size=(store.n_images, info["n_channels"], *info["grid_shape"])).astype(np.float32)
    store.write_features(garbage, info={"extractor": info["extractor"]}, overwrite=True)
    changed = build_report(open_store(store_path), ("rwcp",), (ALPHA,), params=params, **kwargs)
    lam = [[r["lambda_hat"] for r in res["runs"]] for res in (plain, changed)]
    assert lam[0] != lam[1]
