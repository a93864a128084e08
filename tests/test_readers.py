"""Readers: claiming (never raising), dataset stores, volumes, sample arrays, safe loading."""

from __future__ import annotations

import json
import math
import pickle

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_conformal.errors import ConformalError, StoreValidationError
from napari_conformal.io.readers import (
    get_reader,
    get_samples_reader,
    get_store_reader,
    get_volume_reader,
    path_kind,
    read,
    read_samples,
    read_store,
    read_volume,
    summarize_samples,
)
from napari_conformal.io.store import create_store, open_store

GETTERS = (get_reader, get_store_reader, get_samples_reader, get_volume_reader)


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _make_store(path, *, n=3, t=4, ll=3, spatial=(5, 6, 7), labels=True, seed=0, spacing=(2.0, 1.0, 0.5)):
    rng = np.random.default_rng(seed)
    samples = _softmax(rng.normal(scale=2.0, size=(n, t, ll, *spatial)), axis=2).astype(np.float32)
    images = rng.normal(size=(n, *spatial)).astype(np.float32)
    lab = rng.integers(0, ll, size=(n, *spatial)).astype(np.uint8) if labels else None
    names = ["background"] + [f"c{k}" for k in range(1, ll)]
    create_store(
        path, images, samples, lab, spacing=spacing, label_names=names, sampler="mc-dropout", overwrite=False
    )
    return images, samples, lab, names


def _layers_by_name(layers):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in layers}


# ------------------------------------------------------------------------------------------- claiming


def _unrelated_paths(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    group.attrs["format"] = "something-else"
    group.create_array("x", shape=(2, 2), dtype="f4")
    plain_dir = tmp_path / "folder"
    plain_dir.mkdir()
    (plain_dir / "a.txt").write_text("x")
    return [
        txt,
        tmp_path / "other.zarr",
        plain_dir,
        tmp_path / "missing.npy",
        tmp_path / "missing_dir",
        tmp_path / "missing_samples.npz",
        str(txt),
    ]


def test_readers_return_none_for_unrelated_paths(tmp_path):
    for path in _unrelated_paths(tmp_path):
        for getter in GETTERS:
            assert getter(path) is None, (getter.__name__, path)
        assert path_kind(path) is None


@pytest.mark.parametrize("junk", [None, 42, 3.5, b"x.npy", [], ["a.npy", 3], object()])
def test_readers_return_none_for_non_paths(junk):
    for getter in GETTERS:
        assert getter(junk) is None


def test_a_list_is_claimed_only_when_every_path_is(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((3, 4)))
    np.save(b, np.ones((3, 4)))
    txt = tmp_path / "c.txt"
    txt.write_text("x")
    assert get_reader([str(a), str(txt)]) is None
    reader = get_reader([str(a), str(b)])
    layers = reader([str(a), str(b)])
    assert [kw["name"] for _, kw, _ in layers] == ["a", "b"]
    np.testing.assert_array_equal(layers[1][0], np.ones((3, 4)))


def test_kinds_are_exclusive(tmp_path):
    _make_store(tmp_path / "s.zarr")
    np.save(tmp_path / "v.npy", np.zeros((2, 2)))
    np.save(tmp_path / "v_samples.npy", np.full((2, 2, 2), 0.5))
    assert get_store_reader(tmp_path / "s.zarr") is not None
    assert get_volume_reader(tmp_path / "s.zarr") is None
    assert get_samples_reader(tmp_path / "s.zarr") is None
    assert get_volume_reader(tmp_path / "v.npy") is not None
    assert get_samples_reader(tmp_path / "v.npy") is None
    assert get_samples_reader(tmp_path / "v_samples.npy") is not None
    assert get_volume_reader(tmp_path / "v_samples.npy") is None


def test_broken_store_is_claimed_and_the_reader_raises(tmp_path):
    path = tmp_path / "broken.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"format": "napari-conformal-dataset", "version": 1})
    group.create_array("images", shape=(2, 4, 4), dtype="f4")
    reader = get_reader(path)
    assert reader is not None
    with pytest.raises(StoreValidationError, match="samples"):
        reader(str(path))


def test_broken_file_is_claimed_and_the_reader_raises(tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"this is not numpy")
    reader = get_reader(bad)
    assert reader is not None
    with pytest.raises(ConformalError, match=r"bad\.npy"):
        reader(str(bad))
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ConformalError, match="TIFF"):
        get_reader(bad_tif)(str(bad_tif))


def test_read_refuses_paths_it_does_not_read(tmp_path):
    with pytest.raises(ConformalError, match="no such file"):
        read(tmp_path / "nothing.npy")
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    with pytest.raises(ConformalError, match="not a dataset store"):
        read(txt)


# -------------------------------------------------------------------------------------------- stores


def test_store_layers_shapes_scale_and_metadata(tmp_path):
    path = tmp_path / "hippo.zarr"
    images, samples, labels, names = _make_store(path)
    n, t, ll = samples.shape[:3]
    spatial = images.shape[1:]
    reader = get_reader(path)
    layers = reader(str(path))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("hippo images", "image"),
        ("hippo ground truth", "labels"),
        ("hippo mean prediction", "labels"),
        ("hippo sample predictions", "labels"),
    ]
    by = _layers_by_name(layers)
    img, kw, _ = by["hippo images"]
    assert isinstance(img, da.Array)  # lazy
    assert img.shape == (n, *spatial)
    assert kw["scale"] == [1.0, 2.0, 1.0, 0.5]
    np.testing.assert_array_equal(np.asarray(img), images)
    lo, hi = kw["contrast_limits"]
    assert lo == pytest.approx(float(images[0].min())) and hi == pytest.approx(float(images[0].max()))

    gt = by["hippo ground truth"][0]
    np.testing.assert_array_equal(np.asarray(gt), labels)

    store = open_store(path)
    for data, kw, _ in layers:
        prov = kw["metadata"]["napari_conformal"]
        assert prov["source"] == "dataset-store"
        assert prov["store"]["path"] == str(path.resolve())
        assert prov["store"]["identity"] == store.identity()
        assert prov["label_names"] == names
        assert prov["spacing"] == [2.0, 1.0, 0.5]
        assert prov["sampler"] == "mc-dropout"
        assert len(prov["axes"]) == data.ndim
    assert by["hippo images"][1]["metadata"]["napari_conformal"]["array"] == "images"
    assert by["hippo ground truth"][1]["metadata"]["napari_conformal"]["array"] == "labels"

    feats = by["hippo mean prediction"][1]["features"]
    assert list(feats["index"]) == list(range(ll))
    assert list(feats["class"]) == names

    per_sample, kw, _ = by["hippo sample predictions"]
    assert per_sample.shape == (t, n, *spatial)
    assert kw["scale"] == [1.0, 1.0, 2.0, 1.0, 0.5]
    expected = np.moveaxis(samples.argmax(axis=2), 1, 0)
    np.testing.assert_array_equal(np.asarray(per_sample), expected)


def test_mean_prediction_is_argmax_of_the_mean_over_samples(tmp_path):
    """Brute force in float64; voxels whose two best classes are within 1e-5 are left out (ties)."""
    path = tmp_path / "s.zarr"
    _, samples, _, _ = _make_store(path, n=4, t=6, ll=4, spatial=(9, 11), spacing=(0.7, 0.3), seed=3)
    layers = _layers_by_name(read_store(path))
    got = np.asarray(layers["s mean prediction"][0])
    mean = samples.astype(np.float64).mean(axis=1)
    top2 = np.sort(mean, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got[clear], mean.argmax(axis=1)[clear])
    assert layers["s images"][1]["scale"] == [1.0, 0.7, 0.3]


def test_mean_prediction_hand_computed(tmp_path):
    # one image, two samples, two classes, 1x3 pixels:
    # p(fg) per sample: pixel0 (0.9, 0.2) -> mean .55 fg; pixel1 (0.3, 0.6) -> .45 bg;
    # pixel2 (0.1, 0.1) -> bg. Sample argmax: s0 = (1, 0, 0), s1 = (0, 1, 0).
    fg = np.array([[[0.9, 0.3, 0.1]], [[0.2, 0.6, 0.1]]], dtype=np.float32)  # (T, Y, X)
    samples = np.stack([1 - fg, fg], axis=1)[None]  # (1, T, L, Y, X)
    create_store(tmp_path / "h.zarr", np.zeros((1, 1, 3), np.float32), samples, labels=None)
    layers = read_store(tmp_path / "h.zarr")
    assert [kw["name"] for _, kw, _ in layers] == ["h images", "h mean prediction", "h sample predictions"]
    np.testing.assert_array_equal(np.asarray(layers[1][0]), [[[1, 0, 0]]])
    np.testing.assert_array_equal(np.asarray(layers[2][0]), [[[[1, 0, 0]]], [[[0, 1, 0]]]])
    lo, hi = layers[0][1]["contrast_limits"]  # a constant image still gets a usable range
    assert hi > lo


def test_store_opening_is_lazy(tmp_path):
    """Chunks of images other than 0 are not decoded on open: corrupting one does not stop it."""
    path = tmp_path / "lazy.zarr"
    _make_store(path, n=3)
    chunk_files = sorted(p for p in (path / "samples").rglob("*") if p.is_file() and p.name != "zarr.json")
    last = [p for p in chunk_files if "2" in p.relative_to(path / "samples").parts[1:2]]
    assert last, chunk_files
    last[0].write_bytes(b"corrupt")
    layers = _layers_by_name(read_store(path, identity_max_bytes=0))
    mean = layers["lazy mean prediction"][0]
    assert mean[0].compute().shape == (5, 6, 7)  # image 0 still computes
    with pytest.raises(Exception):  # noqa: B017 - any zarr/codec error: the chunk is garbage
        mean[2].compute()


def test_identity_skipped_for_large_stores(tmp_path):
    path = tmp_path / "s.zarr"
    _make_store(path)
    layers = read_store(path, identity_max_bytes=1)
    assert all(kw["metadata"]["napari_conformal"]["store"]["identity"] is None for _, kw, _ in layers)


def test_store_with_pickle_codec_is_refused(tmp_path):
    path = tmp_path / "evil.zarr"
    _make_store(path)
    meta_file = path / "samples" / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {}})
    meta_file.write_text(json.dumps(doc))
    with pytest.raises(ConformalError, match="unpickle"):
        get_reader(path)(str(path))


# ------------------------------------------------------------------------------------------- volumes


def test_tiff_2d_and_3d(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    a2 = rng.integers(0, 1000, size=(7, 9)).astype(np.uint16)
    a3 = rng.normal(size=(4, 7, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "slice.tif", a2)
    tifffile.imwrite(tmp_path / "vol.TIFF", a3)
    [(d2, kw2, kind2)] = get_reader(tmp_path / "slice.tif")(str(tmp_path / "slice.tif"))
    [(d3, kw3, kind3)] = get_reader(tmp_path / "vol.TIFF")(str(tmp_path / "vol.TIFF"))
    np.testing.assert_array_equal(d2, a2)
    np.testing.assert_array_equal(d3, a3)
    assert (kind2, kind3) == ("image", "image")
    assert kw2["name"] == "slice" and kw3["name"] == "vol"
    assert kw3["metadata"]["napari_conformal"]["format"] == "tiff"


def test_imagej_tiff_scale(tmp_path):
    import tifffile

    data = np.zeros((3, 4, 5), np.uint8)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.5), metadata={"spacing": 2.0, "axes": "ZYX"}
    )
    [(_, kw, _)] = read_volume(path)
    # resolution=(x, y) in pixels per unit: pixel size x = 0.25, y = 0.5
    assert kw["scale"] == pytest.approx([2.0, 0.5, 0.25])


def _nifti(path, data, zooms, unit="mm"):
    import nibabel

    img = nibabel.Nifti1Image(data, affine=np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units(xyz=unit)
    nibabel.save(img, str(path))


def test_nifti_axes_reversed_and_spacing(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)  # (i, j, k)
    path = tmp_path / "brain.nii.gz"
    _nifti(path, arr, (1.5, 2.0, 3.0))
    [(data, kw, kind)] = get_reader(path)(str(path))
    assert kind == "image"
    assert data.shape == (6, 5, 4)
    np.testing.assert_array_equal(data, arr.transpose(2, 1, 0))
    assert data[5, 4, 3] == arr[3, 4, 5]
    assert kw["scale"] == pytest.approx([3.0, 2.0, 1.5])
    assert kw["name"] == "brain"
    prov = kw["metadata"]["napari_conformal"]
    assert prov["format"] == "nifti"
    assert np.allclose(prov["nifti_affine"], np.diag([1.5, 2.0, 3.0, 1.0]))


def test_nifti_label_volume_and_micron_units(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 2, 3] = 2
    folder = tmp_path / "labelsTr"
    folder.mkdir()
    path = folder / "case_001.nii"
    _nifti(path, arr, (500.0, 500.0, 1000.0), unit="micron")
    [(data, kw, kind)] = read_volume(path)
    assert kind == "labels"  # integer data in a folder named like labels
    assert data[3, 2, 1] == 2
    assert kw["scale"] == pytest.approx([1.0, 0.5, 0.5])  # mm


def test_npy_is_memory_mapped_and_layer_type_heuristic(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "image.npy", arr)
    np.save(tmp_path / "nuclei_mask.npy", arr)
    np.save(tmp_path / "float_mask.npy", arr.astype(np.float32))
    np.save(tmp_path / "bool_seg.npy", arr > 5)
    [(d, _kw, kind)] = read_volume(tmp_path / "image.npy")
    assert isinstance(d, np.memmap) and kind == "image"
    np.testing.assert_array_equal(d, arr)
    assert read_volume(tmp_path / "nuclei_mask.npy")[0][2] == "labels"
    assert read_volume(tmp_path / "float_mask.npy")[0][2] == "image"
    d, _, kind = read_volume(tmp_path / "bool_seg.npy")[0]
    assert kind == "labels" and d.dtype == np.uint8
    np.testing.assert_array_equal(d, (arr > 5).astype(np.uint8))


MARKS: list[int] = []


class _Tripwire:
    """Unpickling this appends to MARKS: proves whether a reader unpickled anything."""

    def __reduce__(self):
        return (MARKS.append, (1,))


def test_object_npy_is_refused_without_unpickling(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = _Tripwire(), _Tripwire()
    path = tmp_path / "evil.npy"
    np.save(path, obj, allow_pickle=True)
    reader = get_reader(path)
    assert reader is not None
    with pytest.raises(ConformalError, match="unpickle"):
        reader(str(path))
    assert MARKS == []


def test_pickle_file_named_npy_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps(_Tripwire()))
    with pytest.raises(ConformalError, match=r"not a valid \.npy"):
        read_volume(path)
    assert MARKS == []


def test_npz_members_and_object_member_refused(tmp_path):
    a, b = np.zeros((3, 4), np.float32), np.ones((2, 3, 4), np.uint8)
    np.savez(tmp_path / "pair.npz", first=a, second=b, vector=np.arange(3))
    layers = _layers_by_name(read_volume(tmp_path / "pair.npz"))
    assert set(layers) == {"pair first", "pair second"}  # the 1-D member is not an image
    np.testing.assert_array_equal(layers["pair second"][0], b)
    assert layers["pair second"][1]["metadata"]["napari_conformal"]["member"] == "second"

    obj = np.empty(1, dtype=object)
    obj[0] = _Tripwire()
    np.savez(tmp_path / "evil.npz", x=np.zeros((2, 2)), y=obj)
    with pytest.raises(ConformalError, match="unpickle"):
        get_reader(tmp_path / "evil.npz")(str(tmp_path / "evil.npz"))
    assert MARKS == []


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_volume_is_lazy(tmp_path, zarr_format):
    path = tmp_path / "vol.zarr"
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    z = zarr.create_array(
        str(path), shape=arr.shape, dtype=arr.dtype, chunks=(1, 4, 5), zarr_format=zarr_format
    )
    z[:] = arr
    assert path_kind(path) == "volume"
    [(data, kw, kind)] = get_reader(path)(str(path))
    assert isinstance(data, zarr.Array) and kind == "image" and kw["name"] == "vol"
    np.testing.assert_array_equal(data[:], arr)


def test_zarr_array_with_pickle_codec_is_refused(tmp_path):
    path = tmp_path / "vol.zarr"
    zarr.create_array(str(path), shape=(2, 2), dtype="f4")
    doc = json.loads((path / "zarr.json").read_text())
    doc["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {}})
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(ConformalError, match="unpickle"):
        read_volume(path)


# ---------------------------------------------------------------------------------------- samples


def test_samples_hand_computed_binary_probabilities(tmp_path):
    # (T=2, Y=1, X=2) foreground: pixel0 (0.8, 0.4) -> mean 0.6; pixel1 (0.0, 0.0) -> mean 0
    fg = np.array([[[0.8, 0.0]], [[0.4, 0.0]]], dtype=np.float32)
    np.save(tmp_path / "case_samples.npy", fg)
    assert path_kind(tmp_path / "case_samples.npy") == "samples"
    layers = _layers_by_name(get_reader(tmp_path / "case_samples.npy")(str(tmp_path / "case_samples.npy")))
    assert set(layers) == {"case mean p(foreground)", "case entropy", "case argmax"}
    np.testing.assert_allclose(layers["case mean p(foreground)"][0], [[0.6, 0.0]], atol=1e-6)
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    np.testing.assert_allclose(layers["case entropy"][0], [[h, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(layers["case argmax"][0], [[1, 0]])
    assert layers["case argmax"][2] == "labels"
    assert layers["case entropy"][1]["contrast_limits"] == [0.0, pytest.approx(math.log(2))]
    prov = layers["case argmax"][1]["metadata"]["napari_conformal"]
    assert prov["axes"] == "TYX" and prov["n_samples"] == 2


def test_summarize_samples_matches_brute_force():
    rng = np.random.default_rng(5)
    s = _softmax(rng.normal(size=(7, 4, 3, 5, 6)), axis=1).astype(np.float32)  # (T, L, Z, Y, X)
    mean, ent, arg = summarize_samples(s, "TLZYX")
    m = s.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(mean, m, atol=1e-6)
    np.testing.assert_allclose(ent, -(m * np.log(m)).sum(axis=0), atol=1e-5)
    assert ((ent >= 0) & (ent <= math.log(4) + 1e-6)).all()
    np.testing.assert_array_equal(arg, m.argmax(axis=0))


def test_four_axis_samples_layout_is_inferred(tmp_path):
    rng = np.random.default_rng(6)
    classes = _softmax(rng.normal(size=(3, 2, 4, 5)), axis=1).astype(np.float32)  # (T, L, Y, X)
    fg_volume = rng.uniform(0.1, 0.9, size=(3, 4, 4, 5)).astype(np.float32)  # (T, Z, Y, X)
    np.save(tmp_path / "a_samples.npy", classes)
    np.save(tmp_path / "b_samples.npy", fg_volume)
    a = read_samples(tmp_path / "a_samples.npy")
    b = read_samples(tmp_path / "b_samples.npy")
    assert a[-1][1]["metadata"]["napari_conformal"]["axes"] == "TLYX"
    assert a[-1][0].shape == (4, 5)
    assert b[-1][1]["metadata"]["napari_conformal"]["axes"] == "TZYX"
    assert b[-1][0].shape == (4, 4, 5)
    np.testing.assert_array_equal(b[-1][0], (fg_volume.astype(np.float64).mean(0) > 0.5).astype(np.uint8))


def test_samples_npz_with_axes_spacing_names(tmp_path):
    fg = np.full((2, 3, 4, 5), 0.25, np.float32)
    np.savez(
        tmp_path / "v_samples.npz",
        samples=fg,
        axes=np.array("TZYX"),
        spacing=np.array([3.0, 1.0, 1.0]),
        label_names=np.array(["bg", "tumour"]),
    )
    layers = _layers_by_name(read(tmp_path / "v_samples.npz"))
    assert "v mean p(tumour)" in layers
    assert layers["v argmax"][1]["scale"] == [3.0, 1.0, 1.0]
    np.testing.assert_array_equal(layers["v argmax"][0], np.zeros((3, 4, 5)))


def test_samples_zarr_array_with_attrs(tmp_path):
    rng = np.random.default_rng(7)
    s = _softmax(rng.normal(size=(2, 3, 4, 4)), axis=1).astype(np.float16)
    z = zarr.create_array(str(tmp_path / "x_samples.zarr"), shape=s.shape, dtype=s.dtype)
    z[:] = s
    z.attrs.update({"axes": "TLYX", "label_names": ["bg", "a", "b"]})
    assert path_kind(tmp_path / "x_samples.zarr") == "samples"
    layers = _layers_by_name(read(tmp_path / "x_samples.zarr"))
    assert {"x mean p(a)", "x mean p(b)", "x entropy", "x argmax"} == set(layers)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.full((2, 3, 3), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((2, 3, 3), np.nan, np.float32), "NaN"),
        (np.full((2, 2, 3, 3), 0.6, np.float32), "sum to 1"),
        (np.zeros((2, 3), np.float32), "shape"),
        (np.zeros((2, 3, 3), np.int64), "floating"),
    ],
)
def test_bad_samples_give_clear_errors(tmp_path, values, match):
    path = tmp_path / "bad_samples.npy"
    np.save(path, values)
    if values.ndim == 4:  # force the class layout so the sum check applies
        np.savez(tmp_path / "bad_samples.npz", samples=values, axes=np.array("TLYX"))
        path = tmp_path / "bad_samples.npz"
    with pytest.raises(ConformalError, match=match):
        read_samples(path)


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_contributes_readers_writers_and_sample_data():
    from pathlib import Path

    from npe2 import PluginManifest

    import napari_conformal

    manifest = PluginManifest.from_file(Path(napari_conformal.__file__).parent / "napari.yaml")
    contrib = manifest.contributions
    readers = {r.command: r for r in contrib.readers}
    assert set(readers) == {
        "napari-conformal.get_store_reader",
        "napari-conformal.get_samples_reader",
        "napari-conformal.get_volume_reader",
    }
    assert all(r.accepts_directories for r in readers.values())  # stores and zarr arrays are folders
    patterns = readers["napari-conformal.get_volume_reader"].filename_patterns
    assert {"*.tif", "*.tiff", "*.nii", "*.nii.gz", "*.npy", "*.npz"} <= set(patterns)
    writers = {(w.command, tuple(w.layer_types)): w.filename_extensions for w in contrib.writers}
    assert writers[("napari-conformal.write_labels_npz", ("labels",))] == [".npz"]
    assert writers[("napari-conformal.write_image_tiff", ("image",))] == [".tif", ".tiff"]
    assert writers[("napari-conformal.write_calibration_json", ("labels",))] == [".json"]
    assert {s.key for s in contrib.sample_data} == {"hippocampus", "brain-mri", "nuclei"}
    widgets = [(w.command, w.display_name) for w in contrib.widgets]
    assert ("napari-conformal.calibration_widget", "Conformal calibration") in widgets


def test_sample_errors_name_the_sample_and_its_place(tmp_path):
    """Sample files are checked one sample at a time by the core check; places are in the whole array."""
    values = np.full((3, 2, 3, 4), 0.5, np.float32)
    values[1, 0, 1, 2] = -0.25
    values[1, 1, 1, 2] = 1.25
    np.savez(tmp_path / "neg_samples.npz", samples=values, axes=np.array("TLYX"))
    with pytest.raises(
        ConformalError,
        match=r"neg_samples\.npz: sample 1: negative probability -0\.25 at \(t, l, \*pixel\) = \(1, 0, 1, 2\)$",
    ):
        read_samples(tmp_path / "neg_samples.npz")
    values[1, 0, 1, 2] = 0.5
    values[1, 1, 1, 2] = 0.5
    values[2, :, 0, 3] = [0.7, 0.7]
    np.savez(tmp_path / "sum_samples.npz", samples=values, axes=np.array("TLYX"))
    with pytest.raises(
        ConformalError, match=r"sample 2: probabilities do not sum to 1 .* at \(t, \*pixel\) = \(2, 0, 3\)"
    ):
        read_samples(tmp_path / "sum_samples.npz")
    fg = np.full((2, 3, 3), 0.5, np.float32)
    fg[1, 2, 0] = 1.5
    np.save(tmp_path / "fg_samples.npy", fg)
    with pytest.raises(
        ConformalError, match=r"fg_samples\.npy: sample 1: foreground probabilities p must be in \[0, 1\]"
    ):
        read_samples(tmp_path / "fg_samples.npy")
