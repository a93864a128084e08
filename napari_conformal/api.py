"""High-level calibrate / evaluate on a dataset store.

The command line, the dock widgets and scripts all call these two functions.
They take plain callbacks for progress and cancellation, so the same code runs
in a terminal, a test, a napari thread worker or a dask client::

    calib = calibrate(store, "crc", alpha=0.1, cal_indices=range(20))
    report = evaluate(store, calib)

Both return JSON-ready dictionaries (the ``CALIB.json`` and ``METRICS.json`` of
SPEC §4).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from napari_conformal.core.method import ConformalMethod, make_method
from napari_conformal.core.metrics import nanmean_metrics
from napari_conformal.errors import Cancelled, ConformalError

__all__ = [
    "Cancelled",
    "calibrate",
    "drive",
    "evaluate",
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

    def one(i: int) -> Any:
        return _with_image(
            i, lambda: method.curve(method.prepare(store.image(i), store.samples(i)), store.label(i))
        )

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

    def one(i: int) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            prepared = method.prepare(store.image(i), store.samples(i))
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
