"""Timing of the pixel-wise baselines (APS, RAPS, LAC, SACP): calibration, sets, sampling.

Measures, on synthetic data from ``lowrank_multiclass_dataset`` (generation
not timed):

* calibration, n = 100 images of 128² with L = 4 labels and T = 30 samples:
  ``prepare`` + ``curve`` per image, then ``lambda_hat`` (exact Algorithm 3)
  and the cost of moving ν (``lambda_hat`` again on the cached curves);
* the reference's grid form of Algorithm 3 (λ = 0, 0.01, …; covered images
  stay covered) on the same prepared images, as a comparison, and a check
  that it returns the exact λ̂ rounded up to the grid;
* per image at λ̂: set masks, set-size map, N = 1000 uniform members, and
  ``evaluate`` with Chao1/SEC/correlation at N ∈ {10, 50, 100, 500, 1000};
* the 3D path: ``prepare`` + ``curve`` of a 64³ volume (SACP: 7×7×7 box).

Methods are made with their options only (``make_method(name, **options)``); (α, ν) are keyword
arguments of ``lambda_hat`` / ``predict`` / ``evaluate``, as in the engine's method protocol.

Usage::

    python benchmarks/bench_pixelwise.py [--quick] [--out docs/benchmarks_pixelwise.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.scores.membership import accuracy_in
from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

CONFIGS: list[tuple[str, str, dict]] = [
    ("aps", "aps", {}),
    ("aps (randomised)", "aps", {"randomized": True}),
    ("raps", "raps", {}),
    ("lac", "lac", {}),
    ("sacp (consign, 7×7)", "sacp", {}),
    ("sacp (liu, 3×3)", "sacp", {"variant": "liu"}),
]
ALPHA, NU = 0.1, 0.9
N_VALUES = (10, 50, 100, 500, 1000)


def _timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _data(n: int, shape: tuple[int, ...], t: int, batch: int = 10, seed: int = 1000):
    """Yield (samples (T, L, *S) float32, label) one image at a time, generated in batches."""
    for start in range(0, n, batch):
        _, samples, labels = lowrank_multiclass_dataset(
            min(batch, n - start), shape, n_classes=4, n_samples=t, rank=3, seed=seed + start
        )
        yield from zip(samples, labels, strict=True)


def _grid_lambda(prepared, labels, alpha: float, nu: float, step: float = 0.01) -> float:
    """Reference Algorithm 3: scan λ = j·step, keep covered images covered, stop at the CRC bound."""
    n = len(prepared)
    allowed = math.floor((n + 1) * alpha - 1 + 1e-12)
    covered = np.zeros(n, dtype=bool)
    j = 0
    while True:
        lam = j * step
        for i in np.flatnonzero(~covered):
            covered[i] = accuracy_in(prepared[i], labels[i], lam) > nu
        if n - covered.sum() <= allowed:
            return lam
        j += 1


def _ceil_to_grid(lam: float, step: float) -> float:
    """Smallest ``j·step`` (as the grid loop computes it) that is ≥ λ."""
    j = math.ceil(lam / step)
    while j * step < lam:
        j += 1
    while j > 0 and (j - 1) * step >= lam:
        j -= 1
    return j * step


def bench_calibration(n: int, size: int, t: int) -> tuple[list[str], dict[str, float]]:
    images = list(_data(n, (size, size), t))
    rows = [
        "| method | prepare + curve per image (ms) | λ̂ (ms) | new ν (ms) | grid Algorithm 3 (s) | λ̂ | grid λ̂ |",
        "|---|---|---|---|---|---|---|",
    ]
    lams = {}
    for title, name, kwargs in CONFIGS:
        method = make_method(name, **kwargs)
        t0 = time.perf_counter()
        prepared = [method.prepare(None, s) for s, _ in images]
        curves = [method.curve(p, y) for p, (_, y) in zip(prepared, images, strict=True)]
        per_image = (time.perf_counter() - t0) / n
        t_hat, lam = _timed(lambda m=method, c=curves: m.lambda_hat(c, alpha=ALPHA, nu=NU), repeat=3)
        t_nu, _ = _timed(lambda m=method, c=curves: m.lambda_hat(c, alpha=ALPHA, nu=0.85), repeat=3)
        labels = [y for _, y in images]
        t_grid, lam_grid = _timed(lambda p=prepared, y=labels: _grid_lambda(p, y, ALPHA, NU))
        # the grid answer is the exact λ̂ rounded up to the 0.01 grid
        if lam_grid != _ceil_to_grid(lam, 0.01):
            raise AssertionError(
                f"{title}: grid λ̂ {lam_grid} is not the exact λ̂ {lam} rounded up to the grid"
            )
        rows.append(
            f"| {title} | {1e3 * per_image:.1f} | {1e3 * t_hat:.2f} | {1e3 * t_nu:.2f} | {t_grid:.1f} "
            f"| {lam:.4f} | {lam_grid:.2f} |"
        )
        lams[title] = lam
    return rows, lams


def bench_sets(size: int, t: int, lams: dict[str, float]) -> list[str]:
    samples, label = next(_data(1, (size, size), t, seed=7))
    rows = [
        "| method | set masks (ms) | size map (ms) | 1000 members (ms) | evaluate, N up to 1000 (s) | mean set size |",
        "|---|---|---|---|---|---|",
    ]
    for title, name, kwargs in CONFIGS:
        method = make_method(name, **kwargs)
        prepared = method.prepare(None, samples)
        lam = lams[title]
        t_masks, _ = _timed(lambda m=method, p=prepared, x=lam: m.predict(p, x, alpha=ALPHA, nu=NU), repeat=5)
        t_size, sizes = _timed(lambda m=method, p=prepared, x=lam: m.set_size_map(p, x), repeat=5)
        t_draw, _ = _timed(lambda m=method, p=prepared, x=lam: m.sample_members(p, x, 1000, 0), repeat=3)
        t_eval, _ = _timed(
            lambda m=method, p=prepared, x=lam: m.evaluate(
                p, label, x, alpha=ALPHA, nu=NU, n_samples=N_VALUES
            )
        )
        rows.append(
            f"| {title} | {1e3 * t_masks:.3f} | {1e3 * t_size:.3f} | {1e3 * t_draw:.0f} | {t_eval:.2f} "
            f"| {float(np.mean(sizes)):.3f} |"
        )
    return rows


def bench_3d(size: int, t: int, lams: dict[str, float]) -> list[str]:
    samples, label = next(_data(1, (size, size, size), t, seed=7))
    rows = [
        "| method | prepare (s) | curve (s) | 1000 members (s) | mean set size |",
        "|---|---|---|---|---|",
    ]
    for title, name, kwargs in CONFIGS:
        method = make_method(name, **kwargs)
        t_prep, prepared = _timed(lambda m=method: m.prepare(None, samples))
        t_curve, _ = _timed(lambda m=method, p=prepared: m.curve(p, label))
        lam = lams[title]
        t_draw, _ = _timed(lambda m=method, p=prepared, x=lam: m.sample_members(p, x, 1000, 0))
        mean_size = float(np.mean(method.set_size_map(prepared, lam)))
        name3 = title.replace("7×7", "7×7×7").replace("3×3", "3×3×3")
        rows.append(f"| {name3} | {t_prep:.2f} | {t_curve:.2f} | {t_draw:.2f} | {mean_size:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()
    n, size, t, size3 = (10, 32, 5, 16) if args.quick else (100, 128, 30, 64)
    header = [
        "# Pixel-wise baselines: timings",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs "
        f"(shared with other jobs while measured), Python {platform.python_version()}, numpy {np.__version__}. "
        f"Script: `benchmarks/bench_pixelwise.py{' --quick' if args.quick else ''}`. "
        f"(α, ν) = ({ALPHA}, {NU}); single process, CPU.",
        "",
        f"## Calibration: n = {n} images of {size}², L = 4, T = {t}",
        "",
        "`prepare + curve` is the per-image work (mean of the T samples, scores, sorted true-label scores); "
        "`λ̂` is the exact Algorithm 3 on cached curves, `new ν` the same after moving the ν slider. "
        "The grid column runs the reference's loop (λ step 0.01, covered images stay covered) on the "
        "prepared images; its λ̂ is the exact one rounded up to the grid (checked).",
        "",
    ]
    rows, lams = bench_calibration(n, size, t)
    lines = header + rows
    lines += ["", f"## Sets and sampling, one further {size}² image at the calibrated λ̂", ""]
    lines += bench_sets(size, t, lams)
    lines += ["", f"## 3D: one {size3}³ volume, L = 4, T = {t}, at the 2D λ̂", ""]
    lines += bench_3d(size3, t, lams)
    lines += [
        "",
        "## Reading the numbers",
        "",
        "* Calibration is exact: each image's curve sorts its true-label scores once (O(M log M)); λ̂ for any "
        "(α, ν) is then one binary search per image plus an order statistic, so moving a slider costs well "
        "under a millisecond for 100 images, against seconds for the reference's 0.01-step grid loop, whose "
        "answer is never smaller (it is the exact λ̂ rounded up to the grid).",
        "* Timings were taken on a 2-core machine shared with other jobs; expect ±2× between runs.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
