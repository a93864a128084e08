"""GUI tests of the pixel-wise view (real napari viewer under Xvfb via pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_data import assert_same, calibrated, multiclass_store

from napari_conformal.api import calibrate
from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.pixelwise import sample_members, set_size_map

pytestmark = pytest.mark.gui


def test_alpha_nu_sliders_members_and_method_switch(make_napari_viewer, qtbot, tmp_path):
    from napari_conformal._widgets.pixelwise_view import PixelwiseView

    viewer = make_napari_viewer(show=True)
    view = PixelwiseView(viewer)
    viewer.window.add_dock_widget(view)
    store = multiclass_store(tmp_path / "m.zarr")
    result, cal, test = calibrated(store, "aps", alpha=0.2, nu=0.8)
    ws = view.workspace
    ws.publish(store, result, test)
    qtbot.waitUntil(lambda: not view.busy and view.layers.get("size:aps") is not None, timeout=60_000)
    view.flush()
    assert view.method_name == "aps"
    i = test[0]

    def expected_size(name: str, params=None) -> tuple:
        record = calibrate(store, name, alpha=ws.alpha, nu=ws.nu, cal_indices=cal, **(params or {}))
        method = make_method(name, **(params or {}))
        prepared = method.prepare(store.image(i), store.samples(i))
        return prepared, record.lambda_hat

    view.n_spin.setValue(7)
    view.seed_spin.setValue(3)
    view.draw_members()
    for alpha, nu in ((0.2, 0.8), (0.3, 0.8), (0.3, 0.6), (0.15, 0.9)):
        view.levels.alpha_slider.setValue(alpha)
        view.levels.nu_slider.setValue(nu)
        view.flush()
        assert abs(ws.alpha - alpha) < 1e-9 and abs(ws.nu - nu) < 1e-9
        prepared, lam = expected_size("aps")
        size_layer = view.layers.get("size:aps")
        assert_same(size_layer.data, set_size_map(prepared, lam))
        prov = size_layer.metadata["napari_conformal"]
        assert prov["lambda_hat"] == lam and prov["nu"] == ws.nu and prov["alpha"] == ws.alpha
        members = view.layers.get("members:aps")
        assert members.data.shape == (7, *store.spatial_shape)
        assert_same(members.data, sample_members(prepared, lam, 7, 3))
        # every member lies in the set: its label at each pixel is one of the set's labels
        masks = prepared.scores <= lam
        for m in members.data:
            assert np.take_along_axis(masks, m[None].astype(np.intp), axis=0).all()

    # another pixel-wise method is calibrated on the same calibration images
    view.method_combo.setCurrentIndex(view.method_combo.findData("sacp"))
    qtbot.waitUntil(lambda: view.layers.get("size:sacp") is not None and not view.busy, timeout=60_000)
    view.flush()
    assert view.layers.get("size:aps") is None
    prepared, lam = expected_size("sacp")
    assert_same(view.layers.get("size:sacp").data, set_size_map(prepared, lam))
    assert_same(view.layers.get("members:sacp").data, sample_members(prepared, lam, 7, 3))

    screenshot = viewer.screenshot(canvas_only=False, flash=False)
    assert screenshot[..., :3].std() > 5
