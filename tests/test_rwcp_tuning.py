"""RW-CP's tuning of k, β and n_step on part of the calibration set, λ̂ on the rest (core/rwcp/tuning.py).

The statistical test at the end (slow) checks the guarantee after tuning inside an **exact**
two-sided band: with a single ground-truth pixel per image the FNR is a 0/1 loss, CRC is split
conformal prediction, and the number of covered test images of one repetition is
BetaBinomial(n_test, k, n + 1 − k) with n the size of the λ̂ part
(:func:`napari_conformal.testing.guarantees.check_split_coverage`). Its false-alarm rate for a
correct implementation is at most 1e-3 (fresh data in every repetition).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_conformal.api import calibrate, evaluate
from napari_conformal.core.calibration import Calibration, _digest
from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.core.quantiles import ThresholdRiskCurve, adjusted_alpha
from napari_conformal.core.rwcp.features import FeatureMap
from napari_conformal.core.rwcp.tuning import (
    DEFAULT_GRID,
    Candidate,
    check_grid,
    grid_candidates,
    iter_tune,
    tuning_split,
)
from napari_conformal.errors import CalibrationFileError, InsufficientCalibrationError, ParameterError
from napari_conformal.testing.guarantees import check_split_coverage
from napari_conformal.testing.synthetic import binary_blobs_dataset

GRID = {"k": [5, 10], "rw_beta": [20.0, 50.0], "n_step": [0, 1, 4]}
FALSE_ALARM = 1e-3


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    images, samples, labels = binary_blobs_dataset(40, (24, 24), n_samples=3, noise=2.0, seed=7)
    return {"images": images, "samples": samples, "labels": labels}


def _calibrate(data, **kw):
    kw.setdefault("tune", "dice")
    kw.setdefault("tune_grid", GRID)
    return calibrate(
        data,
        "rwcp",
        alpha=0.2,
        cal_indices=range(32),
        device="cpu",
        features="multiscale",
        grid_stride=2,
        **kw,
    )


# ------------------------------------------------------------------------------------ the split


def test_tuning_split_is_data_free_disjoint_and_sized():
    tune, rest = tuning_split(40, 0.25, 0.1, seed=0)
    assert len(tune) == 10 and len(rest) == 30 and sorted(tune + rest) == list(range(40))
    assert tuning_split(40, 0.25, 0.1, seed=0) == (tune, rest)  # a function of n and the seed only
    assert tuning_split(40, 0.25, 0.1, seed=1) != (tune, rest)
    assert tuning_split(40, 0.25, 0.2, seed=0) == (tune, rest)  # α only checks the size
    assert len(tuning_split(3, 0.2, 0.5)[0]) == 1  # at least one tuning image
    with pytest.raises(InsufficientCalibrationError, match="leaves 15 for lambda-hat, fewer than the 19"):
        tuning_split(20, 0.25, 0.05)
    with pytest.raises(ParameterError, match="tune_fraction"):
        tuning_split(20, 1.0, 0.1)


def test_grid_checks_and_candidates():
    full = check_grid(None)
    assert full == {k: tuple(sorted(v)) for k, v in DEFAULT_GRID.items()}
    assert check_grid({"k": [20, 10, 10]})["k"] == (10, 20)
    for bad in (
        {"k": [0]},
        {"n_step": [-1]},
        {"rw_beta": [float("nan")]},
        {"steps": [1]},
        {"k": []},
        {"k": [1.5]},
    ):
        with pytest.raises(ParameterError, match="tune_grid"):
            check_grid(bad)
    cands = grid_candidates(check_grid(GRID), Candidate(10, 20, 50.0))
    assert len(cands) == 1 + 2 * 2 * 2  # n_step = 0 once: k and β do not matter there
    assert cands[0] == Candidate(0, 5, 50.0) and cands == sorted(
        cands
    )  # the default k = 20 is not in the grid
    with pytest.raises(ParameterError, match="tune_grid"):
        RWCPMethod(tune="dice", tune_grid={"k": [0]})


# ------------------------------------------------------------------------------------ the record


def test_calibration_records_disjoint_tuning_and_lambda_images(data):
    calib = _calibrate(data)
    tune_pos, rest_pos = tuning_split(32, 0.25, 0.2, seed=0)
    assert list(calib.tune_indices) == tune_pos and list(calib.cal_indices) == rest_pos
    assert not set(calib.tune_indices) & set(calib.cal_indices)
    assert sorted(calib.images) == list(range(32)) and calib.n == 24
    rec = calib.tuning
    assert rec["n_tune"] == 8 and rec["n_lambda"] == 24 and rec["alpha"] == 0.2
    assert rec["target_fnr"] == pytest.approx(adjusted_alpha(24, 0.2))
    assert len(rec["candidates"]) == 9 and rec["grid"] == {k: list(v) for k, v in check_grid(GRID).items()}
    best = max(rec["candidates"], key=lambda c: c["dice"])
    assert best["dice"] == pytest.approx(max(c["dice"] for c in rec["candidates"]))
    assert {k: calib.params[k] for k in ("k", "rw_beta", "n_step")} == rec["chosen"]
    assert calib.params["tune"] == "dice"
    # the file says the same, and a reader can check the parts are disjoint
    again = Calibration.from_json(calib.to_json())
    assert again.tune_indices == calib.tune_indices and again.tuning == calib.tuning
    assert again.lambda_hat == calib.lambda_hat and again.params == calib.params
    doc = json.loads(calib.to_json())
    doc["tune_indices"] = [doc["cal_indices"][0], *doc["tune_indices"][1:]]
    doc["digest"] = _digest(doc)
    with pytest.raises(
        CalibrationFileError, match=r"share images .*lambda-hat would have seen tuning images"
    ):
        Calibration.from_dict(doc)
    doc = json.loads(calib.to_json())
    doc["tuning"] = None
    doc["digest"] = _digest(doc)
    with pytest.raises(CalibrationFileError, match="tuning must be recorded exactly when"):
        Calibration.from_dict(doc)
    # a version-1 file (before tuning) still reads
    v1 = json.loads(_calibrate(data, tune="off").to_json())
    v1["schema_version"] = 1
    del v1["tune_indices"], v1["tuning"]
    v1["digest"] = _digest(v1)
    old = Calibration.from_dict(v1)
    assert old.tune_indices == () and old.tuning is None


def test_tuning_images_are_not_test_images(data):
    calib = _calibrate(data)
    report = evaluate(data, calib)
    assert [r["index"] for r in report["per_image"]] == list(range(32, 40))
    with pytest.raises(ParameterError, match="overlap the calibration set"):
        evaluate(data, calib, test_indices=[calib.tune_indices[0]])


# ------------------------------------------------------------------------------------ λ̂ never sees them


def test_lambda_hat_never_sees_the_tuning_images(data):
    """With the choice fixed (a one-candidate grid), the tuning images' labels cannot move λ̂."""
    one = {"k": [5], "rw_beta": [20.0], "n_step": [4]}
    calib = _calibrate(data, tune_grid=one)
    rng = np.random.default_rng(0)
    altered = {k: v.copy() for k, v in data.items()}
    for i in calib.tune_indices:  # new labels: random masks, never empty
        lab = (rng.random(altered["labels"][i].shape) < 0.3).astype(altered["labels"].dtype)
        lab[0, 0] = 1
        altered["labels"][i] = lab
    moved = _calibrate(altered, tune_grid=one)
    assert moved.tune_indices == calib.tune_indices and moved.params == calib.params
    assert moved.lambda_hat == calib.lambda_hat
    assert (
        moved.tuning["candidates"][0]["dice"] != calib.tuning["candidates"][0]["dice"]
    )  # tuning did see them
    # λ̂ is exactly the untuned calibration of the other images with the chosen setting
    plain = calibrate(
        data,
        "rwcp",
        alpha=0.2,
        cal_indices=list(calib.cal_indices),
        device="cpu",
        features="multiscale",
        grid_stride=2,
        k=5,
        rw_beta=20.0,
        n_step=4,
    )
    assert plain.lambda_hat == calib.lambda_hat
    # while the labels of a λ̂ image do move it
    other = {k: v.copy() for k, v in data.items()}
    j = calib.cal_indices[0]
    other["labels"][j] = 1 - other["labels"][j] * 0  # all foreground
    assert _calibrate(other, tune_grid=one).lambda_hat != calib.lambda_hat


def test_tuning_scores_are_the_dice_of_the_plug_in_sets(data):
    """Each candidate's recorded Dice: RW-CP with that setting, thresholded where the tuning images' FNR meets α*."""
    calib = _calibrate(data)
    level = calib.tuning["target_fnr"]
    truths = [data["labels"][i] == 1 for i in calib.tune_indices]
    for row in calib.tuning["candidates"][::3]:
        m = RWCPMethod(
            device="cpu",
            features="multiscale",
            grid_stride=2,
            k=row["k"],
            rw_beta=row["rw_beta"],
            n_step=row["n_step"],
        )
        maps = [m.prepare(data["images"][i], data["samples"][i]).score for i in calib.tune_indices]
        lam = ThresholdRiskCurve.from_nonconformity(
            [1 - s[t] for s, t in zip(maps, truths, strict=True)]
        ).lambda_for_risk(level)
        dices = [
            2 * ((1 - s <= lam) & t).sum() / ((1 - s <= lam).sum() + t.sum())
            for s, t in zip(maps, truths, strict=True)
        ]
        assert row["lambda"] == pytest.approx(lam, abs=1e-5)
        assert row["dice"] == pytest.approx(float(np.mean(dices)), abs=2e-3)


def _tune(features, base, truth, n_lambda=40, alpha=0.1):
    gen = iter_tune(
        zip(features, base, truth, strict=True),
        len(base),
        alpha=alpha,
        n_lambda=n_lambda,
        grid={"k": [5, 10], "rw_beta": [50.0], "n_step": [0, 2, 8]},
        device="cpu",
    )
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_tuning_diffuses_where_it_helps_and_falls_back_where_it_hurts():
    """Features that show the truth: diffusion wins; features of pure noise: n_step = 0 (no diffusion)."""
    _, samples, labels = binary_blobs_dataset(12, (24, 24), n_samples=2, noise=3.0, seed=3)
    base = [s[:, 1].astype(np.float64).mean(axis=0) for s in samples]
    truth = [lab == 1 for lab in labels]
    showing = [FeatureMap(np.stack([t.astype(np.float32), 1 - t.astype(np.float32)]), t.shape) for t in truth]
    good = _tune(showing, base, truth)
    assert good.chosen.n_step > 0 and good.dice[good.candidates.index(good.chosen)] > good.dice[0] + 0.02
    rng = np.random.default_rng(1)
    noise = [FeatureMap(rng.normal(size=(8, 24, 24)).astype(np.float32), (24, 24)) for _ in truth]
    bad = _tune(noise, base, truth)
    assert bad.chosen.n_step == 0


def test_tune_options_reach_the_command_line():
    from napari_conformal.cli import build_parser

    args = build_parser().parse_args(
        [
            "calibrate",
            "store.zarr",
            "--method",
            "rwcp",
            "--alpha",
            "0.1",
            "--cal",
            "0-9",
            "--out",
            "c.json",
            "--tune",
            "dice",
            "--tune-fraction",
            "0.3",
            "--tune-grid",
            '{"k": [10]}',
            "--tune-seed",
            "2",
            "--input-scale",
            "2",
            "--feature-model",
            "demo:nuclei",
            "--feature-layer",
            "up.2",
        ]
    )
    given = {k[len("opt__") :]: v for k, v in vars(args).items() if k.startswith("opt__") and v is not None}
    assert given == {
        "tune": "dice",
        "tune_fraction": "0.3",
        "tune_grid": '{"k": [10]}',
        "tune_seed": "2",
        "input_scale": "2",
        "feature_model": "demo:nuclei",
        "feature_layer": "up.2",
    }
    m = RWCPMethod(**{k: v for k, v in given.items() if not k.startswith("feature") and k != "input_scale"})
    assert (m.tune, m.tune_fraction, m.tune_grid, m.tune_seed) == ("dice", 0.3, {"k": [10]}, 2)


# ------------------------------------------------------------------------------------ the guarantee


def _one_pixel_truth(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ground-truth pixel per image, drawn from its foreground: the FNR becomes a 0/1 loss."""
    out = np.zeros_like(labels)
    for i, lab in enumerate(labels):
        ys, xs = np.nonzero(lab)
        j = rng.integers(len(ys))
        out[i, ys[j], xs[j]] = 1
    return out


@pytest.mark.slow
def test_guarantee_after_tuning_inside_the_exact_band():
    """R fresh datasets; RW-CP tuned on 10 of 40 calibration images, λ̂ on the other 30; covered test counts."""
    alpha, n_cal, n_test, reps = 0.1, 40, 20, 40
    covered = []
    method = RWCPMethod(device="cpu", features="multiscale", grid_stride=2, tune="dice", tune_grid=GRID)
    for r in range(reps):
        images, samples, labels = binary_blobs_dataset(
            n_cal + n_test, (24, 24), n_samples=2, noise=2.0, seed=5000 + r
        )
        labels = _one_pixel_truth(labels, np.random.default_rng(9000 + r))
        calib = calibrate(
            method=method,
            alpha=alpha,
            images=images,
            samples=samples,
            labels=labels,
            cal_indices=range(n_cal),
        )
        assert calib.n == 30 and len(calib.tune_indices) == 10
        tuned = calib.method_object
        count = 0
        for i in range(n_cal, n_cal + n_test):
            pred = tuned.predict(tuned.prepare(images[i], samples[i]), calib.lambda_hat)
            count += int(pred[labels[i] == 1].all())
        covered.append(count)
    check = check_split_coverage(covered, n_cal=30, n_test=n_test, alpha=alpha, false_alarm=FALSE_ALARM)
    assert check.passed, check.message
