"""CONSIGN in the explorers: λ̂ for a new α needs curves of that α's box, computed in the background.

A CONSIGN calibration curve belongs to one box family, whose quantile level
is q = α/2 by default (:func:`~napari_conformal.core.consign.calibrator.quantile_level_for`):
the curves kept from the calibration answer λ̂(α, ν) for the calibrated α
(and every α with the same q) and for ν up to what the search covered.
Anything else needs a coverage search of the calibration images at the new
box, which :class:`ConsignSession` runs on request
(:meth:`ConsignSession.iter_search`, a progress generator for a worker) with
the core's :class:`~napari_conformal.core.consign.calibrator.ConsignCalibrator`
and then caches: moving α back to a value seen before is a read.

Until then :meth:`ConsignSession.lambda_hat` raises :class:`CurvesPending`,
which the views show as "computing…" while keeping what they drew last.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from napari_conformal.errors import ConformalError
from napari_conformal.explore.calibrated import CalibratedMethod
from napari_conformal.explore.session import MethodSession

__all__ = ["ConsignSession", "CurvesPending"]


class CurvesPending(ConformalError):
    """λ̂ at these levels needs a coverage search that has not run yet (see :meth:`ConsignSession.iter_search`)."""


class ConsignSession(MethodSession):
    """A :class:`MethodSession` of a CONSIGN calibration.

    The calibration's own curves decide λ̂ wherever they can (so the record's
    λ̂ is reproduced exactly); other levels use curves of a batched search of
    the same calibration images, cached per quantile level.
    """

    def __init__(self, calibrated: CalibratedMethod, store: Any, **kwargs: Any) -> None:
        from napari_conformal.core.consign.curves import CurveSet

        super().__init__(calibrated, store, **kwargs)
        self._own = CurveSet.from_curves(calibrated.curves)
        self._searched: dict[float, Any] = {}  # quantile level -> CurveSet of the batched search
        self._calibrator: Any = None

    def quantile_level(self, alpha: float) -> float:
        """The q of the box used at α."""
        from napari_conformal.core.consign.calibrator import quantile_level_for

        return quantile_level_for(alpha, self.method.quantile_level)

    def _read(self, alpha: float, nu: float) -> float:
        from napari_conformal.core.consign.curves import IncompleteCurvesError

        q = self.quantile_level(alpha)
        candidates = [
            c for c in (self._own, self._searched.get(q)) if c is not None and c.quantile_level == q
        ]
        for curves in candidates:
            try:
                return float(curves.lambda_hat(alpha, nu))
            except IncompleteCurvesError:
                continue
        raise CurvesPending(
            f"CONSIGN: λ̂ for alpha={alpha:g}, nu={nu:g} needs a coverage search of the calibration "
            f"images at box quantile q={q:g}"
        )

    def lambda_hat(self, alpha: float, nu: float | None = None) -> float:
        """λ̂(α, ν) from cached curves; raises :class:`CurvesPending` when a search must run first."""
        if nu is None:
            nu = self.method.nu
        key = (float(alpha), float(nu))
        with self._lock:
            if key in self._lambda_memo:
                return self._lambda_memo[key]
            lam = self._read(*key)
            self._lambda_memo[key] = lam
            return lam

    def needs_search(self, alpha: float, nu: float) -> bool:
        """Whether λ̂(α, ν) waits for :meth:`iter_search`."""
        try:
            self.lambda_hat(alpha, nu)
        except CurvesPending:
            return True
        except ConformalError:
            return False
        return False

    def iter_search(self, alpha: float, nu: float) -> Generator[tuple[int, int], None, float | None]:
        """Compute what λ̂(α, ν) needs (a progress generator for a worker thread).

        The first call computes the principal bases of the calibration images
        (one step per image); then one coverage search at α's box, resumable
        and cached by the core calibrator. Returns λ̂, or None when the levels
        cannot be calibrated (the error is raised by the next :meth:`lambda_hat`).
        """
        from napari_conformal.core.consign.calibrator import ConsignCalibrator
        from napari_conformal.core.consign.curves import IncompleteCurvesError
        from napari_conformal.core.consign.search import SearchConfig
        from napari_conformal.errors import CalibrationError

        method = self.method
        cal = [int(i) for i in self.record["cal_indices"]]
        total = len(cal) + 1
        if self._calibrator is None:
            bases = []
            yield 0, total
            for j, i in enumerate(cal):
                bases.append(method.prepare(self.store.image(i), self.store.samples(i)))
                yield j + 1, total
            self._calibrator = ConsignCalibrator(
                bases,
                [self.store.label(i) for i in cal],
                quantile_level=method.quantile_level,
                nu_max=max(float(nu), method.nu or 0.0, method.nu_max or 0.0),
                config=SearchConfig(lambda_max=method.lambda_max, **method.search_options),
            )
        yield len(cal), total
        try:
            curves = self._calibrator.curves(float(alpha), float(nu))
        except IncompleteCurvesError:  # pragma: no cover - curves() searches until decided
            return None
        except CalibrationError:
            curves = None
        if curves is not None:
            with self._lock:
                self._searched[float(curves.quantile_level)] = curves
                self._lambda_memo.clear()
                self.version += 1
        yield total, total
        try:
            return self.lambda_hat(alpha, nu)
        except ConformalError:
            return None

    def consign_set(self, index: int, alpha: float, lam: float) -> Any:
        """The :class:`~napari_conformal.core.consign.members.ConsignSet` of image ``index`` at α's box and λ."""
        return self.method_at(alpha, None).predict(self.prepared(index), lam)
