"""Bad input through the command line: exit status 2, one line, nothing written, the store untouched.

One matrix over damaged stores, bad arguments, unusable output paths and damaged calibration files.
Each case runs ``napari-conformal`` in this process (``cli.main``) on a fresh copy of a small float16
store and checks:

* exit status 2 and exactly one line on stderr, ``napari-conformal: error: …``, containing a phrase that
  names the problem;
* no output file (nor a temporary sibling of it) was left behind;
* the store's files are byte for byte what they were (a digest of every file under it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_conformal.cli import main
from napari_conformal.io.store import create_store

N_IMAGES = 24


def _dataset(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (16, 16)
    grids = np.indices(shape)
    images, samples, labels = [], [], []
    for _ in range(N_IMAGES):
        centre = rng.uniform(5, 11, size=2)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))) - rng.uniform(3, 4)
        fg = 1 / (1 + np.exp(dist[None] / 1.5 + rng.normal(0, 0.7, size=(6, *shape))))
        samples.append(np.stack([1 - fg, fg], axis=1))
        labels.append((dist <= 0).astype(np.uint8))
        images.append(rng.normal(size=shape).astype(np.float32))
    return np.stack(images), np.stack(samples).astype(np.float16), np.stack(labels)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "store.zarr"
    create_store(path, *_dataset())
    return path


@pytest.fixture(scope="module")
def good_calibration(pristine, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "calib.json"
    assert (
        main(
            [
                "calibrate",
                str(pristine),
                "--method",
                "crc",
                "--alpha",
                "0.2",
                "--cal",
                "0-11",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    return out


def _digest(root: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _chunk(store: Path, array: str, i: int) -> Path:
    arr = zarr.open_array(str(store / array), mode="r")
    return store / array / arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))


def _rewrite(store: Path, array: str, i: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    arr = zarr.open_array(str(store / array), mode="r+")
    arr[i] = fn(np.asarray(arr[i]))


# -- damage to a store (applied to a fresh copy) -------------------------------------------------------


def _delete_samples_chunk(s: Path) -> None:
    _chunk(s, "samples", 3).unlink()


def _garbage_samples_chunk(s: Path) -> None:
    _chunk(s, "samples", 3).write_bytes(os.urandom(300))


def _truncated_samples_chunk(s: Path) -> None:
    c = _chunk(s, "samples", 3)
    c.write_bytes(c.read_bytes()[: max(1, c.stat().st_size // 3)])


def _garbage_array_metadata(s: Path) -> None:
    (s / "samples" / "zarr.json").write_text("{not json")


def _half_samples(s: Path) -> None:
    _rewrite(s, "samples", 3, lambda x: (x.astype(np.float32) * 0.5).astype(x.dtype))


def _zero_samples(s: Path) -> None:
    _rewrite(s, "samples", 3, np.zeros_like)


def _nan_samples(s: Path) -> None:
    def put(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[0, 0, 2, 2] = np.nan
        return x

    _rewrite(s, "samples", 3, put)


def _label_out_of_range(s: Path) -> None:
    _rewrite(s, "labels", 3, lambda y: np.full_like(y, 7))


def _delete_label_chunk(s: Path) -> None:
    _chunk(s, "labels", 3).unlink()


STORE_DAMAGE = {
    "deleted samples chunk": (_delete_samples_chunk, "chunk"),
    "garbage samples chunk": (_garbage_samples_chunk, "cannot decode"),
    "truncated samples chunk": (_truncated_samples_chunk, "cannot decode"),
    "garbage array metadata": (_garbage_array_metadata, "samples"),
    "samples scaled by 0.5": (_half_samples, "do not sum to 1"),
    "all-zero samples": (_zero_samples, "samples, image 3"),  # zarr drops a chunk of fill values: "missing"
    "NaN sample": (_nan_samples, "non-finite"),
    "label out of range": (_label_out_of_range, "outside 0..1"),
    "deleted labels chunk": (_delete_label_chunk, "labels, image 3: chunk"),
}


def _check(capsys, argv: list[str], needle: str, store: Path | None, outs: list[Path]) -> None:
    before = _digest(store) if store is not None and store.exists() else None
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-conformal: error:"), err
    assert needle.lower() in err.lower(), err
    for out in outs:
        if out.is_symlink() or str(out).startswith("/dev/") or str(out).startswith("/proc/"):
            continue
        if out.is_dir():
            continue
        assert not out.exists(), f"{out} was written"
        assert not [p for p in out.parent.glob(f".{out.name}.partial-*")], "a temporary file was left"
    if before is not None:
        assert _digest(store) == before, "the store changed"


@pytest.mark.parametrize("case", sorted(STORE_DAMAGE))
@pytest.mark.parametrize("method", ["crc", "consign"])
def test_damaged_store_is_refused_naming_the_problem(case, method, pristine, tmp_path, capsys):
    damage, needle = STORE_DAMAGE[case]
    store = tmp_path / "copy.zarr"
    shutil.copytree(pristine, store)
    damage(store)
    out = tmp_path / "calib.json"
    extra = ["--nu", "0.6", "--k", "3"] if method == "consign" else []
    argv = [
        "calibrate",
        str(store),
        "--method",
        method,
        "--alpha",
        "0.2",
        "--cal",
        "0-11",
        *extra,
        "--out",
        str(out),
        "-q",
    ]
    _check(capsys, argv, needle, store, [out])


@pytest.mark.parametrize("case", ["deleted samples chunk", "samples scaled by 0.5", "label out of range"])
def test_damaged_store_is_refused_by_evaluate(case, pristine, good_calibration, tmp_path, capsys):
    damage, needle = STORE_DAMAGE[case]
    store = tmp_path / "copy.zarr"
    shutil.copytree(pristine, store)
    damage(store)
    out = tmp_path / "metrics.json"
    argv = [
        "evaluate",
        str(store),
        "--calibration",
        str(good_calibration),
        "--other-data",
        "--out",
        str(out),
        "-q",
    ]
    _check(capsys, argv, needle, store, [out])


ARGUMENTS = {
    "alpha above 1": (["--method", "crc", "--alpha", "1.5", "--cal", "0-11"], "expected a number in (0, 1)"),
    "alpha too small for n": (
        ["--method", "crc", "--alpha", "0.005", "--cal", "0-11"],
        "too few calibration images",
    ),
    "index out of range": (["--method", "crc", "--alpha", "0.2", "--cal", "0-40"], "out of range"),
    "K of at least T": (
        ["--method", "consign", "--alpha", "0.2", "--nu", "0.6", "--k", "6", "--cal", "0-11"],
        "k=6",
    ),
    "nu for crc": (
        ["--method", "crc", "--alpha", "0.2", "--nu", "0.8", "--cal", "0-11"],
        "nu does not apply",
    ),
    "tau for crc": (
        ["--method", "crc", "--alpha", "0.2", "--tau", "0.8", "--cal", "0-11"],
        "--tau does not apply",
    ),
    "unknown -o option": (
        ["--method", "crc", "--alpha", "0.2", "-o", "bogus=1", "--cal", "0-11"],
        "no option 'bogus'",
    ),
    "unknown extractor": (
        ["--method", "rwcp", "--alpha", "0.2", "--features", "nope", "--cal", "0-11"],
        "must be one of",
    ),
    "bad option type": (
        ["--method", "rwcp", "--alpha", "0.2", "--k", "three", "--cal", "0-11"],
        "must be an integer",
    ),
    "nu missing": (["--method", "aps", "--alpha", "0.2", "--cal", "0-11"], "nu"),
    "fg class not a label": (
        ["--method", "crc", "--alpha", "0.2", "--fg-class", "5", "--cal", "0-11"],
        "fg_class=5",
    ),
}


@pytest.mark.parametrize("case", sorted(ARGUMENTS))
def test_bad_arguments_are_refused(case, pristine, tmp_path, capsys):
    args, needle = ARGUMENTS[case]
    out = tmp_path / "calib.json"
    _check(capsys, ["calibrate", str(pristine), *args, "--out", str(out), "-q"], needle, pristine, [out])


def test_missing_and_foreign_store_paths(tmp_path, capsys):
    out = tmp_path / "c.json"
    _check(
        capsys,
        [
            "calibrate",
            str(tmp_path / "nope.zarr"),
            "--method",
            "crc",
            "--alpha",
            "0.2",
            "--cal",
            "0",
            "--out",
            str(out),
        ],
        "not found",
        None,
        [out],
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    _check(
        capsys,
        ["calibrate", str(plain), "--method", "crc", "--alpha", "0.2", "--cal", "0", "--out", str(out)],
        "not a dataset store",
        plain,
        [out],
    )


def test_unusable_output_paths_are_refused_before_any_work(pristine, good_calibration, tmp_path, capsys):
    base = ["calibrate", str(pristine), "--method", "crc", "--alpha", "0.2", "--cal", "0-11", "-q", "--out"]
    folder = tmp_path / "a-folder"
    folder.mkdir()
    _check(capsys, [*base, str(folder)], "is a directory", pristine, [folder])
    target = tmp_path / "real.json"
    target.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    _check(capsys, [*base, str(link)], "symbolic link", pristine, [link])
    assert target.read_text() == "keep me"
    _check(capsys, [*base, str(tmp_path / "missing" / "c.json")], "does not exist", pristine, [])
    _check(capsys, [*base, str(pristine)], "directory", pristine, [])
    if Path("/dev/full").exists():
        _check(capsys, [*base, "/dev/full"], "not a regular file", pristine, [])
    # evaluate may not overwrite its own calibration
    before = good_calibration.read_bytes()
    argv = [
        "evaluate",
        str(pristine),
        "--calibration",
        str(good_calibration),
        "--out",
        str(good_calibration),
        "-q",
    ]
    _check(capsys, argv, "one of the inputs", pristine, [])
    assert good_calibration.read_bytes() == before


def _edited(doc: dict, key: str, value, *, redigest: bool) -> dict:
    from napari_conformal.core.calibration import _digest as digest

    out = {**doc, key: value}
    if redigest:
        out["digest"] = digest(out)
    return out


CALIBRATION_DAMAGE = {
    "truncated": (lambda text, doc: text[: len(text) // 2], "not valid JSON"),
    "not JSON": (lambda text, doc: "garbage", "not valid JSON"),
    "an edited alpha": (
        lambda text, doc: json.dumps(_edited(doc, "alpha", 0.3, redigest=False)),
        "changed after it was written",
    ),
    "unknown schema version": (lambda text, doc: json.dumps({**doc, "schema_version": 99}), "schema version"),
    "another format": (
        lambda text, doc: json.dumps({**doc, "format": "something-else"}),
        "not a napari-conformal calibration",
    ),
    "lambda_hat NaN": (
        lambda text, doc: json.dumps(_edited(doc, "lambda_hat", float("nan"), redigest=False)),
        "NaN or infinity",
    ),
    "lambda_hat -5": (
        lambda text, doc: json.dumps(_edited(doc, "lambda_hat", -5.0, redigest=True)),
        "lambda_hat",
    ),
    "lambda_hat 1e300": (
        lambda text, doc: json.dumps(_edited(doc, "lambda_hat", 1e300, redigest=True)),
        "lambda_hat",
    ),
    "cal_indices out of range": (
        lambda text, doc: json.dumps(
            _edited(doc, "cal_indices", [*doc["cal_indices"][:-1], 500], redigest=True)
        ),
        "cal_indices",
    ),
    "n negative": (
        lambda text, doc: json.dumps(_edited(doc, "n", -3, redigest=True)),
        "n must be an integer",
    ),
    "wrong-typed alpha": (
        lambda text, doc: json.dumps(_edited(doc, "alpha", "0.2", redigest=True)),
        "alpha must be a finite number",
    ),
    "a legacy record": (
        lambda text, doc: json.dumps(
            {k: doc[k] for k in ("method", "alpha", "nu", "k", "lambda_hat", "n", "cal_indices", "store")}
        ),
        "before versioned calibration files",
    ),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION_DAMAGE))
def test_damaged_calibration_file_is_refused(case, pristine, good_calibration, tmp_path, capsys):
    make, needle = CALIBRATION_DAMAGE[case]
    text = good_calibration.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(make(text, json.loads(text)))
    before = bad.read_bytes()
    out = tmp_path / "metrics.json"
    _check(
        capsys,
        ["evaluate", str(pristine), "--calibration", str(bad), "--out", str(out), "-q"],
        needle,
        pristine,
        [out],
    )
    assert bad.read_bytes() == before


def test_calibration_of_another_store_is_refused(pristine, good_calibration, tmp_path, capsys):
    other = tmp_path / "other.zarr"
    create_store(other, *_dataset(seed=1))
    out = tmp_path / "m.json"
    _check(
        capsys,
        ["evaluate", str(other), "--calibration", str(good_calibration), "--out", str(out), "-q"],
        "not the store",
        other,
        [out],
    )
