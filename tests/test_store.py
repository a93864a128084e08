"""Tests of the dataset store (docs/store.md): round trips, per-image chunks, validation, safety."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_conformal.errors import ConformalError, StoreValidationError
from napari_conformal.io import store_write
from napari_conformal.io.store import DatasetStore, create_store, open_store


def make_data(seed=0, n=3, spatial=(5, 6), t=4, n_labels=3, dtype=np.float32):
    """Random valid images (N, *S), softmax samples (N, T, L, *S) and labels (N, *S)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, *spatial)).astype(np.float32)
    logits = rng.normal(size=(n, t, n_labels, *spatial))
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    labels = rng.integers(0, n_labels, size=(n, *spatial))
    return images, probs.astype(dtype), labels


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below root → (bytes, mtime_ns), plus every directory (to catch new empty dirs)."""
    out: dict[str, tuple[bytes, int]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else (b"<dir>", 0)
    return out


def zarr_rw(path: Path) -> zarr.Group:
    """Open a store with plain zarr, bypassing our checks, to plant defects."""
    return zarr.open_group(str(path), mode="r+", zarr_format=3)


# ---------------------------------------------------------------------------------------- round trips


def test_round_trip_2d(tmp_path):
    images, samples, labels = make_data(n=3, spatial=(5, 6), t=4, n_labels=3)
    path = tmp_path / "d.zarr"
    create_store(
        path,
        images,
        samples,
        labels,
        spacing=(0.5, 2.0),
        label_names=["bg", "liver", "tumour"],
        sampler="mc-dropout",
    )
    st = open_store(path)
    assert st.mode == "r"
    assert st.path == path
    assert (st.n_images, st.spatial_shape, st.ndim, st.n_samples, st.n_labels) == (3, (5, 6), 2, 4, 3)
    assert len(st) == 3
    assert st.spacing == (0.5, 2.0)
    assert st.label_names == ["bg", "liver", "tumour"]
    assert st.sampler == "mc-dropout"
    assert st.has_labels and not st.has_features
    attrs = st.attrs
    assert attrs["format"] == "napari-conformal-dataset" and attrs["version"] == 1
    attrs["sampler"] = "changed"  # a copy: the store is unaffected
    assert st.attrs["sampler"] == "mc-dropout"
    for i in range(3):
        img, lab, smp = st.image(i), st.label(i), st.samples(i)
        assert img.dtype == np.float32 and img.shape == (5, 6)
        assert lab.dtype == np.int64 and lab.shape == (5, 6)
        assert smp.dtype == np.float32 and smp.shape == (4, 3, 5, 6)
        np.testing.assert_array_equal(img, images[i])
        np.testing.assert_array_equal(lab, labels[i])
        np.testing.assert_array_equal(smp, samples[i])
        fg = st.foreground(i)
        assert fg.dtype == np.float32 and fg.shape == (5, 6)
        np.testing.assert_allclose(fg, samples[i, :, 1].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(st.foreground(i, cls=2), samples[i, :, 2].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(st.image(-1), images[2])
    st.validate(full=True)


def test_round_trip_3d_float16_without_labels(tmp_path):
    images, samples, _ = make_data(n=2, spatial=(3, 4, 5), t=3, n_labels=2, dtype=np.float16)
    path = tmp_path / "v.zarr"
    st = create_store(path, images, samples)
    assert st.mode == "r+"
    assert st.samples_dtype == np.float16
    st = open_store(path)
    assert (st.ndim, st.spatial_shape, st.n_samples, st.n_labels) == (3, (3, 4, 5), 3, 2)
    assert st.spacing == (1.0, 1.0, 1.0)
    assert st.label_names == ["background", "foreground"]
    assert st.sampler == "unknown"
    assert not st.has_labels
    np.testing.assert_array_equal(st.samples(1), samples[1].astype(np.float32))
    np.testing.assert_array_equal(st.image(0), images[0])
    with pytest.raises(StoreValidationError, match="labels"):
        st.label(0)
    with pytest.raises(StoreValidationError, match="features"):
        st.features(0)
    st.validate(full=True)


def test_float64_input_is_stored_float32_and_float16_rounding_passes_default_tolerance(tmp_path):
    images, samples, labels = make_data(seed=3, n=4, spatial=(8, 8), t=5, n_labels=4, dtype=np.float64)
    st = create_store(tmp_path / "a.zarr", images.astype(np.float64), samples, labels)
    assert st.samples_dtype == np.float32
    assert st.array("images").dtype == np.float32
    assert st.array("labels").dtype == np.uint8
    # float16 storage: per-value relative rounding ≤ 2^-11, so sums stay within the 1e-3 default.
    st16 = create_store(tmp_path / "b.zarr", images, samples, labels, samples_dtype="float16")
    assert st16.samples_dtype == np.float16
    st16.validate(full=True)
    np.testing.assert_allclose(st16.samples(0), samples[0], atol=2**-11)


# ------------------------------------------------------------------------------- chunking, lazy access


def test_one_chunk_per_image(tmp_path):
    images, samples, labels = make_data(n=3, spatial=(4, 5), t=2, n_labels=2)
    st = create_store(tmp_path / "c.zarr", images, samples, labels)
    assert st.array("images").chunks == (1, 4, 5)
    assert st.array("labels").chunks == (1, 4, 5)
    assert st.array("samples").chunks == (1, 2, 2, 4, 5)
    for name in ("images", "samples"):
        chunk_files = [p for p in (st.path / name / "c").rglob("*") if p.is_file()]
        assert len(chunk_files) == 3, name


def test_reading_one_image_touches_only_its_chunk(tmp_path):
    images, samples, labels = make_data(n=3, spatial=(4, 5), t=2, n_labels=2)
    st = create_store(tmp_path / "c.zarr", images, samples, labels)
    # Destroy image 1's chunks: images 0 and 2 must still read, image 1 must not.
    for name in ("images", "samples", "labels"):
        files = [f for f in (st.path / name / "c" / "1").rglob("*") if f.is_file()]
        assert len(files) == 1, name
        files[0].write_bytes(b"garbage")
    st = open_store(st.path)
    np.testing.assert_array_equal(st.image(0), images[0])
    np.testing.assert_array_equal(st.samples(2), samples[2])
    np.testing.assert_array_equal(st.label(2), labels[2])
    with pytest.raises(Exception):  # noqa: B017 - zarr's codec error type is not ours to pin
        st.image(1)


def test_index_errors(tmp_path):
    images, samples, _ = make_data(n=3)
    st = create_store(tmp_path / "i.zarr", images, samples)
    np.testing.assert_array_equal(st.image(-3), images[0])
    for bad in (3, -4, 100):
        with pytest.raises(IndexError, match=f"index {bad} is out of range.*3 images"):
            st.image(bad)
        with pytest.raises(IndexError):
            st.samples(bad)
    with pytest.raises(TypeError):
        st.image(1.0)
    with pytest.raises(TypeError):
        st.image(True)
    with pytest.raises(ValueError, match="cls"):
        st.foreground(0, cls=3)


# ------------------------------------------------------------------------------ create-time validation


def _bad_inputs():
    images, samples, labels = make_data(n=3, spatial=(5, 6), t=4, n_labels=3)

    def mod(arr, index, value):
        out = arr.copy()
        out[index] = value
        return out

    off = samples.copy()
    off[2, 1, :, 3, 4] *= 1.01  # sums to 1.01 at image 2
    neg = samples.copy()
    neg[1, 0, 0, 0, 0] = -0.25
    neg[1, 0, 1, 0, 0] += 0.25  # still sums to 1
    over = samples.copy()
    over[0, 0, :, 1, 1] = [1.5, 0.0, 0.0]
    return {
        "images NaN": (dict(images=mod(images, (1, 2, 3), np.nan)), r"images, image 1: .*NaN"),
        "images inf": (dict(images=mod(images, (2, 0, 0), np.inf)), r"images, image 2: .*inf"),
        "samples NaN": (dict(samples=mod(samples, (0, 1, 1, 0, 0), np.nan)), r"samples, image 0: .*NaN"),
        "samples inf": (dict(samples=mod(samples, (2, 0, 0, 0, 0), -np.inf)), r"samples, image 2: .*inf"),
        "samples sum": (dict(samples=off), r"samples, image 2: .*do not sum to 1"),
        "samples negative": (dict(samples=neg), r"samples, image 1: negative probability"),
        "samples above 1": (
            dict(samples=over),
            r"samples, image 0: probability 1.5 > 1 at \(t, l, \*pixel\) = \(0, 0, 1, 1\)",
        ),
        "labels too big": (dict(labels=mod(labels, (2, 4, 5), 3)), r"labels, image 2: value 3 .*0\.\.2"),
        "labels negative": (dict(labels=mod(labels, (0, 0, 1), -1)), r"labels, image 0: value -1"),
        "labels float": (dict(labels=labels.astype(np.float32)), r"labels: dtype float32"),
        "labels bool": (dict(labels=labels > 0), r"labels: dtype bool"),
        "samples int": (dict(samples=(samples > 0.5).astype(np.int64)), r"samples: dtype int64"),
        "images complex": (dict(images=images.astype(np.complex64)), r"images: dtype complex64"),
        "N images vs samples": (dict(images=images[:2]), r"mismatch between images and samples.*N="),
        "S images vs samples": (dict(samples=samples[..., :5]), r"mismatch between images and samples"),
        "images vs labels": (dict(labels=labels[:, :4]), r"mismatch between images and labels"),
        "labels N vs samples": (dict(labels=labels[:2]), r"mismatch between images and labels"),
        "samples axes": (dict(samples=samples[:, 0]), r"samples: expected shape \(N, T, L"),
        "images axes": (dict(images=images[0]), r"images: expected shape"),
        "one label": (dict(samples=np.ones_like(samples[:, :, :1])), r"L >= 2"),
        "spacing length": (dict(spacing=(1.0, 1.0, 1.0)), r"spacing has 3 entries"),
        "spacing value": (dict(spacing=(1.0, 0.0)), r"spacing\[1\]"),
        "label_names length": (dict(label_names=["a", "b"]), r"label_names has 2 entries"),
        "label_names dup": (dict(label_names=["a", "b", "a"]), r"distinct"),
        "features NaN": (
            dict(features=mod(np.zeros((3, 2, 2, 2), np.float32), (1, 0, 0, 0), np.nan)),
            r"features, image 1: .*NaN",
        ),
        "features overflow": (
            dict(features=np.full((3, 2, 2, 2), 1e6, np.float32)),
            r"features, image 0: .*inf",
        ),
        "features N": (dict(features=np.zeros((2, 2, 2, 2), np.float32)), r"images and features"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", sorted(BAD))
def test_create_rejects_bad_input_before_writing(tmp_path, case):
    images, samples, labels = make_data(n=3, spatial=(5, 6), t=4, n_labels=3)
    kwargs = dict(images=images, samples=samples, labels=labels)
    override, pattern = BAD[case]
    kwargs.update(override)
    path = tmp_path / "bad.zarr"
    with pytest.raises(StoreValidationError, match=pattern):
        create_store(path, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary directory


def test_tolerance_is_configurable(tmp_path):
    images, samples, labels = make_data(n=2)
    samples = samples * np.float32(1 + 5e-4)  # sums 1.0005: beyond the float32 default 1e-4
    with pytest.raises(StoreValidationError, match=r"off by more than 0\.0001"):
        create_store(tmp_path / "a.zarr", images, samples, labels)
    st = create_store(tmp_path / "a.zarr", images, samples, labels, atol=1e-3)
    st.validate(full=True, atol=1e-3)
    with pytest.raises(StoreValidationError, match="samples, image 0"):
        st.validate(full=True)
    st.validate(full=False)  # structure only: values are not read


# ------------------------------------------------------------------------------ on-disk validation


@pytest.fixture
def good_store(tmp_path):
    images, samples, labels = make_data(n=3, spatial=(5, 6), t=4, n_labels=3)
    path = tmp_path / "s.zarr"
    create_store(path, images, samples, labels, features=np.ones((3, 2, 2, 3), np.float32))
    return path


@pytest.mark.parametrize(
    ("index", "value", "array", "pattern"),
    [
        ((1, 2, 2), np.nan, "images", r"images, image 1: .*NaN"),
        ((2, 0, 0), np.inf, "images", r"images, image 2: .*inf"),
        ((2, 0, 1, 3, 3), 0.9, "samples", r"samples, image 2: .*do not sum to 1"),
        ((0, 3, 0, 4, 5), np.nan, "samples", r"samples, image 0: .*NaN"),
        ((1, 0, 0, 0, 0), -0.5, "samples", r"samples, image 1: negative"),
        ((2, 4, 4), 7, "labels", r"labels, image 2: value 7"),
        ((1, 1, 0, 0), np.inf, "features", r"features, image 1: .*inf"),
    ],
)
def test_full_validation_finds_planted_defect(good_store, index, value, array, pattern):
    zarr_rw(good_store)[array][index] = value
    st = open_store(good_store)  # structure is fine: opening works
    st.validate(full=False)
    with pytest.raises(StoreValidationError, match=pattern):
        st.validate(full=True)


def test_validation_progress_callback(good_store):
    calls = []
    open_store(good_store).validate(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("name", ["images", "samples"])
def test_missing_required_array(good_store, name):
    shutil.rmtree(good_store / name)
    with pytest.raises(StoreValidationError, match=f"{name}: required array is missing"):
        open_store(good_store)


def _replace_array(path, name, data):
    g = zarr_rw(path)
    del g[name]
    g.create_array(name, data=data, chunks=(1, *data.shape[1:]))


@pytest.mark.parametrize(
    ("name", "make", "pattern"),
    [
        ("images", lambda: np.zeros((3, 5, 6), np.float64), r"images: dtype float64, expected float32"),
        ("samples", lambda: np.zeros((3, 4, 3, 5, 6), np.float64), r"samples: dtype float64"),
        ("labels", lambda: np.zeros((3, 5, 6), np.float32), r"labels: dtype float32.*integer"),
        ("labels", lambda: np.zeros((3, 5, 6), bool), r"labels: dtype bool"),
        ("features", lambda: np.zeros((3, 2, 2, 3), np.int16), r"features: dtype int16"),
        ("images", lambda: np.zeros((2, 5, 6), np.float32), r"mismatch between images and samples"),
        ("samples", lambda: np.zeros((3, 4, 3, 5, 7), np.float32), r"mismatch between images and samples"),
        ("labels", lambda: np.zeros((3, 6, 5), np.uint8), r"mismatch between images and labels"),
        ("features", lambda: np.zeros((4, 2, 2, 3), np.float16), r"mismatch between images and features"),
        ("features", lambda: np.zeros((3, 2, 3), np.float16), r"features: expected shape"),
    ],
)
def test_structure_defects_detected_on_open(good_store, name, make, pattern):
    _replace_array(good_store, name, make())
    with pytest.raises(StoreValidationError, match=pattern):
        open_store(good_store)


@pytest.mark.parametrize(
    ("attrs", "pattern"),
    [
        ({"format": "something-else"}, r"attrs\['format'\] is 'something-else'"),
        ({"format": None}, r"attrs\['format'\] is missing"),
        ({"version": 2}, r"attrs\['version'\] is 2, newer"),
        ({"version": 0}, r"unknown store version"),
        ({"version": "1"}, r"attrs\['version'\] must be an integer"),
        ({"version": None}, r"attrs\['version'\] is missing"),
        ({"spacing": [1.0]}, r"attrs: spacing has 1 entries"),
        ({"spacing": [1.0, -2.0]}, r"spacing\[1\]"),
        ({"label_names": ["a", "b"]}, r"label_names has 2 entries"),
        ({"sampler": 3}, r"sampler must be a string"),
        ({"features": "yes"}, r"attrs\['features'\] must be a dict"),
    ],
)
def test_attribute_defects_detected_on_open(good_store, attrs, pattern):
    meta = good_store / "zarr.json"
    doc = json.loads(meta.read_text())
    for key, value in attrs.items():
        if value is None:
            doc["attributes"].pop(key)
        else:
            doc["attributes"][key] = value
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreValidationError, match=pattern):
        open_store(good_store)


def test_legacy_features_attr_without_array_is_ignored(good_store):
    """A group-level ``features`` record (older writers) without the array describes nothing."""
    shutil.rmtree(good_store / "features")
    meta = good_store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["features"] = {"n_channels": 2, "grid_shape": [2, 3], "extractor": "old"}
    meta.write_text(json.dumps(doc))
    st = open_store(good_store)
    assert not st.has_features and st.features_info is None and "features" not in st.attrs


def test_optional_attributes_default_when_absent(good_store):
    meta = good_store / "zarr.json"
    doc = json.loads(meta.read_text())
    for key in ("spacing", "label_names", "sampler"):
        doc["attributes"].pop(key)
    meta.write_text(json.dumps(doc))
    st = open_store(good_store)
    assert st.spacing == (1.0, 1.0)
    assert st.label_names == ["background", "class 1", "class 2"]
    assert st.sampler == "unknown"


def test_not_a_store(tmp_path):
    with pytest.raises(StoreValidationError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")
    assert not (tmp_path / "missing.zarr").exists()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreValidationError, match="is a file"):
        open_store(tmp_path / "file.txt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreValidationError, match=r"no zarr\.json"):
        open_store(tmp_path / "plain")
    zarr.create_array(str(tmp_path / "arr.zarr"), shape=(2,), dtype="f4")
    with pytest.raises(StoreValidationError, match="zarr array, not a dataset store"):
        open_store(tmp_path / "arr.zarr")
    zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    with pytest.raises(StoreValidationError, match="zarr v2"):
        open_store(tmp_path / "v2.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(StoreValidationError, match=r"attrs\['format'\] is missing"):
        open_store(tmp_path / "other.zarr")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "zarr.json").write_text("{oops")
    with pytest.raises(StoreValidationError, match=r"cannot read zarr\.json"):
        open_store(tmp_path / "corrupt")
    with pytest.raises(ValueError, match="mode"):
        open_store(tmp_path / "corrupt", mode="w")


# ------------------------------------------------------------------------------ read-only, no writes


def test_read_only_refuses_writes_and_reading_changes_nothing(good_store):
    before = snapshot(good_store.parent)
    st = open_store(good_store)
    images, samples, labels = make_data(seed=9, n=1, spatial=(5, 6), t=4, n_labels=3)
    with pytest.raises(PermissionError, match="read-only"):
        st.write_image(0, image=images[0], samples=samples[0], label=labels[0])
    with pytest.raises(PermissionError, match="read-only"):
        st.write_features(np.zeros((3, 1, 2, 2)), overwrite=True)
    with pytest.raises(ValueError, match="read-only"):  # zarr itself was opened read-only
        st.array("images")[0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        st.array("samples").attrs["x"] = 1
    st.validate(full=True)
    st.identity()
    for i in range(len(st)):
        st.image(i), st.label(i), st.samples(i), st.features(i), st.foreground(i)
    assert snapshot(good_store.parent) == before


def test_validation_in_read_write_mode_changes_nothing(good_store):
    before = snapshot(good_store.parent)
    st = open_store(good_store, mode="r+")
    st.validate(full=True)
    st.identity()
    assert snapshot(good_store.parent) == before


def test_pickle_reopens_same_store(good_store):
    st = pickle.loads(pickle.dumps(open_store(good_store)))
    assert st.mode == "r" and st.path == good_store
    assert st.identity() == open_store(good_store).identity()


# ------------------------------------------------------------------------------ create: safety


def test_create_refuses_existing_path(good_store):
    before = snapshot(good_store.parent)
    images, samples, labels = make_data(seed=5, n=3, spatial=(5, 6), t=4, n_labels=3)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_store(good_store, images, samples, labels)
    with pytest.raises(FileExistsError):
        DatasetStore.create_empty(good_store, 3, (5, 6), 4, 3)
    assert snapshot(good_store.parent) == before
    st = create_store(good_store, images, samples, labels, overwrite=True)
    np.testing.assert_array_equal(st.image(2), images[2])
    assert not st.has_features  # the old store is gone, not merged
    assert sorted(p.name for p in good_store.parent.iterdir()) == [good_store.name]


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    folder = tmp_path / "my_thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    images, samples, _ = make_data()
    with pytest.raises(FileExistsError, match="not a napari-conformal dataset store"):
        create_store(folder, images, samples, overwrite=True)
    assert (folder / "chapter1.tex").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    create_store(empty, images, samples, overwrite=True)
    assert open_store(empty).n_images == 3


def test_create_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    images, samples, labels = make_data(n=4)
    original = store_write.write_one

    def failing(arrays, i, *args):
        if i == 2:
            raise RuntimeError("disk full (injected)")
        original(arrays, i, *args)

    monkeypatch.setattr(store_write, "write_one", failing)
    with pytest.raises(RuntimeError, match="injected"):
        create_store(tmp_path / "new.zarr", images, samples, labels)
    assert list(tmp_path.iterdir()) == []

    # Replacing an existing store: the old one survives a failed overwrite intact.
    monkeypatch.setattr(store_write, "write_one", original)
    create_store(tmp_path / "old.zarr", images, samples, labels)
    before = snapshot(tmp_path)
    monkeypatch.setattr(store_write, "write_one", failing)
    with pytest.raises(RuntimeError, match="injected"):
        create_store(tmp_path / "old.zarr", images[::-1], samples[::-1], labels[::-1], overwrite=True)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ streaming writer


def test_streaming_writer(tmp_path):
    images, samples, labels = make_data(n=3, spatial=(2, 3, 4), t=2, n_labels=2)
    path = tmp_path / "stream.zarr"
    st = DatasetStore.create_empty(path, 3, (2, 3, 4), 2, 2, spacing=(2.0, 0.7, 0.7), sampler="ensemble")
    assert st.mode == "r+" and st.samples_dtype == np.float16 and st.has_labels
    assert st.spacing == (2.0, 0.7, 0.7)
    for i in (2, 0):
        st.write_image(i, image=images[i], samples=samples[i], label=labels[i])
    with pytest.raises(StoreValidationError, match=r"images, image 1: chunk \S+ is missing .*never written"):
        st.validate(full=True)
    with pytest.raises(StoreValidationError, match=r"samples, image 1: chunk \S+ is missing"):
        st.samples(1)
    st.write_image(-2, image=images[1], samples=samples[1], label=labels[1])
    st.validate(full=True)
    ro = open_store(path)
    assert ro.sampler == "ensemble"
    for i in range(3):
        np.testing.assert_array_equal(ro.image(i), images[i])
        np.testing.assert_array_equal(ro.label(i), labels[i])
        np.testing.assert_array_equal(ro.samples(i), samples[i].astype(np.float16).astype(np.float32))


def test_streaming_writer_rejects_bad_image_without_writing(tmp_path):
    images, samples, labels = make_data(n=2, spatial=(4, 4), t=2, n_labels=2)
    st = DatasetStore.create_empty(tmp_path / "s.zarr", 2, (4, 4), 2, 2, samples_dtype="float32")
    st.write_image(0, image=images[0], samples=samples[0], label=labels[0])
    before = snapshot(tmp_path)
    bad_label = labels[1].copy()
    bad_label[3, 3] = 2
    cases = [
        (dict(label=bad_label), r"labels, image 1: value 2"),
        (dict(label=None), r"labels, image 1: the store has labels"),
        (dict(samples=samples[1] * 2), r"samples, image 1"),
        (dict(samples=samples[1][:, :, :3]), r"samples, image 1: shape"),
        (dict(image=np.full((4, 4), np.nan)), r"images, image 1: .*NaN"),
        (dict(image=images[1][:3]), r"images, image 1: shape"),
    ]
    for override, pattern in cases:
        kwargs = dict(image=images[1], samples=samples[1], label=labels[1])
        kwargs.update(override)
        with pytest.raises(StoreValidationError, match=pattern):
            st.write_image(1, **kwargs)
    with pytest.raises(IndexError):
        st.write_image(2, image=images[1], samples=samples[1], label=labels[1])
    assert snapshot(tmp_path) == before


def test_streaming_without_labels_refuses_label(tmp_path):
    images, samples, labels = make_data(n=1, spatial=(4, 4), t=2, n_labels=2)
    st = DatasetStore.create_empty(tmp_path / "s.zarr", 1, (4, 4), 2, 2, labels=False)
    assert not st.has_labels
    with pytest.raises(StoreValidationError, match="without labels"):
        st.write_image(0, image=images[0], samples=samples[0], label=labels[0])
    st.write_image(0, image=images[0], samples=samples[0])
    st.validate()


def test_create_empty_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        DatasetStore.create_empty(tmp_path / "a", 0, (4, 4), 2, 2)
    with pytest.raises(StoreValidationError, match="L >= 2"):
        DatasetStore.create_empty(tmp_path / "a", 1, (4, 4), 2, 1)
    with pytest.raises(StoreValidationError, match="images: expected shape"):
        DatasetStore.create_empty(tmp_path / "a", 1, (4,), 2, 2)
    with pytest.raises(StoreValidationError, match="samples_dtype"):
        DatasetStore.create_empty(tmp_path / "a", 1, (4, 4), 2, 2, samples_dtype="float64")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ features


def test_write_features_array_and_iterable(good_store):
    st = open_store(good_store, mode="r+")
    feats = np.random.default_rng(1).normal(size=(3, 5, 2, 3)).astype(np.float32)
    with pytest.raises(FileExistsError, match="already has features"):
        st.write_features(feats)
    st.write_features(feats, info={"extractor": "efficientnet-lite0"}, overwrite=True)
    assert st.feature_shape == (5, 2, 3)
    assert st.features_info == {"n_channels": 5, "grid_shape": [2, 3], "extractor": "efficientnet-lite0"}
    ro = open_store(good_store)
    np.testing.assert_array_equal(ro.features(1), feats[1].astype(np.float16).astype(np.float32))
    assert ro.array("features").dtype == np.float16 and ro.array("features").chunks == (1, 5, 2, 3)

    st.write_features((f for f in feats[:, :2]), overwrite=True)  # a one-pass generator
    assert open_store(good_store).feature_shape == (2, 2, 3)


def test_failed_feature_write_keeps_previous_features(good_store):
    st = open_store(good_store, mode="r+")
    before = snapshot(good_store)

    def stream():
        yield np.zeros((4, 2, 3))
        yield np.zeros((4, 2, 3))
        yield np.full((4, 2, 3), np.nan)  # discovered only at the last image

    with pytest.raises(StoreValidationError, match=r"features, image 2: .*NaN"):
        st.write_features(stream(), overwrite=True)
    with pytest.raises(StoreValidationError, match="got 2 per-image arrays, expected N=3"):
        st.write_features(iter([np.zeros((4, 2, 3))] * 2), overwrite=True)
    assert snapshot(good_store) == before
    assert open_store(good_store).feature_shape == (2, 2, 3)


# ------------------------------------------------------------------------------ identity


def test_identity_tracks_content(tmp_path):
    images, samples, labels = make_data(n=3)
    a = create_store(tmp_path / "a.zarr", images, samples, labels)
    b = create_store(tmp_path / "b.zarr", images, samples, labels)
    ida = a.identity()
    assert len(ida) == 32 and int(ida, 16) >= 0
    assert ida == b.identity() == open_store(tmp_path / "a.zarr").identity()  # path not covered

    changed = images.copy()
    changed[1, 2, 3] += 1.0
    c = create_store(tmp_path / "c.zarr", changed, samples, labels)
    assert c.identity() != ida
    lab = labels.copy()
    lab[0, 0, 0] = (lab[0, 0, 0] + 1) % 3
    assert create_store(tmp_path / "d.zarr", images, samples, lab).identity() != ida
    assert create_store(tmp_path / "e.zarr", images, samples, labels, sampler="x").identity() != ida
    assert create_store(tmp_path / "f.zarr", images, samples).identity() != ida

    b.write_image(0, image=images[0] + 1, samples=samples[0], label=labels[0])
    assert b.identity() != ida
    b.write_image(0, image=images[0], samples=samples[0], label=labels[0])
    assert b.identity() == ida


def test_create_store_features_need_a_reiterable_input(tmp_path):
    images, samples, labels = make_data(n=2)
    gen = (np.zeros((2, 2, 2)) for _ in range(2))
    with pytest.raises(StoreValidationError, match="write_features to stream"):
        create_store(tmp_path / "a.zarr", images, samples, labels, features=gen)
    feats = [np.full((2, 2, 2), k, np.float32) for k in range(2)]
    st = create_store(tmp_path / "a.zarr", images, samples, labels, features=feats, features_info={"x": 1})
    assert st.features_info == {"x": 1, "n_channels": 2, "grid_shape": [2, 2]}
    np.testing.assert_array_equal(st.features(1), feats[1])


def test_existing_path_error_is_user_facing(good_store):
    images, samples, labels = make_data(n=3, spatial=(5, 6), t=4, n_labels=3)
    with pytest.raises(ConformalError, match="already exists"):
        create_store(good_store, images, samples, labels)


# ------------------------------------------------------------------------------ damage on disk


def _chunk(path: Path, array: str, i: int) -> Path:
    """The (single) chunk file of image ``i`` of ``array``."""
    root = path / array
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != "zarr.json" and p.relative_to(root).parts[1] == str(i)
    ]
    assert len(files) == 1, files
    return files[0]


def _reads(st, array: str, i: int):
    return {"images": st.image, "samples": st.samples, "labels": st.label, "features": st.features}[array](i)


@pytest.mark.parametrize("array", ["samples", "images", "labels", "features"])
def test_deleted_chunk_is_refused_not_read_as_zeros(good_store, array):
    from napari_conformal.io.dataset import read_image

    _chunk(good_store, array, 1).unlink()
    st = open_store(good_store)  # structure intact: opens
    with pytest.raises(StoreValidationError, match=rf"^{array}, image 1: chunk c/1\S* is missing"):
        _reads(st, array, 1)
    _reads(st, array, 0), _reads(st, array, 2)  # the other images are unaffected
    with pytest.raises(StoreValidationError, match=rf"^{array}, image 1: .*missing"):
        st.validate(full=True)
    if array != "features":
        with pytest.raises(StoreValidationError, match=rf"^{array}, image 1: .*missing"):
            read_image(st, 1)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("array", ["samples", "images", "labels", "features"])
def test_undecodable_chunk_names_array_and_image(good_store, array, damage):
    from napari_conformal.io.dataset import read_image

    f = _chunk(good_store, array, 2)
    data = f.read_bytes()
    f.write_bytes(
        np.random.default_rng(0).bytes(len(data)) if damage == "garbage" else data[: len(data) // 2]
    )
    st = open_store(good_store)
    pattern = rf"^{array}, image 2: cannot decode its stored chunk \(.*\); the store is damaged$"
    with pytest.raises(StoreValidationError, match=pattern):
        _reads(st, array, 2)
    with pytest.raises(StoreValidationError, match=rf"^{array}, image 2: cannot decode"):
        st.validate(full=True)
    if array != "features":
        with pytest.raises(StoreValidationError, match=rf"^{array}, image 2: cannot decode"):
            read_image(st, 2)


@pytest.mark.parametrize("array", ["images", "samples", "labels", "features"])
@pytest.mark.parametrize(
    "content", [b"\x8f\x00garbage{", b"", b'{"zarr_format": 3, "node_type": "array"}', b"[1, 2]"]
)
def test_garbage_array_metadata_is_refused_on_open(good_store, array, content):
    (good_store / array / "zarr.json").write_bytes(content)
    with pytest.raises(StoreValidationError, match=rf"^{array}: .*the store is damaged") as caught:
        open_store(good_store)
    if array == "features":
        assert "delete the 'features' folder" in str(caught.value)


def test_array_folder_without_metadata_is_refused_on_open(good_store):
    (good_store / "labels" / "zarr.json").unlink()
    with pytest.raises(StoreValidationError, match=r"^labels: the folder .* has no zarr\.json"):
        open_store(good_store)


def test_identity_ignores_the_feature_cache_and_sees_one_sample_chunk(tmp_path):
    images, samples, labels = make_data(n=3)
    st = create_store(tmp_path / "a.zarr", images, samples, labels)
    before = st.identity()
    st.write_features(np.ones((3, 2, 2, 3)), info={"extractor": "a"})
    assert st.identity() == before
    st.write_features(np.zeros((3, 4, 5, 6)), info={"extractor": "b"}, overwrite=True)
    assert st.identity() == before == open_store(tmp_path / "a.zarr").identity()

    edited = samples[1].copy()
    edited[0, :, 2, 2] = edited[0, ::-1, 2, 2]  # still valid probabilities; one chunk changes
    st.write_image(1, image=images[1], samples=edited, label=labels[1])
    assert st.identity() != before
    st.write_image(1, image=images[1], samples=samples[1], label=labels[1])
    assert st.identity() == before


def test_chunks_equal_to_the_fill_value_are_written(tmp_path):
    """An all-background label image and an all-zero image are stored, so they read back (not "missing")."""
    images, samples, labels = make_data(n=2)
    images[1] = 0.0
    labels[0] = 0
    st = create_store(tmp_path / "a.zarr", images, samples, labels, features=np.zeros((2, 1, 2, 2)))
    np.testing.assert_array_equal(st.image(1), 0.0)
    np.testing.assert_array_equal(st.label(0), 0)
    np.testing.assert_array_equal(st.features(0), 0.0)
    empty = DatasetStore.create_empty(tmp_path / "b.zarr", 1, (5, 6), 4, 3)
    empty.write_image(0, image=np.zeros((5, 6)), samples=samples[0], label=np.zeros((5, 6), int))
    reopened = open_store(tmp_path / "b.zarr")
    np.testing.assert_array_equal(reopened.label(0), 0)
    reopened.validate(full=True)
