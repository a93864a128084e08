"""End-to-end tests of the ``napari-conformal`` command (docs/user_guide.md, docs/store.md) with standard CRC."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from napari_conformal.cli import main
from napari_conformal.io.store import create_store

N_IMAGES = 30


def _dataset(n: int = N_IMAGES, shape=(24, 24), seed: int = 0, labels: bool = True):
    """Binary disks with a noisy soft prediction: T = 4 samples that sum to 1 over L = 2."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    images, samples, gts = [], [], []
    for _ in range(n):
        cy, cx = rng.uniform(8, shape[0] - 8, size=2)
        r = rng.uniform(3, 6)
        dist = np.hypot(yy - cy, xx - cx) - r
        gt = (dist <= 0).astype(np.int64)
        fg = []
        for _t in range(4):
            logit = -dist / 1.5 + rng.normal(0, 1.0, size=shape) + rng.normal(-0.5, 0.5)
            fg.append(1 / (1 + np.exp(-logit)))
        fg = np.stack(fg).astype(np.float32)
        samples.append(np.stack([1 - fg, fg], axis=1))
        images.append((gt + rng.normal(0, 0.3, size=shape)).astype(np.float32))
        gts.append(gt)
    return np.stack(images), np.stack(samples), (np.stack(gts) if labels else None)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    images, samples, labels = _dataset()
    path = tmp_path / "data.zarr"
    create_store(path, images, samples, labels, spacing=(1.0, 0.5), label_names=["bg", "fg"], sampler="test")
    return path


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
        h.update(str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()


def _brute_force_lambda(store_path: Path, cal: list[int], alpha: float) -> float:
    """λ̂ by scanning every candidate threshold directly on the maps (no shared code with the core)."""
    _, samples, labels = _dataset()
    fg = samples[:, :, 1].astype(np.float64).mean(axis=1)
    r = 1.0 - fg  # nonconformity
    n = len(cal)
    candidates = np.unique(np.concatenate([r[i][labels[i] == 1] for i in cal]))
    best = None
    for lam in candidates[::-1]:  # decreasing λ: keep the smallest that still satisfies the bound
        fnr = [np.mean(r[i][labels[i] == 1] > lam) for i in cal]
        if n / (n + 1) * np.mean(fnr) + 1 / (n + 1) <= alpha + 1e-12:
            best = lam
        else:
            break
    assert best is not None
    return float(best)


def test_calibrate_and_evaluate_crc(store_path: Path, tmp_path: Path):
    calib_path, metrics_path = tmp_path / "calib.json", tmp_path / "metrics.json"
    assert (
        main(
            [
                "calibrate",
                str(store_path),
                "--method",
                "crc",
                "--alpha",
                "0.1",
                "--cal",
                "0-19",
                "--out",
                str(calib_path),
                "-q",
            ]
        )
        == 0
    )
    calib = json.loads(calib_path.read_text())
    for key in ("method", "alpha", "nu", "k", "lambda_hat", "n", "cal_indices", "version", "store"):
        assert key in calib
    assert calib["method"] == "crc" and calib["n"] == 20 and calib["cal_indices"] == list(range(20))
    assert calib["nu"] is None
    assert calib["lambda_hat"] == pytest.approx(
        _brute_force_lambda(store_path, list(range(20)), 0.1), abs=1e-12
    )

    assert (
        main(
            ["evaluate", str(store_path), "--calibration", str(calib_path), "--out", str(metrics_path), "-q"]
        )
        == 0
    )
    report = json.loads(metrics_path.read_text())
    assert [row["index"] for row in report["per_image"]] == list(range(20, N_IMAGES))
    _, samples, labels = _dataset()
    lam = calib["lambda_hat"]
    for row in report["per_image"]:
        i = row["index"]
        in_set = (1.0 - samples[i, :, 1].astype(np.float64).mean(axis=0)) <= lam
        gt = labels[i] == 1
        assert row["coverage"] == pytest.approx(in_set[gt].mean())
        pred = samples[i, :, 1].mean(axis=0) >= 0.5
        assert row["stretch"] == pytest.approx(in_set.sum() / pred.sum())
        assert row["dice"] == pytest.approx(2 * (in_set & gt).sum() / (in_set.sum() + gt.sum()))
        for key in ("assd", "hd95"):
            assert row[key] is None or row[key] >= 0
    mean_cov = np.mean([row["coverage"] for row in report["per_image"]])
    assert report["mean"]["coverage"] == pytest.approx(mean_cov)


def test_cal_fraction_split_is_seeded(store_path: Path, tmp_path: Path):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "calibrate",
                    str(store_path),
                    "--method",
                    "crc",
                    "--alpha",
                    "0.2",
                    "--cal-fraction",
                    "0.5",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "-q",
                ]
            )
            == 0
        )
        outs.append(json.loads(out.read_text())["cal_indices"])
    assert outs[0] == outs[1] != outs[2]
    assert len(outs[0]) == N_IMAGES // 2


def _fails(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-conformal: error:")
    assert needle in err, err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--cal", "0-4", "--alpha", "0.05"], "too few calibration images"),
        (["--cal", "0-19,x", "--alpha", "0.1"], "x"),
        (["--cal", "0-99", "--alpha", "0.1"], "99"),
        (["--cal", "0-19", "--alpha", "0.1", "--nu", "0.9"], "nu"),
        (["--cal", "0-19", "--alpha", "1.5"], "alpha"),
    ],
)
def test_calibrate_bad_input_exits_2_and_writes_nothing(store_path, tmp_path, capsys, extra, needle):
    before = _tree_digest(store_path)
    out = tmp_path / "calib.json"
    _fails(capsys, ["calibrate", str(store_path), "--method", "crc", *extra, "--out", str(out)], needle)
    assert not out.exists()
    assert _tree_digest(store_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]


def test_calibrate_missing_store_and_missing_labels(tmp_path, capsys):
    out = tmp_path / "c.json"
    _fails(
        capsys,
        [
            "calibrate",
            str(tmp_path / "nope.zarr"),
            "--method",
            "crc",
            "--alpha",
            "0.1",
            "--cal",
            "0-9",
            "--out",
            str(out),
        ],
        "not found",
    )
    images, samples, _ = _dataset(n=12)
    path = tmp_path / "nolabels.zarr"
    create_store(path, images, samples, None)
    _fails(
        capsys,
        ["calibrate", str(path), "--method", "crc", "--alpha", "0.2", "--cal", "0-9", "--out", str(out)],
        "labels",
    )
    assert not out.exists()


def test_calibrate_empty_ground_truth_names_the_image(tmp_path, capsys):
    images, samples, labels = _dataset(n=12)
    labels[3] = 0
    path = tmp_path / "empty.zarr"
    create_store(path, images, samples, labels)
    _fails(
        capsys,
        [
            "calibrate",
            str(path),
            "--method",
            "crc",
            "--alpha",
            "0.2",
            "--cal",
            "0-9",
            "--out",
            str(tmp_path / "c.json"),
        ],
        "image 3",
    )


def test_evaluate_rejects_other_store_and_bad_calibration(store_path, tmp_path, capsys):
    calib = tmp_path / "calib.json"
    assert (
        main(
            [
                "calibrate",
                str(store_path),
                "--method",
                "crc",
                "--alpha",
                "0.1",
                "--cal",
                "0-19",
                "--out",
                str(calib),
                "-q",
            ]
        )
        == 0
    )
    images, samples, labels = _dataset(seed=1)
    other = tmp_path / "other.zarr"
    create_store(other, images, samples, labels)
    out = tmp_path / "m.json"
    _fails(capsys, ["evaluate", str(other), "--calibration", str(calib), "--out", str(out)], "not the store")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _fails(
        capsys, ["evaluate", str(store_path), "--calibration", str(bad), "--out", str(out)], "not valid JSON"
    )
    _fails(
        capsys,
        ["evaluate", str(store_path), "--calibration", str(calib), "--test", "5-25", "--out", str(out)],
        "overlap",
    )
    assert not out.exists()


def test_usage_errors_are_one_line_status_2(capsys):
    assert main(["calibrate", "x.zarr", "--method", "nope", "--alpha", "0.1", "--cal", "0", "--out", "o.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


@pytest.mark.slow
def test_local_dask_scheduler_matches_serial(store_path, tmp_path):
    """The distributed map gives the same λ̂ and metrics as the serial run."""
    serial, dist = tmp_path / "s.json", tmp_path / "d.json"
    base = ["calibrate", str(store_path), "--method", "crc", "--alpha", "0.1", "--cal", "0-19", "-q"]
    assert main([*base, "--out", str(serial)]) == 0
    assert main([*base, "--scheduler", "local", "--out", str(dist)]) == 0
    assert json.loads(serial.read_text())["lambda_hat"] == json.loads(dist.read_text())["lambda_hat"]
    ms, md = tmp_path / "ms.json", tmp_path / "md.json"
    assert main(["evaluate", str(store_path), "--calibration", str(serial), "--out", str(ms), "-q"]) == 0
    assert (
        main(
            [
                "evaluate",
                str(store_path),
                "--calibration",
                str(serial),
                "--scheduler",
                "local",
                "--out",
                str(md),
                "-q",
            ]
        )
        == 0
    )
    assert json.loads(ms.read_text())["per_image"] == json.loads(md.read_text())["per_image"]


def test_make_demo_builds_a_valid_store(tmp_path, monkeypatch, capsys):
    """`make-demo` builds a small nuclei store from the packaged real data and prints its path."""
    from napari_conformal.io.store import open_store

    monkeypatch.setenv("NAPARI_CONFORMAL_CACHE", str(tmp_path / "cache"))
    assert main(["make-demo", "nuclei", "--n-images", "3", "-q"]) == 0
    path = Path(capsys.readouterr().out.strip())
    store = open_store(path)
    store.validate(full=True)
    assert store.n_images == 3 and store.has_labels and store.n_samples == 20
    _fails(capsys, ["make-demo", "nuclei", "--n-images", "1"], "--n-images")


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("aps", ["--nu", "0.9"]),
        ("raps", ["--nu", "0.9"]),
        ("lac", ["--nu", "0.9"]),
        ("sacp", ["--nu", "0.9"]),
        ("consema", []),
        ("rwcp", ["--features", "multiscale", "--k", "5", "--steps", "3"]),
    ],
)
def test_every_method_evaluates_from_its_calibration_file(store_path, tmp_path, method, extra):
    """The parameters a calibration records rebuild the same method: evaluate reads them back.

    Also checks that evaluating twice gives identical metrics (nothing random leaks between runs).
    """
    calib_path = tmp_path / "calib.json"
    argv = ["calibrate", str(store_path), "--method", method, "--alpha", "0.2", "--cal", "0-19"]
    assert main([*argv, *extra, "--out", str(calib_path), "-q"]) == 0
    calib = json.loads(calib_path.read_text())
    assert calib["method"] == method and calib["n"] == 20
    reports = []
    for name in ("m1.json", "m2.json"):
        out = tmp_path / name
        assert main(["evaluate", str(store_path), "--calibration", str(calib_path), "--out", str(out), "-q"]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0]["per_image"] == reports[1]["per_image"]
    rows = reports[0]["per_image"]
    assert [row["index"] for row in rows] == list(range(20, N_IMAGES))
    key = "covered" if method in ("aps", "raps", "lac", "sacp") else "coverage"
    values = [row[key] for row in rows if row.get(key) is not None]
    assert values, f"no {key!r} in the per-image metrics of {method}"
