"""Load a user's segmentation model: a TorchScript file, or a state dict plus a model factory.

* TorchScript (``torch.jit.save`` / ``scripted.save``): the archive carries its own program, run by
  the TorchScript interpreter (no Python unpickling of arbitrary objects). Note that a *traced*
  model keeps the train/eval behaviour it was traced with; script the model
  (``torch.jit.script``) when MC dropout should switch dropout on at sampling time.
* State dict (``torch.save(model.state_dict(), path)``): read with ``torch.load(...,
  weights_only=True)``, which refuses anything but tensors and plain containers, and loaded into
  ``factory()``. Half-precision weights are cast to the model's own dtype on load.

:func:`save_state_dict` writes the compact float16 files the demo models ship as.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_conformal.core.device import resolve_device
from napari_conformal.errors import ConformalError

__all__ = ["is_torchscript_file", "load_model", "load_state_dict", "save_state_dict"]

ModelFactory = Callable[[], nn.Module]

#: Keys under which training frameworks commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def _existing_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise ConformalError(f"model file {p} does not exist")
    if not p.is_file():
        raise ConformalError(f"model file {p} is not a file")
    return p


def is_torchscript_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding a ``code/`` program).

    A ``torch.save`` state dict is also a zip file, but without ``code/`` and ``constants.pkl``.
    """
    p = _existing_file(path)
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any(n.split("/", 2)[1:2] == ["code"] for n in names) or any(
        n.endswith("/constants.pkl") for n in names
    )


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict saved with :func:`torch.save`, safely (``weights_only=True``).

    A checkpoint that nests the weights under ``"state_dict"``, ``"model_state_dict"`` or
    ``"model"`` is unwrapped.

    Returns
    -------
    dict of str → torch.Tensor, on the CPU
    """
    p = _existing_file(path)
    if is_torchscript_file(p):
        raise ConformalError(f"{p} is a TorchScript model, not a state dict: load it without a factory")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, … for bad files
        raise ConformalError(
            f"cannot read {p} as a state dict (torch.load, weights_only=True): {exc}"
        ) from None
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ConformalError(f"{p} does not hold a state dict (a mapping of parameter names to tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConformalError(f"{p}: entries that are not tensors: {', '.join(bad[:5])}")
    return dict(obj)


def load_model(
    path: str | os.PathLike[str],
    factory: ModelFactory | None = None,
    *,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Load a segmentation model for sampling, in evaluation mode.

    Parameters
    ----------
    path : path-like
        A TorchScript archive, or a state dict written by ``torch.save``.
    factory : callable, optional
        ``factory() -> torch.nn.Module`` building the untrained architecture; required for a state
        dict, must be None for TorchScript.
    device : str or torch.device
        Where the model is placed (``"auto"``, ``"cpu"``, ``"cuda[:i]"``).
    strict : bool
        Passed to :meth:`torch.nn.Module.load_state_dict`.

    Returns
    -------
    torch.nn.Module
        In evaluation mode, on ``device``.

    Raises
    ------
    ConformalError
        Missing file, unreadable file, a state dict without a factory, or weights that do not fit.
    """
    p = _existing_file(path)
    dev = resolve_device(device)
    if is_torchscript_file(p):
        if factory is not None:
            raise ConformalError(f"{p} is a TorchScript model: it carries its architecture, pass no factory")
        try:
            model = torch.jit.load(str(p), map_location=dev)
        except Exception as exc:
            raise ConformalError(f"cannot load the TorchScript model {p}: {exc}") from None
        return model.eval()
    if factory is None:
        raise ConformalError(
            f"{p} is not a TorchScript model; for a state dict pass factory= (a function building the network)"
        )
    if not callable(factory):
        raise ConformalError("factory must be a callable returning a torch.nn.Module")
    state = load_state_dict(p)
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConformalError(f"factory() returned {type(model).__name__}, expected a torch.nn.Module")
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ConformalError(f"the weights in {p} do not fit the model built by factory(): {exc}") from None
    return model.to(dev).eval()


def save_state_dict(
    model: nn.Module, path: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float16
) -> Path:
    """Write ``model.state_dict()`` with :func:`torch.save`, atomically (temporary name, rename).

    Parameters
    ----------
    model : torch.nn.Module
    path : path-like
        Target file.
    dtype : torch.dtype or None
        Floating-point tensors are cast to it (default float16, half the size); integer buffers
        (e.g. batch-norm counters) are kept. None keeps every dtype.

    Returns
    -------
    pathlib.Path
    """
    target = Path(path)
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.clone()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
