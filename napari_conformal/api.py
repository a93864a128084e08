"""Calibrate and evaluate on a dataset store or on in-memory arrays: the engine every caller shares.

The command line, the docks, the report and scripts all call these functions; each is a progress
generator (``iter_…``, yielding :class:`~napari_conformal.core.progress.Step`) with a plain-callback
wrapper, so the same code runs in a terminal, a test, a napari thread worker or a dask client::

    calib = calibrate(store, "crc", alpha=0.1, cal_indices=range(20))
    report = evaluate(store, calib)                      # METRICS.json as a dict
    calib.save("calib.json"); Calibration.load("calib.json")

One path for every method (docs/algorithms.md): validate the levels, the options and the
calibration size *before* any per-image work; read and validate each image once
(:func:`~napari_conformal.io.dataset.read_image`); ``prepare`` it (on a dask cluster when asked);
then the method's batch hook :meth:`~napari_conformal.core.methods.base.ConformalMethod.iter_curves`
(CONSIGN's batched search) and its reduction to λ̂. The result is a
:class:`~napari_conformal.core.calibration.Calibration`.

Methods that extract image features (RW-CP) read them from the store's ``features`` array when
:func:`cache_features` wrote it with the same extractor settings (:func:`feature_cache_matches`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from napari_conformal.core.calibration import Calibration, Provenance, StoreRef
from napari_conformal.core.methods.base import ConformalMethod, PreparedPool, make_method, method_class
from napari_conformal.core.progress import Step
from napari_conformal.errors import Cancelled, ConformalError, ParameterError, StoreValidationError

if TYPE_CHECKING:  # pragma: no cover
    from napari_conformal.core.per_class import ClassCalibrations

__all__ = [
    "Cancelled",
    "cache_features",
    "calibrate",
    "calibrate_per_class",
    "drive",
    "evaluate",
    "evaluate_per_class",
    "extend",
    "feature_cache_matches",
    "iter_cache_features",
    "iter_calibrate",
    "iter_calibrate_per_class",
    "iter_evaluate",
    "iter_evaluate_per_class",
    "iter_extend",
    "iter_map_images",
    "iter_prepare",
]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]
T = TypeVar("T")


# -- running ------------------------------------------------------------------------------------------


def iter_map_images(
    fn: Callable[[int], Any], indices: Sequence[int], *, scheduler: Any = None, stage: str = "images"
) -> Generator[Step, None, list[Any]]:
    """Apply ``fn`` to each image index, yielding a :class:`Step` after each one.

    The generator's return value is the list of results in index order. Closing the generator
    early stops the work between two images; nothing partial is returned.

    Parameters
    ----------
    fn : callable
        ``fn(i)`` for one image index.
    indices : sequence of int
        Image indices.
    scheduler : str, optional
        ``None`` for this process; ``"local"`` or a scheduler address for dask.distributed
        (results identical to the serial run).
    stage : str
        The :attr:`Step.stage` yielded.
    """
    total = len(indices)
    if scheduler:
        from napari_conformal.parallel import iter_map_on_cluster

        gen = iter_map_on_cluster(fn, indices, scheduler=scheduler)
        try:
            while True:
                done, _ = next(gen)
                yield Step(done, total, stage)
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()
    out = []
    yield Step(0, total, stage)
    for j, i in enumerate(indices):
        out.append(fn(i))
        yield Step(j + 1, total, stage)
    return out


def drive(
    gen: Generator[Any, None, T],
    progress: Callable[..., None] | None = None,
    should_stop: ShouldStop | None = None,
) -> T:
    """Run a progress generator to completion with plain callbacks.

    ``progress(done, total)`` is called for each step; when ``should_stop()`` returns True the
    generator is closed and :class:`Cancelled` is raised.
    """
    try:
        while True:
            step = next(gen)
            if progress is not None:
                progress(step[0], step[1])
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled()
    except StopIteration as stop:
        return stop.value


def _with_image(i: int, fn: Callable[[], T]) -> T:
    """``fn()``, with data errors that do not name their image prefixed by it."""
    try:
        return fn()
    except ParameterError:
        raise
    except ConformalError as exc:
        text = str(exc)
        if f"image {i}" in text:
            raise
        raise type(exc)(f"image {i}: {text}") from None


# -- cached features ---------------------------------------------------------------------------------


def _json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, numpy scalars → numbers)."""
    from napari_conformal.io.provenance import to_jsonable

    return json.loads(json.dumps(to_jsonable(value, where="extractor settings"), allow_nan=False))


def _extractor_params(method: ConformalMethod) -> dict[str, Any] | None:
    """The method's extractor description, or None when it uses no image features."""
    if not method.uses_features:
        return None
    extractor = getattr(method, "extractor", None)
    if extractor is None or not callable(getattr(extractor, "params", None)):
        return None
    return extractor.params()


def feature_cache_matches(data: Any, method: ConformalMethod) -> bool:
    """Whether ``method`` will read its features from ``data`` (a store) instead of computing them.

    True when the method uses image features, the store holds a ``features`` array, and the
    extractor recorded with it (``store.features_info["extractor"]``, written by
    :func:`cache_features`) equals ``method.extractor.params()`` after JSON normalisation. Features
    cached with other settings are ignored: the method then computes its features as usual.
    """
    wanted = _extractor_params(method)
    if wanted is None or not getattr(data, "has_features", False):
        return False
    recorded = (data.features_info or {}).get("extractor")
    if recorded is None:
        return False
    try:
        return bool(_json_normal(recorded) == _json_normal(wanted))
    except (ConformalError, TypeError, ValueError):
        return False


def _prepare(method: ConformalMethod, data: Any, image: Any, cached: bool) -> Any:
    """``method.prepare`` of one validated image (:class:`~napari_conformal.io.dataset.ImageData`)."""
    kwargs: dict[str, Any] = {"stored_dtype": data.samples_dtype, "validated": True}
    if cached:
        kwargs["features"] = data.features(image.index)  # (C, *S') float32; prepare checks its grid
    return method.prepare(image.image, image.samples, **kwargs)


_NO_FEATURES = "method {name!r} does not use image features; only rwcp features can be cached in a store"


def iter_cache_features(
    store: Any,
    method: str | ConformalMethod,
    *,
    indices: Iterable[int] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Generator[Step, None, dict[str, Any]]:
    """Compute a method's image features and store them in the ``features`` array.

    Later :func:`calibrate` / :func:`evaluate` runs with the same extractor settings read them
    instead of recomputing (:func:`feature_cache_matches`). Features are computed one image at a
    time and streamed into ``store.iter_write_features``, which swaps the new array in only when
    every image is written: cancelling or failing leaves the store as it was. The array is float16,
    so maps computed from the cache can differ from freshly computed ones by float16 rounding.

    Parameters
    ----------
    store : DatasetStore
        A store opened writable (``open_store(path, mode="r+")``).
    method : str or ConformalMethod
        A method that uses image features (``"rwcp"``), or an instance of one.
    indices : iterable of int, optional
        Recompute only these images and copy the others from the existing cache, which must have
        been made with the same extractor (and needs ``overwrite=True``). Default: every image.
    overwrite : bool
        Replace features the store already holds.
    **options
        Method options when ``method`` is a name (``features``, ``grid_stride``, ``model_dir``,
        ``device``, …).

    Returns
    -------
    dict
        ``store.features_info`` after writing, as the generator's return value.
    """
    if isinstance(method, str):
        if not method_class(method).uses_features:
            raise ConformalError(_NO_FEATURES.format(name=method))
        method = make_method(method, **options)
    if _extractor_params(method) is None:
        raise ConformalError(_NO_FEATURES.format(name=method.name))
    if getattr(store, "mode", "r") != "r+":
        raise ConformalError(
            f"the store at {store.path} is open read-only; open it with open_store(path, mode='r+') to cache features in it"
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
    yield Step(0, total, "features")
    reported = 0
    try:
        for _ in writer:
            if computed != reported:  # one report per computed image (copied ones are not counted)
                reported = computed
                yield Step(computed, total, "features")
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


# -- calibration ---------------------------------------------------------------------------------------


def _dataset(data: Any, arrays: dict[str, Any]) -> Any:
    from napari_conformal.io.dataset import as_dataset

    return as_dataset(data, **{k: v for k, v in arrays.items() if v is not None})


def _method(
    method: str | ConformalMethod | None, device: str | None, options: dict[str, Any]
) -> ConformalMethod:
    if method is None:
        raise ParameterError("method is required (e.g. 'crc', 'consign'; see available_methods())")
    if isinstance(method, ConformalMethod):
        if options:
            raise ParameterError(f"options {sorted(options)} cannot be applied to a method instance")
        return method
    return make_method(method, device=device, **options)


def _indices(indices: Iterable[int], n: int, what: str) -> list[int]:
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise ParameterError(f"{what} must be image indices (integers), got {i!r}")
        if not 0 <= int(i) < n:
            raise ParameterError(f"{what}: image index {int(i)} is out of range 0..{n - 1}")
        out.append(int(i))
    if not out:
        raise ParameterError(f"{what} is empty")
    if len(set(out)) != len(out):
        raise ParameterError(f"{what} contains duplicates")
    return out


def _device_name(method: ConformalMethod) -> str:
    if not method.uses_device:
        return "cpu"
    from napari_conformal.core.device import resolve_device

    return str(resolve_device(method.device))


def iter_prepare(
    data: Any,
    method: ConformalMethod,
    indices: Sequence[int],
    *,
    with_labels: bool = True,
    scheduler: Any = None,
    pool: PreparedPool | None = None,
) -> Generator[Step, None, list[tuple[Any, np.ndarray | None]]]:
    """Read, validate and prepare images (on a dask cluster when asked): ``[(prepared, label), …]``.

    With ``pool`` (:meth:`~napari_conformal.core.methods.base.ConformalMethod.prepared_pool`) each
    image is handed to it as soon as it is prepared (on a cluster: once all are back), and the pairs
    returned are the pool's: e.g. CONSIGN bases spilled to disk beyond the method's memory budget.
    """
    from napari_conformal.io.dataset import read_image

    cached = feature_cache_matches(data, method)

    def one(i: int) -> tuple[Any, np.ndarray | None]:
        def run() -> tuple[Any, np.ndarray | None]:
            image = read_image(data, i, with_label=with_labels)
            if image.label is not None:
                method.check_truth(image.label)  # here, where the image is named (CONSIGN's search comes later)
            return _prepare(method, data, image, cached), image.label

        return _with_image(i, run)

    if pool is None:
        return (yield from iter_map_images(one, indices, scheduler=scheduler))
    if scheduler:
        for prepared, label in (yield from iter_map_images(one, indices, scheduler=scheduler)):
            pool.add(prepared, label)
    else:

        def kept(i: int) -> None:
            pool.add(*one(i))  # the pool holds it from here (the caller's copy is dropped)

        yield from iter_map_images(kept, indices)
    return list(zip(pool.prepared, pool.labels, strict=True))


def iter_calibrate(
    data: Any = None,
    method: str | ConformalMethod | None = None,
    *,
    alpha: float,
    nu: float | None = None,
    cal_indices: Iterable[int] | None = None,
    device: str | None = None,
    scheduler: Any = None,
    split_seed: int | None = None,
    images: Any = None,
    samples: Any = None,
    labels: Any = None,
    spacing: Sequence[float] | None = None,
    curve_cache: MutableMapping[int, Any] | None = None,
    **options: Any,
) -> Generator[Step, None, Calibration]:
    """Calibrate ``method`` on the images ``cal_indices`` of ``data``, as a progress generator.

    Parameters
    ----------
    data : DatasetStore, path, dict or ArrayDataset, optional
        The data (a path is opened read-only); or pass ``images=``, ``samples=``, ``labels=``.
    method : str or ConformalMethod
        A registered name (``"crc"``, ``"consign"``, …; :func:`available_methods`) or an instance.
    alpha : float
        Risk level in (0, 1).
    nu : float, optional
        Label-wise accuracy in [0, 1) (CONSIGN and pixel-wise methods; refused by the others).
    cal_indices : iterable of int, optional
        Calibration image indices (default: every image). A method that tunes (RW-CP with
        ``tune="dice"``) chooses its hyper-parameters on a seeded part of them and computes λ̂ on the
        rest: the calibration's ``cal_indices`` are then that rest and ``tune_indices`` the part.
    device : str, optional
        "auto" (default), "cpu", "cuda" or "cuda:i" for methods that compute with torch.
    scheduler : str, optional
        Run the per-image work on dask.distributed ("local" or an address); same λ̂ as serial.
    split_seed : int, optional
        Seed of the random split that chose ``cal_indices``, recorded in the provenance.
    images, samples, labels, spacing
        In-memory arrays instead of ``data``: ``images`` (N, *S), ``samples`` (N, T, L, *S),
        ``labels`` (N, *S).
    curve_cache : dict, optional
        Image index → curve, for callers that calibrate the same method (same options, α and ν)
        on overlapping image sets, such as repeated splits: curves found there are used as they
        are, new ones are added. Only for methods whose curves are computed image by image
        (``batch_curves`` False); ignored otherwise. The caller keys one cache per method,
        options, α and ν.
    **options
        The method's options (``k=5``, ``features="multiscale"``, ``tau=0.9``, …).

    Yields
    ------
    Step
        Images read and prepared (stage ``"images"``), then the method's curve stage.

    Returns
    -------
    Calibration
        As the generator's return value; :func:`calibrate` runs it with callbacks.

    Raises
    ------
    ParameterError
        Bad levels, options or indices (before any per-image work).
    InsufficientCalibrationError
        n < ⌈1/α⌉ − 1 (before any per-image work; names the smallest α n allows).
    StoreValidationError
        Bad data, naming the array and the image.
    """
    dataset = _dataset(data, {"images": images, "samples": samples, "labels": labels, "spacing": spacing})
    m = _method(method, device, options)
    alpha, nu = m.check_levels(alpha, nu)
    if not dataset.has_labels:
        raise StoreValidationError(
            f"{getattr(dataset, 'path', None) or 'the data'} has no 'labels' array: calibration needs ground truth"
        )
    cal = _indices(
        range(dataset.n_images) if cal_indices is None else cal_indices, dataset.n_images, "cal_indices"
    )
    m.check_calibration(len(cal), alpha)
    m.check_data(n_labels=dataset.n_labels, n_samples=dataset.n_samples, ndim=dataset.ndim)
    device_used = _device_name(m)
    tune_positions = m.tuning_positions(len(cal), alpha)  # data-independent; raises if too few would be left
    tune: list[int] = []
    tuning = None
    if tune_positions:
        # hyper-parameters are chosen on these images only; λ̂ comes from the others (docs/algorithms.md#rw-cp-tuning)
        chosen = set(tune_positions)
        tune = [cal[j] for j in sorted(chosen)]
        cal = [c for j, c in enumerate(cal) if j not in chosen]
        m.check_calibration(len(cal), alpha)
        m, tuning = yield from m.iter_tune(
            _tuning_images(dataset, m, tune), n_tune=len(tune), n_lambda=len(cal), alpha=alpha, nu=nu
        )
    if m.batch_curves:
        with m.prepared_pool(len(cal)) as pool:  # e.g. CONSIGN's bases, on disk beyond a budget; gone after
            pairs = yield from iter_prepare(dataset, m, cal, scheduler=scheduler, pool=pool)
            prepared, cal_labels = [p for p, _ in pairs], [y for _, y in pairs]
            del pairs
            curves = yield from m.iter_curves(prepared, cal_labels, alpha=alpha, nu=nu)
            del prepared, cal_labels
    else:
        from napari_conformal.io.dataset import read_image

        cached = feature_cache_matches(dataset, m)

        def one(i: int) -> Any:
            def run() -> Any:
                image = read_image(dataset, i)
                return m.curve(_prepare(m, dataset, image, cached), image.label, alpha=alpha, nu=nu)

            return _with_image(i, run)

        known = {} if curve_cache is None else curve_cache
        todo = [i for i in dict.fromkeys(cal) if i not in known]
        new = yield from iter_map_images(one, todo, scheduler=scheduler)
        found = dict(zip(todo, new, strict=True))
        if curve_cache is not None:
            curve_cache.update(found)
        curves = [known[i] if i in known else found[i] for i in cal]
    lam = m.lambda_hat(curves, alpha=alpha, nu=nu)
    calibration = Calibration(
        method=m.name,
        params=m.params(),
        alpha=alpha,
        nu=nu,
        lambda_hat=float(lam),
        cal_indices=tuple(cal),
        store=StoreRef.of(dataset),
        curves=tuple(curves),
        provenance=Provenance.now(device=device_used, seed=split_seed),
        tune_indices=tuple(tune),
        tuning=tuning,
    )
    calibration.__dict__["method_object"] = m
    return calibration


def _tuning_images(dataset: Any, method: ConformalMethod, indices: Sequence[int]) -> Iterator[Any]:
    """The tuning images, read and validated one at a time (with cached features where they match)."""
    from napari_conformal.core.methods.base import TuningImage
    from napari_conformal.io.dataset import read_image

    cached = feature_cache_matches(dataset, method)
    for i in indices:
        image = _with_image(i, lambda i=i: read_image(dataset, i))
        features = dataset.features(i) if cached else None
        yield TuningImage(i, image.image, image.samples, image.label, features, dataset.samples_dtype)


def calibrate(
    data: Any = None,
    method: str | ConformalMethod | None = None,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> Calibration:
    """:func:`iter_calibrate` with ``progress(done, total)`` and ``should_stop()`` callbacks.

    Examples
    --------
    >>> calib = calibrate(store, "consign", alpha=0.1, nu=0.9, cal_indices=range(40))  # doctest: +SKIP
    >>> calib = calibrate(method="crc", alpha=0.1, images=x, samples=p, labels=y)     # doctest: +SKIP
    """
    return drive(iter_calibrate(data, method, **kwargs), progress, should_stop)


def iter_extend(
    calibration: Calibration,
    data: Any,
    *,
    alpha: float,
    nu: float | None = None,
    prepared: Sequence[Any] | None = None,
    labels: Sequence[np.ndarray] | None = None,
    scheduler: Any = None,
) -> Generator[Step, None, Calibration]:
    """``calibration`` with curves that also answer (α, ν) (CONSIGN at another box quantile level).

    A calibration already answering (α, ν) is returned as it is; otherwise the calibration images
    are prepared again (unless ``prepared`` and ``labels`` are given, e.g. from a viewer's cache)
    and the method's batch hook extends the curves. λ̂ at the calibration's own levels is unchanged.
    """
    if calibration.answers(alpha, nu):
        return calibration
    m = calibration.method_object
    a, v = m.check_levels(alpha, nu if m.uses_nu else None)
    m.check_calibration(calibration.n, a)
    if prepared is None or labels is None:
        dataset = _dataset(data, {})
        _check_same_data(calibration, dataset)
        with m.prepared_pool(calibration.n) as pool:  # removed (spilled bases included) when done
            pairs = yield from iter_prepare(
                dataset, m, list(calibration.cal_indices), scheduler=scheduler, pool=pool
            )
            prepared, labels = [p for p, _ in pairs], [y for _, y in pairs]
            del pairs
            curves = yield from m.iter_curves(prepared, labels, alpha=a, nu=v, previous=calibration.curves)
            del prepared, labels
        return calibration.with_curves(curves)
    curves = yield from m.iter_curves(prepared, labels, alpha=a, nu=v, previous=calibration.curves)
    return calibration.with_curves(curves)


def extend(
    calibration: Calibration,
    data: Any,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> Calibration:
    """:func:`iter_extend` with callbacks."""
    return drive(iter_extend(calibration, data, **kwargs), progress, should_stop)


# -- evaluation ------------------------------------------------------------------------------------------


def _check_same_data(calibration: Calibration, dataset: Any) -> None:
    if calibration.store.identity != dataset.identity():
        where = calibration.store.path or "in-memory arrays"
        path = getattr(dataset, "path", None)
        what = f"{path} is not the store" if path is not None else "these arrays are not the data"
        raise StoreValidationError(
            f"{what} this calibration was made on ({where}): calibrate on them first, or evaluate with "
            "check_identity=False (--other-data) to treat every image as a test image"
        )


def iter_evaluate(
    data: Any,
    calibration: Calibration,
    *,
    test_indices: Iterable[int] | None = None,
    n_samples: Sequence[int] = (10, 50, 100, 500, 1000),
    seed: int = 0,
    device: str | None = None,
    check_identity: bool = True,
    scheduler: Any = None,
) -> Generator[Step, None, dict[str, Any]]:
    """Per-image and mean metrics of a calibration on test images (``METRICS.json`` as a dict).

    Parameters
    ----------
    data : DatasetStore, path, dict or ArrayDataset
        The data; by default the one the calibration was made on (checked by content identity).
    calibration : Calibration
        From :func:`calibrate` or :meth:`Calibration.load`.
    test_indices : iterable of int, optional
        Default: every image not used for calibration or tuning (every image for other data).
    n_samples : sequence of int
        Numbers of sampled members for Chao1 / SEC / correlation (sampling methods only).
    seed : int
        Seed for sampling members (image i uses ``seed + i``).
    device : str, optional
        Override the device of methods that compute with torch.
    check_identity : bool
        Refuse data other than the calibration's (False: evaluate on other data, every image a test image).
    scheduler : str, optional
        As in :func:`iter_calibrate`.

    Returns
    -------
    dict
        ``{"method", "alpha", "nu", "lambda_hat", "n_test", "guarantee", "per_image": [...], "mean": {...}}``.
    """
    from napari_conformal.core.metrics.segmentation import nanmean_metrics

    if not isinstance(calibration, Calibration):
        raise ParameterError(
            f"calibration must be a Calibration (Calibration.load(path)), got {type(calibration).__name__}"
        )
    dataset = _dataset(data, {})
    if not dataset.has_labels:
        raise StoreValidationError("the data have no labels: evaluation needs ground truth")
    same = calibration.store.identity == dataset.identity()
    if check_identity and not same:
        _check_same_data(calibration, dataset)
    cal = set(calibration.images) if same else set()  # λ̂ and tuning images: neither is a test image
    if same and calibration.store.n_images != dataset.n_images:
        raise StoreValidationError("the data's image count differs from the calibration's record")
    if test_indices is None:
        test = [i for i in range(dataset.n_images) if i not in cal]
        if not test:
            raise ParameterError("no test images: every image was used for calibration")
    else:
        test = _indices(test_indices, dataset.n_images, "test_indices")
        overlap = sorted(cal.intersection(test))
        if overlap:
            raise ParameterError(f"test indices overlap the calibration set: {overlap[:10]}")
    m = calibration.build_method(device)
    m.check_data(n_labels=dataset.n_labels, n_samples=dataset.n_samples, ndim=dataset.ndim)
    lam, alpha, nu = calibration.lambda_hat, calibration.alpha, calibration.nu
    ns = sorted({int(n) for n in n_samples}) if m.samples_members else []
    if any(n < 1 for n in ns):
        raise ParameterError("n_samples must be positive integers")
    spacing = dataset.spacing
    cached = feature_cache_matches(dataset, m)

    def one(i: int) -> dict[str, Any]:
        from napari_conformal.io.dataset import read_image

        def run() -> dict[str, Any]:
            image = read_image(dataset, i)
            prepared = _prepare(m, dataset, image, cached)
            return m.evaluate(
                prepared, image.label, lam, alpha=alpha, nu=nu, spacing=spacing, n_samples=ns, seed=seed + i
            )

        return {"index": i, **_with_image(i, run)}

    rows = yield from iter_map_images(one, test, scheduler=scheduler)
    return {
        "method": calibration.method,
        "alpha": alpha,
        "nu": nu,
        "lambda_hat": lam,
        "n_test": len(test),
        "guarantee": calibration.guarantee(),
        "per_image": rows,
        "mean": nanmean_metrics(rows),
    }


def evaluate(
    data: Any,
    calibration: Calibration,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_evaluate` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_evaluate(data, calibration, **kwargs), progress, should_stop)


# -- per-structure calibration ------------------------------------------------------------------------


def _present_labels(data: Any, i: int) -> frozenset[int]:
    """The labels present in image ``i``'s ground truth (values checked)."""
    from napari_conformal.core.validation import check_label

    def run() -> frozenset[int]:
        label = check_label(data.label(i), i, n_labels=data.n_labels, shape=data.spatial_shape)
        return frozenset(
            int(v) for v in np.flatnonzero(np.bincount(label.reshape(-1), minlength=data.n_labels))
        )

    return _with_image(i, run)


def _classes(classes: Iterable[int] | None, n_labels: int) -> list[int]:
    from napari_conformal.core.validation import check_fg_class

    if classes is None:
        chosen = list(range(1, n_labels))
    else:
        chosen = [check_fg_class(c, n_labels, name="class") for c in classes]
    if not chosen:
        raise ParameterError(
            f"classes is empty: name at least one structure (the data have labels 0..{n_labels - 1})"
        )
    if len(set(chosen)) != len(chosen):
        raise ParameterError(f"classes contains duplicates: {chosen}")
    return sorted(chosen)


def _label_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "label_names", None)
    return None if names is None else [str(n) for n in names]


def iter_calibrate_per_class(
    data: Any = None,
    method: str | None = None,
    *,
    alpha: float,
    nu: float | None = None,
    classes: Iterable[int] | None = None,
    rare: str = "refuse",
    cal_indices: Iterable[int] | None = None,
    device: str | None = None,
    scheduler: Any = None,
    split_seed: int | None = None,
    images: Any = None,
    samples: Any = None,
    labels: Any = None,
    spacing: Sequence[float] | None = None,
    **options: Any,
) -> Generator[Step, None, ClassCalibrations]:
    """One λ̂ per structure (docs/algorithms.md#per-structure-guarantees), as a progress generator.

    For each class c: ``calibrate(data, method, cal_indices=<the images of cal_indices whose ground
    truth contains c>, <structure option>=c)`` — ``fg_class`` for CRC, RW-CP and Consema,
    ``structure`` for the label-wise methods. The guarantee of class c is for **new images that
    contain c**.

    Parameters
    ----------
    data, images, samples, labels, spacing, alpha, nu, cal_indices, device, scheduler, split_seed
        As in :func:`iter_calibrate`.
    method : str
        A registered method name (a method object cannot be re-made per class).
    classes : iterable of int, optional
        The structures (default: every foreground label 1..L−1).
    rare : {"refuse", "full"}
        A class in fewer than ⌈1/α⌉ − 1 calibration images is refused (the default: one message
        naming each such class, its count and the number needed) or gets the method's full set
        (:meth:`~napari_conformal.core.methods.base.ConformalMethod.full_set_lambda`; refused for
        methods without one).
    **options
        The method's options, except its structure option (set per class).

    Yields
    ------
    Step
        The labels read (stage ``"labels"``: the count guard needs them), then the images read and
        prepared over every class (``"images"``, counted across classes), and each class's curve
        stage (``"structure c: search"``).

    Returns
    -------
    ClassCalibrations
        As the generator's return value.

    Raises
    ------
    ParameterError
        Bad levels, options, classes or indices, or the structure option given (before any
        per-image work).
    InsufficientCalibrationError
        A class too rare for α with ``rare="refuse"``, or with ``rare="full"`` for a method
        without a full set: after reading the labels, before any image is prepared.
    """
    from napari_conformal.core.per_class import RARE_RULES, ClassCalibrations, ClassEntry, rare_message
    from napari_conformal.core.validation import min_calibration_size
    from napari_conformal.errors import InsufficientCalibrationError

    if not isinstance(method, str):
        raise ParameterError(
            "per-class calibration needs the method's name (it makes one method per class), "
            f"got {type(method).__name__}"
        )
    cls = method_class(method)
    option = cls.structure_option
    if option is None:
        raise ParameterError(f"method {method!r} has no structure option: it cannot be calibrated per class")
    if option in options:
        raise ParameterError(f"per-class calibration sets {option} to each class itself; leave {option} out")
    if rare not in RARE_RULES:
        raise ParameterError(f"rare must be one of {', '.join(RARE_RULES)}, got {rare!r}")
    dataset = _dataset(data, {"images": images, "samples": samples, "labels": labels, "spacing": spacing})
    base = make_method(method, device=device, **options)
    alpha, nu = base.check_levels(alpha, nu)
    if not dataset.has_labels:
        raise StoreValidationError(
            f"{getattr(dataset, 'path', None) or 'the data'} has no 'labels' array: calibration needs ground truth"
        )
    pool = _indices(
        range(dataset.n_images) if cal_indices is None else cal_indices, dataset.n_images, "cal_indices"
    )
    chosen = _classes(classes, dataset.n_labels)
    methods = {c: make_method(method, device=device, **options, **{option: c}) for c in chosen}
    for m in methods.values():
        m.check_data(n_labels=dataset.n_labels, n_samples=dataset.n_samples, ndim=dataset.ndim)
    names = _label_names(dataset)

    def name(c: int) -> str | None:
        return None if names is None else names[c]

    present = yield from iter_map_images(lambda i: _present_labels(dataset, i), pool, stage="labels")
    images_of = {c: [i for i, p in zip(pool, present, strict=True) if c in p] for c in chosen}
    need = min_calibration_size(alpha)
    too_rare = []
    for c in chosen:
        try:
            methods[c].check_calibration(len(images_of[c]), alpha)
        except InsufficientCalibrationError:
            too_rare.append(c)
    if too_rare and rare == "refuse":
        raise InsufficientCalibrationError(
            rare_message([(c, name(c), len(images_of[c])) for c in too_rare], need, alpha, len(pool))
        )
    without = [c for c in too_rare if methods[c].full_set_lambda() is None]
    if without:
        raise InsufficientCalibrationError(
            rare_message(
                [(c, name(c), len(images_of[c])) for c in without], need, alpha, len(pool), full=False
            )
            + f"; {cls.title or method} has no full set to fall back on (no lambda it records is sure to hold "
            "every pixel and label)"
        )
    todo = [c for c in chosen if c not in too_rare]
    total = sum(len(images_of[c]) for c in todo)
    done = 0
    entries = []
    for c in chosen:
        if c in too_rare:
            lam = float(methods[c].full_set_lambda())  # type: ignore[arg-type]
            entries.append(ClassEntry(c, name(c), len(images_of[c]), "full_set", lam, None))
            continue
        gen = iter_calibrate(
            dataset,
            methods[c],
            alpha=alpha,
            nu=nu,
            cal_indices=images_of[c],
            scheduler=scheduler,
            split_seed=split_seed,
        )
        try:
            while True:
                step = next(gen)
                if step.stage == "images":
                    yield Step(done + step.done, total, "images")
                else:
                    yield Step(step.done, step.total, f"structure {c}: {step.stage}")
        except StopIteration as stop:
            calibration = stop.value
        finally:
            gen.close()
        done += len(images_of[c])
        entries.append(
            ClassEntry(c, name(c), len(images_of[c]), "calibrated", calibration.lambda_hat, calibration)
        )
    return ClassCalibrations(
        method=method,
        params={k: v for k, v in base.params().items() if k != option},
        alpha=alpha,
        nu=nu,
        cal_indices=tuple(pool),
        store=StoreRef.of(dataset),
        label_names=None if names is None else tuple(names),
        entries=tuple(entries),
        provenance=Provenance.now(device=_device_name(base), seed=split_seed),
    )


def calibrate_per_class(
    data: Any = None,
    method: str | None = None,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> ClassCalibrations:
    """:func:`iter_calibrate_per_class` with ``progress(done, total)`` and ``should_stop()`` callbacks.

    Examples
    --------
    >>> per_class = calibrate_per_class(store, "crc", alpha=0.1, cal_indices=range(40))  # doctest: +SKIP
    >>> per_class.lambda_hat(2), per_class.guarantee(2)                                  # doctest: +SKIP
    """
    return drive(iter_calibrate_per_class(data, method, **kwargs), progress, should_stop)


def iter_evaluate_per_class(
    data: Any,
    calibrations: ClassCalibrations,
    *,
    test_indices: Iterable[int] | None = None,
    n_samples: Sequence[int] = (10, 50, 100, 500, 1000),
    seed: int = 0,
    device: str | None = None,
    check_identity: bool = True,
    scheduler: Any = None,
) -> Generator[Step, None, dict[str, Any]]:
    """Metrics of a per-class calibration, each class on the test images that contain it.

    Parameters
    ----------
    data, n_samples, seed, device, check_identity, scheduler
        As in :func:`iter_evaluate`.
    calibrations : ClassCalibrations
        From :func:`calibrate_per_class` or :meth:`ClassCalibrations.load`.
    test_indices : iterable of int, optional
        Default: every image not used for calibration (every image for other data); each class is
        evaluated on those of them whose ground truth contains it.

    Returns
    -------
    dict
        ``{"method", "alpha", "nu", "per_class": {"<label>": {"label", "name", "rule", "n_cal",
        "lambda_hat", "n_test", "test_indices", "guarantee", "per_image": [...], "mean": {...}}}}``;
        a full-set class is evaluated at its full-set λ.
    """
    from napari_conformal.core.metrics.segmentation import nanmean_metrics
    from napari_conformal.core.per_class import ClassCalibrations
    from napari_conformal.io.dataset import read_image

    if not isinstance(calibrations, ClassCalibrations):
        raise ParameterError(
            f"calibrations must be a ClassCalibrations (ClassCalibrations.load(path)), got {type(calibrations).__name__}"
        )
    dataset = _dataset(data, {})
    if not dataset.has_labels:
        raise StoreValidationError("the data have no labels: evaluation needs ground truth")
    same = calibrations.store.identity == dataset.identity()
    if check_identity and not same:
        where = calibrations.store.path or "in-memory arrays"
        raise StoreValidationError(
            f"these data are not the data this per-class calibration was made on ({where}): calibrate on them "
            "first, or evaluate with check_identity=False (--other-data)"
        )
    pool = set(calibrations.cal_indices) if same else set()
    if test_indices is None:
        test = [i for i in range(dataset.n_images) if i not in pool]
        if not test:
            raise ParameterError("no test images: every image was used for calibration")
    else:
        test = _indices(test_indices, dataset.n_images, "test_indices")
        overlap = sorted(pool.intersection(test))
        if overlap:
            raise ParameterError(f"test indices overlap the calibration images: {overlap[:10]}")
    methods = {c: calibrations.build_method(c, device) for c in calibrations.classes}
    for m in methods.values():
        m.check_data(n_labels=dataset.n_labels, n_samples=dataset.n_samples, ndim=dataset.ndim)
    present = yield from iter_map_images(lambda i: _present_labels(dataset, i), test, stage="labels")
    tests_of = {c: [i for i, p in zip(test, present, strict=True) if c in p] for c in calibrations.classes}
    total = sum(len(v) for v in tests_of.values())
    done = 0
    alpha, nu = calibrations.alpha, calibrations.nu
    spacing = dataset.spacing
    out: dict[str, Any] = {}
    for c in calibrations.classes:
        entry = calibrations[c]
        m = methods[c]
        ns = sorted({int(n) for n in n_samples}) if m.samples_members else []
        cached = feature_cache_matches(dataset, m)

        def one(
            i: int, m: Any = m, ns: list[int] = ns, cached: bool = cached, lam: float = entry.lambda_hat
        ) -> Any:
            def run() -> dict[str, Any]:
                image = read_image(dataset, i)
                prepared = _prepare(m, dataset, image, cached)
                return m.evaluate(
                    prepared,
                    image.label,
                    lam,
                    alpha=alpha,
                    nu=nu,
                    spacing=spacing,
                    n_samples=ns,
                    seed=seed + i,
                )

            return {"index": i, **_with_image(i, run)}

        rows: list[dict[str, Any]] = []
        if tests_of[c]:
            gen = iter_map_images(one, tests_of[c], scheduler=scheduler)
            try:
                while True:
                    step = next(gen)
                    yield Step(done + step.done, total, "images")
            except StopIteration as stop:
                rows = stop.value
            finally:
                gen.close()
        done += len(tests_of[c])
        out[str(c)] = {
            "label": c,
            "name": entry.name,
            "rule": entry.rule,
            "n_cal": entry.n,
            "lambda_hat": entry.lambda_hat,
            "n_test": len(rows),
            "test_indices": tests_of[c],
            "guarantee": calibrations.guarantee(c),
            "per_image": rows,
            "mean": nanmean_metrics(rows) if rows else {},
        }
    return {
        "method": calibrations.method,
        "alpha": alpha,
        "nu": nu,
        "per_class_calibration": True,
        "classes": list(calibrations.classes),
        "per_class": out,
    }


def evaluate_per_class(
    data: Any,
    calibrations: ClassCalibrations,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`iter_evaluate_per_class` with ``progress(done, total)`` and ``should_stop()`` callbacks."""
    return drive(iter_evaluate_per_class(data, calibrations, **kwargs), progress, should_stop)
