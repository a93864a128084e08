"""One input file of an import, read header first: NIfTI, NumPy (``.npy`` / ``.npz`` member), TIFF, zarr array.

:func:`open_input` returns an :class:`InputFile` whose :attr:`~InputFile.shape` and
:attr:`~InputFile.dtype` come from the file's header alone (no voxel is decompressed), so an import can
check every case before reading any data; :meth:`InputFile.read` then reads the values.

Axis order. The dataset store keeps spatial axes as ``(Z, Y, X)`` (numpy order, the last axis fastest).

* NIfTI stores voxels as ``(i, j, k)``; the file is always read with its spatial axes reversed, so
  store ``(z, y, x) = (k, j, i)``, exactly as nnU-Net (SimpleITK) and napari-conformal's volume reader
  see it. Voxel sizes (``pixdim``, converted to mm) are reversed the same way: :attr:`~InputFile.spacing`.
  Nothing is resampled or flipped; the affine stays available (:attr:`~InputFile.affine`).
* NumPy, TIFF and zarr arrays are taken in store order, unless ``reverse_spatial=True`` (arrays written
  in the ``(x, y, z)`` order of nibabel / MONAI), which reverses their trailing spatial axes the same way.

Loading is safe: ``np.load(..., allow_pickle=False)``, object dtypes refused before any data is read,
zarr arrays checked for pickle codecs from their metadata (:mod:`napari_conformal.io.safe_load`).
"""

from __future__ import annotations

import math
import os
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError, ImportInputError
from napari_conformal.io.paths import suffix_of, zarr_node

__all__ = [
    "ARRAY_SUFFIXES",
    "NIFTI_SUFFIXES",
    "InputFile",
    "NiftiFile",
    "case_name_of",
    "npz_members",
    "open_input",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Files the arrays importer reads (zarr arrays are folders named ``*.zarr``).
ARRAY_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".zarr", ".nii", ".nii.gz")
_NIFTI_UNIT_TO_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}


def case_name_of(path: Path) -> str:
    """The file name without its suffix (``.nii.gz`` counted as one; a ``.zarr`` folder too)."""
    suffix = suffix_of(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _reverse_last(shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    return shape[: len(shape) - n] + tuple(reversed(shape[len(shape) - n :]))


class InputFile(ABC):
    """A file an import reads: header facts first, values on :meth:`read`.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    reverse_spatial : bool
        Whether the trailing spatial axes are reversed on reading (always True for NIfTI).
    """

    #: Voxel size in mm per store axis, ``(Z, Y, X)``, when the file records one (NIfTI), else None.
    spacing: tuple[float, ...] | None = None
    #: The NIfTI affine (4×4, voxel ``(i, j, k)`` → world mm), else None.
    affine: np.ndarray | None = None

    def __init__(self, path: Path, reverse_spatial: bool = False) -> None:
        self.path = path
        self.reverse_spatial = reverse_spatial

    @property
    @abstractmethod
    def raw_shape(self) -> tuple[int, ...]:
        """Shape as stored in the file."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """dtype as stored in the file."""

    @abstractmethod
    def _read_raw(self) -> np.ndarray:
        """Every value, in the file's own axis order."""

    def shape(self, n_spatial: int | None = None) -> tuple[int, ...]:
        """Shape in store order; ``n_spatial`` trailing axes are spatial (default: every axis)."""
        n = len(self.raw_shape) if n_spatial is None else n_spatial
        return _reverse_last(self.raw_shape, n) if self.reverse_spatial else self.raw_shape

    def read(self, n_spatial: int | None = None) -> np.ndarray:
        """Every value, in store order (``n_spatial`` trailing axes spatial; default all).

        Raises
        ------
        ImportInputError
            The file cannot be read (naming it).
        """
        try:
            raw = self._read_raw()
        except ConformalError:
            raise
        except Exception as exc:  # readers raise many kinds for damaged files
            raise ImportInputError(f"{self.path}: cannot read the file: {' '.join(str(exc).split())}") from None
        if tuple(raw.shape) != self.raw_shape:
            raise ImportInputError(
                f"{self.path}: the data has shape {raw.shape} but its header says {self.raw_shape}"
            )
        if not self.reverse_spatial:
            return raw
        n = raw.ndim if n_spatial is None else n_spatial
        order = list(range(raw.ndim - n)) + list(range(raw.ndim - 1, raw.ndim - n - 1, -1))
        return np.transpose(raw, order)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


# ------------------------------------------------------------------------------------------- NIfTI


class NiftiFile(InputFile):
    """A NIfTI volume (nibabel): header on open, voxels on :meth:`read`, spatial axes always reversed.

    A trailing axis of size 1 beyond the third (``(x, y, z, 1)``) is dropped; other 4-D files are refused.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, reverse_spatial=True)
        try:
            import nibabel
        except ImportError:  # pragma: no cover - a core dependency
            raise ImportInputError(f"{path}: reading NIfTI needs nibabel (pip install nibabel)") from None
        try:
            self._img = nibabel.load(str(path))
            header = self._img.header
            shape = tuple(int(s) for s in self._img.shape)
            zooms = [float(z) for z in header.get_zooms()]
            unit = header.get_xyzt_units()[0]
            self.affine = np.asarray(self._img.affine, dtype=float)
            self._dtype = np.dtype(header.get_data_dtype())
        except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, …
            raise ImportInputError(f"{path}: cannot read the NIfTI header: {' '.join(str(exc).split())}") from None
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) not in (2, 3):
            raise ImportInputError(
                f"{path}: NIfTI of shape {shape} (x, y, z, …); the importer reads one 2-D or 3-D volume per "
                "file (put extra channels in their own files, CASE_0001.nii.gz, …)"
            )
        self._shape = shape
        factor = _NIFTI_UNIT_TO_MM.get(unit, 1.0)
        sizes = [(zooms[a] if a < len(zooms) else 1.0) * factor for a in range(len(shape))]
        sizes = [s if math.isfinite(s) and s > 0 else 1.0 for s in sizes]
        # float32 pixdim such as 0.800000011920929 read back as the 0.8 that was written
        self.spacing = tuple(float(f"{v:.7g}") for v in reversed(sizes))

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _read_raw(self) -> np.ndarray:
        data = np.asanyarray(self._img.dataobj)
        if data.dtype.hasobject:
            raise ImportInputError(f"{self.path}: NIfTI data of dtype {data.dtype}; expected numbers")
        return np.asarray(data).reshape(self._shape)


# ------------------------------------------------------------------------------------------- NumPy


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
        else:
            shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise ImportInputError(f"{where}: not a valid .npy array: {exc}") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ImportInputError(
            f"{where} holds Python objects (dtype {dtype}); loading it would unpickle data, so napari-conformal "
            "refuses. Save plain numeric arrays instead."
        )
    return tuple(int(s) for s in shape), dtype


class NpyFile(InputFile):
    """A ``.npy`` array: header read directly, values memory-mapped (never unpickled)."""

    def __init__(self, path: Path, reverse_spatial: bool = False) -> None:
        super().__init__(path, reverse_spatial)
        try:
            with open(path, "rb") as fh:
                self._shape, self._dtype = _npy_header(fh, str(path))
        except OSError as exc:
            raise ImportInputError(f"{path}: cannot read the file: {exc.strerror or exc}") from None

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _read_raw(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)


def npz_members(path: Path) -> list[str]:
    """Names of the arrays in a ``.npz`` archive (from its zip directory, nothing decompressed)."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportInputError(f"{path}: not a valid .npz archive: {exc}") from None


class NpzMember(InputFile):
    """One array of a ``.npz`` archive: its header read from the zip stream, values on :meth:`read`."""

    def __init__(self, path: Path, key: str, reverse_spatial: bool = False) -> None:
        super().__init__(path, reverse_spatial)
        self.key = key
        members = npz_members(path)
        if key not in members:
            raise ImportInputError(
                f"{path}: the archive has no array {key!r} (it holds {', '.join(members) or 'nothing'})"
            )
        try:
            with zipfile.ZipFile(path) as z, z.open(key + ".npy") as fh:
                self._shape, self._dtype = _npy_header(fh, f"{path} (array {key!r})")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ImportInputError(f"{path}: cannot read array {key!r}: {exc}") from None

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _read_raw(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as npz:
            return npz[self.key]

    def __repr__(self) -> str:
        return f"NpzMember({str(self.path)!r}, {self.key!r})"


# ----------------------------------------------------------------------------------------- TIFF, zarr


class TiffFile(InputFile):
    """A TIFF file (tifffile): the first series, its shape from the header."""

    def __init__(self, path: Path, reverse_spatial: bool = False) -> None:
        super().__init__(path, reverse_spatial)
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise ImportInputError(f"{path}: the TIFF file holds no image")
                series = tif.series[0]
                self._shape = tuple(int(s) for s in series.shape)
                self._dtype = np.dtype(series.dtype)
        except ImportInputError:
            raise
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, …
            raise ImportInputError(f"{path}: cannot read the TIFF file: {' '.join(str(exc).split())}") from None

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _read_raw(self) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            return tif.series[0].asarray()


class ZarrArrayFile(InputFile):
    """A zarr array folder (v2 or v3), opened read-only after the pickle check of its metadata."""

    def __init__(self, path: Path, reverse_spatial: bool = False) -> None:
        super().__init__(path, reverse_spatial)
        from napari_conformal.io.safe_load import open_zarr_array

        try:
            self._array = open_zarr_array(path)
        except ConformalError as exc:
            raise ImportInputError(str(exc)) from None
        self._shape = tuple(int(s) for s in self._array.shape)
        self._dtype = np.dtype(self._array.dtype)

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _read_raw(self) -> np.ndarray:
        return np.asarray(self._array[...])


# ------------------------------------------------------------------------------------------ dispatch


def open_input(
    path: str | os.PathLike[str], *, key: str | None = None, reverse_spatial: bool = False
) -> InputFile:
    """The :class:`InputFile` for ``path``, chosen by its suffix (a zarr array by its metadata).

    Parameters
    ----------
    path : path-like
        ``.nii`` / ``.nii.gz``, ``.npy``, ``.npz``, ``.tif`` / ``.tiff`` or a zarr array folder.
    key : str, optional
        The array of a ``.npz`` archive; default its only array.
    reverse_spatial : bool
        The file's trailing spatial axes are ``(x, y, z)``: reverse them (ignored for NIfTI, always reversed).

    Raises
    ------
    ImportInputError
        Unsupported file, unreadable header, an ``.npz`` with several arrays and no ``key``.
    """
    p = Path(os.fspath(path))
    node = zarr_node(p)
    if node is not None:
        if node[0] != "array":
            raise ImportInputError(f"{p}: a zarr group, not an array; give the array folder inside it")
        return ZarrArrayFile(p, reverse_spatial)
    suffix = suffix_of(p)
    if not p.is_file():
        raise ImportInputError(f"{p}: no such file")
    if suffix in NIFTI_SUFFIXES:
        return NiftiFile(p)
    if suffix == ".npy":
        return NpyFile(p, reverse_spatial)
    if suffix == ".npz":
        if key is None:
            members = npz_members(p)
            if len(members) != 1:
                raise ImportInputError(
                    f"{p}: the archive holds {len(members)} arrays ({', '.join(members) or 'none'}); "
                    "name the one to read"
                )
            key = members[0]
        return NpzMember(p, key, reverse_spatial)
    if suffix in (".tif", ".tiff"):
        return TiffFile(p, reverse_spatial)
    raise ImportInputError(f"{p}: not a file the importers read ({', '.join(ARRAY_SUFFIXES)})")
