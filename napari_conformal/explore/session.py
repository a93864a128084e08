"""One calibrated method on one store: cached prepared images, λ̂(α, ν) from cached curves.

The split between expensive and cheap work follows the method interface
(:mod:`napari_conformal.core.methods.base`):

* ``prepare`` of an image (features, diffusion, PCA, …) is computed once per
  image, on demand, and kept in a least-recently-used cache bounded in bytes
  (:meth:`MethodSession.prepared`); a background thread calls it, the UI thread
  only reads what is cached.
* λ̂ for another (α, ν) is an exact reduction over the calibration curves kept
  from the calibration (:meth:`MethodSession.lambda_hat`), memoised.
* the set at λ̂ (:meth:`MethodSession.predict`) is the cheap step a slider
  re-runs.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_conformal.explore.calibrated import CalibratedMethod

__all__ = ["DEFAULT_CACHE_BYTES", "MethodSession", "approximate_nbytes", "make_session"]

#: Default memory budget of the prepared-image cache of one session.
DEFAULT_CACHE_BYTES = 1 << 30
_MEMO_SIZE = 512


def approximate_nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the arrays and tensors inside ``obj`` (dataclasses, dicts, sequences; 3 levels).

    Used only to bound the prepared-image cache, so it counts numpy arrays,
    torch tensors and objects with an ``nbytes`` attribute, and ignores the rest.
    """
    if _depth > 3 or obj is None:
        return 0
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, (int, np.integer)):
        return int(nbytes)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch.Tensor
        return int(obj.element_size() * obj.nelement())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(approximate_nbytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, Mapping):
        return sum(approximate_nbytes(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(approximate_nbytes(v, _depth + 1) for v in obj)
    return 0


class MethodSession:
    """A calibrated method, bound to the store it was calibrated on.

    Parameters
    ----------
    calibrated : CalibratedMethod
        Record, method and calibration curves.
    store : DatasetStore
        The store (``store.image(i)``, ``store.samples(i)``, ``store.label(i)``).
    cache_bytes : int
        Memory budget of the prepared-image cache; the most recently used
        image is always kept, even when it alone exceeds the budget.

    Notes
    -----
    :meth:`prepared`, :meth:`lambda_hat` and :meth:`test_curve` may be called
    from worker threads; they share a lock for their caches (the computation
    itself runs outside the lock).
    """

    def __init__(self, calibrated: CalibratedMethod, store: Any, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.calibrated = calibrated
        self.store = store
        self.cache_bytes = int(cache_bytes)
        self._lock = threading.RLock()
        self._prepared: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._lambda_memo: OrderedDict[tuple[float, float | None], float] = OrderedDict()
        self._test_curves: dict[int, Any] = {}
        self._at_levels: dict[tuple[float, float | None], Any] = {}
        #: incremented whenever λ̂ may change for some levels (new curves); part of view cache keys
        self.version = 0

    # -- what it is ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Registered method name (``"crc"``, ``"rwcp"``, …)."""
        return self.calibrated.name

    @property
    def method(self) -> Any:
        """The :class:`~napari_conformal.core.methods.base.ConformalMethod`."""
        return self.calibrated.method

    @property
    def record(self) -> dict[str, Any]:
        """The calibration record (``CALIB.json``)."""
        return self.calibrated.record

    @property
    def curves(self) -> tuple[Any, ...]:
        """Calibration curves, one per calibration image."""
        return self.calibrated.curves

    @property
    def n(self) -> int:
        """Number of calibration images."""
        return self.calibrated.n

    @property
    def uses_nu(self) -> bool:
        """Whether λ̂ depends on ν."""
        return bool(self.method.uses_nu)

    # -- λ̂ ------------------------------------------------------------------------------------

    def lambda_hat(self, alpha: float, nu: float | None = None) -> float:
        """λ̂ at (α, ν) from the cached calibration curves (memoised).

        Parameters
        ----------
        alpha : float
            Risk level in (0, 1).
        nu : float, optional
            Label-wise accuracy; ignored by methods without ν.

        Raises
        ------
        ConformalError
            Whatever the method raises, e.g. too few calibration images for α.
        """
        key = (float(alpha), float(nu) if (self.uses_nu and nu is not None) else None)
        with self._lock:
            if key in self._lambda_memo:
                self._lambda_memo.move_to_end(key)
                return self._lambda_memo[key]
            lam = float(self.method.lambda_hat(self.curves, alpha=key[0], nu=key[1]))
            self._lambda_memo[key] = lam
            if len(self._lambda_memo) > _MEMO_SIZE:
                self._lambda_memo.popitem(last=False)
            return lam

    def method_at(self, alpha: float, nu: float | None) -> Any:
        """The method with its α (and ν) set to these levels, for ``predict``/``evaluate`` at them.

        A shallow copy of the calibrated method: everything else (parameters,
        feature extractor, τ of Consema) is shared. CONSIGN's box and the
        ``covered``/SEC of the membership methods depend on α and ν; the
        threshold methods do not.
        """
        nu_used = float(nu) if (self.uses_nu and nu is not None) else self.method.nu
        key = (float(alpha), nu_used)
        if key == (self.method.alpha, self.method.nu):
            return self.method
        with self._lock:
            if key not in self._at_levels:
                clone = copy.copy(self.method)
                clone.alpha, clone.nu = key
                self._at_levels[key] = clone
            return self._at_levels[key]

    # -- per image ----------------------------------------------------------------------------

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
        """``method.prepare(image, samples)`` of image ``index``, computed once and cached."""
        index = int(index)
        cached = self.cached_prepared(index)
        if cached is not None:
            return cached
        value = self.method.prepare(self.store.image(index), self.store.samples(index))
        size = approximate_nbytes(value)
        with self._lock:
            self._prepared[index] = (value, size)
            self._prepared.move_to_end(index)
            total = sum(s for _, s in self._prepared.values())
            while total > self.cache_bytes and len(self._prepared) > 1:
                _, (_, dropped) = self._prepared.popitem(last=False)
                total -= dropped
        return value

    def predict(self, index: int, lam: float) -> Any:
        """The set of image ``index`` at ``lam`` (prepares the image if needed)."""
        return self.method.predict(self.prepared(index), lam)

    def test_curve(self, index: int) -> Any:
        """``method.curve`` of image ``index`` against its ground truth (cached).

        For a test image this is what tells, for any λ̂, whether (or how much of)
        its ground truth the set covers, without re-running ``prepare``.
        """
        index = int(index)
        with self._lock:
            if index in self._test_curves:
                return self._test_curves[index]
        curve = self.method.curve(self.prepared(index), self.store.label(index))
        with self._lock:
            self._test_curves[index] = curve
        return curve

    def cached_test_curves(self, indices: Sequence[int]) -> dict[int, Any]:
        """The test curves already computed among ``indices``."""
        with self._lock:
            return {int(i): self._test_curves[int(i)] for i in indices if int(i) in self._test_curves}

    def provenance(
        self, *, alpha: float, nu: float | None, lambda_hat: float, index: int | None = None, **extra: Any
    ) -> dict[str, Any]:
        """``layer.metadata["napari_conformal"]`` of a result layer (SPEC §5).

        Keys: ``method, alpha, nu, lambda_hat, n, version, store, image_index``
        and ``calibration`` (the record re-reduced at this α, ν, so that saving
        the layer's calibration writes a valid ``CALIB.json`` for what is shown),
        plus ``extra``.
        """
        from napari_conformal import __version__

        nu_used = float(nu) if (self.uses_nu and nu is not None) else None
        record = dict(self.record)
        record.update(alpha=float(alpha), nu=nu_used, lambda_hat=float(lambda_hat))
        out = {
            "method": self.name,
            "alpha": float(alpha),
            "nu": nu_used,
            "lambda_hat": float(lambda_hat),
            "n": self.n,
            "version": __version__,
            "store": self.record.get("store"),
            "image_index": None if index is None else int(index),
            "calibration": record,
        }
        out.update(extra)
        return out


def make_session(calibrated: CalibratedMethod, store: Any, **kwargs: Any) -> MethodSession:
    """The session class a method needs (:class:`~.consign_session.ConsignSession` for CONSIGN)."""
    if calibrated.name == "consign":
        from napari_conformal.explore.consign_session import ConsignSession

        return ConsignSession(calibrated, store, **kwargs)
    return MethodSession(calibrated, store, **kwargs)
