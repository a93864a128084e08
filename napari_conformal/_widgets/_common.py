"""Pieces every explorer dock shares.

* :func:`context_for` — the per-viewer :class:`ViewerContext`: the shared
  :class:`~napari_conformal.explore.workspace.Workspace` and the
  :class:`ResultLayers` the plugin created in that viewer.
* :class:`ResultLayers` — adds or updates the plugin's own layers, tracked by
  identity, so a result never overwrites a user's layer.
* :class:`LevelSliders`, :class:`ImageChooser` — α / ν sliders and the image
  selector, bound two-way to the workspace.
* :class:`ExplorerBase` — background workers (napari thread workers with
  progress and error notifications), a throttled redraw that always draws the
  final value, prepared-image requests and export.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_conformal.errors import ConformalError
from napari_conformal.explore.workspace import Workspace

if TYPE_CHECKING:
    import napari

__all__ = [
    "REDRAW_INTERVAL_MS",
    "ExplorerBase",
    "ImageChooser",
    "LevelSliders",
    "ResultLayers",
    "ViewerContext",
    "colour",
    "context_for",
    "notify_error",
    "set_colormap",
    "title",
]

#: Minimum time between two redraws while a slider is dragged (the last value is always drawn).
REDRAW_INTERVAL_MS = 40

def title(name: str) -> str:
    """Display name of a registered method (its class's ``title``)."""
    from napari_conformal.core.methods.base import method_class

    try:
        return method_class(name).title or name
    except ConformalError:
        return name


def colour(name: str) -> str:
    """Colour of a registered method in contours and plots (its class's ``colour``)."""
    from napari_conformal.core.methods.base import method_class

    try:
        return method_class(name).colour
    except ConformalError:
        return "#ffffff"


def notify_error(exc: BaseException, status: QLabel | None = None) -> str:
    """Show an error as a napari notification (and in ``status``); return the one-line message."""
    from napari.utils.notifications import show_error

    message = " ".join(str(exc).split()) or type(exc).__name__
    if status is not None:
        status.setText(f"Error: {message}")
    show_error(f"napari-conformal: {message}")
    return message


def set_colormap(layer: Any, colour: str) -> None:
    """Draw label 1 of a labels layer in ``colour`` (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})


# --------------------------------------------------------------------------------------- layers


def layer_kind(layer: Any) -> str:
    """``"labels"`` or ``"image"`` (the two layer types the plugin makes), else the class name."""
    from napari.layers import Image, Labels

    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Image):
        return "image"
    return type(layer).__name__.lower()


class ResultLayers:
    """The layers the plugin created in one viewer, by key.

    :meth:`show` updates the layer it created earlier for a key (if the user
    has not deleted it) and otherwise adds a new one; napari makes new names
    unique, so a result never replaces a layer it did not create. Layers asked
    for with ``contour=True`` are drawn as contours in 2D views and as filled
    (iso-categorical) labels in 3D views.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._layers: dict[str, Any] = {}
        self._contoured: set[str] = set()
        self._colours: dict[str, str] = {}
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    def get(self, key: str) -> Any | None:
        """The layer created for ``key`` if it is still in the viewer."""
        layer = self._layers.get(key)
        viewer = self.viewer
        if layer is None or viewer is None or layer not in viewer.layers:
            return None
        return layer

    def owns(self, layer: Any) -> bool:
        """Whether ``layer`` was created by the plugin (by identity)."""
        return any(layer is own for own in self._layers.values())

    def items(self) -> list[tuple[str, Any]]:
        """``(key, layer)`` of the plugin's layers still in the viewer."""
        return [(k, layer) for k in list(self._layers) if (layer := self.get(k)) is not None]

    def _contour_value(self) -> int:
        viewer = self.viewer
        return 1 if viewer is None or viewer.dims.ndisplay == 2 else 0

    def _on_ndisplay(self, event: Any = None) -> None:
        for key in self._contoured:
            layer = self.get(key)
            if layer is not None:
                layer.contour = self._contour_value()

    def show(
        self,
        key: str,
        kind: str,
        data: np.ndarray,
        *,
        name: str,
        metadata: dict[str, Any],
        scale: Iterable[float] | None = None,
        contour: bool = False,
        colour: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Add or update the layer of ``key``.

        Parameters
        ----------
        key : str
            The plugin's identifier of the layer (e.g. ``"set:rwcp"``).
        kind : {"image", "labels"}
            Layer type.
        data : ndarray
            New data.
        name : str
            Layer name (a new layer's name is made unique by napari; an updated
            layer is renamed only when ``name`` changes).
        metadata : dict
            Full layer metadata (``{"napari_conformal": provenance}``).
        scale : sequence of float, optional
            Per-axis scale (the store spacing; leading non-spatial axes get 1).
        contour : bool
            Labels only: contours in 2D views.
        colour : str, optional
            Labels only: colour of label 1.
        **kwargs
            Passed to ``add_image``/``add_labels`` for a new layer only.
        """
        viewer = self.viewer
        if viewer is None:
            return None
        layer = self.get(key)
        if layer is not None and layer_kind(layer) != kind:
            layer = None
        if scale is not None:
            scale = tuple(float(s) for s in scale)
        if layer is None:
            add = viewer.add_labels if kind == "labels" else viewer.add_image
            # a private copy: later updates overwrite it in place, which must never touch an array
            # the caller still uses (e.g. a map cached in a prepared image)
            data = np.array(data, copy=True)
            layer = add(data, name=name, metadata=metadata, scale=scale, **kwargs)
            self._layers[key] = layer
            self._colours.pop(key, None)
        else:
            reset = kind == "image" and (
                layer.data.shape != data.shape or kwargs.get("contrast_limits") is None
            )
            if scale is not None and tuple(layer.scale) != scale:
                layer.scale = scale
            current = layer.data
            if (
                isinstance(current, np.ndarray)
                and current.shape == data.shape
                and current.dtype == data.dtype
                and current.flags.writeable
            ):
                # our own array: overwrite it and re-slice, which skips the viewer-wide dims update
                # that replacing the data triggers (the extent is unchanged)
                np.copyto(current, data)
                layer.refresh(extent=False)
            else:
                layer.data = np.array(data, copy=True)  # private, as for a new layer
            layer.metadata = metadata
            if kind == "image":
                if "contrast_limits" in kwargs:
                    layer.contrast_limits = kwargs["contrast_limits"]
                elif reset:
                    layer.reset_contrast_limits()
            if layer.name != name:
                layer.name = name
        if kind == "labels" and colour is not None and self._colours.get(key) != colour:
            set_colormap(layer, colour)
            self._colours[key] = colour
        if kind == "labels" and contour:
            self._contoured.add(key)
            if layer.contour != self._contour_value():  # setting it re-renders: only on change
                layer.contour = self._contour_value()
        return layer

    def remove(self, key: str) -> None:
        """Remove the layer of ``key`` from the viewer (if it is still there)."""
        layer = self.get(key)
        viewer = self.viewer
        if layer is not None and viewer is not None:
            viewer.layers.remove(layer)
        self._layers.pop(key, None)
        self._contoured.discard(key)
        self._colours.pop(key, None)


@dataclass
class ViewerContext:
    """Workspace and plugin layers of one viewer."""

    workspace: Workspace
    layers: ResultLayers

    def show_image(self, index: int) -> Any:
        """Show image ``index`` of the workspace's store in the shared ``image`` layer."""
        ws = self.workspace
        store = ws.store
        meta = {
            "napari_conformal": {
                "store": {"path": str(store.path), "identity": ws.store_identity},
                "array": "images",
                "image_index": int(index),
            }
        }
        return self.layers.show(
            "image", "image", store.image(index), name=f"image {index}", metadata=meta, scale=store.spacing
        )

    def ensure_image(self, index: int) -> Any:
        """The shared ``image`` layer, showing image ``index`` (updated only when it shows another)."""
        layer = self.layers.get("image")
        if layer is None or (layer.metadata.get("napari_conformal") or {}).get("image_index") != index:
            layer = self.show_image(index)
        return layer


_CONTEXTS: dict[int, ViewerContext] = {}


def unwrap_viewer(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer behind napari's ``PublicOnlyProxy``.

    napari hands each plugin widget its own proxy of the viewer, so proxies of
    one viewer are different objects: anything keyed by viewer identity must
    key by the viewer they wrap.
    """
    return getattr(viewer, "__wrapped__", viewer)


def context_for(viewer: napari.Viewer) -> ViewerContext:
    """The :class:`ViewerContext` of ``viewer`` (created on first use, dropped with the viewer).

    Every dock of one viewer gets the same context, whether napari injected the
    viewer itself or a proxy of it.
    """
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    ctx = _CONTEXTS.get(key)
    if ctx is None or ctx.layers.viewer is not viewer:
        ctx = ViewerContext(workspace=Workspace(), layers=ResultLayers(viewer))
        _CONTEXTS[key] = ctx
        weakref.finalize(viewer, _CONTEXTS.pop, key, None)
        viewer.layers.selection.events.active.connect(partial(_follow_active_layer, weakref.ref(ctx)))
    return ctx


def _follow_active_layer(ctx_ref: Callable[[], ViewerContext | None], event: Any) -> None:
    """Selecting a plugin layer of another image makes that image current (panels follow)."""
    ctx = ctx_ref()
    layer = getattr(event, "value", None)
    if ctx is None or layer is None or not ctx.workspace.ready:
        return
    prov = (getattr(layer, "metadata", None) or {}).get("napari_conformal") or {}
    index = prov.get("image_index")
    store = prov.get("store") or {}
    if index is None or store.get("identity") != ctx.workspace.store_identity:
        return
    try:
        ctx.workspace.index = int(index)
    except ConformalError:
        pass


# --------------------------------------------------------------------------------------- controls


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
        _connect(self, workspace.alpha_changed, self._sync)
        _connect(self, workspace.nu_changed, self._sync)

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
        _connect(self, workspace.reset, self._refill)
        _connect(self, workspace.session_added, self._refill)
        _connect(self, workspace.image_changed, self._sync)

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


def _guarded_connect(signal: Any, slot: Callable[..., Any]) -> None:
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


def _connect(widget: QWidget, signal: Any, slot: Callable[..., Any]) -> None:
    """Connect a psygnal signal to a widget's slot, disconnected when the widget is destroyed."""
    connections = widget.__dict__.setdefault("_nc_connections", [])
    if not connections:
        widget.destroyed.connect(partial(_disconnect_all, connections))
    signal.connect(slot)
    connections.append((signal, slot))


# --------------------------------------------------------------------------------------- explorers


class ExplorerBase(QWidget):
    """Common machinery of the explorer docks.

    Subclasses implement :meth:`redraw` (cheap: reads the workspace and the
    cached prepared images, updates layers) and call :meth:`request_redraw`
    when something changed. Redraws are throttled to one per
    :data:`REDRAW_INTERVAL_MS` while a slider moves; the trailing call always
    runs, so the last value is drawn.
    """

    #: minimum time between two redraws while a slider moves (ms)
    redraw_interval_ms = REDRAW_INTERVAL_MS

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from superqt.utils import qthrottled

        self.viewer = napari_viewer
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
        _connect(self, self.workspace.alpha_changed, lambda *_: self.request_redraw("levels"))
        _connect(self, self.workspace.nu_changed, lambda *_: self.request_redraw("levels"))
        _connect(self, self.workspace.image_changed, lambda *_: self.request_redraw("image"))
        _connect(self, self.workspace.session_added, self._on_session_added)
        _connect(self, self.workspace.reset, self._on_reset)

    # -- layout helpers ----------------------------------------------------------------------

    def base_layout(self) -> QVBoxLayout:
        """A vertical layout with the image chooser on top."""
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Image"))
        self.image_chooser = ImageChooser(self.workspace)
        row.addWidget(self.image_chooser, 1)
        layout.addLayout(row)
        return layout

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
        """Whether no background work is running and no redraw is pending."""
        return not self._workers and not self._dirty

    def settled(self) -> bool:
        """Run a pending redraw, then say whether the explorer is :attr:`idle` (for wait loops)."""
        self.flush()
        return self.idle

    def _run_redraw(self) -> None:
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
        from napari.utils import progress

        worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        bar: list[Any] = []
        connect = _guarded_connect
        if description is not None and hasattr(worker, "yielded"):
            bar.append(progress(total=0, desc=description))

            def on_yield(step: Any) -> None:
                if isinstance(step, tuple) and len(step) == 2:
                    done, total = step
                    stage = getattr(step, "stage", None)
                    if stage and stage != "images":
                        bar[0].set_description(f"{description}: {stage}")
                    if bar[0].total != total:
                        bar[0].total = total
                        bar[0].n = 0
                    bar[0].update(done - bar[0].n)

            connect(worker.yielded, on_yield)
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
