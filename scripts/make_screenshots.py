"""Screenshots of the plugin's docks for the user guide (docs/images/*.png).

Run on a display, or headless under Xvfb (napari needs OpenGL; do not use the
offscreen Qt platform)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshots.py

Each screenshot is a fresh viewer with one dock, calibrated on a seeded
synthetic store (or on ``--store``, any napari-conformal store with labels),
so the pictures are reproducible. The script fails when a screenshot comes out
black (no OpenGL context).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1500, 900)


def wait_until(predicate: Callable[[], bool], timeout: float = 300.0) -> None:
    """Process Qt events until ``predicate()`` is true."""
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the dock did not finish its background work in time")


def settle(seconds: float = 0.5) -> None:
    """Let Qt and vispy draw for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def save(viewer, path: Path) -> None:
    """Screenshot of the whole window (docks included); refuses a black picture."""
    from skimage.io import imsave

    settle()
    image = viewer.screenshot(canvas_only=False, flash=False)
    if image[..., :3].std() < 5:
        raise RuntimeError(f"{path.name}: the screenshot is black; run on a display or under Xvfb")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    imsave(tmp, image, check_contrast=False)
    tmp.replace(path)
    print(f"wrote {path} {image.shape[1]}x{image.shape[0]}")


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=f"napari-conformal: {title}", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def synthetic_stores(folder: Path) -> tuple[Path, Path]:
    """A binary and a 3-label 2D store (seeded)."""
    from napari_conformal.io.store import create_store
    from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

    binary = folder / "binary.zarr"
    images, samples, labels = binary_blobs_dataset(30, (128, 128), n_samples=10, seed=7, noise=2.0)
    create_store(
        binary, images, samples, labels, label_names=["background", "foreground"], sampler="synthetic"
    )
    multi = folder / "multiclass.zarr"
    images, samples, labels = lowrank_multiclass_dataset(30, (128, 128), n_classes=3, n_samples=20, seed=7)
    create_store(
        multi, images, samples, labels, label_names=["background", "wall", "cavity"], sampler="synthetic"
    )
    return binary, multi


def publish(
    viewer, store_path: Path, method: str, *, alpha: float, nu: float | None = None, k=None, params=None
):
    """Calibrate ``method`` (half of the images) and publish it into the viewer's workspace."""
    from napari_conformal.explore.calibrated import iter_calibrate_keeping_curves

    from napari_conformal._widgets._context import context_for
    from napari_conformal.api import drive
    from napari_conformal.io.indices import random_split
    from napari_conformal.io.store import open_store

    store = open_store(store_path)
    cal, test = random_split(store.n_images, 0.5, 0)
    calibrated = drive(
        iter_calibrate_keeping_curves(store, method, alpha=alpha, nu=nu, k=k, cal_indices=cal, params=params)
    )
    ctx = context_for(viewer)
    ctx.workspace.publish(store, calibrated, test)
    return ctx.workspace


def shot_calibration(store: Path, out: Path) -> None:
    from napari_conformal._widgets.calibration import CalibrationWidget

    viewer = new_viewer("calibration")
    dock = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Conformal calibration")
    dock.store_edit.setText(str(store))
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("crc"))
    dock.alpha_spin.setValue(0.1)
    dock.run()
    wait_until(lambda: dock.worker is None)
    settle(1.0)
    save(viewer, out / "calibration.png")
    viewer.close()


def shot_rwcp(store: Path, out: Path) -> None:
    from napari_conformal._widgets.rwcp_explorer import RWCPExplorer

    viewer = new_viewer("RW-CP explorer")
    dock = RWCPExplorer(viewer)
    viewer.window.add_dock_widget(dock, name="RW-CP explorer")
    ws = publish(viewer, store, "rwcp", alpha=0.1, params={"features": "multiscale", "device": "cpu"})
    wait_until(lambda: dock.settled() and dock.layers.get("set:consema") is not None)
    ws.index = ws.test_indices[1]
    wait_until(dock.settled)
    save(viewer, out / "rwcp_explorer.png")
    viewer.close()


def shot_pixelwise(store: Path, out: Path) -> None:
    from napari_conformal._widgets.pixelwise_view import PixelwiseView

    viewer = new_viewer("pixel-wise sets")
    dock = PixelwiseView(viewer)
    viewer.window.add_dock_widget(dock, name="Pixel-wise sets")
    publish(viewer, store, "aps", alpha=0.1, nu=0.9)
    wait_until(lambda: dock.settled() and dock.layers.get("size:aps") is not None)
    dock.n_spin.setValue(20)
    dock.draw_members()
    wait_until(dock.settled)
    viewer.dims.set_current_step(0, 3)
    save(viewer, out / "pixelwise_view.png")
    viewer.close()


def shot_consign(store: Path, out: Path) -> None:
    from napari_conformal._widgets.consign_explorer import ConsignExplorer

    viewer = new_viewer("CONSIGN explorer")
    dock = ConsignExplorer(viewer)
    viewer.window.add_dock_widget(dock, name="CONSIGN explorer")
    publish(viewer, store, "consign", alpha=0.1, nu=0.95, k=5)
    wait_until(lambda: dock.settled() and dock.layers.get("consign:member") is not None)
    lo = [s.minimum() for s in dock.coefficient_sliders]
    dock.set_coefficient(0, lo[0])  # the member at one end of the first direction
    dock.n_spin.setValue(20)
    dock.draw_members()
    wait_until(dock.settled)
    dock.layers.get("consign:members").visible = False
    save(viewer, out / "consign_explorer.png")
    viewer.close()


def shot_metrics(store: Path, out: Path) -> None:
    from napari_conformal._widgets.metrics_panel import MetricsPanel
    from napari_conformal.api import drive

    viewer = new_viewer("metrics")
    dock = MetricsPanel(viewer)
    viewer.window.add_dock_widget(dock, name="Conformal metrics")
    ws = publish(viewer, store, "consign", alpha=0.1, nu=0.95, k=5)
    for name in ("aps", "crc"):
        ws.add_session(drive(ws.iter_companion(name)))
    wait_until(dock.settled)
    dock.evaluate_test_set()
    wait_until(lambda: dock.settled() and dock.test_metrics)
    wait_until(dock.settled)
    save(viewer, out / "metrics_panel.png")
    viewer.close()


SHOTS = {
    "calibration": ("binary", shot_calibration),
    "rwcp": ("binary", shot_rwcp),
    "pixelwise": ("multi", shot_pixelwise),
    "consign": ("multi", shot_consign),
    "metrics": ("multi", shot_metrics),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder")
    parser.add_argument("--store", help="a store with labels to use instead of the synthetic ones")
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS), help="take only these screenshots")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            stores = {"binary": Path(args.store), "multi": Path(args.store)}
        else:
            binary, multi = synthetic_stores(Path(tmp))
            stores = {"binary": binary, "multi": multi}
        for name in args.only or list(SHOTS):
            kind, shot = SHOTS[name]
            shot(stores[kind], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
