"""The explorers' Qt-free model layer: λ̂ from a calibration's curves, caches, workspace signals, test-set coverage, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _widget_data import binary_store, calibrated, multiclass_store

from napari_conformal.api import calibrate, drive, evaluate
from napari_conformal.core.metrics.segmentation import coverage
from napari_conformal.errors import ConformalError, InsufficientCalibrationError
from napari_conformal.explore.evaluation import coverage_curve, iter_test_curves, iter_test_set, lambda_curve
from napari_conformal.explore.export import ExportItem, export_results, safe_filename
from napari_conformal.explore.session import LevelsPending, MethodSession, approximate_nbytes
from napari_conformal.explore.workspace import Workspace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return binary_store(tmp_path_factory.mktemp("explore") / "s.zarr", n=20)


@pytest.fixture(scope="module")
def mstore(tmp_path_factory):
    return multiclass_store(tmp_path_factory.mktemp("explore_m") / "m.zarr", n=16)


@pytest.mark.parametrize(("name", "nu"), [("crc", None), ("consema", None), ("aps", 0.8), ("lac", 0.7)])
def test_session_lambda_at_other_levels_equals_a_fresh_calibration(store, name, nu):
    result, cal, _ = calibrated(store, name, alpha=0.2, nu=nu)
    again = calibrate(store, name, alpha=0.2, nu=nu, cal_indices=cal)
    assert result.lambda_hat == again.lambda_hat and len(result.curves) == len(cal) == result.n
    session = MethodSession(result, store)
    for alpha in (0.15, 0.3, 0.45):
        for level in (nu,) if nu is None else (nu, 0.6):
            fresh = calibrate(store, name, alpha=alpha, nu=level, cal_indices=cal)  # Consema: τ = 1 − α too
            assert session.lambda_hat(alpha, level) == fresh.lambda_hat


def test_nu_is_rejected_for_a_method_without_nu(store):
    with pytest.raises(ConformalError, match="nu"):
        calibrated(store, "crc", alpha=0.2, nu=0.8)


def test_session_caches_prepared_images_within_a_byte_budget(store):
    result, _, test = calibrated(store, "crc", alpha=0.2)
    one = approximate_nbytes(result.method_object.prepare(store.image(0), store.samples(0)))
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
    assert np.array_equal(session.predict(a, lam, 0.2), result.method_object.predict(pa, lam))


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
    assert list(companion.cal_indices) == cal and companion.alpha == 0.3
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
        lam = calibrate(store, "crc", alpha=a, cal_indices=cal).lambda_hat
        brute = np.mean([coverage(session.predict(j, lam, a), store.label(j) == 1) for j in test])
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
        realised = drive(psession.iter_realised(ptest, 0.25, nu))
        for j, curve in pcurves.items():
            row = evaluate(mstore, record, test_indices=[j], n_samples=())["per_image"][0]
            assert psession.method.realised(curve, record.lambda_hat, alpha=0.25, nu=nu) == row["covered"]
            assert realised[j] == row["covered"]


def test_test_set_metrics_equal_the_api_evaluation(store):
    result, _, test = calibrated(store, "crc", alpha=0.2)
    aps, _, _ = calibrated(store, "aps", alpha=0.2, nu=0.8)
    sessions = [MethodSession(result, store), MethodSession(aps, store)]
    curves, metrics = drive(iter_test_set(sessions, test, alpha=0.3, nu=0.8, n_samples=(5, 10)))
    assert set(curves) == {"crc", "aps"} and set(curves["crc"]) == set(test)
    for name, session in zip(("crc", "aps"), sessions, strict=True):
        shown = session.calibration.at(0.3, 0.8 if session.uses_nu else None)
        reference = evaluate(store, shown, test_indices=test, n_samples=(5, 10))
        assert metrics[name].lambda_hat == shown.lambda_hat == session.lambda_hat(0.3, 0.8)
        assert json.dumps(metrics[name].mean, sort_keys=True) == json.dumps(reference["mean"], sort_keys=True)
        key = "coverage" if "coverage" in reference["mean"] else "covered"
        assert metrics[name].realised == pytest.approx(reference["mean"][key], abs=1e-12)


def test_export_writes_layers_and_calibrations_and_never_overwrites(tmp_path, store):
    from napari_conformal.core.calibration import Calibration
    from napari_conformal.io.readers import get_volume_reader

    assert safe_filename("RW-CP set (image 3)") == "RW-CP_set_image_3"
    assert safe_filename("///") == "layer"
    calib, _, _ = calibrated(store, "crc", alpha=0.2)
    prov = MethodSession(calib, store).provenance(alpha=0.3, nu=None, lambda_hat=0.5, index=1)
    data = np.arange(12, dtype=np.uint8).reshape(3, 4) % 2
    items = [
        ExportItem(data, "labels", {"name": "set", "scale": [1.0, 2.0], "metadata": {"napari_conformal": prov}}),
        ExportItem(data * 2, "labels", {"name": "set", "metadata": {"napari_conformal": prov}}),
    ]
    with pytest.raises(ConformalError, match="does not exist"):
        export_results(tmp_path / "missing", items)
    with pytest.raises(ConformalError, match="nothing to export"):
        export_results(tmp_path, [])
    written = export_results(tmp_path, items, {"crc": prov["calibration"]})
    assert [p.rsplit("/", 1)[-1] for p in written] == ["set.npz", "set_2.npz", "CALIB_crc.json"]
    layer = get_volume_reader(written[1])(written[1])[0]
    assert np.array_equal(layer[0], data * 2)
    read_prov = layer[1]["metadata"]["napari_conformal"]
    assert read_prov["alpha"] == 0.3 and read_prov["method"] == "crc"
    # the calibration a layer carries is the one shown (re-reduced at α = 0.3), loadable again
    saved = Calibration.load(tmp_path / "CALIB_crc.json")
    assert saved.alpha == 0.3 and saved.lambda_hat == calib.lambda_at(0.3)
    assert Calibration.from_dict(read_prov["calibration"]).to_json() == saved.to_json()
    before = (tmp_path / "set.npz").read_bytes()
    with pytest.raises(ConformalError, match="already exists"):
        export_results(tmp_path, items[:1])
    assert (tmp_path / "set.npz").read_bytes() == before


def test_session_extends_consign_curves_for_another_alpha(store):
    result, cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    session = MethodSession(result, store)
    assert session.lambda_hat(0.2, 0.8) == result.lambda_hat
    assert session.answers(0.2, 0.7) and not session.answers(0.3, 0.8)
    with pytest.raises(LevelsPending, match="search"):
        session.lambda_hat(0.3, 0.8)
    version = session.version
    extended = drive(session.iter_extend(0.3, 0.8))
    assert session.version == version + 1 and session.answers(0.3, 0.8) and session.calibration is extended
    assert extended.lambda_hat == result.lambda_hat  # the calibration's own λ̂ is unchanged
    lam = session.lambda_hat(0.3, 0.8)
    assert lam == calibrate(store, "consign", alpha=0.3, nu=0.8, k=3, cal_indices=cal).lambda_hat
    # the set at another α uses that α's box
    the_set = session.predict(test[0], lam, 0.3, 0.8)
    assert the_set.box.quantile_level == pytest.approx(0.15) and the_set.lambda_hat == lam
    # test coverage: the batched membership search equals the API's per-image evaluation
    realised = drive(session.iter_realised(test[:4], 0.3, 0.8))
    reference = evaluate(store, extended.at(0.3, 0.8), test_indices=test[:4], n_samples=())
    assert [realised[j] for j in test[:4]] == [row["covered"] for row in reference["per_image"]]
    cov = coverage_curve(session, {}, [0.2, 0.3], 0.8, test[:4])
    assert np.isnan(cov[0]) and cov[1] == pytest.approx(np.mean([realised[j] for j in test[:4]]))
