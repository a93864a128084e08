"""The readers, writers and sample data inside a real napari viewer (Xvfb via pytest-xvfb)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from napari_conformal.errors import ConformalError
from napari_conformal.io.store import create_store

pytestmark = pytest.mark.gui

PLUGIN = "napari-conformal"


def _store(path, spatial=(4, 6, 5), n=2, t=3, ll=2, spacing=(3.0, 1.0, 0.5)):
    rng = np.random.default_rng(0)
    fg = rng.uniform(size=(n, t, *spatial)).astype(np.float32)
    samples = np.stack([1 - fg, fg], axis=2) if ll == 2 else None
    images = rng.normal(size=(n, *spatial)).astype(np.float32)
    labels = (rng.uniform(size=(n, *spatial)) > 0.5).astype(np.uint8)
    create_store(path, images, samples, labels, spacing=spacing, label_names=["bg", "hippocampus"])
    return images, samples, labels


def test_open_store_in_viewer(make_napari_viewer, tmp_path):
    from napari.layers import Image, Labels

    path = tmp_path / "hippo.zarr"
    _images, samples, labels = _store(path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == [
        "hippo images",
        "hippo ground truth",
        "hippo mean prediction",
        "hippo sample predictions",
    ]
    assert len(layers) == 4
    img, gt, mean, per_sample = viewer.layers
    assert isinstance(img, Image) and all(isinstance(x, Labels) for x in (gt, mean, per_sample))
    assert img.data.shape == (2, 4, 6, 5)
    assert per_sample.data.shape == (3, 2, 4, 6, 5)
    np.testing.assert_allclose(img.scale, [1, 3.0, 1.0, 0.5])
    np.testing.assert_allclose(per_sample.scale, [1, 1, 3.0, 1.0, 0.5])
    assert viewer.dims.ndim == 5
    np.testing.assert_array_equal(np.asarray(gt.data), labels)
    expected_mean = samples.mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(np.asarray(mean.data), expected_mean)
    for layer in viewer.layers:
        prov = layer.metadata["napari_conformal"]
        assert prov["store"]["path"] == str(path.resolve())
        assert prov["label_names"] == ["bg", "hippocampus"]
    assert list(mean.features["class"]) == ["bg", "hippocampus"]
    assert not per_sample.visible


def test_save_and_reopen_result_layer_with_provenance(make_napari_viewer, tmp_path):
    from napari.layers import Labels

    viewer = make_napari_viewer()
    prov = {"method": "crc", "alpha": 0.1, "nu": None, "lambda_hat": 0.37, "n": 30, "version": "0.1.0"}
    data = np.zeros((3, 5, 6), np.uint8)
    data[1, 2:4, 3:5] = 1
    viewer.add_labels(data, name="crc set", scale=(2.0, 1.0, 1.0), metadata={"napari_conformal": prov})
    for suffix in (".npz", ".tif"):
        target = tmp_path / f"set{suffix}"
        written = viewer.layers.save(str(target), selected=True, plugin=PLUGIN)
        assert [str(p) for p in written] == [str(target)]
        reopened = viewer.open(str(target), plugin=PLUGIN)[0]
        assert isinstance(reopened, Labels)
        np.testing.assert_array_equal(reopened.data, data)
        assert reopened.metadata["napari_conformal"] == prov
        np.testing.assert_allclose(reopened.scale, [2.0, 1.0, 1.0])
        viewer.layers.remove(reopened)
        viewer.layers.selection = {viewer.layers["crc set"]}

    # a result layer carries its calibration: saving the layer as .json writes a loadable CALIB.json
    from napari_conformal.api import calibrate
    from napari_conformal.core.calibration import Calibration
    from napari_conformal.testing.synthetic import binary_blobs_dataset

    images, samples, labels = binary_blobs_dataset(12, (16, 16), n_samples=4, seed=0)
    calibration = calibrate(
        method="crc", alpha=0.2, images=images, samples=samples, labels=labels, cal_indices=range(8)
    )
    viewer.layers["crc set"].metadata = {"napari_conformal": {**prov, "calibration": calibration}}
    calib = tmp_path / "calib.json"
    viewer.layers.save(str(calib), selected=True, plugin=PLUGIN)
    assert Calibration.load(calib).to_json() == calibration.to_json()


def test_broken_store_reports_a_conformal_error(make_napari_viewer, tmp_path):
    import zarr

    path = tmp_path / "broken.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"format": "napari-conformal-dataset", "version": 1})
    group.create_array("images", shape=(2, 4, 4), dtype="f4")
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:  # napari may wrap the reader's error
        viewer.open(str(path), plugin=PLUGIN)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, ConformalError) and "samples" in str(e) for e in chain), chain
    assert len(viewer.layers) == 0


def test_sample_data_goes_through_the_store_reader(make_napari_viewer, tmp_path, monkeypatch):
    """The sample-data commands call demo_data.build_demo_store(name) and read the store it made."""
    path = tmp_path / "nuclei.zarr"
    _store(path, spatial=(8, 9), spacing=(1.0, 1.0))
    calls = []

    def build_demo_store(name, **kwargs):
        calls.append(name)
        return path

    fake = types.ModuleType("napari_conformal.demo_data")
    fake.build_demo_store = build_demo_store
    monkeypatch.setitem(sys.modules, "napari_conformal.demo_data", fake)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    viewer.open_sample(PLUGIN, "hippocampus")
    viewer.open_sample(PLUGIN, "brain-mri")
    assert calls == ["nuclei", "hippocampus-3d", "brain-mri"]
    assert [layer.name for layer in viewer.layers][:4] == [
        "nuclei images",
        "nuclei ground truth",
        "nuclei mean prediction",
        "nuclei sample predictions",
    ]
    assert len(viewer.layers) == 12


def test_viewer_reads_only_the_images_it_shows(make_napari_viewer, tmp_path, qtbot):
    """Corrupt every chunk of the last image: the store opens and displays (2D and 3D) without
    touching it; only stepping to that image fails (so the check can fail when reading is eager)."""
    path = tmp_path / "lazy.zarr"
    n = 5
    _store(path, n=n)
    for array in ("images", "labels", "samples"):
        root = path / array
        for f in root.rglob("*"):
            if f.is_file() and f.name != "zarr.json" and f.relative_to(root).parts[1] == str(n - 1):
                f.write_bytes(b"corrupt")
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin=PLUGIN)
    image_axis = viewer.dims.ndim - 4  # (T, N, Z, Y, X): N is the second axis
    assert viewer.dims.current_step[image_axis] != n - 1
    viewer.layers["lazy sample predictions"].visible = True
    viewer.dims.ndisplay = 3
    qtbot.wait(50)
    viewer.dims.ndisplay = 2
    with pytest.raises(Exception, match=r"(?i)decompress|codec|corrupt|invalid"):
        viewer.dims.set_current_step(image_axis, n - 1)
        qtbot.wait(50)


@pytest.mark.slow
def test_real_demo_store_opens_in_viewer(make_napari_viewer, tmp_path, monkeypatch):
    """A two-image subset of the packaged nuclei demo, built in a temporary cache, shown in napari."""
    monkeypatch.setenv("NAPARI_CONFORMAL_CACHE", str(tmp_path))
    from napari_conformal.demo_data import build_demo_store
    from napari_conformal.io.store import open_store
    from napari_conformal.sample_data import demo_layers

    layers = demo_layers("nuclei", n_images=2)
    store = open_store(build_demo_store("nuclei", n_images=2))  # cached: same store
    assert str(store.path).startswith(str(tmp_path))
    viewer = make_napari_viewer()
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    names = [layer.name for layer in viewer.layers]
    assert names[0].endswith(" images") and names[-1].endswith(" sample predictions")
    image = viewer.layers[0]
    assert image.data.shape == (2, *store.spatial_shape)
    np.testing.assert_allclose(image.scale[1:], store.spacing)
    np.testing.assert_array_equal(np.asarray(viewer.layers[1].data), [store.label(i) for i in range(2)])
    assert viewer.layers[-1].data.shape == (store.n_samples, 2, *store.spatial_shape)
