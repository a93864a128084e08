"""Per-image work on a dask.distributed cluster.

Calibration and evaluation are maps over images followed by an exact
reduction (λ̂ is an order statistic or a sorted sweep), so running the map on
a cluster gives bit-identical results to the serial run: each image is
processed by the same function, and results are put back in index order
before the reduction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from typing import Any

from napari_conformal.errors import ConformalError

__all__ = ["iter_map_on_cluster", "local_cluster"]


def local_cluster(n_workers: int | None = None, memory_limit: str | int = "auto") -> Any:
    """A ``distributed.LocalCluster`` of single-threaded worker processes.

    The workers get dask's default environment (one OpenMP/BLAS thread each)
    without ``MALLOC_TRIM_THRESHOLD_``, which slows torch's many small
    allocations (see ``docs/benchmarks_scaling.md``).

    Parameters
    ----------
    n_workers : int, optional
        Number of worker processes (default: the number of CPU cores).
    memory_limit : str or int
        Per-worker memory limit passed to dask (e.g. ``"2GB"``).
    """
    import dask
    from distributed import LocalCluster

    n = n_workers or os.cpu_count() or 1
    # distributed's default worker environment sets MALLOC_TRIM_THRESHOLD_=65536 (glibc hands freed memory
    # back at once); the many small tensors of a CONSIGN search then run ~1.5x slower than in this process.
    # Keep the rest (one OpenMP/BLAS thread per worker).
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
        )


def _connect(scheduler: Any) -> tuple[Any, list[Any]]:
    """A client for ``scheduler`` ('local', an address, a cluster or a client) and what to close after."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask is an optional extra
        raise ConformalError(
            "--scheduler needs dask.distributed: pip install 'napari-conformal[distributed]'"
        ) from None
    if isinstance(scheduler, Client):
        return scheduler, []
    if scheduler == "local":
        cluster = local_cluster()
        client = Client(cluster)
        return client, [client, cluster]
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise ConformalError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        return client, [client]
    client = Client(scheduler)  # a cluster object
    return client, [client]


def iter_map_on_cluster(
    fn: Callable[[int], Any], indices: Sequence[int], *, scheduler: Any
) -> Generator[tuple[int, int], None, list[Any]]:
    """Map ``fn`` over ``indices`` on a cluster, yielding ``(done, total)`` as results arrive.

    Parameters
    ----------
    fn : callable
        ``fn(i)``; must be picklable with cloudpickle (closures over a store
        and a method object are).
    indices : sequence of int
        Image indices.
    scheduler : str, Client or cluster
        ``"local"`` starts a local cluster for the run; a string address
        connects to a running scheduler.

    Returns
    -------
    list
        Results in the order of ``indices`` (the generator's return value).
        Closing the generator cancels outstanding tasks.
    """
    from distributed import as_completed

    client, owned = _connect(scheduler)
    futures: list[Any] = []
    try:
        futures = client.map(fn, list(indices), pure=False)
        position = {f.key: j for j, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        total = len(futures)
        yield 0, total
        for done, future in enumerate(as_completed(futures), start=1):
            results[position[future.key]] = future.result()  # re-raises the worker's exception
            yield done, total
        return results
    finally:
        if futures:
            client.cancel(futures)
        for obj in owned:
            obj.close()
