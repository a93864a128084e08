"""Test-set quantities the metric panels plot, computed from curves where possible.

Two kinds of work:

* **coverage** (expensive once, then cheap): what the set realises on each *test* image
  (``1 − FNR`` or covered 0/1, :meth:`~napari_conformal.core.methods.base.ConformalMethod.realised`).
  For methods whose curves do not need a batched search, each test image's curve
  (:meth:`MethodSession.test_curve`) answers every λ, so realised coverage against 1 − α
  (:func:`coverage_curve`) is a re-reduction at each α; for the others (CONSIGN) the panel uses the
  levels the session has already evaluated (:meth:`MethodSession.iter_realised`).
* **metrics at the current λ̂** (:func:`iter_test_metrics`): stretch, Dice, ASSD, HD95 and, for
  methods whose members can be sampled, Chao1 / SEC / correlation against N.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_conformal.core.progress import Step
from napari_conformal.errors import CalibrationError, ConformalError
from napari_conformal.explore.session import MethodSession

__all__ = [
    "EvaluationResult",
    "coverage_curve",
    "iter_test_curves",
    "iter_test_metrics",
    "iter_test_set",
    "lambda_curve",
]


def iter_test_curves(session: MethodSession, indices: Sequence[int]) -> Generator[Step, None, dict[int, Any]]:
    """Per-image curves of the test images ``indices`` (cached in the session), for methods without a batched search.

    Images whose curve is undefined (e.g. no ground-truth foreground) are skipped. Methods that
    calibrate with a batched search (``batch_curves``) have no per-image test curves: ``{}``.
    """
    out: dict[int, Any] = {}
    if session.method.batch_curves:
        return out
    total = len(indices)
    yield Step(0, total, "curves")
    for j, i in enumerate(indices):
        try:
            out[int(i)] = session.test_curve(int(i))
        except CalibrationError:
            pass
        yield Step(j + 1, total, "curves")
    return out


def lambda_curve(session: MethodSession, alphas: Sequence[float], nu: float | None) -> np.ndarray:
    """λ̂(α) at each α (NaN where the curves cannot answer it, e.g. n < ⌈1/α⌉ − 1)."""
    out = np.full(len(alphas), np.nan)
    for j, a in enumerate(alphas):
        try:
            out[j] = session.lambda_hat(float(a), nu)
        except ConformalError:
            pass
    return out


def coverage_curve(
    session: MethodSession, curves: dict[int, Any], alphas: Sequence[float], nu: float | None, indices: Sequence[int] = ()
) -> np.ndarray:
    """Mean realised coverage of the test images at λ̂(α), for each α (NaN where unknown).

    Compare with ``1 − α``: for CRC/RW-CP it is ``1 − mean FNR`` (≥ 1 − α in expectation), for the
    others the fraction of covered images. With per-image ``curves`` every α is answered; without
    (batched-search methods) only the levels :meth:`MethodSession.iter_realised` already evaluated
    on ``indices``.
    """
    lams = lambda_curve(session, alphas, nu)
    out = np.full(len(alphas), np.nan)
    method = session.method
    for j, (alpha, lam) in enumerate(zip(alphas, lams, strict=True)):
        if not np.isfinite(lam):
            continue
        a, v = session.levels(float(alpha), nu)
        if curves:
            values = [method.realised(c, lam, alpha=a, nu=v) for c in curves.values()]
        else:
            known = session.cached_realised(indices, a, v)
            values = [] if known is None else list(known.values())
        finite = [x for x in values if not math.isnan(x)]
        out[j] = float(np.mean(finite)) if finite else np.nan
    return out


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
    realised : float
        Mean realised coverage (1 − FNR, or the covered fraction).
    """

    name: str
    alpha: float
    nu: float | None
    lambda_hat: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, Any] = field(default_factory=dict)
    realised: float = math.nan


def iter_test_metrics(
    session: MethodSession,
    indices: Sequence[int],
    *,
    alpha: float,
    nu: float | None,
    n_samples: Sequence[int] = (),
    seed: int = 0,
) -> Generator[Step, None, EvaluationResult]:
    """``method.evaluate`` of every test image at λ̂(α, ν) (prepared images from the session cache).

    ``n_samples`` applies to methods whose members can be sampled; image i uses ``seed + i`` as in
    :func:`napari_conformal.api.iter_evaluate`.
    """
    from napari_conformal.core.metrics.segmentation import nanmean_metrics

    a, v = session.levels(alpha, nu)
    lam = session.lambda_hat(a, v)
    method = session.method
    ns = [int(n) for n in n_samples] if method.samples_members else []
    spacing = session.store.spacing
    rows: list[dict[str, Any]] = []
    total = len(indices)
    yield Step(0, total, "metrics")
    for j, i in enumerate(indices):
        i = int(i)
        row = method.evaluate(
            session.prepared(i), session.store.label(i), lam, alpha=a, nu=v, spacing=spacing, n_samples=ns, seed=seed + i
        )
        rows.append({"index": i, **row})
        yield Step(j + 1, total, "metrics")
    realised = yield from session.iter_realised(indices, a, v)
    return EvaluationResult(
        name=session.name,
        alpha=a,
        nu=v,
        lambda_hat=lam,
        rows=rows,
        mean=nanmean_metrics(rows),
        realised=float(np.mean(list(realised.values()))) if realised else math.nan,
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
) -> Generator[Step, None, tuple[dict[str, dict[int, Any]], dict[str, EvaluationResult]]]:
    """Test curves (optional) and metrics at (α, ν) of several sessions, as one progress generator.

    Returns ``(curves_by_method, metrics_by_method)``; a method whose λ̂ cannot be computed at this α
    (or needs a search first) is left out of the metrics (its curves are kept).
    """
    out_curves: dict[str, dict[int, Any]] = {}
    out_metrics: dict[str, EvaluationResult] = {}
    for k, session in enumerate(sessions):
        stage = f"{session.title} ({k + 1}/{len(sessions)})"
        if curves:
            gen = iter_test_curves(session, indices)
            try:
                while True:
                    step = next(gen)
                    yield Step(step[0], step[1], stage)
            except StopIteration as stop:
                out_curves[session.name] = stop.value
        try:
            session.lambda_hat(alpha, nu)
        except ConformalError:
            continue
        gen2 = iter_test_metrics(session, indices, alpha=alpha, nu=nu, n_samples=n_samples, seed=seed)
        try:
            while True:
                step = next(gen2)
                yield Step(step[0], step[1], stage)
        except StopIteration as stop:
            out_metrics[session.name] = stop.value
    return out_curves, out_metrics
