"""CONSIGN explorer: α/ν live, one slider per principal-component coefficient, directions, regions, members.

A CONSIGN set of one image is ``{argmax(μ + Σ_k c_k u_k) : c ∈ [m − λ̂h, m + λ̂h]}``:
the model's mean softmax μ moved along its K principal directions u_k, with
coefficients in a box whose size λ̂(α, ν) is calibrated. The explorer shows

* one slider per coefficient c_k, bounded by the box at λ̂; dragging redraws
  the member ``argmax(μ + Σ c_k u_k)`` (the slider path of the core, one
  matrix–vector product);
* the K principal directions u_k (channel of the chosen label) as image layers;
* the "always" and "possibly" regions of the chosen label as contours (exact
  interval arithmetic over the box; exact for binary tasks);
* N members drawn uniformly from the box on a sample axis.

λ̂ for the calibrated α (and ν up to the calibrated one) comes from the kept
curves; another α needs a coverage search at that α's box, which runs in the
background once and is cached (the layers keep their last state meanwhile).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
)

from napari_conformal._widgets._controls import Legend, LevelSliders
from napari_conformal._widgets._display import title
from napari_conformal._widgets._explorer import ExplorerBase
from napari_conformal.errors import ConformalError

if TYPE_CHECKING:
    import napari

__all__ = ["ConsignExplorer"]

ALWAYS_COLOUR = "#39ff14"
POSSIBLY_COLOUR = "#ff8c00"


@functools.cache
def _direction_colormap() -> Any:
    """Diverging magenta–green with a transparent middle: a direction map tints only where it is strong,
    so the image underneath stays readable."""
    from napari.utils.colormaps import Colormap

    colours = [[0.77, 0.11, 0.49, 1.0], [1.0, 1.0, 1.0, 0.0], [0.30, 0.67, 0.13, 1.0]]
    return Colormap(colours, name="conformal_direction", controls=[0.0, 0.5, 1.0])


class ConsignExplorer(ExplorerBase):
    """Dock widget exploring a CONSIGN calibration.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.

    Attributes
    ----------
    coefficients : ndarray of float64, shape (K,)
        The coefficient vector of the member drawn from the sliders.
    """

    owner = "consign-explorer"
    draws = ("directions",)

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from napari_conformal.core.methods.base import methods_drawing

        super().__init__(napari_viewer)
        self.method_name = methods_drawing("directions")[0]
        layout = self.base_layout()
        self.levels = LevelSliders(self.workspace, with_nu=True)
        layout.addWidget(self.levels)
        self.label_combo = QComboBox()
        self.label_combo.setToolTip("structure whose direction channel and always/possibly regions are shown")
        self.label_combo.currentIndexChanged.connect(lambda *_: self.request_redraw("label"))
        form = QFormLayout()
        form.addRow("Structure", self.label_combo)
        layout.addLayout(form)
        self.legend = Legend()
        layout.addWidget(self.legend)

        self.coefficient_box = QGroupBox("Coefficients c_k (within the calibrated box)")
        self.coefficient_form = QFormLayout(self.coefficient_box)
        self.coefficient_sliders: list[Any] = []
        self.centre_button = QPushButton("Centre")
        self.centre_button.setToolTip("put every coefficient at the centre of the box")
        self.centre_button.clicked.connect(self.reset_coefficients)
        layout.addWidget(self.coefficient_box)
        layout.addWidget(self.centre_button)

        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 1000)
        self.n_spin.setValue(10)
        self.n_spin.setToolTip("number N of members drawn onto the sample axis")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("seed of the member draw")
        self.draw_button = QPushButton("Draw members")
        self.draw_button.setToolTip("draw N members with coefficients uniform in the box")
        self.draw_button.clicked.connect(self.draw_members)
        self.live_members = QCheckBox("follow α, ν")
        self.live_members.setChecked(True)
        members = QFormLayout()
        members.addRow("Members N", self.n_spin)
        members.addRow("Seed", self.seed_spin)
        layout.addLayout(members)
        row = QHBoxLayout()
        row.addWidget(self.draw_button)
        row.addWidget(self.live_members)
        layout.addLayout(row)
        self.calibrate_button = QPushButton("Calibrate on this split")
        self.calibrate_button.setToolTip(
            "calibrate CONSIGN (K = 5) on the calibration images of the last calibration"
        )
        self.calibrate_button.clicked.connect(lambda: self.calibrate_companion(self.method_name))
        layout.addWidget(self.calibrate_button)
        layout.addWidget(self.export_button())
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.coefficients = np.zeros(0)
        self._members_requested = False
        self._shown: tuple[Any, ...] | None = None  # (index, alpha, nu, lam) of the set on screen
        self._searching: tuple[float, float] | None = None
        self._labels_for: Any = None
        self.request_redraw("all")

    # -- controls ----------------------------------------------------------------------------

    @property
    def label(self) -> int:
        """The label shown in the direction and region layers."""
        data = self.label_combo.currentData()
        return 1 if data is None else int(data)

    def _fill_labels(self) -> None:
        store = self.workspace.store
        if store is None or self._labels_for is store:
            return
        self._labels_for = store
        names = store.label_names
        self.label_combo.blockSignals(True)
        self.label_combo.clear()
        for i, name in enumerate(names):
            self.label_combo.addItem(f"{i}: {name}", i)
        self.label_combo.setCurrentIndex(min(1, len(names) - 1))
        self.label_combo.blockSignals(False)

    def _build_sliders(self, k: int) -> None:
        from superqt import QLabeledDoubleSlider

        if len(self.coefficient_sliders) == k:
            return
        while self.coefficient_form.rowCount():
            self.coefficient_form.removeRow(0)
        self.coefficient_sliders = []
        for j in range(k):
            slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            slider.setDecimals(4)
            slider.setToolTip(f"coefficient of principal direction u_{j + 1}")
            slider.valueChanged.connect(lambda value, j=j: self._coefficient_moved(j, value))
            self.coefficient_form.addRow(f"c{j + 1}", slider)
            self.coefficient_sliders.append(slider)

    def _coefficient_moved(self, j: int, value: float) -> None:
        if j < self.coefficients.size:
            self.coefficients[j] = float(value)
            self.request_redraw("coefficients")

    def _set_sliders(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Bound the sliders by the box and show the current coefficients (no redraw triggered)."""
        for j, slider in enumerate(self.coefficient_sliders):
            slider.blockSignals(True)
            slider.setRange(float(lo[j]), float(hi[j]))
            slider.setSingleStep(max(float(hi[j] - lo[j]) / 100.0, 1e-6))
            slider.setValue(float(self.coefficients[j]))
            slider.blockSignals(False)

    def set_coefficient(self, j: int, value: float) -> None:
        """Move slider ``j`` to ``value`` (clamped to the box) as a user would."""
        self.coefficient_sliders[j].setValue(float(value))

    def reset_coefficients(self) -> None:
        """Coefficients back to the box centre."""
        self._shown = None  # forces the sliders and the member to follow the centre
        self.coefficients = np.zeros(0)
        self.request_redraw("coefficients")

    def draw_members(self) -> None:
        """Draw N members of the set (kept live while the box is ticked)."""
        self._members_requested = True
        self.request_redraw("members")
        self.flush()

    # -- background search ---------------------------------------------------------------------

    def _start_search(self, session: Any, alpha: float, nu: float) -> None:
        if self._searching is not None:
            return  # the redraw after the running search asks again for the current levels
        self._searching = (alpha, nu)

        def done(_: Any) -> None:
            self.workspace.session_updated(self.method_name)

        worker = self.start_worker(
            session.iter_extend,
            alpha,
            nu,
            on_done=done,
            description=f"{title(self.method_name)}: coverage search at α = {alpha:.3g}",
        )

        def finished() -> None:
            self._searching = None
            self.request_redraw("levels")

        worker.finished.connect(finished)

    # -- drawing -----------------------------------------------------------------------------

    def redraw(self, dirty: set[str]) -> None:
        """Update the member, regions, directions and members from the workspace and the sliders."""
        from napari_conformal.explore.session import LevelsPending

        ws = self.workspace
        if not ws.ready or ws.index is None:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            return
        self._fill_labels()
        session = ws.session(self.method_name)
        self.calibrate_button.setVisible(session is None)
        index = ws.index
        self.context.ensure_image(index)
        if session is None:
            running = " (running…)" if self.is_calibrating(self.method_name) else ""
            self.status.setText(f"CONSIGN is not calibrated on this split: press the button below{running}.")
            self.banner.setText("")
            return
        prepared = self.prepared_or_request(self.method_name, index)
        if prepared is None:
            return
        try:
            lam = session.lambda_hat(ws.alpha, ws.nu)
        except LevelsPending:
            self._start_search(session, ws.alpha, ws.nu)
            self.status.setText(
                f"CONSIGN: computing the calibrated λ for α = {ws.alpha:.3g}, ν = {ws.nu:.3g} (coverage search of "
                f"the {session.n} calibration images); the layers still show the levels in their names."
            )
            self.banner.setText(f"Calibrating the box for α = {ws.alpha:.3g}, ν = {ws.nu:.3g}…")
            return
        except ConformalError as exc:
            self.status.setText(f"CONSIGN: {' '.join(str(exc).split())}")
            return
        the_set = session.predict(index, lam, ws.alpha, ws.nu)
        key = (index, ws.alpha, ws.nu, lam)
        set_changed = key != self._shown
        lo, hi = the_set.bounds()
        self._build_sliders(the_set.basis.k)
        if self._shown is None or self._shown[0] != index or self.coefficients.size != lo.size:
            self.coefficients = the_set.centre().astype(np.float64)
        self.coefficients = np.clip(self.coefficients, lo, hi)
        if set_changed:
            self._set_sliders(lo, hi)
        self._shown = key
        spacing = ws.store.spacing
        prov = session.provenance(alpha=ws.alpha, nu=ws.nu, lambda_hat=lam, index=index)
        label = min(self.label, the_set.basis.n_labels - 1)
        label_name = ws.store.label_names[label]
        levels = f"α={ws.alpha:.3g} ν={ws.nu:.3g}"

        member = the_set.segment(self.coefficients)
        self.show_layer(
            "consign:member",
            "labels",
            member,
            name=f"CONSIGN member · {levels} (image {index})",
            metadata={"napari_conformal": {**prov, "coefficients": [float(c) for c in self.coefficients]}},
            scale=spacing,
            opacity=0.5,
            editable=False,
        )
        if dirty == {"coefficients"} and not set_changed:
            self.status.setText(self._describe(session, lam, lo, hi))
            return
        self.show_guarantee(session.method, ws.alpha, ws.nu, lam)
        self.legend.set_entries(
            [
                ("always", ALWAYS_COLOUR, f"{label_name}: in every plausible segmentation", False),
                ("possibly", POSSIBLY_COLOUR, f"{label_name}: in some plausible segmentation", False),
                ("member", "#808080", "the member the sliders choose (label colours)", False),
                ("direction", "#c41c7d", "direction u1: magenta −, green +", False),
            ]
        )
        regions = the_set.regions()
        for kind, masks, colour in (
            ("always", regions.always, ALWAYS_COLOUR),
            ("possibly", regions.possibly, POSSIBLY_COLOUR),
        ):
            self.show_layer(
                f"consign:{kind}",
                "labels",
                masks[label].cpu().numpy().astype(np.uint8),
                name=f"CONSIGN {kind} · {label_name} · {levels} (image {index})",
                metadata={"napari_conformal": {**prov, "region": kind, "label": label}},
                scale=spacing,
                contour=True,
                colour=colour,
                opacity=1.0,
                editable=False,
            )
        if dirty & {"all", "image", "prepared", "label", "session"} or self.layers.get("consign:u1") is None:
            self._draw_directions(the_set, label, label_name, prov, index)
        if self._members_requested and (self.live_members.isChecked() or "members" in dirty):
            n, seed = int(self.n_spin.value()), int(self.seed_spin.value())
            self.show_layer(
                "consign:members",
                "labels",
                the_set.sample(n, seed),
                name=f"CONSIGN {n} members · {levels} (image {index})",
                metadata={"napari_conformal": {**prov, "n_members": n, "seed": seed}},
                scale=(1.0, *spacing),
                opacity=0.5,
                editable=False,
            )
        self.status.setText(self._describe(session, lam, lo, hi))

    def _draw_directions(self, the_set: Any, label: int, label_name: str, prov: dict, index: int) -> None:
        maps = the_set.principal_maps()  # (K, L, *S)
        k = maps.shape[0]
        for j in range(k):
            data = np.ascontiguousarray(maps[j, label], dtype=np.float32)
            bound = float(np.abs(data).max()) or 1.0
            self.show_layer(
                f"consign:u{j + 1}",
                "image",
                data,
                name=f"CONSIGN direction u{j + 1} · {label_name} (image {index})",
                metadata={"napari_conformal": {**prov, "direction": j + 1, "label": label}},
                scale=self.workspace.store.spacing,
                colormap=_direction_colormap(),
                contrast_limits=(-bound, bound),
                opacity=0.8,
                visible=j == 0,
            )
        for j in range(k, 64):  # fewer directions than before (another image or K): drop the rest
            if self.layers.get(f"consign:u{j + 1}") is None:
                break
            self.layers.remove(f"consign:u{j + 1}")

    def _describe(self, session: Any, lam: float, lo: np.ndarray, hi: np.ndarray) -> str:
        ws = self.workspace
        widths = ", ".join(f"{h - l:.3g}" for l, h in zip(lo, hi, strict=True))
        return (
            f"{title(self.method_name)}: calibrated box scale λ = {lam:.4g} (n = {session.n}, α = {ws.alpha:.3g}, "
            f"ν = {ws.nu:.3g}); K = {lo.size}; box widths {widths}"
        )

    def export_keys(self) -> list[str]:
        """Member, regions, members and directions."""
        keys = ["consign:member", "consign:always", "consign:possibly", "consign:members"]
        return keys + [key for key, _ in self.layers.items() if key.startswith("consign:u")]
