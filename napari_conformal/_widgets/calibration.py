"""Calibration dock: pick a store and a method, run the calibration in a background worker, or load one.

The widget only gathers inputs and draws results. The work is
:func:`napari_conformal.api.iter_calibrate`, the same generator the command line runs (so the dock
and the CLI write the same ``CALIB.json``); a napari thread worker drives it, so the UI never
blocks and Cancel (``worker.quit()``) stops between two steps with no partial result. The method's
inputs are generated from its options spec (:class:`~napari_conformal.core.methods.base.Option`).
*Load calibration…* reads a saved ``CALIB.json`` (:meth:`~napari_conformal.core.calibration.Calibration.load`)
and opens its store. Either way the result is published into the viewer's shared workspace
(:class:`napari_conformal.explore.workspace.Workspace`), where the explorer docks pick it up.

*Per structure* (docs/algorithms.md#per-structure-guarantees): with "one calibrated λ per structure" checked,
Run calibrates each foreground class on the calibration images that contain it
(:func:`napari_conformal.api.iter_calibrate_per_class`); the λ̂ of every structure is listed, the
structure chooser publishes that structure's calibration (with the test images that contain it),
and *Save…* writes the per-class file, which *Load calibration…* reads back too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    import napari

__all__ = ["CalibrationWidget"]


def _devices() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        n = 0
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(n)]


def _option_input(opt: Any) -> QWidget:
    """An input for one method option: spin boxes, a check box, a list, or a text field ('auto' when empty)."""
    if opt.kind == "bool":
        box = QCheckBox()
        box.setChecked(bool(opt.default))
        widget: QWidget = box
    elif opt.kind == "choice":
        combo = QComboBox()
        combo.addItems(list(opt.choices))
        combo.setCurrentText(str(opt.default))
        widget = combo
    elif opt.kind in ("int", "float") and not (opt.optional or opt.default is None):
        if opt.kind == "int":
            spin: Any = QSpinBox()
            spin.setRange(
                int(opt.minimum if opt.minimum is not None else -(2**31)),
                int(opt.maximum if opt.maximum is not None else 2**31 - 1),
            )
        else:
            spin = QDoubleSpinBox()
            spin.setDecimals(4)
            spin.setRange(
                float(opt.minimum if opt.minimum is not None else -1e9),
                float(opt.maximum if opt.maximum is not None else 1e9),
            )
        spin.setValue(opt.default)
        widget = spin
    else:  # optional numbers, text, JSON: empty means the automatic default
        edit = QLineEdit()
        edit.setPlaceholderText("auto" if opt.default is None else str(opt.default))
        widget = edit
    widget.setToolTip(opt.help)
    return widget


def _option_value(opt: Any, widget: QWidget) -> Any:
    """The raw value of an option input (None for an empty text field: the option's default)."""
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QSpinBox | QDoubleSpinBox):
        return widget.value()
    text = widget.text().strip()  # type: ignore[attr-defined]
    return text or None


class CalibrationWidget(QWidget):
    """Dock widget that calibrates a conformal method on a dataset store, or loads a saved calibration.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the results go to (injected by napari).

    Attributes
    ----------
    calibration : Calibration or None
        The last calibration run or loaded here.
    option_inputs : dict
        ``{method: {option name: input widget}}``, generated from each method's options spec.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari_conformal._widgets._explorer import MIN_WIDTH
        from napari_conformal.core.methods.base import available_methods, method_class

        self.viewer = napari_viewer
        self.setMinimumWidth(MIN_WIDTH)
        self.worker: Any = None
        self.calibration: Any = None
        self._progress: Any = None
        self._method_class = method_class

        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("path of a napari-conformal store (.zarr)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        store_row = QHBoxLayout()
        store_row.addWidget(self.store_edit)
        store_row.addWidget(browse)
        # stores already open as layers (File ▸ Open of a store, or the plugin's own result layers)
        self.layer_store_combo = QComboBox()
        self.layer_store_combo.setToolTip("use the store that layers in this viewer were read from")
        self.layer_store_combo.activated.connect(self._store_from_layers)

        self.method_combo = QComboBox()
        self.option_stack = QStackedWidget()
        self.option_inputs: dict[str, dict[str, QWidget]] = {}
        for name in available_methods():
            cls = method_class(name)
            self.method_combo.addItem(cls.title or name, name)
            page = QWidget()
            form = QFormLayout(page)
            form.setContentsMargins(0, 0, 0, 0)
            inputs = {}
            for opt in cls.options:
                widget = _option_input(opt)
                inputs[opt.name] = widget
                form.addRow(opt.display, widget)
            if not cls.options:
                form.addRow(QLabel("no options"))
            self.option_inputs[name] = inputs
            self.option_stack.addWidget(page)
        self.alpha_spin = self._double(
            0.001, 0.999, 0.1, 3, "risk level α: the set misses with probability ≤ α"
        )
        self.nu_spin = self._double(0.0, 0.999, 0.9, 3, "label-wise accuracy ν a member must exceed")
        self.fraction_spin = self._double(0.05, 0.95, 0.5, 2, "fraction of images used for calibration")
        self.store_split_check = QCheckBox("the store's own split")
        self.store_split_check.setChecked(True)
        self.store_split_check.setToolTip(
            "use the calibration/test split the store records (demo stores do); without one, or unticked, "
            "a random split with this fraction and seed"
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.device_combo = QComboBox()
        self.device_combo.addItems(_devices())
        self.run_button = QPushButton("Run calibration")
        self.run_button.clicked.connect(self._run_or_cancel)
        self.load_button = QPushButton("Load calibration…")
        self.load_button.setToolTip("open a saved CALIB.json (and its store) instead of calibrating again")
        self.load_button.clicked.connect(self._load_dialog)
        self.status = QLabel("Choose a store and press Run, or load a saved calibration.")
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.progress_bar.setTextVisible(True)
        self.progress_label = QLabel()
        self.progress_label.setVisible(False)
        self._started = 0.0
        self._tabbed = False
        self._known_stores: list[str] = []
        #: the last per-structure calibration run or loaded here (ClassCalibrations), with its store and test images
        self.class_calibrations: Any = None
        self._per_class_data: tuple[Any, list[int] | None] | None = None
        per_class_box = self._build_per_class_box()

        form = QFormLayout()
        form.addRow("Store", store_row)
        form.addRow("From layers", self.layer_store_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("α", self.alpha_spin)
        form.addRow("ν", self.nu_spin)
        options_box = QGroupBox("Method options")
        box_layout = QVBoxLayout(options_box)
        box_layout.addWidget(self.option_stack)
        split = QFormLayout()
        split.addRow("Calibration fraction", self.fraction_spin)
        split.addRow("", self.store_split_check)
        split.addRow("Split seed", self.seed_spin)
        split.addRow("Device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.load_button)
        for combo in (self.layer_store_combo, self.method_combo, self.device_combo):
            # long entries (store paths) must not widen the dock: the combo shows the start of them
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        outer = QVBoxLayout(self)  # content in a scroll area: the dock may be shorter than it
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = self._scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(options_box)
        layout.addWidget(per_class_box)
        layout.addLayout(split)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self._method_changed()
        self.viewer.layers.events.inserted.connect(self._refresh_layer_stores)
        self.viewer.layers.events.removed.connect(self._refresh_layer_stores)
        self._refresh_layer_stores()

    @staticmethod
    def _double(lo: float, hi: float, value: float, decimals: int, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(lo, hi)
        spin.setDecimals(decimals)
        spin.setSingleStep(10.0**-decimals * 10)
        spin.setValue(value)
        spin.setToolTip(tip)
        return spin

    @property
    def inputs(self) -> list[QWidget]:
        """The input widgets, disabled while a run is in progress."""
        return [
            self.store_edit,
            self.layer_store_combo,
            self.method_combo,
            self.alpha_spin,
            self.nu_spin,
            self.option_stack,
            self.fraction_spin,
            self.store_split_check,
            self.seed_spin,
            self.device_combo,
            self.load_button,
            self.per_class_check,
            self.rare_full_check,
            self.structure_combo,
            self.save_button,
        ]

    @property
    def method_name(self) -> str:
        """The chosen method's registered name."""
        return str(self.method_combo.currentData())

    def option_input(self, name: str, method: str | None = None) -> QWidget:
        """The input of option ``name`` of ``method`` (default: the chosen one)."""
        return self.option_inputs[method or self.method_name][name]

    def set_option(self, name: str, value: Any, method: str | None = None) -> None:
        """Fill in option ``name`` as a user would (tests, the demo)."""
        widget = self.option_input(name, method)
        if isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QSpinBox | QDoubleSpinBox):
            widget.setValue(value)
        else:
            widget.setText("" if value is None else str(value))  # type: ignore[attr-defined]

    def _method_changed(self) -> None:
        if self.method_combo.currentData() is None:
            return
        current = self.method_combo.currentIndex()
        for i in range(self.option_stack.count()):  # the box takes the height of this method's options only
            page = self.option_stack.widget(i)
            policy = QSizePolicy.Policy.Preferred if i == current else QSizePolicy.Policy.Ignored
            page.setSizePolicy(policy, policy)
        self.option_stack.setCurrentIndex(current)
        self.option_stack.adjustSize()
        self.nu_spin.setEnabled(self._method_class(self.method_name).uses_nu)
        self._per_class_toggled()

    def layer_stores(self) -> list[tuple[str, str]]:
        """``(layer name, store path)`` of the first layer of each store the viewer shows, in layer order.

        A layer counts when its ``metadata["napari_conformal"]["store"]["path"]`` names a folder that
        exists (the store reader and every result layer of the plugin record it).
        """
        from pathlib import Path

        seen: dict[str, str] = {}
        for layer in self.viewer.layers:
            prov = (getattr(layer, "metadata", None) or {}).get("napari_conformal") or {}
            path = (prov.get("store") or {}).get("path") if isinstance(prov, dict) else None
            if isinstance(path, str) and path not in seen and Path(path).is_dir():
                seen[path] = layer.name
        return [(name, path) for path, name in seen.items()]

    def _refresh_layer_stores(self, *_: Any) -> None:
        try:
            combo = self.layer_store_combo
            combo.clear()
        except RuntimeError:  # the widget is gone (viewer closing)
            return
        stores = self.layer_stores()
        combo.addItem("—" if stores else "no store open as layers", None)
        for name, path in stores:
            combo.addItem(f"{name} ({path})", path)
        combo.setEnabled(bool(stores) and self.worker is None)
        paths = [path for _, path in stores]
        opened = [path for path in paths if path not in self._known_stores]
        self._known_stores = paths
        if opened and self.worker is None:  # the store just opened (File ▸ Open, a sample) is the one meant
            self.store_edit.setText(opened[-1])

    def _store_from_layers(self, pos: int) -> None:
        path = self.layer_store_combo.itemData(pos)
        if path:
            self.store_edit.setText(path)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a napari-conformal store")
        if path:
            self.store_edit.setText(path)

    # -- running -------------------------------------------------------------------------------------

    def _run_or_cancel(self) -> None:
        if self.worker is not None:
            self.cancel()
        else:
            self.run()

    def request(self) -> dict[str, Any]:
        """The calibration request the inputs describe (no I/O).

        Raises
        ------
        ParameterError
            An option input holds a value the method's spec refuses (the message names it).
        """
        name = self.method_name
        cls = self._method_class(name)
        options = {}
        for opt in cls.options:
            raw = _option_value(opt, self.option_inputs[name][opt.name])
            value = opt.parse(raw, name)
            if value != opt.default:
                options[opt.name] = value
        device = self.device_combo.currentText()
        return {
            "store": self.store_edit.text().strip(),
            "method": name,
            "alpha": float(self.alpha_spin.value()),
            "nu": float(self.nu_spin.value()) if cls.uses_nu else None,
            "fraction": float(self.fraction_spin.value()),
            "seed": int(self.seed_spin.value()),
            "store_split": bool(self.store_split_check.isChecked()),
            "device": None if device == "auto" else device,
            "options": options,
        }

    def run(self) -> None:
        """Validate the inputs and start the calibration in a background worker."""
        from napari.qt.threading import thread_worker

        from napari_conformal._widgets._progress import ProgressFeed
        from napari_conformal.api import iter_calibrate
        from napari_conformal.errors import ConformalError
        from napari_conformal.io.indices import random_split, recorded_split
        from napari_conformal.io.store import open_store

        try:
            req = self.request()
            if not req["store"]:
                raise ConformalError("choose a store first")
            store = open_store(req["store"], mode="r")
            split = recorded_split(store) if req["store_split"] else None
            seed = None if split else req["seed"]
            cal, test = split or random_split(store.n_images, req["fraction"], req["seed"])
            method = self._method_class(req["method"])
            per_class = self.per_class_check.isChecked()
            if per_class:  # the structure is set per class: the structure input does not apply
                req["options"].pop(method.structure_option or "", None)
            method(**req["options"]).check_levels(req["alpha"], req["nu"])  # fail here, not in the worker
        except (ConformalError, OSError) as exc:
            self._error(exc)
            return
        if per_class:
            from napari_conformal.api import iter_calibrate_per_class

            gen_fn = thread_worker(iter_calibrate_per_class, start_thread=False, ignore_errors=True)
            worker = gen_fn(
                store,
                req["method"],
                alpha=req["alpha"],
                nu=req["nu"],
                rare="full" if self.rare_full_check.isChecked() else "refuse",
                cal_indices=cal,
                device=req["device"],
                split_seed=seed,
                **req["options"],
            )
        else:
            gen_fn = thread_worker(iter_calibrate, start_thread=False, ignore_errors=True)  # errors: see _error
            worker = gen_fn(
                store,
                req["method"],
                alpha=req["alpha"],
                nu=req["nu"],
                cal_indices=cal,
                device=req["device"],
                split_seed=seed,
                **req["options"],
            )
        self._progress = ProgressFeed(f"Calibrating {method.title or req['method']}", total=len(cal))
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda calibration: self._on_done(calibration, store, test))
        worker.errored.connect(self._error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        text = f"Calibrating {method.title or req['method']} on {len(cal)} images…"
        self.status.setText(text)
        self._show_progress(True, len(cal))
        self._raise_dock()
        from napari_conformal._widgets._context import context_for

        context_for(self.viewer).workspace.calibrating.emit(text)
        worker.start()

    def cancel(self) -> None:
        """Stop the running calibration; it ends between two steps with no result."""
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.quit()

    def _set_busy(self, busy: bool) -> None:
        for widget in self.inputs:
            widget.setEnabled(not busy)
        if not busy:
            self._method_changed()
            self._refresh_layer_stores()
        self.run_button.setText("Cancel" if busy else "Run calibration")

    def _on_progress(self, step: tuple[int, int]) -> None:
        if self._progress is not None:
            self._progress(step)  # a ProgressFeed: never re-entered by the events an update processes
        import time

        done, total = int(step[0]), max(int(step[1]), 1)
        stage = getattr(step, "stage", "images")
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(done, total))
        elapsed = time.monotonic() - self._started
        what = "images read and prepared" if stage == "images" else f"{stage} (calibration search)"
        if stage == "labels":
            what = "labels read (which images hold each structure)"
        left = ""
        if stage == "images" and 0 < done < total:
            left = f" · about {elapsed * (total - done) / done:.0f} s left"
        self.progress_label.setText(f"{what}: {done} / {total}{left}")

    def _on_done(self, calibration: Any, store: Any, test: list[int]) -> None:
        from napari_conformal.core.per_class import ClassCalibrations

        if isinstance(calibration, ClassCalibrations):
            self._show_per_class(calibration, store, test)
            return
        self.calibration = calibration
        self._publish(calibration, store, test)

    def _publish(self, calibration: Any, store: Any, test: list[int] | None) -> None:
        from napari_conformal._widgets._context import context_for

        method = calibration.method_object
        levels = f"α = {calibration.alpha:g}" + (
            "" if calibration.nu is None else f", ν = {calibration.nu:g}"
        )
        workspace = context_for(self.viewer).workspace
        session = workspace.publish(store, calibration, test)
        n_test = len(workspace.test_indices)
        self._raise_explorer(calibration.method)
        self.status.setText(
            f"{method.title}: calibrated {method.lambda_name} = {calibration.lambda_hat:.5g} from n = {calibration.n} images "
            f"({levels}); {n_test} test images. {calibration.guarantee()}"
        )
        if workspace.test_indices:
            self._show_test_image(session, workspace.test_indices[0])

    def _show_test_image(self, session: Any, index: int) -> None:
        """Show image ``index`` and (for single-mask methods) its set in the plugin's shared layers."""
        import numpy as np

        from napari_conformal._widgets._context import context_for
        from napari_conformal._widgets._display import colour

        context = context_for(self.viewer)
        calibration = session.calibration
        result = session.predict(index, calibration.lambda_hat, calibration.alpha, calibration.nu)
        context.show_image(index)
        if isinstance(result, np.ndarray) and result.shape == session.store.spatial_shape:
            meta = session.provenance(
                alpha=calibration.alpha, nu=calibration.nu, lambda_hat=calibration.lambda_hat, index=index
            )
            context.layers.show(
                f"set:{calibration.method}",
                "labels",
                result.astype(np.uint8),
                name=f"{session.title} set α={calibration.alpha:g} (image {index})",
                metadata={"napari_conformal": meta},
                scale=session.store.spacing,
                colour=colour(calibration.method),
                opacity=0.5,
            )

    def _on_aborted(self) -> None:
        self.status.setText("Calibration cancelled; nothing was changed.")

    def _on_finished(self) -> None:
        from napari_conformal._widgets._context import context_for

        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self._set_busy(False)
        self._show_progress(False)
        context_for(self.viewer).workspace.calibrating.emit("")

    def _show_progress(self, on: bool, total: int = 0) -> None:
        import time

        self._started = time.monotonic()
        self.progress_bar.setVisible(on)
        self.progress_label.setVisible(on)
        if on:
            self.progress_bar.setRange(0, max(total, 1))
            self.progress_bar.setValue(0)
            self.progress_label.setText(f"images read and prepared: 0 / {total}")
            # on a short screen the bar sits below the fold: scroll it into view
            QTimer.singleShot(0, lambda: self._scroll.ensureWidgetVisible(self.progress_label))

    def _raise_dock(self) -> None:
        """Bring this dock's tab to the front while it works."""
        from napari_conformal._widgets._explorer import raise_dock

        raise_dock(self)

    def _raise_explorer(self, method: str) -> None:
        """Bring the explorer that shows ``method`` to the front (when it is docked in this viewer)."""
        from napari_conformal._widgets._explorer import ExplorerBase, raise_dock

        window = getattr(self.viewer, "window", None)
        for widget in list(getattr(window, "dock_widgets", {}).values()) if window is not None else []:
            if isinstance(widget, ExplorerBase) and widget.handles(method):
                raise_dock(widget)
                return

    def showEvent(self, event: Any) -> None:
        """First shown: tab with the plugin's other docks."""
        super().showEvent(event)
        if not self._tabbed:
            from napari_conformal._widgets._explorer import tab_with_plugin_docks

            self._tabbed = True
            tab_with_plugin_docks(self)

    def _error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = " ".join(str(exc).split()) or type(exc).__name__
        self.status.setText(f"Error: {message}")
        show_error(f"napari-conformal: {message}")

    # -- loading -------------------------------------------------------------------------------------

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a calibration", "", "Calibration (*.json)")
        if path:
            self.load_calibration(path)

    def load_calibration(self, path: str) -> bool:
        """Load a saved ``CALIB.json`` and publish it, with its store.

        The store is the one the file names, or the one in the Store field when the file's path is
        gone (e.g. moved); its content identity must match the file's. Errors become a notification
        and change nothing.

        Returns
        -------
        bool
            Whether the calibration was loaded.
        """
        from pathlib import Path

        from napari_conformal.core.per_class import ClassCalibrations, load_calibration_file
        from napari_conformal.errors import ConformalError
        from napari_conformal.io.store import open_store

        try:
            calibration = load_calibration_file(path)
            candidates = [calibration.store.path, self.store_edit.text().strip()]
            where = next((c for c in candidates if c and Path(c).is_dir()), None)
            if where is None:
                raise ConformalError(
                    f"the store of {Path(path).name} ({calibration.store.path}) is not there; put its path in the "
                    "Store field and load again"
                )
            store = open_store(where, mode="r")
            if store.identity() != calibration.store.identity:
                raise ConformalError(
                    f"{where} is not the store {Path(path).name} was calibrated on (its content differs)"
                )
        except (ConformalError, OSError) as exc:
            self._error(exc)
            return False
        self.store_edit.setText(str(store.path))
        if isinstance(calibration, ClassCalibrations):
            self._show_per_class(calibration, store, None)
            return True
        self.calibration = calibration
        self._publish(calibration, store, None)
        return True

    # -- per structure ---------------------------------------------------------------------------------

    def _build_per_class_box(self) -> QGroupBox:
        box = QGroupBox("Per structure")
        self.per_class_check = QCheckBox("one calibrated λ per structure")
        self.per_class_check.setToolTip(
            "calibrate every foreground structure on the calibration images that contain it: each gets its "
            "own guarantee, for new images that contain it"
        )
        self.rare_full_check = QCheckBox("rare structures get the full set")
        self.rare_full_check.setToolTip(
            "a structure in fewer than ⌈1/α⌉ − 1 calibration images is refused; checked, it gets the full "
            "set instead (methods that have one: CRC, RW-CP, LAC)"
        )
        self.structure_combo = QComboBox()
        self.structure_combo.setToolTip("the structure whose calibration the explorers show")
        self.structure_combo.activated.connect(lambda _pos: self.show_structure(self.structure_combo.currentData()))
        self.per_class_label = QLabel()
        self.per_class_label.setWordWrap(True)
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("write the per-structure calibration file (Load calibration… reads it)")
        self.save_button.clicked.connect(self._save_dialog)
        self.per_class_check.toggled.connect(self._per_class_toggled)
        form = QFormLayout(box)
        form.addRow(self.per_class_check)
        form.addRow(self.rare_full_check)
        form.addRow("Show", self.structure_combo)
        form.addRow(self.per_class_label)
        form.addRow(self.save_button)
        self._set_per_class_result(None)
        return box

    def _per_class_toggled(self, *_: Any) -> None:
        if not hasattr(self, "per_class_check"):
            return
        idle = self.worker is None
        on = self.per_class_check.isChecked()
        self.rare_full_check.setEnabled(on and idle)
        has_result = self.class_calibrations is not None and idle
        self.structure_combo.setEnabled(has_result)
        self.save_button.setEnabled(has_result)
        if idle:
            for name, inputs in self.option_inputs.items():
                widget = inputs.get(self._method_class(name).structure_option or "")
                if widget is not None:
                    widget.setEnabled(not on)  # set per structure

    def _set_per_class_result(self, result: Any) -> None:
        self.class_calibrations = result
        self.structure_combo.clear()
        if result is None:
            self.per_class_label.setText("")
            self._per_class_toggled()
            return
        for entry in result.entries:
            text = entry.title + (" (full set)" if entry.full_set else f": λ = {entry.lambda_hat:.5g}")
            self.structure_combo.addItem(text, entry.label)
            if entry.full_set:  # nothing to show: no calibration
                self.structure_combo.model().item(self.structure_combo.count() - 1).setEnabled(False)
        self.per_class_label.setText("\n".join(result.summary()))
        self._per_class_toggled()

    def _show_per_class(self, result: Any, store: Any, test: list[int] | None) -> None:
        self._per_class_data = (store, test)
        self._set_per_class_result(result)
        first = next((e.label for e in result.entries if not e.full_set), None)
        if first is not None:
            self.show_structure(first)
        else:
            self.status.setText("Every structure got the full set: nothing to calibrate. " + " ".join(result.summary()))

    def show_structure(self, label: int) -> None:
        """Publish the calibration of structure ``label`` (with the test images that contain it)."""
        if self.class_calibrations is None or self._per_class_data is None or label is None:
            return
        store, test = self._per_class_data
        result = self.class_calibrations
        calibration = result.calibration(int(label))
        pool = set(result.cal_indices)
        candidates = [i for i in range(store.n_images) if i not in pool] if test is None else list(test)
        with_it = [i for i in candidates if bool((store.label(i) == int(label)).any())]
        self.calibration = calibration
        pos = self.structure_combo.findData(int(label))
        if pos >= 0:
            self.structure_combo.setCurrentIndex(pos)
        self._publish(calibration, store, with_it)
        self.status.setText(
            f"{result[int(label)].title} (its guarantee is for new images that contain it): {self.status.text()}"
        )

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the per-structure calibration", "", "Calibration (*.json)")
        if path:
            self.save_per_class(path)

    def save_per_class(self, path: str) -> bool:
        """Write the per-structure calibration to ``path`` (atomically); errors become a notification."""
        from napari_conformal.errors import ConformalError

        if self.class_calibrations is None:
            return False
        try:
            self.class_calibrations.save(path)
        except (ConformalError, OSError) as exc:
            self._error(exc)
            return False
        self.status.setText(f"Saved the per-structure calibration to {path}.")
        return True
