"""The import engine: cases in, one dataset store out, everything checked before the store exists.

Every importer (nnU-Net folders, arrays on disk, arrays in memory, a model's samples) describes its data
as a list of :class:`CaseSource` objects, one per image of the store, and hands them to
:func:`iter_import`, which

1. reads every case's **header** (shapes, classes, samples, spacing; no voxel data) and checks that the
   cases fit one store: same number of samples T and classes L, the same spacing, and the same spatial
   shape (or ``pad=True``: every case padded to the largest shape);
2. **checks** every case's values (``precheck=True``): images finite, probabilities finite, in [0, 1] and
   summing to 1 in the stored dtype, labels integers in 0..L−1 — before anything is written;
3. **writes** the store under a temporary sibling name, case by case, and renames it into place when the
   last case is written. An error, a cancel (``should_stop``, or closing the generator) or an interrupt
   removes the temporary folder: the target is either the complete new store or untouched.

Messages name the case, the file and, for a shape mismatch, both shapes.

Memory: one case at a time, and a case's T samples are checked one sample at a time, so the peak is about
one case's samples in the stored dtype plus one sample in float32 (plus zarr's buffer for the chunk).

Padding (``pad=True``): a case smaller than the largest one is centred in it (offset ``(big − small) // 2``
per axis, recorded per case); the image is padded with its own minimum, the ground truth with 0
(background) and every sample with probability 1 for class 0 (certain background). The padded voxels are
background in both the truth and every sample, so they add no false negatives; they do count as correctly
labelled background voxels for accuracy-type scores.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.core.progress import Step, check_stop
from napari_conformal.core.validation import check_finite, check_label, check_samples
from napari_conformal.errors import ConformalError, ImportInputError, StoreValidationError

__all__ = [
    "CaseArrays",
    "CaseHeader",
    "CaseSource",
    "check_headers",
    "checked_image",
    "checked_label",
    "checked_sample",
    "iter_import",
    "pad_case",
    "softmax",
]

_WHAT = "napari-conformal dataset store"
_SAMPLES_DTYPES = ("float16", "float32")
_LOGITS_HINT = " (are these logits? then apply a softmax: --logits / logits=True)"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class CaseHeader:
    """What a case's headers say, before any voxel is read.

    Attributes
    ----------
    name : str
        Case name (recorded in the store's ``case_names``).
    spatial_shape : tuple of int
        S in store order, ``(Y, X)`` or ``(Z, Y, X)``.
    n_samples : int
        T.
    n_labels : int or None
        L; None when only reading the data tells (a model's output), for every case alike.
    has_label : bool
        Whether the case has a ground truth.
    spacing : tuple of float or None
        Voxel size in mm per store axis when a file records it (NIfTI), else None.
    where : str
        The case's main file (its image), for messages.
    record : dict
        JSON description of the case's files (kept in the store's ``import`` attribute).
    """

    name: str
    spatial_shape: tuple[int, ...]
    n_samples: int
    n_labels: int | None
    has_label: bool
    spacing: tuple[float, ...] | None
    where: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseArrays:
    """One case as it will be stored, values checked.

    Attributes
    ----------
    image : ndarray of float32, shape S
    samples : ndarray, shape (T, L, *S), in the stored dtype
    label : integer ndarray, shape S, or None
    """

    image: np.ndarray
    samples: np.ndarray
    label: np.ndarray | None


class CaseSource(ABC):
    """One case of an import: cheap :meth:`header`, full :meth:`load`.

    Subclasses read their files in :meth:`load` and check every value with :func:`checked_image`,
    :func:`checked_sample` and :func:`checked_label`, which name the case and the file.
    """

    #: Case name.
    name: str

    @abstractmethod
    def header(self) -> CaseHeader:
        """Shapes, classes, samples and spacing from the files' headers (no voxel data)."""

    @abstractmethod
    def load(self, samples_dtype: np.dtype) -> CaseArrays:
        """Every value of the case, in store order, checked; samples cast to ``samples_dtype``."""

    def check(self, samples_dtype: np.dtype) -> None:
        """Check every value without keeping it (default: :meth:`load` and drop)."""
        self.load(samples_dtype)


# --------------------------------------------------------------------------------- value checks


def _case_error(case: str, where: str, exc: Exception) -> ImportInputError:
    text = _one_line(str(exc))
    for prefix in ("images: ", "labels: ", "samples: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return ImportInputError(f"case {case!r}: {where}: {text}")


def checked_image(case: str, where: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The image as float32 after checking its shape, dtype and finiteness (messages name case and file)."""
    arr = np.asarray(values)
    if tuple(arr.shape) != tuple(shape):
        raise ImportInputError(f"case {case!r}: {where}: image of shape {arr.shape}, expected {tuple(shape)}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_):
        raise ImportInputError(f"case {case!r}: {where}: image of dtype {arr.dtype}, expected real numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        img = arr.astype(np.float32)
    try:
        check_finite("image", img)
    except StoreValidationError as exc:
        raise _case_error(case, where, exc) from None
    return img


def checked_label(
    case: str, where: str, values: np.ndarray, shape: tuple[int, ...], n_labels: int
) -> np.ndarray:
    """The ground truth as the smallest unsigned dtype, after checking shape, integrality and 0..L−1.

    Float label files (NIfTI often stores them so) are accepted when every value is a whole number.
    """
    from napari_conformal.io.validate import labels_storage_dtype

    arr = np.asarray(values)
    if tuple(arr.shape) != tuple(shape):
        raise ImportInputError(
            f"case {case!r}: {where}: label of shape {arr.shape}, expected the image's {tuple(shape)}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            bad = ~np.isfinite(arr) | (arr != np.round(np.nan_to_num(arr)))
            at = tuple(int(k) for k in np.unravel_index(int(np.argmax(bad)), arr.shape))
            raise ImportInputError(
                f"case {case!r}: {where}: label value {arr[at]} at voxel {at} is not a whole class number"
            )
        arr = arr.astype(np.int64)
    try:
        lab = check_label(arr, n_labels=n_labels)
    except StoreValidationError as exc:
        text = _one_line(str(exc)).removeprefix("labels: ")
        raise ImportInputError(
            f"case {case!r}: {where}: {text}; the probabilities have C = {n_labels} classes, so labels must be "
            f"0..{n_labels - 1}"
        ) from None
    return lab.astype(labels_storage_dtype(n_labels))


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax of ``logits`` along ``axis`` in float32 (the maximum subtracted first); NaN stays NaN."""
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        x = x - x.max(axis=axis, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=axis, keepdims=True)
    return x


def checked_sample(
    case: str,
    where: str,
    values: np.ndarray,
    shape: tuple[int, ...],
    samples_dtype: np.dtype,
    *,
    logits: bool = False,
) -> np.ndarray:
    """One sample ``(L, *S)`` as stored: softmax applied when ``logits``, cast to ``samples_dtype``, checked.

    The check is the store's (:func:`napari_conformal.core.validation.check_samples`): finite, in [0, 1],
    summing to 1 over L within the tolerance of ``samples_dtype`` at every voxel.
    """
    arr = np.asarray(values)
    if tuple(arr.shape[1:]) != tuple(shape) or arr.ndim != len(shape) + 1:
        raise ImportInputError(
            f"case {case!r}: {where}: probabilities of shape {arr.shape}, expected (C, *S) with S = {tuple(shape)}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ImportInputError(
            f"case {case!r}: {where}: probabilities of dtype {arr.dtype}, expected floating point"
        )
    if logits:
        try:
            check_finite("logits", np.asarray(arr, dtype=np.float32))
        except StoreValidationError as exc:
            raise _case_error(case, where, exc) from None
        arr = softmax(arr, axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = arr.astype(samples_dtype)
    try:
        check_samples(stored[np.newaxis], stored_dtype=samples_dtype)
    except StoreValidationError:
        problem = _probability_problem(stored, samples_dtype)
        hint = ""
        if "sum to 1" in problem:
            from napari_conformal.core.validation import sum_tolerance

            if sum_tolerance(arr.dtype) > sum_tolerance(samples_dtype):
                hint = (
                    f" (the file holds {arr.dtype}, whose rounding alone moves the sums by up to "
                    f"{sum_tolerance(arr.dtype):g}: store them as {arr.dtype}, --samples-dtype {arr.dtype})"
                )
            elif not logits:
                hint = _LOGITS_HINT
        elif "outside [0, 1]" in problem and not logits:
            hint = _LOGITS_HINT
        raise ImportInputError(f"case {case!r}: {where}: {problem}{hint}") from None
    return stored


def _axes_text(ndim: int, first: str = "") -> str:
    axes = ("y", "x") if ndim == 2 else ("z", "y", "x")
    return "(" + ", ".join(((first,) if first else ()) + axes) + ")"


def _where_of(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(k) for k in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _probability_problem(stored: np.ndarray, samples_dtype: np.dtype) -> str:
    """What is wrong with one sample ``(L, *S)`` that failed the store's check, in words."""
    from napari_conformal.core.validation import sum_tolerance

    values = stored.astype(np.float32)
    spatial = _axes_text(values.ndim - 1)
    finite = np.isfinite(values)
    if not finite.all():
        kinds = "/".join(k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(values).any())
        at = _where_of(~finite)
        return f"{int((~finite).sum())} non-finite probabilities ({kinds}), first at {_axes_text(values.ndim - 1, 'class')} = {at}"
    if values.min() < 0 or values.max() > 1:
        at = _where_of((values < 0) | (values > 1))
        return f"probability {values[at]:g} outside [0, 1] at {_axes_text(values.ndim - 1, 'class')} = {at}"
    total = values.sum(axis=0, dtype=np.float32)
    dev = np.abs(total - 1)
    tol = sum_tolerance(samples_dtype)
    at = _where_of(dev == dev.max())
    return (
        f"probabilities do not sum to 1 over the C = {values.shape[0]} classes: sum {float(total[at]):.6g} at voxel "
        f"{spatial} = {at}, {int((dev > tol).sum())} voxel(s) off by more than {tol:g} (stored as {np.dtype(samples_dtype)})"
    )


# ---------------------------------------------------------------------------------------- padding


def pad_case(data: CaseArrays, shape: tuple[int, ...]) -> tuple[CaseArrays, tuple[int, ...]]:
    """``data`` centred in ``shape`` (see the module docstring for the fill values) and its offset."""
    own = tuple(data.image.shape)
    if own == tuple(shape):
        return data, (0,) * len(shape)
    offset = tuple((big - small) // 2 for big, small in zip(shape, own, strict=True))
    where = tuple(slice(o, o + s) for o, s in zip(offset, own, strict=True))
    image = np.full(shape, data.image.min() if data.image.size else 0.0, dtype=np.float32)
    image[where] = data.image
    t, ll = data.samples.shape[:2]
    samples = np.zeros((t, ll, *shape), dtype=data.samples.dtype)
    samples[:, 0] = 1
    samples[(slice(None), slice(None), *where)] = data.samples
    label = None
    if data.label is not None:
        label = np.zeros(shape, dtype=data.label.dtype)
        label[where] = data.label
    return CaseArrays(image, samples, label), offset


# ----------------------------------------------------------------------------------------- engine


def _is_store(path: Path) -> bool:
    from napari_conformal.io.paths import path_kind

    return path_kind(path) == "store"


def _samples_dtype(value: Any) -> np.dtype:
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _SAMPLES_DTYPES:
        raise ConformalError(f"samples_dtype must be float16 or float32, got {value!r}")
    return dt


def _same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) for x, y in zip(a, b, strict=True))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def check_headers(
    headers: Sequence[CaseHeader], *, pad: bool, spacing: Sequence[float] | None
) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """The store's spatial shape and spacing after checking that the cases fit one store.

    Raises
    ------
    ImportInputError
        Naming the two cases (and their files) that disagree on T, L, labels, spacing or shape.
    """
    if not headers:
        raise ImportInputError("no cases to import")
    first = headers[0]
    for h in headers[1:]:
        if len(h.spatial_shape) != len(first.spatial_shape):
            raise ImportInputError(
                f"case {h.name!r}: {h.where} has {len(h.spatial_shape)} spatial axes {h.spatial_shape}, "
                f"case {first.name!r} ({first.where}) has {len(first.spatial_shape)} {first.spatial_shape}"
            )
        if h.n_labels != first.n_labels and None not in (h.n_labels, first.n_labels):
            raise ImportInputError(
                f"case {h.name!r}: {h.n_labels} classes but case {first.name!r} has {first.n_labels} "
                f"({h.where} vs {first.where})"
            )
        if h.n_samples != first.n_samples:
            raise ImportInputError(
                f"case {h.name!r}: {h.n_samples} samples but case {first.name!r} has {first.n_samples}"
            )
        if h.has_label != first.has_label:
            with_, without = (h, first) if h.has_label else (first, h)
            raise ImportInputError(
                f"case {without.name!r} has no ground truth but case {with_.name!r} has one: give a label for "
                "every case or for none"
            )
    recorded = [h for h in headers if h.spacing is not None]
    if recorded and spacing is not None:
        raise ImportInputError(
            f"spacing is given but the files record their own (case {recorded[0].name!r}: "
            f"{_fmt(recorded[0].spacing)} mm from {recorded[0].where}); leave spacing out"
        )
    store_spacing = tuple(float(s) for s in spacing) if spacing is not None else None
    if recorded:
        ref = recorded[0]
        for h in recorded[1:]:
            if not _same_spacing(h.spacing, ref.spacing):
                raise ImportInputError(
                    f"spacing mismatch: case {h.name!r} ({h.where}) has voxels of {_fmt(h.spacing)} mm, case "
                    f"{ref.name!r} ({ref.where}) {_fmt(ref.spacing)} mm (z, y, x); the store holds one spacing: "
                    "resample the cases to a common spacing first"
                )
        if len(recorded) != len(headers):
            missing = next(h for h in headers if h.spacing is None)
            raise ImportInputError(
                f"case {missing.name!r} ({missing.where}) records no spacing but case {ref.name!r} does"
            )
        store_spacing = ref.spacing
    shapes = [h.spatial_shape for h in headers]
    if pad:
        shape = tuple(max(s[a] for s in shapes) for a in range(len(first.spatial_shape)))
    else:
        shape = first.spatial_shape
        for h in headers[1:]:
            if h.spatial_shape != shape:
                raise ImportInputError(
                    f"shape mismatch between cases: case {h.name!r} ({h.where}) has shape {h.spatial_shape}, case "
                    f"{first.name!r} ({first.where}) has {shape}; a store holds one shape for every image: pad the "
                    "smaller cases to the largest shape with --pad (pad=True)"
                )
    return shape, store_spacing


def iter_import(
    sources: Sequence[CaseSource],
    out: str | os.PathLike[str],
    *,
    pad: bool = False,
    spacing: Sequence[float] | None = None,
    label_names: Sequence[str] | None = None,
    sampler: str = "unknown",
    samples_dtype: str | np.dtype = "float16",
    record: dict[str, Any] | None = None,
    precheck: bool = True,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Path]:
    """Check every case, then write the store atomically; a generator of progress steps.

    Parameters
    ----------
    sources : sequence of CaseSource
        The cases, in store order (image ``i`` is ``sources[i]``).
    out : path-like
        The store to create; must not exist unless ``overwrite`` (which replaces only a dataset store
        or an empty folder).
    pad : bool
        Pad every case to the largest shape (module docstring) instead of refusing different shapes.
    spacing : sequence of float, optional
        Voxel size in mm per store axis when the files record none (default 1.0).
    label_names : sequence of str, optional
        L class names, background first.
    sampler : str
        The store's ``sampler`` attribute.
    samples_dtype : {"float16", "float32"}
        Storage precision of the samples.
    record : dict, optional
        JSON description of the import, stored as the ``import`` attribute with a ``cases`` entry added.
    precheck : bool
        Check every value of every case before writing anything (True), or check each case as it is
        written into the temporary store (False: one read of the inputs instead of two; an error still
        leaves no store behind).
    overwrite : bool
        Replace an existing store at ``out``.
    should_stop : callable, optional
        Polled between cases; True raises :class:`~napari_conformal.errors.Cancelled` (no store is left).

    Yields
    ------
    Step
        ``(done, total)`` cases in stages ``"headers"``, ``"checking"`` and ``"writing"``.

    Returns
    -------
    pathlib.Path
        ``out`` (the generator's return value).

    Raises
    ------
    ImportInputError
        The cases do not fit together or a value is invalid (naming the case and the file).
    StoreExistsError
        ``out`` exists and ``overwrite`` is False, or it is not a store.
    """
    import zarr

    from napari_conformal import __version__
    from napari_conformal.io.atomic import atomic_directory, check_target
    from napari_conformal.io.store import DatasetStore, open_store
    from napari_conformal.io.store_write import write_one
    from napari_conformal.io.validate import normalize_label_names

    sdt = _samples_dtype(samples_dtype)
    target = check_target(out, overwrite=overwrite, replaceable=_is_store, what=_WHAT)
    parent = target.resolve().parent
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise ImportInputError(f"the folder {parent} of the store {target} is not writable")
    sources = list(sources)
    n = len(sources)
    if n == 0:
        raise ImportInputError("no cases to import")
    names = [s.name for s in sources]
    if len(set(names)) != n:
        dup = next(x for x in names if names.count(x) > 1)
        raise ImportInputError(f"case {dup!r} appears twice")

    headers = []
    yield Step(0, n, "headers")
    for i, src in enumerate(sources):
        check_stop(should_stop)
        headers.append(src.header())
        yield Step(i + 1, n, "headers")
    shape, store_spacing = check_headers(headers, pad=pad, spacing=spacing)
    first = headers[0]
    n_samples, has_labels = first.n_samples, first.has_label

    def store_label_names(n_labels: int) -> list[str]:
        try:
            return normalize_label_names(label_names, n_labels)
        except StoreValidationError as exc:
            raise ImportInputError(_one_line(str(exc))) from None

    if first.n_labels is not None:
        store_label_names(first.n_labels)

    if precheck:
        yield Step(0, n, "checking")
        for i, src in enumerate(sources):
            check_stop(should_stop)
            src.check(sdt)
            yield Step(i + 1, n, "checking")

    cases: list[dict[str, Any]] = []
    with atomic_directory(target, overwrite=overwrite, replaceable=_is_store, what=_WHAT) as tmp:
        yield Step(0, n, "writing")
        check_stop(should_stop)
        data = sources[0].load(sdt)  # first, so that a model's number of classes is known
        n_labels = first.n_labels if first.n_labels is not None else int(data.samples.shape[1])
        store = DatasetStore.create_empty(
            tmp,
            n,
            shape,
            n_samples,
            n_labels,
            samples_dtype=sdt,
            labels=has_labels,
            spacing=store_spacing,
            label_names=store_label_names(n_labels),
            sampler=sampler,
            overwrite=True,
        )
        arrays = {name: store.array(name) for name in ["images", "samples"] + (["labels"] if has_labels else [])}
        for i, (src, head) in enumerate(zip(sources, headers, strict=True)):
            if i > 0:
                check_stop(should_stop)
                data = src.load(sdt)
            if tuple(data.image.shape) != head.spatial_shape or data.samples.shape[:2] != (n_samples, n_labels):
                raise ImportInputError(
                    f"case {src.name!r}: {head.where}: the data read (image {data.image.shape}, samples "
                    f"{data.samples.shape}) differs from what its header said (image {head.spatial_shape}, "
                    f"{n_samples} samples of {n_labels} classes)"
                )
            data, offset = pad_case(data, shape) if pad else (data, (0,) * len(shape))
            write_one(arrays, i, data.image, data.samples, data.label)
            del data
            case = {"name": src.name, "shape": list(head.spatial_shape), **head.record}
            if pad:
                case["offset"] = list(offset)
            cases.append(case)
            yield Step(i + 1, n, "writing")
        attrs: dict[str, Any] = {"case_names": names}
        attrs["import"] = {
            **(record or {}),
            "package_version": __version__,
            "padded": bool(pad),
            "cases": cases,
        }
        zarr.open_group(str(tmp), mode="r+").attrs.update(attrs)
        open_store(tmp).validate(full=False)
    return target
