"""Build store dock: a dataset store from napari layers (image, labels, samples) or from folders.

The dock gathers inputs; the work is the import engine every importer shares
(:mod:`napari_conformal.io.importers`): every case is checked before anything is written, the store is
written under a temporary name and renamed into place. A napari thread worker drives the engine's
progress generator, so the UI never blocks; Cancel makes the engine stop before its next case
(its ``should_stop``), which removes the temporary store in the worker before it ends. When the store is complete it is opened in the viewer (the
plugin's store reader), so the calibration dock's store field follows it.

Sources:

* **Layers**: an image layer ``(*S)`` or ``(N, *S)``, a samples layer ``(T, L, *S)`` or ``(N, T, L, *S)``
  (probabilities, or logits with *logits*), an optional labels layer shaped like the image; the spacing
  is the image layer's scale.
* **nnU-Net folders**: images, labels and one folder per member (:func:`~napari_conformal.io.importers.import_nnunet`).
* **Array folders**: images, labels and sample folders (:func:`~napari_conformal.io.importers.import_arrays`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
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

__all__ = ["SOURCES", "BuildStoreWidget"]

#: the sources the dock builds from, in the order of its Source list
SOURCES = ("layers", "nnunet", "arrays")
_NONE = "— none —"


def _folder_row(parent: QWidget, placeholder: str) -> tuple[QLineEdit, QHBoxLayout]:
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    browse = QPushButton("Browse…")

    def pick() -> None:
        path = QFileDialog.getExistingDirectory(parent, placeholder)
        if path:
            edit.setText(path)

    browse.clicked.connect(pick)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(browse)
    return edit, row


class _FolderList(QWidget):
    """A list of folders with Add… / Remove (ensemble members, sample folders)."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title
        self.list = QListWidget()
        self.list.setMaximumHeight(90)
        add = QPushButton("Add…")
        add.clicked.connect(self._add_dialog)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.list.takeItem(self.list.row(i)) for i in self.list.selectedItems()])
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def _add_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, self.title)
        if path:
            self.add(path)

    def add(self, path: str) -> None:
        """Append a folder."""
        self.list.addItem(str(path))

    def paths(self) -> list[str]:
        """The folders, in order."""
        return [self.list.item(k).text() for k in range(self.list.count())]


class BuildStoreWidget(QWidget):
    """Dock widget that builds a dataset store from layers or folders, in a worker with progress and cancel.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers can be read and where the new store opens (injected by napari).

    Attributes
    ----------
    store_path : pathlib.Path or None
        The last store built here.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari_conformal._widgets._explorer import MIN_WIDTH

        self.viewer = napari_viewer
        self.setMinimumWidth(MIN_WIDTH)
        self.worker: Any = None
        self.store_path: Path | None = None
        self._progress: Any = None
        self._tabbed = False
        self._stop_requested = False

        self.source_combo = QComboBox()
        for key, text in zip(SOURCES, ("Layers in this viewer", "nnU-Net folders", "Array folders"), strict=True):
            self.source_combo.addItem(text, key)
        self.pages = QStackedWidget()

        # layers
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = QComboBox()
        self.samples_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.image_combo.setToolTip("image layer: (*S) for one case or (N, *S) for N cases")
        self.samples_combo.setToolTip("image layer of softmax samples: (T, L, *S) or (N, T, L, *S)")
        self.labels_combo.setToolTip("labels layer shaped like the image (optional)")
        self.layer_logits = QCheckBox("samples are logits")
        self.layer_logits.setToolTip("a softmax over the class axis is applied before storing")
        form.addRow("Image", self.image_combo)
        form.addRow("Samples", self.samples_combo)
        form.addRow("Ground truth", self.labels_combo)
        form.addRow("", self.layer_logits)
        self.pages.addWidget(page)

        # nnU-Net folders
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.nn_images, row = _folder_row(self, "folder of CASE_0000.nii.gz")
        form.addRow("Images", row)
        self.nn_labels, row = _folder_row(self, "folder of CASE.nii.gz (optional)")
        form.addRow("Labels", row)
        self.nn_members = _FolderList("a folder of CASE.npz (one fold or member)")
        form.addRow("Members", self.nn_members)
        self.nn_channel = QSpinBox()
        self.nn_channel.setRange(-1, 99)
        self.nn_channel.setValue(-1)
        self.nn_channel.setSpecialValueText("only one")
        self.nn_channel.setToolTip("the image channel to store when the images have several")
        form.addRow("Channel", self.nn_channel)
        self.nn_order = QComboBox()
        self.nn_order.addItems(["voxel", "ras"])
        self.nn_order.setToolTip("'ras' for predictions made with nnU-Net's NibabelIOWithReorient")
        form.addRow("npz grid", self.nn_order)
        self.pages.addWidget(page)

        # array folders
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.ar_images, row = _folder_row(self, "folder of CASE.npy / .npz / .tif / .zarr / .nii.gz")
        form.addRow("Images", row)
        self.ar_labels, row = _folder_row(self, "folder of ground truth per case (optional)")
        form.addRow("Labels", row)
        self.ar_samples = _FolderList("a folder of samples per case")
        form.addRow("Samples", self.ar_samples)
        self.ar_logits = QCheckBox("files hold logits")
        self.ar_logits.setToolTip("a softmax over the class axis is applied before storing")
        form.addRow("", self.ar_logits)
        self.ar_order = QComboBox()
        self.ar_order.addItems(["zyx", "xyz"])
        self.ar_order.setToolTip("'xyz': arrays in nibabel / MONAI axis order (reversed on import)")
        form.addRow("Array axes", self.ar_order)
        self.pages.addWidget(page)

        self.out_edit, out_row = _folder_row(self, "new store, e.g. /data/my_model.zarr")
        self.pad_check = QCheckBox("pad cases to the largest shape")
        self.overwrite_check = QCheckBox("replace an existing store")
        self.build_button = QPushButton("Build store")
        self.build_button.clicked.connect(self._build_or_cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status = QLabel("Choose layers or folders and a new store path, then Build store.")
        self.status.setWordWrap(True)

        for combo in self.findChildren(QComboBox):
            # long entries (layer names, axis orders) must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        outer = QVBoxLayout(self)  # content in a scroll area, as in every dock: it may be shorter than it
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        top = QFormLayout()
        top.addRow("Source", self.source_combo)
        layout.addLayout(top)
        layout.addWidget(self.pages)
        bottom = QFormLayout()
        bottom.addRow("Store", out_row)
        bottom.addRow("", self.pad_check)
        bottom.addRow("", self.overwrite_check)
        layout.addLayout(bottom)
        layout.addWidget(self.build_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.source_combo.currentIndexChanged.connect(self._show_page)
        self._layers_chosen = False
        for combo in (self.image_combo, self.samples_combo):
            combo.activated.connect(lambda *_: setattr(self, "_layers_chosen", True))
        self._show_page(self.source_combo.currentIndex())
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # -- inputs -----------------------------------------------------------------------------------

    @property
    def inputs(self) -> list[QWidget]:
        """The inputs, disabled while a build runs."""
        return [self.source_combo, self.pages, self.out_edit, self.pad_check, self.overwrite_check]

    def set_source(self, key: str) -> None:
        """Choose the source ("layers", "nnunet", "arrays") as a user would."""
        self.source_combo.setCurrentIndex(SOURCES.index(key))

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        try:
            combos = (self.image_combo, self.samples_combo, self.labels_combo)
            current = [c.currentText() for c in combos]
        except RuntimeError:  # the widget is gone (viewer closing)
            return
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        for combo, names, keep in zip(combos, (images, images, [_NONE, *labels]), current, strict=True):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if keep in names:
                combo.setCurrentText(keep)
            combo.blockSignals(False)
        # guessed until the user picks a layer (then kept), or when one layer sits in both
        chosen = getattr(self, "_layers_chosen", False)
        if len(images) > 1 and (not chosen or self.image_combo.currentText() == self.samples_combo.currentText()):
            image, samples = self._guess_image_and_samples(images)
            self.image_combo.setCurrentText(image)
            self.samples_combo.setCurrentText(samples)

    def _show_page(self, index: int) -> None:
        """Show the page of the chosen source; the dock takes that page's height only."""
        for i in range(self.pages.count()):
            policy = QSizePolicy.Policy.Preferred if i == index else QSizePolicy.Policy.Ignored
            self.pages.widget(i).setSizePolicy(policy, policy)
        self.pages.setCurrentIndex(index)
        self.pages.adjustSize()

    def _guess_image_and_samples(self, names: list[str]) -> tuple[str, str]:
        """A sensible first choice of the image and samples layers among the image layers ``names``.

        The image: a layer this plugin did not compute (no method in its metadata), with the fewest
        axes. The samples: another layer shaped (T, L, *S) beside that (*S) image, else the other layer
        with the most axes.
        """
        layers = self.viewer.layers

        def computed(name: str) -> bool:
            meta = layers[name].metadata.get("napari_conformal") or {}
            return isinstance(meta, dict) and ("method" in meta or "lambda_hat" in meta)

        image = min(names, key=lambda n: (computed(n), layers[n].ndim))
        rest = [n for n in names if n != image]
        shape = tuple(layers[image].data.shape)
        fitting = [n for n in rest if layers[n].ndim == len(shape) + 2 and tuple(layers[n].data.shape[2:]) == shape]
        samples = (fitting or sorted(rest, key=lambda n: (-layers[n].ndim, computed(n))))[0]
        return image, samples

    def _layer_data(self, name: str) -> Any:
        from napari_conformal.errors import ImportInputError

        layer = self.viewer.layers[name]
        if getattr(layer, "multiscale", False):
            raise ImportInputError(f"layer {name!r} is multiscale; give a single-scale layer")
        return layer.data

    def generator(self) -> Any:
        """The import generator the inputs describe (validates them; no data is read yet).

        Raises
        ------
        ConformalError
            A missing input, or layers whose shapes do not fit (the message names them).
        """
        from napari_conformal.errors import ConformalError
        from napari_conformal.io.importers import iter_build_store, iter_import_arrays, iter_import_nnunet
        from napari_conformal.io.importers.memory import cases_from_layers

        out = self.out_edit.text().strip()
        if not out:
            raise ConformalError("choose where to write the new store")
        common = {
            "pad": self.pad_check.isChecked(),
            "overwrite": self.overwrite_check.isChecked(),
            "should_stop": lambda: self._stop_requested,
        }
        source = SOURCES[self.source_combo.currentIndex()]
        if source == "layers":
            image_name, samples_name = self.image_combo.currentText(), self.samples_combo.currentText()
            if not image_name or not samples_name:
                raise ConformalError("choose an image layer and a samples layer")
            if image_name == samples_name:
                raise ConformalError("the image layer and the samples layer must be two different layers")
            label_name = self.labels_combo.currentText()
            label = None if label_name in ("", _NONE) else self._layer_data(label_name)
            images, samples, labels = cases_from_layers(self._layer_data(image_name), self._layer_data(samples_name), label)
            layer = self.viewer.layers[image_name]
            ndim = len(layer.data.shape) - (0 if isinstance(images, list) else 1)
            spacing = [float(s) for s in layer.scale[-ndim:]]
            n = len(images) if isinstance(images, list) else int(images.shape[0])
            names = [image_name] if n == 1 else [f"{image_name} {i}" for i in range(n)]
            return iter_build_store(
                out,
                images,
                samples,
                labels,
                case_names=names,
                spacing=spacing,
                logits=self.layer_logits.isChecked(),
                sampler=f"from the napari layer {samples_name!r}",
                **common,
            )
        if source == "nnunet":
            channel = self.nn_channel.value()
            return iter_import_nnunet(
                self.nn_images.text().strip(),
                self.nn_labels.text().strip() or None,
                self.nn_members.paths(),
                out,
                channel=None if channel < 0 else channel,
                npz_order=self.nn_order.currentText(),
                **common,
            )
        return iter_import_arrays(
            self.ar_images.text().strip(),
            self.ar_samples.paths(),
            out,
            labels=self.ar_labels.text().strip() or None,
            logits=self.ar_logits.isChecked(),
            spatial_order=self.ar_order.currentText(),
            **common,
        )

    # -- running ----------------------------------------------------------------------------------

    def _build_or_cancel(self) -> None:
        if self.worker is not None:
            self.cancel()
        else:
            self.build()

    def build(self) -> None:
        """Check the inputs and start building in a background worker."""
        from napari.qt.threading import thread_worker

        from napari_conformal._widgets._progress import ProgressFeed
        from napari_conformal.errors import ConformalError

        self._stop_requested = False
        try:
            gen = self.generator()
            first = next(gen)  # the headers are read here: folder and case errors show at once
        except StopIteration:  # pragma: no cover - the engine always yields
            return
        except (ConformalError, OSError) as exc:
            self._error(exc)
            return

        def drive() -> Any:
            yield first
            return (yield from gen)

        worker = thread_worker(drive, start_thread=False, ignore_errors=True)()
        self._progress = ProgressFeed("Building store", total=int(first[1]))
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        self.status.setText("Building the store…")
        worker.start()

    def cancel(self) -> None:
        """Stop the build: the engine stops before its next case and removes the temporary store."""
        if self.worker is not None:
            self._stop_requested = True
            self.status.setText("Cancelling…")

    def _set_busy(self, busy: bool) -> None:
        for widget in self.inputs:
            widget.setEnabled(not busy)
        self.build_button.setText("Cancel" if busy else "Build store")
        self.progress_bar.setVisible(busy)
        if busy:
            self.progress_bar.setRange(0, 0)

    def _on_progress(self, step: Any) -> None:
        if self._progress is not None:
            self._progress(step)
        done, total = int(step[0]), max(int(step[1]), 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(done, total))
        stage = getattr(step, "stage", "")
        self.progress_bar.setFormat(f"{stage}: %v / %m cases")

    def _on_done(self, path: Any) -> None:
        from napari_conformal.io.store import open_store

        self.store_path = Path(path)
        store = open_store(self.store_path)
        self.status.setText(
            f"Wrote {store.n_images} cases of shape {store.spatial_shape}, T = {store.n_samples} samples of "
            f"L = {store.n_labels} classes, to {self.store_path}; opened it in the viewer."
        )
        self.viewer.open(str(self.store_path), plugin="napari-conformal")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self._set_busy(False)

    def _error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from napari_conformal.errors import Cancelled

        if isinstance(exc, Cancelled):
            self.status.setText("Build cancelled; no store was written.")
            return
        message = " ".join(str(exc).split()) or type(exc).__name__
        self.status.setText(f"Error: {message}")
        show_error(f"napari-conformal: {message}")

    def showEvent(self, event: Any) -> None:
        """First shown: tab with the plugin's other docks."""
        super().showEvent(event)
        if not self._tabbed:
            from napari_conformal._widgets._explorer import tab_with_plugin_docks

            self._tabbed = True
            tab_with_plugin_docks(self)

