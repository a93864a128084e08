"""nnU-Net v2 predictions into a dataset store: NIfTI images and labels, one ``.npz`` folder per member.

The folders, as nnU-Net writes them::

    images/   CASE_0000.nii.gz  (CASE_0001.nii.gz … further input channels)
    labels/   CASE.nii.gz                                   (optional: ground truth)
    fold_0/   CASE.npz  with key "probabilities", shape (C, z, y, x)   ← nnUNetv2_predict --save_probabilities
    fold_1/   CASE.npz  …                                   (one folder per fold or ensemble member: T = folders)

Cases are matched by name across every folder. Each member folder gives one sample per case, so the
store's ``samples[i, t]`` is member ``t``'s probabilities of case ``i``.

Orientation (docs/own_model.md gives the full rule). nnU-Net reads a NIfTI with SimpleITK (or its
``NibabelIO``), which keeps the file's voxel order and presents it as ``(z, y, x) = (k, j, i)``, the NIfTI
voxel axes ``(i, j, k)`` reversed, with no flip or resampling; its ``probabilities`` use that order. The
store uses it too, so for every case::

    store images[n][z, y, x]      = image.nii.gz voxel (i, j, k) = (x, y, z)
    store labels[n][z, y, x]      = label.nii.gz voxel (x, y, z)
    store samples[n, t, c][z, y, x] = fold_t/CASE.npz["probabilities"][c, z, y, x]
    store spacing                 = pixdim (x, y, z) reversed, in mm

``npz_order="ras"`` is for predictions made with nnU-Net's ``NibabelIOWithReorient``, which first
reorients each image to the closest RAS orientation: the probabilities are then mapped back from that
grid to the file's own voxel grid (nibabel's ``io_orientation``), so the store still follows the rule above.

Extra input channels (``CASE_0001`` …) cannot all be stored (a store image has one channel): choose the
one to keep with ``channel``; without it a multi-channel case is refused.
"""

from __future__ import annotations

import os
import re
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
from napari_conformal.io.importers.cases import (
    CaseFolder,
    check_label_names,
    find_case_files,
    label_names_from_mapping,
    match_cases,
    natural_key,
)
from napari_conformal.io.importers.files import (
    NIFTI_SUFFIXES,
    NiftiFile,
    NpzMember,
    case_name_of,
    npz_members,
)
from napari_conformal.io.paths import read_json, suffix_of

__all__ = ["NPZ_KEY", "NnunetCase", "nnunet_cases", "to_voxel_order"]

#: The array of an nnU-Net ``.npz`` that holds the probabilities.
NPZ_KEY = "probabilities"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_ORDERS = ("voxel", "ras")
AXES_RULE = (
    "store (z, y, x) = NIfTI voxel (k, j, i), the file's (i, j, k) = (x, y, z) axes reversed = nnU-Net npz "
    "(z, y, x); no resampling, no flips; spacing = pixdim reversed (mm)"
)


def _canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the file's voxel axes to the closest RAS grid."""
    from nibabel.orientations import io_orientation

    return io_orientation(affine)


def _canonical_shape(shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, ...]:
    """NIfTI ``(i, j, k)`` shape of the volume reoriented to the closest RAS grid."""
    ornt = _canonical_transform(affine)
    out = [0] * len(shape)
    for axis, (target, _flip) in enumerate(ornt[: len(shape)]):
        out[int(target)] = shape[axis]
    return tuple(out)


def to_voxel_order(probs_ras_zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Probabilities ``(C, z', y', x')`` on the closest-RAS grid → ``(C, z, y, x)`` on the file's own grid.

    Parameters
    ----------
    probs_ras_zyx : array, shape (C, k', j', i')
        As nnU-Net's ``NibabelIOWithReorient`` writes them: the RAS-reoriented volume, axes reversed.
    affine : array (4, 4)
        The NIfTI file's own affine.

    Returns
    -------
    ndarray, shape (C, k, j, i)
        In the store's order for that file (its voxel axes reversed).
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    ornt = _canonical_transform(affine)
    back = ornt_transform(axcodes2ornt(("R", "A", "S")), ornt)  # RAS grid → the file's voxel grid
    channels = []
    for c in range(probs_ras_zyx.shape[0]):
        ras_ijk = np.transpose(probs_ras_zyx[c], (2, 1, 0))
        channels.append(np.transpose(apply_orientation(ras_ijk, back), (2, 1, 0)))
    return np.ascontiguousarray(np.stack(channels))


def _nifti_name(path: Path) -> str | None:
    return case_name_of(path) if suffix_of(path) in NIFTI_SUFFIXES else None


def _image_channels(folder: Path) -> dict[str, dict[int, Path]]:
    """``case → {channel: file}`` of an nnU-Net images folder (``CASE_XXXX.nii[.gz]``)."""
    if not folder.exists():
        raise ImportInputError(f"images: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ImportInputError(f"images: {folder} is not a folder")
    cases: dict[str, dict[int, Path]] = {}
    for entry in sorted(folder.iterdir()):
        stem = _nifti_name(entry)
        if entry.name.startswith(".") or stem is None:
            continue
        match = _CHANNEL.match(stem)
        if match is None:
            raise ImportInputError(
                f"images: {entry} is not named CASE_XXXX.nii.gz (nnU-Net's 4-digit channel suffix, e.g. "
                f"{stem}_0000.nii.gz)"
            )
        case, channel = match["case"], int(match["channel"])
        if channel in cases.setdefault(case, {}):
            raise ImportInputError(
                f"images: two files for channel {channel} of case {case!r}: {cases[case][channel].name} and {entry.name}"
            )
        cases[case][channel] = entry
    if not cases:
        raise ImportInputError(f"images: no NIfTI files (CASE_0000.nii.gz) in {folder}")
    return cases


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class NnunetCase(CaseSource):
    """One nnU-Net case: the image channel to store, the others, the label, one ``.npz`` per member."""

    def __init__(
        self,
        name: str,
        channels: dict[int, Path],
        channel: int,
        label: Path | None,
        members: Sequence[tuple[str, Path]],
        npz_order: str = "voxel",
    ) -> None:
        self.name = name
        self.channels = dict(channels)
        self.channel = channel
        self.label_path = label
        self.members = list(members)
        self.npz_order = npz_order
        self._header: CaseHeader | None = None

    def header(self) -> CaseHeader:
        if self._header is not None:
            return self._header
        image = NiftiFile(self.channels[self.channel])
        for k, path in sorted(self.channels.items()):
            if k != self.channel:
                self._same_grid(NiftiFile(path), image, f"image channel {k}")
        label = None
        if self.label_path is not None:
            label = NiftiFile(self.label_path)
            self._same_grid(label, image, "label")
        xyz = image.raw_shape
        if self.npz_order == "ras":
            if len(xyz) != 3:
                raise ImportInputError(f"case {self.name!r}: npz order 'ras' needs 3-D images, {image.path} is {xyz}")
            grid = _canonical_shape(xyz, image.affine)
            wanted = tuple(reversed(grid))
            grid_text = f"its closest-RAS grid (x, y, z) = {_shape_text(grid)}"
        else:
            wanted = tuple(reversed(xyz))
            grid_text = f"(x, y, z) = {_shape_text(xyz)}"
        n_classes = None
        for role, path in self.members:
            member = NpzMember(path, NPZ_KEY) if NPZ_KEY in npz_members(path) else None
            if member is None:
                raise ImportInputError(
                    f"case {self.name!r}: {path} has no {NPZ_KEY!r} array (it holds "
                    f"{', '.join(npz_members(path)) or 'nothing'}); nnU-Net writes it with --save_probabilities"
                )
            shape = member.raw_shape
            if len(shape) != len(wanted) + 1 or shape[1:] != wanted:
                raise ImportInputError(
                    f"case {self.name!r}: shape mismatch: {role} file {path} holds {NPZ_KEY!r} of shape "
                    f"{_shape_text(shape)}, but the image {image.path} {grid_text} needs (C, z, y, x) = "
                    f"(C, {', '.join(map(str, wanted))})"
                )
            if not np.issubdtype(member.dtype, np.floating):
                raise ImportInputError(
                    f"case {self.name!r}: {path}: {NPZ_KEY!r} has dtype {member.dtype}, expected floating point"
                )
            if shape[0] < 2:
                raise ImportInputError(
                    f"case {self.name!r}: {path}: {NPZ_KEY!r} has C = {shape[0]} class; need C >= 2 (background first)"
                )
            if n_classes is None:
                n_classes, first = shape[0], path
            elif shape[0] != n_classes:
                raise ImportInputError(
                    f"case {self.name!r}: {path} has C = {shape[0]} classes but {first} has C = {n_classes}"
                )
        record: dict[str, Any] = {
            "image": str(image.path),
            "label": None if label is None else str(label.path),
            "members": [str(p) for _, p in self.members],
            "nifti_shape_xyz": list(xyz),
            "nifti_affine": image.affine.tolist(),
        }
        self._header = CaseHeader(
            name=self.name,
            spatial_shape=tuple(reversed(xyz)),
            n_samples=len(self.members),
            n_labels=int(n_classes or 0),
            has_label=label is not None,
            spacing=image.spacing,
            where=str(image.path),
            record=record,
        )
        return self._header

    def _same_grid(self, other: NiftiFile, image: NiftiFile, what: str) -> None:
        if other.raw_shape != image.raw_shape:
            raise ImportInputError(
                f"case {self.name!r}: shape mismatch: {what} {other.path} has shape (x, y, z) = "
                f"{_shape_text(other.raw_shape)} but the image {image.path} has {_shape_text(image.raw_shape)}"
            )
        if not np.allclose(other.spacing, image.spacing, rtol=1e-4, atol=1e-6):
            raise ImportInputError(
                f"case {self.name!r}: spacing mismatch: {what} {other.path} has voxels of "
                f"{_shape_text_f(other.spacing[::-1])} mm (x, y, z) but the image {image.path} has "
                f"{_shape_text_f(image.spacing[::-1])} mm"
            )
        if not np.allclose(other.affine, image.affine, atol=1e-3):
            raise ImportInputError(
                f"case {self.name!r}: {what} {other.path} lies on another voxel grid than the image {image.path} "
                "(their NIfTI affines differ: orientation or origin); resample it onto the image's grid"
            )

    def _samples(self, samples_dtype: np.dtype, keep: bool) -> np.ndarray | None:
        head = self.header()
        shape = head.spatial_shape
        out = np.empty((head.n_samples, head.n_labels, *shape), dtype=samples_dtype) if keep else None
        affine = np.asarray(head.record["nifti_affine"])
        for t, (role, path) in enumerate(self.members):
            probs = NpzMember(path, NPZ_KEY).read()
            if self.npz_order == "ras":
                probs = to_voxel_order(probs, affine)
            stored = checked_sample(self.name, f"{role} file {path}", probs, shape, samples_dtype)
            if out is not None:
                out[t] = stored
        return out

    def _image_and_label(self) -> tuple[np.ndarray, np.ndarray | None]:
        head = self.header()
        image_file = NiftiFile(self.channels[self.channel])
        image = checked_image(self.name, f"image {image_file.path}", image_file.read(), head.spatial_shape)
        label = None
        if self.label_path is not None:
            values = NiftiFile(self.label_path).read()
            label = checked_label(self.name, f"label {self.label_path}", values, head.spatial_shape, head.n_labels)
        return image, label

    def load(self, samples_dtype: np.dtype) -> CaseArrays:
        image, label = self._image_and_label()
        samples = self._samples(samples_dtype, keep=True)
        assert samples is not None
        return CaseArrays(image, samples, label)

    def check(self, samples_dtype: np.dtype) -> None:
        self._image_and_label()
        self._samples(samples_dtype, keep=False)


def _shape_text_f(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _label_names_from_dataset_json(folders: Sequence[Path], n_labels: int) -> list[str] | None:
    """Class names from the first nnU-Net ``dataset.json`` in ``folders`` whose labels are 0..C−1."""
    for folder in folders:
        doc = read_json(folder / "dataset.json")
        if isinstance(doc, dict) and isinstance(doc.get("labels"), dict):
            names = label_names_from_mapping(doc["labels"], n_labels)
            if names is not None:
                return names
    return None


def nnunet_cases(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None,
    members: Sequence[str | os.PathLike[str]],
    *,
    channel: int | None = None,
    npz_order: str = "voxel",
) -> list[NnunetCase]:
    """The cases of nnU-Net folders, matched by name (headers are read later, by the import).

    Raises
    ------
    ImportInputError
        Missing folders, files not named as nnU-Net names them, case names that do not match across the
        folders, multi-channel images without ``channel``.
    """
    if npz_order not in _ORDERS:
        raise ImportInputError(f"npz_order must be 'voxel' or 'ras', got {npz_order!r}")
    if isinstance(members, str | os.PathLike) or len(members) < 1:
        raise ImportInputError("members: give one folder per ensemble member or fold (at least one)")
    images_dir = Path(os.fspath(images))
    channels = _image_channels(images_dir)
    reference = CaseFolder(
        "image", images_dir, {c: files[min(files)] for c, files in channels.items()}, lambda c: f"{c}_0000.nii.gz"
    )
    folders: list[CaseFolder] = []
    label_folder = None
    if labels is not None:
        label_folder = find_case_files(
            labels, role="label", suffixes=NIFTI_SUFFIXES, name_of=_nifti_name, expected=lambda c: f"{c}.nii.gz"
        )
        folders.append(label_folder)
    member_folders = []
    for k, folder in enumerate(members):
        path = Path(os.fspath(folder))
        role = f"members folder {k + 1} ({path.name})"
        member_folders.append(find_case_files(path, role=role, suffixes=(".npz",), expected=lambda c: f"{c}.npz"))
    names = match_cases(reference, folders + member_folders)
    counts = {c: sorted(channels[c]) for c in names}
    first = names[0]
    for case in names:
        if counts[case] != list(range(len(counts[case]))):
            raise ImportInputError(
                f"case {case!r}: image channels {counts[case]} are not numbered 0, 1, …: expected "
                + ", ".join(f"{case}_{k:04d}.nii.gz" for k in range(max(counts[case]) + 1))
            )
        if len(counts[case]) != len(counts[first]):
            raise ImportInputError(
                f"case {case!r} has {len(counts[case])} image channels but case {first!r} has {len(counts[first])}"
            )
    n_channels = len(counts[first])
    if channel is None:
        if n_channels > 1:
            files = ", ".join(p.name for _, p in sorted(channels[first].items()))
            raise ImportInputError(
                f"case {first!r} has {n_channels} image channels ({files}); a store image has one channel: choose "
                "the one to store with --channel K (channel=K; the samples are the model's, from every channel)"
            )
        channel = 0
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < n_channels:
        raise ImportInputError(
            f"channel {channel!r} does not exist: the images have {n_channels} channel(s), 0..{n_channels - 1}"
        )
    return [
        NnunetCase(
            case,
            channels[case],
            channel,
            None if label_folder is None else label_folder.files[case],
            [(f.role, f.files[case]) for f in member_folders],
            npz_order,
        )
        for case in names
    ]


def iter_import_nnunet(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None,
    members: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    channel: int | None = None,
    npz_order: str = "voxel",
    pad: bool = False,
    label_names: Sequence[str] | None = None,
    samples_dtype: str = "float16",
    precheck: bool = True,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Path]:
    """:func:`napari_conformal.io.importers.import_nnunet` as a generator of progress steps."""
    cases = nnunet_cases(images, labels, members, channel=channel, npz_order=npz_order)
    n_labels = cases[0].header().n_labels
    member_dirs = [Path(os.fspath(m)) for m in members]
    names = check_label_names(label_names, n_labels, f"{cases[0].members[0][1]}")
    if names is None:
        images_dir = Path(os.fspath(images))
        names = _label_names_from_dataset_json(
            [*member_dirs, images_dir.parent, images_dir]
            + ([Path(os.fspath(labels)).parent] if labels is not None else []),
            n_labels,
        )
    record = {
        "importer": "nnunet",
        "images": str(Path(os.fspath(images)).resolve()),
        "labels": None if labels is None else str(Path(os.fspath(labels)).resolve()),
        "members": [str(m.resolve()) for m in member_dirs],
        "channel": cases[0].channel,
        "npz_order": npz_order,
        "axes": AXES_RULE,
    }
    folds = ", ".join(m.name for m in member_dirs)
    sampler = f"ensemble: nnU-Net, {len(member_dirs)} member folder(s) ({folds})"
    return (
        yield from iter_import(
            sorted(cases, key=lambda c: natural_key(c.name)),
            out,
            pad=pad,
            label_names=names,
            sampler=sampler,
            samples_dtype=samples_dtype,
            record=record,
            precheck=precheck,
            overwrite=overwrite,
            should_stop=should_stop,
        )
    )
