"""GUI tests of the metrics panel (real napari viewer under Xvfb via pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_data import binary_store, calibrated

from napari_conformal.api import calibrate, evaluate
from napari_conformal.core.methods.base import make_method
from napari_conformal.core.metrics.segmentation import coverage
from napari_conformal.errors import InsufficientCalibrationError

pytestmark = pytest.mark.gui


def test_panels_follow_image_and_sliders_and_match_the_core(make_napari_viewer, qtbot, tmp_path):
    from napari_conformal._widgets.metrics_panel import ALPHA_GRID, MetricsPanel

    viewer = make_napari_viewer(show=True)
    panel = MetricsPanel(viewer)
    viewer.window.add_dock_widget(panel)
    store = binary_store(tmp_path / "s.zarr", n=20)
    result, cal, test = calibrated(store, "crc", alpha=0.2)
    ws = panel.workspace
    ws.publish(store, result, test)
    aps, _, _ = calibrated(store, "aps", alpha=0.2, nu=0.8)
    ws.nu = 0.8
    ws.add_session(aps)

    def idle_with_image() -> bool:
        panel.flush()
        image = panel.plot_data.get("image", {})
        return not panel.busy and "crc" in image and image["crc"]["lambda_hat"] == ws.lambda_hat("crc")

    qtbot.waitUntil(idle_with_image, timeout=60_000)
    i = test[0]

    # λ̂ against α: a fresh calibration at every α of the grid, and the line drawn is that curve
    def crc_lambda(a: float) -> float:
        try:
            return calibrate(store, "crc", alpha=float(a), cal_indices=cal).lambda_hat
        except InsufficientCalibrationError:  # n = 10 calibration images: α ≥ 1/11
            return np.nan

    expected = [crc_lambda(a) for a in ALPHA_GRID]
    assert np.isnan(expected[0]) and np.isfinite(expected[-1])
    _, y = panel.plot_data["lambda"]["crc"]
    assert np.array_equal(y, expected, equal_nan=True)
    drawn = [line for line in panel.axes["lambda"].lines if line.get_label() == "CRC"]
    assert len(drawn) == 1 and np.array_equal(drawn[0].get_ydata(), expected, equal_nan=True)

    # the selected image's metrics are the core's evaluate at the current λ̂
    method = make_method("crc")
    prepared = method.prepare(store.image(i), store.samples(i))
    core = method.evaluate(prepared, store.label(i), ws.lambda_hat("crc"), spacing=store.spacing)
    for key in ("coverage", "stretch", "dice", "assd", "hd95"):
        assert panel.plot_data["image"]["crc"][key] == pytest.approx(core[key], nan_ok=True, rel=0, abs=0)
    assert set(panel.plot_data["image"]["aps"]["chao1"]) == {"10", "20", "50"}

    # test set: coverage against 1 − α from the test curves equals predict + coverage image by image
    panel.evaluate_test_set()
    qtbot.waitUntil(lambda: not panel.busy and "crc" in panel.test_metrics, timeout=60_000)
    panel.flush()
    _, cov = panel.plot_data["coverage"]["crc"]
    truth = {j: store.label(j) == 1 for j in test}
    preps = {j: method.prepare(store.image(j), store.samples(j)) for j in test}
    assert np.isnan(cov[0])  # no λ̂ below α = 1/11
    for a, got in zip(ALPHA_GRID[6::6], cov[6::6], strict=True):
        lam = crc_lambda(a)
        brute = np.mean([coverage(method.predict(preps[j], lam), truth[j]) for j in test])
        assert got == pytest.approx(brute, abs=1e-12)

    # moving α: the image panel and (after the debounce) the test-set means follow
    ws.alpha = 0.3
    record = calibrate(store, "crc", alpha=0.3, cal_indices=cal)
    reference = evaluate(store, record, test_indices=test)
    qtbot.waitUntil(idle_with_image, timeout=60_000)
    qtbot.waitUntil(lambda: not panel.busy and panel.test_metrics["crc"].alpha == 0.3, timeout=60_000)
    for key in ("coverage", "stretch", "dice"):
        assert panel.test_metrics["crc"].mean[key] == pytest.approx(reference["mean"][key], rel=1e-12)

    # another image: the panel follows
    ws.index = test[1]
    qtbot.waitUntil(idle_with_image, timeout=60_000)
    core = method.evaluate(
        method.prepare(store.image(test[1]), store.samples(test[1])),
        store.label(test[1]),
        ws.lambda_hat("crc"),
        spacing=store.spacing,
    )
    assert panel.plot_data["image"]["crc"]["dice"] == core["dice"]

    screenshot = viewer.screenshot(canvas_only=False, flash=False)
    assert screenshot[..., :3].std() > 5
