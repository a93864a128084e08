"""Open napari with the plugin's widgets docked (the ``demo`` command)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["open_viewer", "run_demo"]

PLUGIN = "napari-conformal"


def _plugin_widget_names() -> list[str]:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def open_viewer(show: bool = True):
    """A napari viewer with every dock widget of the plugin added.

    Returns
    -------
    napari.Viewer
    """
    import napari

    viewer = napari.Viewer(title="napari-conformal", show=show)
    for name in _plugin_widget_names():
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return viewer


def run_demo(screenshot: str | None = None) -> int:
    """Open the demo viewer; with ``screenshot``, save a PNG of the window and exit.

    Parameters
    ----------
    screenshot : str, optional
        Path of a PNG to write (the whole window, docks included).

    Returns
    -------
    int
        Exit status.
    """
    import napari

    viewer = open_viewer(show=True)
    if screenshot is None:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    image = viewer.screenshot(canvas_only=False, flash=False)
    target = Path(screenshot)
    tmp = target.with_name(f".{target.name}.tmp.png")
    from skimage.io import imsave

    imsave(tmp, image, check_contrast=False)
    tmp.replace(target)
    viewer.close()
    return 0
