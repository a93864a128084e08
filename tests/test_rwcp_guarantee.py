"""Statistical check of RW-CP's guarantee E[FNR] ≤ α on synthetic data (slow).

Each repetition draws a fresh synthetic dataset (new seed), calibrates RW-CP on
n = 20 images (EfficientNet-Lite0 features, k = 20, β = 50, 10 steps) and
measures the mean false-negative rate of the sets on fresh test images. CRC
guarantees that each repetition's realised risk has expectation ≤ α, so the
mean over R independent repetitions exceeds α + t with probability ≤ 1e-3,
where t is the Chernoff–Hoeffding tolerance of
:func:`napari_conformal.testing.guarantees.check_crc_risk`.

False-alarm rate of a correct implementation: ≤ 1e-3 per test, ≤ 2e-3 for
this file (two tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.testing.guarantees import check_crc_risk
from napari_conformal.testing.synthetic import binary_blobs_dataset

FALSE_ALARM = 1e-3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images: one torch thread is faster than two contending ones (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _realised_risks(shape, alpha, reps, n_cal, n_test, grid_stride, seed0):
    method = RWCPMethod(device="cpu", grid_stride=grid_stride)
    risks = []
    for r in range(reps):
        # fresh, independent data for every repetition
        images, samples, labels = binary_blobs_dataset(
            n_cal + n_test, shape, n_samples=4, noise=2.0, seed=seed0 + r
        )
        prepared = [method.prepare(images[i], samples[i]) for i in range(n_cal + n_test)]
        curves = [method.curve(prepared[i], labels[i]) for i in range(n_cal)]
        lam = method.lambda_hat(curves, alpha=alpha)
        fnr = [
            1.0 - method.predict(prepared[i], lam)[labels[i] == 1].mean()
            for i in range(n_cal, n_cal + n_test)
        ]
        risks.append(float(np.mean(fnr)))
    return np.asarray(risks)


@pytest.mark.slow
def test_rwcp_fnr_guarantee_2d():
    risks = _realised_risks((48, 48), alpha=0.1, reps=30, n_cal=20, n_test=10, grid_stride=2, seed0=1000)
    check = check_crc_risk(risks, 0.1, false_alarm=FALSE_ALARM)
    assert check.passed, check.message
    # the sets are not trivially the whole image: some test images keep misses
    assert risks.mean() > 0.0


@pytest.mark.slow
def test_rwcp_fnr_guarantee_3d():
    risks = _realised_risks((16, 16, 16), alpha=0.2, reps=15, n_cal=20, n_test=10, grid_stride=2, seed0=2000)
    check = check_crc_risk(risks, 0.2, false_alarm=FALSE_ALARM)
    assert check.passed, check.message
    assert risks.mean() > 0.0
