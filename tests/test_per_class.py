"""Per-structure calibration (api.calibrate_per_class / evaluate_per_class, core.per_class).

Each class's λ̂ is checked against an independent computation (a brute-force conformal rule for CRC
and APS, ``calibrate`` on the images that contain the class for CONSIGN); the count guard's refusal
and full-set fallback; validation before any image is prepared; evaluation on the test images that
contain the class; the JSON file's round trip and its refusal of damaged files.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from _structure_data import WITHOUT_3, dyadic_dataset

from napari_conformal.api import calibrate, calibrate_per_class, evaluate, evaluate_per_class
from napari_conformal.core.calibration import Calibration, _digest
from napari_conformal.core.per_class import ClassCalibrations, load_calibration_file
from napari_conformal.errors import (
    CalibrationFileError,
    ConformalError,
    InsufficientCalibrationError,
    ParameterError,
)

POOL = tuple(range(20))
SEARCH = {
    "ratio": 1.2,
    "lhs_points": 24,
    "lhs_per_block": 8,
    "starts": 3,
    "adam_steps": 3,
    "sweeps": 1,
    "descents": 1,
}
CONSIGN = {"k": 2, "lambda_max": 5.0, "search": SEARCH, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    images, samples, labels = dyadic_dataset(n=30)
    return {"images": images, "samples": samples, "labels": labels}


def _with(labels: np.ndarray, c: int, indices) -> list[int]:
    return [i for i in indices if (labels[i] == c).any()]


# -- λ̂ per class, computed independently -----------------------------------------------------------


def _brute_crc(data, c: int, images: list[int], alpha: float) -> float:
    """CRC's rule from its definition: the smallest λ among the candidates with n/(n+1)·R̂(λ) + 1/(n+1) ≤ α."""
    fnc = []
    for i in images:
        fg = data["samples"][i][:, c].astype(np.float64).mean(axis=0)
        fnc.append(1.0 - np.clip(fg, 0.0, 1.0)[data["labels"][i] == c])
    n = len(images)
    candidates = np.unique(np.concatenate(fnc))
    a = Fraction(str(alpha))
    for lam in candidates:  # ascending; the risk is non-increasing
        risk = sum(Fraction(int(np.count_nonzero(x > lam)), x.size) for x in fnc)
        if Fraction(n, n + 1) * risk / n + Fraction(1, n + 1) <= a:
            return float(lam)
    return 1.0


def _brute_aps(data, c: int, images: list[int], alpha: float, nu: float) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest λ_i, each λ_i the smallest true-label score whose recall of c passes ν."""
    from napari_conformal.core.methods.base import make_method

    aps = make_method("aps")
    lam_i = []
    for i in images:
        scores = aps.prepare(None, data["samples"][i]).scores
        own = np.sort(scores[c][data["labels"][i] == c])
        lam_i.append(next(t for t in own if np.count_nonzero(own <= t) / own.size > nu))
    n = len(images)
    k = math.ceil((n + 1) * (1 - Fraction(str(alpha))))
    return float(np.sort(lam_i)[k - 1])


def test_crc_per_class_is_the_conformal_rule_on_the_images_with_the_class(data) -> None:
    result = calibrate_per_class(method="crc", alpha=0.2, cal_indices=POOL, **data)
    assert result.classes == (1, 2, 3) and result.full_set_classes == ()
    for c in (1, 2, 3):
        images = _with(data["labels"], c, POOL)
        entry = result[c]
        assert entry.rule == "calibrated" and entry.n == len(images)
        assert entry.calibration.cal_indices == tuple(images)
        assert entry.calibration.params == {"fg_class": c}
        assert result.lambda_hat(c) == pytest.approx(_brute_crc(data, c, images, 0.2), abs=1e-12)
        alone = calibrate(method="crc", alpha=0.2, cal_indices=images, fg_class=c, **data)
        assert result.lambda_hat(c) == alone.lambda_hat
    assert 3 in result and WITHOUT_3[0] not in result[3].calibration.cal_indices


def test_aps_per_class_is_the_order_statistic_of_the_structure_recall(data) -> None:
    result = calibrate_per_class(method="aps", alpha=0.2, nu=0.8, cal_indices=POOL, **data)
    for c in (1, 2, 3):
        images = _with(data["labels"], c, POOL)
        assert result[c].calibration.cal_indices == tuple(images)
        assert result.lambda_hat(c) == _brute_aps(data, c, images, 0.2, 0.8)
        assert "structure" not in result.params and result[c].calibration.params["structure"] == c


def test_consign_per_class_equals_calibrate_with_the_structure(data) -> None:
    classes = (1, 3)
    result = calibrate_per_class(
        method="consign", alpha=0.25, nu=0.8, cal_indices=POOL, classes=classes, **data, **CONSIGN
    )
    assert result.classes == classes
    for c in classes:
        images = _with(data["labels"], c, POOL)
        alone = calibrate(
            method="consign", alpha=0.25, nu=0.8, cal_indices=images, structure=c, **data, **CONSIGN
        )
        assert result.lambda_hat(c) == alone.lambda_hat
        assert result[c].calibration.cal_indices == tuple(images)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("rwcp", {"features": "multiscale", "grid_stride": 2, "k": 5, "n_step": 3}),
        ("raps", {"nu": 0.8}),
        ("lac", {"nu": 0.8}),
        ("sacp", {"nu": 0.8, "variant": "liu"}),
        ("aps", {"nu": 0.8, "randomized": True, "seed": 2}),
    ],
)
def test_every_method_per_class_equals_calibrate_with_its_structure_option(data, method, extra) -> None:
    from napari_conformal.core.methods.base import method_class

    option = method_class(method).structure_option
    result = calibrate_per_class(method=method, alpha=0.25, cal_indices=POOL, classes=(2, 3), **data, **extra)
    for c in (2, 3):
        images = _with(data["labels"], c, POOL)
        alone = calibrate(method=method, alpha=0.25, cal_indices=images, **{option: c}, **data, **extra)
        assert result.lambda_hat(c) == alone.lambda_hat
        assert result[c].calibration.params == alone.params
        assert result.guarantee(c).endswith(alone.guarantee()[1:])


def test_consema_per_class_equals_calibrate_with_its_fg_class() -> None:
    from napari_conformal.testing.synthetic import lowrank_multiclass_dataset

    # class 1 is missing from one image and predicted in every other (Consema dilates the prediction)
    images, samples, labels = lowrank_multiclass_dataset(16, (16, 16), n_classes=3, n_samples=6, seed=2)
    data = {"images": images, "samples": samples, "labels": labels}
    result = calibrate_per_class(method="consema", alpha=0.25, cal_indices=range(16), classes=[1], **data)
    assert result[1].n == 15
    alone = calibrate(
        method="consema", alpha=0.25, cal_indices=_with(labels, 1, range(16)), fg_class=1, **data
    )
    assert result.lambda_hat(1) == alone.lambda_hat and alone.n == 15


# -- the count guard ------------------------------------------------------------------------------------


def test_a_rare_class_is_refused_naming_it_before_any_image_is_prepared(data) -> None:
    from napari_conformal.api import iter_calibrate_per_class

    stages: list[str] = []

    # at α = 0.05 a class needs 19 images; class 3 is in 17 of the first 20
    gen = iter_calibrate_per_class(method="crc", alpha=0.05, cal_indices=POOL, **data)
    with pytest.raises(InsufficientCalibrationError) as info:
        for step in gen:
            stages.append(step.stage)
    n3 = len(_with(data["labels"], 3, POOL))
    message = str(info.value)
    assert f"structure 3 (class 3) is in {n3} of the 20 calibration images" in message
    assert "ceil(1/alpha) - 1 = 19" in message and "rare='full'" in message
    assert "structure 1" not in message  # the classes that have enough images are not named
    assert set(stages) == {"labels"}  # only the labels were read: nothing was prepared


def test_a_rare_class_gets_the_full_set_when_asked(data) -> None:
    result = calibrate_per_class(method="crc", alpha=0.05, cal_indices=POOL, rare="full", **data)
    entry = result[3]
    assert entry.full_set and entry.calibration is None and entry.lambda_hat == 1.0
    assert entry.n == len(_with(data["labels"], 3, POOL)) < result.min_images == 19
    assert result.full_set_classes == (3,)
    assert "full set" in result.guarantee(3) and "contains structure 3" in result.guarantee(3)
    with pytest.raises(ConformalError, match="got the full set"):
        result.calibration(3)
    report = evaluate_per_class(data, result)
    part = report["per_class"]["3"]
    assert part["rule"] == "full_set" and part["n_test"] == len(_with(data["labels"], 3, range(20, 30)))
    assert all(row["coverage"] == 1.0 for row in part["per_image"])  # the whole image: nothing missed
    lac = calibrate_per_class(method="lac", alpha=0.05, nu=0.8, cal_indices=POOL, rare="full", **data)
    assert lac[3].full_set and lac[3].lambda_hat == 1.0
    rows = evaluate_per_class(data, lac, n_samples=())["per_class"]["3"]["per_image"]
    assert all(row["covered"] == 1 and row["accuracy_in"] == 1.0 for row in rows)


@pytest.mark.parametrize("method, extra", [("aps", {"nu": 0.8}), ("consign", {"nu": 0.8, **CONSIGN})])
def test_methods_without_a_full_set_refuse_it(data, method, extra) -> None:
    with pytest.raises(InsufficientCalibrationError, match=r"structure 3 .* no full set to fall back on"):
        calibrate_per_class(method=method, alpha=0.05, cal_indices=POOL, rare="full", **data, **extra)


def test_bad_requests_are_refused_before_any_image_is_read(data) -> None:
    from napari_conformal.api import iter_calibrate_per_class
    from napari_conformal.core.methods.base import make_method

    bad = [
        ({"method": "crc", "fg_class": 2}, ParameterError, "sets fg_class to each class itself"),
        ({"method": "aps", "nu": 0.8, "structure": 2}, ParameterError, "sets structure to each class itself"),
        ({"method": "crc", "classes": [1, 1]}, ParameterError, "duplicates"),
        ({"method": "crc", "classes": [4]}, ParameterError, "class=4 is not a class of this data"),
        ({"method": "crc", "classes": []}, ParameterError, "classes is empty"),
        ({"method": "crc", "rare": "drop"}, ParameterError, "rare must be one of refuse, full"),
        ({"method": "crc", "nu": 0.8}, ParameterError, "nu does not apply"),
        ({"method": "aps"}, ParameterError, "nu"),
        ({"method": "crc", "alpha": 1.5}, ParameterError, "alpha"),
        ({"method": make_method("crc")}, ParameterError, "needs the method's name"),
        ({"method": "crc", "cal_indices": [0, 99]}, ParameterError, "out of range"),
    ]
    for kwargs, kind, match in bad:
        kwargs = {"alpha": 0.2, "cal_indices": POOL, **kwargs}
        gen = iter_calibrate_per_class(**kwargs, **data)
        with pytest.raises(kind, match=match):
            next(gen)  # refused at the first step: no label was read


# -- evaluation ------------------------------------------------------------------------------------------


def test_each_class_is_evaluated_on_the_test_images_that_contain_it(data) -> None:
    result = calibrate_per_class(method="aps", alpha=0.2, nu=0.8, cal_indices=POOL, **data)
    report = evaluate_per_class(data, result, n_samples=(5,))
    assert report["classes"] == [1, 2, 3]
    for c in (1, 2, 3):
        part = report["per_class"][str(c)]
        test = _with(data["labels"], c, range(20, 30))
        assert part["test_indices"] == test and [r["index"] for r in part["per_image"]] == test
        alone = evaluate(data, result.calibration(c), test_indices=test, n_samples=(5,))
        assert part["per_image"] == alone["per_image"] and part["mean"] == alone["mean"]
        assert part["lambda_hat"] == result.lambda_hat(c) and part["guarantee"] == result.guarantee(c)
    with pytest.raises(ParameterError, match="overlap the calibration images"):
        evaluate_per_class(data, result, test_indices=[3, 25])
    other = {k: v.copy() for k, v in data.items()}
    other["images"][0] += 1.0
    with pytest.raises(ConformalError, match="not the data this per-class calibration was made on"):
        evaluate_per_class(other, result)


# -- the file ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    result = calibrate_per_class(method="crc", alpha=0.05, cal_indices=POOL, rare="full", **data)
    path = tmp_path_factory.mktemp("pc") / "per_class.json"
    result.save(path)
    return result, path


def test_round_trip(saved) -> None:
    result, path = saved
    again = ClassCalibrations.load(path)
    assert again.to_json() == result.to_json()
    assert again.classes == result.classes and again.full_set_classes == (3,)
    assert again.calibration(1).lambda_hat == result.lambda_hat(1)
    assert again.guarantee(2) == result.guarantee(2)
    assert isinstance(load_calibration_file(path), ClassCalibrations)
    single = path.with_name("single.json")
    result.calibration(1).save(single)
    assert isinstance(load_calibration_file(single), Calibration)
    assert not list(path.parent.glob("*.tmp*"))  # written through a temporary sibling, renamed


def _resigned(doc: dict) -> str:
    doc = json.loads(json.dumps(doc))
    doc["digest"] = _digest(doc)
    return json.dumps(doc)


def _corruptions(doc: dict) -> list[tuple[str, str, str]]:
    """(what, text, expected phrase): damaged files, most re-signed so that the consistency checks are reached."""
    out = []

    def edit(what, change, phrase, sign=True):
        d = json.loads(json.dumps(doc))
        change(d)
        out.append((what, _resigned(d) if sign else json.dumps(d), phrase))

    edit(
        "unsigned edit", lambda d: d["classes"][0].update(lambda_hat=0.5), "digest does not match", sign=False
    )
    edit("format", lambda d: d.update(format="something"), "not a napari-conformal per-class calibration")
    edit("schema", lambda d: d.update(schema_version=2), "schema version 2")
    edit("extra key", lambda d: d.update(extra=1), "unknown keys extra")
    edit("missing key", lambda d: d.pop("classes"), "lacks classes")
    edit("method", lambda d: d.update(method="nope"), "unknown method")
    edit(
        "structure option",
        lambda d: d.update(structure_option="structure"),
        "structure_option must be 'fg_class'",
    )
    edit("structure in params", lambda d: d["params"].update(fg_class=1), "without the structure option")
    edit("alpha", lambda d: d.update(alpha=1.5), "alpha must lie in")
    edit("min images", lambda d: d.update(min_images=3), "min_images must be")
    edit("pool", lambda d: d.update(cal_indices=[0, 0]), "distinct")
    edit(
        "pool beyond data", lambda d: d.update(cal_indices=[*d["cal_indices"], 999]), "cal_indices reach 999"
    )
    edit("label twice", lambda d: d["classes"].append(d["classes"][0]), "once each, by label")
    edit("wrong name", lambda d: d["classes"][0].update(name="liver"), "not the data's label name")
    edit("lambda", lambda d: d["classes"][0].update(lambda_hat=0.123), "disagrees with the file")
    edit("n", lambda d: d["classes"][0].update(n=d["classes"][0]["n"] - 1), "is too few to calibrate")
    edit("rule", lambda d: d["classes"][0].update(rule="maybe"), "rule must be")
    edit("full set with images", lambda d: d["classes"][2].update(n=19), "a full set needs n < 19")
    edit("full set lambda", lambda d: d["classes"][2].update(lambda_hat=0.9), "full-set lambda")
    edit(
        "class calibration", lambda d: d["classes"][0]["calibration"].update(lambda_hat=0.2), "structure 1: "
    )
    edit(
        "other fg_class",
        lambda d: d["classes"][1].update(calibration=d["classes"][0]["calibration"]),
        "disagrees",
    )
    out.append(("truncated", json.dumps(doc)[:-40], "not valid JSON"))
    out.append(("NaN", json.dumps(doc).replace('"alpha": 0.05', '"alpha": NaN'), "NaN"))
    return out


def test_damaged_files_are_refused_with_one_line(saved, tmp_path) -> None:
    result, _ = saved
    doc = result.to_dict()
    for what, text, phrase in _corruptions(doc):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(CalibrationFileError, match=phrase) as info:
            ClassCalibrations.load(path)
        assert "\n" not in str(info.value), what
        if what not in ("format", "truncated"):  # the dispatcher reads the others as per-class files too
            with pytest.raises(CalibrationFileError, match=phrase):
                load_calibration_file(path)
    with pytest.raises(CalibrationFileError, match="not found"):
        ClassCalibrations.load(tmp_path / "missing.json")
