"""RW-CP timing, memory and a Table-1-shaped synthetic comparison.

Measures (CPU, ``torch.set_num_threads(--threads)``, default 2):

* per image, a 512² image and a 128³ volume: feature extraction
  (EfficientNet-Lite0, the default, with the automatic grid: 64² nodes for
  512², 32³ for 128³), kNN graph + transition matrix (k = 20, β = 50), and
  the 10-step walk with the resampling back to the image grid; the median of
  several runs after a warm-up (the one-off model load is reported apart);
  the 512² image also at the finer stride 4 (128² nodes) for comparison;
* peak resident memory added by graph + walk (psutil RSS polled every 2 ms)
  against M, k, the similarity block and the dense M × M matrix it avoids;
* λ̂ for a new α from cached calibration curves, n = 500 images;
* optionally (``--table``) a Table-1-shaped run on synthetic 2D data
  (``binary_blobs_dataset``, 128², n_cal = 20, 50 test images, 3 seeds):
  coverage, stretch, DSC, ASSD, HD95 for CRC, Consema and RW-CP at
  α ∈ {0.2, 0.1, 0.05}.

Methods are made with their options only (``make_method("rwcp", device="cpu")``: k = 20, β = 50,
10 steps are the defaults); α is a keyword argument of ``lambda_hat`` and ``evaluate``. Consema's
coverage ratio τ follows α (τ = 1 − α, its ``tau`` option unset), and its curves keep every
ground-truth pixel's dilation distance, so the table reduces one set of Consema curves at every α
(before the method protocol, the script rebuilt Consema and its curves for each α; same λ̂).

``--quick`` is a smoke test: a 128² image and a 16³ volume instead of 512² and 128³, few
repeats, and with ``--table`` one seed of 32² images (n_cal = 20, 3 test images).

Usage::

    python benchmarks/bench_rwcp.py [--quick] [--table] [--threads 2] [--out docs/benchmarks_rwcp.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.rwcp.diffusion import diffuse
from napari_conformal.core.rwcp.features import make_extractor
from napari_conformal.core.rwcp.graph import default_chunk_size, transition_matrix
from napari_conformal.testing.synthetic import binary_blobs_dataset

K, BETA, STEPS = 20, 50.0, 10


class PeakRSS:
    """Context manager: peak RSS above the level at entry, polled in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def added_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _time(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _time_cpu(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall time and process CPU time (all threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return [
        f"* CPU: {cpu}, {os.cpu_count()} logical cores visible, torch threads = {torch.get_num_threads()}",
        f"* memory: {psutil.virtual_memory().total / 2**30:.1f} GiB; load average at start {load[0]:.2f}",
        f"* Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.system()} {platform.release()}",
    ]


def bench_pipeline(shape: tuple[int, ...], repeat: int, grid_stride: int | None = None) -> dict:
    """Median stage times and peak memory of features → graph → walk for one image."""
    images, samples, _ = binary_blobs_dataset(1, shape, n_samples=2, seed=7)
    image, s0 = images[0], samples[0, :, 1].mean(axis=0).astype(np.float64)
    extractor = make_extractor("efficientnet-lite0", grid_stride=grid_stride)
    extractor(image[..., :32, :32] if image.ndim == 3 else image[:64, :64], device="cpu")  # load the model
    times: dict[str, list[float]] = {"features": [], "graph": [], "walk": []}
    cpu: list[float] = []
    mem = 0.0
    for _ in range(repeat):
        t_f, c_f, fmap = _time_cpu(lambda: extractor(image, device="cpu"))
        with PeakRSS() as peak:
            t_g, c_g, matrix = _time_cpu(lambda f=fmap: transition_matrix(f.nodes(), K, BETA, device="cpu"))
            t_w, c_w, _ = _time_cpu(lambda p=matrix, f=fmap: diffuse(p, s0, f.grid_shape, STEPS).final)
        mem = max(mem, peak.added_mib)
        times["features"].append(t_f)
        times["graph"].append(t_g)
        times["walk"].append(t_w)
        cpu.append(c_f + c_g + c_w)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    totals = [sum(v) for v in zip(*times.values(), strict=True)]
    m = fmap.n_nodes
    return {
        "shape": shape,
        "grid": fmap.grid_shape,
        "channels": fmap.n_channels,
        "M": m,
        "chunk": default_chunk_size(m),
        "median": med,
        "min": low,
        "total_median": statistics.median(totals),
        "total_max": max(totals),
        "total_min": min(totals),
        "cpu_median": statistics.median(cpu),
        "peak_mib": mem,
        "repeat": repeat,
    }


def bench_model_load() -> float:
    from napari_conformal.core.rwcp import features as feat

    feat._MODEL_CACHE.clear()
    t, _ = _time(lambda: feat._efficientnet_lite0(torch.device("cpu")))
    return t


def bench_lambda(n: int = 500, seed: int = 0) -> dict:
    """λ̂ from cached curves: first call (sort) and later α changes."""
    rng = np.random.default_rng(seed)
    method = make_method("rwcp", device="cpu")
    sizes = rng.integers(500, 4000, size=n)
    curves = []
    for size in sizes:
        c = 1.0 - rng.beta(5, 1, size=int(size))  # nonconformity 1 − S of the truth pixels
        c.flags.writeable = False
        curves.append(c)
    t_first, _ = _time(lambda: method.lambda_hat(curves, alpha=0.1))
    alphas = np.linspace(0.02, 0.3, 200)
    per = []
    for a in alphas:
        t, _ = _time(lambda a=a: method.lambda_hat(curves, alpha=float(a)))
        per.append(t)
    return {
        "n": n,
        "pixels": int(sizes.sum()),
        "first_ms": 1e3 * t_first,
        "median_ms": 1e3 * statistics.median(per),
        "max_ms": 1e3 * max(per),
        "p95_ms": 1e3 * float(np.percentile(per, 95)),
    }


def bench_table(seeds=(0, 1, 2), n_cal=20, n_test=50, size=128, alphas=(0.2, 0.1, 0.05)) -> list[str]:
    """Table-1-shaped comparison on synthetic data (mean ± std over seeds of the test means)."""
    from napari_conformal.core.metrics.segmentation import segmentation_metrics

    keys = ("coverage", "stretch", "dice", "assd", "hd95")
    results: dict[tuple, list[dict]] = {}
    for seed in seeds:
        images, samples, labels = binary_blobs_dataset(
            n_cal + n_test, (size, size), n_samples=8, noise=2.0, seed=100 + seed
        )
        cal, test = range(n_cal), range(n_cal, n_cal + n_test)
        base = [samples[i, :, 1].mean(axis=0) >= 0.5 for i in test]
        rows = [segmentation_metrics(b, labels[i] == 1, reference=b) for b, i in zip(base, test, strict=True)]
        results.setdefault(("base", None), []).append({k: np.nanmean([r[k] for r in rows]) for k in keys})
        for name in ("crc", "consema", "rwcp"):
            kw = {"device": "cpu"} if name == "rwcp" else {}
            method = make_method(name, **kw)  # Consema: tau unset, so τ = 1 − α at each α
            prepared = {i: method.prepare(images[i], samples[i]) for i in (*cal, *test)}
            curves = [method.curve(prepared[i], labels[i]) for i in cal]
            for alpha in alphas:
                lam = method.lambda_hat(curves, alpha=alpha)
                rows = [method.evaluate(prepared[i], labels[i], lam, alpha=alpha) for i in test]
                results.setdefault((name, alpha), []).append(
                    {k: np.nanmean([r[k] for r in rows]) for k in keys}
                )
    lines = [
        "| α | method | coverage | stretch | DSC (%) | ASSD (px) | HD95 (px) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(vals: list[dict], key: str, scale: float = 1.0, fmt: str = ".3f") -> str:
        v = np.array([r[key] for r in vals], dtype=float) * scale
        return f"{v.mean():{fmt}} ± {v.std(ddof=1) if len(v) > 1 else 0.0:{fmt}}"

    b = results[("base", None)]
    lines.append(
        f"| – | base model (Ŷ = S⁽⁰⁾ ≥ 0.5) | {cell(b, 'coverage')} | – | {cell(b, 'dice', 100, '.2f')} | "
        f"{cell(b, 'assd', 1, '.2f')} | {cell(b, 'hd95', 1, '.2f')} |"
    )
    labels_ = {"crc": "CRC", "consema": "Consema (τ = 1 − α)", "rwcp": "RW-CP"}
    for alpha in alphas:
        for name in ("crc", "consema", "rwcp"):
            r = results[(name, alpha)]
            lines.append(
                f"| {alpha} | {labels_[name]} | {cell(r, 'coverage')} | {cell(r, 'stretch', 1, '.2f')} | "
                f"{cell(r, 'dice', 100, '.2f')} | {cell(r, 'assd', 1, '.2f')} | {cell(r, 'hd95', 1, '.2f')} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: small inputs, fewer repeats")
    parser.add_argument(
        "--table", action="store_true", help="also run the synthetic Table-1-shaped comparison"
    )
    parser.add_argument("--out", help="write a markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = ["## Machine", "", *_machine(), ""]
    t_load = bench_model_load()
    rep2, rep3 = (2, 1) if args.quick else (15, 3)
    side2, side3 = (128, 16) if args.quick else (512, 128)
    runs = [
        (f"{side2}² image (auto grid)", bench_pipeline((side2, side2), rep2)),
        (f"{side2}² image, stride 4", bench_pipeline((side2, side2), max(1, rep2 // 2), grid_stride=4)),
        (f"{side3}³ volume (auto grid)", bench_pipeline((side3,) * 3, rep3)),
    ]
    lines += [
        "## Per-image time and memory (CPU)",
        "",
        f"EfficientNet-Lite0 load from the wheel (once per process and device): {t_load:.2f} s.",
        "",
        "| input | feature grid (nodes M) | C | features (s) | kNN graph (s) | walk + upsample (s) | "
        "total median [min, max] (s) | CPU time, all threads (s) | runs | graph+walk peak RSS (MiB) | "
        "block rows × M | dense M² float32 (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs:
        med, low = r["median"], r["min"]
        grid = "×".join(str(g) for g in r["grid"])
        lines.append(
            f"| {label} | {grid} ({r['M']}) | {r['channels']} | {med['features']:.3f} ({low['features']:.3f}) | "
            f"{med['graph']:.3f} ({low['graph']:.3f}) | {med['walk']:.3f} ({low['walk']:.3f}) | {r['total_median']:.2f} [{r['total_min']:.2f}, {r['total_max']:.2f}] | "
            f"{r['cpu_median']:.2f} | {r['repeat']} | "
            f"{r['peak_mib']:.0f} | {r['chunk']} × {r['M']} | {r['M'] ** 2 * 4 / 2**20:.0f} |"
        )
    lines += [
        "",
        "Stage columns: median (minimum) over the runs. Load average after the runs: "
        f"{os.getloadavg()[0]:.2f}.",
        "",
    ]
    for label, r in runs:
        m, chunk = r["M"], r["chunk"]
        model = (m * K * (8 + 8 + 4) + chunk * m * 4 + m * r["channels"] * 4 * 2) / 2**20
        lines.append(
            f"* {label}: O(M·k + chunk·M) model of graph memory = M·k·(index 8 B + weight 8 B + similarity 4 B) "
            f"+ block + 2 copies of the features = {model:.0f} MiB; measured {r['peak_mib']:.0f} MiB."
        )
    lam = bench_lambda()
    lines += [
        "",
        "## α live: λ̂ from cached curves",
        "",
        f"n = {lam['n']} calibration images, {lam['pixels']} ground-truth pixels in all: first call "
        f"(builds the exact risk curve) {lam['first_ms']:.1f} ms; each later α: median "
        f"{lam['median_ms']:.3f} ms, 95th percentile {lam['p95_ms']:.3f} ms, max {lam['max_ms']:.3f} ms "
        "(200 values of α).",
        "",
    ]
    if args.table:
        table = {"seeds": (0,), "n_cal": 20, "n_test": 3, "size": 32} if args.quick else {}
        what = (
            "32², n_cal = 20, 3 test images, seed 0 (--quick)"
            if args.quick
            else "128², T = 8 samples, noise = 2, n_cal = 20, 50 test images per seed, seeds 0–2 (fresh data per seed)"
        )
        lines += [
            "## Table-1-shaped synthetic comparison",
            "",
            f"`binary_blobs_dataset`, {what}; mean ± std over seeds of the per-seed test means. RW-CP: "
            "EfficientNet-Lite0 features on the automatic grid (stride 2, 64² nodes for 128²), k = 20, β = 50, "
            "10 steps. Consema: τ = 1 − α.",
            "",
            *bench_table(**table),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
