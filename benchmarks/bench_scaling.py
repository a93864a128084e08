"""Scaling of calibration: time against n, 1 against 2 dask workers, peak memory against store size.

Run: ``python benchmarks/bench_scaling.py [--quick] [--parts linear,workers,memory] [--out docs/benchmarks_scaling.md]``.

``--quick`` is a smoke test of every part: stores of 10 and 20 images of 16², T = 6, one timing per
worker setting (the other size flags are ignored).

Method options are keyword arguments of :func:`~napari_conformal.api.calibrate` (``k``,
``features``, ``grid_stride``, ``device``; no ``params`` dict), as on the command line.

Three measurements (nothing is asserted; results go to ``docs/benchmarks_scaling.md``):

``linear``
    Wall time of :func:`napari_conformal.api.calibrate` (every image of the store calibrates, so the
    store's content identity, which reads the whole store once, is included) on synthetic stores of
    n = 100, 200, 400 images, per method. Linear in n means a constant time per image.
``workers``
    The same calibration on a ``LocalCluster`` of 1 and of 2 single-threaded worker processes
    (:func:`napari_conformal.parallel.local_cluster`, passed as ``scheduler``). Each cluster is warmed
    up first (the workers import torch and the method once), so the timing is the steady state.
    The serial run (no dask) is timed with torch's default number of threads and with one thread
    (dask's worker processes run torch single-threaded). The clusters run twice: with dask's default
    worker environment, which sets ``MALLOC_TRIM_THRESHOLD_=65536`` (glibc then returns freed memory
    to the system eagerly, which slows code that allocates many small tensors), and as
    :func:`~napari_conformal.parallel.local_cluster` starts them (without it).
``memory``
    Peak resident memory of a fresh process that opens a store and calibrates CRC on all of it, for
    a 200-image and a 2000-image store written image by image with the streaming writer
    (:meth:`~napari_conformal.io.store.DatasetStore.create_empty` + ``write_image``). The resident
    set size is sampled every 2 ms by a thread (psutil) during the calibration, after imports and
    a three-image warm-up, so the increase over the RSS before is what calibration itself adds
    (the process's high-water mark, ``resource.getrusage``, is dominated by the imports). It is
    reported twice: through the image pass (reading, preparing and scoring image by image; the
    last progress call comes before the reduction) and overall, including CRC's exact reduction,
    which sorts the calibration scores of every ground-truth pixel (8 bytes each: "CRC curves").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.api import calibrate
from napari_conformal.core.methods.base import available_methods
from napari_conformal.io.store import DatasetStore, open_store
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

#: per method: dataset kind and calibrate keyword arguments
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "crc": ("binary", {"alpha": 0.1}),
    "rwcp": ("binary", {"alpha": 0.1, "k": 8, "features": "multiscale", "grid_stride": 2, "device": "cpu"}),
    "aps": ("multi", {"alpha": 0.2, "nu": 0.7}),
    "consign": ("multi", {"alpha": 0.2, "nu": 0.7, "k": 4, "device": "cpu"}),
}


def write_store(path: Path, kind: str, n: int, shape: tuple[int, ...], t: int, seed: int = 0) -> Path:
    """Stream n synthetic images into a new store, 50 at a time (memory bounded by one batch)."""
    labels_n = 2 if kind == "binary" else 3
    store = DatasetStore.create_empty(path, n, shape, t, labels_n, samples_dtype="float16", overwrite=True)
    batch = 50
    for start in range(0, n, batch):
        m = min(batch, n - start)
        if kind == "binary":
            images, samples, labels = binary_blobs_dataset(m, shape, t, seed=seed + start)
        else:
            images, samples, labels = lowrank_multiclass_dataset(m, shape, labels_n, t, seed=seed + start)
        for j in range(m):
            store.write_image(start + j, image=images[j], samples=samples[j], label=labels[j])
    return path


def _calibrate_seconds(store_path: Path, method: str, scheduler: Any = None) -> float:
    store = open_store(store_path)
    kwargs = METHODS[method][1]
    t0 = time.perf_counter()
    calibrate(store, method, cal_indices=range(store.n_images), scheduler=scheduler, **kwargs)
    return time.perf_counter() - t0


def part_linear(
    tmp: Path, methods: list[str], sizes: list[int], shape: tuple[int, ...], t: int
) -> list[dict]:
    rows = []
    for method in methods:
        kind = METHODS[method][0]
        warm = write_store(tmp / f"warm-{kind}.zarr", kind, 12, shape, t, seed=10_000)
        _calibrate_seconds(warm, method)  # imports, model set-up
        for n in sizes:
            path = write_store(tmp / f"lin-{kind}-{n}.zarr", kind, n, shape, t)
            sec = _calibrate_seconds(path, method)
            rows.append({"method": method, "n": n, "seconds": sec, "ms_per_image": 1e3 * sec / n})
            print(f"linear  {method:8s} n={n:5d}  {sec:8.2f} s  {1e3 * sec / n:7.1f} ms/image", flush=True)
    return rows


def part_workers(tmp: Path, method: str, n: int, shape: tuple[int, ...], t: int, repeats: int) -> list[dict]:
    from distributed import Client, LocalCluster

    from napari_conformal.parallel import local_cluster

    kind = METHODS[method][0]
    path = write_store(tmp / f"workers-{kind}-{n}.zarr", kind, n, shape, t)
    warm = write_store(tmp / f"workers-warm-{kind}.zarr", kind, 12, shape, t, seed=20_000)
    import torch

    rows = []
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        _calibrate_seconds(warm, method)
        serial = min(_calibrate_seconds(path, method) for _ in range(repeats))
        rows.append({"method": method, "n": n, "workers": 0, "torch_threads": threads, "seconds": serial})
        print(f"workers {method:8s} n={n}  serial, {threads} torch thread(s)  {serial:8.2f} s", flush=True)
    torch.set_num_threads(default_threads)

    def dask_default(workers: int) -> Any:  # LocalCluster as dask configures it (MALLOC_TRIM_THRESHOLD_ set)
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)

    envs = (("dask default", dask_default), ("local_cluster: no MALLOC_TRIM_THRESHOLD_", local_cluster))
    for env_name, make_cluster in envs:
        for workers in (1, 2):
            cluster = make_cluster(workers)
            client = Client(cluster)
            try:
                _calibrate_seconds(warm, method, scheduler=client)
                sec = min(_calibrate_seconds(path, method, scheduler=client) for _ in range(repeats))
            finally:
                client.close()
                cluster.close()
            rows.append({"method": method, "n": n, "workers": workers, "env": env_name, "seconds": sec})
            print(f"workers {method:8s} n={n}  {workers} worker(s), {env_name:26s} {sec:8.2f} s", flush=True)
    return rows


class RssSampler:
    """Highest resident set size seen by a thread that samples it every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _child_rss(store_path: str) -> None:
    """Child process of ``part_memory``: print JSON with the RSS before and the peak RSS during calibration."""
    import gc

    import psutil

    from napari_conformal.core.methods.base import make_method

    store = open_store(store_path)
    method = make_method("crc")  # warm-up: imports and first allocations, no whole-store pass
    curves = [
        method.curve(method.prepare(store.image(i), store.samples(i)), store.label(i)) for i in range(3)
    ]
    method.lambda_hat(curves, alpha=0.5)
    del curves
    gc.collect()
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    pass_peak = [before]

    def progress(done: int, total: int) -> None:  # called after each image, before the reduction
        pass_peak[0] = max(pass_peak[0], sampler.peak, psutil.Process().memory_info().rss)

    with RssSampler() as sampler:
        calibrate(store, "crc", alpha=0.1, cal_indices=range(store.n_images), progress=progress)
    sec = time.perf_counter() - t0
    truth = sum(int(np.count_nonzero(store.label(i) == 1)) for i in range(store.n_images))
    print(
        json.dumps(
            {
                "rss_before_kib": before / 1024,
                "rss_pass_peak_kib": pass_peak[0] / 1024,
                "rss_peak_kib": sampler.peak / 1024,
                "truth_pixels": truth,
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "seconds": sec,
            }
        )
    )


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def part_memory(tmp: Path, sizes: list[int], shape: tuple[int, ...], t: int) -> list[dict]:
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        path = write_store(tmp / f"mem-{n}.zarr", "binary", n, shape, t)
        write_s = time.perf_counter() - t0
        out = subprocess.run(
            [sys.executable, __file__, "--child-rss", str(path)], check=True, capture_output=True, text=True
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
        decoded = n * t * 2 * int(np.prod(shape)) * 4  # samples as float32, if loaded whole
        row = {
            "n": n,
            "disk_mib": _dir_bytes(path) / 2**20,
            "samples_float32_mib": decoded / 2**20,
            "write_seconds": write_s,
            "rss_before_mib": child["rss_before_kib"] / 1024,
            "rss_pass_peak_mib": child["rss_pass_peak_kib"] / 1024,
            "rss_peak_mib": child["rss_peak_kib"] / 1024,
            "curves_mib": child["truth_pixels"] * 8 / 2**20,
            "maxrss_mib": child["maxrss_kib"] / 1024,
            "calibrate_seconds": child["seconds"],
        }
        row["pass_increase_mib"] = row["rss_pass_peak_mib"] - row["rss_before_mib"]
        row["increase_mib"] = row["rss_peak_mib"] - row["rss_before_mib"]
        rows.append(row)
        print(
            f"memory  n={n:5d}  store {row['disk_mib']:7.1f} MiB on disk, {row['samples_float32_mib']:7.1f} MiB "
            f"float32 samples; RSS {row['rss_before_mib']:.0f} MiB, +{row['pass_increase_mib']:.1f} MiB through the "
            f"image pass, +{row['increase_mib']:.1f} MiB overall (curves {row['curves_mib']:.1f} MiB); "
            f"calibrate {row['calibrate_seconds']:.1f} s",
            flush=True,
        )
    return rows


def _machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node() or 'machine'}: {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min) at start"
    )


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Scaling benchmarks",
        "",
        f"Measured with `benchmarks/bench_scaling.py` on {results['machine']}.",
        "",
    ]
    lines += [f"Settings: {results['settings']}.", ""]
    if results.get("linear"):
        lines += [
            "## Calibration time against n",
            "",
            "| method | n | seconds | ms per image |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['n']} | {r['seconds']:.2f} | {r['ms_per_image']:.1f} |"
            for r in results["linear"]
        ]
        lines.append("")
    if results.get("workers"):
        rows = results["workers"]
        lines += ["## One against two dask workers", ""]
        lines += [
            "| method | n | run | worker environment | seconds | speed-up vs 1 worker |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["workers"] == 0:
                who, env, speed = f"serial (no dask), {r['torch_threads']} torch thread(s)", "–", "–"
            else:
                one = next(x["seconds"] for x in rows if x["workers"] == 1 and x.get("env") == r["env"])
                who, env, speed = f"{r['workers']} worker(s)", r["env"], f"{one / r['seconds']:.2f}×"
            lines.append(f"| {r['method']} | {r['n']} | {who} | {env} | {r['seconds']:.2f} | {speed} |")
        lines.append("")
    if results.get("memory"):
        lines += [
            "## Peak memory against store size (CRC calibration on every image)",
            "",
            "| images | store on disk (MiB) | samples as float32 (MiB) | RSS before (MiB) "
            "| increase through the image pass (MiB) | increase overall (MiB) | CRC curves (MiB) | calibrate (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['n']} | {r['disk_mib']:.1f} | {r['samples_float32_mib']:.1f} | {r['rss_before_mib']:.0f} | "
            f"{r['pass_increase_mib']:.1f} | {r['increase_mib']:.1f} | {r['curves_mib']:.1f} | "
            f"{r['calibrate_seconds']:.1f} |"
            for r in results["memory"]
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    parser.add_argument("--parts", default="linear,workers,memory")
    parser.add_argument(
        "--methods", default="crc,rwcp,consign", help="methods for 'linear' (unregistered skipped)"
    )
    parser.add_argument("--sizes", default="100,200,400")
    parser.add_argument(
        "--shape", type=int, nargs="+", default=[32, 32], help="image shape for linear/workers"
    )
    parser.add_argument("--t", type=int, default=8, help="samples per image")
    parser.add_argument("--workers-method", default=None, help="default: consign if registered, else rwcp")
    parser.add_argument("--workers-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings (workers part)")
    parser.add_argument("--memory-sizes", default="200,2000")
    parser.add_argument("--memory-shape", type=int, nargs="+", default=[64, 64])
    parser.add_argument(
        "--rwcp-grid-stride", type=int, default=2, help="pixels per RW-CP graph node per axis"
    )
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the 'linear' part")
    parser.add_argument("--out", help="write the results as markdown here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 10 and 20 images of 16², T = 6, one repeat"
    )
    args = parser.parse_args()
    if args.child_rss:
        _child_rss(args.child_rss)
        return
    if args.quick:
        args.sizes, args.shape, args.t, args.workers_n, args.repeats = "10,20", [16, 16], 6, 10, 1
        args.memory_sizes, args.memory_shape = "10,20", [16, 16]
    METHODS["rwcp"][1]["grid_stride"] = args.rwcp_grid_stride
    registered = set(available_methods())
    parts = args.parts.split(",")
    shape = tuple(args.shape)
    methods = [m for m in args.methods.split(",") if m in registered]
    workers_method = args.workers_method or ("consign" if "consign" in registered else "rwcp")
    results: dict[str, Any] = {
        "machine": _machine(),
        "settings": (
            ("--quick smoke test; " if args.quick else "")
            + f"linear/workers: {shape} images, T = {args.t}, float16 samples; "
            f"memory: {tuple(args.memory_shape)} images, T = {args.t}; "
            f"torch threads for 'linear': {args.torch_threads or 'default'}; "
            f"methods {', '.join(f'{m} {METHODS[m][1]}' for m in {*methods, workers_method})}"
        ),
    }
    print(results["machine"], flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        if "linear" in parts:
            results["linear"] = part_linear(
                tmp, methods, [int(s) for s in args.sizes.split(",")], shape, args.t
            )
        if "workers" in parts:
            results["workers"] = part_workers(
                tmp, workers_method, args.workers_n, shape, args.t, args.repeats
            )
        if "memory" in parts:
            sizes = [int(s) for s in args.memory_sizes.split(",")]
            results["memory"] = part_memory(tmp, sizes, tuple(args.memory_shape), args.t)
    results["load_average_at_end"] = os.getloadavg()
    if args.out:
        out = Path(args.out)
        out.write_text(to_markdown(results) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
