"""``calibrate --per-class`` and ``evaluate`` of a per-class file through the command line.

A float16 store with four labels (structure 3 absent from some images). Good runs write what the API
computes; bad input ends with exit status 2 and one line ``napari-conformal: error: …`` naming the
problem, no output file (nor a temporary sibling) and the store unchanged, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _structure_data import dyadic_dataset

from napari_conformal.api import calibrate_per_class
from napari_conformal.cli import main
from napari_conformal.core.per_class import ClassCalibrations
from napari_conformal.io.store import create_store, open_store

NAMES = ["background", "wall", "cavity", "valve"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    images, samples, labels = dyadic_dataset(n=30)
    path = tmp_path_factory.mktemp("cli_pc") / "store.zarr"
    create_store(path, images, samples.astype(np.float16), labels, label_names=NAMES)
    return path


@pytest.fixture(scope="module")
def per_class_file(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_pc_out") / "per_class.json"
    argv = ["calibrate", str(store), "--method", "crc", "--alpha", "0.2", "--cal", "0-19", "--per-class"]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    return out


def _digest(root: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_per_class_file_is_what_the_api_computes(store, per_class_file, tmp_path, capsys) -> None:
    written = ClassCalibrations.load(per_class_file)
    expected = calibrate_per_class(open_store(store), "crc", alpha=0.2, cal_indices=range(20))
    assert written.classes == (1, 2, 3)
    for c in written.classes:
        assert written.lambda_hat(c) == expected.lambda_hat(c)
        assert written[c].name == NAMES[c]
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(store), "--calibration", str(per_class_file), "--out", str(metrics)]) == 0
    err = capsys.readouterr().err
    assert "structure 3: " in err and f"wrote {metrics}" in err
    report = json.loads(metrics.read_text())
    assert report["per_class_calibration"] is True and sorted(report["per_class"]) == ["1", "2", "3"]
    part = report["per_class"]["3"]
    assert part["name"] == "valve" and part["rule"] == "calibrated"
    assert part["test_indices"] == [i for i in range(20, 30) if (open_store(store).label(i) == 3).any()]
    assert 0.0 <= part["mean"]["coverage"] <= 1.0 and report["calibration"] == str(per_class_file.resolve())


def test_rare_full_and_classes(store, tmp_path, capsys) -> None:
    out = tmp_path / "full.json"
    argv = ["calibrate", str(store), "--method", "lac", "--alpha", "0.05", "--nu", "0.8", "--cal", "0-19"]
    assert main([*argv, "--per-class", "--classes", "2,3", "--rare", "full", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "structure 3 (valve): full set" in err and "structure 2 (cavity): lambda_hat" in err
    result = ClassCalibrations.load(out)
    assert result.classes == (2, 3) and result.full_set_classes == (3,)


def _bad_cases(store: Path, good: Path, tmp: Path) -> list[tuple[str, list[str], str]]:
    cal = ["calibrate", str(store), "--method", "crc", "--alpha", "0.2", "--cal", "0-19"]
    aps = ["calibrate", str(store), "--method", "aps", "--nu", "0.8", "--cal", "0-19"]
    damaged = tmp / "damaged.json"
    doc = json.loads(good.read_text())
    doc["classes"][0]["lambda_hat"] = 0.5
    damaged.write_text(json.dumps(doc))
    other = tmp / "other.zarr"
    images, samples, labels = dyadic_dataset(n=30, seed=8)
    create_store(other, images, samples.astype(np.float16), labels, label_names=NAMES)
    return [
        ("classes without per-class", [*cal, "--classes", "1"], "--classes needs --per-class"),
        ("rare without per-class", [*cal, "--rare", "full"], "--rare needs --per-class"),
        ("fg-class with per-class", [*cal, "--per-class", "--fg-class", "2"], "leave --fg-class out"),
        (
            "structure with per-class",
            [*aps, "--alpha", "0.2", "--per-class", "--structure", "1"],
            "leave --structure out",
        ),
        ("bad classes", [*cal, "--per-class", "--classes", "1,x"], "--classes expects labels"),
        (
            "class not in the data",
            [*cal, "--per-class", "--classes", "1,9"],
            "class=9 is not a class of this data",
        ),
        ("bad rare", [*cal, "--per-class", "--rare", "drop"], "invalid choice"),
        (
            "too rare",
            ["calibrate", str(store), "--method", "crc", "--alpha", "0.05", "--cal", "0-19", "--per-class"],
            "structure 3 (valve) is in 17 of the 20 calibration images",
        ),
        (
            "no full set",
            [*aps, "--alpha", "0.05", "--per-class", "--rare", "full"],
            "no full set to fall back on",
        ),
        (
            "damaged per-class file",
            ["evaluate", str(store), "--calibration", str(damaged)],
            "digest does not match",
        ),
        (
            "other store",
            ["evaluate", str(other), "--calibration", str(good)],
            "not the data this per-class calibration",
        ),
        ("test overlaps", ["evaluate", str(store), "--calibration", str(good), "--test", "3,25"], "overlap"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(store, per_class_file, tmp_path, capsys) -> None:
    before = _digest(store)
    for what, argv, needle in _bad_cases(store, per_class_file, tmp_path):
        out = tmp_path / f"{what.replace(' ', '_')}.json"
        status = main([*argv, "--out", str(out), "-q"])
        err = capsys.readouterr().err.strip()
        assert status == 2, (what, err)
        assert len(err.splitlines()) == 1 and err.startswith("napari-conformal: error:"), (what, err)
        assert needle in err, (what, err)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), what
    assert _digest(store) == before
