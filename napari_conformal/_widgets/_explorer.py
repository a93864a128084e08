"""The machinery every explorer dock shares.

:class:`ExplorerBase`: background workers (napari thread workers with progress and error
notifications), a throttled redraw that always draws the final value, prepared-image requests,
companion calibrations and export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_conformal._widgets._context import context_for
from napari_conformal._widgets._controls import (
    GuaranteeBanner,
    ImageChooser,
    connect_until_destroyed,
    guarded_connect,
)
from napari_conformal._widgets._display import notify_error, title
from napari_conformal._widgets._layers import layer_kind
from napari_conformal.errors import ConformalError

if TYPE_CHECKING:
    import napari

__all__ = ["REDRAW_INTERVAL_MS", "ExplorerBase", "raise_dock", "tab_with_plugin_docks"]

#: Minimum time between two redraws while a slider is dragged (the last value is always drawn).
REDRAW_INTERVAL_MS = 40


PLUGIN_SUFFIX = "(napari-conformal)"
#: the docks' minimum width (px): legends and sliders stay readable, the window still fits 1600 px
MIN_WIDTH = 380
FIRST_DOCK = "Conformal calibration"


def _dock_of(widget: QWidget) -> Any:
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def tab_with_plugin_docks(widget: QWidget) -> None:
    """Tab the dock holding ``widget`` with the plugin's other docks on the same side of the window.

    napari stacks docks added from the Plugins menu one below the other, which makes the window
    taller than the screen; tabbed, every dock fits and one is in front at a time.
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = _dock_of(widget)
    if dock is None:
        return
    window = dock.parent()
    while window is not None and not isinstance(window, QMainWindow):
        window = window.parent()
    if window is None:
        return
    area = window.dockWidgetArea(dock)
    siblings = [
        other
        for other in window.findChildren(QDockWidget)
        if other is not dock
        and other.isVisible()
        and window.dockWidgetArea(other) == area
        and (PLUGIN_SUFFIX in other.windowTitle() or PLUGIN_SUFFIX in other.objectName())
    ]
    if not siblings or dock in window.tabifiedDockWidgets(siblings[0]):
        return
    # the tab in front stays in front (a user may have brought one forward before this dock was
    # shown); when none is yet, the calibration dock, what a user does first
    shown = [d for d in siblings if not d.visibleRegion().isEmpty()]
    front = next(
        iter(shown), next((d for d in siblings if d.windowTitle().startswith(FIRST_DOCK)), siblings[0])
    )
    window.tabifyDockWidget(siblings[0], dock)
    front.raise_()


def raise_dock(widget: QWidget) -> None:
    """Bring the tab of the dock holding ``widget`` to the front."""
    dock = _dock_of(widget)
    if dock is not None:
        dock.show()
        dock.raise_()


class ExplorerBase(QWidget):
    """Common machinery of the explorer docks.

    Subclasses implement :meth:`redraw` (cheap: reads the workspace and the
    cached prepared images, updates layers) and call :meth:`request_redraw`
    when something changed. Redraws are throttled to one per
    :data:`REDRAW_INTERVAL_MS` while a slider moves; the trailing call always
    runs, so the last value is drawn. Only a dock that is visible redraws: a
    tab behind another keeps what changed and redraws when it comes to the
    front, and then takes the focus (:meth:`ResultLayers.focus`): its own
    layers on top, the other explorers' hidden until theirs is the front tab.
    """

    #: minimum time between two redraws while a slider moves (ms)
    redraw_interval_ms = REDRAW_INTERVAL_MS
    #: the owner name of this explorer's layers (see :meth:`ResultLayers.focus`); None: draws no layers
    owner: str | None = None

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from superqt.utils import qthrottled

        self.viewer = napari_viewer
        self.setMinimumWidth(MIN_WIDTH)  # wide enough for sliders and legends without clipping
        self.context = context_for(napari_viewer)
        self.workspace = self.context.workspace
        self.layers = self.context.layers
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.status.setMinimumHeight(self.status.fontMetrics().lineSpacing() * 4)
        self._workers: set[Any] = set()
        self._pending_prepare: set[tuple[str, int]] = set()
        self._calibrating: set[str] = set()
        self._companion_failed: set[str] = set()
        self._dirty: set[str] = set()
        self._throttled = qthrottled(self._run_redraw, timeout=self.redraw_interval_ms, leading=True)
        self.redraw_count = 0
        self._tabbed = False
        self._front = True  # whether this dock's tab is in front (tracked by its dock's visibilityChanged)
        self.banner = GuaranteeBanner()
        connect_until_destroyed(self, self.workspace.calibrating, self._on_calibrating)
        connect_until_destroyed(self, self.workspace.alpha_changed, lambda *_: self.request_redraw("levels"))
        connect_until_destroyed(self, self.workspace.nu_changed, lambda *_: self.request_redraw("levels"))
        connect_until_destroyed(self, self.workspace.image_changed, lambda *_: self.request_redraw("image"))
        connect_until_destroyed(self, self.workspace.session_added, self._on_session_added)
        connect_until_destroyed(self, self.workspace.reset, self._on_reset)

    # -- layout helpers ----------------------------------------------------------------------

    def base_layout(self) -> QVBoxLayout:
        """The content layout: image chooser and guarantee on top, inside a scroll area.

        The scroll area lets the dock be shorter than its content, so every dock fits a 1000-px
        screen whichever way napari stacks them.
        """
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        row = QHBoxLayout()
        row.addWidget(QLabel("Image"))
        self.image_chooser = ImageChooser(self.workspace)
        row.addWidget(self.image_chooser, 1)
        layout.addLayout(row)
        layout.addWidget(self.banner)
        return layout

    def show_layer(self, key: str, kind: str, data: np.ndarray, **kwargs: Any) -> Any:
        """:meth:`ResultLayers.show` with this explorer as the layer's owner."""
        return self.layers.show(key, kind, data, owner=self.owner, **kwargs)

    def show_guarantee(self, method: Any, alpha: float, nu: float | None, lam: float) -> None:
        """The method's guarantee at (α, ν) in words, with its remark on λ̂ (e.g. "one segmentation")."""
        self.banner.show_guarantee(method.guarantee(alpha, nu), method.lambda_note(lam, alpha=alpha, nu=nu))

    def _on_calibrating(self, message: str) -> None:
        # while a calibration runs the banner says so; after, the next redraw states the guarantee again
        self.banner.setText(message)
        self.request_redraw("session")

    # -- focus and placement ----------------------------------------------------------------------

    def showEvent(self, event: Any) -> None:
        """Coming to the front: tab with the plugin's other docks (once), take the focus, draw what changed."""
        super().showEvent(event)
        if not self._tabbed:
            self._tabbed = True
            dock = _dock_of(self)
            if dock is not None:
                dock.visibilityChanged.connect(self._on_visibility)
            tab_with_plugin_docks(self)
            if dock is not None and dock.visibleRegion().isEmpty():
                self._front = False  # tabbed behind another dock: it draws when brought forward
        if self.in_front:
            self._on_visibility(True)

    def _on_visibility(self, visible: bool) -> None:
        """The dock's tab came to the front (take the focus, draw what changed) or went behind."""
        self._front = bool(visible)
        if not visible:
            return
        try:
            if self.owner is not None:
                self.layers.focus(self.owner)
            if self._dirty:
                self.request_redraw()
        except RuntimeError:  # the widget is gone
            pass

    @property
    def in_front(self) -> bool:
        """Whether the dock is shown and its tab is in front (only then does it redraw)."""
        return self.isVisible() and self._front

    @classmethod
    def handles(cls, method: str) -> bool:
        """Whether this explorer shows ``method`` (from the layers the method draws)."""
        from napari_conformal.core.methods.base import method_class

        return bool(cls.draws) and any(kind in method_class(method).layers for kind in cls.draws)

    #: layer kinds that make a method this explorer's (see :meth:`handles`)
    draws: tuple[str, ...] = ()

    def export_button(self) -> QPushButton:
        """A button that exports this explorer's layers and calibrations to a chosen folder."""
        button = QPushButton("Export…")
        button.setToolTip("save the shown sets, members and calibration records (with provenance)")
        button.clicked.connect(self._export_dialog)
        return button

    # -- redraw ------------------------------------------------------------------------------

    def request_redraw(self, *what: str) -> None:
        """Mark parts dirty and schedule a (throttled) redraw."""
        self._dirty.update(what or ("all",))
        try:
            self._throttled()
        except RuntimeError:  # the widget (and its timer) is gone: nothing to draw
            pass

    def flush(self) -> None:
        """Run a pending throttled redraw now (tests and benchmarks)."""
        self._throttled.flush()

    @property
    def idle(self) -> bool:
        """Whether no background work is running and no redraw is pending (a hidden tab waits to be shown)."""
        return not self._workers and (not self._dirty or not self.in_front)

    def settled(self) -> bool:
        """Run a pending redraw, then say whether the explorer is :attr:`idle` (for wait loops)."""
        self.flush()
        return self.idle

    def _run_redraw(self) -> None:
        if not self.in_front:  # a tab behind another: draw when it comes to the front
            return
        dirty, self._dirty = self._dirty, set()
        try:
            self.redraw(dirty or {"all"})
        except ConformalError as exc:
            self.status.setText(f"Error: {' '.join(str(exc).split())}")
        except RuntimeError:  # the widget's C++ side is gone (viewer closing)
            return
        self.redraw_count += 1

    def redraw(self, dirty: set[str]) -> None:  # pragma: no cover - abstract
        """Bring the layers up to date with the workspace (``dirty`` says what changed)."""
        raise NotImplementedError

    def _on_session_added(self, name: str) -> None:
        self.request_redraw("session")

    def _on_reset(self, *_: Any) -> None:
        self._companion_failed.clear()
        self.request_redraw("all")

    # -- workers -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a background worker of this explorer is running."""
        return bool(self._workers)

    def start_worker(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a napari thread worker.

        A generator function that yields ``(done, total)`` gets a napari
        progress bar labelled ``description``. Errors become notifications.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        bar: list[Any] = []
        connect = guarded_connect
        if description is not None and hasattr(worker, "yielded"):
            from napari_conformal._widgets._progress import ProgressFeed

            bar.append(ProgressFeed(description))
            connect(worker.yielded, bar[0])
        if on_done is not None:
            connect(worker.returned, on_done)
        connect(worker.errored, lambda exc: notify_error(exc, self.status))

        def finished() -> None:
            self._workers.discard(worker)
            for b in bar:
                b.close()

        connect(worker.finished, finished)
        self._workers.add(worker)
        worker.start()
        return worker

    def prepared_or_request(self, name: str, index: int) -> Any | None:
        """The cached prepared image, or None after starting a worker that prepares it.

        When the worker finishes, the explorer redraws.
        """
        session = self.workspace.session(name)
        if session is None:
            return None
        value = session.cached_prepared(index)
        if value is not None:
            return value
        key = (name, int(index))
        if key not in self._pending_prepare:
            self._pending_prepare.add(key)
            self.status.setText(f"Preparing image {index} for {title(name)}…")

            def done(_: Any, key: tuple[str, int] = key) -> None:
                self._pending_prepare.discard(key)
                self.request_redraw("prepared")

            self.start_worker(session.prepared, int(index), on_done=done)
        return None

    def ensure_companion(self, name: str) -> bool:
        """Whether method ``name`` is calibrated; if not, start calibrating it once (cheap companions).

        A companion whose calibration failed is not retried automatically until
        the next published calibration (the error was notified).
        """
        if self.workspace.session(name) is not None:
            return True
        if name not in self._companion_failed:
            self.calibrate_companion(name)
        return False

    def calibrate_companion(self, name: str) -> None:
        """Calibrate method ``name`` on the workspace's calibration images, in the background."""
        if not self.workspace.ready:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            return
        if name in self._calibrating:
            return
        self._companion_failed.discard(name)
        self._calibrating.add(name)
        self.status.setText(f"Calibrating {title(name)} on the same calibration images…")

        def done(calibrated: Any) -> None:
            self.workspace.add_session(calibrated)

        worker = self.start_worker(
            self.workspace.iter_companion, name, on_done=done, description=f"Calibrating {title(name)}"
        )
        worker.errored.connect(lambda *_: self._companion_failed.add(name))
        worker.finished.connect(lambda: self._calibrating.discard(name))

    def is_calibrating(self, name: str) -> bool:
        """Whether a companion calibration of ``name`` is running."""
        return name in self._calibrating

    # -- export ------------------------------------------------------------------------------

    def export_keys(self) -> list[str]:
        """Keys of the plugin layers this explorer exports (default: none)."""
        return []

    def export_records(self) -> dict[str, dict[str, Any]]:
        """Calibration records to export, by method, re-reduced at the current α, ν."""
        out = {}
        for key in self.export_keys():
            layer = self.layers.get(key)
            prov = None if layer is None else (layer.metadata or {}).get("napari_conformal")
            if prov and "calibration" in prov and prov.get("method"):
                out[prov["method"]] = prov["calibration"]
        return out

    def export_to(self, folder: str) -> list[str]:
        """Write this explorer's layers and calibration records into ``folder`` (see :mod:`.export`)."""
        from napari_conformal.explore.export import ExportItem, export_results

        items = []
        for key in self.export_keys():
            layer = self.layers.get(key)
            if layer is None:
                continue
            attributes = {
                "name": layer.name,
                "scale": list(layer.scale),
                "translate": list(layer.translate),
                "metadata": layer.metadata,
            }
            items.append(ExportItem(np.asarray(layer.data), layer_kind(layer), attributes))
        return export_results(folder, items, self.export_records())

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to an (empty) folder")
        if not folder:
            return
        try:
            written = self.export_to(folder)
        except (ConformalError, OSError) as exc:
            notify_error(exc, self.status)
            return
        from napari.utils.notifications import show_info

        show_info(f"napari-conformal: wrote {len(written)} file(s) to {folder}")
        self.status.setText(f"Exported {len(written)} file(s) to {folder}.")
