"""The splits, one calibration per method and split, one evaluation pass per method: a report's numbers.

A report answers "did the guarantee hold on my data, and what do the sets look like?" for several
methods and risk levels at once. It draws ``R`` random calibration/test splits of the store
(:func:`napari_conformal.core.bands.repeated_splits`) and, for every method, runs the engine every
caller shares (:mod:`napari_conformal.api`):

1. **calibrate** once per split, at the largest α: :func:`~napari_conformal.api.calibrate` on the
   split's calibration images (CONSIGN's batched search; RW-CP reads cached features when the store
   has them). λ̂ at every other α is :meth:`~napari_conformal.core.calibration.Calibration.lambda_at`,
   a re-reduction of the same curves; where the curves do not answer an α (CONSIGN: another box
   quantile level) :func:`~napari_conformal.api.extend` adds the search of that level first, on
   calibration images prepared once for all such extensions.
2. **evaluate** in one pass over the images that are a test image in some split: each is read and
   prepared once, then the method's ``evaluate`` runs at the λ̂ of every α and split it is tested at,
   from that one prepared state; splits with the same λ̂ share the result (the metrics depend on the
   split only through λ̂). Members are sampled only at the diversity α, with seed ``seed + index``
   as in :func:`~napari_conformal.api.evaluate`, so every run's numbers are those of ``calibrate``
   followed by ``evaluate`` on its split.

A (method, α, split) whose λ̂ reaches the method's λ_max is a result, not bad input: the run has no
λ̂ and no metrics, and the report lists it. Before the methods, one cheap pass reads every test image
for what the model alone does (:mod:`napari_conformal.report.reference`).

:func:`iter_report` yields progress ``(done, total)`` in images; :func:`build_report` runs it with
callbacks. Images are read one at a time (memory: one image and one calibration, plus the λ̂ and
per-image metrics of every run), and ``scheduler=`` runs the per-image work on dask.distributed like
the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.api import drive, iter_calibrate, iter_extend, iter_map_images, iter_prepare
from napari_conformal.core.bands import repeated_splits
from napari_conformal.core.methods.base import ConformalMethod
from napari_conformal.core.progress import Step
from napari_conformal.core.validation import check_calibration_size
from napari_conformal.errors import ConformalError, LambdaMaxReachedError
from napari_conformal.report.conditional import conditional_coverage
from napari_conformal.report.plan import (
    DEFAULT_FALSE_ALARM,
    DEFAULT_N_SAMPLES,
    REPORT_FORMAT,
    REPORT_VERSION,
    build_methods,
    check_alphas,
    check_methods,
    check_n_samples,
    check_positive_int,
    default_diversity_alphas,
    method_info,
    resolve_n_cal,
)
from napari_conformal.report.reference import image_facts
from napari_conformal.report.summary import mean_std_dicts, summarize_runs

__all__ = ["build_report", "iter_report"]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]
Method = ConformalMethod[Any, Any, Any]


# ----------------------------------------------------------------------------------------- progress


def _relay(
    gen: Generator[Any, None, Any], place: Callable[[Any], int], total: int
) -> Generator[Step, None, Any]:
    """Re-yield the steps of ``gen`` as ``Step(place(step), total)``; returns ``gen``'s value."""
    try:
        while True:
            step = next(gen)
            yield Step(place(step), total, "report")
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def _images_done(offset: int, span: int) -> Callable[[Any], int]:
    """Place the "images" steps of a calibration at ``offset + done``; its other stages at the end."""

    def place(step: Any) -> int:
        if getattr(step, "stage", "images") == "images":
            return offset + min(int(step[0]), span)
        return offset + span

    return place


# ----------------------------------------------------------------------------------------- one split


def _levels(method: Method, alpha: float, nu: float | None) -> tuple[float, float | None]:
    return alpha, (nu if method.uses_nu else None)


def _iter_calibrations(
    store: Any,
    name: str,
    method: Method,
    split: int,
    cal: Sequence[int],
    alphas: Sequence[float],
    nu: float | None,
    seed: int,
    scheduler: Any,
    offset: int,
    total: int,
    curve_caches: dict[float, dict[int, Any]] | None = None,
) -> Generator[Step, None, dict[float, tuple[Any, str | None]]]:
    """``{α: (calibration at α or None, error or None)}`` of one method on one split.

    One :func:`~napari_conformal.api.calibrate` at the largest α (again at the next α when λ̂
    reaches λ_max there), then :meth:`Calibration.lambda_at` per α, after an
    :func:`~napari_conformal.api.extend` where the curves do not answer that α. ``curve_caches``
    (α → image → curve, shared by the splits of one method) spares the per-image work of an image
    already calibrated in an earlier split (methods whose curves are computed image by image).
    """
    out: dict[float, tuple[Any, str | None]] = {}
    calibration = None
    prepared: list[tuple[Any, Any]] | None = None  # the calibration images, prepared once for every extend
    for alpha in sorted(alphas, reverse=True):
        a, v = _levels(method, alpha, nu)
        label = f"method {name}, alpha {alpha:g}, split {split}"
        try:
            if calibration is None:
                gen = iter_calibrate(
                    store,
                    method,
                    alpha=a,
                    nu=v,
                    cal_indices=cal,
                    scheduler=scheduler,
                    split_seed=seed,
                    curve_cache=None if curve_caches is None else curve_caches.setdefault(alpha, {}),
                )
                calibration = yield from _relay(gen, _images_done(offset, len(cal)), total)
                out[alpha] = (calibration, None)
                continue
            if not calibration.answers(a, v):
                hold = lambda _: offset + len(cal)  # noqa: E731 - progress stays at the calibration's end
                if prepared is None:
                    prepared = yield from _relay(
                        iter_prepare(store, method, list(cal), scheduler=scheduler), hold, total
                    )
                gen = iter_extend(
                    calibration,
                    store,
                    alpha=a,
                    nu=v,
                    prepared=[p for p, _ in prepared],
                    labels=[y for _, y in prepared],
                )
                calibration = yield from _relay(gen, hold, total)
            out[alpha] = (calibration.at(a, v), None)
        except LambdaMaxReachedError as exc:
            out[alpha] = (None, f"{label}: {' '.join(str(exc).split())}")
        except ConformalError as exc:
            raise type(exc)(f"{label}: {exc}") from None
    return out


def _cal_realised(method: Method, calibration: Any, alpha: float, nu: float | None) -> dict[str, list[float]]:
    """Per calibration image, what the set realises at λ̂ and just below it (the next float down).

    The difference is what sits exactly at λ̂: a jump of the calibration risk (FNR methods) or the
    calibration images whose covering value is λ̂ (ties). Below the smallest λ (λ̂ = 0) nothing is
    covered.
    """
    a, v = _levels(method, alpha, nu)
    lam = float(calibration.lambda_hat)
    at = [float(method.realised(c, lam, alpha=a, nu=v)) for c in calibration.curves]
    if lam > 0:
        left = float(np.nextafter(lam, -np.inf))
        below = [float(method.realised(c, left, alpha=a, nu=v)) for c in calibration.curves]
    else:
        below = [0.0] * len(at)
    return {"cal_realised": at, "cal_realised_left": below}


def _evaluator(
    store: Any,
    name: str,
    method: Method,
    todo: Mapping[int, Sequence[tuple[float, float]]],
    nu: float | None,
    sampling: Mapping[float, Sequence[int]],
    seed: int,
) -> Callable[[int], dict[tuple[float, float], dict[str, Any]]]:
    """``fn(i)``: test image i read and prepared once, then evaluated at every (α, λ̂) of ``todo[i]``."""
    spacing = store.spacing

    def one(i: int) -> dict[tuple[float, float], dict[str, Any]]:
        ((prepared, label),) = drive(iter_prepare(store, method, [i]))
        out = {}
        for alpha, lam in todo[i]:
            a, v = _levels(method, alpha, nu)
            try:
                out[(alpha, lam)] = method.evaluate(
                    prepared,
                    label,
                    lam,
                    alpha=a,
                    nu=v,
                    spacing=spacing,
                    n_samples=sampling[alpha],
                    seed=seed + i,
                )
            except ConformalError as exc:
                raise type(exc)(f"image {i}, method {name}, alpha {alpha:g}: {exc}") from None
        return out

    return one


def _iter_method(
    store: Any,
    name: str,
    method: Method,
    split_list: Sequence[tuple[Sequence[int], Sequence[int]]],
    alphas: Sequence[float],
    nu: float | None,
    sampling: Mapping[float, Sequence[int]],
    seed: int,
    scheduler: Any,
    offset: int,
    total: int,
) -> Generator[Step, None, list[dict[str, Any]]]:
    """The runs (one per α and split) of one method.

    First one calibration per split (kept only as λ̂ and the calibration images' realised values),
    then one pass over the images that are a test image in some split: each is prepared once and
    evaluated at every distinct (α, λ̂) of the splits it is tested in (the metrics depend on the split
    only through λ̂).
    """
    from napari_conformal.core.metrics.segmentation import nanmean_metrics

    outcome: dict[tuple[int, float], dict[str, Any]] = {}  # (split, α) → {lambda_hat, error, cal_realised…}
    curve_caches: dict[float, dict[int, Any]] = {}  # an image's curve is the same in every split
    for r, (cal, _) in enumerate(split_list):
        calibrations = yield from _iter_calibrations(
            store, name, method, r, cal, alphas, nu, seed, scheduler, offset, total, curve_caches
        )
        for alpha, (calibration, error) in calibrations.items():
            if calibration is None:
                outcome[(r, alpha)] = {"lambda_hat": None, "error": error}
            else:
                lam = float(calibration.lambda_hat)
                outcome[(r, alpha)] = {"lambda_hat": lam, **_cal_realised(method, calibration, alpha, nu)}
        offset += len(cal)
        del calibrations
    del curve_caches
    todo: dict[int, list[tuple[float, float]]] = {}
    for r, (_, test) in enumerate(split_list):
        for alpha in alphas:
            lam = outcome[(r, alpha)]["lambda_hat"]
            if lam is None:
                continue
            for i in test:
                if (alpha, lam) not in todo.setdefault(i, []):
                    todo[i].append((alpha, lam))
    images = sorted(i for i, pairs in todo.items() if pairs)
    metrics: dict[int, dict[tuple[float, float], dict[str, Any]]] = {}
    if images:
        fn = _evaluator(store, name, method, todo, nu, sampling, seed)
        gen = iter_map_images(fn, images, scheduler=scheduler, stage="images")
        rows = yield from _relay(gen, lambda step: offset + int(step[0]), total)
        metrics = dict(zip(images, rows, strict=True))
    yield Step(offset + len({i for _, test in split_list for i in test}), total, "report")
    runs = []
    for alpha in alphas:
        a, v = _levels(method, alpha, nu)
        text = method.guarantee(a, v)
        for r, (cal, test) in enumerate(split_list):
            out = outcome[(r, alpha)]
            lam = out["lambda_hat"]
            run: dict[str, Any] = {
                "method": name,
                "alpha": alpha,
                "split": r,
                "lambda_hat": lam,
                "n_cal": len(cal),
                "n_test": len(test),
                "sampled": bool(sampling[alpha]) and lam is not None,
                "guarantee": text,
                "per_image": [],
                "mean": {},
            }
            if lam is None:
                run["error"] = out["error"]
            else:
                rows = [{"index": int(i), **metrics[i][(alpha, lam)]} for i in test]
                run.update(
                    per_image=rows,
                    mean=nanmean_metrics(rows),
                    cal_realised=out["cal_realised"],
                    cal_realised_left=out["cal_realised_left"],
                )
            runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------- the report


def iter_report(
    store: Any,
    methods: Sequence[str],
    alphas: Sequence[float],
    *,
    nu: float | None = None,
    k: int | None = None,
    splits: int = 5,
    cal_fraction: float | None = None,
    n_cal: int | None = None,
    seed: int = 0,
    n_samples: Sequence[int] = DEFAULT_N_SAMPLES,
    diversity_alphas: Sequence[float] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    scheduler: Any = None,
) -> Generator[Step, None, dict[str, Any]]:
    """Compute a report; yields ``(done, total)`` in images (a :class:`~napari_conformal.core.progress.Step`).

    Parameters
    ----------
    store : DatasetStore
        An open store with labels.
    methods : sequence of str
        Registered method names, e.g. ``("crc", "consema", "rwcp")`` (or one comma list).
    alphas : sequence of float
        Risk levels α in (0, 1) (or one number); every split needs ``n_cal ≥ 1/α − 1``.
    nu : float, optional
        Label-wise accuracy ν for the methods that use it (required if any does).
    k : int, optional
        K, the principal components of the methods that sample members from K directions
        (CONSIGN; :func:`~napari_conformal.report.plan.takes_report_k`); RW-CP's neighbours are
        ``params={"rwcp": {"k": …}}``.
    splits : int
        Number R of random calibration/test splits.
    cal_fraction, n_cal : optional
        Calibration images per split (see :func:`~napari_conformal.report.plan.resolve_n_cal`).
    seed : int
        Seed of the splits; sampled members of test image i use ``seed + i``.
    n_samples : sequence of int
        Sample counts N for Chao1 / SEC / correlation (methods that sample members).
    diversity_alphas : sequence of float, optional
        The α (among ``alphas``) at which members are sampled (the expensive part); default: the α
        closest to 0.1.
    params : mapping, optional
        ``{method: {option: value}}``, e.g. ``{"rwcp": {"features": "multiscale"}}`` (``device`` too).
    false_alarm : float
        Per-split false-alarm rate of the acceptance bands (:mod:`napari_conformal.report.checks`).
    scheduler : optional
        ``None`` (this process), ``"local"`` or a dask scheduler address.

    Returns
    -------
    dict
        The ``results.json`` document (the generator's return value): ``settings`` (with
        ``methods_info``: each method's title, colour, guarantee kind, parameters), ``splits``,
        ``runs`` (one per method, α and split: ``lambda_hat``, ``per_image`` and ``mean`` as in
        ``METRICS.json``, ``guarantee`` text, the calibration images' realised coverage at λ̂),
        ``summary`` (mean ± std over splits, per-split guarantee checks), ``conditional`` (coverage by
        structure-size and base-Dice tertile), ``reference`` (the model's own prediction, for binary
        methods), ``images`` (per test image size and base Dice) and ``failures`` (one message per run
        whose λ̂ reached λ_max; such a run has ``lambda_hat`` None and no per-image rows).
    """
    from napari_conformal import __version__

    started = time.perf_counter()
    names = check_methods(methods.split(",") if isinstance(methods, str) else methods)
    alpha_list = check_alphas([alphas] if isinstance(alphas, (int, float)) else alphas)
    reps = check_positive_int(splits, "splits")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConformalError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    fa = float(false_alarm)
    if not 0.0 < fa < 1.0:
        raise ConformalError(f"false_alarm must lie in (0, 1), got {false_alarm!r}")
    ns = check_n_samples(n_samples)
    if diversity_alphas is None:
        div = default_diversity_alphas(alpha_list)
    else:
        div = check_alphas(diversity_alphas)
        missing = [a for a in div if a not in alpha_list]
        if missing:
            raise ConformalError(f"diversity alpha {missing[0]:g} is not one of the report's alphas")
    if not store.has_labels:
        raise ConformalError(f"store {store.path} has no 'labels' array: a report needs ground truth")
    n_images = int(store.n_images)
    if n_images < 2:
        raise ConformalError(f"the store has {n_images} image(s); a report needs at least 2")
    n_cal_ = resolve_n_cal(n_images, cal_fraction, n_cal)
    for a in alpha_list:
        check_calibration_size(n_cal_, a)
    objs = build_methods(names, nu, k, params or {})
    for name, m in objs.items():
        try:
            m.check_data(n_labels=store.n_labels, n_samples=store.n_samples, ndim=len(store.spatial_shape))
        except ConformalError as exc:
            raise type(exc)(f"method {name}: {exc}") from None
    infos = {name: method_info(m) for name, m in objs.items()}
    split_list = [(c.tolist(), t.tolist()) for c, t in repeated_splits(n_images, n_cal_, reps, seed)]
    test_images = sorted({i for _, test in split_list for i in test})
    sampling = {
        name: {a: (ns if (m.samples_members and a in div) else ()) for a in alpha_list}
        for name, m in objs.items()
    }
    foregrounds = list(dict.fromkeys(info["fg_class"] if info["binary"] else None for info in infos.values()))
    binary = [n for n in names if infos[n]["binary"]]
    reference_fg = infos[binary[0]]["fg_class"] if binary else None

    per_method = reps * n_cal_ + len(test_images)  # the calibrations, then one pass over the test images
    total = len(test_images) + len(names) * per_method
    scheduler, owned = _shared_scheduler(scheduler)
    runs: list[dict[str, Any]] = []
    try:
        gen = iter_map_images(
            lambda i: image_facts(store, i, foregrounds, reference_fg), test_images, scheduler=scheduler
        )
        facts_list = yield from _relay(gen, lambda step: int(step[0]), total)
        facts = dict(zip(test_images, facts_list, strict=True))
        offset = len(test_images)
        for name in names:
            gen = _iter_method(
                store,
                name,
                objs[name],
                split_list,
                alpha_list,
                nu,
                sampling[name],
                seed,
                scheduler,
                offset,
                total,
            )
            runs.extend((yield from gen))
            offset += per_method
    finally:
        for obj in owned:
            obj.close()

    failures = [run["error"] for run in runs if run.get("error")]
    reference = None
    if reference_fg is not None:
        per_split_ref = [_nanmean([facts[i]["reference"] for i in test]) for _, test in split_list]
        reference = {
            "description": f"the model's own prediction (mean foreground probability >= 0.5, class {reference_fg})",
            "fg_class": reference_fg,
            "per_split": per_split_ref,
            "summary": mean_std_dicts(per_split_ref),
        }
    settings = {
        "methods": list(names),
        "methods_info": infos,
        "alphas": list(alpha_list),
        "nu": nu,
        "k": k,
        "splits": reps,
        "n_cal": n_cal_,
        "n_test": n_images - n_cal_,
        "seed": seed,
        "n_samples": list(ns),
        "diversity_alphas": list(div),
        "false_alarm": fa,
        "params": {name: infos[name]["params"] for name in names},
        "method_k": {name: infos[name]["k"] for name in names},
    }
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": time.perf_counter() - started,
        "store": {
            "path": None if store.path is None else str(Path(store.path).resolve()),
            "identity": store.identity(),
            "n_images": n_images,
            "spatial_shape": list(store.spatial_shape),
            "n_samples": int(store.n_samples),
            "n_labels": int(store.n_labels),
            "spacing": list(store.spacing),
        },
        "settings": settings,
        "splits": [{"cal": cal, "test": test} for cal, test in split_list],
        "runs": runs,
        "summary": summarize_runs(runs, infos, fa),
        "conditional": conditional_coverage(runs, facts, infos),
        "failures": failures,
        "reference": reference,
    }


def _nanmean(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from napari_conformal.core.metrics.segmentation import nanmean_metrics

    return nanmean_metrics(rows)


def _shared_scheduler(scheduler: Any) -> tuple[Any, list[Any]]:
    """One local cluster for the whole report when ``scheduler == "local"`` (and what to close after)."""
    if scheduler != "local":
        return scheduler, []
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask is an optional extra
        raise ConformalError(
            "--scheduler needs dask.distributed: pip install 'napari-conformal[distributed]'"
        ) from None
    from napari_conformal.parallel import local_cluster

    cluster = local_cluster()
    client = Client(cluster)
    return client, [client, cluster]


def build_report(
    store: Any,
    methods: Sequence[str],
    alphas: Sequence[float],
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_report` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_report(store, methods, alphas, **kwargs), progress, should_stop)
