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
from typing import Any

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


ALL_DOCKS_NAMES = {
    "coefficient_ms": "CONSIGN explorer in front: coefficient c1 slider (member)",
    "alpha_ms": "α slider of the explorer in front (CONSIGN at visited α, RW-CP, pixel-wise): the slowest median",
    "nu_ms": "ν slider (CONSIGN, pixel-wise): the slowest median",
    "image_ms": "image chooser, first look at the image (prepare in a worker, then draw), CONSIGN in front",
}


def _settle_all(widgets, timeout: float = 1800.0) -> None:
    """Process events until every explorer is idle (the Qt queue drained once more after)."""
    from napari_conformal._widgets._explorer import ExplorerBase

    explorers = [w for w in widgets if isinstance(w, ExplorerBase)]
    start = time.perf_counter()
    while not all(w.settled() for w in explorers):
        process(0.002)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the docks did not settle")
    process()


def _time_all(
    widgets, move: Callable[[Any], None], values: list[Any], check: Callable[[Any], bool]
) -> list[float]:
    """Latency (ms) from setting each value until the event queue is idle and ``check`` holds."""
    out = []
    for v in values:
        _settle_all(widgets)
        process(THROTTLE_PAUSE_S)
        t0 = time.perf_counter()
        move(v)
        while True:
            _settle_all(widgets)
            if check(v):
                break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"the layers never showed {v!r}")
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def _front(widget, timeout: float = 30.0) -> None:
    """Bring a dock's tab to the front and wait until it knows (its redraws run only then)."""
    from napari_conformal._widgets._explorer import raise_dock

    raise_dock(widget)
    start = time.perf_counter()
    while not widget.in_front:
        process(0.005)
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{type(widget).__name__} did not come to the front")


def bench_all_docks(shape: tuple[int, ...], repeats: int, n_images: int = 12) -> dict[str, Any]:
    """Every dock added as the Plugins menu adds them; CONSIGN, RW-CP and APS calibrated; each control moved.

    The store is the cardiac phantom (``napari_conformal.testing.phantom``, default structure sizes, seed 2026) with L = 4 labels, T = 10 float16 samples per image (CONSIGN K = 5); the last third of
    the images is the test part. Returns medians (ms) under :data:`ALL_DOCKS_NAMES` plus every series.
    """
    import napari

    from napari_conformal._widgets._context import context_for
    from napari_conformal.api import calibrate
    from napari_conformal.io.store import create_store, open_store
    from napari_conformal.testing.phantom import cardiac_phantom

    with tempfile.TemporaryDirectory() as tmp:
        images, samples, labels = cardiac_phantom(
            n_images, shape, n_labels=4, n_samples=10, rank=5, seed=2026
        )
        path = Path(tmp) / "all_docks.zarr"
        create_store(
            path,
            images.astype(np.float32),
            samples.astype(np.float16),
            labels.astype(np.uint8),
            sampler="synthetic",
        )
        store = open_store(path)
        n_test = max(2, n_images // 3)
        cal, test = list(range(n_images - n_test)), list(range(n_images - n_test, n_images))
        t0 = time.perf_counter()
        nu = 0.8
        consign = calibrate(store, "consign", alpha=0.2, nu=nu, k=5, cal_indices=cal, device="cpu")
        # RW-CP's structure: the first label present in every image (its FNR needs a foreground)
        fg = next(c for c in range(1, 4) if all(np.any(labels[i] == c) for i in range(n_images)))
        rwcp = calibrate(store, "rwcp", alpha=0.2, cal_indices=cal, device="cpu", fg_class=fg)
        aps = calibrate(store, "aps", alpha=0.2, nu=0.8, cal_indices=cal)
        setup_s = time.perf_counter() - t0
        del images, samples, labels
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        widgets = {}
        from npe2 import PluginManager

        manifest = PluginManager.instance().get_manifest("napari-conformal")
        for w in manifest.contributions.widgets:
            widgets[w.display_name] = viewer.window.add_plugin_dock_widget(
                "napari-conformal", w.display_name
            )[1]
        docks = list(widgets.values())
        ws = context_for(viewer).workspace
        ws.publish(store, consign, test)
        ws.add_session(rwcp)
        ws.add_session(aps)

        def explorer(prefix: str):
            return next(w for name, w in widgets.items() if name.startswith(prefix))

        cx, rx, px = explorer("CONSIGN"), explorer("RW-CP"), explorer("Pixel-wise")
        _front(cx)
        _settle_all(docks)
        series: dict[str, list[float]] = {}

        # CONSIGN in front: a coefficient, ν (at or below the calibrated ν: cached curves), α revisited
        if not cx.coefficient_sliders:
            raise RuntimeError(
                f"the CONSIGN explorer drew nothing: {cx.status.text()} {cx._workers} {cx._dirty} {cx.in_front}"
            )
        lo, hi = cx.coefficient_sliders[0].minimum(), cx.coefficient_sliders[0].maximum()
        values = [float(v) for v in np.linspace(lo, hi, repeats)]

        def member_has(v: float) -> bool:
            prov = cx.layers.get("consign:member").metadata["napari_conformal"]
            return abs(prov["coefficients"][0] - v) <= 1e-3 * max(hi - lo, 1e-12)

        series["consign_coefficient"] = _time_all(
            docks, lambda v: cx.coefficient_sliders[0].setValue(v), values, member_has
        )

        def consign_at(level: str):
            def check(v: float) -> bool:
                prov = cx.layers.get("consign:possibly").metadata["napari_conformal"]
                return abs(prov[level] - v) < 1e-9 and abs(getattr(ws, level) - v) < 1e-9

            return check

        nus = [float(v) for v in np.round(np.linspace(nu - 0.1, nu, repeats), 3)]
        series["consign_nu"] = _time_all(docks, cx.levels.nu_slider.setValue, nus, consign_at("nu"))
        alphas = [float(v) for v in np.round(np.linspace(0.2, 0.3, min(repeats, 5)), 3)]
        t_first = _time_all(docks, cx.levels.alpha_slider.setValue, alphas, consign_at("alpha"))
        series["consign_alpha_first_visit"] = t_first
        revisit = [alphas[i % len(alphas)] for i in range(1, repeats + 1)]
        series["consign_alpha"] = _time_all(
            docks, cx.levels.alpha_slider.setValue, revisit, consign_at("alpha")
        )

        def image_is(i: int) -> bool:
            layer = cx.layers.get("consign:member")
            return layer is not None and layer.metadata["napari_conformal"]["image_index"] == i

        order = [*(test + cal)[1:], test[0]]
        series["consign_image_first_visit"] = _time_all(
            docks, lambda i: setattr(ws, "index", i), order, image_is
        )
        series["consign_image_cached"] = _time_all(docks, lambda i: setattr(ws, "index", i), order, image_is)

        # RW-CP in front: α (RW-CP, and its companions off by default)
        _front(rx)
        ws.alpha = 0.2
        _settle_all(docks)

        def rwcp_at(v: float) -> bool:
            layer = rx.layers.get("set:rwcp")
            return layer is not None and abs(layer.metadata["napari_conformal"]["alpha"] - v) < 1e-9

        series["rwcp_alpha"] = _time_all(
            docks, rx.levels.alpha_slider.setValue, _alpha_values(repeats), rwcp_at
        )

        # pixel-wise view in front: α and ν
        _front(px)
        _settle_all(docks)

        def aps_at(level: str):
            def check(v: float) -> bool:
                layer = px.layers.get("size:aps")
                return layer is not None and abs(layer.metadata["napari_conformal"][level] - v) < 1e-9

            return check

        series["aps_alpha"] = _time_all(
            docks, px.levels.alpha_slider.setValue, _alpha_values(repeats), aps_at("alpha")
        )
        series["aps_nu"] = _time_all(
            docks,
            px.levels.nu_slider.setValue,
            [float(v) for v in np.round(np.linspace(0.6, 0.9, repeats), 3)],
            aps_at("nu"),
        )
        redraws = {name: getattr(w, "redraw_count", None) for name, w in widgets.items()}
        viewer.close()
    med = {k: float(statistics.median(v)) for k, v in series.items()}
    return {
        "shape": list(shape),
        "labels": 4,
        "samples": 10,
        "k": 5,
        "images": n_images,
        "coefficient_ms": med["consign_coefficient"],
        "alpha_ms": max(med["consign_alpha"], med["rwcp_alpha"], med["aps_alpha"]),
        "nu_ms": max(med["consign_nu"], med["aps_nu"]),
        "image_ms": med["consign_image_first_visit"],
        "medians_ms": med,
        "series_ms": series,
        "redraw_counts": redraws,
        "calibration_setup_s": setup_s,
        "keys": ALL_DOCKS_NAMES,
    }


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
    parser.add_argument(
        "--all-docks",
        action="store_true",
        help="every dock open (added as the Plugins menu adds them): latency of each control, L = 4, K = 5",
    )
    parser.add_argument("--json", default=None, help="with --all-docks: write the medians (ms) as JSON here")
    args = parser.parse_args(argv)
    if args.all_docks:
        import json

        repeats = args.repeats or (3 if args.quick else 11)
        sizes = {"2d": (128, 128), "3d": (48, 48, 48)} if args.quick else SIZES  # phantom structures need room
        out = {}
        for size in args.sizes:
            result = bench_all_docks(sizes[size], repeats, n_images=12 if size == "2d" else 6)
            out[size] = result
            print(size, {k: round(v, 1) for k, v in result["medians_ms"].items()}, flush=True)
        doc = {**out.get("2d", next(iter(out.values()))), "by_size": out}
        doc["machine"] = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
        text = json.dumps(doc, indent=1)
        if args.json:
            Path(args.json).write_text(text)
            print(f"wrote {args.json}")
        else:
            print(text)
        return 0
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
