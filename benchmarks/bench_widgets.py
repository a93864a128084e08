"""Slider-to-layer-update latency of the explorer docks, 2D 256² and 3D 128³.

For each explorer and slider, the slider is moved to a new value R times with
a pause longer than the redraw throttle in between (so every move is drawn),
and two times are recorded per move:

* **update**: from ``slider.setValue`` until every affected layer holds its new
  data (λ̂ re-reduced from the cached curves, the set predicted, the layer data
  replaced, napari's slicing of the new data included);
* **frame**: until the Qt event queue has been processed once more after the
  update, which includes vispy drawing the new frame.

Prepared images are computed (and cached) before timing: the numbers are the
cost of a slider move, not of the first look at an image. Run under Xvfb on a
headless machine::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_widgets.py

Results go to ``docs/benchmarks_widgets.md`` (``--out``) and to stdout. ``--quick`` is a smoke
test (64² and 16³ stores, 3 moves per slider, CONSIGN at ν = 0.9 in 2D and 0.5 in 3D, where these
small synthetic sets have a finite λ̂ > 0) and writes no file unless ``--out`` is given::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_widgets.py --quick

Each explorer is given a calibration made by :func:`napari_conformal.api.calibrate` (what the
calibration dock runs, with method options as keywords) and published into the viewer's
workspace. What the new engine changes in the set-up, not in the timed moves:

* CONSIGN calibrates with the batched coverage search (the method's ``iter_curves``), stopped once
  λ̂(α, ν') is decided for every ν' up to the calibrated ν; the ν moves stay at or below it, so
  each is a re-reduction of the cached curves, as before;
* Consema, drawn beside RW-CP, follows α with τ = 1 − α (its ``tau`` option unset) and its curves
  answer every α, so an α move re-reduces its curves too.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"2d": (256, 256), "3d": (128, 128, 128)}
QUICK_SIZES = {"2d": (64, 64), "3d": (16, 16, 16)}
THROTTLE_PAUSE_S = 0.08


def process(seconds: float = 0.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    QApplication.processEvents()
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)


def wait_settled(widget, timeout: float = 1800.0) -> None:
    start = time.perf_counter()
    while not widget.settled():
        process(0.01)
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{type(widget).__name__} did not settle")


def make_stores(folder: Path, shape: tuple[int, ...], n: int) -> tuple[Path, Path]:
    """A binary and a 3-label store of ``n`` images, generated image by image (bounded memory)."""
    from napari_conformal.io.store import create_store
    from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

    parts = [binary_blobs_dataset(1, shape, n_samples=6, seed=100 + i) for i in range(n)]
    binary = folder / f"binary_{len(shape)}d.zarr"
    create_store(binary, *(np.concatenate(p) for p in zip(*parts, strict=True)), sampler="synthetic")
    del parts
    parts = [lowrank_multiclass_dataset(1, shape, n_classes=3, n_samples=6, seed=200 + i) for i in range(n)]
    multi = folder / f"multi_{len(shape)}d.zarr"
    create_store(multi, *(np.concatenate(p) for p in zip(*parts, strict=True)), sampler="synthetic")
    return binary, multi


def publish(viewer, store_path: Path, method: str, **kwargs):
    """Calibrate ``method`` on all images but the last (α, ν and options as keywords) and publish it."""
    from napari_conformal._widgets._context import context_for
    from napari_conformal.api import calibrate
    from napari_conformal.io.store import open_store

    store = open_store(store_path)
    n = store.n_images
    cal, test = list(range(n - 1)), [n - 1]
    calibration = calibrate(store, method, cal_indices=cal, **kwargs)
    ws = context_for(viewer).workspace
    ws.publish(store, calibration, test)
    return ws


def time_moves(
    widget, move: Callable[[float], None], values: list[float], check: Callable[[float], bool]
) -> tuple[list[float], list[float]]:
    """Move a slider through ``values``; return update and frame latencies in ms."""
    updates, frames = [], []
    for v in values:
        wait_settled(widget)
        process(THROTTLE_PAUSE_S)  # the throttle window of the previous move has passed
        t0 = time.perf_counter()
        move(v)
        widget.flush()
        t1 = time.perf_counter()
        process()
        t2 = time.perf_counter()
        if not check(v):
            raise RuntimeError(f"{type(widget).__name__}: the layers do not show the value {v}")
        updates.append(1e3 * (t1 - t0))
        frames.append(1e3 * (t2 - t0))
    return updates, frames


def _alpha_values(repeats: int) -> list[float]:
    return [float(v) for v in np.round(np.linspace(0.22, 0.45, repeats), 3)]


def bench_rwcp(binary: Path, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    import napari

    from napari_conformal._widgets.rwcp_explorer import RWCPExplorer

    viewer = napari.Viewer(show=True)
    dock = RWCPExplorer(viewer)
    viewer.window.add_dock_widget(dock)
    ws = publish(viewer, binary, "rwcp", alpha=0.2, features="multiscale", grid_stride=4, device="cpu")
    wait_settled(dock)
    rows = []

    def alpha_shown(v: float) -> bool:
        return (
            all(
                dock.layers.get(k).metadata["napari_conformal"]["alpha"] == ws.alpha
                for k in ("set:rwcp", "set:crc", "set:consema")
            )
            and abs(ws.alpha - v) < 1e-9
        )

    u, f = time_moves(dock, dock.levels.alpha_slider.setValue, _alpha_values(repeats), alpha_shown)
    rows.append(("RW-CP explorer: α (RW-CP + CRC + Consema contours)", u, f))
    steps = [int(t) % (dock.step_slider.maximum() + 1) for t in range(repeats)]

    def step_shown(t: float) -> bool:
        return dock.layers.get("rwcp:step").metadata["napari_conformal"]["step"] == int(t)

    u, f = time_moves(
        dock, lambda t: dock.step_slider.setValue(int(t)), [float(t) for t in steps], step_shown
    )
    rows.append(("RW-CP explorer: step t (S⁽ᵗ⁾ map)", u, f))
    viewer.close()
    return rows


def bench_pixelwise(multi: Path, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    import napari

    from napari_conformal._widgets.pixelwise_view import PixelwiseView

    viewer = napari.Viewer(show=True)
    dock = PixelwiseView(viewer)
    viewer.window.add_dock_widget(dock)
    ws = publish(viewer, multi, "aps", alpha=0.2, nu=0.8)
    wait_settled(dock)
    rows = []

    def shown(v: float, level: str = "alpha") -> bool:
        prov = dock.layers.get("size:aps").metadata["napari_conformal"]
        return prov["alpha"] == ws.alpha and prov["nu"] == ws.nu and abs(getattr(ws, level) - v) < 1e-9

    u, f = time_moves(dock, dock.levels.alpha_slider.setValue, _alpha_values(repeats), shown)
    rows.append(("Pixel-wise view: α (set-size map)", u, f))
    nus = [float(v) for v in np.round(np.linspace(0.6, 0.9, repeats), 3)]
    u, f = time_moves(dock, dock.levels.nu_slider.setValue, nus, lambda v: shown(v, "nu"))
    rows.append(("Pixel-wise view: ν (set-size map)", u, f))
    dock.n_spin.setValue(10)
    dock.draw_members()
    wait_settled(dock)
    alphas = [float(v) for v in np.round(np.linspace(0.44, 0.21, repeats), 3)]  # each differs from the last
    u, f = time_moves(dock, dock.levels.alpha_slider.setValue, alphas, shown)
    rows.append(("Pixel-wise view: α (set size + 10 members)", u, f))
    viewer.close()
    return rows


def bench_consign(multi: Path, repeats: int, nu: float = 0.95) -> list[tuple[str, list[float], list[float]]]:
    import napari

    from napari_conformal._widgets.consign_explorer import ConsignExplorer

    viewer = napari.Viewer(show=True)
    dock = ConsignExplorer(viewer)
    viewer.window.add_dock_widget(dock)
    # ν high enough for a box with λ̂ > 0
    ws = publish(viewer, multi, "consign", alpha=0.2, nu=nu, k=3, device="cpu")
    wait_settled(dock)
    rows = []
    lo, hi = dock.coefficient_sliders[0].minimum(), dock.coefficient_sliders[0].maximum()
    values = [float(v) for v in np.linspace(lo, hi, repeats)]

    def member_shown(v: float) -> bool:
        prov = dock.layers.get("consign:member").metadata["napari_conformal"]
        return abs(prov["coefficients"][0] - v) <= 1e-3 * (hi - lo)

    u, f = time_moves(dock, lambda v: dock.set_coefficient(0, v), values, member_shown)
    rows.append(("CONSIGN explorer: coefficient c1 (member)", u, f))

    def level_shown(v: float) -> bool:
        prov = dock.layers.get("consign:always").metadata["napari_conformal"]
        return prov["nu"] == ws.nu and abs(ws.nu - v) < 1e-9

    nus = [float(v) for v in np.round(np.linspace(nu - 0.05, nu, repeats), 3)]  # ≤ the calibrated ν: cached
    u, f = time_moves(dock, dock.levels.nu_slider.setValue, nus, level_shown)
    rows.append(("CONSIGN explorer: ν (member + always/possibly)", u, f))
    dock.n_spin.setValue(10)
    dock.draw_members()
    wait_settled(dock)
    back = [float(v) for v in np.round(np.linspace(nu - 0.002, nu - 0.048, repeats), 3)]  # each differs
    u, f = time_moves(dock, dock.levels.nu_slider.setValue, back, level_shown)
    rows.append(("CONSIGN explorer: ν (member, regions + 10 members)", u, f))
    viewer.close()
    return rows


def _stats(values: list[float]) -> str:
    arr = np.asarray(values)
    return f"{statistics.median(values):.1f} | {np.percentile(arr, 95):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="moves per slider (default 15, --quick 3)")
    parser.add_argument("--images", type=int, default=5, help="images per store (the last one is shown)")
    parser.add_argument(
        "--out", default=None, help="Markdown file (default docs/benchmarks_widgets.md; none with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 64² and 16³ stores, 3 moves per slider"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.out is None and not args.quick:
        args.out = str(ROOT / "docs" / "benchmarks_widgets.md")
    sizes = QUICK_SIZES if args.quick else SIZES
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            shape = sizes[size]
            t0 = time.perf_counter()
            binary, multi = make_stores(Path(tmp), shape, args.images)
            print(f"{size}: stores built in {time.perf_counter() - t0:.1f} s", flush=True)
            consign_nu = 0.95 if len(shape) == 2 else 0.9  # searches at ν = 0.95 take minutes in 3D
            if args.quick:  # the small synthetic sets reach no member above these ν within λ_max
                consign_nu = 0.9 if len(shape) == 2 else 0.5
            benches = (
                (bench_rwcp, binary, {}),
                (bench_pixelwise, multi, {}),
                (bench_consign, multi, {"nu": consign_nu}),
            )
            for bench, store, extra in benches:
                for name, u, f in bench(store, args.repeats, **extra):
                    label = "×".join(str(s) for s in shape)
                    results.append((label, name, u, f))
                    print(
                        f"{label:12s} {name:55s} update {_stats(u)}  frame {_stats(f)} (median | p95 ms)",
                        flush=True,
                    )
    lines = [
        "# Explorer latency: slider to layer update",
        "",
        f"Measured by `benchmarks/bench_widgets.py{' --quick' if args.quick else ''}` (under Xvfb, software "
        "OpenGL). Each slider is moved",
        f"{args.repeats} times to a new value, pausing longer than the redraw throttle in between; the",
        "image's prepared state is cached beforehand (first looks at an image are background work).",
        "",
        "* **update**: `slider.setValue` → every affected layer holds its new data (λ̂ from the cached",
        "  curves, the set predicted, the layer data replaced and sliced by napari).",
        "* **frame**: update plus one pass of the Qt event loop, which draws the new frame.",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()};",
        "2 CPU cores shared with other jobs while measuring, so the numbers are upper bounds.",
        "",
        "| image | slider | update median (ms) | update p95 (ms) | frame median (ms) | frame p95 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for label, name, u, f in results:
        lines.append(f"| {label} | {name} | {_stats(u).replace(' | ', ' | ')} | {_stats(f)} |")
    lines.append("")
    if args.out:
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
