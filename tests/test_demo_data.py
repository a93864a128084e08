"""Demo data: packaged real data, splits, demo models' quality, and demo stores built end to end.

The stores are built once per module from tiny subsets (``n_images=4``) into a temporary cache
(``NAPARI_CONFORMAL_CACHE``). Dice floors sit well below the numbers measured by
``scripts/train_demo_models.py`` (docs/demo_data.md), so they only fail for a broken model or
broken data handling, not for noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_conformal.core.metrics.segmentation import dice
from napari_conformal.demo_data import (
    DEMO_N_SAMPLES,
    build_demo_store,
    demo_cache_dir,
    demo_names,
    demo_store_path,
    get_demo,
    load_demo_data,
    splits,
)
from napari_conformal.demo_data.packaged import data_dir, read_npz, slice_positions, subset_counts, tile_grid
from napari_conformal.errors import Cancelled, ConformalError
from napari_conformal.io.store import open_store
from napari_conformal.models.demo import DEMO_MODELS, load_demo_model

NAMES = ["hippocampus-3d", "hippocampus-2d", "hippocampus-2d-fewshot", "brain-mri", "nuclei"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"
SUBSET = 4

#: Floors for the mean Dice of the eval-mode model on the first test images (measured values in
#: docs/demo_data.md are far above them).
DICE_FLOOR = {"hippocampus-3d": 0.7, "hippocampus-2d": 0.75, "hippocampus-2d-fewshot": 0.5, "brain-mri": 0.8, "nuclei": 0.8}
#: Mean MC-dropout std of the foreground probability must be this many times larger on boundary
#: pixels (≤ 2 px from a ground-truth or prediction edge) than on all other pixels.
BOUNDARY_RATIO = 5.0


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("NAPARI_CONFORMAL_CACHE")
    root = tmp_path_factory.mktemp("cache")
    os.environ["NAPARI_CONFORMAL_CACHE"] = str(root)
    yield root
    if old is None:
        del os.environ["NAPARI_CONFORMAL_CACHE"]
    else:
        os.environ["NAPARI_CONFORMAL_CACHE"] = old


@pytest.fixture(scope="module")
def built(cache):
    """name → path of a demo store built from the first SUBSET calibration/test images."""
    torch.set_num_threads(1)
    return {name: build_demo_store(name, n_images=SUBSET, device="cpu") for name in NAMES}


def foreground_dice(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean over foreground classes of core.metrics.dice (classes absent from both are skipped)."""
    scores = [dice(pred == c, truth == c) for c in range(1, n_classes)]
    return float(np.nanmean(scores))


# ------------------------------------------------------------------------------- packaged data


def test_packaged_data_is_small_and_plain_integer_arrays():
    files = [p for p in data_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10e6
    for npz in sorted(data_dir().glob("*.npz")):
        with np.load(npz, allow_pickle=False) as f:
            for key in f.files:
                assert f[key].dtype.kind in "iu", (npz.name, key, f[key].dtype)
    for name in NAMES:
        assert (data_dir() / get_demo(name).licence_file).is_file()
        assert (data_dir() / "models" / f"{name}.pt").stat().st_size < 2e6


@pytest.mark.parametrize(
    ("filename", "sizes"),
    [("hippocampus.npz", (60, 40, 30)), ("brain_mri.npz", (64, 36, 27)), ("nuclei.npz", (24, 24, 16))],
)
def test_splits_are_disjoint_with_the_documented_sizes(filename, sizes):
    data = read_npz(filename)
    parts = [set(data[f"{k}_ids"].tolist()) for k in ("train", "calibration", "test")]
    assert tuple(len(p) for p in parts) == sizes
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    if "ids" in data:  # only held-out items are packaged
        assert set(data["ids"].tolist()) == parts[1] | parts[2]


def test_split_functions_reproduce_the_packaged_splits():
    for filename, fn in (
        ("hippocampus.npz", splits.hippocampus_split),
        ("brain_mri.npz", splits.brain_split),
    ):
        data = read_npz(filename)
        every = np.concatenate([data["train_ids"], data["calibration_ids"], data["test_ids"]])
        got = fn(np.sort(every))
        for k in ("train", "calibration", "test"):
            assert got[k] == data[f"{k}_ids"].tolist()
    data = read_npz("nuclei.npz")
    got = splits.nuclei_split(64)
    for k in ("train", "calibration", "test"):
        assert got[k] == data[f"{k}_ids"].tolist()


def test_brain_training_and_held_out_slices_sit_in_different_blocks():
    data = read_npz("brain_mri.npz")
    train, held = data["train_ids"], np.concatenate([data["calibration_ids"], data["test_ids"]])
    z0 = min(train.min(), held.min())
    assert not set(((train - z0) // 8).tolist()) & set(((held - z0) // 8).tolist())


def test_subset_counts_by_hand():
    assert subset_counts(40, 30, None) == (40, 30)
    assert subset_counts(40, 30, 2) == (1, 1)
    assert subset_counts(40, 30, 7) == (4, 3)
    assert subset_counts(40, 30, 70) == (40, 30)
    assert subset_counts(24, 16, 39) == (23, 16)
    for bad in (1, 71, 2.5, True):
        with pytest.raises(ConformalError, match="n_images"):
            subset_counts(40, 30, bad)


def test_tile_grid_is_row_major():
    image = np.arange(16).reshape(4, 4)
    tiles = tile_grid(image, 2)
    np.testing.assert_array_equal(tiles[1], [[2, 3], [6, 7]])
    np.testing.assert_array_equal(tiles[2], [[8, 9], [12, 13]])


@pytest.mark.parametrize("name", NAMES)
def test_load_demo_data(name):
    spec = get_demo(name)
    data = load_demo_data(name)
    n_cal, n_test = len(data.split["calibration"]), len(data.split["test"])
    n = len(data.images)
    assert data.split["calibration"] == list(range(n_cal))
    assert data.split["test"] == list(range(n_cal, n)) and data.split["train"] == []
    assert data.images.dtype == np.float32 and data.images.ndim == spec.ndim + 1
    assert data.labels.shape == data.images.shape
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert set(np.unique(data.labels)) <= set(range(len(spec.label_names)))
    assert len(spec.label_names) == DEMO_MODELS[name].n_classes
    assert len(data.source_ids) == n and not set(data.source_ids) & set(data.train_source_ids)
    assert n_test >= 16 and n_cal >= 24
    for i in range(n):  # every image shows the structure
        assert data.labels[i].max() > 0


def test_hippocampus_2d_takes_evenly_spaced_slices_of_each_volume():
    """Every 2D item is slice ``k`` of its volume, ``k`` among :func:`slice_positions` of that volume."""
    volumes = load_demo_data("hippocampus-3d")
    by_id = {
        int(i): (img, lab)
        for i, img, lab in zip(volumes.source_ids, volumes.images, volumes.labels, strict=True)
    }
    slices = load_demo_data("hippocampus-2d", n_images=12)
    assert set(slices.source_ids) <= set(by_id)
    for case, k, lab, img in zip(slices.source_ids, slices.slices, slices.labels, slices.images, strict=True):
        vol_image, vol_label = by_id[int(case)]
        assert k in slice_positions(vol_label)
        np.testing.assert_array_equal(lab, vol_label[k])
        np.testing.assert_array_equal(img, vol_image[k])


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="raw hippocampus data not available")
def test_packaged_hippocampus_equals_the_raw_volumes_preprocessed():
    import nibabel as nib

    from napari_conformal.demo_data.sources import center_crop_or_pad, scale_to_uint8

    data = read_npz("hippocampus.npz")
    for k in (0, len(data["ids"]) - 1):
        case = int(data["ids"][k])
        raw = np.asarray(nib.load(SHARED / "imagesTr" / f"hippocampus_{case:03d}.nii.gz").dataobj)
        lab = np.asarray(nib.load(SHARED / "labelsTr" / f"hippocampus_{case:03d}.nii.gz").dataobj)
        np.testing.assert_array_equal(
            data["images"][k], center_crop_or_pad(scale_to_uint8(raw), (36, 52, 36))
        )
        np.testing.assert_array_equal(
            data["labels"][k], center_crop_or_pad(lab.astype(np.uint8), (36, 52, 36))
        )
        assert (data["labels"][k] > 0).sum() == (lab > 0).sum()  # cropping lost no label voxel


def test_center_crop_or_pad_by_hand():
    from napari_conformal.demo_data.sources import center_crop_or_pad

    a = np.arange(5)
    np.testing.assert_array_equal(center_crop_or_pad(a, (3,)), [1, 2, 3])
    np.testing.assert_array_equal(center_crop_or_pad(a, (8,)), [0, 0, 1, 2, 3, 4, 0, 0])


# ------------------------------------------------------------------------------- demo models


@pytest.mark.parametrize("name", NAMES)
def test_demo_model_reaches_its_dice_floor_on_held_out_images(name):
    data = load_demo_data(name)
    test = data.split["test"][:6]
    model = load_demo_model(name)
    n_classes = DEMO_MODELS[name].n_classes
    with torch.no_grad():
        logits = model(torch.from_numpy(data.images[test]).unsqueeze(1))
    pred = logits.argmax(1).numpy()
    scores = [foreground_dice(p, t, n_classes) for p, t in zip(pred, data.labels[test], strict=True)]
    assert np.mean(scores) > DICE_FLOOR[name], scores


def _boundary_band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    grown = ndimage.binary_dilation(mask, structure, iterations=width)
    shrunk = ndimage.binary_erosion(mask, structure, iterations=width, border_value=1)
    return grown & ~shrunk


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_spread_concentrates_on_boundaries(built, name):
    store = open_store(built[name])
    near, far = [], []
    for i in range(store.n_images):
        samples = store.samples(i)  # (T, L, *S)
        fg = 1.0 - samples[:, 0]  # foreground probability per sample
        spread = fg.std(axis=0)
        pred = samples.mean(axis=0).argmax(axis=0) > 0
        band = _boundary_band(store.label(i) > 0) | _boundary_band(pred)
        near.append(spread[band].mean())
        far.append(spread[~band].mean())
    assert np.mean(near) > BOUNDARY_RATIO * np.mean(far), (near, far)


# ------------------------------------------------------------------------------- demo stores


@pytest.mark.parametrize("name", NAMES)
def test_demo_store_end_to_end(built, name):
    spec = get_demo(name)
    store = open_store(built[name])
    store.validate(full=True)
    data = load_demo_data(name, n_images=SUBSET)
    assert built[name] == demo_store_path(name, SUBSET)
    assert store.n_images == SUBSET and store.n_samples == DEMO_N_SAMPLES
    assert store.n_labels == len(spec.label_names) and store.label_names == list(spec.label_names)
    assert store.spatial_shape == data.images.shape[1:] and store.ndim == spec.ndim
    assert store.spacing == spec.spacing and store.sampler == "mc-dropout"
    split = store.attrs["split"]
    assert split["train"] == []
    assert sorted(split["calibration"] + split["test"]) == list(range(SUBSET))
    assert split["calibration"] and split["test"]
    demo = store.attrs["demo"]
    assert demo["source_ids"] == data.source_ids and demo["name"] == name
    assert "CC BY-SA" in demo["attribution"] or name in ("brain-mri", "nuclei")
    for i in range(SUBSET):
        np.testing.assert_array_equal(store.label(i), data.labels[i])
        np.testing.assert_allclose(store.image(i), data.images[i])


def test_cached_store_is_reused_and_overwrite_rebuilds(built):
    path = built["nuclei"]
    stamp = (path / "zarr.json").stat().st_mtime_ns
    calls = []
    again = build_demo_store("nuclei", n_images=SUBSET, device="cpu", progress=lambda d, t: calls.append(d))
    assert again == path and calls == [] and (path / "zarr.json").stat().st_mtime_ns == stamp
    build_demo_store(
        "nuclei", n_images=SUBSET, device="cpu", overwrite=True, progress=lambda d, t: calls.append(d)
    )
    assert calls == [1, 2, 3, 4]
    open_store(path).validate(full=True)


def test_stale_cache_is_rebuilt(cache):
    path = build_demo_store("brain-mri", n_images=2, device="cpu")
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["demo"]["build_key"]["weights_sha256"] = "something else"
    meta.write_text(json.dumps(doc))
    calls = []
    build_demo_store("brain-mri", n_images=2, device="cpu", progress=lambda d, t: calls.append(d))
    assert calls == [1, 2]
    assert open_store(path).attrs["demo"]["build_key"]["weights_sha256"] != "something else"


def test_samples_do_not_depend_on_the_subset(built, cache):
    small = open_store(build_demo_store("nuclei", n_images=2, device="cpu"))
    big = open_store(built["nuclei"])
    ids_small = small.attrs["demo"]["source_ids"]
    ids_big = big.attrs["demo"]["source_ids"]
    assert ids_small[0] == ids_big[0]
    np.testing.assert_array_equal(small.samples(0), big.samples(0))


def test_explicit_path_is_not_clobbered(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_demo_store("nuclei", target, n_images=2, device="cpu")
    with pytest.raises(FileExistsError):
        build_demo_store("nuclei", target, n_images=2, device="cpu", overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"


def test_cancel_leaves_nothing(tmp_path):
    target = tmp_path / "cancelled.zarr"
    with pytest.raises(Cancelled):
        build_demo_store("nuclei", target, n_images=2, device="cpu", should_stop=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_names_and_cache_folder(cache, monkeypatch):
    assert demo_names() == NAMES
    assert demo_cache_dir() == cache / "demo"
    with pytest.raises(ConformalError, match="unknown demo"):
        build_demo_store("mnist")
    with pytest.raises(ConformalError, match="n_images"):
        build_demo_store("nuclei", n_images=1)
    monkeypatch.delenv("NAPARI_CONFORMAL_CACHE")
    import platformdirs

    assert demo_cache_dir() == Path(platformdirs.user_cache_dir("napari-conformal")) / "demo"
