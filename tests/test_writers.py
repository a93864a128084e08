"""Writers: round trips with provenance through the readers, atomic replacement, calibration JSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_conformal.errors import ConformalError
from napari_conformal.io import writers
from napari_conformal.io.provenance import HEADER_VERSION, loads_header
from napari_conformal.io.readers import get_reader, load_npz
from napari_conformal.io.writers import (
    atomic_file,
    calibration_record,
    write_calibration,
    write_calibration_json,
    write_image_npz,
    write_image_tiff,
    write_labels_npz,
    write_labels_tiff,
)


def _provenance():
    return {
        "method": "consign",
        "alpha": np.float64(0.1),
        "nu": 0.9,
        "lambda_hat": np.float32(0.25),
        "n": np.int64(40),
        "version": "0.1.0",
        "store": {"path": "/data/s.zarr", "identity": "ab" * 16},
        "image_index": 3,
        "k": (1, 2),
    }


def _expected_provenance():
    return {
        "method": "consign",
        "alpha": 0.1,
        "nu": 0.9,
        "lambda_hat": 0.25,
        "n": 40,
        "version": "0.1.0",
        "store": {"path": "/data/s.zarr", "identity": "ab" * 16},
        "image_index": 3,
        "k": [1, 2],
    }


def _attrs(name="set", ndim=3, **extra):
    return {
        "name": name,
        "scale": tuple(float(s) for s in (2.0, 1.0, 0.5)[-ndim:]),
        "translate": [0.0] * (ndim - 1) + [4.0],
        "metadata": {"napari_conformal": _provenance(), "other": object()},
        **extra,
    }


def _read_back(path):
    reader = get_reader(path)
    assert reader is not None, path
    [(data, kwargs, kind)] = reader(str(path))
    return np.asarray(data), kwargs, kind


WRITERS = [
    (write_labels_npz, "labels", ".npz"),
    (write_image_npz, "image", ".npz"),
    (write_labels_tiff, "labels", ".tif"),
    (write_image_tiff, "image", ".tif"),
]


@pytest.mark.parametrize(("writer", "kind", "suffix"), WRITERS)
@pytest.mark.parametrize("shape", [(6, 7), (3, 6, 7)])
def test_round_trip_keeps_data_type_and_provenance(tmp_path, writer, kind, suffix, shape):
    rng = np.random.default_rng(0)
    if kind == "labels":
        data = rng.integers(0, 3, size=shape).astype(np.int32)
    else:
        data = rng.normal(size=shape).astype(np.float32)
    target = tmp_path / f"out{suffix}"
    written = writer(str(target), data, _attrs(ndim=len(shape)))
    assert written == [str(target)]
    got, kwargs, got_kind = _read_back(target)
    assert got_kind == kind
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, data)
    assert kwargs["name"] == "set"
    assert kwargs["scale"] == [2.0, 1.0, 0.5][-len(shape) :]
    assert kwargs["translate"] == [0.0] * (len(shape) - 1) + [4.0]
    assert kwargs["metadata"] == {"napari_conformal": _expected_provenance()}


@pytest.mark.parametrize("writer", [write_labels_tiff, write_labels_npz])
def test_four_axis_and_bool_data(tmp_path, writer):
    data = np.zeros((2, 3, 4, 5), dtype=bool)
    data[1, 2, 3, 4] = True
    (path,) = writer(str(tmp_path / "m"), data, {"name": "m"})
    got, kwargs, kind = _read_back(path)
    assert got.shape == (2, 3, 4, 5) and kind == "labels"
    assert got[1, 2, 3, 4] == 1 and got.sum() == 1
    assert kwargs["metadata"] == {"napari_conformal": {}}


def test_rgb_image_tiff(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, size=(5, 6, 3)).astype(np.uint8)
    (path,) = write_image_tiff(str(tmp_path / "rgb.tif"), data, {"name": "rgb", "rgb": True})
    got, _, kind = _read_back(path)
    np.testing.assert_array_equal(got, data)
    assert kind == "image"


def test_suffix_is_appended_when_missing(tmp_path):
    data = np.zeros((2, 2), np.uint8)
    assert write_labels_npz(str(tmp_path / "a"), data, {}) == [str(tmp_path / "a.npz")]
    assert write_labels_tiff(str(tmp_path / "b.TIFF"), data, {}) == [str(tmp_path / "b.TIFF")]
    assert write_image_tiff(str(tmp_path / "c.png"), data, {}) == [str(tmp_path / "c.png.tif")]
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.TIFF", "c.png.tif"]


def test_npz_is_pickle_free_and_header_is_json(tmp_path):
    (path,) = write_labels_npz(str(tmp_path / "x.npz"), np.ones((2, 3), np.uint8), _attrs(ndim=2))
    members = load_npz(path)  # allow_pickle=False throughout
    assert set(members) == {"data", "__napari_conformal__"}
    header = loads_header(str(members["__napari_conformal__"][()]))
    assert header["layer_type"] == "labels"
    assert header["shape"] == [2, 3]
    assert header["version"] == HEADER_VERSION


def test_tiff_description_holds_the_header(tmp_path):
    import tifffile

    (path,) = write_labels_tiff(str(tmp_path / "x.tif"), np.ones((2, 3), np.uint8), _attrs(ndim=2))
    with tifffile.TiffFile(path) as tif:
        header = json.loads(tif.pages[0].description)
    assert header["napari_conformal"] == _expected_provenance()


def test_multiscale_layer_writes_level_zero(tmp_path):
    levels = [np.arange(16, dtype=np.uint8).reshape(4, 4), np.zeros((2, 2), np.uint8)]
    (path,) = write_image_npz(str(tmp_path / "ms.npz"), levels, {"name": "ms", "multiscale": True})
    got, _, _ = _read_back(path)
    np.testing.assert_array_equal(got, levels[0])


def test_existing_file_is_replaced_whole(tmp_path):
    target = tmp_path / "x.npz"
    write_labels_npz(str(target), np.zeros((3, 3), np.uint8), {"name": "old"})
    write_labels_npz(str(target), np.ones((4, 4), np.uint8), {"name": "new"})
    got, kwargs, _ = _read_back(target)
    assert kwargs["name"] == "new" and got.shape == (4, 4)
    assert os.listdir(tmp_path) == ["x.npz"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"
    write_labels_npz(str(target), np.zeros((3, 3), np.uint8), {"name": "old"})
    before = target.read_bytes()

    def explode(fh, **members):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(writers.np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        write_labels_npz(str(target), np.ones((3, 3), np.uint8), {"name": "new"})
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.npz"]


def test_unserialisable_provenance_writes_nothing(tmp_path):
    attrs = {"name": "x", "metadata": {"napari_conformal": {"method": "crc", "model": object()}}}
    with pytest.raises(ConformalError, match="model"):
        write_labels_npz(str(tmp_path / "x.npz"), np.zeros((2, 2), np.uint8), attrs)
    assert os.listdir(tmp_path) == []


def test_bad_targets_and_data(tmp_path):
    with pytest.raises(ConformalError, match="directory"):
        write_labels_npz(str(tmp_path), np.zeros((2, 2), np.uint8), {})
    with pytest.raises(ConformalError, match="does not exist"):
        write_labels_npz(str(tmp_path / "no" / "x.npz"), np.zeros((2, 2), np.uint8), {})
    with pytest.raises(ConformalError, match="dtype object"):
        write_image_npz(str(tmp_path / "o.npz"), np.array([[None]], dtype=object), {})
    assert os.listdir(tmp_path) == []


def test_atomic_file_removes_temporary_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "f.bin") as fh:
        fh.write(b"abc")
        raise RuntimeError
    assert os.listdir(tmp_path) == []
    with atomic_file(tmp_path / "f.bin") as fh:
        fh.write(b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


def test_newer_header_version_is_refused(tmp_path):
    (path,) = write_labels_npz(str(tmp_path / "x.npz"), np.zeros((2, 2), np.uint8), {})
    members = load_npz(path)
    header = json.loads(str(members["__napari_conformal__"][()]))
    header["version"] = HEADER_VERSION + 1
    np.savez(path, data=members["data"], __napari_conformal__=np.array(json.dumps(header)))
    with pytest.raises(ConformalError, match="newer"):
        get_reader(path)(str(path))


def test_header_shape_mismatch_is_refused(tmp_path):
    (path,) = write_labels_npz(str(tmp_path / "x.npz"), np.zeros((2, 2), np.uint8), {})
    members = load_npz(path)
    np.savez(path, data=np.zeros((3, 3), np.uint8), __napari_conformal__=members["__napari_conformal__"])
    with pytest.raises(ConformalError, match="header says shape"):
        get_reader(path)(str(path))


# ------------------------------------------------------------------------------------- calibration


def _calibration():
    """A real calibration (CRC on in-memory arrays)."""
    from napari_conformal.api import calibrate
    from napari_conformal.testing.synthetic import binary_blobs_dataset

    images, samples, labels = binary_blobs_dataset(12, (16, 16), n_samples=4, seed=0)
    return calibrate(
        method="crc", alpha=0.2, images=images, samples=samples, labels=labels, cal_indices=range(8)
    )


def test_calibration_from_provenance_writes_a_loadable_file(tmp_path):
    from napari_conformal.core.calibration import Calibration

    calib = _calibration()
    attrs = {"name": "crc set", "metadata": {"napari_conformal": {**_provenance(), "calibration": calib}}}
    (path,) = write_calibration_json(str(tmp_path / "calib"), np.zeros(3), attrs)
    assert path == str(tmp_path / "calib.json")
    assert Calibration.load(path).to_json() == calib.to_json()
    assert calibration_record(attrs) is calib


def test_calibration_read_back_from_a_layer_file_is_validated(tmp_path):
    """A layer opened from a file carries its calibration as JSON; the writer checks it before writing."""
    from napari_conformal.core.calibration import Calibration

    calib = _calibration()
    doc = json.loads(calib.to_json())
    attrs = {"name": "r", "metadata": {"napari_conformal": {**_provenance(), "calibration": doc}}}
    (path,) = write_calibration_json(str(tmp_path / "c.json"), None, attrs)
    assert Calibration.load(path).lambda_hat == calib.lambda_hat
    doc["lambda_hat"] = 0.99  # edited: the digest no longer matches
    with pytest.raises(ConformalError, match="changed after it was written"):
        write_calibration_json(str(tmp_path / "d.json"), None, attrs)
    assert not (tmp_path / "d.json").exists()


def test_calibration_writer_refuses_layers_without_a_calibration(tmp_path):
    with pytest.raises(ConformalError, match="no napari-conformal provenance"):
        write_calibration_json(str(tmp_path / "c.json"), None, {"name": "img", "metadata": {}})
    with pytest.raises(ConformalError, match="holds no calibration"):
        calibration_record({"name": "img", "metadata": {"napari_conformal": {"method": "crc", "alpha": 0.1}}})
    with pytest.raises(ConformalError, match="expected a Calibration"):
        write_calibration(tmp_path / "c.json", {"method": "crc"})
    assert os.listdir(tmp_path) == []
