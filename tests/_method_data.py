"""Small synthetic data, stores and options for every registered method (protocol and calibration tests).

Binary methods (CRC, RW-CP, Consema) get blob images; the label-wise methods (pixel-wise sets,
SACP, CONSIGN) low-rank multi-class images. Every registered method must have an entry in
:data:`OPTIONS`, so a new method is covered by these tests from the day it registers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

N_IMAGES = 14
N_CAL = 12
CAL = tuple(range(N_CAL))
TEST = tuple(range(N_CAL, N_IMAGES))
SHAPE = (16, 16)

#: a cheap CONSIGN search (the settings of the CONSIGN guarantee test)
SEARCH = {
    "ratio": 1.2,
    "lhs_points": 24,
    "lhs_per_block": 8,
    "starts": 3,
    "adam_steps": 3,
    "sweeps": 1,
    "descents": 1,
}

#: options per registered method: small and weight-free (RW-CP's multiscale features)
OPTIONS: dict[str, dict] = {
    "crc": {},
    "rwcp": {"features": "multiscale", "grid_stride": 2, "k": 5, "n_step": 3},
    "consema": {},
    "aps": {},
    "raps": {},
    "lac": {},
    "sacp": {},
    "consign": {"k": 2, "lambda_max": 20.0, "search": SEARCH},
}
BINARY = ("crc", "rwcp", "consema")
#: (α, ν) of the calibrations, and another level each must answer (through extend for CONSIGN)
LEVELS = {name: (0.2, None) if name in BINARY else (0.2, 0.7) for name in OPTIONS}
OTHER = {name: (0.3, None) if name in BINARY else (0.3, 0.6) for name in OPTIONS}


def kind(name: str) -> str:
    """``"binary"`` or ``"multi"``: which data set a method calibrates on."""
    return "binary" if name in BINARY else "multi"


def arrays(which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32, samples float32, labels int64) of one data set, deterministic."""
    if which == "binary":
        images, samples, labels = binary_blobs_dataset(N_IMAGES, SHAPE, n_samples=4, noise=1.0, seed=3)
        truth = labels == 1
        prediction = samples[:, :, 1].astype(np.float64).mean(axis=1) >= 0.5
        assert truth.any(axis=(1, 2)).all() and prediction.any(axis=(1, 2)).all()  # every method calibrates
    else:
        images, samples, labels = lowrank_multiclass_dataset(
            N_IMAGES, SHAPE, n_classes=3, n_samples=6, rank=2, amplitude=1.5, seed=5
        )
    return (
        np.ascontiguousarray(images, dtype=np.float32),
        np.ascontiguousarray(samples, dtype=np.float32),
        np.ascontiguousarray(labels, dtype=np.int64),
    )


def make_stores(root: Path) -> dict[str, object]:
    """A real zarr store per data set under ``root`` (float32 samples, opened read-only)."""
    from napari_conformal.io.store import create_store, open_store

    out = {}
    for which in ("binary", "multi"):
        images, samples, labels = arrays(which)
        create_store(root / f"{which}.zarr", images, samples, labels, samples_dtype="float32")
        out[which] = open_store(root / f"{which}.zarr", mode="r")
    return out


def find_arrays(doc, path=()):
    """Every encoded array ``{dtype, shape, data}`` inside a JSON document, with its key path."""
    if isinstance(doc, dict):
        if set(doc) == {"dtype", "shape", "data"}:
            yield path, doc
            return
        for k, val in doc.items():
            yield from find_arrays(val, (*path, k))
    elif isinstance(doc, list):
        for j, val in enumerate(doc):
            yield from find_arrays(val, (*path, j))
