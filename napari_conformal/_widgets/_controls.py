"""α / ν sliders and the image chooser, bound two-way to the workspace; safe signal connections."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from napari_conformal._widgets._display import notify_error
from napari_conformal.errors import ConformalError
from napari_conformal.explore.workspace import Workspace

__all__ = [
    "GuaranteeBanner",
    "ImageChooser",
    "Legend",
    "LevelSliders",
    "connect_until_destroyed",
    "guarded_connect",
]


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


class GuaranteeBanner(QLabel):
    """The guarantee of the shown set in plain words, above an explorer's controls."""

    def __init__(self) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setStyleSheet("font-weight: bold; padding: 4px;")
        self.setToolTip("what the calibration guarantees at the current α (and ν), for a new image")

    def show_guarantee(self, text: str, note: str | None = None) -> None:
        """The guarantee sentence, and a remark on λ̂ when there is one."""
        self.setText(text if not note else f"{text}\n{note[0].upper()}{note[1:]}.")


class Legend(QWidget):
    """Names every colour an explorer draws; companion entries have a box that shows or hides them.

    Signals
    -------
    toggled(str, bool)
        A checkable entry's box changed: its key and the new state.
    """

    toggled = Signal(str, bool)

    def __init__(self) -> None:
        super().__init__()
        from qtpy.QtWidgets import QGridLayout

        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(6)
        self._grid.setVerticalSpacing(2)
        self._checked: dict[str, bool] = {}
        self.boxes: dict[str, Any] = {}
        self.entries: list[tuple[str, str, str, bool]] = []

    def checked(self, key: str, default: bool = False) -> bool:
        """Whether the entry ``key`` is ticked (``default`` for an entry not shown yet)."""
        return self._checked.get(key, default)

    def set_checked(self, key: str, value: bool) -> None:
        """Tick or untick entry ``key`` as a user would (emits :attr:`toggled` on change)."""
        box = self.boxes.get(key)
        if box is not None:
            box.setChecked(bool(value))
        elif self._checked.get(key) != bool(value):
            self._checked[key] = bool(value)
            self.toggled.emit(key, bool(value))

    def set_entries(
        self, entries: list[tuple[str, str, str, bool]], defaults: dict[str, bool] | None = None
    ) -> None:
        """Rows ``(key, colour, text, checkable)``; a checkable row keeps its state across calls."""
        from qtpy.QtWidgets import QCheckBox

        if entries == self.entries:
            return
        self.entries = list(entries)
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.boxes = {}
        for row, (key, colour, text, checkable) in enumerate(entries):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: {colour}; border: 1px solid #888;")
            self._grid.addWidget(swatch, row, 0)
            if checkable:
                box = QCheckBox(text)
                box.setChecked(self._checked.setdefault(key, bool((defaults or {}).get(key, False))))
                box.toggled.connect(lambda value, key=key: self._box_toggled(key, value))
                self.boxes[key] = box
                self._grid.addWidget(box, row, 1)
            else:
                label = QLabel(text)
                label.setWordWrap(True)
                self._grid.addWidget(label, row, 1)
        self._grid.setColumnStretch(1, 1)

    def _box_toggled(self, key: str, value: bool) -> None:
        self._checked[key] = bool(value)
        self.toggled.emit(key, bool(value))
