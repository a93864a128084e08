"""Timing of the dataset store: create, per-image reads, full validation and identity.

Run: ``python benchmarks/bench_store.py [--quick] [--n 20] [--shape 64 64 64] [--t 10] [--labels 2]``.
``--quick`` is a smoke test (n = 3 images of 16³, T = 2), whatever the other sizes say.
Prints one line per operation (seconds). Nothing is asserted; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_conformal.io.store import DatasetStore, create_store, open_store


def _data(n: int, shape: tuple[int, ...], t: int, n_labels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, *shape)).astype(np.float32)
    logits = rng.normal(size=(n, t, n_labels, *shape)).astype(np.float32)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    labels = rng.integers(0, n_labels, size=(n, *shape), dtype=np.uint8)
    return images, probs.astype(np.float16), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--t", type=int, default=10)
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test): n = 3, 16³, T = 2")
    args = parser.parse_args()
    if args.quick:
        args.n, args.shape, args.t = 3, [16, 16, 16], 2
    shape = tuple(args.shape)
    images, samples, labels = _data(args.n, shape, args.t, args.labels)
    mb = (images.nbytes + samples.nbytes + labels.nbytes) / 2**20
    print(f"N={args.n} S={shape} T={args.t} L={args.labels}: {mb:.0f} MiB in memory (float16 samples)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        timings = {}
        t0 = time.perf_counter()
        create_store(path, images, samples, labels)
        timings["create_store (validate + write)"] = time.perf_counter() - t0
        stored = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        store = open_store(path)
        t0 = time.perf_counter()
        for i in range(args.n):
            store.image(i)
        timings["image(i), per image"] = (time.perf_counter() - t0) / args.n
        t0 = time.perf_counter()
        for i in range(args.n):
            store.samples(i)
        timings["samples(i), per image"] = (time.perf_counter() - t0) / args.n
        t0 = time.perf_counter()
        store.validate(full=True)
        timings["validate(full=True)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.identity()
        timings["identity()"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stream = DatasetStore.create_empty(Path(tmp) / "s.zarr", args.n, shape, args.t, args.labels)
        for i in range(args.n):
            stream.write_image(i, image=images[i], samples=samples[i], label=labels[i])
        timings["create_empty + write_image x N"] = time.perf_counter() - t0
        print(f"on disk: {stored:.0f} MiB")
        for name, sec in timings.items():
            print(f"{name:34s} {sec:8.3f} s")


if __name__ == "__main__":
    main()
