"""High-level calibrate / evaluate on a dataset store.

The command line, the dock widgets and scripts all call these two functions.
They take plain callbacks for progress and cancellation, so the same code runs
in a terminal, a test, a napari thread worker or a dask client::

    calib = calibrate(store, "crc", alpha=0.1, cal_indices=range(20))
    report = evaluate(store, calib)

Both return JSON-ready dictionaries (the ``CALIB.json`` and ``METRICS.json`` of
SPEC §4).

Methods that extract image features (RW-CP) read them from the store's
``features`` array when :func:`cache_features` wrote it with the same extractor
settings (see :func:`feature_cache_matches`); otherwise they compute them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from napari_conformal.core.method import ConformalMethod, make_method
from napari_conformal.core.metrics import nanmean_metrics
from napari_conformal.errors import Cancelled, ConformalError

__all__ = [
    "Cancelled",
    "cache_features",
    "calibrate",
    "drive",
    "evaluate",
    "feature_cache_matches",
    "iter_cache_features",
    "iter_calibrate",
    "iter_evaluate",
    "iter_map_images",
    "method_from_calibration",
]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]
T = TypeVar("T")


def iter_map_images(
    fn: Callable[[int], Any], indices: Sequence[int], *, scheduler: str | None = None
) -> Generator[tuple[int, int], None, list[Any]]:
    """Apply ``fn`` to each image index, yielding ``(done, total)`` after each one.

    The generator's return value (``StopIteration.value``) is the list of
    results in index order. Closing the generator early stops the work between
    two images; nothing partial is returned. A napari ``thread_worker`` drives
    it directly (its ``quit()`` is the cancel button).

    Parameters
    ----------
    fn : callable
        ``fn(i)`` for one image index.
    indices : sequence of int
        Image indices.
    scheduler : str, optional
        ``None`` for this process; ``"local"`` or a scheduler address for dask.distributed.
    """
    total = len(indices)
    if scheduler:
        from napari_conformal.parallel import iter_map_on_cluster

        return (yield from iter_map_on_cluster(fn, indices, scheduler=scheduler))
    out = []
    yield 0, total
    for j, i in enumerate(indices):
        out.append(fn(i))
        yield j + 1, total
    return out


def drive(
    gen: Generator[tuple[int, int], None, T],
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> T:
    """Run a progress generator to completion with plain callbacks.

    ``progress(done, total)`` is called for each step; when ``should_stop()``
    returns True the generator is closed and :class:`Cancelled` is raised.
    """
    try:
        while True:
            done, total = next(gen)
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled()
    except StopIteration as stop:
        return stop.value


def _with_image(i: int, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ConformalError as exc:
        raise type(exc)(f"image {i}: {exc}") from None


# -- cached features ---------------------------------------------------------------------------------


def _json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, numpy scalars → numbers)."""
    from napari_conformal.io.provenance import to_jsonable

    return json.loads(json.dumps(to_jsonable(value, where="extractor settings"), allow_nan=False))


def _extractor_params(method: ConformalMethod) -> dict[str, Any] | None:
    """The method's extractor description, or None when it has no feature extractor."""
    if not callable(getattr(method, "compute_features", None)):
        return None
    extractor = getattr(method, "extractor", None)
    if extractor is None or not callable(getattr(extractor, "params", None)):
        return None
    return extractor.params()


def feature_cache_matches(store: Any, method: ConformalMethod) -> bool:
    """Whether ``method`` will read its features from ``store`` instead of computing them.

    True when the method extracts features (has ``compute_features``), the store
    holds a ``features`` array, and the extractor recorded with it
    (``store.features_info["extractor"]``, written by :func:`cache_features`)
    equals ``method.extractor.params()`` after JSON normalisation. Features
    cached with other settings, or written without an ``"extractor"`` entry,
    are ignored: the method then computes its features as usual.

    Parameters
    ----------
    store : DatasetStore
        An open store.
    method : ConformalMethod
        The method about to prepare images of ``store``.
    """
    wanted = _extractor_params(method)
    if wanted is None or not store.has_features:
        return False
    recorded = (store.features_info or {}).get("extractor")
    if recorded is None:
        return False
    try:
        return bool(_json_normal(recorded) == _json_normal(wanted))
    except (ConformalError, TypeError, ValueError):
        return False


def _prepare_image(
    method: ConformalMethod, store: Any, i: int, cached: bool, image: Any = None, samples: Any = None
) -> Any:
    """``method.prepare`` for image ``i`` of ``store``; ``cached``: pass the stored features.

    Shared by calibration, evaluation and the report (which passes the ``image`` and ``samples``
    it has already read). ``cached`` is :func:`feature_cache_matches`, decided once per run in
    the calling process, so workers of a dask cluster only read the arrays.
    """
    image = store.image(i) if image is None else image
    samples = store.samples(i) if samples is None else samples
    if cached:
        # (C, *S') float32; prepare checks it against the probability map's grid
        return method.prepare(image, samples, features=store.features(i))
    return method.prepare(image, samples)


_NO_FEATURES = "method {name!r} does not use image features; only rwcp features can be cached in a store"


def _feature_method(method: ConformalMethod) -> ConformalMethod:
    if _extractor_params(method) is None:
        raise ConformalError(_NO_FEATURES.format(name=getattr(method, "name", type(method).__name__)))
    return method


def iter_cache_features(
    store: Any,
    method: str | ConformalMethod,
    *,
    indices: Iterable[int] | None = None,
    overwrite: bool = False,
    params: dict[str, Any] | None = None,
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Compute a method's image features and store them in the ``features`` array (SPEC §3).

    Later :func:`calibrate` / :func:`evaluate` runs with the same extractor
    settings read them instead of recomputing (:func:`feature_cache_matches`).
    Features are computed one image at a time and streamed into
    ``store.iter_write_features``, which swaps the new array in only when every
    image is written: cancelling or failing leaves the store as it was.
    The array is float16 (SPEC §3), so maps computed from the cache can differ
    from freshly computed ones by float16 rounding of the features.

    Parameters
    ----------
    store : DatasetStore
        A store opened writable (``open_store(path, mode="r+")``).
    method : str or ConformalMethod
        A method with ``compute_features`` (``"rwcp"``), or its registered name
        (built with ``params``; the risk level does not matter for features).
    indices : iterable of int, optional
        Recompute only these images and copy the others from the existing
        cache, which must have been made with the same extractor (and needs
        ``overwrite=True``). Default: every image.
    overwrite : bool
        Replace features the store already holds.
    params : dict, optional
        Method parameters when ``method`` is a name (``features``,
        ``grid_stride``, ``model_dir``, ``device``, …).

    Yields
    ------
    (done, total)
        Progress in images computed.

    Returns
    -------
    dict
        ``store.features_info`` after writing: ``{"extractor": {...},
        "n_channels": C, "grid_shape": [...]}``, as the generator's return value.

    Raises
    ------
    ConformalError
        The method has no feature extractor, the store is read-only, it already
        holds features and ``overwrite`` is False, or ``indices`` is partial
        without a matching cache to copy the rest from.
    """
    if isinstance(method, str):
        from napari_conformal.core.method import method_class

        if not callable(getattr(method_class(method), "compute_features", None)):
            raise ConformalError(_NO_FEATURES.format(name=method))
        method = make_method(method, alpha=0.1, **(params or {}))  # α does not enter the features
    method = _feature_method(method)
    if getattr(store, "mode", "r") != "r+":
        raise ConformalError(
            f"the store at {store.path} is open read-only; open it with open_store(path, mode='r+') "
            "to cache features in it"
        )
    if store.has_features and not overwrite:
        raise ConformalError(
            f"the store at {store.path} already has features; pass overwrite=True (--overwrite) to replace them"
        )
    n = store.n_images
    if indices is None:
        todo = list(range(n))
    else:
        todo = sorted({int(i) for i in indices})
        bad = [i for i in todo if not 0 <= i < n]
        if bad:
            raise ConformalError(f"image indices out of range 0..{n - 1}: {bad[:10]}")
    keep = len(todo) < n
    if keep and not feature_cache_matches(store, method):
        raise ConformalError(
            f"the store at {store.path} has no features from this extractor to keep for the other images; "
            "cache every image (indices=None)"
        )
    info = {"extractor": _json_normal(_extractor_params(method))}
    todo_set = set(todo)
    total = len(todo)
    computed = 0

    def per_image() -> Iterator[np.ndarray]:  # consumed lazily by the writer, one image at a time
        nonlocal computed
        for i in range(n):
            if i in todo_set:
                feat = _with_image(i, lambda i=i: method.compute_features(store.image(i)).features)
                computed += 1
                yield feat
            else:
                yield store.features(i)  # the old array stays until the new one is swapped in

    writer = store.iter_write_features(per_image(), info=info, overwrite=True)
    yield 0, total
    reported = 0
    try:
        for _ in writer:
            if computed != reported:  # one report per computed image (copied ones are not counted)
                reported = computed
                yield computed, total
    finally:
        writer.close()  # closed early (cancelled): the partial array is removed, the store unchanged
    return store.features_info


def cache_features(
    store: Any,
    method: str | ConformalMethod,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_cache_features` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_cache_features(store, method, **kwargs), progress, should_stop)


def iter_calibrate(
    store: Any,
    method: str | ConformalMethod,
    *,
    alpha: float | None = None,
    cal_indices: Iterable[int],
    nu: float | None = None,
    k: int | None = None,
    params: dict[str, Any] | None = None,
    scheduler: str | None = None,
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Calibrate ``method`` on the images ``cal_indices`` of ``store``.

    Parameters
    ----------
    store : DatasetStore
        An open store with labels.
    method : str or ConformalMethod
        A registered method name (``"crc"``, ``"consign"``, …) or an instance.
    alpha : float
        Risk level in (0, 1) (required with a method name).
    cal_indices : iterable of int
        Calibration image indices.
    nu, k : optional
        Label-wise accuracy ν and number of components / neighbours.
    params : dict, optional
        Other method parameters.
    scheduler : str, optional
        See :func:`iter_map_images`.

    Yields
    ------
    (done, total)
        Progress in images.

    Returns
    -------
    dict
        The calibration record (SPEC §4 ``CALIB.json``), as the generator's
        return value; :func:`calibrate` runs it with callbacks.
    """
    from napari_conformal import __version__

    if isinstance(method, str):
        if alpha is None:
            raise ConformalError("alpha is required")
        name = method
        method = make_method(method, alpha=alpha, nu=nu, k=k, **(params or {}))
        if nu is not None and not method.uses_nu:
            raise ConformalError(f"nu does not apply to method {name!r}")
    if method.uses_nu and method.nu is None:
        raise ConformalError(f"method {method.name!r} needs nu (label-wise accuracy in (0, 1))")
    if not store.has_labels:
        raise ConformalError(f"store {store.path} has no 'labels' array: calibration needs ground truth")
    cal = [int(i) for i in cal_indices]
    if len(set(cal)) != len(cal):
        raise ConformalError("cal_indices contains duplicates")

    cached = feature_cache_matches(store, method)

    def one(i: int) -> Any:
        return _with_image(i, lambda: method.curve(_prepare_image(method, store, i, cached), store.label(i)))

    curves = yield from iter_map_images(one, cal, scheduler=scheduler)
    lam = method.lambda_hat(curves)
    return {
        "method": method.name,
        "alpha": method.alpha,
        "nu": method.nu if method.uses_nu else None,
        "k": method.k,
        "lambda_hat": float(lam),
        "n": len(cal),
        "cal_indices": cal,
        "version": __version__,
        "store": {"path": str(Path(store.path).resolve()), "identity": store.identity()},
        "params": method.params(),
    }


def calibrate(
    store: Any,
    method: str | ConformalMethod,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_calibrate` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_calibrate(store, method, **kwargs), progress, should_stop)


def method_from_calibration(calib: dict[str, Any], **overrides: Any) -> ConformalMethod:
    """Rebuild the method object a calibration record was made with."""
    params = {**(calib.get("params") or {}), **overrides}
    return make_method(calib["method"], alpha=calib["alpha"], nu=calib.get("nu"), k=calib.get("k"), **params)


def iter_evaluate(
    store: Any,
    calib: dict[str, Any],
    *,
    test_indices: Iterable[int] | None = None,
    n_samples: Sequence[int] = (10, 50, 100, 500, 1000),
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    check_identity: bool = True,
    scheduler: str | None = None,
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Per-image and mean metrics of a calibration on test images.

    Parameters
    ----------
    store : DatasetStore
        The store the calibration was made on (checked by content identity).
    calib : dict
        A record from :func:`calibrate`.
    test_indices : iterable of int, optional
        Default: every image not used for calibration.
    n_samples : sequence of int
        Numbers of sampled members for Chao1 / SEC / correlation (sampling methods only).
    seed : int
        Seed for sampling members (image i uses ``seed + i``).

    Yields
    ------
    (done, total)
        Progress in images.

    Returns
    -------
    dict
        ``{"per_image": [...], "mean": {...}, ...}`` (SPEC §4 ``METRICS.json``),
        as the generator's return value; :func:`evaluate` runs it with callbacks.
    """
    if not store.has_labels:
        raise ConformalError(f"store {store.path} has no 'labels' array: evaluation needs ground truth")
    if check_identity and calib["store"].get("identity") != store.identity():
        raise ConformalError(
            f"store {store.path} is not the store this calibration was made on "
            f"({calib['store'].get('path')}); calibrate on it first"
        )
    cal = {int(i) for i in calib["cal_indices"]}
    if test_indices is None:
        test = [i for i in range(store.n_images) if i not in cal]
    else:
        test = [int(i) for i in test_indices]
        overlap = sorted(cal.intersection(test))
        if overlap:
            raise ConformalError(f"test indices overlap the calibration set: {overlap[:10]}")
    if not test:
        raise ConformalError("no test images: every image was used for calibration")
    method = method_from_calibration(calib, **(overrides or {}))
    lam = float(calib["lambda_hat"])
    ns = sorted({int(n) for n in n_samples}) if method.samples_members else []
    if any(n < 1 for n in ns):
        raise ConformalError("n_samples must be positive integers")
    spacing = store.spacing
    cached = feature_cache_matches(store, method)

    def one(i: int) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            prepared = _prepare_image(method, store, i, cached)
            return method.evaluate(
                prepared, store.label(i), lam, spacing=spacing, n_samples=ns, seed=seed + i
            )

        return {"index": i, **_with_image(i, run)}

    rows = yield from iter_map_images(one, test, scheduler=scheduler)
    return {
        "method": calib["method"],
        "alpha": calib["alpha"],
        "nu": calib.get("nu"),
        "lambda_hat": lam,
        "n_test": len(test),
        "per_image": rows,
        "mean": nanmean_metrics(rows),
    }


def evaluate(
    store: Any,
    calib: dict[str, Any],
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_evaluate` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_evaluate(store, calib, **kwargs), progress, should_stop)
