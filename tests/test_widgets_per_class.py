"""The calibration dock's per-structure mode in a real napari viewer (Xvfb), on a real float16 store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _structure_data import dyadic_dataset

from napari_conformal.api import calibrate_per_class
from napari_conformal.core.per_class import ClassCalibrations
from napari_conformal.io.indices import random_split
from napari_conformal.io.store import create_store, open_store

pytestmark = pytest.mark.gui

PLUGIN = "napari-conformal"
NAMES = ["background", "wall", "cavity", "valve"]


@pytest.fixture
def store_path(tmp_path) -> Path:
    images, samples, labels = dyadic_dataset(n=40)
    path = tmp_path / "multi.zarr"
    create_store(path, images, samples.astype(np.float16), labels, label_names=NAMES)
    return path


@pytest.fixture
def rare_store(tmp_path) -> Path:
    """Valve (label 3) in one image of four only: too rare for α = 0.1 in a half split."""
    images, samples, labels = dyadic_dataset(n=40, without_3=tuple(i for i in range(40) if i % 4))
    path = tmp_path / "rare.zarr"
    create_store(path, images, samples.astype(np.float16), labels, label_names=NAMES)
    return path


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _widget_dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Conformal calibration")
    qtbot.wait(50)
    return viewer, widget


def _run(widget, qtbot, store: Path, method: str, alpha: float) -> None:
    widget.store_edit.setText(str(store))
    widget.method_combo.setCurrentIndex(widget.method_combo.findData(method))
    widget.alpha_spin.setValue(alpha)
    widget.fraction_spin.setValue(0.5)
    widget.seed_spin.setValue(0)
    widget.per_class_check.setChecked(True)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def _workspace(viewer):
    from napari_conformal._widgets._context import context_for

    return context_for(viewer).workspace


def test_one_lambda_per_structure_listed_chosen_saved_and_loaded(dock, qtbot, store_path, tmp_path) -> None:
    viewer, widget = dock
    assert not widget.structure_combo.isEnabled() and not widget.save_button.isEnabled()
    _run(widget, qtbot, store_path, "crc", 0.2)
    store = open_store(store_path)
    cal, test = random_split(store.n_images, 0.5, 0)
    expected = calibrate_per_class(store, "crc", alpha=0.2, cal_indices=cal)
    result = widget.class_calibrations
    assert isinstance(result, ClassCalibrations) and result.classes == (1, 2, 3)
    for c in (1, 2, 3):
        assert result.lambda_hat(c) == expected.lambda_hat(c)
    # the λ̂ of every structure is listed, and the chooser offers each
    assert widget.per_class_label.text().count("lambda_hat") == 3 and "valve" in widget.per_class_label.text()
    assert widget.structure_combo.count() == 3 and widget.structure_combo.isEnabled()
    assert not widget.option_input("fg_class", "crc").isEnabled()  # set per structure
    # structure 1 is published first: the explorers read it from the workspace
    workspace = _workspace(viewer)
    primary = workspace.session(workspace.primary)
    assert primary.calibration.params == {"fg_class": 1}
    assert primary.calibration.lambda_hat == expected.lambda_hat(1)
    with_1 = [i for i in test if (store.label(i) == 1).any()]
    assert workspace.test_indices == with_1
    # choosing structure 2 publishes its calibration, its test images and its set
    widget.structure_combo.setCurrentIndex(widget.structure_combo.findData(2))
    widget.structure_combo.activated.emit(widget.structure_combo.currentIndex())
    primary = workspace.session(workspace.primary)
    assert primary.calibration.params == {"fg_class": 2}
    assert primary.calibration.lambda_hat == expected.lambda_hat(2)
    with_2 = [i for i in test if (store.label(i) == 2).any()]
    assert workspace.test_indices == with_2
    set_layer = next(layer for layer in viewer.layers if layer.name.startswith("CRC set"))
    fg = store.samples(with_2[0])[:, 2].astype(np.float64).mean(axis=0)
    assert np.array_equal(set_layer.data.astype(bool), (1.0 - np.clip(fg, 0, 1)) <= expected.lambda_hat(2))
    assert "structure 2 (cavity)" in widget.status.text()
    # Save writes the per-class file; Load calibration… reads it back
    path = tmp_path / "per_class.json"
    assert widget.save_per_class(str(path))
    assert ClassCalibrations.load(path).to_json() == result.to_json()
    widget.per_class_check.setChecked(False)
    assert widget.option_input("fg_class", "crc").isEnabled()
    assert widget.load_calibration(str(path))
    assert widget.class_calibrations.to_json() == result.to_json()
    assert _workspace(viewer).session(_workspace(viewer).primary).calibration.params == {"fg_class": 1}


def test_rare_structures_are_refused_or_get_the_full_set(dock, qtbot, rare_store) -> None:
    viewer, widget = dock
    # at α = 0.1 a structure needs 9 images; valve is in about 5 of the 20 calibration images
    _run(widget, qtbot, rare_store, "crc", 0.1)
    assert widget.class_calibrations is None
    assert (
        "structure 3 (valve) is in" in widget.status.text()
        and "ceil(1/alpha) - 1 = 9" in widget.status.text()
    )
    widget.rare_full_check.setChecked(True)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    result = widget.class_calibrations
    assert result is not None and 3 in result.full_set_classes
    pos = widget.structure_combo.findData(3)
    assert "full set" in widget.structure_combo.itemText(pos)
    assert not widget.structure_combo.model().item(pos).isEnabled()  # nothing to show for a full set
    primary = _workspace(viewer).session(_workspace(viewer).primary)
    assert primary.calibration.params["fg_class"] == result.classes[0]
