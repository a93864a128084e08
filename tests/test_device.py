"""Device resolution and the CUDA out-of-memory fallback (core/device.py).

The machine running CI has no GPU: out-of-memory is simulated by a function
that raises ``torch.cuda.OutOfMemoryError`` while its chunk is too large.
"""

from __future__ import annotations

import pytest
import torch

from napari_conformal.core import device as device_mod
from napari_conformal.core.device import resolve_device, run_with_oom_fallback
from napari_conformal.errors import ConformalError


def test_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(" AUTO ") == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConformalError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_bad_device_specs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConformalError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConformalError, match="device must be"):
        resolve_device("gpu-please")
    with pytest.raises(ConformalError, match="device must be"):
        resolve_device("meta")


def _fake_gpu_job(limit: int, calls: list):
    """A job that runs out of (simulated) GPU memory for chunks above ``limit``."""

    def job(dev: torch.device, chunk: int) -> tuple[str, int]:
        calls.append((dev.type, chunk))
        if dev.type == "cuda" and chunk > limit:
            raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")
        return dev.type, chunk

    return job


def test_oom_halves_the_chunk_then_succeeds(monkeypatch):
    emptied = []
    monkeypatch.setattr(device_mod, "release_device_memory", lambda d: emptied.append(d.type))
    calls: list = []
    out = run_with_oom_fallback(_fake_gpu_job(100, calls), torch.device("cuda"), 512)
    assert out == ("cuda", 64)
    assert calls == [("cuda", 512), ("cuda", 256), ("cuda", 128), ("cuda", 64)]
    assert len(emptied) >= 4  # after each failure and after the run


def test_oom_falls_back_to_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(device_mod, "release_device_memory", lambda d: None)
    calls: list = []
    with pytest.warns(UserWarning, match="on the CPU"):
        out = run_with_oom_fallback(_fake_gpu_job(0, calls), torch.device("cuda"), 8, min_chunk_size=2)
    assert out == ("cpu", 8)  # the CPU gets the original chunk size
    assert calls == [("cuda", 8), ("cuda", 4), ("cuda", 2), ("cpu", 8)]


def test_oom_without_cpu_fallback_raises(monkeypatch):
    monkeypatch.setattr(device_mod, "release_device_memory", lambda d: None)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_fallback(_fake_gpu_job(0, []), torch.device("cuda"), 4, cpu_fallback=False)


def test_cpu_runs_once_and_other_errors_propagate():
    calls: list = []
    assert run_with_oom_fallback(_fake_gpu_job(0, calls), "cpu", 5) == ("cpu", 5)
    assert calls == [("cpu", 5)]

    def broken(dev, chunk):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_with_oom_fallback(broken, torch.device("cpu"), 5)
    with pytest.raises(ConformalError, match="chunk_size"):
        run_with_oom_fallback(broken, "cpu", 0)
