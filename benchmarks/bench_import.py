"""Large volumes: import nnU-Net folders and calibrate CRC and CONSIGN on the store, time and peak memory.

Run: ``python benchmarks/bench_import.py [--quick] [--n 20] [--size 160] [--t 10] [--classes 3] [--work DIR]``.
``--quick`` is a smoke test (n = 12 volumes of 24³, T = 6, α = 0.2).

It writes nnU-Net v2 folders (``imagesTs/CASE_0000.nii.gz``, ``labelsTs/CASE.nii.gz``, ``fold_t/CASE.npz`` with
``probabilities`` (C, z, y, x) float16, compressed as nnU-Net compresses them) of synthetic volumes: a few
ellipsoids of two structures, an image of them with noise, and per member probabilities from a smooth
random perturbation of the signed distance. Then each stage runs as its own process, as a user would
run it, and its wall time and peak resident memory (``ru_maxrss`` of that process, from ``os.wait4``)
are printed as a Markdown table:

* ``napari-conformal import nnunet`` (every value checked first, then written: two reads of the inputs);
* the same with ``--single-pass`` (checked while written into the temporary store);
* ``napari-conformal calibrate --method crc`` and ``--method consign`` on the first half of the cases.

Nothing is asserted; results go to docs/benchmarks_import.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _ellipsoids(rng: np.random.Generator, size: int, n_classes: int) -> np.ndarray:
    """Signed distance-like field per foreground class (negative inside), shape (C-1, z, y, x)."""
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij", sparse=True)
    out = []
    for _ in range(1, n_classes):
        c = rng.uniform(-0.4, 0.4, size=3)
        r = rng.uniform(0.15, 0.35, size=3)
        d = np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2) - 1.0
        out.append(d.astype(np.float32))
    return np.stack(out)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    from scipy.ndimage import zoom

    coarse = rng.normal(0, scale, size=(8, 8, 8)).astype(np.float32)
    return zoom(coarse, size / 8, order=1)[:size, :size, :size]


def write_folders(root: Path, n: int, size: int, t: int, n_classes: int, seed: int = 0) -> None:
    """nnU-Net folders of ``n`` synthetic volumes of ``size``³ with ``t`` member folders."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    images, labels = root / "imagesTs", root / "labelsTs"
    members = [root / f"fold_{k}" for k in range(t)]
    for d in (images, labels, *members):
        d.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(n):
        name = f"case_{i:03d}"
        dist = _ellipsoids(rng, size, n_classes)  # (C-1, z, y, x)
        inside = dist < 0
        label = np.zeros((size,) * 3, np.uint8)
        for c in range(n_classes - 1):
            label[inside[c]] = c + 1
        image = (label * 40.0 + rng.normal(0, 15, size=label.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), images / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), labels / f"{name}.nii.gz")
        for member in members:
            logits = np.empty((n_classes, *label.shape), np.float32)
            logits[0] = 0.0
            for c in range(n_classes - 1):
                logits[c + 1] = -8.0 * (dist[c] + _smooth_noise(rng, size, 0.08))
            logits -= logits.max(axis=0, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=0, keepdims=True)
            np.savez_compressed(member / f"{name}.npz", probabilities=logits.astype(np.float16))
        print(f"  wrote {name}", file=sys.stderr, flush=True)


def run_stage(argv: list[str]) -> tuple[float, float]:
    """Run one command in its own process; (wall seconds, peak RSS in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with status {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--t", type=int, default=10)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--nu", type=float, default=0.8)
    parser.add_argument("--work", type=Path, help="folder for the inputs and stores (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="smoke test: n = 12 volumes of 24³, T = 6")
    parser.add_argument(
        "--stages", nargs="+", choices=("import", "crc", "consign"), default=["import", "crc", "consign"],
        help="stages to run (the calibrations reuse the store of an earlier run in --work)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.n, args.size, args.t, args.alpha = 12, 24, 6, 0.2
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    nn = work / "nnunet"
    cli = [sys.executable, "-m", "napari_conformal.cli"]
    try:
        if not (nn / "done").exists():
            shutil.rmtree(nn, ignore_errors=True)
            t0 = time.perf_counter()
            write_folders(nn, args.n, args.size, args.t, args.classes)
            (nn / "done").write_text("")
            print(f"inputs written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        inputs_mb = sum(p.stat().st_size for p in nn.rglob("*") if p.is_file()) / 2**20
        members = [str(nn / f"fold_{k}") for k in range(args.t)]
        common = ["--images", str(nn / "imagesTs"), "--labels", str(nn / "labelsTs"), "--members", *members, "-q"]
        rows = []
        imports = (("import nnunet", []), ("import nnunet --single-pass", ["--single-pass"]))
        for name, extra in imports if "import" in args.stages else ():
            store = work / ("store.zarr" if not extra else "store_single.zarr")
            shutil.rmtree(store, ignore_errors=True)
            wall, rss = run_stage([*cli, "import", "nnunet", *common, "--out", str(store), *extra])
            rows.append((name, wall, rss))
        store = work / "store.zarr"
        store_mb = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
        shutil.rmtree(work / "store_single.zarr", ignore_errors=True)
        n_cal = args.n // 2
        runs = [("crc", n_cal, args.alpha, []), ("consign", n_cal, args.alpha, ["--nu", str(args.nu)])]
        runs.append(("consign", max(4, n_cal // 2), 0.2, ["--nu", str(args.nu)]))  # fewer bases in memory
        for method, n, alpha, extra in runs:
            if method not in args.stages:
                continue
            out = work / f"calib_{method}_{n}.json"
            argv = [*cli, "calibrate", str(store), "--method", method, "--alpha", str(alpha), *extra,
                    "--cal", f"0-{n - 1}", "--device", "cpu", "--out", str(out), "-q"]  # fmt: skip
            wall, rss = run_stage(argv)
            lam = json.loads(out.read_text())["lambda_hat"]
            rows.append((f"calibrate {method}, n = {n} calibration volumes, α = {alpha:g} (λ̂ = {lam:.4g})", wall, rss))
        print(
            f"\nN = {args.n} volumes of {args.size}³, T = {args.t}, L = {args.classes}, float16; inputs "
            f"{inputs_mb:.0f} MiB on disk, store {store_mb:.0f} MiB; load average {os.getloadavg()[0]:.1f}\n"
        )
        print("| stage | wall time (s) | peak RSS (MiB) |")
        print("|---|---|---|")
        for name, wall, rss in rows:
            print(f"| {name} | {wall:.1f} | {rss:.0f} |")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
