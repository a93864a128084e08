"""The explorers' Qt-free model layer: kept curves, live λ̂, caches, workspace signals, test-set curves, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _widget_data import binary_store, calibrated, multiclass_store

from napari_conformal.api import calibrate, drive, evaluate
from napari_conformal.core.metrics.segmentation import coverage
from napari_conformal.errors import ConformalError, InsufficientCalibrationError
from napari_conformal.explore.evaluation import (
    coverage_curve,
    iter_test_curves,
    iter_test_set,
    lambda_curve,
    realised_coverage,
)
from napari_conformal.explore.export import ExportItem, export_results, safe_filename
from napari_conformal.explore.session import MethodSession, approximate_nbytes
from napari_conformal.explore.workspace import Workspace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return binary_store(tmp_path_factory.mktemp("explore") / "s.zarr", n=20)


@pytest.fixture(scope="module")
def mstore(tmp_path_factory):
    return multiclass_store(tmp_path_factory.mktemp("explore_m") / "m.zarr", n=16)


@pytest.mark.parametrize(("name", "nu"), [("crc", None), ("consema", None), ("aps", 0.8), ("lac", 0.7)])
def test_kept_curves_reproduce_the_record_and_a_fresh_calibration_at_other_levels(store, name, nu):
    result, cal, _ = calibrated(store, name, alpha=0.2, nu=nu)
    assert result.record == calibrate(store, name, alpha=0.2, nu=nu, cal_indices=cal)
    assert len(result.curves) == len(cal) == result.n
    assert "lambda_hat" not in vars(result.method)  # the capture hook is gone
    session = MethodSession(result, store)
    for alpha in (0.15, 0.3, 0.45):
        for level in (nu,) if nu is None else (nu, 0.6):
            params = {"tau": 0.8} if name == "consema" else None  # Consema keeps τ of its calibration
            fresh = calibrate(store, name, alpha=alpha, nu=level, cal_indices=cal, params=params)
            assert session.lambda_hat(alpha, level) == fresh["lambda_hat"]


def test_nu_is_rejected_for_a_method_without_nu(store):
    with pytest.raises(ConformalError, match="nu"):
        calibrated(store, "crc", alpha=0.2, nu=0.8)


def test_session_caches_prepared_images_within_a_byte_budget(store):
    result, _, test = calibrated(store, "crc", alpha=0.2)
    one = approximate_nbytes(result.method.prepare(store.image(0), store.samples(0)))
    assert one == 2 * 8 * int(np.prod(store.spatial_shape))  # base and score maps, float64
    session = MethodSession(result, store, cache_bytes=2 * one)
    a, b, c = test[:3]
    pa = session.prepared(a)
    assert session.prepared(a) is pa and session.is_prepared(a)
    session.prepared(b)
    session.prepared(c)  # over budget: the least recently used (a) goes
    assert not session.is_prepared(a) and session.is_prepared(b) and session.is_prepared(c)
    assert session.cached_prepared(a) is None
    lam = session.lambda_hat(0.2)
    assert np.array_equal(session.predict(a, lam), result.method.predict(pa, lam))


def test_session_reports_too_small_alpha(store):
    result, _, _ = calibrated(store, "crc", alpha=0.2)
    with pytest.raises(InsufficientCalibrationError):
        MethodSession(result, store).lambda_hat(0.02)


def test_workspace_publish_signals_and_companions(store):
    ws = Workspace()
    seen: list[tuple] = []
    ws.reset.connect(lambda: seen.append(("reset", ws.index, ws.alpha)))
    ws.alpha_changed.connect(lambda a: seen.append(("alpha", a)))
    ws.image_changed.connect(lambda i: seen.append(("image", i)))
    ws.session_added.connect(lambda n: seen.append(("session", n)))
    result, cal, test = calibrated(store, "crc", alpha=0.25)
    ws.publish(store, result, test)
    # listeners see a consistent state: the index and α are already set when reset fires
    assert seen[0] == ("reset", test[0], 0.25)
    assert ("alpha", 0.25) in seen and ("image", test[0]) in seen and seen[-1] == ("session", "crc")
    assert ws.cal_indices == cal and ws.test_indices == test and ws.primary == "crc"

    seen.clear()
    ws.alpha = 0.25  # unchanged: no signal
    ws.alpha = 0.3
    assert seen == [("alpha", 0.3)]
    with pytest.raises(ConformalError, match="alpha"):
        ws.alpha = 1.5
    with pytest.raises(ConformalError, match="out of range"):
        ws.index = store.n_images

    companion = drive(ws.iter_companion("consema"))
    assert companion.record["cal_indices"] == cal and companion.record["alpha"] == 0.3
    ws.add_session(companion)
    assert set(ws.sessions) == {"crc", "consema"}

    # the same store and split again: companions survive; another split: everything is dropped
    again, _, _ = calibrated(store, "crc", alpha=0.2)
    ws.publish(store, again, test)
    assert set(ws.sessions) == {"crc", "consema"}
    other, _, _ = calibrated(store, "crc", alpha=0.2, fraction=0.6)
    seen.clear()
    ws.publish(store, other)
    assert seen[0][0] == "reset" and set(ws.sessions) == {"crc"}
    foreign, _, _ = calibrated(store, "lac", alpha=0.2, nu=0.8)
    with pytest.raises(ConformalError, match="calibration images"):
        ws.add_session(foreign)


def test_coverage_curves_equal_brute_force_for_crc_and_pixelwise(store, mstore):
    result, cal, test = calibrated(store, "crc", alpha=0.2)
    session = MethodSession(result, store)
    curves = drive(iter_test_curves(session, test))
    alphas = [0.1, 0.2, 0.35]
    got = coverage_curve(session, curves, alphas, None)
    for a, value in zip(alphas, got, strict=True):
        lam = calibrate(store, "crc", alpha=a, cal_indices=cal)["lambda_hat"]
        brute = np.mean([coverage(session.predict(j, lam), store.label(j) == 1) for j in test])
        assert value == pytest.approx(brute, abs=1e-12)
    assert np.array_equal(lambda_curve(session, [0.01, 0.2], None)[1:], [session.lambda_hat(0.2)])
    assert np.isnan(lambda_curve(session, [0.01], None)[0])

    presult, pcal, ptest = calibrated(mstore, "aps", alpha=0.2, nu=0.8)
    psession = MethodSession(presult, mstore)
    pcurves = drive(iter_test_curves(psession, ptest))
    for nu in (0.6, 0.8):
        record = calibrate(mstore, "aps", alpha=0.25, nu=nu, cal_indices=pcal)
        covered = evaluate(mstore, record, test_indices=ptest, n_samples=())["mean"]["covered"]
        assert coverage_curve(psession, pcurves, [0.25], nu)[0] == pytest.approx(covered, abs=1e-12)
        for j, curve in pcurves.items():
            row = evaluate(mstore, record, test_indices=[j], n_samples=())["per_image"][0]
            assert realised_coverage(psession.method, curve, record["lambda_hat"], nu) == row["covered"]


def test_test_set_metrics_equal_the_api_evaluation(store):
    result, _, test = calibrated(store, "crc", alpha=0.2)
    aps, _, _ = calibrated(store, "aps", alpha=0.2, nu=0.8)
    sessions = [MethodSession(result, store), MethodSession(aps, store)]
    curves, metrics = drive(iter_test_set(sessions, test, alpha=0.3, nu=0.8, n_samples=(5, 10)))
    assert set(curves) == {"crc", "aps"} and set(curves["crc"]) == set(test)
    for name, session in zip(("crc", "aps"), sessions, strict=True):
        record = dict(session.record, alpha=0.3, lambda_hat=session.lambda_hat(0.3, 0.8))
        reference = evaluate(store, record, test_indices=test, n_samples=(5, 10))
        assert metrics[name].lambda_hat == record["lambda_hat"]
        assert json.dumps(metrics[name].mean, sort_keys=True) == json.dumps(reference["mean"], sort_keys=True)


def test_export_writes_layers_and_records_and_never_overwrites(tmp_path):
    from napari_conformal.io.readers import get_volume_reader

    assert safe_filename("RW-CP set (image 3)") == "RW-CP_set_image_3"
    assert safe_filename("///") == "layer"
    prov = {"method": "crc", "alpha": 0.1, "lambda_hat": 0.5, "n": 10}
    data = np.arange(12, dtype=np.uint8).reshape(3, 4) % 2
    items = [
        ExportItem(
            data, "labels", {"name": "set", "scale": [1.0, 2.0], "metadata": {"napari_conformal": prov}}
        ),
        ExportItem(data * 2, "labels", {"name": "set", "metadata": {"napari_conformal": prov}}),
    ]
    with pytest.raises(ConformalError, match="does not exist"):
        export_results(tmp_path / "missing", items)
    with pytest.raises(ConformalError, match="nothing to export"):
        export_results(tmp_path, [])
    written = export_results(tmp_path, items, {"crc": {**prov, "cal_indices": [1, 2]}})
    assert [p.rsplit("/", 1)[-1] for p in written] == ["set.npz", "set_2.npz", "CALIB_crc.json"]
    layer = get_volume_reader(written[1])(written[1])[0]
    assert np.array_equal(layer[0], data * 2) and layer[1]["metadata"]["napari_conformal"] == prov
    assert json.loads((tmp_path / "CALIB_crc.json").read_text())["cal_indices"] == [1, 2]
    before = (tmp_path / "set.npz").read_bytes()
    with pytest.raises(ConformalError, match="already exists"):
        export_results(tmp_path, items[:1])
    assert (tmp_path / "set.npz").read_bytes() == before


def test_method_at_sets_the_levels_on_a_copy(store):
    result, _, test = calibrated(store, "aps", alpha=0.2, nu=0.8)
    session = MethodSession(result, store)
    at = session.method_at(0.3, 0.6)
    assert at is not result.method and (at.alpha, at.nu) == (0.3, 0.6)
    assert (result.method.alpha, result.method.nu) == (0.2, 0.8)
    assert session.method_at(0.2, 0.8) is result.method and session.method_at(0.3, 0.6) is at
    i = test[0]
    lam = session.lambda_hat(0.3, 0.6)
    record = dict(result.record, alpha=0.3, nu=0.6, lambda_hat=lam)
    reference = evaluate(store, record, test_indices=[i], n_samples=())["per_image"][0]
    assert at.evaluate(session.prepared(i), store.label(i), lam)["covered"] == reference["covered"]


def test_consign_session_reads_kept_curves_and_searches_other_levels(store):
    from napari_conformal.explore.consign_session import ConsignSession, CurvesPending
    from napari_conformal.explore.session import make_session

    result, cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    session = make_session(result, store)
    assert isinstance(session, ConsignSession)
    assert session.lambda_hat(0.2, 0.8) == result.record["lambda_hat"]
    assert not session.needs_search(0.2, 0.7)
    assert session.needs_search(0.3, 0.8)
    with pytest.raises(CurvesPending, match="coverage search"):
        session.lambda_hat(0.3, 0.8)
    version = session.version
    lam = drive(session.iter_search(0.3, 0.8))
    assert session.version == version + 1 and not session.needs_search(0.3, 0.8)
    assert lam == session.lambda_hat(0.3, 0.8)
    assert lam == calibrate(store, "consign", alpha=0.3, nu=0.8, k=3, cal_indices=cal)["lambda_hat"]
    # the set at another α uses that α's box
    the_set = session.consign_set(test[0], 0.3, lam)
    assert the_set.box.quantile_level == pytest.approx(0.15) and the_set.lambda_hat == lam
    # test curves answer coverage only at the calibrated box and up to the searched ν
    curves = drive(iter_test_curves(session, test[:4]))
    cov = coverage_curve(session, curves, [0.2, 0.3], 0.8)
    assert np.isfinite(cov[0]) and np.isnan(cov[1])
    assert np.isnan(coverage_curve(session, curves, [0.2], 0.95)[0])
