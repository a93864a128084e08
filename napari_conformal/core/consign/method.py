"""CONSIGN as a :class:`~napari_conformal.core.method.ConformalMethod` (registered as ``"consign"``).

Per image (label-free) ``prepare`` computes the principal basis
(:mod:`.basis`); ``curve`` runs the coverage search of that image alone
(:mod:`.search`) and returns its acc*(λ) curve; ``lambda_hat`` reduces the
curves with the 0/1-loss CRC rule (:mod:`.curves`); ``predict`` returns the
image's :class:`~.members.ConsignSet`; ``evaluate`` reports membership and
the sampling metrics. :meth:`ConsignMethod.calibrate` does the curves of a
whole calibration set in one batched search that stops as soon as λ̂ is
decided (much faster than n separate ``curve`` calls, same λ̂).

Metrics of ``evaluate`` (one test image, SPEC §4 keys where they apply):

``covered``
    1 when the same search (the calibration's procedure, stopped at λ̂)
    finds a member with label-wise accuracy > ν, else 0.
``best_accuracy``
    The largest label-wise accuracy that search found in the box at λ̂.
``dice``
    Mean Dice over the foreground labels present in the ground truth, of
    the box-centre member ``P(μ + Σ m_k u_k)`` (the member the explorer's
    sliders start from); NaN when the ground truth has no foreground.
``uncertain_fraction``
    Fraction of pixels whose label is not the same in every member (the
    complement of the exact "always" regions): the spatial extent of the
    set's uncertainty.
``chao1``, ``chao1_classical``, ``sec``, ``correlation``, ``correlation_offdiag``
    From :func:`napari_conformal.core.diversity.diversity_curves` on N
    members drawn uniformly from the box, keyed by ``str(N)``.

``coverage``, ``stretch``, ``assd`` and ``hd95`` are absent: they are
defined for pixel sets, and a CONSIGN set is a set of segmentations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis, compute_basis
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.calibration import ConsignCalibrator, quantile_level_for
from napari_conformal.core.consign.curves import CoverageCurve, CurveSet
from napari_conformal.core.consign.members import ConsignSet, sample_members, segment
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig
from napari_conformal.core.device import resolve_device
from napari_conformal.core.method import ConformalMethod, register
from napari_conformal.errors import CalibrationError

__all__ = ["ConsignMethod"]

_SEARCH_FIELDS = {f for f in SearchConfig.__dataclass_fields__ if f not in ("lambda_max", "nu_max")}


@register("consign")
class ConsignMethod(ConformalMethod):
    """CONSIGN (Viti et al.): a λ-scaled box of principal-component coefficients.

    Parameters
    ----------
    alpha : float
        Miscoverage level α.
    nu : float
        Label-wise accuracy rate ν (the paper's β) in [0, 1).
    k : int
        Number of principal directions K (default 5), ``K ≤ T − 1``.
    quantile_level : float, optional
        q of eq. 5; default α/2 (the reference code).
    lambda_max : float
        Largest λ searched (paper: 500).
    nu_max : float, optional
        Largest ν the curves answer without more search (default ν).
    device : str or torch.device
        Where bases and searches live ("auto", "cpu", "cuda", …; "mps" falls
        back to the CPU with a warning: the search needs float64).
    search : dict, optional
        Overrides of :class:`~.search.SearchConfig` fields (e.g. ``starts``).
    """

    uses_nu = True
    uses_k = True
    samples_members = True

    def __init__(
        self,
        alpha: float,
        nu: float | None = None,
        k: int | None = None,
        *,
        quantile_level: float | None = None,
        lambda_max: float = 500.0,
        nu_max: float | None = None,
        device: str | torch.device = "cpu",
        search: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(alpha, nu, 5 if k is None else k)
        if self.nu is not None and not 0.0 <= self.nu < 1.0:
            raise CalibrationError(f"nu must lie in [0, 1), got {nu!r}")
        self.quantile_level = None if quantile_level is None else float(quantile_level)
        quantile_level_for(self.alpha, self.quantile_level)  # validates
        self.lambda_max = float(lambda_max)
        self.nu_max = None if nu_max is None else float(nu_max)
        self.device = resolve_device(device)
        if self.device.type == "mps":  # the search needs float64, which MPS lacks
            warnings.warn(
                "CONSIGN runs on the CPU: its search needs float64, which MPS does not support",
                UserWarning,
                stacklevel=2,
            )
            self.device = torch.device("cpu")
        extra = dict(search or {})
        unknown = sorted(set(extra) - _SEARCH_FIELDS)
        if unknown:
            raise CalibrationError(
                f"unknown CONSIGN search options {unknown}; valid: {sorted(_SEARCH_FIELDS)}"
            )
        self.search_options = extra
        self._nu_cap()  # validates nu_max

    # ------------------------------------------------------------------ helpers

    def _nu_cap(self) -> float:
        cap = max(x for x in (self.nu, self.nu_max, 0.0) if x is not None)
        if not 0.0 <= cap < 1.0:
            raise CalibrationError(f"nu_max must lie in [0, 1), got {self.nu_max!r}")
        return cap

    def _config(self) -> SearchConfig:
        return SearchConfig(lambda_max=self.lambda_max, nu_max=self._nu_cap(), **self.search_options)

    def _q(self, alpha: float | None = None) -> float:
        return quantile_level_for(self.alpha if alpha is None else alpha, self.quantile_level)

    def _need_nu(self, nu: float | None) -> float:
        value = self.nu if nu is None else float(nu)
        if value is None:
            raise CalibrationError("CONSIGN needs nu (label-wise accuracy rate in [0, 1))")
        return value

    def params(self) -> dict[str, Any]:
        """JSON parameters for ``CALIB.json``."""
        return {
            "quantile_level": self.quantile_level,
            "lambda_max": self.lambda_max,
            "nu_max": self.nu_max,
            "search": dict(self.search_options),
        }

    # ------------------------------------------------------------------ ConformalMethod

    def prepare(self, image: np.ndarray, samples: np.ndarray) -> ImageBasis:
        """Principal basis of the image's samples ``(T, L, *S)`` (the image itself is not used)."""
        return compute_basis(samples, self.k, device=self.device)

    def curve(self, prepared: ImageBasis, label: np.ndarray) -> CoverageCurve:
        """acc*(λ) of one calibration image, searched until acc* > max(ν, nu_max) or λ_max."""
        search = CoverageSearch([prepared], [label], make_box([prepared], self._q()), self._config())
        search.run()
        return search.curves().curves[0]

    def lambda_hat(
        self, curves: Sequence[CoverageCurve] | CurveSet, alpha: float | None = None, nu: float | None = None
    ) -> float:
        """λ̂(α, ν) from per-image curves (of this α's quantile level)."""
        alpha = self.alpha if alpha is None else float(alpha)
        curve_set = curves if isinstance(curves, CurveSet) else CurveSet.from_curves(curves)
        if not math.isclose(curve_set.quantile_level, self._q(alpha), rel_tol=0, abs_tol=1e-15):
            raise CalibrationError(
                f"the curves were searched at quantile level q={curve_set.quantile_level:g}, but alpha={alpha} "
                f"uses q={self._q(alpha):g}: compute the curves for this alpha (or fix quantile_level)"
            )
        return curve_set.lambda_hat(alpha, self._need_nu(nu))

    def calibrate(
        self,
        prepared: Sequence[ImageBasis],
        labels: Sequence[np.ndarray],
        *,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[float, CurveSet]:
        """λ̂ and the curves of a whole calibration set in one batched search.

        The search stops once λ̂(α, ν') is decided for every ν' ≤ max(ν, nu_max).
        """
        calibrator = ConsignCalibrator(
            prepared, labels, quantile_level=self.quantile_level, nu_max=self._nu_cap(), config=self._config()
        )
        nu = self._need_nu(None)
        curves = calibrator.curves(self.alpha, nu, progress=progress, should_stop=should_stop)
        return curves.lambda_hat(self.alpha, nu), curves

    def predict(self, prepared: ImageBasis, lambda_hat: float) -> ConsignSet:
        """The image's set at λ̂ (slider bounds, members, samples, regions)."""
        return ConsignSet(prepared, make_box(prepared, self._q()), float(lambda_hat))

    def covered(
        self, prepared: ImageBasis, label: np.ndarray, lambda_hat: float, nu: float | None = None
    ) -> float:
        """acc*(λ̂) found by the calibration's search procedure for this image (covered iff > ν)."""
        nu = self._need_nu(nu)
        search = CoverageSearch([prepared], [label], make_box([prepared], self._q()), self._config())
        search.run(until_lambda=float(lambda_hat), until_nu=nu)
        return search.accuracy_at(0, float(lambda_hat))

    def evaluate(
        self,
        prepared: ImageBasis,
        label: np.ndarray,
        lambda_hat: float,
        *,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics (see the module docstring)."""
        from napari_conformal.core.diversity import diversity_curves
        from napari_conformal.core.metrics import dice

        nu = self._need_nu(None)
        truth = np.asarray(label)
        the_set = self.predict(prepared, lambda_hat)
        best = self.covered(prepared, truth, lambda_hat, nu)
        centre = segment(prepared, the_set.box.centre).cpu().numpy()
        fg = [lab for lab in np.unique(truth) if lab != 0]
        dices = [dice(centre == lab, truth == lab) for lab in fg]
        out: dict[str, Any] = {
            "covered": int(best > nu),
            "best_accuracy": float(best),
            "dice": float(np.nanmean(dices)) if dices else float("nan"),
            "uncertain_fraction": float(the_set.regions().uncertain().float().mean()),
        }
        if n_samples:

            def draw(n: int, rng: np.random.Generator) -> np.ndarray:
                return sample_members(prepared, the_set.box, the_set.lambda_hat, n, rng).cpu().numpy()

            curves = diversity_curves(draw, truth, nu, list(n_samples), seed, n_labels=prepared.n_labels)
            for key, values in curves.items():
                out[key] = {str(n): float(v) for n, v in values.items()}
        return out
