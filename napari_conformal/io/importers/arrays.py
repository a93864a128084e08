"""Arrays on disk (MONAI / PyTorch / NumPy outputs) into a dataset store, cases matched by file name.

The folders::

    images/    CASE.npy | .npz | .tif | .zarr | .nii.gz      one image (*S) per case
    labels/    CASE.…                                         (optional) ground truth (*S), integers
    samples/   CASE.…  (T, L, *S)                             every sample of a case in one file, or
    member_1/  CASE.…  (L, *S)   member_2/ …                  one folder per member, one sample per file

Every ``samples`` folder given adds its samples to each case, in the order given: a file with one axis
more than the image is one sample ``(L, *S)``, with two more a stack ``(T, L, *S)``. So one folder of
stacks, one folder per ensemble member, or a mix all work. A case's file is ``CASE.<suffix>`` in every
folder; ``CASE_samples.<suffix>`` (napari-conformal's own sample files) also names ``CASE``.

``logits=True`` applies a softmax over L to every sample first. A ``.npz`` is read through its only
array, or the one named ``probabilities``, ``samples``, ``logits``, ``image``, ``label`` or ``data``.

Axis order: NumPy, TIFF and zarr arrays are taken as ``(…, Z, Y, X)`` (numpy / napari order);
``spatial_order="xyz"`` says they are ``(…, X, Y, Z)`` (nibabel and MONAI order) and reverses their
spatial axes. NIfTI images and labels are always read as NIfTI voxel ``(i, j, k)`` reversed
(:mod:`napari_conformal.io.importers.files`). Spacing comes from NIfTI images, else from ``spacing``
(mm per store axis), else 1 mm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.core.progress import Step
from napari_conformal.errors import ImportInputError
from napari_conformal.io.importers.build import (
    CaseArrays,
    CaseHeader,
    CaseSource,
    checked_image,
    checked_label,
    checked_sample,
    iter_import,
)
from napari_conformal.io.importers.cases import check_label_names, find_case_files, match_cases
from napari_conformal.io.importers.files import (
    ARRAY_SUFFIXES,
    InputFile,
    case_name_of,
    npz_members,
    open_input,
)
from napari_conformal.io.paths import suffix_of

__all__ = ["ArrayFilesCase", "array_cases", "iter_import_arrays"]

_NPZ_KEYS = {
    "image": ("image", "images", "data", "img"),
    "label": ("label", "labels", "seg", "mask", "data"),
    "samples": ("probabilities", "samples", "logits", "probs", "data"),
}
_ORDERS = ("zyx", "xyz")


def _case_of(path: Path) -> str:
    return case_name_of(path).removesuffix("_samples") or case_name_of(path)


def _open(path: Path, role: str, reverse: bool) -> InputFile:
    key = None
    if suffix_of(path) == ".npz":
        members = npz_members(path)
        if len(members) != 1:
            known = [k for k in _NPZ_KEYS[role] if k in members]
            if not known:
                raise ImportInputError(
                    f"{path}: the archive holds {len(members)} arrays ({', '.join(members) or 'none'}); for the "
                    f"{role} name one of them {', '.join(_NPZ_KEYS[role])}, or keep one array per file"
                )
            key = known[0]
    return open_input(path, key=key, reverse_spatial=reverse)


class ArrayFilesCase(CaseSource):
    """One case of the arrays importer: an image file, a label file, one or more sample files."""

    def __init__(
        self,
        name: str,
        image: Path,
        label: Path | None,
        samples: Sequence[Path],
        *,
        spatial_order: str = "zyx",
        logits: bool = False,
    ) -> None:
        self.name = name
        self.image_path = image
        self.label_path = label
        self.sample_paths = list(samples)
        self.reverse = spatial_order == "xyz"
        self.logits = logits
        self._header: CaseHeader | None = None
        self._files: tuple[InputFile, InputFile | None, list[tuple[InputFile, int]]] | None = None

    def _open_files(self) -> tuple[InputFile, InputFile | None, list[tuple[InputFile, int]]]:
        if self._files is not None:
            return self._files
        image = _open(self.image_path, "image", self.reverse)
        s = image.shape()
        if len(s) not in (2, 3) or min(s) < 1:
            raise ImportInputError(
                f"case {self.name!r}: image {image.path} has shape {image.raw_shape}; expected (Y, X) or (Z, Y, X)"
            )
        label = None
        if self.label_path is not None:
            label = _open(self.label_path, "label", self.reverse)
            if label.shape() != s:
                raise ImportInputError(
                    f"case {self.name!r}: shape mismatch: label {label.path} has shape {label.shape()} but image "
                    f"{image.path} has {s} (store order)"
                )
        samples = []
        n_labels = None
        for path in self.sample_paths:
            if suffix_of(path) in (".nii", ".nii.gz"):
                raise ImportInputError(
                    f"case {self.name!r}: {path}: samples cannot be NIfTI; save them as .npy/.npz/.tif/zarr "
                    "(C, *S) or (T, C, *S)"
                )
            f = _open(path, "samples", self.reverse)
            shape = f.shape(len(s))
            if len(shape) == len(s) + 1:
                t = 1
            elif len(shape) == len(s) + 2:
                t = shape[0]
            else:
                raise ImportInputError(
                    f"case {self.name!r}: shape mismatch: samples {path} have shape {shape}, image {image.path} "
                    f"{s}: expected one sample (L, *S) = (L, {', '.join(map(str, s))}) or a stack (T, L, *S)"
                )
            if tuple(shape[-len(s) :]) != s:
                raise ImportInputError(
                    f"case {self.name!r}: shape mismatch: samples {path} have shape {shape}, image {image.path} "
                    f"{s}: the trailing axes must be the image's S = {s}"
                    + (" (are the arrays in (x, y, z) order? then pass --spatial-order xyz)" if tuple(shape[-len(s) :]) == s[::-1] else "")
                )
            ll = shape[-len(s) - 1]
            if ll < 2:
                raise ImportInputError(
                    f"case {self.name!r}: samples {path} have L = {ll} class (shape {shape}); need L >= 2, background "
                    "first (a binary model: stack (1 - p, p))"
                )
            if n_labels is None:
                n_labels, first = ll, path
            elif ll != n_labels:
                raise ImportInputError(
                    f"case {self.name!r}: samples {path} have L = {ll} classes but {first} have L = {n_labels}"
                )
            if not np.issubdtype(f.dtype, np.floating):
                raise ImportInputError(
                    f"case {self.name!r}: samples {path} have dtype {f.dtype}, expected floating-point "
                    "probabilities (or logits with --logits)"
                )
            samples.append((f, t))
        self._files = (image, label, samples)
        return self._files

    def header(self) -> CaseHeader:
        if self._header is None:
            image, label, samples = self._open_files()
            s = image.shape()
            self._header = CaseHeader(
                name=self.name,
                spatial_shape=s,
                n_samples=sum(t for _, t in samples),
                n_labels=samples[0][0].shape(len(s))[-len(s) - 1],
                has_label=label is not None,
                spacing=image.spacing,
                where=str(image.path),
                record={
                    "image": str(image.path),
                    "label": None if label is None else str(label.path),
                    "samples": [str(f.path) for f, _ in samples],
                },
            )
        return self._header

    def _each_sample(self, samples_dtype: np.dtype) -> Any:
        head = self.header()
        s = head.spatial_shape
        _, _, samples = self._open_files()
        for f, t in samples:
            values = f.read(len(s))
            stack = values[np.newaxis] if t == 1 and values.ndim == len(s) + 1 else values
            for k in range(stack.shape[0]):
                where = f"samples {f.path}" + (f" (sample {k})" if stack.shape[0] > 1 else "")
                yield checked_sample(self.name, where, np.asarray(stack[k]), s, samples_dtype, logits=self.logits)

    def _image_and_label(self) -> tuple[np.ndarray, np.ndarray | None]:
        head = self.header()
        image_file, label_file, _ = self._open_files()
        image = checked_image(self.name, f"image {image_file.path}", image_file.read(), head.spatial_shape)
        label = None
        if label_file is not None:
            label = checked_label(self.name, f"label {label_file.path}", label_file.read(), head.spatial_shape, head.n_labels)
        return image, label

    def load(self, samples_dtype: np.dtype) -> CaseArrays:
        head = self.header()
        image, label = self._image_and_label()
        out = np.empty((head.n_samples, head.n_labels, *head.spatial_shape), dtype=samples_dtype)
        for t, sample in enumerate(self._each_sample(samples_dtype)):
            out[t] = sample
        return CaseArrays(image, out, label)

    def check(self, samples_dtype: np.dtype) -> None:
        self._image_and_label()
        for _ in self._each_sample(samples_dtype):
            pass


def array_cases(
    images: str | os.PathLike[str],
    samples: Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str] | None = None,
    *,
    spatial_order: str = "zyx",
    logits: bool = False,
) -> list[ArrayFilesCase]:
    """The cases of the arrays importer's folders, matched by name.

    Raises
    ------
    ImportInputError
        Missing folders, no case files, case names that do not match.
    """
    if spatial_order not in _ORDERS:
        raise ImportInputError(f"spatial order must be 'zyx' or 'xyz', got {spatial_order!r}")
    if isinstance(samples, str | os.PathLike) or len(samples) < 1:
        raise ImportInputError("samples: give at least one folder of sample files")
    image_folder = find_case_files(images, role="image", suffixes=ARRAY_SUFFIXES)
    others = []
    label_folder = None
    if labels is not None:
        label_folder = find_case_files(labels, role="label", suffixes=ARRAY_SUFFIXES)
        others.append(label_folder)
    sample_folders = []
    for k, folder in enumerate(samples):
        role = f"samples folder {k + 1} ({Path(os.fspath(folder)).name})" if len(samples) > 1 else "samples"
        sample_folders.append(
            find_case_files(folder, role=role, suffixes=ARRAY_SUFFIXES, name_of=_case_of, expected=lambda c: f"{c}.npy")
        )
    names = match_cases(image_folder, others + sample_folders)
    return [
        ArrayFilesCase(
            case,
            image_folder.files[case],
            None if label_folder is None else label_folder.files[case],
            [f.files[case] for f in sample_folders],
            spatial_order=spatial_order,
            logits=logits,
        )
        for case in names
    ]


def iter_import_arrays(
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
    sampler: str | None = None,
    precheck: bool = True,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Path]:
    """:func:`napari_conformal.io.importers.import_arrays` as a generator of progress steps."""
    cases = array_cases(images, samples, labels, spatial_order=spatial_order, logits=logits)
    head = cases[0].header()
    names = check_label_names(label_names, head.n_labels, f"the samples of case {cases[0].name!r}")
    folders = [Path(os.fspath(f)) for f in samples]
    record = {
        "importer": "arrays",
        "images": str(Path(os.fspath(images)).resolve()),
        "labels": None if labels is None else str(Path(os.fspath(labels)).resolve()),
        "samples": [str(f.resolve()) for f in folders],
        "logits": bool(logits),
        "spatial_order": spatial_order,
        "axes": "arrays as (…, Z, Y, X)" if spatial_order == "zyx" else "arrays as (…, X, Y, Z), spatial axes reversed",
    }
    if sampler is None:
        sampler = "ensemble" if len(folders) > 1 else "unknown"
    return (
        yield from iter_import(
            cases,
            out,
            pad=pad,
            spacing=spacing,
            label_names=names,
            sampler=sampler,
            samples_dtype=samples_dtype,
            record=record,
            precheck=precheck,
            overwrite=overwrite,
            should_stop=should_stop,
        )
    )
