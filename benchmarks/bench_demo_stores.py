"""Time to build each full demo store (T = 20 MC-dropout samples of the packaged demo model).

Run: ``python benchmarks/bench_demo_stores.py [--quick] [--names nuclei brain-mri] [--threads 1] [--device cpu]``.
Builds into a temporary cache (nothing is reused), prints one line per store: images, seconds,
seconds per image and the size on disk. Nothing is asserted; results go to docs/demo_data.md.

``--quick`` (a smoke test) builds only the first 2 images of each store (``n_images=2``, the
builder's own subset for quick tests; ``--n-images`` sets another count); its per-image times are
not those of a full build (the model load is spread over 2 images).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    from napari_conformal.demo_data import build_demo_store, demo_names
    from napari_conformal.io.store import open_store

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", nargs="+", default=demo_names(), choices=demo_names())
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-images", type=int, default=None, help="build only this many images per store")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 images per store")
    args = parser.parse_args()
    if args.quick and args.n_images is None:
        args.n_images = 2
    torch.set_num_threads(args.threads)
    subset = "" if args.n_images is None else f", first {args.n_images} images of each store"
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {os.cpu_count()} CPUs{subset}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NAPARI_CONFORMAL_CACHE"] = tmp
        for name in args.names:
            start = time.perf_counter()
            path = build_demo_store(name, device=args.device, n_images=args.n_images)
            seconds = time.perf_counter() - start
            store = open_store(path)
            print(
                f"{name:15s} N={store.n_images:3d} S={store.spatial_shape} T={store.n_samples}: "
                f"{seconds:7.1f} s ({seconds / store.n_images:.2f} s/image), {_size_mb(path):.0f} MB on disk"
            )


if __name__ == "__main__":
    main()
