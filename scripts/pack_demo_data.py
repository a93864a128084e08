"""Build the compact demo data that ships in ``napari_conformal/data/demo/`` from the raw sources.

Usage (from the repository root)::

    pip download stardist --no-deps -d /tmp/stardist      # the wheel is only read, never installed
    .venv/bin/python scripts/pack_demo_data.py \\
        --hippocampus ../shared/data/msd_hippocampus --stardist-wheel /tmp/stardist/stardist-*.whl

Writes (``np.savez_compressed``, integer arrays only):

* ``hippocampus.npz``: the 70 calibration + test volumes (uint8, 36×52×36) and labels, ``ids``
  (case numbers), ``train_ids`` / ``calibration_ids`` / ``test_ids``.
* ``brain_mri.npz``: the 63 held-out axial MNI152 slices (uint8, 92×76) and white-matter masks,
  ``ids`` (slice z on the 1 mm grid) and the split.
* ``nuclei.npz``: the whole 512² image and binary mask, ``tile_size`` and the tile split.

Needs nibabel, nilearn and tifffile (development tools, not runtime dependencies).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_conformal.demo_data import sources, splits  # noqa: E402

NUCLEI_TILE = 64


def _save(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def _ids(split: dict[str, list[int]]) -> dict[str, np.ndarray]:
    return {f"{k}_ids": np.asarray(v, dtype=np.int64) for k, v in split.items()}


def pack_hippocampus(root: Path, out: Path) -> None:
    ids, images, labels = sources.read_hippocampus(root)
    split = splits.hippocampus_split(ids)
    keep = np.isin(ids, split["calibration"] + split["test"])
    _save(out / "hippocampus.npz", ids=ids[keep], images=images[keep], labels=labels[keep], **_ids(split))


def pack_brain(out: Path) -> None:
    z, images, labels = sources.read_mni152_axial()
    split = splits.brain_split(z)
    keep = np.isin(z, split["calibration"] + split["test"])
    _save(out / "brain_mri.npz", ids=z[keep], images=images[keep], labels=labels[keep], **_ids(split))


def pack_nuclei(wheel: Path, out: Path) -> None:
    image, mask = sources.read_stardist_nuclei(wheel)
    n_tiles = (image.shape[0] // NUCLEI_TILE) * (image.shape[1] // NUCLEI_TILE)
    split = splits.nuclei_split(n_tiles)
    _save(out / "nuclei.npz", image=image, mask=mask, tile_size=np.int64(NUCLEI_TILE), **_ids(split))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hippocampus", type=Path, default=REPO.parent / "shared" / "data" / "msd_hippocampus"
    )
    parser.add_argument(
        "--stardist-wheel", type=Path, help="a stardist-*.whl (pip download stardist --no-deps)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "napari_conformal" / "data" / "demo")
    parser.add_argument("--only", choices=("hippocampus", "brain-mri", "nuclei"), action="append")
    args = parser.parse_args(argv)
    todo = args.only or ["hippocampus", "brain-mri", "nuclei"]
    args.out.mkdir(parents=True, exist_ok=True)
    if "nuclei" in todo and args.stardist_wheel is None:
        parser.error("--stardist-wheel is required to pack the nuclei data")
    if "hippocampus" in todo:
        pack_hippocampus(args.hippocampus, args.out)
    if "brain-mri" in todo:
        pack_brain(args.out)
    if "nuclei" in todo:
        pack_nuclei(args.stardist_wheel, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
