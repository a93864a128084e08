"""α / ν sliders and the image chooser, bound two-way to the workspace; safe signal connections."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QWidget

from napari_conformal._widgets._display import notify_error
from napari_conformal.errors import ConformalError
from napari_conformal.explore.workspace import Workspace

__all__ = ["ImageChooser", "LevelSliders", "connect_until_destroyed", "guarded_connect"]


class LevelSliders(QWidget):
    """α (and optionally ν) sliders bound two-way to a workspace.

    Parameters
    ----------
    workspace : Workspace
    with_nu : bool
        Show the ν slider.
    alpha_range, nu_range : (float, float)
        Slider ranges.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        with_nu: bool = False,
        alpha_range: tuple[float, float] = (0.01, 0.5),
        nu_range: tuple[float, float] = (0.0, 0.995),
    ) -> None:
        super().__init__()
        from superqt import QLabeledDoubleSlider

        self.workspace = workspace
        self.alpha_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(*alpha_range)
        self.alpha_slider.setDecimals(3)
        self.alpha_slider.setSingleStep(0.005)
        self.alpha_slider.setToolTip("risk level α: the guarantee holds with probability / in mean at 1 − α")
        self.nu_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.nu_slider.setRange(*nu_range)
        self.nu_slider.setDecimals(3)
        self.nu_slider.setSingleStep(0.005)
        self.nu_slider.setToolTip("label-wise accuracy ν a member must exceed to count as the ground truth")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("α", self.alpha_slider)
        if with_nu:
            form.addRow("ν", self.nu_slider)
        else:
            self.nu_slider.hide()
        self._sync()
        self.alpha_slider.valueChanged.connect(self._alpha_moved)
        self.nu_slider.valueChanged.connect(self._nu_moved)
        connect_until_destroyed(self, workspace.alpha_changed, self._sync)
        connect_until_destroyed(self, workspace.nu_changed, self._sync)

    def _sync(self, *_: Any) -> None:
        for slider, value in ((self.alpha_slider, self.workspace.alpha), (self.nu_slider, self.workspace.nu)):
            if abs(slider.value() - value) > 1e-12:
                slider.blockSignals(True)
                slider.setValue(value)
                slider.blockSignals(False)

    def _alpha_moved(self, value: float) -> None:
        try:
            self.workspace.alpha = value
        except ConformalError as exc:
            notify_error(exc)

    def _nu_moved(self, value: float) -> None:
        try:
            self.workspace.nu = value
        except ConformalError as exc:
            notify_error(exc)


class ImageChooser(QComboBox):
    """Chooses the current image among the workspace's test (then calibration) images."""

    def __init__(self, workspace: Workspace) -> None:
        super().__init__()
        self.workspace = workspace
        self.setToolTip("the image shown and measured (test images first)")
        self._refill()
        self.currentIndexChanged.connect(self._chosen)
        connect_until_destroyed(self, workspace.reset, self._refill)
        connect_until_destroyed(self, workspace.session_added, self._refill)
        connect_until_destroyed(self, workspace.image_changed, self._sync)

    def _refill(self, *_: Any) -> None:
        ws = self.workspace
        self.blockSignals(True)
        self.clear()
        for i in ws.test_indices:
            self.addItem(f"image {i} (test)", i)
        for i in ws.cal_indices:
            self.addItem(f"image {i} (calibration)", i)
        self.blockSignals(False)
        self._sync()

    def _sync(self, *_: Any) -> None:
        pos = self.findData(self.workspace.index)
        if pos >= 0 and pos != self.currentIndex():
            self.blockSignals(True)
            self.setCurrentIndex(pos)
            self.blockSignals(False)

    def _chosen(self, pos: int) -> None:
        data = self.itemData(pos)
        if data is not None:
            self.workspace.index = int(data)


def guarded_connect(signal: Any, slot: Callable[..., Any]) -> None:
    """Connect a worker signal to ``slot``, ignoring a widget that was deleted meanwhile.

    A worker can finish after its dock (or the viewer) was closed; calling into
    a deleted Qt object raises RuntimeError, which must not reach Qt's event loop.
    """

    def guarded(*args: Any) -> None:
        try:
            slot(*args)
        except RuntimeError as exc:
            if "deleted" not in str(exc):
                raise

    signal.connect(guarded)


def _disconnect_all(connections: list[tuple[Any, Any]]) -> None:
    for signal, slot in connections:
        try:
            signal.disconnect(slot)
        except (ValueError, RuntimeError, TypeError):
            pass
    connections.clear()


def connect_until_destroyed(widget: QWidget, signal: Any, slot: Callable[..., Any]) -> None:
    """Connect a psygnal signal to a widget's slot, disconnected when the widget is destroyed."""
    connections = widget.__dict__.setdefault("_nc_connections", [])
    if not connections:
        widget.destroyed.connect(partial(_disconnect_all, connections))
    signal.connect(slot)
    connections.append((signal, slot))
