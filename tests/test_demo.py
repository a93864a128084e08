"""The demo: every dock added through napari, a calibration started from the dock, a screenshot."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conformal.api import calibrate
from napari_conformal.io.store import open_store

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A 24-image subset of the packaged hippocampus-2d demo (built from the real data and model)."""
    from napari_conformal.demo_data import build_demo_store

    return build_demo_store("hippocampus-2d", tmp_path_factory.mktemp("demo") / "hippo.zarr", n_images=24)


def test_docks_added_by_napari_share_one_workspace(make_napari_viewer):
    """napari gives each plugin widget its own proxy of the viewer; all docks must still share one state."""
    from napari_conformal._widgets._context import context_for
    from napari_conformal.demo import add_plugin_docks

    viewer = make_napari_viewer(show=True)
    widgets = add_plugin_docks(viewer)
    assert len(widgets) == 6
    assert any(w.viewer is not viewer for w in widgets)  # napari injected proxies
    workspaces = {id(context_for(w.viewer).workspace) for w in widgets}
    assert workspaces == {id(context_for(viewer).workspace)}


def test_demo_calibration_reaches_the_explorers(make_napari_viewer, qtbot, demo_store):
    from napari_conformal.demo import CALIBRATION_DOCK, add_plugin_docks, dock_widget, start_demo_calibration

    viewer = make_napari_viewer(show=True)
    add_plugin_docks(viewer)
    widget = start_demo_calibration(viewer, demo_store, method="consign", alpha=0.2, nu=0.9, k=5)
    assert widget is dock_widget(viewer, CALIBRATION_DOCK)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    record = widget.calibration
    assert record is not None, widget.status.text()

    store = open_store(demo_store)
    split = store.attrs["split"]
    assert list(record.cal_indices) == split["calibration"]
    expected = calibrate(store, "consign", alpha=0.2, nu=0.9, k=5, cal_indices=split["calibration"])
    assert record.lambda_hat == expected.lambda_hat  # one engine: the dock's λ̂ is the API's

    explorer = viewer.window.dock_widgets["CONSIGN explorer (napari-conformal)"]
    qtbot.waitUntil(explorer.settled, timeout=120_000)
    assert "consign" in explorer.workspace.sessions
    assert explorer.workspace.index == split["test"][0]
    names = [layer.name for layer in viewer.layers]
    assert any(name.startswith("CONSIGN member") for name in names), names
    member = next(layer for layer in viewer.layers if layer.name.startswith("CONSIGN member"))
    assert member.data.shape == store.spatial_shape and np.any(member.data)
    prov = member.metadata["napari_conformal"]
    assert prov["method"] == "consign" and prov["lambda_hat"] == record.lambda_hat


@pytest.mark.slow
def test_demo_command_saves_a_screenshot_after_calibrating(tmp_path, monkeypatch):
    """``napari-conformal demo --screenshot``: builds the demo store, calibrates, draws, saves, exits 0."""
    from skimage.io import imread

    from napari_conformal.cli import main

    monkeypatch.setenv("NAPARI_CONFORMAL_CACHE", str(tmp_path / "cache"))
    shot = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(shot)]) == 0
    image = imread(shot)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    assert image[..., :3].std() > 10  # not a blank window
    assert (tmp_path / "cache" / "demo" / "hippocampus-2d.zarr").is_dir()
