"""Choosing the torch device, and surviving a GPU that runs out of memory.

Every torch computation in :mod:`napari_conformal.core` takes a ``device``
argument that a user writes as ``"auto"``, ``"cpu"``, ``"cuda"`` or
``"cuda:i"`` (the ``--device`` option of the command line).
:func:`resolve_device` turns it into a :class:`torch.device`;
:func:`run_with_oom_fallback` runs a chunked computation and, when CUDA runs
out of memory, retries with smaller chunks and finally on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from napari_conformal.errors import ConformalError

__all__ = ["release_device_memory", "resolve_device", "run_with_oom_fallback"]

T = TypeVar("T")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a :class:`torch.device`.

    Parameters
    ----------
    spec : str, torch.device or None
        ``"auto"`` (or None): the first CUDA device when
        ``torch.cuda.is_available()``, else the CPU. ``"cpu"``, ``"cuda"``,
        ``"cuda:i"`` as in torch; case and surrounding blanks are ignored.
        Other accelerators are refused (the core computes in float64, which
        not every backend has).

    Returns
    -------
    torch.device

    Raises
    ------
    ConformalError
        The text is not a device, or names an accelerator this machine does
        not have (e.g. ``"cuda:1"`` with one GPU).
    """
    if isinstance(spec, torch.device):
        device = spec
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
        if text == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise ConformalError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {spec!r}"
            ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConformalError(f"device {spec!r} asks for CUDA, but no CUDA GPU is available; use 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and not 0 <= device.index < count:
            raise ConformalError(
                f"device {spec!r} does not exist: this machine has {count} CUDA device(s) (cuda:0..)"
            )
    elif device.type != "cpu":
        raise ConformalError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {spec!r}")
    return device


def release_device_memory(device: torch.device) -> None:
    """Give cached GPU memory back to the driver (no-op on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_fallback(
    fn: Callable[[torch.device, int], T],
    device: torch.device | str,
    chunk_size: int,
    *,
    min_chunk_size: int = 1,
    cpu_fallback: bool = True,
) -> T:
    """Run ``fn(device, chunk_size)``, shrinking the chunk on CUDA out-of-memory.

    On :class:`torch.cuda.OutOfMemoryError` the cache is emptied and ``fn`` is
    called again with half the chunk size, down to ``min_chunk_size``; if that
    still fails, ``fn(torch.device("cpu"), chunk_size)`` runs with a
    :class:`UserWarning` (the original chunk size: host memory is larger).
    The CUDA cache is emptied after the run whatever happens.

    Parameters
    ----------
    fn : callable (device, chunk_size) -> T
        The computation; it must move its own inputs to ``device`` and must
        not keep partial results between calls.
    device : torch.device or str
        Where to run first (a string is passed to :func:`resolve_device`).
    chunk_size : int
        First chunk size (rows, slices, images: whatever ``fn`` batches).
    min_chunk_size : int
        Smallest chunk size tried on the GPU.
    cpu_fallback : bool
        Whether to fall back to the CPU; if False the last out-of-memory error
        propagates.

    Returns
    -------
    T
        What ``fn`` returns.
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ConformalError(f"chunk_size must be a positive integer, got {chunk_size}")
    min_chunk_size = max(1, min(int(min_chunk_size), chunk_size))
    if device.type != "cuda":
        return fn(device, chunk_size)
    size = chunk_size
    try:
        while True:
            try:
                return fn(device, size)
            except torch.cuda.OutOfMemoryError as exc:
                message = str(exc)
            # outside the except block the traceback (and the tensors its
            # frames hold) is gone, so the cache can really be emptied
            release_device_memory(device)
            if size <= min_chunk_size:
                if not cpu_fallback:
                    raise torch.cuda.OutOfMemoryError(message)
                break
            size = max(min_chunk_size, size // 2)
    finally:
        release_device_memory(device)
    warnings.warn(
        f"{device} ran out of memory even with chunk size {size}; computing on the CPU instead",
        UserWarning,
        stacklevel=2,
    )
    return fn(torch.device("cpu"), chunk_size)
