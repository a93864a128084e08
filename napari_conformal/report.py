"""Repeated random calibration/test splits of one store: the numbers behind ``napari-conformal report``.

A report answers "did the guarantee hold on my data, and what do the sets look like?" for several
methods and risk levels at once. It draws ``R`` random calibration/test splits of the store
(:func:`napari_conformal.core.bands.repeated_splits`) and, for every method, α and split,
calibrates on the calibration part and evaluates on the test part, exactly as
:func:`napari_conformal.api.calibrate` followed by :func:`napari_conformal.api.evaluate` would.

It does that without repeating per-image work across splits. The per-image calibration statistic
(``method.curve``) does not depend on the split, and λ̂ of a split is a cheap exact reduction of the
curves of its calibration images, so the work is two passes over the images:

1. **curves**: for every image that calibrates in some split, ``prepare`` once per method and
   ``curve`` once per α; then λ̂ for every (method, α, split) is a reduction of stored curves.
2. **metrics**: for every image that is a test image in some split, ``prepare`` once per method
   and ``evaluate`` once per distinct λ̂ it is tested at (splits that give the same λ̂ share the
   result: the metrics depend on the split only through λ̂, and sampled members use the seed
   ``seed + index`` as in :func:`~napari_conformal.api.evaluate`).

Both passes stream the store image by image (memory bounded by one image plus the curves) and run
on a dask.distributed cluster with ``scheduler=`` like the API. :func:`iter_report` yields
``(done, total)`` in images; :func:`build_report` runs it with callbacks; :func:`write_report`
writes ``results.json``, the figures and ``index.html`` into a new directory atomically (the
figures come from :mod:`napari_conformal.report_figures`, which needs matplotlib).

Guarantee checks (``summary[...]["guarantee"]``), per split:

* threshold methods with an FNR guarantee (``crc``, ``rwcp``; kind ``"risk"``):
  ``E[FNR] ≤ α``; the split's realised risk is the mean test FNR (``1 − coverage``) and its
  acceptance band is ``[0, α + t]`` with ``t`` from
  :func:`~napari_conformal.core.bands.crc_risk_tolerance` for one repetition;
* methods with a per-image coverage indicator ``covered`` (CONSIGN, pixel-wise, SACP, Consema;
  kind ``"split"``): ``P(covered) ≥ 1 − α``; the split's covered count has the exact lower
  acceptance bound of :func:`~napari_conformal.core.bands.splitcp_coverage_band` (one-sided:
  ties and conservative searches only raise coverage).

Splits of one dataset share images, so they are **not** independent repetitions; each split's band
is exact for that split on its own, and the spread across splits understates the spread across
fresh datasets. The page says so.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.api import _prepare_image, drive, feature_cache_matches, iter_map_images
from napari_conformal.core.bands import crc_risk_tolerance, repeated_splits, splitcp_coverage_band
from napari_conformal.core.methods.base import ConformalMethod, make_method, method_class
from napari_conformal.core.metrics.segmentation import nanmean_metrics
from napari_conformal.core.quantiles import check_calibration_size
from napari_conformal.errors import ConformalError, LambdaMaxReachedError

__all__ = [
    "DEFAULT_N_SAMPLES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "build_report",
    "check_report_target",
    "guarantee_kind",
    "iter_report",
    "method_accepts",
    "method_params",
    "resolve_n_cal",
    "summarize_runs",
    "write_report",
]

REPORT_FORMAT = "napari-conformal-report"
REPORT_VERSION = 1
#: sample counts N of the Chao1 / SEC / correlation curves (the CONSIGN paper's)
DEFAULT_N_SAMPLES = (10, 50, 100, 500, 1000)
#: per-split false-alarm rate of the acceptance bands shown in the report
DEFAULT_FALSE_ALARM = 0.01
#: the metrics of the RW-CP paper's Table 1, in its column order
TABLE1_KEYS = ("coverage", "stretch", "dice", "assd", "hd95")

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


# ----------------------------------------------------------------------------------------- validation


def _check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    out: list[float] = []
    for a in alphas:
        try:
            value = float(a)
        except (TypeError, ValueError):
            raise ConformalError(f"alphas must be numbers in (0, 1), got {a!r}") from None
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ConformalError(f"alphas must be numbers in (0, 1), got {a!r}")
        if value in out:
            raise ConformalError(f"alpha {value:g} is listed twice")
        out.append(value)
    if not out:
        raise ConformalError("alphas is empty: give at least one risk level")
    return tuple(out)


def _check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    names = [str(m).strip() for m in methods]
    if not names or any(not m for m in names):
        raise ConformalError("methods must be a non-empty list of method names (e.g. 'crc,rwcp')")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise ConformalError(f"method {dup[0]!r} is listed twice")
    for m in names:
        method_class(m)  # raises with the list of known methods
    return tuple(names)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConformalError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_n_samples(n_samples: Iterable[int]) -> tuple[int, ...]:
    values = sorted({_check_positive_int(n, "n_samples entries") for n in n_samples})
    return tuple(values)


def resolve_n_cal(n_images: int, cal_fraction: float | None = None, n_cal: int | None = None) -> int:
    """Number of calibration images per split.

    Parameters
    ----------
    n_images : int
        Images in the store.
    cal_fraction : float, optional
        Fraction in (0, 1); ``⌊cal_fraction · n_images + 1/2⌋`` images, as
        :func:`napari_conformal.io.indices.random_split` rounds it.
    n_cal : int, optional
        Explicit count (give one of the two; neither means ``cal_fraction=0.5``).

    Returns
    -------
    int
        In ``1 .. n_images − 1`` (every split keeps at least one test image).
    """
    if cal_fraction is not None and n_cal is not None:
        raise ConformalError("give either cal_fraction or n_cal, not both")
    if n_cal is None:
        frac = 0.5 if cal_fraction is None else float(cal_fraction)
        if not 0.0 < frac < 1.0:
            raise ConformalError(f"cal_fraction must lie strictly between 0 and 1, got {cal_fraction!r}")
        n_cal = math.floor(frac * n_images + 0.5)
        what = f"cal_fraction={frac:g} of {n_images} images"
    else:
        n_cal = _check_positive_int(n_cal, "n_cal")
        what = f"n_cal={n_cal}"
    if not 1 <= n_cal <= n_images - 1:
        raise ConformalError(
            f"{what} leaves the calibration or the test set empty: the store has {n_images} images"
        )
    return int(n_cal)


def method_accepts(name: str, key: str) -> bool:
    """Whether the constructor of registered method ``name`` takes a keyword ``key``."""
    sig = inspect.signature(method_class(name).__init__)
    return key in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


def _params_across_alphas(per_alpha: Sequence[Mapping[str, Any]], alphas: Sequence[float]) -> dict[str, Any]:
    """One parameter dict for a method built once per α: a value that differs between the α's
    (e.g. Consema's τ = 1 − α) becomes ``{"per_alpha": {"0.1": v, …}}``."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in per_alpha for k in p):
        values = [p.get(key) for p in per_alpha]
        if all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            out[key] = {"per_alpha": {f"{a:g}": v for a, v in zip(alphas, values, strict=True)}}
    return out


def method_params(methods: Sequence[str], options: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Route ``NAME=VALUE`` options to the report's methods.

    Parameters
    ----------
    methods : sequence of str
        The report's method names.
    options : iterable of (str, value)
        ``("rwcp.features", "multiscale")`` goes to that method only; ``("features", …)`` to
        every method whose constructor takes ``features`` (an error when none does).

    Returns
    -------
    dict
        ``{method: {parameter: value}}`` for :func:`iter_report`'s ``params``.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in options:
        target, dot, name = key.rpartition(".")
        name = name.replace("-", "_")
        if dot:
            if target not in methods:
                raise ConformalError(f"option {key!r} names method {target!r}, which is not in the report")
            if not method_accepts(target, name):
                raise ConformalError(f"method {target!r} has no parameter {name!r}")
            out.setdefault(target, {})[name] = value
            continue
        takers = [m for m in methods if method_accepts(m, name)]
        if not takers:
            raise ConformalError(f"none of the methods {', '.join(methods)} has a parameter {name!r}")
        for m in takers:
            out.setdefault(m, {})[name] = value
    return out


def guarantee_kind(method: ConformalMethod | type[ConformalMethod]) -> str:
    """``"risk"`` for FNR-controlling threshold methods (CRC, RW-CP), else ``"split"``.

    ``"split"`` methods report a per-image 0/1 ``covered`` (CONSIGN, pixel-wise, SACP, Consema)
    and promise ``P(covered) ≥ 1 − α``.
    """
    from napari_conformal.core.methods.threshold import ThresholdFNRMethod

    cls = method if isinstance(method, type) else type(method)
    return "risk" if issubclass(cls, ThresholdFNRMethod) else "split"


def check_report_target(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check before any work that the report directory ``out`` may be written.

    An existing ``out`` is replaced only with ``overwrite`` and only when it is empty or holds an
    earlier report (a ``results.json`` of this format), never an unrelated folder.
    """
    target = Path(out)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise ConformalError(
            f"{target} already exists; pass --overwrite (overwrite=True) to replace the report"
        )
    is_dir = target.is_dir() and not target.is_symlink()
    if is_dir and (not any(target.iterdir()) or _is_report_dir(target)):
        return target
    raise ConformalError(f"refusing to overwrite {target}: it exists and is not a napari-conformal report")


def _is_report_dir(path: Path) -> bool:
    try:
        doc = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == REPORT_FORMAT


# ----------------------------------------------------------------------------------------- the plan


def _build_methods(
    names: Sequence[str],
    alphas: Sequence[float],
    nu: float | None,
    k: int | None,
    params: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[ConformalMethod]]:
    """One method object per (method, α), with ν and K given to the methods that use them."""
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConformalError(f"parameters given for method {unknown[0]!r}, which is not in the report")
    classes = {m: method_class(m) for m in names}
    if nu is not None and not any(c.uses_nu for c in classes.values()):
        raise ConformalError("nu does not apply to any of the chosen methods")
    if k is not None and not any(c.uses_k for c in classes.values()):
        raise ConformalError("k (principal components) does not apply to any of the chosen methods")
    out: dict[str, list[ConformalMethod]] = {}
    for name in names:
        cls = classes[name]
        if cls.uses_nu and nu is None:
            raise ConformalError(f"method {name!r} needs nu (label-wise accuracy in (0, 1)); pass --nu")
        kwargs: dict[str, Any] = {}
        if cls.uses_nu:
            kwargs["nu"] = nu
        if cls.uses_k and k is not None:
            kwargs["k"] = k
        kwargs.update(params.get(name, {}))
        out[name] = [make_method(name, alpha=a, **kwargs) for a in alphas]
    return out


def _default_diversity_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The α closest to 0.1 (the CONSIGN paper's usual level); ties: the smaller α."""
    return (min(alphas, key=lambda a: (abs(a - 0.1), a)),)


def _context(label: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ConformalError as exc:
        raise type(exc)(f"{label}: {exc}") from None


def _curves_of_image(
    store: Any, methods: Mapping[str, Sequence[ConformalMethod]], cached: Mapping[str, bool], i: int
) -> dict[str, list[Any]]:
    """Pass 1 for image ``i``: ``{method: [curve at α_0, curve at α_1, …]}``."""
    image, samples, label = store.image(i), store.samples(i), store.label(i)
    out: dict[str, list[Any]] = {}
    for name, objs in methods.items():

        def run(objs: Sequence[ConformalMethod] = objs, name: str = name) -> list[Any]:
            # α-free by the ConformalMethod contract
            prepared = _prepare_image(objs[0], store, i, cached[name], image, samples)
            return [m.curve(prepared, label) for m in objs]

        out[name] = _context(f"image {i}, method {name}", run)
    return out


def _metrics_of_image(
    store: Any,
    methods: Mapping[str, Sequence[ConformalMethod]],
    cached: Mapping[str, bool],
    lambdas: Mapping[str, Sequence[Sequence[float]]],
    n_samples: Mapping[str, Sequence[Sequence[int]]],
    reference_fg: int | None,
    seed: int,
    i: int,
) -> dict[str, Any]:
    """Pass 2 for image ``i``: metrics at every λ̂ the image is tested at.

    Returns ``{"methods": {name: [[metrics per λ in lambdas[name][a]] per α]}, "reference": …}``.
    """
    image, samples, label = store.image(i), store.samples(i), store.label(i)
    spacing = store.spacing
    out: dict[str, Any] = {"methods": {}, "reference": None}
    for name, objs in methods.items():

        def run(objs: Sequence[ConformalMethod] = objs, name: str = name) -> list[list[dict[str, Any]]]:
            prepared = _prepare_image(objs[0], store, i, cached[name], image, samples)
            return [
                [
                    m.evaluate(
                        prepared, label, lam, spacing=spacing, n_samples=n_samples[name][a], seed=seed + i
                    )
                    for lam in lambdas[name][a]
                ]
                for a, m in enumerate(objs)
            ]

        out["methods"][name] = _context(f"image {i}, method {name}", run)
    if reference_fg is not None:
        out["reference"] = _reference_metrics(samples, label, reference_fg, spacing)
    return out


def _reference_metrics(samples: np.ndarray, label: np.ndarray, fg: int, spacing: Sequence[float]) -> dict:
    """Metrics of the model's own hard prediction ``S⁽⁰⁾ ≥ 0.5`` (the "no CP" row of Table 1)."""
    from napari_conformal.core.methods.threshold import foreground_probability
    from napari_conformal.core.metrics.segmentation import segmentation_metrics

    pred = foreground_probability(samples, fg) >= 0.5
    return segmentation_metrics(pred, np.asarray(label) == fg, reference=pred, spacing=spacing)


# ----------------------------------------------------------------------------------------- the run


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
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Compute a report; yields ``(done, total)`` in images over both passes.

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
        Principal components K for the methods that use it (CONSIGN).
    splits : int
        Number R of random calibration/test splits.
    cal_fraction, n_cal : optional
        Calibration images per split (see :func:`resolve_n_cal`); the rest are test images.
    seed : int
        Seed of the splits; sampled members of test image i use ``seed + i``.
    n_samples : sequence of int
        Sample counts N for Chao1 / SEC / correlation (sampling methods only).
    diversity_alphas : sequence of float, optional
        The α (among ``alphas``) at which the sampling metrics are computed (they are the
        expensive part); default: the α closest to 0.1.
    params : mapping, optional
        ``{method: {parameter: value}}``, e.g. ``{"rwcp": {"features": "multiscale"}}``.
    false_alarm : float
        Per-split false-alarm rate of the acceptance bands.
    scheduler : optional
        ``None`` (this process), ``"local"``, an address, a cluster or a client (dask.distributed).

    Returns
    -------
    dict
        The ``results.json`` document (generator return value): ``settings``, ``splits``
        (calibration and test indices), ``runs`` (one per method, α and split, each with
        ``lambda_hat``, ``per_image`` and ``mean`` as in ``METRICS.json``), ``summary`` (mean ± std
        over splits and guarantee checks per method and α), ``reference`` (the model's own
        prediction, for binary methods) and ``failures``: one message per (method, α, split) whose
        λ̂ reached the method's λ_max; such a run has ``lambda_hat`` None, an ``error`` and no
        per-image rows (the method cannot guarantee that α on that calibration set).
    """
    from napari_conformal import __version__

    started = time.perf_counter()
    names = _check_methods(methods.split(",") if isinstance(methods, str) else methods)
    alpha_list = _check_alphas([alphas] if isinstance(alphas, (int, float)) else alphas)
    reps = _check_positive_int(splits, "splits")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConformalError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    ns = _check_n_samples(n_samples)
    if diversity_alphas is None:
        div = _default_diversity_alphas(alpha_list)
    else:
        div = _check_alphas(diversity_alphas)
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
    objs = _build_methods(names, alpha_list, nu, k, params or {})
    split_list = [(c.tolist(), t.tolist()) for c, t in repeated_splits(n_images, n_cal_, reps, seed)]

    cal_images = sorted({i for cal, _ in split_list for i in cal})
    test_images = sorted({i for _, test in split_list for i in test})
    total = len(cal_images) + len(test_images)

    # RW-CP reads features cached by api.cache_features with the same extractor settings
    cached = {name: feature_cache_matches(store, objs[name][0]) for name in names}
    scheduler, owned = _shared_scheduler(scheduler)
    try:
        # pass 1: curves
        gen = iter_map_images(
            lambda i: _curves_of_image(store, objs, cached, i), cal_images, scheduler=scheduler
        )
        curves_list = yield from _offset(gen, 0, total)
        curves = dict(zip(cal_images, curves_list, strict=True))

        outcomes = {
            name: [
                _split_lambdas(objs[name][a], name, a, alpha_list[a], curves, split_list)
                for a in range(len(alpha_list))
            ]
            for name in names
        }
        lam = {name: [[v for v, _ in row] for row in rows] for name, rows in outcomes.items()}
        failures = [e for rows in outcomes.values() for row in rows for _, e in row if e is not None]
        del curves, curves_list  # pass 2 needs only λ̂

        # pass 2: metrics at the λ̂ of every split the image is tested in
        tested_in: dict[int, list[int]] = {i: [] for i in test_images}
        for r, (_, test) in enumerate(split_list):
            for i in test:
                tested_in[i].append(r)
        per_image_lams = {
            i: {
                name: [
                    sorted({lam[name][a][r] for r in tested_in[i]} - {None}) for a in range(len(alpha_list))
                ]
                for name in names
            }
            for i in test_images
        }
        sampling_n = {
            name: [ns if (objs[name][0].samples_members and a in div) else () for a in alpha_list]
            for name in names
        }
        binary = [n for n in names if _is_binary_method(objs[n][0])]
        reference_fg = int(getattr(objs[binary[0]][0], "fg_class", 1)) if binary else None

        def pass2(i: int) -> dict[str, Any]:
            return _metrics_of_image(
                store, objs, cached, per_image_lams[i], sampling_n, reference_fg, seed, i
            )

        gen = iter_map_images(pass2, test_images, scheduler=scheduler)
        metrics_list = yield from _offset(gen, len(cal_images), total)
        metrics = dict(zip(test_images, metrics_list, strict=True))
    finally:
        for obj in owned:
            obj.close()

    runs = []
    for name in names:
        for a, alpha in enumerate(alpha_list):
            for r, (cal, test) in enumerate(split_list):
                value, error = outcomes[name][a][r]
                rows = []
                if value is not None:
                    for i in test:
                        j = per_image_lams[i][name][a].index(value)
                        rows.append({"index": i, **metrics[i]["methods"][name][a][j]})
                run = {
                    "method": name,
                    "alpha": alpha,
                    "split": r,
                    "lambda_hat": value,
                    "n_cal": len(cal),
                    "n_test": len(test),
                    "sampled": bool(sampling_n[name][a]) and value is not None,
                    "per_image": rows,
                    "mean": nanmean_metrics(rows),
                }
                if error is not None:
                    run["error"] = error
                runs.append(run)
    reference = None
    if reference_fg is not None:
        per_split = [
            nanmean_metrics([{"index": i, **metrics[i]["reference"]} for i in t]) for _, t in split_list
        ]
        reference = {
            "description": f"the model's own prediction (mean foreground probability >= 0.5, class {reference_fg})",
            "fg_class": reference_fg,
            "per_split": per_split,
            "summary": _mean_std_dicts(per_split),
        }

    settings = {
        "methods": list(names),
        "alphas": list(alpha_list),
        "nu": nu,
        "k": k,
        "splits": reps,
        "n_cal": n_cal_,
        "n_test": n_images - n_cal_,
        "seed": seed,
        "n_samples": list(ns),
        "diversity_alphas": list(div),
        "false_alarm": float(false_alarm),
        "params": {
            name: _params_across_alphas([obj.params() for obj in objs[name]], alpha_list) for name in names
        },
        "method_k": {name: objs[name][0].k for name in names},
    }
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": time.perf_counter() - started,
        "store": {
            "path": str(Path(store.path).resolve()),
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
        "summary": summarize_runs(runs, {n: guarantee_kind(objs[n][0]) for n in names}, false_alarm),
        "failures": failures,
        "reference": reference,
    }


def _shared_scheduler(scheduler: Any) -> tuple[Any, list[Any]]:
    """One local cluster for both passes when ``scheduler == "local"`` (and what to close after)."""
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


def _split_lambdas(
    method: ConformalMethod,
    name: str,
    a: int,
    alpha: float,
    curves: Mapping[int, Mapping[str, Sequence[Any]]],
    split_list: Sequence[tuple[list[int], list[int]]],
) -> list[tuple[float | None, str | None]]:
    """λ̂ of every split for one (method, α): the method's exact reduction of its stored curves.

    A split whose λ̂ reaches the method's λ_max (:class:`LambdaMaxReachedError`) is a result, not
    bad input: it gives ``(None, message)`` and the report shows it. Other errors propagate.
    """
    m = copy.copy(method)  # λ̂ caches stay on the copy, not on the object shipped for pass 2
    out: list[tuple[float | None, str | None]] = []
    for r, (cal, _) in enumerate(split_list):
        label = f"method {name}, alpha {alpha:g}, split {r}"
        try:
            out.append((float(m.lambda_hat([curves[i][name][a] for i in cal])), None))
        except LambdaMaxReachedError as exc:
            out.append((None, f"{label}: {' '.join(str(exc).split())}"))
        except ConformalError as exc:
            raise type(exc)(f"{label}: {exc}") from None
    return out


def _is_binary_method(method: ConformalMethod) -> bool:
    """Methods that make one binary set (threshold methods and Consema): Table 1 rows."""
    return guarantee_kind(method) == "risk" or method.name == "consema"


def _offset(
    gen: Generator[tuple[int, int], None, Any], offset: int, total: int
) -> Generator[tuple[int, int], None, Any]:
    """Re-yield a pass's ``(done, n)`` as ``(offset + done, total)``; returns the pass's value."""
    try:
        while True:
            done, _ = next(gen)
            if done or not offset:  # the second pass's (0, n) would repeat the first pass's end
                yield offset + done, total
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


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


# ----------------------------------------------------------------------------------------- summaries


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and (population) standard deviation over splits, ignoring NaN."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _mean_std_dicts(means: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over splits of each key of the splits' mean-metric dicts (nested dicts per N)."""
    keys: list[str] = []
    for m in means:
        keys.extend(k for k in m if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [m.get(key) for m in means]
        if any(isinstance(v, Mapping) for v in values):
            out[key] = _mean_std_dicts([v if isinstance(v, Mapping) else {} for v in values])
        else:
            out[key] = _mean_std(values)
    return out


def _guarantee(kind: str, alpha: float, runs: Sequence[Mapping[str, Any]], false_alarm: float) -> dict:
    """Per-split realised coverage and acceptance bands (see the module docstring).

    ``per_split[r]["low"]`` is the lower end of split r's own band. For ``"risk"`` methods a single
    split can only be checked against the Chernoff–Hoeffding tolerance for one repetition, which is
    vacuous at usual levels, so ``mean_low`` also gives the band of the mean over the R splits as
    if they were independent repetitions (guidance only: they share images).
    """
    per_split = []
    for run in runs:
        key = "coverage" if kind == "risk" else "covered"
        values = np.asarray(
            [np.nan if r.get(key) is None else float(r[key]) for r in run["per_image"]], dtype=np.float64
        )
        values = values[np.isfinite(values)]
        entry: dict[str, Any] = {"split": run["split"], "n_test": int(values.size), "realised": None}
        if values.size:
            if kind == "risk":
                low = max(1.0 - alpha - crc_risk_tolerance(alpha, 1, false_alarm), 0.0)
                entry.update(realised=float(values.mean()), low=low)
            else:
                count = int(values.sum())
                lower, _ = splitcp_coverage_band(
                    run["n_cal"], int(values.size), alpha, reps=1, false_alarm=false_alarm, two_sided=False
                )
                entry.update(
                    realised=count / values.size, covered=count, low=lower / values.size, low_count=int(lower)
                )
            entry["inside"] = bool(entry["realised"] >= entry["low"])
        per_split.append(entry)
    realised = [p["realised"] for p in per_split if p["realised"] is not None]
    mean = float(np.mean(realised)) if realised else math.nan
    mean_low = math.nan
    if realised and kind == "risk":
        mean_low = max(1.0 - alpha - crc_risk_tolerance(alpha, len(realised), false_alarm), 0.0)
    return {
        "kind": kind,
        "statistic": "mean test coverage 1 - FNR" if kind == "risk" else "fraction of test images covered",
        "nominal": 1.0 - alpha,
        "false_alarm": float(false_alarm),
        "per_split": per_split,
        "mean_realised": mean,
        "mean_low": mean_low,
        "splits_below_band": int(sum(1 for p in per_split if p.get("inside") is False)),
        "failed_splits": int(sum(1 for run in runs if run.get("lambda_hat") is None)),
    }


def summarize_runs(
    runs: Sequence[Mapping[str, Any]],
    kinds: Mapping[str, str],
    false_alarm: float = DEFAULT_FALSE_ALARM,
) -> list[dict[str, Any]]:
    """Per (method, α): λ̂ and metrics as mean ± std over splits, plus the guarantee check.

    Parameters
    ----------
    runs : sequence of dict
        The ``runs`` of a report (one per method, α and split).
    kinds : mapping
        ``{method: "risk" | "split"}`` (:func:`guarantee_kind`).
    false_alarm : float
        Per-split false-alarm rate of the bands.

    Returns
    -------
    list of dict
        In the order methods and α first appear in ``runs``.
    """
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], float(run["alpha"])), []).append(run)
    out = []
    for (name, alpha), group in groups.items():
        group = sorted(group, key=lambda r: r["split"])
        out.append(
            {
                "method": name,
                "alpha": alpha,
                "lambda_hat": [None if r["lambda_hat"] is None else float(r["lambda_hat"]) for r in group],
                "lambda_hat_summary": _mean_std([r["lambda_hat"] for r in group]),
                "metrics": _mean_std_dicts([r["mean"] for r in group]),
                "guarantee": _guarantee(kinds[name], alpha, group, false_alarm),
            }
        )
    return out


# ----------------------------------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays → Python, NaN/inf → None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def write_report(results: Mapping[str, Any], out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``results.json``, the PNG figures and ``index.html`` into the new directory ``out``.

    The directory is built under a temporary sibling name and renamed into place when complete,
    so an interrupted run never leaves a half-written report (nor touches an existing one unless
    the new one is complete and ``overwrite`` is set).

    Returns
    -------
    Path
        ``out``.
    """
    from napari_conformal.io.atomic import atomic_directory
    from napari_conformal.report_figures import render_report

    target = check_report_target(out, overwrite)
    doc = jsonable(results)
    text = json.dumps(doc, indent=1, allow_nan=False)
    with atomic_directory(
        target, overwrite=overwrite, replaceable=_is_report_dir, what="report directory"
    ) as tmp:
        (tmp / "results.json").write_text(text + "\n", encoding="utf-8")
        render_report(doc, tmp)
    return target
