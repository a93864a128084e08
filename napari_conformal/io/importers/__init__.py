"""Bring your own model's data into a dataset store: nnU-Net folders, arrays on disk, arrays in memory.

Three ways in, one engine (:mod:`~napari_conformal.io.importers.build`): every case is checked before
anything is written, the store is written under a temporary name and renamed into place, and a failure,
a cancel or an interrupt leaves no store behind.

* :func:`import_nnunet` — ``nnUNetv2_predict --save_probabilities`` output, one folder per fold/member
  (:mod:`~napari_conformal.io.importers.nnunet`).
* :func:`import_arrays` — per-case NumPy / NPZ / TIFF / zarr files (:mod:`~napari_conformal.io.importers.arrays`).
* :func:`build_store` — arrays in memory (:mod:`~napari_conformal.io.importers.memory`).

Each has an ``iter_…`` twin that yields :class:`~napari_conformal.core.progress.Step` values (stages
``"headers"``, ``"checking"``, ``"writing"``) for a progress bar or a napari worker. The store records
the case names (``attrs["case_names"]``, image ``i`` is case ``case_names[i]``) and how it was made
(``attrs["import"]``). A model with no samples yet: :func:`napari_conformal.models.store_sampler.sample_store`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from napari_conformal.core.progress import Step
from napari_conformal.io.importers.arrays import iter_import_arrays
from napari_conformal.io.importers.build import iter_import
from napari_conformal.io.importers.memory import memory_cases
from napari_conformal.io.importers.nnunet import iter_import_nnunet

__all__ = [
    "build_store",
    "import_arrays",
    "import_nnunet",
    "iter_build_store",
    "iter_import_arrays",
    "iter_import_nnunet",
]

Progress = Callable[..., Any]


def _drive(gen: Generator[Step, None, Path], progress: Progress | None) -> Any:
    from napari_conformal.io.store import open_store

    try:
        while True:
            step = next(gen)
            if progress is not None:
                progress(step[0], step[1], step.stage)
    except StopIteration as stop:
        return open_store(stop.value)


def import_nnunet(
    images: str | os.PathLike[str],
    members: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    channel: int | None = None,
    npz_order: str = "voxel",
    pad: bool = False,
    label_names: Sequence[str] | None = None,
    samples_dtype: str = "float16",
    precheck: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Import nnU-Net v2 predictions (NIfTI images/labels, ``.npz`` probabilities) into a new store.

    Parameters
    ----------
    images : path-like
        Folder of ``CASE_0000.nii.gz`` (and ``CASE_0001`` … for further channels).
    members : sequence of path-like
        One folder per fold or ensemble member, each holding ``CASE.npz`` with ``probabilities`` of
        shape (C, z, y, x); T = the number of folders.
    out : path-like
        The new store.
    labels : path-like, optional
        Folder of ``CASE.nii.gz`` ground truth (0..C−1); without it the store has no labels.
    channel : int, optional
        The image channel to store when the images have several (refused without it).
    npz_order : {"voxel", "ras"}
        "voxel": probabilities on the file's own voxel grid (nnU-Net's default SimpleITK / NibabelIO
        readers); "ras": made with ``NibabelIOWithReorient`` (closest-RAS grid), mapped back.
    pad : bool
        Pad cases of different shapes to the largest (centred; see :mod:`~napari_conformal.io.importers.build`).
    label_names : sequence of str, optional
        C class names, background first; default from an nnU-Net ``dataset.json`` in a member folder or
        beside the images, else ``background, class 1, …``.
    samples_dtype : {"float16", "float32"}
        Storage precision of the samples.
    precheck : bool
        Check every value before writing (two reads of the inputs); False checks while writing into
        the temporary store (one read; an error still leaves nothing behind).
    overwrite : bool
        Replace an existing store at ``out``.
    progress : callable, optional
        ``progress(done, total, stage)`` after each case of each stage.
    should_stop : callable, optional
        Polled between cases; True cancels (:class:`~napari_conformal.errors.Cancelled`), leaving no store.

    Returns
    -------
    DatasetStore
        The new store, opened read-only. The axis rule: store ``(z, y, x)`` = NIfTI voxel ``(k, j, i)``
        = the npz's ``(z, y, x)``; spacing = ``pixdim`` reversed, in mm (docs/own_model.md).

    Raises
    ------
    ImportInputError
        Case names that do not match, shape or spacing mismatches, probabilities that are NaN or do not
        sum to 1, labels ≥ C, … — one message naming the case, the file and (for shapes) both shapes.
    """
    gen = iter_import_nnunet(
        images,
        labels,
        members,
        out,
        channel=channel,
        npz_order=npz_order,
        pad=pad,
        label_names=label_names,
        samples_dtype=samples_dtype,
        precheck=precheck,
        overwrite=overwrite,
        should_stop=should_stop,
    )
    return _drive(gen, progress)


def import_arrays(
    images: str | os.PathLike[str],
    samples: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    logits: bool = False,
    spatial_order: str = "zyx",
    spacing: Sequence[float] | None = None,
    pad: bool = False,
    label_names: Sequence[str] | None = None,
    samples_dtype: str = "float16",
    precheck: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Import per-case array files (NumPy, NPZ, TIFF, zarr; NIfTI images/labels) into a new store.

    Parameters
    ----------
    images : path-like
        Folder with one image ``CASE.<suffix>`` (*S) per case.
    samples : sequence of path-like
        Folders of sample files: ``CASE.<suffix>`` of shape (T, L, *S) (a stack) or (L, *S) (one sample,
        e.g. one folder per ensemble member); a case's samples are those of every folder, in order.
    out : path-like
        The new store.
    labels : path-like, optional
        Folder of ground-truth files ``CASE.<suffix>`` (*S), integers 0..L−1.
    logits : bool
        The sample files hold logits: apply a softmax over L.
    spatial_order : {"zyx", "xyz"}
        Axis order of the NumPy/TIFF/zarr arrays' spatial axes; "xyz" (nibabel/MONAI) reverses them.
    spacing : sequence of float, optional
        Voxel size in mm per store axis (Z, Y, X) when the images are not NIfTI (default 1.0).
    pad, label_names, samples_dtype, precheck, overwrite, progress, should_stop
        As for :func:`import_nnunet`.

    Returns
    -------
    DatasetStore
        The new store, opened read-only.

    Raises
    ------
    ImportInputError
        Naming the case, the file and (for shapes) both shapes.
    """
    gen = iter_import_arrays(
        images,
        samples,
        out,
        labels=labels,
        logits=logits,
        spatial_order=spatial_order,
        spacing=spacing,
        pad=pad,
        label_names=label_names,
        samples_dtype=samples_dtype,
        precheck=precheck,
        overwrite=overwrite,
        should_stop=should_stop,
    )
    return _drive(gen, progress)


def iter_build_store(
    out: str | os.PathLike[str],
    images: Any,
    samples: Any,
    labels: Any | None = None,
    *,
    case_names: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    label_names: Sequence[str] | None = None,
    logits: bool = False,
    pad: bool = False,
    sampler: str = "unknown",
    samples_dtype: str = "float16",
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Path]:
    """:func:`build_store` as a generator of progress steps (for a napari worker)."""
    cases = memory_cases(images, samples, labels, case_names=case_names, logits=logits)
    return (
        yield from iter_import(
            cases,
            out,
            pad=pad,
            spacing=spacing,
            label_names=label_names,
            sampler=sampler,
            samples_dtype=samples_dtype,
            record={"importer": "arrays in memory", "logits": bool(logits)},
            precheck=True,
            overwrite=overwrite,
            should_stop=should_stop,
        )
    )


def build_store(
    out: str | os.PathLike[str],
    images: Any,
    samples: Any,
    labels: Any | None = None,
    *,
    case_names: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    label_names: Sequence[str] | None = None,
    logits: bool = False,
    pad: bool = False,
    sampler: str = "unknown",
    samples_dtype: str = "float16",
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Build a store from arrays in memory, with the importers' checks, padding and softmax.

    Unlike :func:`~napari_conformal.io.store.create_store` the cases may be given one by one (a list,
    shapes may differ with ``pad=True``), samples may be logits, and the store records the case names.

    Parameters
    ----------
    out : path-like
        The new store.
    images : array (N, *S) or list of N arrays (*S)
        Real-valued images, S = (Y, X) or (Z, Y, X).
    samples : array (N, T, L, *S) or list of N arrays (T, L, *S)
        Softmax probabilities (or logits with ``logits=True``), L ≥ 2, background first.
    labels : integer array (N, *S) or list of N arrays (*S), optional
        Ground truth in 0..L−1.
    case_names : sequence of str, optional
        N names (default ``case_000``, …).
    spacing : sequence of float, optional
        Voxel size in mm per spatial axis (default 1.0).
    label_names : sequence of str, optional
        L class names, background first.
    logits : bool
        Apply a softmax over L to every sample.
    pad : bool
        Pad cases of different shapes to the largest (centred).
    sampler : str
        The store's ``sampler`` attribute ("mc-dropout", "ensemble", …).
    samples_dtype : {"float16", "float32"}
        Storage precision of the samples.
    overwrite : bool
        Replace an existing store at ``out``.
    progress : callable, optional
        ``progress(done, total, stage)``.
    should_stop : callable, optional
        Polled between cases; True cancels, leaving no store.

    Returns
    -------
    DatasetStore
        The new store, opened read-only.

    Raises
    ------
    ImportInputError
        A case whose arrays do not fit or hold invalid values (naming the case).
    """
    gen = iter_build_store(
        out,
        images,
        samples,
        labels,
        case_names=case_names,
        spacing=spacing,
        label_names=label_names,
        logits=logits,
        pad=pad,
        sampler=sampler,
        samples_dtype=samples_dtype,
        overwrite=overwrite,
        should_stop=should_stop,
    )
    return _drive(gen, progress)
