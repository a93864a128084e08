"""Statistical test of the pixel-wise guarantee ``P(Y_test ∈ C^PW_{λ̂,ν}(X_test)) ≥ 1 − α``.

Design
------
Every repetition draws a **fresh, independent** synthetic dataset
(:func:`~napari_conformal.testing.synthetic.lowrank_multiclass_dataset` with a new
seed: smooth multi-class regions, T samples and a truth drawn from the same
rank-K logit model), calibrates each method on ``N_CAL = 39`` images with the
exact Algorithm 3 and counts how many of ``N_TEST = 40`` further images are
covered (``evaluate(...)["covered"]``, the relaxed ν-membership of eq. 13).

Law under a correct implementation: given the calibration set, the test
images are covered independently with probability ``F(λ̂)``, where F is the
law of the per-image threshold λ_i(ν) and λ̂ its k-th order statistic
(k = ⌈(n+1)(1−α)⌉: 36 of 39 at α = 0.1, 32 at α = 0.2). For tie-free λ_i the
covered count of one repetition is BetaBinomial(40, k, n+1−k) exactly; ties
(λ_i = 0 when the argmax map alone beats ν) only raise coverage. So the total
over R repetitions is stochastically at least the R-fold convolution, and
:func:`~napari_conformal.testing.guarantees.check_split_coverage` with
``two_sided=False`` gives the exact one-sided lower band.

False-alarm rate: each check uses ``FALSE_ALARM = 2e-4``. A run makes
6 method configurations × 2 (α, ν) settings × 2 dimensions = 24 checks, so a
correct implementation fails this file with probability ≤ 24 × 2e-4 < 0.5 %
(union bound; the seeds are fixed, so a given checkout either passes or fails
deterministically). Power: with R = 100 (2D) a λ̂ two order statistics too
low (rank k − 2) is caught with probability 1.0 at α = 0.1 and 0.97 at
α = 0.2; with R = 60 (3D), 0.96 and 0.74.
"""

from __future__ import annotations

import pytest

from napari_conformal.core.methods.base import make_method
from napari_conformal.testing.guarantees import check_split_coverage
from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

N_CAL = 39
N_TEST = 40
FALSE_ALARM = 2e-4
SETTINGS = ((0.1, 0.9), (0.2, 0.8))  # (α, ν)
CONFIGS = (
    ("aps", {}),
    ("aps", {"randomized": True, "seed": 5}),
    ("raps", {}),
    ("lac", {}),
    ("sacp", {}),
    ("sacp", {"variant": "liu"}),
)
# dimension → (spatial shape, labels, layout, samples T, repetitions R, base seed)
DATA = {
    "2d": ((24, 24), 3, "nested", 6, 100, 10_000),
    "3d": ((16, 16, 16), 4, "adjacent", 4, 60, 20_000),
}


def _label(name: str, kwargs: dict) -> str:
    return name + "".join(f"[{k}={v}]" for k, v in kwargs.items())


@pytest.mark.slow
@pytest.mark.parametrize("dim", sorted(DATA))
def test_pixelwise_coverage_guarantee(dim):
    shape, n_labels, layout, t, reps, seed0 = DATA[dim]
    counts = {(c, s): [] for c in range(len(CONFIGS)) for s in range(len(SETTINGS))}
    for rep in range(reps):
        _, samples, labels = lowrank_multiclass_dataset(
            N_CAL + N_TEST, shape, n_classes=n_labels, n_samples=t, rank=3, layout=layout, seed=seed0 + rep
        )
        for c, (name, kwargs) in enumerate(CONFIGS):
            method = make_method(name, **kwargs)  # one object answers every (α, ν)
            prepared = [method.prepare(None, samples[i]) for i in range(N_CAL + N_TEST)]
            curves = [method.curve(prepared[i], labels[i]) for i in range(N_CAL)]
            for s, (alpha, nu) in enumerate(SETTINGS):
                lam = method.lambda_hat(curves, alpha=alpha, nu=nu)
                covered = sum(
                    method.evaluate(prepared[i], labels[i], lam, alpha=alpha, nu=nu)["covered"]
                    for i in range(N_CAL, N_CAL + N_TEST)
                )
                counts[c, s].append(covered)
    failures = []
    for (c, s), per_rep in counts.items():
        alpha, nu = SETTINGS[s]
        check = check_split_coverage(per_rep, N_CAL, N_TEST, alpha, FALSE_ALARM, two_sided=False)
        if not check.passed:
            failures.append(f"{_label(*CONFIGS[c])} at (alpha, nu) = ({alpha}, {nu}), {dim}: {check.message}")
    assert not failures, "\n".join(failures)
