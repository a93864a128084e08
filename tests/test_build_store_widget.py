"""The Build store dock in a real napari viewer (Xvfb): from layers, from nnU-Net folders, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _import_data import leftovers, softmax, write_nnunet
from qtpy.QtCore import Qt

from napari_conformal.io.store import open_store

pytestmark = pytest.mark.gui


@pytest.fixture
def docks(make_napari_viewer):
    from napari_conformal._widgets.build_store import BuildStoreWidget
    from napari_conformal._widgets.calibration import CalibrationWidget

    viewer = make_napari_viewer(show=True)
    calibration = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(calibration, name="Conformal calibration (napari-conformal)")
    build = BuildStoreWidget(viewer)
    viewer.window.add_dock_widget(build, name="Build store (napari-conformal)")
    return viewer, build, calibration


def test_build_from_layers_opens_the_store_and_fills_the_calibration_dock(docks, qtbot, tmp_path):
    viewer, build, calibration = docks
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 16, 18)).astype(np.float32)
    logits = rng.normal(0, 2, size=(12, 4, 2, 16, 18)).astype(np.float32)
    labels = (rng.uniform(size=(12, 16, 18)) > 0.6).astype(np.uint8)
    viewer.add_image(images, name="slices", scale=(1.0, 0.5, 0.25))
    viewer.add_image(logits, name="model logits")
    viewer.add_labels(labels, name="truth")
    build.set_source("layers")
    assert build.samples_combo.currentText() == "model logits"  # guessed: the layer with most axes
    build.image_combo.setCurrentText("slices")
    build.labels_combo.setCurrentText("truth")
    build.layer_logits.setChecked(True)
    out = tmp_path / "from_layers.zarr"
    build.out_edit.setText(str(out))
    qtbot.mouseClick(build.build_button, Qt.MouseButton.LeftButton)
    assert build.build_button.text() == "Cancel" and not build.out_edit.isEnabled()
    qtbot.waitUntil(lambda: build.worker is None, timeout=60_000)
    assert build.build_button.text() == "Build store" and build.out_edit.isEnabled()
    assert "Wrote 12 cases" in build.status.text(), build.status.text()

    store = open_store(out)
    assert (store.n_images, store.n_samples, store.n_labels, store.spatial_shape) == (12, 4, 2, (16, 18))
    assert store.spacing == (0.5, 0.25)
    assert store.attrs["case_names"][3] == "slices 3"
    np.testing.assert_array_equal(store.image(5), images[5])
    np.testing.assert_array_equal(store.label(5), labels[5])
    np.testing.assert_allclose(store.samples(5).astype(np.float32), softmax(logits[5], axis=1), atol=1e-3)
    names = [layer.name for layer in viewer.layers]
    assert "from_layers images" in names and "from_layers ground truth" in names
    assert calibration.store_edit.text() == str(out.resolve())  # the calibration dock follows the new store


def test_first_guess_skips_computed_layers_and_pairs_the_axes(docks):
    """Image: a layer the plugin did not compute; samples: the layer with two more axes than it."""
    viewer, build, _ = docks
    rng = np.random.default_rng(1)
    viewer.add_image(rng.normal(size=(16, 18)), name="direction u1", metadata={"napari_conformal": {"method": "consign"}})
    viewer.add_image(rng.normal(size=(16, 18)), name="slice")
    viewer.add_image(rng.normal(size=(3, 2, 4, 4)), name="other")
    viewer.add_image(rng.uniform(size=(5, 2, 16, 18)), name="samples")
    build.set_source("layers")
    assert build.image_combo.currentText() == "slice"
    assert build.samples_combo.currentText() == "samples"


def test_one_volume_from_layers(docks, qtbot, tmp_path):
    viewer, build, _ = docks
    rng = np.random.default_rng(1)
    fg = rng.uniform(size=(3, 5, 6, 7)).astype(np.float32)
    viewer.add_image(rng.normal(size=(5, 6, 7)).astype(np.float32), name="volume", scale=(2.0, 1.0, 1.0))
    viewer.add_image(np.stack([1 - fg, fg], axis=1), name="mc samples")
    build.image_combo.setCurrentText("volume")
    build.samples_combo.setCurrentText("mc samples")
    build.out_edit.setText(str(tmp_path / "one.zarr"))
    build.build()
    qtbot.waitUntil(lambda: build.worker is None, timeout=60_000)
    store = open_store(tmp_path / "one.zarr")
    assert store.n_images == 1 and store.spatial_shape == (5, 6, 7) and store.spacing == (2.0, 1.0, 1.0)
    assert not store.has_labels and store.attrs["case_names"] == ["volume"]


def test_cancel_leaves_no_store(docks, qtbot, tmp_path):
    _, build, _ = docks
    folders = write_nnunet(tmp_path / "nn", names=tuple(f"c{k:02d}" for k in range(30)), shape_xyz=(24, 24, 16))
    build.set_source("nnunet")
    build.nn_images.setText(str(folders.images))
    build.nn_labels.setText(str(folders.labels))
    for member in folders.members:
        build.nn_members.add(str(member))
    out = tmp_path / "cancelled.zarr"
    build.out_edit.setText(str(out))
    seen = []

    def cancel_once_writing(step):
        seen.append(step.stage)
        if step.stage == "writing" and step.done == 1 and build.worker is not None:
            assert any(p.name.startswith(".cancelled.zarr.partial") for p in tmp_path.iterdir())
            qtbot.mouseClick(build.build_button, Qt.MouseButton.LeftButton)  # the button reads Cancel

    build.build()
    build.worker.yielded.connect(cancel_once_writing)
    qtbot.waitUntil(lambda: build.worker is None, timeout=120_000)
    assert "writing" in seen and seen.count("writing") < 31
    assert "cancelled" in build.status.text()
    assert leftovers(out) == []
    assert build.build_button.text() == "Build store"


def test_nnunet_folders_from_the_dock(docks, qtbot, tmp_path):
    _viewer, build, calibration = docks
    folders = write_nnunet(tmp_path / "nn", names=("a", "b", "c"))
    build.set_source("nnunet")
    build.nn_images.setText(str(folders.images))
    build.nn_labels.setText(str(folders.labels))
    for member in folders.members:
        build.nn_members.add(str(member))
    out = tmp_path / "nn.zarr"
    build.out_edit.setText(str(out))
    build.build()
    qtbot.waitUntil(lambda: build.worker is None, timeout=60_000)
    store = open_store(out)
    np.testing.assert_array_equal(store.image(0), folders.cases["a"].image_xyz.transpose(2, 1, 0))
    assert calibration.store_edit.text() == str(out.resolve())


def test_bad_layers_and_folders_are_reported_and_write_nothing(docks, qtbot, tmp_path):
    viewer, build, _ = docks
    viewer.add_image(np.zeros((4, 6, 7), np.float32), name="img")
    viewer.add_image(np.full((4, 2, 2, 6, 8), 0.5, np.float32), name="smp")
    build.image_combo.setCurrentText("img")
    build.samples_combo.setCurrentText("smp")
    out = tmp_path / "bad.zarr"
    build.out_edit.setText(str(out))
    build.build()
    assert build.worker is None
    assert "shape mismatch" in build.status.text() and "(4, 2, 2, 6, 8)" in build.status.text()
    folders = write_nnunet(tmp_path / "nn", names=("a", "b"))
    (folders.members[1] / "b.npz").unlink()
    build.set_source("nnunet")
    build.nn_images.setText(str(folders.images))
    for member in folders.members:
        build.nn_members.add(str(member))
    build.build()
    assert build.worker is None and "case names do not match" in build.status.text()
    assert leftovers(out) == []
