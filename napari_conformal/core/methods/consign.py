"""CONSIGN as a :class:`~napari_conformal.core.methods.base.ConformalMethod` (registered as ``"consign"``).

Per image (label-free) ``prepare`` computes the principal basis (:mod:`napari_conformal.core.consign.basis`).
The calibration curves come from the batched coverage search (:meth:`ConsignMethod.iter_curves`,
the batch hook every caller takes): one search of all calibration images at the box of α's
quantile level, stopped once λ̂(α, ν') is decided for every ν' up to the calibrated ν (or
``nu_max``). ``lambda_hat`` reduces the curves with the 0/1-loss CRC rule
(:mod:`napari_conformal.core.consign.curves`); ``predict`` returns the image's
:class:`~napari_conformal.core.consign.members.ConsignSet`; ``evaluate`` reports membership and the
sampling metrics.

**Levels.** The box uses the quantile level q = α/2 (the reference code) unless the
``quantile_level`` option fixes it, so a curve belongs to one q. Each image's curve is a
:class:`ConsignCurve` holding one :class:`~napari_conformal.core.consign.curves.CoverageCurve` per
q searched: λ̂ at another α with the same q is a re-reduction; a new q needs a search of its own
(:meth:`~ConsignMethod.answers` says which), which :meth:`~ConsignMethod.iter_curves` adds to the
curves it is given. Each such λ̂ is an exact CONSIGN calibration at its α on the same calibration
images, so the guarantee holds at every α the curves answer.

Metrics of ``evaluate`` (one test image):

``covered``
    1 when the calibration's search procedure, stopped at λ̂, finds a member with label-wise
    accuracy > ν, else 0.
``best_accuracy``
    The largest label-wise accuracy that search found in the box at λ̂.
``dice``
    Mean Dice over the foreground labels present in the ground truth, of the box-centre member
    ``P(μ + Σ m_k u_k)`` (the member the explorer's sliders start from); NaN without foreground.
    With the ``structure`` option set, the Dice of that structure alone.
``uncertain_fraction``
    Fraction of pixels whose label is not the same in every member.
``chao1``, ``chao1_classical``, ``sec``, ``correlation``, ``correlation_offdiag``
    From :func:`napari_conformal.core.metrics.diversity.diversity_curves` on N members drawn
    uniformly from the box, keyed by ``str(N)``.

With ``structure`` set, the label-wise accuracy of the search, of ``covered``, ``best_accuracy``
and SEC counts that label only (its recall; docs/algorithms.md#per-structure-guarantees).

``coverage``, ``stretch``, ``assd`` and ``hd95`` are absent: they are defined for pixel sets, and a
CONSIGN set is a set of segmentations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis, check_quantile_level, compute_basis
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.calibrator import iter_decided_curves, quantile_level_for
from napari_conformal.core.consign.curves import CoverageCurve, CurveSet, IncompleteCurvesError
from napari_conformal.core.consign.members import ConsignSet, sample_members, segment
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig
from napari_conformal.core.consign.spill import BasisSpill
from napari_conformal.core.device import resolve_device
from napari_conformal.core.methods.base import ConformalMethod, Option, register
from napari_conformal.core.methods.pixelwise import STRUCTURE, check_structure_present, membership_guarantee
from napari_conformal.core.metrics.accuracy import AccuracyCurve
from napari_conformal.core.progress import Step
from napari_conformal.core.validation import check_alpha, check_fg_class, check_k, check_nu, check_samples
from napari_conformal.errors import CalibrationError, CalibrationFileError, ParameterError

__all__ = ["ConsignCurve", "ConsignMethod", "CurvesPending"]

_SEARCH_FIELDS = frozenset(f for f in SearchConfig.__dataclass_fields__ if f not in ("lambda_max", "nu_max"))


class CurvesPending(IncompleteCurvesError):
    """λ̂ at these levels needs a coverage search the curves do not hold yet (see ``iter_curves``)."""


@dataclass(frozen=True)
class ConsignCurve:
    """One calibration image's CONSIGN curves: one :class:`CoverageCurve` per box quantile level.

    Attributes
    ----------
    levels : tuple of CoverageCurve
        Sorted by quantile level, at most one per level.
    """

    levels: tuple[CoverageCurve, ...]

    def at(self, quantile_level: float) -> CoverageCurve | None:
        """The curve of quantile level q, or None when it was not searched."""
        for c in self.levels:
            if c.quantile_level == quantile_level:
                return c
        return None

    def with_level(self, curve: CoverageCurve) -> ConsignCurve:
        """These curves with ``curve`` added (replacing one of the same quantile level)."""
        rest = [c for c in self.levels if c.quantile_level != curve.quantile_level]
        return ConsignCurve(tuple(sorted([*rest, curve], key=lambda c: c.quantile_level)))


@register("consign")
class ConsignMethod(ConformalMethod[ImageBasis, ConsignCurve, ConsignSet]):
    """CONSIGN (Viti et al.): a λ-scaled box of principal-component coefficients.

    Options (:attr:`options`): ``k`` principal directions K (5, at most T − 1); ``quantile_level``
    q of eq. 5 (unset: α/2 at every α, the reference code); ``lambda_max`` the largest λ searched
    (500, the paper's); ``nu_max`` the largest ν the curves must answer without another search
    (unset: the calibrated ν); ``search`` overrides of
    :class:`~napari_conformal.core.consign.search.SearchConfig` (e.g. ``{"starts": 4}``);
    ``memory_budget`` the MiB of calibration bases a calibration keeps in memory (1024): when the
    bases of the calibration images, (K + 1)·L·|S|·4 bytes each, add up to more, every one waits in
    a temporary directory and the search reads it back only while it gathers that image's free
    pixels (:mod:`napari_conformal.core.consign.spill`; the same curves and λ̂; 0 always spills).

    Parameters
    ----------
    device : str
        Where bases and searches live ("auto", "cpu", "cuda", …; "mps" falls back to the CPU with a
        warning: the search needs float64).
    **options
        See above.
    """

    title: ClassVar[str] = "CONSIGN"
    colour: ClassVar[str] = "#ff7f0e"
    uses_nu: ClassVar[bool] = True
    samples_members: ClassVar[bool] = True
    batch_curves: ClassVar[bool] = True
    uses_device: ClassVar[bool] = True
    lambda_name: ClassVar[str] = "box scale λ"
    lambda_unit: ClassVar[str] = "multiples of each coefficient's quantile half-range σ_k·(b_k − a_k)/2"
    layers: ClassVar[tuple[str, ...]] = ("member", "regions", "directions", "members")
    options: ClassVar[tuple[Option, ...]] = (
        Option("k", "int", 5, "principal components K of the model's samples (at most T − 1)", label="components K", minimum=1),
        Option(
            "quantile_level", "float", None, "quantile level q of the coefficient box (unset: q = α/2)",
            label="quantile q", minimum=0.0, maximum=0.5, exclusive_minimum=True, optional=True,
        ),
        Option("lambda_max", "float", 500.0, "largest box scale λ searched", label="λ max", minimum=0.0, exclusive_minimum=True),
        Option(
            "nu_max", "float", None, "largest ν the curves answer without another search (unset: the calibrated ν)",
            label="ν max", minimum=0.0, maximum=0.999, optional=True,
        ),
        Option("search", "json", None, "coverage-search settings, e.g. {\"starts\": 4}", optional=True),
        Option(
            "memory_budget", "int", 1024,
            "MiB of calibration bases kept in memory; beyond it they wait in a temporary directory (same λ̂)",
            label="bases in memory (MiB)", minimum=0,
        ),
        STRUCTURE,
    )
    structure_option: ClassVar[str | None] = "structure"
    structure: int | None
    k: int
    quantile_level: float | None
    lambda_max: float
    nu_max: float | None
    search: dict[str, Any] | None
    memory_budget: int

    def _setup(self) -> None:
        unknown = sorted(set(self.search or {}) - _SEARCH_FIELDS)
        if unknown:
            raise ParameterError(f"unknown CONSIGN search options {unknown}; valid: {sorted(_SEARCH_FIELDS)}")
        if self.quantile_level is not None:
            check_quantile_level(self.quantile_level)
        self.torch_device = resolve_device(self.device)
        if self.torch_device.type == "mps":  # the search needs float64, which MPS lacks
            warnings.warn(
                "CONSIGN runs on the CPU: its search needs float64, which MPS does not support",
                UserWarning,
                stacklevel=3,
            )
            self.torch_device = torch.device("cpu")
        self.config(0.0)  # validates the search options

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def counted(self) -> tuple[int, ...] | None:
        """The counted labels of the accuracy: ``(structure,)``, or None for every label present."""
        return None if self.structure is None else (int(self.structure),)

    def config(self, nu: float) -> SearchConfig:
        """The search settings for a run that must answer every ν' ≤ ν (and ≤ ``nu_max``)."""
        return SearchConfig(lambda_max=self.lambda_max, nu_max=self.search_target(nu), **(self.search or {}))

    def search_target(self, nu: float | None) -> float:
        """The ν a search runs to: the larger of ν and ``nu_max``."""
        return max(x for x in (nu, self.nu_max, 0.0) if x is not None)

    def q(self, alpha: float) -> float:
        """The box quantile level at α (``quantile_level``, else α/2)."""
        return quantile_level_for(check_alpha(alpha), self.quantile_level)

    def _curve_set(self, curves: Sequence[ConsignCurve], alpha: float, nu: float) -> CurveSet:
        q = self.q(alpha)
        key = tuple(curves)
        cache = self.__dict__.setdefault("_packed", {})  # q -> (curves, packed): a slider re-reads, not re-packs
        hit = cache.get(q)
        if hit is not None and len(hit[0]) == len(key) and all(a is b for a, b in zip(hit[0], key, strict=True)):
            return hit[1]
        level = [c.at(q) for c in curves]
        if any(c is None for c in level):
            raise CurvesPending(
                f"CONSIGN: lambda_hat for alpha={alpha:g}, nu={nu:g} needs a coverage search of the calibration "
                f"images at box quantile q={q:g}"
            )
        packed = CurveSet.from_curves(level)  # type: ignore[arg-type]
        if len(cache) > 16:
            cache.clear()
        cache[q] = (key, packed)
        return packed

    # -- the steps -------------------------------------------------------------------------------

    def prepared_pool(self, n: int) -> BasisSpill:
        """Where a calibration of ``n`` images keeps their bases: in memory up to ``memory_budget`` MiB in all."""
        return BasisSpill(int(self.memory_budget) * 2**20, expected=int(n))

    def prepare(self, image: np.ndarray | None, samples: np.ndarray, **kwargs: Any) -> ImageBasis:
        """Principal basis of the image's samples ``(T, L, *S)`` (the image itself is not used)."""
        if not kwargs.get("validated", False):
            check_samples(samples, stored_dtype=kwargs.get("stored_dtype"))
        check_k(self.k, np.shape(samples)[0])
        return compute_basis(samples, self.k, device=self.torch_device)

    def curve(
        self, prepared: ImageBasis, label: np.ndarray, *, alpha: float | None = None, nu: float | None = None
    ) -> ConsignCurve:
        """acc*(λ) of one image searched alone, until acc* > max(ν, nu_max) or λ_max (slow; see ``iter_curves``)."""
        if alpha is None:
            raise ParameterError("CONSIGN curves depend on alpha (the box quantile level q = alpha/2)")
        q = self.q(alpha)
        search = CoverageSearch(
            [prepared], [label], make_box([prepared], q), self.config(nu or 0.0), labels=self.counted
        )
        search.run()
        return ConsignCurve((search.curves().curves[0],))

    def iter_curves(
        self,
        prepared: Sequence[ImageBasis],
        labels: Sequence[np.ndarray],
        *,
        alpha: float,
        nu: float | None = None,
        previous: Sequence[ConsignCurve] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, list[ConsignCurve]]:
        """The batched coverage search of the calibration set at α's box, added to ``previous`` curves.

        Stops once λ̂(α, ν') is decided for every ν' ≤ max(ν, nu_max); the curves of other quantile
        levels in ``previous`` are kept as they are.
        """
        nu = check_nu(nu)
        if previous is not None and self.answers(previous, alpha=alpha, nu=self.search_target(nu)):
            return list(previous)
        curve_set = yield from iter_decided_curves(
            prepared,
            labels,
            alpha=alpha,
            nu=self.search_target(nu),
            quantile_level=self.q(alpha),
            config=self.config(nu),
            should_stop=should_stop,
            counted=self.counted,
        )
        base = list(previous) if previous is not None else [ConsignCurve(()) for _ in prepared]
        return [old.with_level(new) for old, new in zip(base, curve_set.curves, strict=True)]

    def lambda_hat(self, curves: Sequence[ConsignCurve], *, alpha: float, nu: float | None = None) -> float:
        """λ̂(α, ν) from the curves of α's quantile level (:class:`CurvesPending` when there are none)."""
        nu = check_nu(nu)
        return self._curve_set(curves, alpha, nu).lambda_hat(check_alpha(alpha), nu)

    def answers(self, curves: Sequence[ConsignCurve], *, alpha: float, nu: float | None = None) -> bool:
        """Whether the curves hold α's quantile level searched far enough for λ̂(α, ν)."""
        try:
            self.lambda_hat(curves, alpha=alpha, nu=nu)
        except IncompleteCurvesError:
            return False
        except CalibrationError:
            return True  # decided: λ̂ cannot be had (e.g. λ_max reached)
        return True

    def predict(self, prepared: ImageBasis, lambda_hat: float, *, alpha: float, nu: float | None = None) -> ConsignSet:
        """The image's set at λ̂ and α's box (slider bounds, members, samples, regions)."""
        return ConsignSet(prepared, make_box(prepared, self.q(alpha)), float(lambda_hat))

    def realised(self, curve: ConsignCurve, lambda_hat: float, *, alpha: float, nu: float | None = None) -> float:
        """1.0 when the image's search found a member with accuracy > ν in the box at λ̂, else 0.0."""
        level = curve.at(self.q(alpha))
        if level is None:
            raise CurvesPending(f"CONSIGN: no curve at box quantile q={self.q(alpha):g}")
        return float(level.accuracy_at(float(lambda_hat)) > check_nu(nu))

    def iter_realised(
        self,
        prepared: Sequence[ImageBasis],
        labels: Sequence[np.ndarray],
        lambda_hat: float,
        *,
        alpha: float,
        nu: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, list[float]]:
        """Membership of many test images at λ̂: one batched search up to λ̂ (the calibration's procedure)."""
        nu = check_nu(nu)
        lam = float(lambda_hat)
        search = CoverageSearch(
            list(prepared),
            list(labels),
            make_box(list(prepared), self.q(alpha)),
            self.config(nu),
            labels=self.counted,
        )
        yield from search.iter_run(until_lambda=lam, until_nu=nu, should_stop=should_stop)
        return [float(search.accuracy_at(j, lam) > nu) for j in range(search.n)]

    def covered(self, prepared: ImageBasis, label: np.ndarray, lambda_hat: float, *, alpha: float, nu: float) -> float:
        """acc*(λ̂) found by the calibration's search procedure for this image (covered iff > ν)."""
        nu = check_nu(nu)
        search = CoverageSearch(
            [prepared], [label], make_box([prepared], self.q(alpha)), self.config(nu), labels=self.counted
        )
        search.run(until_lambda=float(lambda_hat), until_nu=nu)
        return search.accuracy_at(0, float(lambda_hat))

    def evaluate(
        self,
        prepared: ImageBasis,
        label: np.ndarray,
        lambda_hat: float,
        *,
        alpha: float,
        nu: float | None = None,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics (see the module docstring)."""
        from napari_conformal.core.metrics.diversity import diversity_curves
        from napari_conformal.core.metrics.segmentation import dice

        nu = check_nu(nu)
        truth = np.asarray(label)
        the_set = self.predict(prepared, lambda_hat, alpha=alpha)
        best = self.covered(prepared, truth, lambda_hat, alpha=alpha, nu=nu)
        centre = segment(prepared, the_set.box.centre).cpu().numpy()
        fg = [lab for lab in np.unique(truth) if lab != 0] if self.structure is None else [self.structure]
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

            curves = diversity_curves(
                draw, truth, nu, list(n_samples), seed, n_labels=prepared.n_labels, labels=self.counted
            )
            for key, values in curves.items():
                out[key] = {str(n): float(v) for n, v in values.items()}
        return out

    # -- what callers need to know ---------------------------------------------------------------

    def guarantee(self, alpha: float, nu: float | None = None) -> str:
        """e.g. "With probability ≥ 90 %, one of these segmentations has a label-wise accuracy above 90 %…"."""
        return membership_guarantee(alpha, nu, self.structure)

    def lambda_note(self, lambda_hat: float, *, alpha: float, nu: float | None = None) -> str | None:
        """At λ̂ = 0 the box is one point: the set is one segmentation."""
        if float(lambda_hat) == 0.0:
            return (
                "at this α the set is the model's own segmentation (the mean of its samples): "
                "the box is a single point"
            )
        return None

    def check_data(self, *, n_labels: int, n_samples: int, ndim: int) -> None:
        """K ≤ T − 1; ``structure``, when set, a label of the data."""
        check_k(self.k, n_samples)
        if self.structure is not None:
            check_fg_class(self.structure, n_labels, name="structure")

    def check_truth(self, label: np.ndarray) -> None:
        """With ``structure`` set, a ground truth must contain it (before the batched search)."""
        check_structure_present(self.structure, label)

    def lambda_limit(self) -> float:
        """``lambda_max``."""
        return float(self.lambda_max)

    def encode_curve(self, curve: ConsignCurve) -> dict[str, Any]:
        """``{"levels": [{quantile_level, lambdas, accuracies, coefficients, searched_to, exhausted, lambda_max}]}``."""
        from napari_conformal.core.arrays_json import encode_array

        levels = []
        for c in curve.levels:
            levels.append(
                {
                    **AccuracyCurve(c.lambdas, c.accuracies).encode(),
                    "coefficients": encode_array(np.asarray(c.coefficients, dtype=np.float64)),
                    "quantile_level": float(c.quantile_level),
                    "searched_to": float(c.searched_to),
                    "exhausted": bool(c.exhausted),
                    "lambda_max": float(c.lambda_max),
                }
            )
        return {"levels": levels}

    def decode_curve(self, doc: Mapping[str, Any]) -> ConsignCurve:
        """The inverse of :meth:`encode_curve`, every field checked."""
        from napari_conformal.core.arrays_json import decode_array

        if not isinstance(doc, Mapping) or set(doc) != {"levels"} or not isinstance(doc["levels"], list):
            raise CalibrationFileError("a CONSIGN curve must be {levels: [...]}")
        out = []
        for level in doc["levels"]:
            extra = ("coefficients", "quantile_level", "searched_to", "exhausted", "lambda_max")
            lam, acc = AccuracyCurve.decode_arrays(level, complete=False, extra=extra)
            coef = np.array(decode_array(level["coefficients"], "coefficients"))
            q, to, ex, lmax = (level[k] for k in ("quantile_level", "searched_to", "exhausted", "lambda_max"))
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (q, to, lmax))
            if not (numbers and isinstance(ex, bool) and 0 < q < 0.5 and 0 <= to <= lmax):
                raise CalibrationFileError("a CONSIGN curve level has a bad quantile_level, searched_to, exhausted or lambda_max")
            if coef.dtype != np.float64 or coef.ndim != 2 or coef.shape[0] != lam.size:
                raise CalibrationFileError("CONSIGN coefficients must be a (J, K) float64 array, one row per breakpoint")
            coef.flags.writeable = False
            out.append(CoverageCurve(lam, acc, coef, float(to), ex, float(q), float(lmax)))
        if len({c.quantile_level for c in out}) != len(out):
            raise CalibrationFileError("a CONSIGN curve holds the same quantile level twice")
        return ConsignCurve(tuple(sorted(out, key=lambda c: c.quantile_level)))
