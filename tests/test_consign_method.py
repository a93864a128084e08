"""The registered CONSIGN method and the interactive calibrator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_conformal.api import drive
from napari_conformal.core.consign.calibrator import ConsignCalibrator, quantile_level_for
from napari_conformal.core.consign.curves import CurveSet
from napari_conformal.core.consign.members import ConsignSet
from napari_conformal.core.consign.search import CoverageSearch
from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.consign import ConsignCurve, CurvesPending
from napari_conformal.errors import ParameterError, StoreValidationError
from napari_conformal.testing.phantom import cardiac_phantom

SEARCH = {"ratio": 1.15, "lhs_points": 32, "lhs_per_block": 16}


@pytest.fixture(scope="module")
def data():
    images, samples, labels = cardiac_phantom(14, (32, 32), n_labels=3, n_samples=8, rank=3, size=2.0, seed=9)
    return images, samples, labels


@pytest.fixture(scope="module")
def method():
    return make_method("consign", k=3, lambda_max=3.0, search=SEARCH)


def _calibrate(method, prepared, labels, alpha=0.25, nu=0.75, previous=None):
    """The batch hook run to completion: (λ̂, curves), with its progress steps checked."""
    gen = method.iter_curves(prepared, labels, alpha=alpha, nu=nu, previous=previous)
    steps = []
    curves = drive(gen, progress=lambda done, total: steps.append((done, total)))
    assert all(0 <= d <= t for d, t in steps)
    assert len(curves) == len(prepared) and all(isinstance(c, ConsignCurve) for c in curves)
    return method.lambda_hat(curves, alpha=alpha, nu=nu), curves


@pytest.fixture(scope="module")
def prepared(data, method):
    images, samples, _ = data
    return [method.prepare(images[i], samples[i]) for i in range(len(images))]


def test_registered_and_params_are_json(method) -> None:
    assert method.name == "consign" and method.uses_nu and method.k == 3 and method.samples_members
    assert method.batch_curves
    params = json.loads(json.dumps(method.params()))
    assert params == {
        "k": 3,
        "quantile_level": None,
        "lambda_max": 3.0,
        "nu_max": None,
        "search": SEARCH,
        "memory_budget": 1024,
        "structure": None,
    }
    again = make_method("consign", **params)
    assert again.params() == method.params()
    with pytest.raises(ParameterError, match=r"unknown CONSIGN search options \['warp'\]"):
        make_method("consign", search={"warp": 9})
    with pytest.raises(ParameterError, match=r"method 'consign' has no option 'alpha'"):
        make_method("consign", alpha=0.1)
    with pytest.raises(ParameterError, match=r"nu must lie in \[0, 1\), got 1.5"):
        method.check_levels(0.1, 1.5)
    with pytest.raises(ParameterError, match=r"consign option quantile_level must be > 0 and <= 0.5, got 0"):
        make_method("consign", quantile_level=0.0)
    # the box quantile level: α/2 unless fixed
    assert method.q(0.25) == 0.125 and method.q(0.1) == 0.05
    assert make_method("consign", quantile_level=0.05).q(0.3) == 0.05


def test_batched_calibration_equals_per_image_curves(data, method, prepared) -> None:
    labels = data[2]
    lam, curves = _calibrate(method, prepared[:10], list(labels[:10]))
    per_image = [
        method.curve(p, y, alpha=0.25, nu=0.75) for p, y in zip(prepared[:10], labels[:10], strict=True)
    ]
    # same search, batched or not
    assert method.lambda_hat(per_image, alpha=0.25, nu=0.75) == pytest.approx(lam, rel=1e-12)
    assert method.lambda_hat(curves, alpha=0.25, nu=0.75) == lam
    assert all(c.levels[0].quantile_level == 0.125 for c in curves)
    # another α has another quantile level: the curves must be extended first
    assert method.answers(curves, alpha=0.25, nu=0.75) and method.answers(curves, alpha=0.25, nu=0.5)
    assert not method.answers(curves, alpha=0.3, nu=0.75)
    with pytest.raises(
        CurvesPending, match=r"alpha=0.3, nu=0.75 needs a coverage search .* at box quantile q=0.15"
    ):
        method.lambda_hat(per_image, alpha=0.3, nu=0.75)
    with pytest.raises(CurvesPending, match=r"q=0\.15"):
        method.realised(curves[0], lam, alpha=0.3, nu=0.75)
    lam3, extended = _calibrate(method, prepared[:10], list(labels[:10]), alpha=0.3, previous=curves)
    assert [c.quantile_level for c in extended[0].levels] == [0.125, 0.15]
    assert method.lambda_hat(extended, alpha=0.25, nu=0.75) == lam  # the old level is kept as it was
    fresh3, _ = _calibrate(method, prepared[:10], list(labels[:10]), alpha=0.3)
    assert lam3 == fresh3  # extending = a fresh calibration at that α
    # curves that already answer are returned as they are (no search)
    again = drive(method.iter_curves(prepared[:10], list(labels[:10]), alpha=0.25, nu=0.7, previous=extended))
    assert all(a is b for a, b in zip(again, extended, strict=True))
    with pytest.raises(ParameterError, match="CONSIGN curves depend on alpha"):
        method.curve(prepared[0], labels[0])


def test_evaluate_keys_and_membership(data, method, prepared) -> None:
    labels = data[2]
    lam, curves = _calibrate(method, prepared[:10], list(labels[:10]))
    for i in range(10, 12):
        out = method.evaluate(prepared[i], labels[i], lam, alpha=0.25, nu=0.75, n_samples=[10, 50], seed=3)
        assert out["covered"] in (0, 1)
        assert (out["best_accuracy"] > 0.75) == bool(out["covered"])
        for key in ("chao1", "sec", "correlation"):
            assert set(out[key]) == {"10", "50"}
        assert out["chao1"]["50"] >= out["chao1"]["10"] >= 1.0
        assert 0.0 <= out["uncertain_fraction"] <= 1.0 and 0.0 <= out["dice"] <= 1.0
        json.dumps(out)
    # calibration images: evaluate's membership agrees with the calibration curve
    for i in range(4):
        out = method.evaluate(prepared[i], labels[i], lam, alpha=0.25, nu=0.75)
        assert out["covered"] == int(curves[i].at(0.125).accuracy_at(lam) > 0.75)
        assert out["covered"] == method.realised(curves[i], lam, alpha=0.25, nu=0.75)
    the_set = method.predict(prepared[0], lam, alpha=0.25, nu=0.75)
    assert isinstance(the_set, ConsignSet) and the_set.lambda_hat == lam


def test_calibrator_caches_per_alpha_and_nu_changes_are_reads(data, prepared, monkeypatch) -> None:
    labels = data[2]
    from napari_conformal.core.consign.search import SearchConfig

    cal = ConsignCalibrator(
        prepared[:10], list(labels[:10]), nu_max=0.8, config=SearchConfig(lambda_max=3.0, **SEARCH)
    )
    lam = cal.lambda_hat(0.25, 0.8)
    runs = []
    original = CoverageSearch.run

    def counting(self, **kwargs):
        runs.append(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(CoverageSearch, "run", counting)
    values = [cal.lambda_hat(0.25, nu) for nu in (0.5, 0.6, 0.7, 0.8)]
    assert runs == []  # ν changes below nu_max never search
    assert values[-1] == lam and values == sorted(values)
    cal.lambda_hat(0.3, 0.7)  # a new α: one search of its quantile level
    assert len(runs) == 1
    cal.lambda_hat(0.3, 0.6)
    cal.lambda_hat(0.25, 0.7)
    assert len(runs) == 1  # both α cached
    assert quantile_level_for(0.3) == pytest.approx(0.15)
    assert isinstance(cal.curves(0.25), CurveSet)


def test_calibrator_extends_for_nu_above_nu_max(data, prepared) -> None:
    labels = data[2]
    from napari_conformal.core.consign.search import SearchConfig

    cal = ConsignCalibrator(
        prepared[:10], list(labels[:10]), nu_max=0.6, config=SearchConfig(lambda_max=3.0, **SEARCH)
    )
    low = cal.lambda_hat(0.25, 0.6)
    high = cal.lambda_hat(0.25, 0.8)  # resumes the search
    fresh = ConsignCalibrator(
        prepared[:10], list(labels[:10]), nu_max=0.8, config=SearchConfig(lambda_max=3.0, **SEARCH)
    )
    assert high == pytest.approx(fresh.lambda_hat(0.25, 0.8), rel=1e-9)  # same up to float64 rounding
    assert high >= low


def test_bad_inputs_through_the_method(data, method) -> None:
    images, samples, labels = data
    with pytest.raises(
        ParameterError, match=r"k=8 principal directions need at least 9 samples per image, .* T=8"
    ):
        make_method("consign", k=8).prepare(images[0], samples[0])
    with pytest.raises(ParameterError, match=r"k=8 principal directions need at least 9 samples"):
        make_method("consign", k=8).check_data(n_labels=3, n_samples=8, ndim=2)
    nan = samples[0].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(
        StoreValidationError, match=r"1 non-finite value\(s\) \(NaN\), first at \(0, 0, 0, 0\)"
    ):
        method.prepare(images[0], nan)
    basis = method.prepare(images[0], samples[0])
    with pytest.raises(StoreValidationError, match="outside"):
        method.curve(basis, labels[0] + 3, alpha=0.25, nu=0.75)
