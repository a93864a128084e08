"""The ``demo`` command: napari with a real demo store, every dock, and a calibration ready to browse.

:func:`run_demo` builds (or reuses, from the cache folder) the dataset store of a
packaged demo (:func:`napari_conformal.demo_data.build_demo_store`), opens a
viewer with every dock widget of the plugin, and starts a calibration through
the calibration dock, exactly as a person would by filling in the dock and
pressing *Run*. When it finishes, the explorers show the first test image and
follow the sliders.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_DATASETS",
    "add_plugin_docks",
    "dock_widget",
    "explorer_for",
    "open_viewer",
    "run_demo",
    "save_screenshot",
    "start_demo_calibration",
]

PLUGIN = "napari-conformal"
CALIBRATION_DOCK = "Conformal calibration"
#: the explorer tab that shows a method, by a layer kind the method draws (first match wins)
EXPLORER_BY_LAYER = (
    ("directions", "CONSIGN explorer"),
    ("set_size", "Pixel-wise sets"),
    ("contour", "RW-CP explorer"),
)
#: the demo stores ``demo`` can open; the first is the default
DEMO_DATASETS = ("hippocampus-2d", "hippocampus-2d-fewshot", "hippocampus-3d", "brain-mri", "nuclei")


def _plugin_widget_names() -> list[str]:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def open_viewer(show: bool = True) -> Any:
    """A napari viewer with every dock widget of the plugin added.

    The calibration dock stays on its own on the right; the explorers and the
    metrics panel are tabbed together beside it.

    Parameters
    ----------
    show : bool
        Show the window.

    Returns
    -------
    napari.Viewer
        Find a dock's widget with :func:`dock_widget`.
    """
    import napari

    viewer = napari.Viewer(title="napari-conformal", show=show)
    viewer.window.resize(1500, 950)
    add_plugin_docks(viewer)
    return viewer


def add_plugin_docks(viewer: Any) -> list[Any]:
    """Dock every widget of the plugin in ``viewer`` through napari (as the Plugins menu does).

    Returns
    -------
    list
        The widgets, in manifest order.
    """
    return [
        viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name != CALIBRATION_DOCK)[1]
        for name in _plugin_widget_names()
    ]


def dock_widget(viewer: Any, display_name: str) -> Any:
    """The plugin's widget docked under ``display_name`` in ``viewer`` (added if missing)."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name)
    return widget


def explorer_for(method: str) -> str | None:
    """The display name of the explorer dock that shows ``method`` (from the layers the method draws)."""
    from napari_conformal.core.methods.base import method_class

    layers = method_class(method).layers
    return next((dock for kind, dock in EXPLORER_BY_LAYER if kind in layers), None)


def _raise_dock(viewer: Any, display_name: str | None) -> None:
    """Bring a tabbed dock to the front (no-op when it is not docked)."""
    for name, widget in viewer.window.dock_widgets.items():
        if display_name is not None and name.startswith(display_name):
            dock = widget.parent()
            dock.show()
            dock.raise_()


def start_demo_calibration(
    viewer: Any,
    store_path: str | Path,
    *,
    method: str = "consign",
    alpha: float = 0.1,
    nu: float = 0.9,
    k: int | None = None,
) -> Any:
    """Fill in the calibration dock for ``store_path`` and press Run (the work runs in a thread).

    The store's recorded calibration/test split is used (demo stores have one).

    Returns
    -------
    CalibrationWidget
        Its ``worker`` is None again when the calibration has finished.
    """

    widget = dock_widget(viewer, CALIBRATION_DOCK)
    widget.store_edit.setText(str(store_path))
    pos = widget.method_combo.findData(method)
    if pos < 0:
        from napari_conformal.errors import ConformalError

        raise ConformalError(f"unknown method {method!r} for the demo calibration")
    widget.method_combo.setCurrentIndex(pos)
    widget.alpha_spin.setValue(alpha)
    widget.nu_spin.setValue(nu)
    if k is not None and "k" in widget.option_inputs[method]:
        widget.set_option("k", k)
    widget.store_split_check.setChecked(True)
    widget.run()
    return widget


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Process Qt events until ``condition()`` holds or ``timeout_s`` passes; whether it held."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        QApplication.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _explorers_settled(viewer: Any) -> bool:
    from napari_conformal._widgets._explorer import ExplorerBase

    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, ExplorerBase)]
    return all(w.settled() for w in widgets)


def save_screenshot(viewer: Any, path: str | Path) -> Path:
    """Write a PNG of the whole window (docks included) to ``path`` atomically."""
    from skimage.io import imsave

    image = viewer.screenshot(canvas_only=False, flash=False)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    imsave(tmp, image, check_contrast=False)
    tmp.replace(target)
    return target


def run_demo(
    screenshot: str | None = None,
    *,
    dataset: str = DEMO_DATASETS[0],
    method: str = "consign",
    calibrate: bool = True,
    timeout_s: float = 600.0,
) -> int:
    """Open the demo; with ``screenshot``, wait for the calibration, save a PNG of the window and exit.

    Parameters
    ----------
    screenshot : str, optional
        Path of a PNG to write (the whole window, docks included) once the
        calibration has finished and the explorers have drawn.
    dataset : str
        One of :data:`DEMO_DATASETS`. The first run builds its store from the
        packaged data (seconds for the 2D demos, about two minutes for
        ``hippocampus-3d`` on two CPU cores); later runs reuse the cache.
    method : str
        The method the demo calibrates first (the explorers calibrate the
        others on the same images when you open them).
    calibrate : bool
        Start the calibration (False: only open the store's path in the dock).
    timeout_s : float
        With ``screenshot``: how long to wait for the calibration.

    Returns
    -------
    int
        Exit status: 0, or 1 when the screenshot's calibration failed or timed out.
    """
    from napari_conformal._qt_check import require_qt

    require_qt("napari-conformal demo")  # before the store is built: a missing binding is a 1-line error
    import napari

    from napari_conformal._terminal import progress_bar as _progress_bar
    from napari_conformal.demo_data import build_demo_store

    if dataset not in DEMO_DATASETS:
        from napari_conformal.errors import ConformalError

        raise ConformalError(f"unknown demo dataset {dataset!r}; choose one of {', '.join(DEMO_DATASETS)}")
    print(
        f"napari-conformal demo: preparing the {dataset!r} store (built once, then cached)…", file=sys.stderr
    )
    store_path = build_demo_store(dataset, progress=_progress_bar(f"building {dataset}", quiet=False))
    viewer = open_viewer(show=True)
    widget = dock_widget(viewer, CALIBRATION_DOCK)
    _raise_dock(viewer, explorer_for(method))
    if calibrate:
        start_demo_calibration(viewer, store_path, method=method)
    else:
        widget.store_edit.setText(str(store_path))
    if screenshot is None:
        napari.run()
        return 0
    finished = _wait(lambda: widget.worker is None, timeout_s)
    ok = finished and (not calibrate or widget.calibration is not None)
    if ok:
        _wait(lambda: _explorers_settled(viewer), 60.0)
        _wait(lambda: False, 0.5)  # let the canvas draw the last layers
    else:
        print(f"napari-conformal demo: calibration did not finish: {widget.status.text()}", file=sys.stderr)
    save_screenshot(viewer, screenshot)
    viewer.close()
    return 0 if ok else 1
