"""Interactive CONSIGN calibration: curves cached per quantile level, λ̂(α, ν) on demand.

:class:`ConsignCalibrator` holds what a viewer needs between slider moves:

* the per-image bases (label-free, computed once; :mod:`.basis`);
* per quantile level q (q = α/2 unless fixed), a resumable
  :class:`~.search.CoverageSearch` and its :class:`~.curves.CurveSet`;
* :meth:`lambda_hat` (α, ν): a read of the cached curves (microseconds to a
  millisecond for n = 500) when they decide it, otherwise the search resumes
  just far enough and the curves are re-packed.

Changing ν never re-runs the search unless ν exceeds what was searched
(``nu_max``); changing α re-runs only what depends on α, i.e. the search of
the new quantile level (once; then cached). Long steps take
``progress(done, total)`` and ``should_stop()`` callbacks and raise
``Cancelled`` (nothing partial is kept in a broken state: a cancelled
search can be resumed).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis, check_quantile_level, compute_bases
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.curves import CurveSet, IncompleteCurvesError
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig
from napari_conformal.core.progress import Step
from napari_conformal.core.quantiles import check_calibration_size, exact_fraction, max_uncovered
from napari_conformal.errors import CalibrationError

__all__ = ["ConsignCalibrator", "decided_rule", "iter_decided_curves", "quantile_level_for"]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


def quantile_level_for(alpha: float, quantile_level: float | None = None) -> float:
    """The q of eq. 5: ``quantile_level`` if given, else α/2 (the reference code)."""
    if quantile_level is not None:
        return check_quantile_level(quantile_level)
    return check_quantile_level(float(exact_fraction(alpha) / 2))


def decided_rule(search: CoverageSearch, alpha: float, nu: float) -> Callable[[], bool]:
    """A ``stop_when`` for ``search``: True once its curves decide λ̂(α, ν) (or prove it cannot be had).

    Deciding λ̂ at ν decides it at every smaller ν (each λ_i(ν) is non-decreasing in ν).
    """
    needed = search.n - max_uncovered(search.n, alpha)

    def decided() -> bool:
        if sum(st.best_acc > nu for st in search.states) < needed:
            return False
        try:
            search.curves().lambda_hat(alpha, nu)
        except IncompleteCurvesError:
            return False
        except CalibrationError:
            return True
        return True

    return decided


def iter_decided_curves(
    bases: Sequence[ImageBasis],
    labels: Sequence[np.ndarray | torch.Tensor],
    *,
    alpha: float,
    nu: float,
    quantile_level: float | None = None,
    config: SearchConfig | None = None,
    should_stop: ShouldStop | None = None,
    counted: Sequence[int] | None = None,
) -> Generator[Step, None, CurveSet]:
    """The batched coverage search of a calibration set, until λ̂(α, ν') is decided for every ν' ≤ ν.

    One search at the box of α's quantile level (q = α/2 unless ``quantile_level`` fixes it), run
    block by block and stopped by :func:`decided_rule`; the check ``n ≥ ⌈1/α⌉ − 1`` comes first.
    ``counted`` restricts the label-wise accuracy to those labels (see :class:`~.search.CoverageSearch`).

    Yields
    ------
    Step
        After each search block (stage ``"search"``).

    Returns
    -------
    CurveSet
        The curves, as the generator's return value.
    """
    check_calibration_size(len(bases), alpha)
    q = quantile_level_for(alpha, quantile_level)
    base = config if config is not None else SearchConfig()
    cfg = SearchConfig(**{**base.__dict__, "nu_max": float(nu)})
    search = CoverageSearch(bases, labels, make_box(list(bases), q), cfg, labels=counted)
    yield from search.iter_run(nu_max=float(nu), stop_when=decided_rule(search, alpha, float(nu)), should_stop=should_stop)
    return search.curves()


class ConsignCalibrator:
    """CONSIGN calibration state for one calibration set.

    Parameters
    ----------
    bases : sequence of ImageBasis
        Bases of the n calibration images.
    labels : sequence of array
        Their ground truths.
    quantile_level : float, optional
        Fixed q; default α/2 for each α.
    nu_max : float
        Largest ν the curves must answer without more search (the top of a
        ν slider); searches stop once enough images pass it.
    config : SearchConfig, optional
        Search parameters (its ``nu_max`` is replaced by this ``nu_max``).
    """

    def __init__(
        self,
        bases: Sequence[ImageBasis],
        labels: Sequence[np.ndarray | torch.Tensor],
        *,
        quantile_level: float | None = None,
        nu_max: float = 0.95,
        config: SearchConfig | None = None,
    ) -> None:
        if len(bases) == 0:
            raise CalibrationError("CONSIGN calibration needs at least one calibration image")
        if len(labels) != len(bases):
            raise CalibrationError(f"got {len(bases)} calibration images but {len(labels)} labels")
        if not 0.0 <= float(nu_max) < 1.0:
            raise CalibrationError(f"nu_max must lie in [0, 1), got {nu_max!r}")
        self.bases = list(bases)
        self.labels = list(labels)
        self.fixed_quantile_level = None if quantile_level is None else check_quantile_level(quantile_level)
        self.nu_max = float(nu_max)
        base = config if config is not None else SearchConfig()
        self.config = SearchConfig(**{**base.__dict__, "nu_max": self.nu_max})
        self._searches: dict[float, CoverageSearch] = {}
        self._curves: dict[float, CurveSet] = {}

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[np.ndarray | torch.Tensor],
        labels: Sequence[np.ndarray | torch.Tensor],
        k: int = 5,
        *,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        **kwargs: object,
    ) -> ConsignCalibrator:
        """Compute the bases of the calibration images, then build the calibrator."""
        bases = compute_bases(samples, k, device=device, progress=progress, should_stop=should_stop)
        return cls(bases, labels, **kwargs)  # type: ignore[arg-type]

    @property
    def n(self) -> int:
        """Number of calibration images."""
        return len(self.bases)

    def quantile_level(self, alpha: float) -> float:
        """The q used for α."""
        return quantile_level_for(alpha, self.fixed_quantile_level)

    def search(self, alpha: float) -> CoverageSearch:
        """The (cached, resumable) coverage search of α's quantile level."""
        q = self.quantile_level(alpha)
        if q not in self._searches:
            self._searches[q] = CoverageSearch(self.bases, self.labels, make_box(self.bases, q), self.config)
        return self._searches[q]

    def _decided(self, alpha: float, nu: float) -> Callable[[], bool]:
        """A ``stop_when`` for the search: True once the curves decide λ̂(α, ν)."""
        return decided_rule(self.search(alpha), alpha, nu)

    def curves(
        self,
        alpha: float,
        nu: float | None = None,
        *,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> CurveSet:
        """Curves of α's quantile level that decide λ̂(α, ν') for every ν' ≤ max(ν, nu_max).

        Deciding λ̂ at the largest ν decides it at every smaller ν (each λ_i(ν)
        is non-decreasing in ν), so one search serves the whole ν slider.
        """
        check_calibration_size(self.n, alpha)
        q = self.quantile_level(alpha)
        target = self.nu_max if nu is None else max(float(nu), self.nu_max)
        search = self.search(alpha)
        decided = self._decided(alpha, target)
        if q not in self._curves or not decided():
            search.run(nu_max=target, stop_when=decided, progress=progress, should_stop=should_stop)
            self._curves[q] = search.curves()
        return self._curves[q]

    def lambda_hat(
        self,
        alpha: float,
        nu: float,
        *,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> float:
        """λ̂(α, ν): a read of the cached curves when they decide it, else the search resumes first.

        Raises
        ------
        InsufficientCalibrationError, LambdaMaxReachedError
            As :meth:`~.curves.CurveSet.lambda_hat`.
        """
        q = self.quantile_level(alpha)
        if q in self._curves:
            try:
                return self._curves[q].lambda_hat(alpha, nu)
            except IncompleteCurvesError:
                pass
        return self.curves(alpha, nu, progress=progress, should_stop=should_stop).lambda_hat(alpha, nu)

    def per_image_lambda(self, alpha: float, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """λ_i(ν) of each calibration image at α's quantile level (see :meth:`CurveSet.per_image_lambda`)."""
        return self.curves(alpha, nu).per_image_lambda(nu)
