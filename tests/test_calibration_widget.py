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
    assert widget.calibration.lambda_hat == expected.lambda_hat
    assert list(widget.calibration.cal_indices) == cal

    layers = widget.viewer.layers
    assert len(layers) == 2
    set_layer = layers[-1]
    prov = set_layer.metadata["napari_conformal"]
    assert prov["method"] == "crc" and prov["alpha"] == 0.2 and prov["lambda_hat"] == expected.lambda_hat
    assert prov["image_index"] == test[0] and prov["n"] == len(cal)
    fg = store.samples(test[0])[:, 1].mean(axis=0)
    assert np.array_equal(
        set_layer.data.astype(bool), (1.0 - fg.astype(np.float64)) <= expected.lambda_hat
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
    """The inputs generated from RW-CP's options spec reach the method; a store's recorded split is used."""
    import zarr

    from napari_conformal.core.methods.base import method_class

    store_path = _binary_store(tmp_path / "split.zarr", n=24)
    cal, test = list(range(3, 23)), [0, 1, 2, 23]
    zarr.open_group(str(store_path), mode="r+").attrs["split"] = {"train": [], "calibration": cal, "test": test}
    _choose(widget, store_path, "rwcp", alpha=0.2)
    # one input per option of the spec, on the method's own page
    assert set(widget.option_inputs["rwcp"]) == {o.name for o in method_class("rwcp").options}
    assert widget.option_stack.currentIndex() == widget.method_combo.currentIndex()
    assert not widget.nu_spin.isEnabled()
    widget.set_option("features", "multiscale")
    widget.set_option("k", 6)
    widget.set_option("rw_beta", 20.0)
    widget.set_option("n_step", 3)
    assert widget.request()["options"] == {"features": "multiscale", "k": 6, "rw_beta": 20.0, "n_step": 3}
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    calibration = widget.calibration
    assert calibration is not None, widget.status.text()
    assert list(calibration.cal_indices) == cal and calibration.k == 6
    assert calibration.params["features"] == "multiscale"
    assert calibration.params["rw_beta"] == 20.0 and calibration.params["n_step"] == 3
    store = open_store(store_path)
    expected = calibrate(store, "rwcp", alpha=0.2, k=6, cal_indices=cal, features="multiscale", rw_beta=20.0, n_step=3)
    assert calibration.lambda_hat == expected.lambda_hat

    # another method shows its own inputs; unticking the box goes back to a random split
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("crc"))
    assert set(widget.option_inputs["crc"]) == {"fg_class"}
    assert widget.option_stack.currentIndex() == widget.method_combo.currentIndex()
    widget.store_split_check.setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert list(widget.calibration.cal_indices) == random_split(24, 0.5, 0)[0]


def test_bad_option_value_is_refused_before_any_work(widget, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    store_path = _binary_store(tmp_path / "opt.zarr", n=20)
    _choose(widget, store_path, "sacp", alpha=0.2)
    widget.set_option("weight", "1.5")  # w must lie in [0, 1]
    widget.run()
    assert widget.worker is None and widget.calibration is None
    assert any("weight" in m for m in seen), seen


def _same_calibration(a: dict, b: dict, ignore: tuple[str, ...] = ("provenance", "digest")) -> None:
    """Two calibration documents equal except for when/where they were computed."""
    a = {k: v for k, v in a.items() if k not in ignore}
    b = {k: v for k, v in b.items() if k not in ignore}
    assert a == b


@pytest.mark.parametrize(("method", "nu", "options"), [("consign", 0.7, {"k": 3}), ("crc", None, {})])
def test_dock_cli_and_api_write_the_same_calibration(widget, qtbot, tmp_path, method, nu, options):
    """One engine: the dock, the command line and the API (store and in-memory arrays) give the same JSON."""
    import json

    from napari_conformal.cli import main
    from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

    images, samples, labels = lowrank_multiclass_dataset(24, (20, 20), n_classes=3, n_samples=8, seed=2)
    store_path = tmp_path / "same.zarr"
    create_store(store_path, images, samples.astype(np.float16), labels)
    store = open_store(store_path)
    cal, _ = random_split(store.n_images, 0.5, 0)
    # the API on the store and on the arrays
    api_doc = calibrate(store, method, alpha=0.25, nu=nu, cal_indices=cal, split_seed=0, **options).to_dict()
    arrays_doc = calibrate(
        method=method, alpha=0.25, nu=nu, images=images, samples=samples.astype(np.float16), labels=labels,
        cal_indices=cal, **options,
    ).to_dict()
    _same_calibration(api_doc, arrays_doc, ("provenance", "digest", "store"))
    assert arrays_doc["store"]["path"] is None
    # the command line
    out = tmp_path / "cli.json"
    flags = [f"--{k}" for k in options for _ in (0,)]
    argv = ["calibrate", str(store_path), "--method", method, "--alpha", "0.25", "--cal-fraction", "0.5", "--seed", "0"]
    argv += ["--nu", str(nu)] if nu is not None else []
    for flag, value in zip(flags, options.values(), strict=True):
        argv += [flag, str(value)]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    cli_doc = json.loads(out.read_text())
    _same_calibration(api_doc, cli_doc)
    # the dock
    _choose(widget, store_path, method, alpha=0.25)
    widget.store_split_check.setChecked(False)
    if nu is not None:
        widget.nu_spin.setValue(nu)
    for name, value in options.items():
        widget.set_option(name, value)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.calibration is not None, widget.status.text()
    _same_calibration(api_doc, widget.calibration.to_dict())
    assert widget.calibration.provenance.seed == cli_doc["provenance"]["seed"] == 0


def test_load_calibration_publishes_it_and_refuses_bad_files(widget, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_conformal._widgets._context import context_for

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    store_path = _binary_store(tmp_path / "load.zarr", n=20)
    store = open_store(store_path)
    cal, test = random_split(store.n_images, 0.5, 0)
    saved = calibrate(store, "consema", alpha=0.25, cal_indices=cal)
    good = saved.save(tmp_path / "CALIB.json")
    # bad files first: each is one notification, and nothing changes
    truncated = tmp_path / "truncated.json"
    truncated.write_text(good.read_text()[:200])
    edited = tmp_path / "edited.json"
    edited.write_text(good.read_text().replace('"alpha": 0.25', '"alpha": 0.3'))
    for bad, needle in ((truncated, "not valid JSON"), (edited, "changed after it was written"), (tmp_path / "none.json", "not found")):
        seen.clear()
        assert not widget.load_calibration(str(bad))
        assert any(needle in m for m in seen), (bad, seen)
        assert widget.calibration is None and len(widget.viewer.layers) == 0
    # the good one: published with its store, the explorers' workspace follows it
    assert widget.load_calibration(str(good))
    assert widget.calibration.to_json() == saved.to_json()
    assert widget.store_edit.text() == str(store_path.resolve())
    workspace = context_for(widget.viewer).workspace
    assert workspace.primary == "consema" and workspace.cal_indices == cal and workspace.test_indices == test
    assert workspace.alpha == 0.25 and workspace.index == test[0]
    assert "λ" in widget.status.text() or "dilations" in widget.status.text()
    # a moved store: the Store field points at the copy, whose identity must match
    import shutil

    moved = tmp_path / "moved.zarr"
    shutil.move(store_path, moved)
    widget.store_edit.setText(str(moved))
    assert widget.load_calibration(str(good))
    other = _binary_store(tmp_path / "other.zarr", n=20, seed=5)
    widget.store_edit.setText(str(other))
    seen.clear()
    assert not widget.load_calibration(str(good))
    assert any("not the store" in m for m in seen), seen


def test_store_opened_as_layers_is_offered_and_calibrates(widget, qtbot, tmp_path):
    """The dock takes "the store (or layers)": a store opened through the reader fills the dock."""
    store_path = _binary_store(tmp_path / "layers.zarr", n=20)
    other = _binary_store(tmp_path / "other.zarr", n=20, seed=3)
    assert widget.layer_store_combo.count() == 1 and not widget.layer_store_combo.isEnabled()
    widget.viewer.open(str(store_path), plugin="napari-conformal")
    resolved = str(store_path.resolve())
    assert widget.store_edit.text() == resolved  # empty field: the open store is taken
    widget.viewer.open(str(other), plugin="napari-conformal")
    assert [path for _, path in widget.layer_stores()] == [resolved, str(other.resolve())]
    # the store opened last is the one Run calibrates (it used to stay on the first: the wrong data)
    assert widget.store_edit.text() == str(other.resolve())
    widget.layer_store_combo.setCurrentIndex(1)
    widget.layer_store_combo.activated.emit(1)
    assert widget.store_edit.text() == resolved
    widget.layer_store_combo.setCurrentIndex(2)
    widget.layer_store_combo.activated.emit(2)
    assert widget.store_edit.text() == str(other.resolve())
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("crc"))
    widget.alpha_spin.setValue(0.2)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.calibration is not None
    assert widget.calibration.store.path == str(other.resolve())
    for layer in list(widget.viewer.layers):
        widget.viewer.layers.remove(layer)
    assert widget.layer_stores() == [] and not widget.layer_store_combo.isEnabled()


def test_progress_feed_never_reenters_and_ends_on_the_last_step(make_napari_viewer):
    """A progress update that processes events can deliver the next step while it runs (a RecursionError
    before): the feed keeps the latest such step and applies it after the update returns."""
    from napari_conformal._widgets._progress import ProgressFeed
    from napari_conformal.core.progress import Step

    make_napari_viewer()
    feed = ProgressFeed("test", total=10)
    real_update = feed.bar.update
    depth = {"now": 0, "max": 0}
    arrivals = iter(range(2, 3001))

    def update_that_delivers_the_next_step(k: int) -> None:  # what processEvents does with a queued signal
        depth["now"] += 1
        depth["max"] = max(depth["max"], depth["now"])
        real_update(k)
        nxt = next(arrivals, None)
        if nxt is not None:
            feed(Step(nxt, 3000, "search"))
        depth["now"] -= 1

    feed.bar.update = update_that_delivers_the_next_step
    feed(Step(1, 3000, "search"))  # 3000 nested deliveries would overflow the stack if the feed re-entered
    assert depth["max"] == 1
    assert feed.bar.n == 3000 and feed.last == (3000, 3000) and feed.bar.desc.startswith("test: search")
    feed.close()
