"""Pixel-wise view: set-size map and sampled members of the APS / RAPS / LAC / SACP sets, α and ν live.

A pixel-wise set gives every pixel p a set of labels ``T_λ(X)_p``; its size
``|T_λ(X)_p|`` (1 … L) shows where the set is uncertain, and its members are
label maps that pick one label of ``T_λ(X)_p`` at every pixel. λ̂(α, ν) is
re-reduced from the cached per-image membership curves whenever a slider
moves; members are redrawn with the same seed, so they change only where the
set does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QPushButton, QSpinBox

from napari_conformal._widgets._controls import Legend, LevelSliders
from napari_conformal._widgets._display import title
from napari_conformal._widgets._explorer import ExplorerBase
from napari_conformal.errors import ConformalError

if TYPE_CHECKING:
    import napari

__all__ = ["PixelwiseView", "pixelwise_methods"]


def pixelwise_methods() -> list[str]:
    """The methods this view shows: those that draw a per-pixel set-size map."""
    from napari_conformal.core.methods.base import methods_drawing

    return methods_drawing("set_size")


class PixelwiseView(ExplorerBase):
    """Dock widget showing a pixel-wise conformal set.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.
    """

    owner = "pixelwise-view"
    draws = ("set_size",)

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        layout = self.base_layout()
        self.method_combo = QComboBox()
        for name in pixelwise_methods():
            self.method_combo.addItem(title(name), name)
        self.method_combo.setToolTip(
            "pixel-wise method; calibrated on the same calibration images when not calibrated yet"
        )
        self.method_combo.currentIndexChanged.connect(lambda *_: self.request_redraw("method"))
        self.levels = LevelSliders(self.workspace, with_nu=True)
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 1000)
        self.n_spin.setValue(10)
        self.n_spin.setToolTip("number N of members drawn onto the sample axis")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("seed of the member draw (the same seed redraws the same uniforms)")
        self.draw_button = QPushButton("Draw members")
        self.draw_button.setToolTip("draw N members of the set onto a labels layer with a sample axis")
        self.draw_button.clicked.connect(self.draw_members)
        self.live_members = QCheckBox("follow α, ν")
        self.live_members.setChecked(True)
        self.n_spin.valueChanged.connect(lambda *_: self._members_changed())
        self.seed_spin.valueChanged.connect(lambda *_: self._members_changed())

        form = QFormLayout()
        form.addRow("Method", self.method_combo)
        layout.addLayout(form)
        layout.addWidget(self.levels)
        self.legend = Legend()
        layout.addWidget(self.legend)
        members = QFormLayout()
        members.addRow("Members N", self.n_spin)
        members.addRow("Seed", self.seed_spin)
        layout.addLayout(members)
        row = QHBoxLayout()
        row.addWidget(self.draw_button)
        row.addWidget(self.live_members)
        layout.addLayout(row)
        layout.addWidget(self.export_button())
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._members_requested = False
        self._on_session_added(None)

    # -- state -------------------------------------------------------------------------------

    @property
    def method_name(self) -> str:
        """The pixel-wise method shown."""
        return str(self.method_combo.currentData())

    def _on_session_added(self, name: Any) -> None:
        # follow a freshly published pixel-wise calibration
        primary = self.workspace.primary
        if name is not None and name == primary and primary in pixelwise_methods():
            pos = self.method_combo.findData(primary)
            if pos >= 0 and pos != self.method_combo.currentIndex():
                self.method_combo.blockSignals(True)
                self.method_combo.setCurrentIndex(pos)
                self.method_combo.blockSignals(False)
        self.request_redraw("session")

    def _members_changed(self) -> None:
        if self._members_requested:
            self.request_redraw("members")

    def draw_members(self) -> None:
        """Draw N members of the current set (and keep them live if the box is ticked)."""
        self._members_requested = True
        self.request_redraw("members")
        self.flush()

    # -- drawing -----------------------------------------------------------------------------

    def redraw(self, dirty: set[str]) -> None:
        """Update the set-size map and (if requested) the members from the workspace."""
        ws = self.workspace
        if not ws.ready or ws.index is None:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            return
        name = self.method_name
        index = ws.index
        self.context.ensure_image(index)
        if not self.ensure_companion(name):
            self.status.setText(f"{title(name)}: calibrating on the same calibration images…")
            return
        session = ws.session(name)
        prepared = self.prepared_or_request(name, index)
        if prepared is None:
            return
        try:
            lam = session.lambda_hat(ws.alpha, ws.nu)
        except ConformalError as exc:
            self.status.setText(f"{title(name)}: {' '.join(str(exc).split())}")
            return
        for other in pixelwise_methods():  # one method at a time
            if other != name:
                self.layers.remove(f"size:{other}")
                self.layers.remove(f"members:{other}")
        n_labels = int(prepared.n_labels)
        sizes = session.method.set_size_map(prepared, lam).astype(np.min_scalar_type(n_labels))
        spacing = ws.store.spacing
        meta = {"napari_conformal": session.provenance(alpha=ws.alpha, nu=ws.nu, lambda_hat=lam, index=index)}
        levels = f"α={ws.alpha:.3g} ν={ws.nu:.3g}"
        self.show_guarantee(session.method, ws.alpha, ws.nu, lam)
        self.legend.set_entries(
            [
                ("size1", "#000004", "1 label possible: certain (shows the image)", False),
                ("size2", "#b73779", "2 labels possible", False),
                ("sizeL", "#fcffa4", f"{n_labels} labels possible: most uncertain", False),
                ("members", "#808080", "sampled members (label colours)", False),
            ]
        )
        self.show_layer(
            f"size:{name}",
            "image",
            sizes,
            name=f"{title(name)} set size · {levels} (image {index})",
            metadata=meta,
            scale=spacing,
            colormap="inferno",  # size 1 is black: with additive blending only uncertain pixels glow
            contrast_limits=(1.0, float(max(n_labels, 2))),
            opacity=0.8,
            blending="additive",
        )
        text = (
            f"{title(name)}: calibrated score threshold λ = {lam:.4g} (n = {session.n}, α = {ws.alpha:.3g}, "
            f"ν = {ws.nu:.3g}); "
            f"mean set size {float(sizes.mean()):.3g} of {n_labels} labels; "
            f"log10 #segmentations = {float(np.log10(sizes).sum()):.4g}"
        )
        if self._members_requested and (self.live_members.isChecked() or "members" in dirty):
            n, seed = int(self.n_spin.value()), int(self.seed_spin.value())
            members = session.method.sample_members(prepared, lam, n, seed)
            member_meta = {
                "napari_conformal": session.provenance(
                    alpha=ws.alpha, nu=ws.nu, lambda_hat=lam, index=index, n_members=n, seed=seed
                )
            }
            self.show_layer(
                f"members:{name}",
                "labels",
                members,
                name=f"{title(name)} {n} members · {levels} (image {index})",
                metadata=member_meta,
                scale=(1.0, *spacing),
                opacity=0.5,
                editable=False,
            )
        self.status.setText(text)

    def export_keys(self) -> list[str]:
        """The set-size map and the members of the shown method."""
        name = self.method_name
        return [f"size:{name}", f"members:{name}"]
