"""The Calibration object and its JSON schema (napari_conformal.core.calibration), for every method.

Every registered method is calibrated on a small real zarr store; its file must round-trip exactly,
answer other levels as a fresh calibration would, refuse every kind of damaged or edited file with a
CalibrationFileError saying what, be written atomically, and equal the calibration of the same
arrays held in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
from _method_data import (
    CAL,
    LEVELS,
    N_CAL,
    N_IMAGES,
    OPTIONS,
    OTHER,
    TEST,
    arrays,
    find_arrays,
    kind,
    make_stores,
)

from napari_conformal import api
from napari_conformal.core.calibration import FORMAT, SCHEMA_VERSION, Calibration
from napari_conformal.core.methods.base import available_methods
from napari_conformal.core.methods.consign import CurvesPending
from napari_conformal.errors import CalibrationFileError, ConformalError, InsufficientCalibrationError

METHODS = sorted(OPTIONS)


def test_every_registered_method_is_covered():
    assert sorted(available_methods()) == METHODS


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


def _calibrate(data, name, alpha=None, nu=None, **arrays_kw):
    a, v = LEVELS[name]
    return api.calibrate(
        data,
        name,
        alpha=a if alpha is None else alpha,
        nu=v if nu is None else nu,
        cal_indices=CAL,
        device="cpu",
        **arrays_kw,
        **OPTIONS[name],
    )


class _Calibrations(dict):
    """Each method calibrated on first use (one failing method fails its own tests only)."""

    def __init__(self, stores):
        super().__init__()
        self.stores = stores

    def __missing__(self, name):
        self[name] = calib = _calibrate(self.stores[kind(name)], name)
        return calib


@pytest.fixture(scope="module")
def calibrations(stores):
    return _Calibrations(stores)


def _redigest(doc: dict) -> dict:
    """The digest of the schema recomputed here (BLAKE2b-128 of the canonical JSON without it)."""
    body = {k: val for k, val in doc.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    doc["digest"] = hashlib.blake2b(canonical, digest_size=16).hexdigest()
    return doc


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", METHODS)
def test_json_round_trip_is_identical(calibrations, name, tmp_path):
    calib = calibrations[name]
    text = calib.to_json()
    doc = json.loads(text)
    assert doc["format"] == FORMAT and doc["schema_version"] == SCHEMA_VERSION == 2
    assert doc["method"] == name and doc["n"] == N_CAL and doc["cal_indices"] == list(CAL)
    assert doc["store"]["n_images"] == N_IMAGES and doc["store"]["path"].endswith(f"{kind(name)}.zarr")
    assert doc["guarantee"] == calib.guarantee()
    assert ("20 %" if name in ("crc", "rwcp") else "80 %") in doc["guarantee"]
    assert _redigest(copy.deepcopy(doc))["digest"] == doc["digest"]  # the documented digest
    again = Calibration.from_json(text)
    assert again.to_json() == text
    assert again.lambda_hat == calib.lambda_hat and again.lambda_at() == calib.lambda_hat
    assert (again.method, again.alpha, again.nu, again.cal_indices) == (name, calib.alpha, calib.nu, CAL)
    assert (
        again.params == calib.params and again.store == calib.store and again.provenance == calib.provenance
    )
    method = calib.method_object
    assert [method.encode_curve(c) for c in again.curves] == [method.encode_curve(c) for c in calib.curves]
    # through a file
    path = calib.save(tmp_path / "CALIB.json")
    assert path.read_text(encoding="utf-8") == text
    assert Calibration.load(path).to_json() == text


@pytest.mark.parametrize("name", METHODS)
def test_lambda_at_other_levels_equals_a_fresh_calibration(stores, calibrations, name):
    calib = calibrations[name]
    data = stores[kind(name)]
    alpha, nu = OTHER[name]
    fresh = _calibrate(data, name, alpha=alpha, nu=nu)
    if name == "consign":
        # another α is another box quantile level: the curves do not answer it before extending
        assert not calib.answers(alpha, nu)
        with pytest.raises(CurvesPending, match=r"q=0\.15"):
            calib.lambda_at(alpha, nu)
        extended = api.extend(calib, data, alpha=alpha, nu=nu)
        assert extended.answers(alpha, nu) and extended.lambda_hat == calib.lambda_hat
        assert extended.lambda_at() == calib.lambda_hat  # its own level is unchanged
        assert extended.lambda_at(alpha, nu) == fresh.lambda_hat
        reloaded = Calibration.from_json(extended.to_json())
        assert reloaded.answers(alpha, nu) and reloaded.lambda_at(alpha, nu) == fresh.lambda_hat
        assert api.extend(extended, data, alpha=alpha, nu=nu) is extended  # nothing left to search
        # a smaller ν at the same α is a re-read of the curves searched for the larger one
        lower = _calibrate(data, name, nu=0.6)
        assert calib.answers(LEVELS[name][0], 0.6) and calib.lambda_at(nu=0.6) == lower.lambda_hat
        return
    assert calib.answers(alpha, nu)
    assert calib.lambda_at(alpha, nu) == fresh.lambda_hat
    at = calib.at(alpha, nu)
    assert (at.alpha, at.nu, at.lambda_hat, at.curves) == (alpha, nu, fresh.lambda_hat, calib.curves)
    assert Calibration.from_json(calib.to_json()).lambda_at(alpha, nu) == fresh.lambda_hat
    if nu is not None:  # ν alone and α alone
        assert calib.lambda_at(nu=0.6) == _calibrate(data, name, nu=0.6).lambda_hat
        assert calib.lambda_at(alpha=0.3) == _calibrate(data, name, alpha=0.3).lambda_hat
    # n = 12 is too few for α = 0.05 (needs 19): refused, and answers() says so
    assert not calib.answers(0.05, nu)
    with pytest.raises(InsufficientCalibrationError, match=r"n = 12, .* = 19"):
        calib.lambda_at(0.05, nu)


# --------------------------------------------------------------------------- damaged and edited files


def _edit(doc: dict, key, value) -> dict:
    doc[key] = value
    return doc


def _another(doc: dict) -> float:
    """A λ̂ the method could produce that the curves do not give (a whole number for Consema)."""
    return doc["lambda_hat"] + 1 if doc["method"] == "consema" else doc["lambda_hat"] / 2 + 1e-3


def _bad_param(doc: dict) -> dict:
    """The first number/bool/choice option of the method set to a value it refuses."""
    from napari_conformal.core.methods.base import method_class

    for opt in method_class(doc["method"]).options:
        if opt.kind in ("int", "float", "bool", "choice"):
            doc["params"] = {**doc["params"], opt.name: "not-a-value"}
            return doc
    doc["params"] = {**doc["params"], "bogus": 1}  # a method without such options (LAC)
    return doc


def _first_array(doc: dict) -> dict:
    return next(iter(find_arrays(doc["curves"][0])))[1]


def _wrong_byte_count(doc: dict) -> dict:
    arr = _first_array(doc)
    arr["shape"] = [arr["shape"][0] + 1, *arr["shape"][1:]]
    return doc


def _bad_base64(doc: dict) -> dict:
    _first_array(doc)["data"] = "!!not base64!!"
    return doc


def _bad_dtype(doc: dict) -> dict:
    _first_array(doc)["dtype"] = "<c16"
    return doc


# (id, edit of the parsed document, recompute the digest, message regex)
EDITS = [
    ("digest left", lambda d: _edit(d, "alpha", 0.25), False, r"changed after it was written \(its digest does not match"),
    ("digest left, curve", _wrong_byte_count, False, r"digest does not match"),
    ("lambda NaN", lambda d: _edit(d, "lambda_hat", float("nan")), True, r"holds NaN or infinity"),
    ("lambda inf", lambda d: _edit(d, "lambda_hat", float("inf")), True, r"holds NaN or infinity"),
    ("alpha -inf", lambda d: _edit(d, "alpha", float("-inf")), True, r"holds NaN or infinity"),
    ("lambda -5", lambda d: _edit(d, "lambda_hat", -5.0), True, r"lambda_hat must be .*got -5"),
    ("lambda 1e300", lambda d: _edit(d, "lambda_hat", 1e300), True, r"lambda_hat must be .*got 1e\+300|the file says 1e\+300"),
    ("lambda other", lambda d: _edit(d, "lambda_hat", _another(d)), True, r"the curves give lambda_hat = .*, the file says"),
    ("lambda text", lambda d: _edit(d, "lambda_hat", "0.5"), True, r"lambda_hat must be a finite number, got '0.5'"),
    ("cal out of range", lambda d: _edit(d, "cal_indices", [*d["cal_indices"][:-1], 999]), True, r"cal_indices reach 999, but the data has 14 images"),
    ("cal duplicated", lambda d: _edit(d, "cal_indices", [0, *d["cal_indices"][:-1]]), True, r"cal_indices must hold n = 12 distinct images, it holds 12 \(11 distinct\)"),
    ("cal negative", lambda d: _edit(d, "cal_indices", [-1, *d["cal_indices"][1:]]), True, r"cal_indices must be a list of non-negative integers"),
    ("n negative", lambda d: _edit(d, "n", -1), True, r"n must be an integer >= 1, got -1"),
    ("n wrong", lambda d: _edit(d, "n", 11), True, r"cal_indices must hold n = 11 distinct images, it holds 12 \(12 distinct\)"),
    ("n_images 0", lambda d: _edit(d["store"], "n_images", 0) and d, True, r"store n_images must be an integer >= 1, got 0"),
    ("params unknown", lambda d: _edit(d, "params", {**d["params"], "bogus": 1}), True, r"params do not rebuild method '\w+': method '\w+' has no option 'bogus'"),
    ("params bad value", lambda d: _bad_param(d), True, r"params do not rebuild method '\w+': (\w+ option \w+ must be|method '\w+' has no option)"),
    ("params not object", lambda d: _edit(d, "params", [1]), True, r"params must be an object"),
    ("curve byte count", _wrong_byte_count, True, r"curve 0 \(image 0\): \w+: \d+ bytes do not hold shape"),
    ("curve base64", _bad_base64, True, r"curve 0 \(image 0\): \w+: data is not valid base64-encoded zlib"),
    ("curve dtype", _bad_dtype, True, r"curve 0 \(image 0\): \w+: unsupported dtype '<c16'"),
    ("curve missing", lambda d: _edit(d, "curves", d["curves"][:-1]), True, r"curves must be a list of n = 12 curves"),
    ("curve not object", lambda d: _edit(d, "curves", [[], *d["curves"][1:]]), True, r"curve 0 \(image 0\): "),
    ("alpha 1.5", lambda d: _edit(d, "alpha", 1.5), True, r"alpha must lie in \(0, 1\), got 1.5"),
    ("alpha bool", lambda d: _edit(d, "alpha", True), True, r"alpha must be a finite number, got True"),
    ("method unknown", lambda d: _edit(d, "method", "nope"), True, r"unknown method 'nope'"),
    ("k wrong", lambda d: _edit(d, "k", 99), True, r"k = 99 disagrees with the method's k"),
    ("version mismatch", lambda d: _edit(d, "version", "9.9"), True, r"version must be the provenance's package version"),
    ("provenance", lambda d: _edit(d["provenance"], "seed", "x") and d, True, r"provenance fields must be text \(seed: an integer or null\)"),
    ("store fields", lambda d: _edit(d, "store", {"path": None}), True, r"store must be \{path, identity, n_images\}"),
    ("missing key", lambda d: d.pop("guarantee") and d, True, r"the calibration lacks guarantee"),
    ("extra key", lambda d: _edit(d, "comment", "hi"), True, r"the calibration has unknown keys comment"),
    ("schema 3", lambda d: _edit(d, "schema_version", 3), True, r"calibration schema version 3 is not one this napari-conformal reads \(it reads versions 1, 2\)"),
    ("schema missing", lambda d: d.pop("schema_version") and d, True, r"calibration schema version None is not one"),
    ("format", lambda d: _edit(d, "format", "other-tool"), True, r"not a napari-conformal calibration \(format 'other-tool'\)"),
]  # fmt: skip


def _nu_edit(doc: dict) -> dict:
    doc["nu"] = 0.5 if doc["nu"] is None else None
    return doc


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(("edit", "redigest", "message"), [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_edited_file_is_refused_saying_what(calibrations, name, edit, redigest, message):
    doc = edit(json.loads(calibrations[name].to_json()))
    if redigest:
        doc = _redigest(doc)
    text = json.dumps(doc)  # NaN and Infinity as Python's json writes them
    with pytest.raises(CalibrationFileError, match=rf"^CALIB\.json: .*{message}") as info:
        Calibration.from_json(text, source="CALIB.json")
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("name", METHODS)
def test_nu_of_the_wrong_kind_is_refused(calibrations, name):
    doc = _redigest(_nu_edit(json.loads(calibrations[name].to_json())))
    want = "null" if calibrations[name].nu is None else "a number"
    with pytest.raises(
        CalibrationFileError, match=rf"nu must be (null|{want}) for method '{name}'|nu must be {want}"
    ):
        Calibration.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is not valid JSON \(truncated\?\)"),
        ("{not json", r"is not valid JSON \(truncated\?\)"),
        ("[1, 2]", r"not a calibration: the JSON is not an object"),
        (
            '{"lambda_hat": 0.5, "alpha": 0.1}',
            r"written by napari-conformal before versioned calibration files",
        ),
        ('{"lambda_hat": 1e999}', r"written by napari-conformal before versioned"),
    ],
)
def test_foreign_text_is_refused(text, message):
    with pytest.raises(CalibrationFileError, match=message):
        Calibration.from_json(text)


@pytest.mark.parametrize("name", ["crc", "consign"])
def test_truncated_file_is_refused(calibrations, name, tmp_path):
    text = calibrations[name].to_json()
    for cut in (1, len(text) // 3, len(text) // 2, len(text) - 3):
        path = tmp_path / "cut.json"
        path.write_text(text[:cut], encoding="utf-8")
        with pytest.raises(CalibrationFileError, match=rf"^{path}.*is not valid JSON \(truncated\?\)"):
            Calibration.load(path)


def test_load_missing_directory_and_undecodable(tmp_path):
    with pytest.raises(CalibrationFileError, match=r"calibration file not found: .*nothing\.json"):
        Calibration.load(tmp_path / "nothing.json")
    with pytest.raises(CalibrationFileError, match=r"is a directory, not a calibration file"):
        Calibration.load(tmp_path)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CalibrationFileError, match=r"cannot read calibration file .*bin\.json"):
        Calibration.load(tmp_path / "bin.json")


# --------------------------------------------------------------------------- atomic save


def _partials(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_save_goes_through_a_temporary_sibling(calibrations, tmp_path):
    """While the text is written the target still holds the old file and a hidden sibling the new."""
    calib = calibrations["crc"]
    target = tmp_path / "CALIB.json"
    target.write_text("old", encoding="utf-8")
    seen = {}

    @dataclasses.dataclass(frozen=True, eq=False)
    class Watching(Calibration):
        def to_json(self, indent: int | None = 1) -> str:  # runs inside the atomic write
            seen["partials"] = _partials(tmp_path)
            seen["target"] = target.read_text(encoding="utf-8")
            return super().to_json(indent)

    watching = Watching(**{f.name: getattr(calib, f.name) for f in dataclasses.fields(calib)})
    assert watching.save(target) == target
    assert seen["target"] == "old"
    assert len(seen["partials"]) == 1 and seen["partials"][0].startswith(".CALIB.json.partial-")
    assert target.read_text(encoding="utf-8") == calib.to_json()
    assert _partials(tmp_path) == []


def test_failed_save_leaves_no_partial_file(calibrations, tmp_path):
    calib = calibrations["crc"]
    target = tmp_path / "CALIB.json"
    broken = dataclasses.replace(calib, lambda_hat=float("nan"))  # fails inside the write: NaN is not JSON
    with pytest.raises(ValueError, match="not JSON compliant"):
        broken.save(target)
    assert not target.exists() and _partials(tmp_path) == []
    calib.save(target)
    before = target.read_bytes()
    with pytest.raises(ValueError):
        broken.save(target)
    assert target.read_bytes() == before and _partials(tmp_path) == []  # the old file is intact
    with pytest.raises(ConformalError, match="it is a directory"):
        calib.save(tmp_path)
    with pytest.raises(ConformalError, match="does not exist"):
        calib.save(tmp_path / "no" / "CALIB.json")
    assert _partials(tmp_path) == []


# --------------------------------------------------------------------------- store or arrays


@pytest.mark.parametrize("name", METHODS)
def test_store_and_in_memory_arrays_calibrate_alike(stores, calibrations, name):
    images, samples, labels = arrays(kind(name))
    from_store = calibrations[name]
    in_memory = _calibrate(None, name, images=images, samples=samples, labels=labels)
    assert in_memory.lambda_hat == from_store.lambda_hat
    method = from_store.method_object
    assert [method.encode_curve(c) for c in in_memory.curves] == [
        method.encode_curve(c) for c in from_store.curves
    ]
    assert in_memory.params == from_store.params and in_memory.cal_indices == from_store.cal_indices
    assert in_memory.store.path is None and in_memory.store.identity.startswith("arrays:")
    assert in_memory.store.n_images == from_store.store.n_images == N_IMAGES
    # the in-memory calibration round-trips too
    assert Calibration.from_json(in_memory.to_json()).to_json() == in_memory.to_json()


def test_evaluate_store_and_arrays_alike(stores, calibrations):
    images, samples, labels = arrays("binary")
    data = {"images": images, "samples": samples, "labels": labels}
    in_memory = _calibrate(data, "crc")
    a = api.evaluate(stores["binary"], calibrations["crc"])
    b = api.evaluate(data, in_memory)
    assert [r["index"] for r in a["per_image"]] == list(TEST)
    for ra, rb in zip(a["per_image"], b["per_image"], strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == rb[key] or (math.isnan(ra[key]) and math.isnan(rb[key]))
    with pytest.raises(ConformalError, match="not the data this calibration was made on"):
        api.evaluate(data, calibrations["crc"])
    np.testing.assert_equal(a["lambda_hat"], b["lambda_hat"])
