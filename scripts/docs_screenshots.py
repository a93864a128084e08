"""Regenerate the screenshots of the user guide (docs/images/*.png) from the demo store.

Every dock is added the way the Plugins menu adds them, on a 1600×1000 screen, and driven as a user
would: the calibration dock runs CONSIGN on the demo store's calibration split (a screenshot while it
runs shows the progress bar), then each explorer and the metrics panel is brought to the front and
captured. Run on a headless machine with::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots.py

``--dataset`` picks another demo store and ``--only NAME ...`` a subset of the images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = (
    "calibration",
    "consign_explorer",
    "consign_3d",
    "rwcp_explorer",
    "pixelwise_view",
    "metrics_panel",
    "build_store",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hippocampus-2d")
    parser.add_argument("--volume", default="hippocampus-3d", help="demo store of the 3D screenshot")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--only", nargs="*", default=list(IMAGES), choices=IMAGES)
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import Qt

    from napari_conformal._widgets._explorer import _dock_of, raise_dock
    from napari_conformal.demo import (
        PLUGIN,
        _explorers_settled,
        _plugin_widget_names,
        _wait,
        save_screenshot,
        start_demo_calibration,
    )
    from napari_conformal.demo_data import build_demo_store

    args.out.mkdir(parents=True, exist_ok=True)

    def open_all() -> tuple[object, dict[str, object]]:
        viewer = napari.Viewer(title="napari-conformal", show=True)
        viewer.window.resize(1600, 1000)
        widgets = {}
        for name in _plugin_widget_names():  # as the Plugins menu adds them: one by one
            widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
            _wait(lambda: False, 0.2)
        return viewer, widgets

    def front(widget) -> None:
        raise_dock(widget)
        _wait(lambda: getattr(widget, "in_front", True), 10)
        _wait(lambda: _explorers_settled(widget.viewer), 600)
        _wait(lambda: False, 1.0)

    def shot(viewer, name: str) -> None:
        path = save_screenshot(viewer, args.out / f"{name}.png")
        print("wrote", path, flush=True)

    store = build_demo_store(args.dataset)
    viewer, widgets = open_all()
    consign = widgets["CONSIGN explorer"]
    rwcp = widgets["RW-CP explorer"]
    pixel = widgets["Pixel-wise sets"]
    metrics = widgets["Conformal metrics"]
    runner = start_demo_calibration(viewer, store, method="consign", alpha=0.1, nu=0.9)
    if "calibration" in args.only:
        _wait(lambda: runner.progress_bar.value() >= max(2, runner.progress_bar.maximum() // 3), 300)
        shot(viewer, "calibration")
    _wait(lambda: runner.worker is None, 900)
    if runner.calibration is None:
        print("the calibration failed:", runner.status.text(), file=sys.stderr)
        return 1
    _wait(lambda: _explorers_settled(viewer), 600)
    if "consign_explorer" in args.only:
        front(consign)
        consign.set_coefficient(0, consign.coefficient_sliders[0].maximum())
        front(consign)
        shot(viewer, "consign_explorer")
        consign.reset_coefficients()
    if "rwcp_explorer" in args.only:
        front(rwcp)
        rwcp.calibrate_companion("rwcp")
        _wait(lambda: rwcp.workspace.session("rwcp") is not None, 900)
        rwcp.set_companion("crc", True)
        front(rwcp)
        rwcp.step_slider.setValue(rwcp.step_slider.maximum())
        front(rwcp)
        shot(viewer, "rwcp_explorer")
    if "pixelwise_view" in args.only:
        front(pixel)
        pixel.calibrate_companion("aps")
        _wait(lambda: pixel.workspace.session("aps") is not None, 600)
        front(pixel)
        pixel.n_spin.setValue(20)
        pixel.draw_members()
        front(pixel)
        shot(viewer, "pixelwise_view")
    if "metrics_panel" in args.only:
        front(metrics)
        viewer.window._qt_window.resizeDocks([_dock_of(metrics)], [560], Qt.Orientation.Horizontal)
        metrics.evaluate_test_set()
        _wait(lambda: not metrics.busy and bool(metrics.test_metrics), 900)
        front(metrics)
        shot(viewer, "metrics_panel")
    if "build_store" in args.only:
        build = widgets["Build store"]
        raise_dock(build)
        _wait(lambda: False, 1.0)
        shot(viewer, "build_store")
    viewer.close()

    if "consign_3d" in args.only:
        viewer, widgets = open_all()
        runner = start_demo_calibration(
            viewer, build_demo_store(args.volume), method="consign", alpha=0.1, nu=0.9
        )
        _wait(lambda: runner.worker is None, 1800)
        consign = widgets["CONSIGN explorer"]
        front(consign)
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (-20.0, 35.0, 60.0)
        front(consign)
        shot(viewer, "consign_3d")
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
