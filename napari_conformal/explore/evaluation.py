"""Test-set quantities the metric panels plot, computed from cached curves where possible.

Two kinds of work:

* **curves** (expensive once, then free): the calibration statistic of each
  *test* image (:meth:`MethodSession.test_curve`) says, for any λ, how much of
  its ground truth the set covers (:func:`realised_coverage`). With them, the
  realised test coverage against 1 − α (:func:`coverage_curve`) and λ̂ against
  α (:func:`lambda_curve`) are re-reductions, cheap enough for every slider move.
* **metrics at the current λ̂** (:func:`iter_test_metrics`): stretch, Dice,
  ASSD, HD95 and, for methods whose members can be sampled, Chao1 / SEC /
  correlation against N; one ``method.evaluate`` per test image.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.explore.session import MethodSession

__all__ = [
    "EvaluationResult",
    "coverage_curve",
    "iter_test_curves",
    "iter_test_metrics",
    "iter_test_set",
    "lambda_curve",
    "realised_coverage",
]


def realised_coverage(method: Any, curve: Any, lam: float, nu: float | None = None) -> float:
    """What a method's set at ``lam`` covers of one image's ground truth, read from its curve.

    Parameters
    ----------
    method : ConformalMethod
        The method that produced ``curve`` (``method.curve(prepared, label)``).
    curve : object
        The image's curve.
    lam : float
        λ̂.
    nu : float, optional
        Label-wise accuracy (CONSIGN and pixel-wise).

    Returns
    -------
    float
        Threshold methods (CRC, RW-CP): the covered fraction of the ground-truth
        foreground, ``1 − FNR``. Consema: 1.0 when the coverage ratio reaches τ,
        else 0.0. Pixel-wise and CONSIGN: 1.0 when the ground truth is a member
        at accuracy ν, else 0.0. NaN for a curve this function does not know.
    """
    from napari_conformal.core.methods.consema import ConsemaMethod
    from napari_conformal.core.methods.pixelwise import MembershipCurve
    from napari_conformal.core.methods.threshold import ThresholdFNRMethod

    lam = float(lam)
    if isinstance(method, ThresholdFNRMethod):
        arr = np.asarray(curve)
        return float(np.count_nonzero(arr <= lam) / arr.size) if arr.size else math.nan
    if isinstance(method, ConsemaMethod):
        return float(int(curve) <= lam)
    if isinstance(curve, MembershipCurve):
        if nu is None:
            raise ConformalError("nu is needed to read the coverage of a pixel-wise set")
        return float(curve.accuracy(lam) > float(nu))
    accuracy_at = getattr(curve, "accuracy_at", None)  # CONSIGN's CoverageCurve
    if accuracy_at is not None and nu is not None:
        try:
            return float(float(accuracy_at(lam)) > float(nu))
        except ConformalError:
            return math.nan
    return math.nan


def iter_test_curves(
    session: MethodSession, indices: Sequence[int]
) -> Generator[tuple[int, int], None, dict[int, Any]]:
    """Compute (and cache in the session) the curves of the test images ``indices``.

    Images whose curve is undefined (e.g. no ground-truth foreground) are
    skipped. Returns ``{index: curve}`` as the generator's value.
    """
    out: dict[int, Any] = {}
    total = len(indices)
    yield 0, total
    for j, i in enumerate(indices):
        try:
            out[int(i)] = session.test_curve(int(i))
        except ConformalError:
            pass
        yield j + 1, total
    return out


def lambda_curve(session: MethodSession, alphas: Sequence[float], nu: float | None) -> np.ndarray:
    """λ̂(α) at each α (NaN where the method cannot calibrate, e.g. n < 1/α − 1)."""
    out = np.full(len(alphas), np.nan)
    for j, a in enumerate(alphas):
        try:
            out[j] = session.lambda_hat(float(a), nu)
        except ConformalError:
            pass
    return out


def coverage_curve(
    session: MethodSession, curves: dict[int, Any], alphas: Sequence[float], nu: float | None
) -> np.ndarray:
    """Mean realised coverage of the test images (``curves``) at λ̂(α), for each α.

    Compare with ``1 − α``: for CRC/RW-CP it is ``1 − mean FNR`` (≥ 1 − α in
    expectation), for the others the fraction of covered images.
    """
    lams = lambda_curve(session, alphas, nu)
    out = np.full(len(alphas), np.nan)
    if not curves:
        return out
    for j, (alpha, lam) in enumerate(zip(alphas, lams, strict=True)):
        if np.isfinite(lam) and _curves_apply(session, curves, float(alpha), nu):
            values = [realised_coverage(session.method, c, lam, nu) for c in curves.values()]
            finite = [v for v in values if not math.isnan(v)]
            out[j] = float(np.mean(finite)) if finite else np.nan
    return out


def _curves_apply(session: MethodSession, curves: dict[int, Any], alpha: float, nu: float | None) -> bool:
    """Whether test curves answer coverage at (α, ν).

    CONSIGN's test curves belong to the box of one α (its quantile level) and
    were searched up to the calibrated ν: other levels need another search.
    """
    first = next(iter(curves.values()))
    level = getattr(first, "quantile_level", None)
    if level is None:
        return True
    from napari_conformal.core.consign.calibrator import quantile_level_for

    method = session.method
    if quantile_level_for(alpha, method.quantile_level) != level:
        return False
    searched_nu = max(v for v in (method.nu, method.nu_max, 0.0) if v is not None)
    return nu is not None and nu <= searched_nu


@dataclass
class EvaluationResult:
    """Per-image and mean metrics of one method on the test images at one (α, ν).

    Attributes
    ----------
    name : str
        Method name.
    alpha, nu, lambda_hat : float
        Where the sets were evaluated (ν None for methods without ν).
    rows : list of dict
        ``method.evaluate`` of each test image, with ``index``.
    mean : dict
        NaN-ignoring means (:func:`~napari_conformal.core.metrics.segmentation.nanmean_metrics`).
    """

    name: str
    alpha: float
    nu: float | None
    lambda_hat: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, Any] = field(default_factory=dict)


def iter_test_metrics(
    session: MethodSession,
    indices: Sequence[int],
    *,
    alpha: float,
    nu: float | None,
    n_samples: Sequence[int] = (),
    seed: int = 0,
) -> Generator[tuple[int, int], None, EvaluationResult]:
    """``method.evaluate`` of every test image at λ̂(α, ν) (prepared images come from the session cache).

    ``n_samples`` applies to methods whose members can be sampled (Chao1, SEC,
    correlation against N); image i uses ``seed + i`` as in
    :func:`napari_conformal.api.iter_evaluate`.
    """
    from napari_conformal.core.metrics.segmentation import nanmean_metrics

    lam = session.lambda_hat(alpha, nu)
    method = session.method_at(alpha, nu)
    ns = [int(n) for n in n_samples] if method.samples_members else []
    spacing = session.store.spacing
    rows: list[dict[str, Any]] = []
    total = len(indices)
    yield 0, total
    for j, i in enumerate(indices):
        i = int(i)
        row = method.evaluate(
            session.prepared(i), session.store.label(i), lam, spacing=spacing, n_samples=ns, seed=seed + i
        )
        rows.append({"index": i, **row})
        yield j + 1, total
    return EvaluationResult(
        name=session.name,
        alpha=float(alpha),
        nu=float(nu) if session.uses_nu and nu is not None else None,
        lambda_hat=lam,
        rows=rows,
        mean=nanmean_metrics(rows),
    )


def iter_test_set(
    sessions: Sequence[MethodSession],
    indices: Sequence[int],
    *,
    alpha: float,
    nu: float | None,
    n_samples: Sequence[int] = (),
    seed: int = 0,
    curves: bool = True,
) -> Generator[tuple[int, int], None, tuple[dict[str, dict[int, Any]], dict[str, EvaluationResult]]]:
    """Test curves (optional) and metrics at (α, ν) of several sessions, as one progress generator.

    Returns ``(curves_by_method, metrics_by_method)``; a method whose λ̂ cannot
    be computed at this α is left out of the metrics (its curves are kept).
    """
    steps_per = len(indices) * (2 if curves else 1)
    total = max(steps_per * len(sessions), 1)
    done = 0
    out_curves: dict[str, dict[int, Any]] = {}
    out_metrics: dict[str, EvaluationResult] = {}
    yield 0, total
    for session in sessions:
        if curves:
            gen = iter_test_curves(session, indices)
            try:
                while True:
                    step, _ = next(gen)
                    yield done + step, total
            except StopIteration as stop:
                out_curves[session.name] = stop.value
            done += len(indices)
        try:
            session.lambda_hat(alpha, nu)
        except ConformalError:
            done += len(indices)
            continue
        gen = iter_test_metrics(session, indices, alpha=alpha, nu=nu, n_samples=n_samples, seed=seed)
        try:
            while True:
                step, _ = next(gen)
                yield done + step, total
        except StopIteration as stop:
            out_metrics[session.name] = stop.value
        done += len(indices)
    return out_curves, out_metrics
