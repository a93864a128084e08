"""Build a demo dataset store: packaged real data + T = 20 MC-dropout samples of its demo model.

:func:`build_demo_store` writes the store once into the user's cache folder
(``platformdirs.user_cache_dir("napari-conformal")/demo``, or ``$NAPARI_CONFORMAL_CACHE/demo``)
and reuses it afterwards: a store is reused when it opens as a valid dataset store and its build
key (builder version, data and weights checksums, T, seed, subset size) matches. The store is
built under a temporary name and renamed into place, so an interrupted build leaves nothing.

Besides the standard attributes (docs/store.md) the store carries

* ``attrs["split"]``: ``{"train": [], "calibration": [...], "test": [...]}``, indices into the store
  (``train`` is empty: the model-training images are not in the store);
* ``attrs["demo"]``: provenance — dataset, model and weights checksum, seed, per-image source
  identifiers, the training identifiers, licence and attribution.

The samples are rounded to multiples of 1/2048 (:func:`~napari_conformal.models.sampling.quantize_probabilities`;
no value moves by more than 3/4096, sums stay exactly 1), which makes the stores 2-3× smaller on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from napari_conformal.demo_data.catalog import get_demo
from napari_conformal.demo_data.packaged import data_dir, load_demo_data
from napari_conformal.errors import StoreValidationError

__all__ = ["DEMO_N_SAMPLES", "DEMO_SEED", "build_demo_store", "demo_cache_dir", "demo_store_path"]

#: T, the number of MC-dropout samples per image in a demo store.
DEMO_N_SAMPLES = 20
#: Seed of the demo stores' MC-dropout sampling.
DEMO_SEED = 0
#: Samples are stored as multiples of 1/QUANTIZATION (exact in float16, sums exactly 1).
QUANTIZATION = 2048
#: Bumped whenever the content of a demo store changes for the same inputs.
BUILDER_VERSION = 2  # 2: hippocampus-2d: six slices per volume; nuclei: 32 × 32 quadrants of the tiles
CACHE_ENV = "NAPARI_CONFORMAL_CACHE"

Progress = Callable[[int, int], Any]


def demo_cache_dir() -> Path:
    """Folder of the cached demo stores: ``$NAPARI_CONFORMAL_CACHE/demo`` or the user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "demo"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-conformal")) / "demo"


def demo_store_path(name: str, n_images: int | None = None) -> Path:
    """Where :func:`build_demo_store` caches demo ``name`` (a subset gets its own store)."""
    get_demo(name)
    suffix = "" if n_images is None else f"-n{int(n_images)}"
    return demo_cache_dir() / f"{name}{suffix}.zarr"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_key(name: str, n_images: int | None) -> dict[str, Any]:
    from napari_conformal.models.demo import demo_weights_sha256

    spec = get_demo(name)
    return {
        "name": name,
        "builder_version": BUILDER_VERSION,
        "n_images": n_images,
        "n_samples": DEMO_N_SAMPLES,
        "seed": DEMO_SEED,
        "quantization": QUANTIZATION,
        "data_sha256": _sha256(data_dir() / spec.data_file),
        "weights_sha256": demo_weights_sha256(name),
    }


def _is_dataset_store(path: Path) -> bool:
    from napari_conformal.io.validate import FORMAT_NAME

    try:
        doc = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and (doc.get("attributes") or {}).get("format") == FORMAT_NAME


def _reusable(path: Path, key: dict[str, Any]) -> bool:
    """Whether ``path`` holds a valid demo store built with ``key``."""
    from napari_conformal.io.store import open_store

    try:
        store = open_store(path)
    except (StoreValidationError, OSError):
        return False
    demo = store.attrs.get("demo")
    return isinstance(demo, dict) and demo.get("build_key") == key and "split" in store.attrs


def build_demo_store(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    n_images: int | None = None,
    device: str = "auto",
    batch_size: int = 10,
) -> Path:
    """Build (or reuse) the dataset store of demo ``name``.

    Parameters
    ----------
    name : str
        ``"hippocampus-3d"``, ``"hippocampus-2d"``, ``"brain-mri"`` or ``"nuclei"``.
    path : path-like, optional
        Where to write the store; default :func:`demo_store_path` in the cache folder.
    progress : callable, optional
        ``progress(done, total)`` after each image is sampled and written.
    should_stop : callable, optional
        Polled between batches; True raises :class:`napari_conformal.errors.Cancelled` and leaves
        nothing behind.
    overwrite : bool
        Rebuild even when a matching store exists. An explicit ``path`` holding something else is
        replaced only with ``overwrite=True`` (and only if it is a dataset store or an empty folder);
        the cache copy is rebuilt automatically when stale.
    n_images : int, optional
        Only the first calibration and test images, ``n_images`` (≥ 2) in all — for quick tests.
        The samples of an image do not depend on the subset (seeded by its source identifier).
    device : str
        Torch device of the demo model (``"auto"``, ``"cpu"``, ``"cuda[:i]"``).
    batch_size : int
        MC-dropout forward passes per batch.

    Returns
    -------
    pathlib.Path
        The store directory (open it with :func:`napari_conformal.io.store.open_store`).

    Raises
    ------
    ConformalError
        Unknown name, bad ``n_images``, missing packaged data or weights.
    FileExistsError
        ``path`` exists, is not this demo store, and ``overwrite`` is False.
    """
    from napari_conformal import __version__
    from napari_conformal.io.atomic import atomic_directory
    from napari_conformal.io.store import DatasetStore, open_store
    from napari_conformal.models.demo import load_demo_model
    from napari_conformal.models.sampling import MCDropoutSampler, quantize_probabilities

    spec = get_demo(name)
    in_cache = path is None
    target = demo_store_path(name, n_images) if in_cache else Path(path)
    if n_images is not None:
        load_demo_data(name, n_images=n_images)  # validates n_images before any work
    key = _build_key(name, n_images)
    exists = target.exists() or target.is_symlink()
    if exists and not overwrite and _reusable(target, key):
        return target
    if exists and not overwrite and not in_cache:
        raise FileExistsError(
            f"{target} already exists and is not the current {name!r} demo store; pass overwrite=True to replace it"
        )

    data = load_demo_data(name, n_images=n_images)
    model = load_demo_model(name, device=device)
    sampler = MCDropoutSampler(model, DEMO_N_SAMPLES, device=device, seed=DEMO_SEED, batch_size=batch_size)
    n = len(data.images)
    n_labels = len(spec.label_names)
    attrs = {
        "split": data.split,
        "demo": {
            "name": name,
            "title": spec.title,
            "build_key": key,
            "model": f"napari-conformal demo U-Net '{name}' (MC dropout, batch norm in eval mode)",
            "package_version": __version__,
            "source_ids": data.source_ids,
            "slices": data.slices,
            "quadrants": data.quadrants,
            "sample_keys": data.keys,
            "train_source_ids": data.train_source_ids,
            "samples_quantization": f"multiples of 1/{QUANTIZATION}",
            "licence": spec.licence,
            "licence_file": f"napari_conformal/data/demo/{spec.licence_file}",
            "attribution": spec.attribution,
        },
    }
    try:
        replaceable = (lambda p: True) if in_cache else _is_dataset_store  # the cache folder is ours
        with atomic_directory(
            target, overwrite=exists, replaceable=replaceable, what="napari-conformal dataset store"
        ) as tmp:
            store = DatasetStore.create_empty(
                tmp,
                n,
                data.images.shape[1:],
                DEMO_N_SAMPLES,
                n_labels,
                samples_dtype="float16",
                labels=True,
                spacing=spec.spacing,
                label_names=spec.label_names,
                sampler=sampler.name,
                overwrite=True,
            )
            samples = sampler.iter_samples(data.images, keys=data.keys, should_stop=should_stop)
            for i, smp in enumerate(samples):
                smp = quantize_probabilities(smp, axis=1, denominator=QUANTIZATION)
                store.write_image(i, image=data.images[i], samples=smp, label=data.labels[i])
                if progress is not None:
                    progress(i + 1, n)
            zarr.open_group(str(tmp), mode="r+").attrs.update(attrs)
            open_store(tmp).validate(full=False)
    except FileExistsError:
        # another process finished the same store first
        if _reusable(target, key):
            return target
        raise
    return target
