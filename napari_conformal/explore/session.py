"""One calibrated method on one dataset: cached prepared images, λ̂(α, ν) from the calibration's curves.

The split between expensive and cheap work follows the method protocol
(:mod:`napari_conformal.core.methods.base`):

* ``prepare`` of an image (features, diffusion, PCA, …) runs once per image, on demand, and is kept in
  a least-recently-used cache bounded in bytes (:meth:`MethodSession.prepared`); a background
  thread calls it, the UI thread only reads what is cached;
* λ̂ at another (α, ν) is a re-reduction of the calibration's curves
  (:meth:`~napari_conformal.core.calibration.Calibration.lambda_at`), memoised;
* where the curves cannot answer (CONSIGN at another α's box), :meth:`MethodSession.iter_extend` runs
  the method's batch hook once in a worker and replaces the session's calibration by the extended one,
  so moving α back is a read;
* the set at λ̂ (:meth:`MethodSession.predict`) is the cheap step a slider re-runs.

No method name is compared anywhere: everything a view needs comes from the method object.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np

from napari_conformal.core.calibration import Calibration
from napari_conformal.core.progress import Step
from napari_conformal.errors import ConformalError

__all__ = ["DEFAULT_CACHE_BYTES", "LevelsPending", "MethodSession", "approximate_nbytes"]

#: Default memory budget of the prepared-image cache of one session.
DEFAULT_CACHE_BYTES = 1 << 30
_MEMO_SIZE = 512


class LevelsPending(ConformalError):
    """λ̂ at these levels needs per-image work that has not run yet (see :meth:`MethodSession.iter_extend`)."""


def approximate_nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the arrays and tensors inside ``obj`` (dataclasses, dicts, sequences; 3 levels).

    Used only to bound the prepared-image cache, so it counts numpy arrays, torch tensors and objects
    with an ``nbytes`` attribute, and ignores the rest.
    """
    if _depth > 3 or obj is None:
        return 0
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int | np.integer):
        return int(nbytes)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch.Tensor
        return int(obj.element_size() * obj.nelement())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(approximate_nbytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, Mapping):
        return sum(approximate_nbytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(approximate_nbytes(v, _depth + 1) for v in obj)
    return 0


class MethodSession:
    """A calibrated method bound to the data it was calibrated on.

    Parameters
    ----------
    calibration : Calibration
        The calibration (its method object is reused).
    data : DatasetStore or ArrayDataset
        The data (``image(i)``, ``samples(i)``, ``label(i)``).
    cache_bytes : int
        Memory budget of the prepared-image cache; the most recently used image is always kept.

    Notes
    -----
    :meth:`prepared`, :meth:`lambda_hat`, :meth:`iter_extend` and :meth:`iter_realised` may be called
    from worker threads; they share a lock for their caches (the computation runs outside it).
    """

    def __init__(self, calibration: Calibration, data: Any, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.calibration = calibration
        self.store = data
        self.cache_bytes = int(cache_bytes)
        self._lock = threading.RLock()
        self._prepared: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._lambda_memo: OrderedDict[tuple[float, float | None], float] = OrderedDict()
        self._realised: dict[tuple[Any, ...], dict[int, float]] = {}
        self._test_curves: dict[tuple[int, float | None], Any] = {}
        #: incremented whenever λ̂ may change for some levels (new curves); part of view cache keys
        self.version = 0

    # -- what it is -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Registered method name."""
        return self.calibration.method

    @property
    def method(self) -> Any:
        """The :class:`~napari_conformal.core.methods.base.ConformalMethod`."""
        return self.calibration.method_object

    @property
    def title(self) -> str:
        """Display name of the method."""
        return self.method.title or self.name

    @property
    def n(self) -> int:
        """Number of calibration images."""
        return self.calibration.n

    @property
    def uses_nu(self) -> bool:
        """Whether λ̂ depends on ν."""
        return bool(self.method.uses_nu)

    def levels(self, alpha: float, nu: float | None) -> tuple[float, float | None]:
        """(α, ν) as this method takes them (ν dropped for methods without it)."""
        return float(alpha), (None if not self.uses_nu or nu is None else float(nu))

    # -- λ̂ ----------------------------------------------------------------------------------------

    def answers(self, alpha: float, nu: float | None = None) -> bool:
        """Whether λ̂ at (α, ν) is a read of the curves (no :meth:`iter_extend` needed)."""
        return self.calibration.answers(*self.levels(alpha, nu))

    def lambda_hat(self, alpha: float, nu: float | None = None) -> float:
        """λ̂ at (α, ν) from the calibration's curves (memoised).

        Raises
        ------
        LevelsPending
            The curves need :meth:`iter_extend` first (CONSIGN at another α's box).
        ConformalError
            Whatever the method raises, e.g. too few calibration images for α.
        """
        key = self.levels(alpha, nu)
        with self._lock:
            if key in self._lambda_memo:
                self._lambda_memo.move_to_end(key)
                return self._lambda_memo[key]
            calibration = self.calibration
        method = calibration.method_object
        method.check_levels(*key)
        method.check_calibration(calibration.n, key[0])
        if not calibration.answers(*key):
            raise LevelsPending(
                f"{self.title}: λ̂ at α = {key[0]:g}"
                + ("" if key[1] is None else f", ν = {key[1]:g}")
                + f" needs a search of the {calibration.n} calibration images"
            )
        lam = calibration.lambda_at(*key)
        with self._lock:
            self._lambda_memo[key] = lam
            if len(self._lambda_memo) > _MEMO_SIZE:
                self._lambda_memo.popitem(last=False)
        return lam

    def iter_extend(self, alpha: float, nu: float | None = None) -> Generator[Step, None, Calibration]:
        """Extend the calibration's curves so they answer (α, ν) (a progress generator for a worker).

        The calibration images are prepared through this session's cache, then the method's batch
        hook runs (:func:`napari_conformal.api.iter_extend`). Returns the new calibration, which also
        replaces :attr:`calibration`.
        """
        from napari_conformal.api import iter_extend

        key = self.levels(alpha, nu)
        calibration = self.calibration
        if calibration.answers(*key):
            return calibration
        cal = list(calibration.cal_indices)
        prepared = []
        yield Step(0, len(cal), "images")
        for j, i in enumerate(cal):
            prepared.append(self.prepared(i))
            yield Step(j + 1, len(cal), "images")
        labels = [self.store.label(i) for i in cal]
        extended = yield from iter_extend(calibration, self.store, alpha=key[0], nu=key[1], prepared=prepared, labels=labels)
        with self._lock:
            self.calibration = extended
            self._lambda_memo.clear()
            self.version += 1
        return extended

    # -- per image ---------------------------------------------------------------------------------

    def is_prepared(self, index: int) -> bool:
        """Whether image ``index`` is in the prepared cache."""
        with self._lock:
            return int(index) in self._prepared

    def cached_prepared(self, index: int) -> Any | None:
        """The cached prepared state of image ``index``, or None (never computes)."""
        with self._lock:
            entry = self._prepared.get(int(index))
            if entry is None:
                return None
            self._prepared.move_to_end(int(index))
            return entry[0]

    def prepared(self, index: int) -> Any:
        """``method.prepare`` of image ``index`` (read and validated once), computed once and cached."""
        from napari_conformal.api import _prepare, feature_cache_matches
        from napari_conformal.io.dataset import read_image

        index = int(index)
        cached = self.cached_prepared(index)
        if cached is not None:
            return cached
        image = read_image(self.store, index, with_label=False)
        value = _prepare(self.method, self.store, image, feature_cache_matches(self.store, self.method))
        size = approximate_nbytes(value)
        with self._lock:
            self._prepared[index] = (value, size)
            self._prepared.move_to_end(index)
            total = sum(s for _, s in self._prepared.values())
            while total > self.cache_bytes and len(self._prepared) > 1:
                _, (_, dropped) = self._prepared.popitem(last=False)
                total -= dropped
        return value

    def predict(self, index: int, lam: float, alpha: float, nu: float | None = None) -> Any:
        """The set of image ``index`` at ``lam`` and (α, ν) (prepares the image if needed)."""
        a, v = self.levels(alpha, nu)
        return self.method.predict(self.prepared(index), lam, alpha=a, nu=v)

    def iter_realised(
        self, indices: Sequence[int], alpha: float, nu: float | None = None
    ) -> Generator[Step, None, dict[int, float]]:
        """What the set at λ̂(α, ν) realises on each image of ``indices`` (1 − FNR, or covered 0/1).

        Computed with the method's batch hook :meth:`~napari_conformal.core.methods.base.ConformalMethod.iter_realised`
        on the cached prepared images, and memoised per (α, ν, λ̂). Images whose value is undefined
        (e.g. no ground-truth foreground) are left out.
        """
        a, v = self.levels(alpha, nu)
        lam = self.lambda_hat(a, v)
        key = (a, v, lam, tuple(int(i) for i in indices))
        with self._lock:
            if key in self._realised:
                return self._realised[key]
        total = len(indices)
        prepared, labels, kept = [], [], []
        yield Step(0, total, "images")
        for j, i in enumerate(indices):
            prepared.append(self.prepared(int(i)))
            labels.append(self.store.label(int(i)))
            kept.append(int(i))
            yield Step(j + 1, total, "images")
        values = yield from self.method.iter_realised(prepared, labels, lam, alpha=a, nu=v)
        out = {i: float(x) for i, x in zip(kept, values, strict=True) if x is not None and np.isfinite(x)}
        with self._lock:
            self._realised[key] = out
        return out

    def cached_realised(self, indices: Sequence[int], alpha: float, nu: float | None = None) -> dict[int, float] | None:
        """The result of an earlier :meth:`iter_realised` at these levels, or None (never computes)."""
        a, v = self.levels(alpha, nu)
        try:
            lam = self.lambda_hat(a, v)
        except ConformalError:
            return None
        with self._lock:
            return self._realised.get((a, v, lam, tuple(int(i) for i in indices)))

    def test_curve(self, index: int) -> Any:
        """``method.curve`` of image ``index`` against its ground truth (cached), for methods without a batched search.

        For a test image this tells, for any λ̂, what the set realises on it without re-running
        ``prepare``.
        """
        index = int(index)
        key = (index, None)
        with self._lock:
            if key in self._test_curves:
                return self._test_curves[key]
        curve = self.method.curve(self.prepared(index), self.store.label(index))
        with self._lock:
            self._test_curves[key] = curve
        return curve

    def provenance(self, *, alpha: float, nu: float | None, lambda_hat: float, index: int | None = None, **extra: Any) -> dict[str, Any]:
        """``layer.metadata["napari_conformal"]`` of a result layer.

        Keys: ``method, title, alpha, nu, lambda_hat, n, version, store, image_index, guarantee`` and
        ``calibration`` (the :class:`~napari_conformal.core.calibration.Calibration` re-reduced at
        these levels, so saving the layer's calibration writes a valid ``CALIB.json`` for what is
        shown), plus ``extra``.
        """
        a, v = self.levels(alpha, nu)
        calibration = self.calibration
        shown = calibration if (a, v) == (calibration.alpha, calibration.nu) else calibration.at(a, v)
        out = {
            "method": self.name,
            "title": self.title,
            "alpha": a,
            "nu": v,
            "lambda_hat": float(lambda_hat),
            "n": self.n,
            "version": calibration.provenance.version,
            "store": {"path": calibration.store.path, "identity": calibration.store.identity},
            "image_index": None if index is None else int(index),
            "guarantee": self.method.guarantee(a, v),
            "calibration": shown,
        }
        out.update(extra)
        return out
