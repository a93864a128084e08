"""Statistical test of the pixel-wise guarantee ``P(Y_test ∈ C^PW_{λ̂,ν}(X_test)) ≥ 1 − α``, and tests of it.

Design
------
Every repetition draws a **fresh, independent** synthetic dataset
(:func:`~napari_conformal.testing.synthetic.lowrank_multiclass_dataset` with a new seed) and runs
the harness :func:`~napari_conformal.testing.guarantees.run_repetitions`: each method calibrates
on ``N_CAL = 9`` images with the exact Algorithm 3 and is tested on ``N_TEST = 20`` more, at two
levels (α, ν) from the same curves.

Law under a correct implementation: λ̂ is the k-th smallest per-image threshold λ_i(ν)
(k = ⌈(n+1)(1−α)⌉: 9 of 9 at α = 0.1, 8 of 9 at α = 0.2). For tie-free λ_i the covered count of one
repetition is BetaBinomial(20, k, n+1−k) and the total over R repetitions its R-fold
convolution. λ_i ties at 0 when the model's segmentation alone beats ν, so the check is the
**two-sided sandwich band** of :func:`~napari_conformal.testing.guarantees.check_split_coverage`:
the lower tail on the covered count (λ_i ≤ λ̂), the upper tail on the count strictly below λ̂
(λ_i < λ̂); both are exact whatever the ties (:mod:`napari_conformal.core.bands`).

False-alarm rate: 6 method configurations × 2 levels = 12 checks per dimension, each at
``FALSE_ALARM = 1e-3/12``; a correct implementation fails a dimension's test with probability
≤ 1e-3 (union bound; exactly 12 × 3.3e-5 = 4.0e-4 at α = 0.1 and 12 × 4.5e-5 = 5.4e-4 at α = 0.2
for tie-free scores, from :func:`~napari_conformal.core.bands.splitcp_false_alarm`). The seeds are
fixed, so a checkout passes or fails deterministically; they were not chosen by looking at the
outcome (base seeds 10 000 and 20 000, as before this design).

Tests of the test: the same harness runs wrong reductions of one configuration per dimension
(``tests/_wrong_rules.py``) on the same draws; see :func:`test_wrong_rank_is_rejected`.
"""

from __future__ import annotations

import pytest
from _wrong_rules import shifted_rank

from napari_conformal.core.bands import splitcp_power, splitcp_rank
from napari_conformal.core.methods.base import make_method, method_class
from napari_conformal.testing.guarantees import run_repetitions
from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

N_CAL = 9
N_TEST = 20
REPS = 80
SETTINGS = ((0.1, 0.9), (0.2, 0.8))  # (α, ν)
CONFIGS = (
    ("aps", {}),
    ("aps", {"randomized": True, "seed": 5}),
    ("raps", {}),
    ("lac", {}),
    ("sacp", {}),
    ("sacp", {"variant": "liu"}),
)
FALSE_ALARM = 1e-3 / (len(CONFIGS) * len(SETTINGS))
# dimension → (spatial shape, labels, layout, samples T, base seed, the configuration given wrong rules)
DATA = {
    "2d": ((24, 24), 3, "nested", 6, 10_000, 0),
    "3d": ((16, 16, 16), 4, "adjacent", 4, 20_000, 4),
}


def _label(name: str, kwargs: dict) -> str:
    return name + "".join(f"[{k}={v}]" for k, v in kwargs.items())


@pytest.fixture(scope="module", params=sorted(DATA))
def outcome(request):
    """One harness run per dimension: the 6 configurations and the wrong ranks of one of them."""
    shape, n_labels, layout, t, seed0, wrong = DATA[request.param]

    def draw(r):
        _, samples, labels = lowrank_multiclass_dataset(
            N_CAL + N_TEST, shape, n_classes=n_labels, n_samples=t, rank=3, layout=layout, seed=seed0 + r
        )
        return None, samples, labels

    methods = {_label(*c): make_method(c[0], **c[1]) for c in CONFIGS}
    name, kwargs = CONFIGS[wrong]
    base = _label(name, kwargs)
    variants = {f"rank{s:+d}": (base, shifted_rank(method_class(name), s)(**kwargs)) for s in (-1, +1)}
    reps = run_repetitions(
        methods, draw, n_cal=N_CAL, n_test=N_TEST, reps=REPS, levels=SETTINGS, variants=variants, strict=True
    )
    return request.param, reps


@pytest.mark.slow
def test_pixelwise_coverage_guarantee(outcome):
    """Every configuration at every level passes the two-sided sandwich band (false-alarm ≤ 1e-3 per dimension)."""
    dim, reps = outcome
    failures = []
    for name, kwargs in CONFIGS:
        for alpha, nu in SETTINGS:
            check = reps.check(_label(name, kwargs), alpha, nu, false_alarm=FALSE_ALARM)
            if not check.passed:
                failures.append(
                    f"{_label(name, kwargs)} at (alpha, nu) = ({alpha}, {nu}), {dim}: {check.message}"
                )
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_wrong_rank_is_rejected(outcome):
    """The same band rejects λ̂ one order statistic too small (k − 1) or too large (k + 1).

    Power per check, exact for tie-free scores (:func:`~napari_conformal.core.bands.splitcp_power`,
    R = 80 repetitions of n = 9, 20 test images, band at 1e-3/12): rank k − 1 is rejected with
    probability 0.998 at α = 0.1 (rank 8 instead of 9) and 0.951 at α = 0.2 (7 instead of 8);
    rank k + 1 with 0.998 at α = 0.2 (9 instead of 8). All three are asserted, so this test
    passes with probability ≥ 1 − 0.002 − 0.049 − 0.002 = 0.947 (union bound). Ties at λ_i = 0 change
    the wrong ranks' counts only when the order statistic itself lands on the atom, which needs
    ≥ 7 of 9 images with λ_i = 0 (probability < 3e-8 at the observed atom mass ≤ 0.05); the
    design has the stated power. At α = 0.1, k + 1 = 10 > n is the trivial set (asserted too).
    """
    dim, reps = outcome
    base = _label(*CONFIGS[DATA[dim][-1]])
    for (alpha, nu), shift in (((0.1, 0.9), -1), ((0.2, 0.8), -1), ((0.2, 0.8), +1), ((0.1, 0.9), +1)):
        k = splitcp_rank(N_CAL, alpha)
        if 1 <= k + shift <= N_CAL:
            power = splitcp_power(N_CAL, N_TEST, alpha, REPS, k + shift, FALSE_ALARM)
            assert power > 0.9, power  # the design (exact)
        check = reps.check(f"rank{shift:+d}", alpha, nu, false_alarm=FALSE_ALARM)
        assert not check.passed, (
            f"{base} with rank k{shift:+d} at alpha={alpha} passed ({dim}): {check.message}"
        )
    assert reps.check(base, 0.2, 0.8, false_alarm=FALSE_ALARM).passed


def test_shifted_rank_zero_is_the_method():
    """The wrong-rule construction changes only the rank: with shift 0 it is the real reduction."""
    _, samples, labels = lowrank_multiclass_dataset(19, (16, 16), n_classes=3, n_samples=4, rank=3, seed=3)
    for name, kwargs in CONFIGS:
        real = make_method(name, **kwargs)
        same = shifted_rank(method_class(name), 0)(**kwargs)
        curves = [real.curve(real.prepare(None, samples[i]), labels[i]) for i in range(19)]
        for alpha, nu in SETTINGS:
            assert same.lambda_hat(curves, alpha=alpha, nu=nu) == real.lambda_hat(curves, alpha=alpha, nu=nu)
