"""Calibration bases held in memory up to a byte budget, the rest in a temporary directory.

The batched coverage search (:mod:`.search`) works on one chunk of images at a time, and of an
image's principal basis it needs the full mean and directions only while it gathers that image's
free pixels into a restricted batch (:func:`~.restricted.build_restricted_batch`). For volumes the
bases dominate the memory of a calibration: ``(K + 1)·L·|S|`` float32 values each, 295 MiB for a
160³ volume with L = 3 and K = 5 (docs/benchmarks_import.md). A :class:`BasisSpill` collects the
calibration images' bases and ground truths; once the bases' total size exceeds its budget, each
basis is written to a temporary directory (``np.save`` of its mean and directions, float32 as
they are) and replaced by a :class:`SpilledBasis`, which keeps the small fields (σ, γ, shapes) in
memory and reads the two arrays back with :meth:`SpilledBasis.load` (``np.load`` without a memory
map: file-backed pages of a map would count in the resident memory all the same).

The values read back are the values written, so a search over spilled bases gives the curves and
λ̂ of the in-memory search exactly. The directory is made by :func:`tempfile.mkdtemp` (so it
honours ``TMPDIR`` and tempfile's other defaults) the first time something is spilled, and removed
with everything in it by :meth:`BasisSpill.close`: at the end of a ``with`` block, on an error
or a cancellation inside it, and otherwise when the pool is garbage collected or the interpreter
exits (a :func:`weakref.finalize`).

Ground truths are kept in the smallest unsigned integer dtype that holds their values (uint8 for
up to 256 labels: 4 MiB for a 160³ volume instead of 33 MiB as int64).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis, coefficient_quantiles
from napari_conformal.errors import CalibrationError

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "BasisLike",
    "BasisSpill",
    "SpilledBasis",
    "compact_labels",
    "load_basis",
]

#: Default bytes of calibration bases held in memory (1 GiB); beyond it they are spilled.
DEFAULT_BUDGET_BYTES = 2**30


@dataclass(frozen=True, eq=False)
class SpilledBasis:
    """An :class:`~.basis.ImageBasis` whose mean and directions lie in two ``.npy`` files.

    Attributes
    ----------
    mean_path, directions_path : Path
        ``np.save`` files of μ (D,) and u (K, D), float32, D = L·|S|.
    singular_values : Tensor, shape (K,), float64
        σ_k (in memory).
    coefficients : Tensor, shape (K, T), float64
        γ_{k,t} (in memory).
    n_labels : int
        L.
    spatial_shape : tuple of int
        S.
    device : torch.device
        Where :meth:`load` puts the tensors.
    """

    mean_path: Path
    directions_path: Path
    singular_values: torch.Tensor
    coefficients: torch.Tensor
    n_labels: int
    spatial_shape: tuple[int, ...]
    device: torch.device

    @property
    def k(self) -> int:
        """Number of directions K."""
        return int(self.singular_values.shape[0])

    @property
    def n_samples(self) -> int:
        """Number of samples T."""
        return int(self.coefficients.shape[1])

    @property
    def n_pixels(self) -> int:
        """Number of pixels/voxels |S|."""
        return math.prod(self.spatial_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the mean and directions once loaded ((K + 1)·L·|S|·4)."""
        return 4 * (self.k + 1) * self.n_labels * self.n_pixels

    def quantiles(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``, each (K,) float64: the ``level`` and ``1 − level`` quantiles of γ_k."""
        return coefficient_quantiles(self.coefficients, level)

    def load(self) -> ImageBasis:
        """The basis, read back from its files (a new in-memory :class:`~.basis.ImageBasis`)."""
        mean = torch.from_numpy(np.load(self.mean_path, mmap_mode=None, allow_pickle=False))
        directions = torch.from_numpy(np.load(self.directions_path, mmap_mode=None, allow_pickle=False))
        return ImageBasis(
            mean.to(self.device),
            directions.to(self.device),
            self.singular_values,
            self.coefficients,
            self.n_labels,
            self.spatial_shape,
        )


#: A basis in memory or on disk: both have ``k``, ``n_labels``, ``spatial_shape``, ``n_pixels``,
#: ``device``, ``singular_values`` and ``coefficients``; :func:`load_basis` gives the full basis.
BasisLike = ImageBasis | SpilledBasis


def compact_labels(label: Any, n_labels: int | None = None) -> Any:
    """A ground truth in the smallest unsigned integer dtype holding its values, else unchanged.

    Parameters
    ----------
    label : ndarray or Tensor, shape S
        Integer label map.
    n_labels : int, optional
        L: when given, a label map with a value outside 0..L−1 is returned unchanged (so the
        search's own check reports the value, not a wrapped one).

    Returns
    -------
    ndarray or Tensor
        uint8 when every value lies in 0..255 (torch: uint8, else the input), numpy: else uint16 /
        uint32 where they fit; the input itself when it is not an integer map, is empty, has a
        negative value or one ≥ ``n_labels``.
    """
    is_torch = isinstance(label, torch.Tensor)
    if is_torch:
        if label.dtype.is_floating_point or label.dtype.is_complex or label.dtype == torch.bool or not label.numel():
            return label
        lo, hi = int(label.min()), int(label.max())
    else:
        arr = np.asarray(label)
        if arr.dtype.kind not in "iu" or arr.size == 0:
            return label
        lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (n_labels is not None and hi >= n_labels):
        return label
    if is_torch:
        return label.to(torch.uint8) if hi < 256 else label
    dtype = np.min_scalar_type(hi)
    return arr if dtype.itemsize >= arr.dtype.itemsize else arr.astype(dtype)


def _remove(path: list[Path | None]) -> None:
    if path[0] is not None:
        shutil.rmtree(path[0], ignore_errors=True)
        path[0] = None


class BasisSpill:
    """The calibration images' bases and ground truths, spilled to disk beyond a byte budget.

    Use as a context manager (the temporary files go when the block ends, however it ends)::

        with BasisSpill(budget_bytes=2**30, expected=n) as pool:
            for basis, truth in ...:
                pool.add(basis, truth)
            curves = search_curves(pool.prepared, pool.labels, ...)

    Parameters
    ----------
    budget_bytes : int
        Bytes of bases (mean and directions, 4 bytes a value) held in memory. While the bases
        added (with ``expected``: their projected total, ``expected`` × the first one's size) fit
        in it, they stay in memory; once they do not, every basis held and every later one is
        written to disk. 0 spills every basis.
    expected : int, optional
        How many images will be added (decides at the first one, so no basis is held first and
        written later).
    dir : str or Path, optional
        Parent of the temporary directory (default: tempfile's, i.e. ``TMPDIR`` or the system's).

    Attributes
    ----------
    prepared : list of ImageBasis or SpilledBasis
        The bases, in the order added.
    labels : list of ndarray
        The ground truths (see :func:`compact_labels`), in the order added.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES, *, expected: int | None = None, dir: Any = None) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 0:
            raise CalibrationError(f"the memory budget of the bases must be an integer >= 0 bytes, got {budget_bytes!r}")
        self.budget_bytes = int(budget_bytes)
        self.expected = expected
        self.parent = None if dir is None else str(dir)
        self.prepared: list[BasisLike] = []
        self.labels: list[Any] = []
        self._total = 0
        self._spilling = False
        self._written = 0
        self._dir: list[Path | None] = [None]  # shared with the finaliser
        self._finalizer = weakref.finalize(self, _remove, self._dir)

    # ------------------------------------------------------------------ public

    @property
    def directory(self) -> Path | None:
        """The temporary directory, or None while nothing has been spilled (or after :meth:`close`)."""
        return self._dir[0]

    @property
    def spilled(self) -> bool:
        """Whether the bases go to disk."""
        return self._spilling

    def add(self, basis: ImageBasis, label: Any = None) -> None:
        """Keep one image's basis (in memory or on disk, see the class) and its ground truth."""
        size = _nbytes(basis)
        self._total += size
        projected = size * self.expected if self.expected is not None and not self.prepared else self._total
        if not self._spilling and max(projected, self._total) > self.budget_bytes:
            self._spilling = True
            self.prepared = [self._write(b) for b in self.prepared]
        self.prepared.append(self._write(basis) if self._spilling else basis)
        n_labels = getattr(basis, "n_labels", None)
        self.labels.append(None if label is None else compact_labels(label, n_labels))

    def close(self) -> None:
        """Remove the temporary directory and everything in it (idempotent)."""
        self._finalizer()

    def __enter__(self) -> BasisSpill:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _write(self, basis: BasisLike) -> BasisLike:
        if isinstance(basis, SpilledBasis):
            return basis
        if self._dir[0] is None:
            if not self._finalizer.alive:
                raise CalibrationError("this basis pool is closed")
            self._dir[0] = Path(tempfile.mkdtemp(prefix="napari-conformal-bases-", dir=self.parent))
        j = self._written
        self._written += 1
        root = self._dir[0]
        mean_path, directions_path = root / f"mean_{j:05d}.npy", root / f"directions_{j:05d}.npy"
        np.save(mean_path, basis.mean.detach().cpu().numpy(), allow_pickle=False)
        np.save(directions_path, basis.directions.detach().cpu().numpy(), allow_pickle=False)
        return SpilledBasis(
            mean_path,
            directions_path,
            basis.singular_values,
            basis.coefficients,
            basis.n_labels,
            tuple(basis.spatial_shape),
            basis.device,
        )


def _nbytes(basis: BasisLike) -> int:
    if isinstance(basis, SpilledBasis):
        return basis.nbytes
    return basis.mean.element_size() * basis.mean.numel() + basis.directions.element_size() * basis.directions.numel()


def load_basis(basis: BasisLike) -> ImageBasis:
    """The in-memory basis of a :class:`SpilledBasis` (read from disk), or the basis itself."""
    return basis.load() if isinstance(basis, SpilledBasis) else basis

