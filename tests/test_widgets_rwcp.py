"""GUI tests of the RW-CP explorer (real napari viewer under Xvfb via pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_data import FAST_RWCP, assert_same, binary_store, calibrated

from napari_conformal.api import calibrate
from napari_conformal.core.methods.base import make_method

pytestmark = pytest.mark.gui


@pytest.fixture
def explorer(make_napari_viewer):
    from napari_conformal._widgets.rwcp_explorer import RWCPExplorer

    viewer = make_napari_viewer(show=True)
    widget = RWCPExplorer(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _settle(qtbot, widget, *keys: str) -> None:
    """Wait until the background work is done and the given layers exist, then flush the redraw."""
    qtbot.waitUntil(
        lambda: not widget.busy and all(widget.layers.get(k) is not None for k in keys), timeout=60_000
    )
    widget.flush()


def test_alpha_and_step_sliders_draw_the_core_outputs(explorer, qtbot, tmp_path):
    store = binary_store(tmp_path / "s.zarr")
    result, cal, test = calibrated(store, "rwcp", alpha=0.2, params=FAST_RWCP)
    ws = explorer.workspace
    ws.publish(store, result, test)
    _settle(qtbot, explorer, "set:rwcp", "rwcp:step")
    # one method in focus: the companions are off until asked for, and the legend names every colour
    assert explorer.layers.get("set:crc") is None and explorer.layers.get("set:consema") is None
    texts = [text for _, _, text, _ in explorer.legend.entries]
    assert any("RW-CP set" in t for t in texts) and any("CRC set" in t for t in texts)
    assert "misses at most 20 %" in explorer.banner.text()
    for name in ("crc", "consema"):
        explorer.set_companion(name, True)
    _settle(qtbot, explorer, "set:rwcp", "set:crc", "set:consema", "rwcp:step")
    i = test[0]
    assert ws.index == i

    # independent core computation: fresh method, fresh curves
    method = make_method("rwcp", **FAST_RWCP)
    curves = [method.curve(method.prepare(store.image(j), store.samples(j)), store.label(j)) for j in cal]
    prepared = method.prepare(store.image(i), store.samples(i))
    for alpha in (0.3, 0.45, 0.25):
        explorer.levels.alpha_slider.setValue(alpha)
        explorer.flush()
        a = ws.alpha
        assert abs(a - alpha) < 1e-9
        lam = method.lambda_hat(curves, alpha=a)
        rwcp_layer = explorer.layers.get("set:rwcp")
        assert_same(rwcp_layer.data.astype(bool), method.predict(prepared, lam))
        prov = rwcp_layer.metadata["napari_conformal"]
        assert prov["method"] == "rwcp" and prov["alpha"] == a and prov["lambda_hat"] == lam
        assert prov["n"] == len(cal) and prov["image_index"] == i and prov["version"]
        for name, params in (("crc", {}), ("consema", {})):
            # the companions are what a calibration at this α gives (Consema: τ = 1 − α follows α)
            record = calibrate(store, name, alpha=a, cal_indices=cal, **(params or {}))
            other = make_method(name, **params)
            expected = other.predict(other.prepare(store.image(i), store.samples(i)), record.lambda_hat)
            layer = explorer.layers.get(f"set:{name}")
            assert_same(layer.data.astype(bool), expected)
            assert layer.metadata["napari_conformal"]["lambda_hat"] == record.lambda_hat
            assert layer.contour == 1  # 2D view: contours

    diffusion = prepared.extras["diffusion"]
    for t in (0, 2, 4):
        explorer.step_slider.setValue(t)
        explorer.flush()
        step_layer = explorer.layers.get("rwcp:step")
        assert_same(step_layer.data, diffusion.step(t))
        assert step_layer.metadata["napari_conformal"]["step"] == t
    # the layers own their data: showing S⁽ᵗ⁾ never wrote into the cached prepared image
    cached = ws.session("rwcp").cached_prepared(i)
    assert_same(cached.extras["diffusion"].final, diffusion.final)
    assert_same(cached.score, prepared.score)

    # dragging: many values without a chance to redraw in between; the last one is drawn
    before = explorer.redraw_count
    values = np.linspace(0.2, 0.4, 9)
    for alpha in values:
        explorer.levels.alpha_slider.setValue(float(alpha))
    final = make_method("rwcp", **FAST_RWCP)
    expected = final.predict(prepared, final.lambda_hat(curves, alpha=ws.alpha))
    qtbot.waitUntil(
        lambda: np.array_equal(explorer.layers.get("set:rwcp").data.astype(bool), expected), timeout=10_000
    )
    assert explorer.redraw_count - before < len(values)

    # choosing another image follows through
    explorer.image_chooser.setCurrentIndex(1)
    j = explorer.image_chooser.currentData()
    _settle(qtbot, explorer, "set:rwcp")
    qtbot.waitUntil(lambda: explorer.layers.get("set:rwcp").metadata["napari_conformal"]["image_index"] == j)
    other_prepared = method.prepare(store.image(j), store.samples(j))
    assert_same(
        explorer.layers.get("set:rwcp").data.astype(bool),
        method.predict(other_prepared, method.lambda_hat(curves, alpha=ws.alpha)),
    )
    assert_same(explorer.layers.get("image").data, store.image(j))

    screenshot = explorer.viewer.screenshot(canvas_only=False, flash=False)
    assert screenshot[..., :3].max() > 0 and screenshot[..., :3].std() > 5


@pytest.mark.filterwarnings("ignore:Contours are not displayed during 3D rendering")
def test_user_layers_untouched_export_and_3d(explorer, qtbot, tmp_path):
    from napari_conformal.io.readers import get_volume_reader

    store = binary_store(tmp_path / "v.zarr", n=10, shape=(12, 16, 16), seed=3)
    result, _cal, test = calibrated(store, "rwcp", alpha=0.25, params=FAST_RWCP)
    viewer = explorer.viewer
    i = test[0]
    user = viewer.add_labels(np.zeros(store.spatial_shape, np.uint8), name=f"RW-CP set (image {i})")
    explorer.workspace.publish(store, result, test)
    for name in ("crc", "consema"):
        explorer.set_companion(name, True)
    _settle(qtbot, explorer, "set:rwcp", "set:crc", "set:consema")
    assert not user.data.any() and "napari_conformal" not in user.metadata
    own = explorer.layers.get("set:rwcp")
    assert own is not user and own.name != user.name

    method = result.method_object
    expected = method.predict(method.prepare(store.image(i), store.samples(i)), result.lambda_hat)
    assert own.data.shape == store.spatial_shape
    assert_same(own.data.astype(bool), expected)

    viewer.dims.ndisplay = 3
    assert own.contour == 0  # filled iso-categorical labels in 3D
    viewer.dims.ndisplay = 2
    assert own.contour == 1

    out = tmp_path / "export"
    out.mkdir()
    written = explorer.export_to(str(out))
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert "CALIB_rwcp.json" in names and "CALIB_crc.json" in names
    assert sum(n.endswith(".npz") for n in names) == 4
    set_file = next(p for p in written if p.endswith(".npz") and "RW-CP_set" in p)
    layer_data = get_volume_reader(set_file)(set_file)[0]
    assert_same(layer_data[0].astype(bool), expected)
    assert layer_data[1]["metadata"]["napari_conformal"]["lambda_hat"] == result.lambda_hat
    with pytest.raises(ValueError, match="already exists"):
        explorer.export_to(str(out))
