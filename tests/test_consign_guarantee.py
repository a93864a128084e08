"""Statistical test of CONSIGN's guarantee P(Y_test ∈ C*_λ̂) ≥ 1 − α, 2D and 3D.

Each repetition draws a FRESH synthetic dataset (independent seed) from
:func:`napari_conformal.testing.synthetic.lowrank_multiclass_dataset`, calibrates
λ̂(α, ν) on ``n_cal`` images with the batched search, and counts the test
images covered by the same search procedure at λ̂. CONSIGN's membership is a
search, so its scores λ_i can tie and the search only ever misses members:
the method is conservative, and only the lower tail of the exact
BetaBinomial band of split conformal prediction applies
(:func:`napari_conformal.testing.guarantees.check_split_coverage`,
``two_sided=False``). Each check has a false-alarm rate ≤ 1e-3 for a correct
implementation (4 checks: ≤ 4e-3 for the file).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_conformal.api import drive
from napari_conformal.core.consign.box import make_box
from napari_conformal.core.consign.search import CoverageSearch
from napari_conformal.core.methods.base import make_method
from napari_conformal.testing.guarantees import check_split_coverage
from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

SEARCH = {
    "ratio": 1.2,
    "lhs_points": 24,
    "lhs_per_block": 8,
    "starts": 3,
    "adam_steps": 3,
    "sweeps": 1,
    "descents": 1,
}
FALSE_ALARM = 1e-3


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _covered_counts(shape, n_classes, alpha, nu, reps, n_cal, n_test, seed0):
    method = make_method("consign", k=3, lambda_max=50.0, search=SEARCH)
    counts = []
    for rep in range(reps):
        images, samples, labels = lowrank_multiclass_dataset(
            n_cal + n_test, shape, n_classes=n_classes, n_samples=8, rank=3, amplitude=1.5, seed=seed0 + rep
        )
        prepared = [method.prepare(images[i], samples[i]) for i in range(n_cal + n_test)]
        curves = drive(method.iter_curves(prepared[:n_cal], list(labels[:n_cal]), alpha=alpha, nu=nu))
        lam = method.lambda_hat(curves, alpha=alpha, nu=nu)
        test = prepared[n_cal:]
        search = CoverageSearch(
            test, list(labels[n_cal:]), make_box(test, method.q(alpha)), method.config(nu)
        )
        search.run(until_lambda=lam, until_nu=nu)
        counts.append(sum(search.accuracy_at(j, lam) > nu for j in range(n_test)))
    return np.array(counts)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "n_classes", "alpha", "nu"),
    [((16, 16), 3, 0.2, 0.7), ((16, 16), 3, 0.1, 0.5), ((8, 8, 8), 2, 0.2, 0.8), ((8, 8, 8), 2, 0.1, 0.7)],
)
def test_coverage_at_least_one_minus_alpha(shape, n_classes, alpha, nu) -> None:
    reps, n_cal, n_test = 30, 19, 12
    counts = _covered_counts(
        shape, n_classes, alpha, nu, reps, n_cal, n_test, seed0=1000 * len(shape) + int(100 * nu)
    )
    check = check_split_coverage(counts, n_cal, n_test, alpha, false_alarm=FALSE_ALARM, two_sided=False)
    assert check.passed, check.message
