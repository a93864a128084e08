"""GUI tests of the calibration dock in a real napari viewer (under Xvfb via pytest-xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_conformal.api import calibrate
from napari_conformal.io.indices import random_split
from napari_conformal.io.store import create_store, open_store

pytestmark = pytest.mark.gui


def _binary_store(path: Path, n: int, shape=(20, 20), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    grids = np.indices(shape)
    images, samples, labels = [], [], []
    for _ in range(n):
        centre = rng.uniform(6, np.array(shape) - 6)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))) - rng.uniform(3, 5)
        fg = 1 / (1 + np.exp(dist[None] / 1.5 + rng.normal(0, 1, size=(3, *shape))))
        samples.append(np.stack([1 - fg, fg], axis=1).astype(np.float32))
        labels.append((dist <= 0).astype(np.int64))
        images.append(rng.normal(size=shape).astype(np.float32))
    create_store(path, np.stack(images), np.stack(samples), np.stack(labels), label_names=["bg", "fg"])
    return path


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_conformal._widgets.calibration import CalibrationWidget

    viewer = make_napari_viewer(show=True)
    w = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _choose(w, store: Path, method: str, alpha: float, fraction: float = 0.5, seed: int = 0) -> None:
    w.store_edit.setText(str(store))
    w.method_combo.setCurrentIndex(w.method_combo.findData(method))
    w.alpha_spin.setValue(alpha)
    w.fraction_spin.setValue(fraction)
    w.seed_spin.setValue(seed)


def test_run_calibration_matches_core_and_adds_layers_with_provenance(widget, qtbot, tmp_path):
    store_path = _binary_store(tmp_path / "s.zarr", n=24)
    _choose(widget, store_path, "crc", alpha=0.2)
    widget.run()
    assert widget.run_button.text() == "Cancel"
    assert not widget.alpha_spin.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.alpha_spin.isEnabled() and widget.run_button.text() == "Run calibration"

    store = open_store(store_path)
    cal, test = random_split(store.n_images, 0.5, 0)
    expected = calibrate(store, "crc", alpha=0.2, cal_indices=cal)
    assert widget.calibration is not None
    assert widget.calibration["lambda_hat"] == expected["lambda_hat"]
    assert widget.calibration["cal_indices"] == cal

    layers = widget.viewer.layers
    assert len(layers) == 2
    set_layer = layers[-1]
    prov = set_layer.metadata["napari_conformal"]
    assert prov["method"] == "crc" and prov["alpha"] == 0.2 and prov["lambda_hat"] == expected["lambda_hat"]
    assert prov["image_index"] == test[0] and prov["n"] == len(cal)
    fg = store.samples(test[0])[:, 1].mean(axis=0)
    assert np.array_equal(
        set_layer.data.astype(bool), (1.0 - fg.astype(np.float64)) <= expected["lambda_hat"]
    )


def test_cancel_leaves_no_partial_result(widget, qtbot, tmp_path):
    store_path = _binary_store(tmp_path / "big.zarr", n=400, shape=(48, 48))
    _choose(widget, store_path, "crc", alpha=0.1, fraction=0.9)
    widget.run()
    worker = widget.worker
    worker.yielded.connect(lambda _step: widget.cancel())  # cancel at the first progress report
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.calibration is None
    assert len(widget.viewer.layers) == 0
    assert "cancelled" in widget.status.text()
    assert widget.alpha_spin.isEnabled()


def test_bad_store_notifies_and_changes_nothing(widget, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    not_a_store = tmp_path / "plain"
    not_a_store.mkdir()
    (not_a_store / "file.txt").write_text("hello")
    _choose(widget, not_a_store, "crc", alpha=0.1)
    widget.run()
    assert widget.worker is None
    assert widget.calibration is None and len(widget.viewer.layers) == 0
    assert any("napari-conformal" in m for m in seen), seen
    assert widget.status.text().startswith("Error")
    assert sorted(p.name for p in not_a_store.iterdir()) == ["file.txt"]


def test_calibration_error_from_worker_becomes_notification(widget, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    store_path = _binary_store(tmp_path / "small.zarr", n=8)
    _choose(widget, store_path, "crc", alpha=0.02)  # n = 4 calibration images is too few for α = 0.02
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.calibration is None and len(widget.viewer.layers) == 0
    assert any("too few calibration images" in m for m in seen), seen


def test_rwcp_inputs_and_the_stores_own_split(widget, qtbot, tmp_path):
    """Extractor, k, β and steps reach the method; a store's recorded split is used when asked."""
    import zarr

    store_path = _binary_store(tmp_path / "split.zarr", n=24)
    cal, test = list(range(3, 23)), [0, 1, 2, 23]
    zarr.open_group(str(store_path), mode="r+").attrs["split"] = {
        "train": [],
        "calibration": cal,
        "test": test,
    }
    _choose(widget, store_path, "rwcp", alpha=0.2)
    assert widget.features_combo.isEnabled() and widget.steps_spin.isEnabled()
    assert not widget.model_dir_edit.isEnabled()  # only for the DINO extractors
    widget.features_combo.setCurrentText("multiscale")
    widget.k_spin.setValue(6)
    widget.beta_spin.setValue(20.0)
    widget.steps_spin.setValue(3)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    record = widget.calibration
    assert record is not None, widget.status.text()
    assert record["cal_indices"] == cal and record["k"] == 6
    assert record["params"]["features"] == "multiscale"
    assert record["params"]["rw_beta"] == 20.0 and record["params"]["n_step"] == 3
    store = open_store(store_path)
    expected = calibrate(
        store,
        "rwcp",
        alpha=0.2,
        k=6,
        cal_indices=cal,
        params={"features": "multiscale", "rw_beta": 20.0, "n_step": 3},
    )
    assert record["lambda_hat"] == expected["lambda_hat"]

    # switching the method greys the RW-CP inputs out; unticking the box goes back to a random split
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("crc"))
    assert not widget.features_combo.isEnabled() and not widget.beta_spin.isEnabled()
    widget.store_split_check.setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.calibration["cal_indices"] == random_split(24, 0.5, 0)[0]


def test_store_opened_as_layers_is_offered_and_calibrates(widget, qtbot, tmp_path):
    """SPEC §5 "choose the store (or layers)": a store opened through the reader fills the dock."""
    store_path = _binary_store(tmp_path / "layers.zarr", n=20)
    other = _binary_store(tmp_path / "other.zarr", n=20, seed=3)
    assert widget.layer_store_combo.count() == 1 and not widget.layer_store_combo.isEnabled()
    widget.viewer.open(str(store_path), plugin="napari-conformal")
    resolved = str(store_path.resolve())
    assert widget.store_edit.text() == resolved  # empty field: the open store is taken
    widget.viewer.open(str(other), plugin="napari-conformal")
    assert [path for _, path in widget.layer_stores()] == [resolved, str(other.resolve())]
    assert widget.store_edit.text() == resolved  # a second store does not replace the choice
    widget.layer_store_combo.setCurrentIndex(2)
    widget.layer_store_combo.activated.emit(2)
    assert widget.store_edit.text() == str(other.resolve())
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("crc"))
    widget.alpha_spin.setValue(0.2)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.calibration is not None
    assert widget.calibration["store"]["path"] == str(other.resolve())
    for layer in list(widget.viewer.layers):
        widget.viewer.layers.remove(layer)
    assert widget.layer_stores() == [] and not widget.layer_store_combo.isEnabled()
