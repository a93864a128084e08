"""Metric panels: matplotlib plots in a dock, themed like napari, following the image and the sliders.

Six plots, for every method calibrated in the workspace (the published one and
its companions, all on the same calibration images):

* **λ̂ against α** — re-reductions of the cached calibration curves (Consema's
  q̂, a number of dilations, on its own axis), the current α marked.
* **coverage against 1 − α** on the test images — read from their curves
  (:func:`~napari_conformal.explore.evaluation.coverage_curve`): ``1 − FNR`` for
  CRC / RW-CP, the covered fraction for the others; the diagonal is the target.
* **the selected image at the current α**: coverage, stretch, Dice (and
  ``covered`` for membership methods); **ASSD / HD95** in the store's units.
* **Chao1 against N** (selected image) and **SEC / correlation against N**
  (SEC over the test set, correlation of the selected image) for the methods
  whose members can be sampled (CONSIGN and pixel-wise).

The selected image is evaluated in a background worker whenever the image,
α or ν changes; the test set is evaluated on request (and then kept live,
re-evaluated in the background after α or ν settle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy

from napari_conformal._widgets._display import colour, title
from napari_conformal._widgets._explorer import ExplorerBase
from napari_conformal.errors import ConformalError

if TYPE_CHECKING:
    import napari

__all__ = ["ALPHA_GRID", "MetricsPanel", "apply_napari_theme", "parse_n_values"]

#: the plots, in reading order
PLOTS = ("lambda", "coverage", "covered", "image", "distance", "chao1", "sec")
#: height of one plot (inches at the figure's dpi)
PLOT_HEIGHT_IN = 2.4
#: α values of the λ̂ and coverage curves.
ALPHA_GRID = np.round(np.linspace(0.02, 0.5, 25), 6)
#: Default numbers of sampled members for Chao1 / SEC / correlation.
DEFAULT_N_VALUES = (10, 20, 50)
#: Quiet time after the last slider move before the test set is re-evaluated.
TEST_DEBOUNCE_MS = 400
_IMAGE_KEYS = ("coverage", "stretch", "dice", "covered")
_DISTANCE_KEYS = ("assd", "hd95")


def parse_n_values(text: str) -> tuple[int, ...]:
    """``"10, 20,50"`` → ``(10, 20, 50)`` (sorted, unique, positive); raises ConformalError."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = sorted({int(p) for p in parts})
    except ValueError:
        raise ConformalError(
            f"numbers of members must be integers separated by commas, got {text!r}"
        ) from None
    if not values or values[0] < 1:
        raise ConformalError(f"numbers of members must be positive integers, got {text!r}")
    return tuple(values)


def apply_napari_theme(figure: Any, axes: Any, theme_name: str) -> dict[str, str]:
    """Colour a matplotlib figure like napari's theme ``theme_name``; returns the colours used."""
    from napari.utils.theme import get_theme

    theme = get_theme(theme_name)
    colours = {
        "background": theme.background.as_hex(),
        "panel": theme.foreground.as_hex(),
        "text": theme.text.as_hex(),
        "grid": theme.highlight.as_hex(),
        "accent": theme.current.as_hex(),
    }
    figure.set_facecolor(colours["background"])
    for ax in axes:
        ax.set_facecolor(colours["panel"])
        ax.tick_params(colors=colours["text"], labelsize=7)
        for spine in ax.spines.values():
            spine.set_color(colours["grid"])
        ax.xaxis.label.set_color(colours["text"])
        ax.yaxis.label.set_color(colours["text"])
        ax.title.set_color(colours["text"])
    return colours


class MetricsPanel(ExplorerBase):
    """Dock widget with the metric plots.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.

    Attributes
    ----------
    plot_data : dict
        What the plots show, by plot: ``"lambda"``, ``"coverage"``: ``{method:
        (x, y)}``; ``"image"``: ``{method: metrics dict}`` of the selected image;
        ``"test"``: ``{method: mean metrics}`` of the test set (for the checks
        and for scripts).
    """

    redraw_interval_ms = 150  # a figure draw costs ~0.1 s: at most a few per second while dragging

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        layout = self.base_layout()
        self.figure = Figure(figsize=(4.0, 12.0))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumWidth(260)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.axes: dict[str, Any] = {}
        self.columns = 0
        self._layout_axes(1)
        self._twin: Any = None
        self.n_edit = QLineEdit(", ".join(str(n) for n in DEFAULT_N_VALUES))
        self.n_edit.setToolTip("numbers N of sampled members for Chao1 / SEC / correlation")
        self.n_edit.editingFinished.connect(lambda: self.request_redraw("n"))
        self.evaluate_button = QPushButton("Evaluate test set")
        self.evaluate_button.setToolTip(
            "compute coverage, stretch, Dice, distances and diversity on every test image (background)"
        )
        self.evaluate_button.clicked.connect(self.evaluate_test_set)
        self.live_test = QCheckBox("keep the test set live")
        self.live_test.setChecked(True)
        self.live_test.setToolTip("re-evaluate the test set in the background when α or ν settle")
        form = QFormLayout()
        form.addRow("Members N", self.n_edit)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.evaluate_button)
        row.addWidget(self.live_test)
        layout.addLayout(row)
        layout.addWidget(self.canvas)
        self.test_label = QLabel("Test set: not evaluated.")
        self.test_label.setWordWrap(True)
        layout.addWidget(self.test_label)
        layout.addWidget(self.status)

        self.plot_data: dict[str, dict[str, Any]] = {}
        self._image_results: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
        self._image_pending: set[tuple[Any, ...]] = set()
        self._lambda_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._coverage_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._drawn_signature: tuple[Any, ...] | None = None
        self.draw_count = 0
        self.test_curves: dict[str, dict[int, Any]] = {}
        self.test_metrics: dict[str, Any] = {}
        self._test_running = False
        self._test_timer = QTimer(self)
        self._test_timer.setSingleShot(True)
        self._test_timer.setInterval(TEST_DEBOUNCE_MS)
        self._test_timer.timeout.connect(lambda: self.evaluate_test_set(curves=False))
        self.colours = apply_napari_theme(self.figure, self.axes.values(), napari_viewer.theme)
        napari_viewer.events.theme.connect(self._theme_changed)
        self.destroyed.connect(lambda *_: _disconnect_theme(napari_viewer, self))
        self.request_redraw("all")

    # -- layout ------------------------------------------------------------------------------

    def _layout_axes(self, columns: int) -> None:
        """One plot a row when the dock is narrow, two or three side by side when it is wide."""
        if columns == self.columns:
            return
        self.columns = columns
        self.figure.clear()
        rows = -(-len(PLOTS) // columns)
        self.figure.set_size_inches(self.figure.get_figwidth(), rows * PLOT_HEIGHT_IN)
        grid = self.figure.add_gridspec(
            rows,
            columns,
            hspace=0.9,
            wspace=0.45,
            left=0.16 if columns == 1 else 0.09,
            right=0.96,
            top=1 - 0.55 / (rows * PLOT_HEIGHT_IN),
            bottom=0.5 / (rows * PLOT_HEIGHT_IN),
        )
        self.axes = {
            name: self.figure.add_subplot(grid[j // columns, j % columns]) for j, name in enumerate(PLOTS)
        }
        self._twin = None
        self.canvas.setFixedHeight(int(rows * PLOT_HEIGHT_IN * self.figure.dpi))
        self._drawn_signature = None

    def resizeEvent(self, event: Any) -> None:
        """Re-flow the plots for the new width (one column below 700 px)."""
        super().resizeEvent(event)
        width = self.canvas.width() or self.width()
        columns = 1 if width < 700 else (2 if width < 1100 else 3)
        if columns != self.columns:
            self._layout_axes(columns)
            if hasattr(self, "colours"):
                self.colours = apply_napari_theme(self.figure, self.axes.values(), self.viewer.theme)
            self.request_redraw("layout")

    # -- inputs ------------------------------------------------------------------------------

    @property
    def n_values(self) -> tuple[int, ...]:
        """Numbers of sampled members (default when the field does not parse)."""
        try:
            return parse_n_values(self.n_edit.text())
        except ConformalError:
            return DEFAULT_N_VALUES

    def _theme_changed(self, event: Any = None) -> None:
        self.colours = apply_napari_theme(self.figure, self.axes.values(), self.viewer.theme)
        self.request_redraw("theme")

    def _levels(self, session: Any) -> tuple[float, float | None]:
        ws = self.workspace
        return ws.alpha, (ws.nu if session.uses_nu else None)

    # -- background work ---------------------------------------------------------------------

    def _image_key(self) -> tuple[Any, ...]:
        ws = self.workspace
        versions = tuple(sorted((name, id(s), s.version) for name, s in ws.sessions.items()))
        return (ws.index, ws.alpha, ws.nu, versions, self.n_values)

    def _evaluate_image(self, key: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
        index, alpha, nu, versions, ns = key
        out = {}
        for name, _, _ in versions:
            session = self.workspace.session(name)
            if session is None:
                continue
            try:
                lam = session.lambda_hat(alpha, nu if session.uses_nu else None)
            except ConformalError:
                continue
            method = session.method
            a, v = session.levels(alpha, nu)
            out[name] = method.evaluate(
                session.prepared(index),
                session.store.label(index),
                lam,
                alpha=a,
                nu=v,
                spacing=session.store.spacing,
                n_samples=list(ns) if method.samples_members else [],
                seed=index,
            )
            out[name]["lambda_hat"] = lam
        return out

    def _request_image(self, key: tuple[Any, ...]) -> None:
        if key in self._image_pending:
            return
        self._image_pending.add(key)

        def done(result: dict[str, dict[str, Any]]) -> None:
            self._image_pending.discard(key)
            self._image_results[key] = result
            if len(self._image_results) > 64:
                self._image_results.pop(next(iter(self._image_results)))
            self.request_redraw("image-metrics")

        worker = self.start_worker(self._evaluate_image, key, on_done=done)
        worker.errored.connect(lambda *_: self._image_pending.discard(key))

    def evaluate_test_set(self, *_: Any, curves: bool = True) -> None:
        """Evaluate every calibrated method on the test images at the current α, ν (background)."""
        from napari_conformal.explore.evaluation import iter_test_set

        ws = self.workspace
        if not ws.ready or not ws.sessions:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            return
        if self._test_running:
            self._test_timer.start()  # try again once the running evaluation is done
            return
        self._test_running = True
        sessions = list(ws.sessions.values())
        need_curves = curves or any(s.name not in self.test_curves for s in sessions)

        def done(result: tuple[dict[str, Any], dict[str, Any]]) -> None:
            new_curves, metrics = result
            self.test_curves.update(new_curves)
            self.test_metrics = metrics
            self.request_redraw("test")

        worker = self.start_worker(
            iter_test_set,
            sessions,
            list(ws.test_indices),
            alpha=ws.alpha,
            nu=ws.nu,
            n_samples=self.n_values,
            curves=need_curves,
            on_done=done,
            description="Evaluating the test set",
        )

        def finished() -> None:
            self._test_running = False

        worker.finished.connect(finished)

    def _on_reset(self, *_: Any) -> None:
        self.test_curves = {}
        self.test_metrics = {}
        self._image_results = {}
        self._lambda_cache = {}
        self._coverage_cache = {}
        super()._on_reset()

    # -- drawing -----------------------------------------------------------------------------

    def redraw(self, dirty: set[str]) -> None:
        """Recompute the cheap curves, request what is missing, and redraw the figure."""
        ws = self.workspace
        if not ws.ready or ws.index is None:
            self.status.setText("Run a calibration first (Conformal calibration dock).")
            self._plot()
            return
        self.context.ensure_image(ws.index)
        if "levels" in dirty and self.test_metrics and self.live_test.isChecked():
            self._test_timer.start()
        data: dict[str, dict[str, Any]] = {"lambda": {}, "coverage": {}, "image": {}, "test": {}}
        for name, session in sorted(ws.sessions.items()):
            nu = ws.nu if session.uses_nu else None
            lkey = (name, id(session), session.version, nu)
            if lkey not in self._lambda_cache:
                from napari_conformal.explore.evaluation import lambda_curve

                self._lambda_cache[lkey] = lambda_curve(session, ALPHA_GRID, nu)
            data["lambda"][name] = (ALPHA_GRID, self._lambda_cache[lkey])
            curves = self.test_curves.get(name)
            if curves is not None:
                from napari_conformal.explore.evaluation import coverage_curve

                if curves:  # per-image test curves answer every α: cache the whole curve
                    ckey = (name, id(session), session.version, nu, id(curves), len(curves))
                    if ckey not in self._coverage_cache:
                        self._coverage_cache[ckey] = coverage_curve(session, curves, ALPHA_GRID, nu)
                    data["coverage"][name] = (1.0 - ALPHA_GRID, self._coverage_cache[ckey])
                else:  # batched-search methods: the levels evaluated so far (memo reads)
                    values = coverage_curve(session, {}, ALPHA_GRID, nu, ws.test_indices)
                    data["coverage"][name] = (1.0 - ALPHA_GRID, values)
        key = self._image_key()
        if key in self._image_results:
            data["image"] = self._image_results[key]
        else:
            self._request_image(key)
            # keep the last result of this image on screen while the new one is computed
            for old_key in reversed(list(self._image_results)):
                if old_key[0] == ws.index:
                    data["image"] = self._image_results[old_key]
                    break
        for name, result in self.test_metrics.items():
            data["test"][name] = result.mean
        self.plot_data = data
        signature = (
            ws.alpha,
            ws.nu,
            ws.index,
            self.viewer.theme,
            tuple(
                (part, name, id(value)) for part in sorted(data) for name, value in sorted(data[part].items())
            ),
        )
        if signature != self._drawn_signature:  # matplotlib draws are the slow part: only when needed
            self._plot()
            self._drawn_signature = signature
        self._describe()

    def _describe(self) -> None:
        ws = self.workspace
        if self.test_metrics:
            first = next(iter(self.test_metrics.values()))
            stale = abs(first.alpha - ws.alpha) > 1e-12 or (
                first.nu is not None and abs(first.nu - ws.nu) > 1e-12
            )
            parts = []
            for name, result in self.test_metrics.items():
                mean = result.mean
                cov = mean.get("coverage", mean.get("covered"))
                parts.append(f"{title(name)} {'coverage' if 'coverage' in mean else 'covered'} {cov:.3f}")
            self.test_label.setText(
                f"Test set ({len(ws.test_indices)} images, α = {first.alpha:.3g}"
                + (", updating…" if stale else "")
                + "): "
                + "; ".join(parts)
            )
        self.status.setText(
            f"Image {ws.index}, α = {ws.alpha:.3g}, ν = {ws.nu:.3g}; methods: "
            + ", ".join(title(n) for n in sorted(ws.sessions))
        )

    def _plot(self) -> None:
        c = self.colours
        for ax in self.axes.values():
            ax.clear()
        if self._twin is not None:
            self._twin.remove()
            self._twin = None
        data = self.plot_data
        ws = self.workspace
        alpha = ws.alpha
        small = {"fontsize": 8}

        def note(ax: Any, text: str) -> None:
            ax.text(
                0.5,
                0.5,
                text,
                ha="center",
                va="center",
                transform=ax.transAxes,
                color=c["text"],
                fontsize=7,
                wrap=True,
            )

        ax = self.axes["lambda"]
        for name, (x, y) in data.get("lambda", {}).items():
            if ws.session(name) is not None and ws.session(name).method.lambda_is_count:
                if self._twin is None:
                    self._twin = ax.twinx()
                    apply_napari_theme(self.figure, [self._twin], self.viewer.theme)
                    self._twin.set_ylabel("dilations (Consema)", **small)
                self._twin.step(x, y, where="post", color=colour(name), lw=1.2, label=title(name))
            else:
                ax.plot(x, y, color=colour(name), lw=1.2, marker="o", ms=2, label=title(name))
        ax.axvline(alpha, color=c["accent"], lw=1, ls="--")
        ax.set_title(r"calibrated $\hat\lambda$ against $\alpha$", **small)
        ax.set_xlabel(r"risk level $\alpha$", **small)
        ax.set_ylabel(r"$\hat\lambda$ (method's units)", **small)

        risk = {n: xy for n, xy in data.get("coverage", {}).items() if self._risk(n) == "fnr"}
        sets = {n: xy for n, xy in data.get("coverage", {}).items() if self._risk(n) != "fnr"}
        for key, series, heading, ylabel in (
            ("coverage", risk, "structure covered on the test set", "mean 1 − FNR"),
            ("covered", sets, "test images covered", "fraction of images covered"),
        ):
            ax = self.axes[key]
            ax.plot([0.5, 1.0], [0.5, 1.0], color=c["grid"], lw=1, ls=":")
            for name, (x, y) in series.items():
                ax.plot(x, y, color=colour(name), lw=1.2, marker="o", ms=2, label=title(name))
            ax.axvline(1 - alpha, color=c["accent"], lw=1, ls="--")
            ax.set_title(f"{heading} (dotted: the target 1 − α)", **small)
            ax.set_xlabel(r"$1-\alpha$", **small)
            ax.set_ylabel(ylabel, **small)
            if not series:
                note(
                    ax, "press “Evaluate test set”" if not data.get("coverage") else "no method of this kind"
                )

        image = data.get("image", {})
        shown = "selected image" if ws.index is None else f"image {ws.index}"
        test = data.get("test", {})
        self._bars(
            self.axes["image"], image, test, _IMAGE_KEYS, f"{shown} at α = {alpha:.3g} (◆ test mean)", "value"
        )
        self._bars(self.axes["distance"], image, test, _DISTANCE_KEYS, f"{shown}: surface distances", "mm")

        ax = self.axes["chao1"]
        for name, metrics in image.items():
            if isinstance(metrics.get("chao1"), dict) and metrics["chao1"]:
                ns = sorted(int(k) for k in metrics["chao1"])
                ax.plot(
                    ns, [metrics["chao1"][str(n)] for n in ns], marker="o", ms=3, color=colour(name), lw=1.2
                )
        ax.set_title(f"distinct members (Chao1), {shown}", **small)
        ax.set_xlabel("members sampled N", **small)
        ax.set_ylabel("Chao1", **small)
        if not ax.lines:
            note(ax, "CONSIGN and pixel-wise sets only")

        ax = self.axes["sec"]
        for name, mean in test.items():
            if isinstance(mean.get("sec"), dict) and mean["sec"]:
                ns = sorted(int(k) for k in mean["sec"])
                ax.plot(ns, [mean["sec"][str(n)] for n in ns], marker="o", ms=3, color=colour(name), lw=1.2)
        for name, metrics in image.items():
            if isinstance(metrics.get("correlation"), dict) and metrics["correlation"]:
                ns = sorted(int(k) for k in metrics["correlation"])
                ax.plot(
                    ns,
                    [metrics["correlation"][str(n)] for n in ns],
                    ls="--",
                    marker="s",
                    ms=3,
                    color=colour(name),
                    lw=1,
                )
        ax.set_title("SEC, test set (solid); correlation, image (dashed)", **small)
        ax.set_xlabel("members sampled N", **small)
        ax.set_ylabel("SEC / correlation", **small)
        if not ax.lines:
            note(ax, "CONSIGN and pixel-wise sets only")

        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator

        for ax in self.axes.values():
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.yaxis.set_major_locator(MaxNLocator(5))
        names = sorted(ws.sessions)
        handles = [Line2D([], [], color=colour(n), lw=3) for n in names]
        for old in list(self.figure.legends):
            old.remove()
        if handles:  # one legend for the whole figure, above the plots: a colour is a method everywhere
            legend = self.figure.legend(
                handles,
                [title(n) for n in names],
                loc="upper center",
                ncol=min(3, len(names)),
                fontsize=7,
                frameon=False,
            )
            for text in legend.get_texts():
                text.set_color(c["text"])
        apply_napari_theme(self.figure, self.axes.values(), self.viewer.theme)
        self.canvas.draw_idle()
        self.draw_count += 1

    def _risk(self, name: str) -> str:
        session = self.workspace.session(name)
        return "" if session is None else session.method.risk

    def _bars(
        self,
        ax: Any,
        results: dict[str, dict[str, Any]],
        test: dict[str, dict[str, Any]],
        keys: tuple[str, ...],
        heading: str,
        ylabel: str,
    ) -> None:
        """Bars of the selected image per method and metric; diamonds at the test-set means."""
        sources = [*results.values(), *test.values()]
        present = [k for k in keys if any(_finite(r.get(k)) for r in sources)]
        names = [
            n
            for n in {**results, **test}
            if any(_finite({**test.get(n, {}), **results.get(n, {})}.get(k)) for k in present)
        ]
        ax.set_title(heading, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if not present or not names:
            return
        width = 0.8 / len(names)
        x = np.arange(len(present))
        for j, name in enumerate(names):
            pos = x + (j - (len(names) - 1) / 2) * width
            row = results.get(name, {})
            values = [float(row[k]) if _finite(row.get(k)) else 0.0 for k in present]
            ax.bar(pos, values, width, color=colour(name))
            means = test.get(name, {})
            marks = [(p, float(means[k])) for p, k in zip(pos, present, strict=True) if _finite(means.get(k))]
            if marks:
                ax.plot(*zip(*marks, strict=True), ls="none", marker="D", ms=4, color=self.colours["text"])
        ax.set_xticks(x, present, fontsize=7)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and bool(np.isfinite(value))


def _disconnect_theme(viewer: Any, panel: Any) -> None:
    try:
        viewer.events.theme.disconnect(panel._theme_changed)
    except (ValueError, RuntimeError, TypeError, AttributeError):
        pass
