"""Calibration bases spilled to disk beyond a memory budget: the same curves and λ̂, no files left."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_conformal.core.consign.basis import compute_bases
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.calibrator import iter_decided_curves
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig
from napari_conformal.core.consign.spill import BasisSpill, SpilledBasis, compact_labels
from napari_conformal.errors import Cancelled
from napari_conformal.testing.phantom import cardiac_phantom

FAST = {"lambda_max": 2.0, "ratio": 1.15, "lhs_points": 32, "lhs_per_block": 16}


@pytest.fixture(scope="module")
def data() -> tuple[list, np.ndarray]:
    _, samples, labels = cardiac_phantom(8, (32, 32), n_labels=3, n_samples=8, rank=3, size=2.0, seed=7)
    return compute_bases(samples, 4), labels.astype(np.int64)


def _drain(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _assert_same(a, b) -> None:
    for x, y in zip(a.curves, b.curves, strict=True):
        np.testing.assert_array_equal(x.lambdas, y.lambdas)
        np.testing.assert_array_equal(x.accuracies, y.accuracies)
        np.testing.assert_array_equal(x.coefficients, y.coefficients)
        assert (x.searched_to, x.exhausted) == (y.searched_to, y.exhausted)


def test_spilled_search_equals_in_memory_search(data, tmp_path) -> None:
    bases, labels = data
    config = SearchConfig(nu_max=0.9, pixel_budget=40_000, **FAST)  # small chunks: several batches a block
    memory = CoverageSearch(bases, list(labels), make_box(bases, 0.1), config)
    memory.run()
    with BasisSpill(budget_bytes=1, expected=len(bases), dir=tmp_path) as pool:  # 1 byte: everything spills
        for b, y in zip(bases, labels, strict=True):
            pool.add(b, y)
        assert pool.spilled and all(isinstance(b, SpilledBasis) for b in pool.prepared)
        assert all(y.dtype == np.uint8 for y in pool.labels)
        directory = pool.directory
        assert directory is not None and directory.parent == tmp_path and len(list(directory.iterdir())) == 16
        for b, s in zip(bases, pool.prepared, strict=True):  # float32 written, float32 read back
            loaded = s.load()
            assert loaded.mean.dtype == torch.float32 and torch.equal(loaded.mean, b.mean)
            assert torch.equal(loaded.directions, b.directions)
        spilled = CoverageSearch(pool.prepared, pool.labels, make_box(pool.prepared, 0.1), config)
        spilled.run()
        assert all(isinstance(st.basis, SpilledBasis) for st in spilled.states)
        assert all(st.truth.dtype == torch.uint8 and st.centre_label.dtype == torch.uint8 for st in spilled.states)
        _assert_same(memory.curves(), spilled.curves())
        for alpha, nu in ((0.2, 0.8), (0.25, 0.85), (0.3, 0.7)):
            assert memory.curves().lambda_hat(alpha, nu) == spilled.curves().lambda_hat(alpha, nu)
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


def test_decided_curves_and_lambda_hat_equal_when_spilled(data, tmp_path) -> None:
    bases, labels = data
    config = SearchConfig(**FAST)
    kwargs = {"alpha": 0.2, "nu": 0.85, "config": config}
    memory = _drain(iter_decided_curves(bases, list(labels), **kwargs))
    with BasisSpill(budget_bytes=3 * 4 * 5 * 3 * 32 * 32, dir=tmp_path) as pool:  # 3 bases fit: the 4th spills all
        for j, (b, y) in enumerate(zip(bases, labels, strict=True)):
            pool.add(b, y)
            assert pool.spilled == (j >= 3)
        spilled = _drain(iter_decided_curves(pool.prepared, pool.labels, **kwargs))
    _assert_same(memory, spilled)
    assert memory.lambda_hat(0.2, 0.85) == spilled.lambda_hat(0.2, 0.85)
    assert list(tmp_path.iterdir()) == []


def test_within_budget_nothing_is_written(data, tmp_path) -> None:
    bases, labels = data
    with BasisSpill(budget_bytes=2**30, expected=len(bases), dir=tmp_path) as pool:
        for b, y in zip(bases, labels, strict=True):
            pool.add(b, y)
        assert not pool.spilled and pool.directory is None
        assert all(a is b for a, b in zip(pool.prepared, bases, strict=True))
    assert list(tmp_path.iterdir()) == []


def test_files_removed_after_a_cancelled_or_failed_search(data, tmp_path) -> None:
    bases, labels = data
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled), BasisSpill(budget_bytes=0, dir=tmp_path) as pool:
        for b, y in zip(bases, labels, strict=True):
            pool.add(b, y)
        assert len(list(tmp_path.iterdir())) == 1
        CoverageSearch(pool.prepared, pool.labels, make_box(pool.prepared, 0.1), SearchConfig(**FAST)).run(
            should_stop=stop
        )
    assert list(tmp_path.iterdir()) == []
    bad = [y.copy() for y in labels]
    bad[2][0, 0] = 7  # outside 0..L-1: the search refuses it, naming the image, and the files go
    with pytest.raises(Exception, match="image 2"), BasisSpill(budget_bytes=0, dir=tmp_path) as pool:
        for b, y in zip(bases, bad, strict=True):
            pool.add(b, y)
        assert pool.labels[2].dtype == np.int64  # left as it is, so the error names the value
        CoverageSearch(pool.prepared, pool.labels, make_box(pool.prepared, 0.1), SearchConfig(**FAST))
    assert list(tmp_path.iterdir()) == []
    pool = BasisSpill(budget_bytes=0, dir=tmp_path)  # never closed: the finaliser removes the files
    pool.add(bases[0], labels[0])
    assert len(list(tmp_path.iterdir())) == 1
    del pool
    assert list(tmp_path.iterdir()) == []


def test_compact_labels() -> None:
    y = np.array([[0, 2], [1, 2]], dtype=np.int64)
    assert compact_labels(y, 3).dtype == np.uint8 and np.array_equal(compact_labels(y, 3), y)
    assert compact_labels(np.array([0, 300]), 400).dtype == np.uint16
    assert compact_labels(np.array([-1, 2]), 3).dtype == np.int64  # left for the search's own check
    assert compact_labels(np.array([0.0, 1.0]), 3).dtype == np.float64
    assert compact_labels(torch.tensor([0, 1, 2]), 3).dtype == torch.uint8


def test_calibrate_spills_beyond_the_memory_budget(monkeypatch, tmp_path) -> None:
    import tempfile

    import napari_conformal.api as api
    from napari_conformal.core.consign import spill

    images, samples, labels = cardiac_phantom(8, (32, 32), n_labels=3, n_samples=6, rank=3, size=2.0, seed=3)
    search = {"ratio": 1.15, "lhs_points": 32, "lhs_per_block": 16}
    kwargs = {"alpha": 0.3, "nu": 0.7, "images": images, "samples": samples, "labels": labels, "device": "cpu"}
    memory = api.calibrate(method="consign", k=3, lambda_max=4.0, search=search, **kwargs)
    seen: list[bool] = []
    add = spill.BasisSpill.add

    def spy(self, basis, label=None):
        add(self, basis, label)
        seen.append(self.spilled and self.directory is not None and self.directory.parent == tmp_path)

    monkeypatch.setattr(spill.BasisSpill, "add", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile's default directory
    spilled = api.calibrate(method="consign", k=3, lambda_max=4.0, search=search, memory_budget=0, **kwargs)
    assert seen == [True] * 8
    assert spilled.lambda_hat == memory.lambda_hat
    for a, b in zip(memory.curves, spilled.curves, strict=True):
        for x, y in zip(a.levels, b.levels, strict=True):
            np.testing.assert_array_equal(x.lambdas, y.lambdas)
            np.testing.assert_array_equal(x.accuracies, y.accuracies)
    assert list(tmp_path.iterdir()) == []
