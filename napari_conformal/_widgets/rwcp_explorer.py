"""RW-CP explorer: the diffused maps S⁽ᵗ⁾ on a step slider, the RW-CP set at λ̂ beside CRC and Consema.

RW-CP thresholds the random-walk-diffused foreground map S⁽ⁿ⁾; its prepared
image keeps every step (``prepared.extras["diffusion"]``), so the step slider
only upsamples one small grid map. The set is ``{p : 1 − S⁽ⁿ⁾_p ≤ λ̂(α)}`` with
λ̂ re-reduced from the cached calibration curves when α moves; standard CRC
(threshold of S⁽⁰⁾) and Consema (dilation of the hard prediction) are
calibrated on the same calibration images and drawn as contours of their own
colour at the same α.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QPushButton

from napari_conformal._widgets._controls import Legend, LevelSliders, connect_until_destroyed
from napari_conformal._widgets._display import colour, title
from napari_conformal._widgets._explorer import ExplorerBase
from napari_conformal.errors import ConformalError

if TYPE_CHECKING:
    import napari

__all__ = ["RWCPExplorer"]


def _primary() -> str:
    """The method this explorer is about: the one that draws the diffusion steps."""
    from napari_conformal.core.methods.base import methods_drawing

    return methods_drawing("diffusion")[0]


def _companions() -> tuple[str, ...]:
    """The other methods drawn as a set contour beside it (calibrated on the same images)."""
    from napari_conformal.core.methods.base import methods_drawing

    return tuple(n for n in methods_drawing("contour") if n != _primary())


class RWCPExplorer(ExplorerBase):
    """Dock widget exploring an RW-CP calibration.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.
    """

    owner = "rwcp-explorer"
    draws = ("diffusion", "contour")

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.method_name = _primary()
        self.companions = _companions()
        from superqt import QLabeledSlider

        layout = self.base_layout()
        self.levels = LevelSliders(self.workspace, with_nu=False)
        layout.addWidget(self.levels)
        self.step_slider = QLabeledSlider(Qt.Orientation.Horizontal)
        self.step_slider.setRange(0, 10)
        self.step_slider.setValue(10)
        self.step_slider.setToolTip(
            "random-walk step t of the diffused map S⁽ᵗ⁾ shown (the set uses the last)"
        )
        self.step_slider.valueChanged.connect(lambda *_: self.request_redraw("step"))
        form = QFormLayout()
        form.addRow("Step t", self.step_slider)
        layout.addLayout(form)
        self.legend = Legend()
        self.legend.toggled.connect(lambda *_: self.request_redraw("companions"))
        layout.addWidget(self.legend)
        connect_until_destroyed(self, self.workspace.toggle_companions, self.toggle_companions)
        self.calibrate_button = QPushButton(f"Calibrate {title(self.method_name)} on this split")
        self.calibrate_button.setToolTip(
            "calibrate RW-CP on the calibration images of the last calibration (features, graph, walk)"
        )
        self.calibrate_button.clicked.connect(lambda: self.calibrate_companion(self.method_name))
        layout.addWidget(self.calibrate_button)
        layout.addWidget(self.export_button())
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.request_redraw("all")

    # -- drawing -----------------------------------------------------------------------------

    def _step_range(self, prepared: Any) -> None:
        n_step = int(prepared.extras["diffusion"].n_step)
        if self.step_slider.maximum() != n_step:
            at_end = self.step_slider.value() == self.step_slider.maximum()
            self.step_slider.blockSignals(True)
            self.step_slider.setRange(0, n_step)
            if at_end or self.step_slider.value() > n_step:
                self.step_slider.setValue(n_step)
            self.step_slider.blockSignals(False)

    def redraw(self, dirty: set[str]) -> None:
        """Update the image, S⁽ᵗ⁾ and the set layers from the workspace."""
        ws = self.workspace
        if not ws.ready:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            return
        session = ws.session(self.method_name)
        self.calibrate_button.setVisible(session is None)
        index = ws.index
        self.context.ensure_image(index)
        messages: list[str] = []
        if session is None:
            messages.append(
                f"{title(self.method_name)} is not calibrated on this split: press the button below"
                + (" (running…)" if self.is_calibrating(self.method_name) else "")
            )
        else:
            prepared = self.prepared_or_request(self.method_name, index)
            if prepared is not None:
                self._step_range(prepared)
                step_layer = self.layers.get("rwcp:step")
                if dirty - {"levels", "companions"} or step_layer is None:
                    self._draw_step(session, prepared, index)
                else:  # S⁽ᵗ⁾ does not depend on α: only its provenance changes
                    step_layer.metadata = self._step_metadata(session, index, int(self.step_slider.value()))
                if dirty != {"step"}:
                    messages.append(self._draw_set(self.method_name, prepared, index))
        self._fill_legend()
        if dirty != {"step"}:
            for name in self.companions:
                if not self.legend.checked(name):  # companions are off until asked for
                    self.layers.remove(f"set:{name}")
                    continue
                if not self.ensure_companion(name):
                    messages.append(f"{title(name)}: calibrating…")
                    continue
                prepared = self.prepared_or_request(name, index)
                if prepared is not None:
                    messages.append(self._draw_set(name, prepared, index))
            self.status.setText("\n".join(m for m in messages if m))

    def _on_session_added(self, name: str) -> None:
        if name in self.companions and name == self.workspace.primary:  # a published CRC/Consema is shown
            self._fill_legend()
            self.legend.set_checked(name, True)
        super()._on_session_added(name)

    def companion_shown(self, name: str) -> bool:
        """Whether companion ``name`` is drawn (ticked in the legend)."""
        return self.legend.checked(name)

    def set_companion(self, name: str, shown: bool) -> None:
        """Show or hide companion ``name`` as a user ticking its legend entry would."""
        self._fill_legend()
        self.legend.set_checked(name, shown)

    def toggle_companions(self, *_: Any) -> None:
        """Show every companion if any is hidden, else hide them all (the Alt-C shortcut)."""
        if not self.in_front:
            return
        self._fill_legend()
        show = not all(self.legend.checked(n) for n in self.companions)
        for name in self.companions:
            self.legend.set_checked(name, show)

    def _fill_legend(self) -> None:
        entries = [
            (self.method_name, colour(self.method_name), f"{title(self.method_name)} set (contour)", False),
            ("step", "#b73779", "diffused probability S(t): dark 0, bright 1", False),
        ]
        entries += [(n, colour(n), f"{title(n)} set (same calibration images)", True) for n in self.companions]
        self.legend.set_entries(entries)

    def _step_metadata(self, session: Any, index: int, t: int) -> dict[str, Any]:
        ws = self.workspace
        try:
            lam = session.lambda_hat(ws.alpha)
        except ConformalError:
            lam = float("nan")
        return {
            "napari_conformal": session.provenance(
                alpha=ws.alpha, nu=None, lambda_hat=lam, index=index, step=t
            )
        }

    def _draw_step(self, session: Any, prepared: Any, index: int) -> None:
        t = int(self.step_slider.value())
        ws = self.workspace
        data = prepared.extras["diffusion"].step(t)
        meta = self._step_metadata(session, index, t)
        self.show_layer(
            "rwcp:step",
            "image",
            np.asarray(data, dtype=np.float32),
            name=f"RW-CP S({t}) · step {t} of {prepared.extras['diffusion'].n_step} (image {index})",
            metadata=meta,
            scale=ws.store.spacing,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.6,
            blending="additive",
        )

    def _draw_set(self, name: str, prepared: Any, index: int) -> str:
        ws = self.workspace
        session = ws.session(name)
        try:
            lam = session.lambda_hat(ws.alpha)
        except ConformalError as exc:
            return f"{title(name)}: {' '.join(str(exc).split())}"
        mask = np.asarray(session.method.predict(prepared, lam, alpha=ws.alpha)).astype(np.uint8)
        meta = {"napari_conformal": session.provenance(alpha=ws.alpha, nu=None, lambda_hat=lam, index=index)}
        fg = getattr(session.method, "fg_class", None)
        names = ws.store.label_names
        structure = names[fg] if fg is not None and 0 <= fg < len(names) else ""
        if name == self.method_name:
            self.show_guarantee(session.method, ws.alpha, None, lam)
        self.show_layer(
            f"set:{name}",
            "labels",
            mask,
            name=f"{title(name)} set · {structure} · α={ws.alpha:.3g} (image {index})",
            metadata=meta,
            scale=ws.store.spacing,
            contour=True,
            colour=colour(name),
            opacity=1.0,
            editable=False,
        )
        method = session.method
        value = f"{lam:.0f}" if method.lambda_is_count else f"{lam:.4g}"
        text = f"{title(name)}: calibrated {method.lambda_name} = {value} (n = {session.n}, α = {ws.alpha:.3g})."
        return text if name == self.method_name else f"{text} {method.guarantee(ws.alpha)}"

    def export_keys(self) -> list[str]:
        """The RW-CP, CRC and Consema sets and the S⁽ᵗ⁾ map."""
        return [f"set:{self.method_name}", *(f"set:{n}" for n in self.companions), "rwcp:step"]
