"""The fixed model-training / calibration / test splits of the demo datasets.

``scripts/pack_demo_data.py`` computes them once with these functions and stores the resulting
identifiers in the packaged ``.npz`` files, which are the reference from then on (the training
script and the store builder read them from there). All splits are disjoint and sorted.

* hippocampus: 130 volumes, a seeded random permutation → 60 training, 40 calibration, 30 test.
* brain-mri: axial slices of one template brain, grouped in blocks of 8 consecutive slices (8 mm);
  even blocks train the model, the slices of odd blocks are split at random into calibration and
  test (4 : 3). Held-out slices are therefore never closer than 1 mm to a training slice, but they
  are slices of the same brain: the demo's Dice measures generalisation across slice positions,
  not across subjects.
* nuclei: the 512² image cut into 64 tiles of 64²; a seeded random permutation → 24 training,
  24 calibration, 16 test tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SPLIT_SEED", "brain_split", "hippocampus_split", "nuclei_split", "random_split"]

#: Seed of every demo split.
SPLIT_SEED = 20251123
BRAIN_BLOCK = 8


def random_split(ids: Sequence[int], counts: Sequence[tuple[str, int]], seed: int) -> dict[str, list[int]]:
    """Split ``ids`` at random into consecutive parts of the given sizes (the last takes the rest).

    Parameters
    ----------
    ids : sequence of int
        Distinct identifiers.
    counts : sequence of (name, size)
        Part names and sizes; the last size may be -1 for "all remaining".
    seed : int
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    dict name → sorted list of ids
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be distinct")
    order = np.random.default_rng(seed).permutation(len(ids))
    out: dict[str, list[int]] = {}
    start = 0
    for k, (name, size) in enumerate(counts):
        stop = len(ids) if (size == -1 and k == len(counts) - 1) else start + int(size)
        if (size < 0 and k != len(counts) - 1) or stop > len(ids):
            raise ValueError(f"split sizes {counts} do not fit {len(ids)} ids")
        out[name] = sorted(int(i) for i in ids[order[start:stop]])
        start = stop
    return out


def hippocampus_split(case_ids: Sequence[int]) -> dict[str, list[int]]:
    """60 training, 40 calibration and the remaining (30) test volumes, by case number."""
    return random_split(case_ids, [("train", 60), ("calibration", 40), ("test", -1)], SPLIT_SEED)


def brain_split(z: Sequence[int]) -> dict[str, list[int]]:
    """Blocks of 8 slices alternate between training and held-out; held-out → calibration/test 4:3."""
    z = np.asarray(z, dtype=np.int64)
    block = (z - z.min()) // BRAIN_BLOCK
    train = sorted(int(v) for v in z[block % 2 == 0])
    held = z[block % 2 == 1]
    n_cal = round(len(held) * 4 / 7)
    parts = random_split(held, [("calibration", n_cal), ("test", -1)], SPLIT_SEED + 1)
    return {"train": train, **parts}


def nuclei_split(n_tiles: int) -> dict[str, list[int]]:
    """24 training, 24 calibration and the remaining (16) test tiles, by row-major tile index."""
    return random_split(range(n_tiles), [("train", 24), ("calibration", 24), ("test", -1)], SPLIT_SEED + 2)
