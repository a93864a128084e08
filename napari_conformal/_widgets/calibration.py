"""Calibration dock: pick a store and a method, run calibration in a background worker.

The widget only gathers inputs and draws results. The work is
:func:`napari_conformal.api.iter_calibrate` (through
:func:`napari_conformal.explore.calibrated.iter_calibrate_keeping_curves`, which
also keeps the calibration curves), a generator that yields progress after each
image; a napari thread worker drives it, so the UI never blocks and Cancel
(``worker.quit()``) stops between two images with no partial result. The result
is published into the viewer's shared workspace
(:class:`napari_conformal.explore.workspace.Workspace`), where the explorer
docks pick it up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    import napari

__all__ = ["CalibrationWidget"]

METHOD_LABELS = {
    "consign": "CONSIGN (PCA box)",
    "rwcp": "RW-CP (random walk)",
    "crc": "Standard CRC",
    "consema": "Consema (dilation)",
    "aps": "Pixel-wise APS",
    "raps": "Pixel-wise RAPS",
    "lac": "Pixel-wise LAC",
    "sacp": "SACP",
}


def _devices() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        n = 0
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(n)]


class CalibrationWidget(QWidget):
    """Dock widget that calibrates a conformal method on a dataset store.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the results go to (injected by napari).
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari_conformal.core.methods.base import available_methods, method_class

        self.viewer = napari_viewer
        self.worker: Any = None
        self.calibration: dict[str, Any] | None = None
        self._progress: Any = None

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
        for name in available_methods():
            self.method_combo.addItem(METHOD_LABELS.get(name, name), name)
        self.alpha_spin = self._double(
            0.001, 0.999, 0.1, 3, "risk level α: the set misses with probability ≤ α"
        )
        self.nu_spin = self._double(0.01, 0.999, 0.9, 3, "label-wise accuracy ν a member must reach")
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 200)
        self.k_spin.setValue(5)
        self.k_spin.setToolTip("principal components K (CONSIGN) or graph neighbours k (RW-CP)")
        # RW-CP graph and walk (SPEC §5): extractor, kernel scale β, steps; k is the K / k box above
        from napari_conformal.core.rwcp.features import available_extractors

        self.features_combo = QComboBox()
        self.features_combo.addItems(available_extractors())
        self.features_combo.setCurrentText("efficientnet-lite0")
        self.features_combo.setToolTip("RW-CP image features that the kNN graph is built from")
        self.model_dir_edit = QLineEdit()
        self.model_dir_edit.setPlaceholderText("local Hugging Face folder (DINOv2 / DINOv3 only)")
        self.beta_spin = self._double(0.0, 1000.0, 50.0, 1, "RW-CP kernel scale β of exp(−β·(1 − cos))")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 100)
        self.steps_spin.setValue(10)
        self.steps_spin.setToolTip("RW-CP random-walk steps")
        self.fraction_spin = self._double(0.05, 0.95, 0.5, 2, "fraction of images used for calibration")
        self.store_split_check = QCheckBox("use the store's own split when it has one")
        self.store_split_check.setChecked(True)
        self.store_split_check.setToolTip(
            "demo stores record a calibration/test split; otherwise a random split with this fraction and seed"
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.device_combo = QComboBox()
        self.device_combo.addItems(_devices())
        self.run_button = QPushButton("Run calibration")
        self.run_button.clicked.connect(self._run_or_cancel)
        self.status = QLabel("Choose a store and press Run.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Store", store_row)
        form.addRow("From layers", self.layer_store_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("α", self.alpha_spin)
        form.addRow("ν", self.nu_spin)
        form.addRow("K / k", self.k_spin)
        form.addRow("Features", self.features_combo)
        form.addRow("Model folder", self.model_dir_edit)
        form.addRow("β", self.beta_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Calibration fraction", self.fraction_spin)
        form.addRow("", self.store_split_check)
        form.addRow("Split seed", self.seed_spin)
        form.addRow("Device", self.device_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._method_class = method_class
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.features_combo.currentIndexChanged.connect(self._method_changed)
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
            self.k_spin,
            self.features_combo,
            self.model_dir_edit,
            self.beta_spin,
            self.steps_spin,
            self.fraction_spin,
            self.store_split_check,
            self.seed_spin,
            self.device_combo,
        ]

    def _method_changed(self) -> None:
        if self.method_combo.currentData() is None:
            return
        method = self._method_class(self.method_combo.currentData())
        self.nu_spin.setEnabled(method.uses_nu)
        is_rwcp = self.method_combo.currentData() == "rwcp"
        self.k_spin.setEnabled(method.uses_k or is_rwcp)
        for widget in (self.features_combo, self.beta_spin, self.steps_spin):
            widget.setEnabled(is_rwcp)
        self.model_dir_edit.setEnabled(is_rwcp and self.features_combo.currentText().startswith("dino"))

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
        if stores and not self.store_edit.text().strip():  # a store opened as layers is the obvious choice
            self.store_edit.setText(stores[0][1])

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
        """The calibration request the inputs describe (no I/O)."""
        name = self.method_combo.currentData()
        method = self._method_class(name)
        params: dict[str, Any] = {}
        if self.device_combo.currentText() != "auto":
            params["device"] = self.device_combo.currentText()
        if name == "rwcp":
            params.update(
                features=self.features_combo.currentText(),
                rw_beta=float(self.beta_spin.value()),
                n_step=int(self.steps_spin.value()),
            )
            if self.model_dir_edit.isEnabled() and self.model_dir_edit.text().strip():
                params["model_dir"] = self.model_dir_edit.text().strip()
        return {
            "store": self.store_edit.text().strip(),
            "method": name,
            "alpha": float(self.alpha_spin.value()),
            "nu": float(self.nu_spin.value()) if method.uses_nu else None,
            "k": int(self.k_spin.value()) if self.k_spin.isEnabled() else None,
            "fraction": float(self.fraction_spin.value()),
            "seed": int(self.seed_spin.value()),
            "store_split": bool(self.store_split_check.isChecked()),
            "params": params,
        }

    def run(self) -> None:
        """Validate the inputs and start calibration in a background worker."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        from napari_conformal.errors import ConformalError
        from napari_conformal.explore.calibrated import iter_calibrate_keeping_curves
        from napari_conformal.io.indices import random_split, recorded_split
        from napari_conformal.io.store import open_store

        req = self.request()
        try:
            if not req["store"]:
                raise ConformalError("choose a store first")
            store = open_store(req["store"], mode="r")
            split = recorded_split(store) if req["store_split"] else None
            cal, test = split or random_split(store.n_images, req["fraction"], req["seed"])
        except (ConformalError, OSError) as exc:
            self._error(exc)
            return
        gen_fn = thread_worker(  # errors: see _error
            iter_calibrate_keeping_curves, start_thread=False, ignore_errors=True
        )
        worker = gen_fn(
            store,
            req["method"],
            alpha=req["alpha"],
            nu=req["nu"],
            k=req["k"],
            cal_indices=cal,
            params=req["params"],
        )
        self._progress = progress(total=len(cal), desc=f"Calibrating {req['method']}")
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda calibrated: self._on_done(calibrated, store, test))
        worker.errored.connect(self._error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        self.status.setText(f"Calibrating {req['method']} on {len(cal)} images…")
        worker.start()

    def cancel(self) -> None:
        """Stop the running calibration; it ends between two images with no result."""
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
        done, _total = step
        if self._progress is not None:
            self._progress.update(done - self._progress.n)

    def _on_done(self, calibrated: Any, store: Any, test: list[int]) -> None:
        from napari_conformal._widgets._common import context_for

        record = calibrated.record
        self.calibration = record
        levels = f"α = {record['alpha']}" + ("" if record["nu"] is None else f", ν = {record['nu']}")
        self.status.setText(
            f"{record['method']}: λ̂ = {record['lambda_hat']:.5g} from n = {record['n']} images "
            f"({levels}); {len(test)} test images."
        )
        workspace = context_for(self.viewer).workspace
        if record["method"] == "rwcp":  # a later RW-CP companion uses the same graph settings
            workspace.companion_params["rwcp"] = {
                key: v for key, v in (record.get("params") or {}).items() if key != "device"
            }
        session = workspace.publish(store, calibrated, test)
        if test:
            self._show_test_image(session, test[0])

    def _show_test_image(self, session: Any, index: int) -> None:
        """Show image ``index`` and (for single-mask methods) its set in the plugin's shared layers."""
        import numpy as np

        from napari_conformal._widgets._common import METHOD_COLOURS, context_for

        context = context_for(self.viewer)
        record = session.record
        result = session.predict(index, record["lambda_hat"])
        context.show_image(index)
        if isinstance(result, np.ndarray) and result.shape == session.store.spatial_shape:
            meta = session.provenance(
                alpha=record["alpha"], nu=record["nu"], lambda_hat=record["lambda_hat"], index=index
            )
            context.layers.show(
                f"set:{record['method']}",
                "labels",
                result.astype(np.uint8),
                name=f"{record['method']} set α={record['alpha']} (image {index})",
                metadata={"napari_conformal": meta},
                scale=session.store.spacing,
                colour=METHOD_COLOURS.get(record["method"]),
                opacity=0.5,
            )

    def _on_aborted(self) -> None:
        self.status.setText("Calibration cancelled; nothing was changed.")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self._set_busy(False)

    def _error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = " ".join(str(exc).split()) or type(exc).__name__
        self.status.setText(f"Error: {message}")
        show_error(f"napari-conformal: {message}")
