"""The paper's Algorithm 1+2 loop (benchmark baseline): stopping rule and per-image consistency."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conformal.core.consign.basis import compute_bases
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.quantiles import max_uncovered
from napari_conformal.testing.paper_loop import PaperLoopConfig, paper_loop_calibration, paper_membership
from napari_conformal.testing.phantom import cardiac_phantom

CHEAP = PaperLoopConfig(init_trials=3, lhs_factor=5, epochs=20, patience=5, step=0.02, lam0=0.02)


@pytest.fixture(scope="module")
def setup():
    _, samples, labels = cardiac_phantom(6, (20, 20), n_labels=3, n_samples=6, rank=3, size=2.0, seed=2)
    bases = compute_bases(samples, 3)
    return bases, labels, make_box(bases, 0.1)


@pytest.fixture(scope="module")
def result(setup):
    bases, labels, box = setup
    return paper_loop_calibration(bases, list(labels), box, 0.3, 0.7, CHEAP)


def test_loop_stops_at_the_first_lambda_meeting_the_crc_rule(setup, result) -> None:
    bases, _, _ = setup
    alpha = 0.3
    assert result.finished
    m = max_uncovered(len(bases), alpha)
    # λ̂ is a grid point, covers enough images, and the step before did not
    j = round((result.lambda_hat - CHEAP.lam0) / CHEAP.step)
    assert result.lambda_hat == CHEAP.lam0 + j * CHEAP.step
    assert np.sum(~(result.covered_at <= result.lambda_hat)) <= m
    if j > 0:
        assert np.sum(~(result.covered_at <= result.lambda_hat - CHEAP.step + 1e-12)) > m
    # images become covered at grid points, never after λ̂
    covered = np.isfinite(result.covered_at)
    assert np.all(result.covered_at[covered] <= result.lambda_hat)
    assert result.steps == j + 1 and np.all(result.seconds >= 0)


def test_membership_replays_the_loop(setup, result) -> None:
    bases, labels, box = setup
    for i in np.flatnonzero(np.isfinite(result.covered_at)):
        lam = result.covered_at[i]
        j = round((lam - CHEAP.lam0) / CHEAP.step)
        assert paper_membership(
            bases[i], labels[i], box[i], lam, 0.7, CHEAP, seed=CHEAP.seed + 1_000_003 * j + int(i)
        )


def test_trivial_nu_and_time_budget(setup) -> None:
    bases, labels, box = setup
    easy = paper_loop_calibration(bases, list(labels), box, 0.3, 0.0, CHEAP)
    assert easy.lambda_hat == CHEAP.lam0 and np.all(easy.covered_at == CHEAP.lam0)
    stopped = paper_loop_calibration(bases, list(labels), box, 0.3, 0.99, CHEAP, max_seconds=0.0)
    assert not stopped.finished and np.isnan(stopped.lambda_hat)
