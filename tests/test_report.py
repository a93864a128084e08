"""The ``report`` command: repeated splits, results.json, the HTML page and its figures.

Every number the report computes through its shared-curve shortcut is compared with the plain
route (:func:`napari_conformal.api.calibrate` then :func:`~napari_conformal.api.evaluate` on the
same split), and the summaries and bands with direct numpy/scipy computations.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import betabinom

from napari_conformal.api import Cancelled, calibrate, evaluate
from napari_conformal.cli import main
from napari_conformal.core.methods.base import make_method
from napari_conformal.core.metrics.segmentation import nanmean_metrics
from napari_conformal.errors import ConformalError
from napari_conformal.io.store import create_store, open_store
from napari_conformal.report import (
    build_report,
    jsonable,
    method_params,
    resolve_n_cal,
    write_report,
)
from napari_conformal.testing.synthetic import binary_blobs_dataset, lowrank_multiclass_dataset

N_IMAGES = 20
N_CAL = 10
SEED = 3
RWCP = {"features": "multiscale", "grid_stride": 2, "k": 8, "n_step": 5}
BINARY = ("crc", "consema", "rwcp")
ALPHAS = (0.2, 0.1)


@pytest.fixture(scope="module")
def binary_store(tmp_path_factory) -> Path:
    images, samples, labels = binary_blobs_dataset(N_IMAGES, (24, 24), 4, seed=11)
    path = tmp_path_factory.mktemp("bin") / "binary.zarr"
    create_store(path, images, samples, labels, spacing=(1.0, 0.5))
    return path


@pytest.fixture(scope="module")
def multiclass_store(tmp_path_factory) -> Path:
    images, samples, labels = lowrank_multiclass_dataset(N_IMAGES, (24, 24), 3, 10, seed=12)
    path = tmp_path_factory.mktemp("mc") / "multi.zarr"
    create_store(path, images, samples, labels)
    return path


@pytest.fixture(scope="module")
def binary_results(binary_store) -> dict:
    return build_report(
        open_store(binary_store), BINARY, ALPHAS, splits=2, n_cal=N_CAL, seed=SEED, params={"rwcp": RWCP}
    )


@pytest.fixture(scope="module")
def multiclass_results(multiclass_store) -> dict:
    return build_report(
        open_store(multiclass_store),
        ("aps", "sacp"),
        ALPHAS,
        nu=0.8,
        splits=2,
        n_cal=N_CAL,
        seed=SEED,
        n_samples=(5, 20),
        diversity_alphas=(0.1,),
    )


def _same(a, b) -> bool:
    """Exact equality of nested JSON-like values, NaN equal to NaN (and to None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    nan_a = a is None or (isinstance(a, float) and math.isnan(a))
    nan_b = b is None or (isinstance(b, float) and math.isnan(b))
    if nan_a or nan_b:
        return nan_a and nan_b
    return a == b


def _run(results: dict, method: str, alpha: float, split: int) -> dict:
    (run,) = [
        r for r in results["runs"] if r["method"] == method and r["alpha"] == alpha and r["split"] == split
    ]
    return run


# ------------------------------------------------------------------------------------------ numbers


def test_splits_are_disjoint_partitions(binary_results):
    splits = binary_results["splits"]
    assert len(splits) == 2 and splits[0]["cal"] != splits[1]["cal"]
    for s in splits:
        assert len(s["cal"]) == N_CAL and len(s["test"]) == N_IMAGES - N_CAL
        assert sorted(s["cal"] + s["test"]) == list(range(N_IMAGES))


@pytest.mark.parametrize("split", [0, 1])
def test_binary_runs_equal_calibrate_then_evaluate(binary_store, binary_results, split):
    """The shared-curve shortcut gives exactly what api.calibrate + api.evaluate give on each split.

    RW-CP is checked at one α per split (its per-image diffusion is the slow part).
    """
    store = open_store(binary_store)
    cal, test = binary_results["splits"][split]["cal"], binary_results["splits"][split]["test"]
    pairs = [(m, a) for m in ("crc", "consema") for a in ALPHAS] + [("rwcp", ALPHAS[split])]  # rwcp is slow
    for method, alpha in pairs:
        run = _run(binary_results, method, alpha, split)
        extra = {"k": RWCP["k"], "params": {k: v for k, v in RWCP.items() if k != "k"}}
        calib = calibrate(store, method, alpha=alpha, cal_indices=cal, **(extra if method == "rwcp" else {}))
        assert run["lambda_hat"] == calib["lambda_hat"]
        metrics = evaluate(store, calib, test_indices=test, seed=SEED)
        assert _same(run["per_image"], metrics["per_image"])
        assert _same(run["mean"], metrics["mean"])


def _evaluate_by_hand(store, method, lam, test, n_samples):
    """What api.evaluate does per test image, with a fresh prepare per image and split."""
    return [
        {
            "index": i,
            **method.evaluate(
                method.prepare(store.image(i), store.samples(i)),
                store.label(i),
                lam,
                spacing=store.spacing,
                n_samples=n_samples,
                seed=SEED + i,
            ),
        }
        for i in test
    ]


def test_multiclass_runs_equal_calibrate_then_evaluate(multiclass_store, multiclass_results):
    """Pixel-wise and SACP, with sampled members at the diversity α only (seed + index as in evaluate)."""
    store = open_store(multiclass_store)
    split = 1
    cal, test = multiclass_results["splits"][split]["cal"], multiclass_results["splits"][split]["test"]
    for method in ("aps", "sacp"):
        for alpha in ALPHAS:
            run = _run(multiclass_results, method, alpha, split)
            calib = calibrate(store, method, alpha=alpha, nu=0.8, cal_indices=cal)
            assert run["lambda_hat"] == calib["lambda_hat"]
            sampled = (5, 20) if alpha == 0.1 else ()
            assert run["sampled"] is bool(sampled)
            rows = _evaluate_by_hand(
                store, make_method(method, alpha=alpha, nu=0.8), calib["lambda_hat"], test, sampled
            )
            assert _same(run["per_image"], rows)
            assert _same(run["mean"], nanmean_metrics(rows))
            assert ("chao1" in run["mean"]) is bool(sampled)


def test_summary_is_mean_and_std_over_splits(binary_results):
    for entry in binary_results["summary"]:
        runs = [
            r
            for r in binary_results["runs"]
            if r["method"] == entry["method"] and r["alpha"] == entry["alpha"]
        ]
        lams = [r["lambda_hat"] for r in sorted(runs, key=lambda r: r["split"])]
        assert entry["lambda_hat"] == lams
        assert entry["lambda_hat_summary"]["mean"] == pytest.approx(np.mean(lams), abs=1e-15)
        assert entry["lambda_hat_summary"]["std"] == pytest.approx(np.std(lams), abs=1e-15)
        dice = [
            np.nanmean([np.nan if row["dice"] is None else row["dice"] for row in r["per_image"]])
            for r in runs
        ]
        assert entry["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice), rel=1e-12)


def test_split_cp_band_is_the_beta_binomial_lower_quantile(binary_results):
    """Consema's per-split covered count and band, recomputed from the BetaBinomial law directly."""
    fa = binary_results["settings"]["false_alarm"]
    for alpha in ALPHAS:
        (entry,) = [e for e in binary_results["summary"] if e["method"] == "consema" and e["alpha"] == alpha]
        g = entry["guarantee"]
        assert g["kind"] == "split"
        for p in g["per_split"]:
            run = _run(binary_results, "consema", alpha, p["split"])
            flags = [row["covered"] for row in run["per_image"]]
            assert p["covered"] == sum(flags) and p["n_test"] == len(flags)
            n, m = N_CAL, math.floor((N_CAL + 1) * Fraction(str(alpha)) - 1)
            k = n - m  # rank of the order statistic
            cdf = betabinom.cdf(np.arange(-1, len(flags)), len(flags), k, n + 1 - k)  # P(count ≤ l − 1)
            lower = max(l for l in range(len(flags) + 1) if cdf[l] <= fa)
            assert p["low_count"] == lower
            assert p["inside"] is (p["covered"] >= lower)


def test_fnr_guarantee_statistic_is_mean_test_coverage(binary_results):
    for entry in binary_results["summary"]:
        if entry["method"] not in ("crc", "rwcp"):
            continue
        g = entry["guarantee"]
        assert g["kind"] == "risk" and g["nominal"] == pytest.approx(1 - entry["alpha"])
        for p in g["per_split"]:
            run = _run(binary_results, entry["method"], entry["alpha"], p["split"])
            assert p["realised"] == pytest.approx(np.mean([row["coverage"] for row in run["per_image"]]))
        assert g["mean_realised"] == pytest.approx(np.mean([p["realised"] for p in g["per_split"]]))


def test_reference_row_is_the_models_own_prediction(binary_store, binary_results):
    """Dice of Ŷ = mean foreground ≥ 0.5, recomputed by hand on every split's test images."""
    store = open_store(binary_store)
    ref = binary_results["reference"]
    for split, s in enumerate(binary_results["splits"]):
        dices = []
        for i in s["test"]:
            pred = store.samples(i)[:, 1].mean(axis=0) >= 0.5
            truth = store.label(i) == 1
            dices.append(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()))
        assert ref["per_split"][split]["dice"] == pytest.approx(np.mean(dices), rel=1e-12)
        assert ref["per_split"][split]["stretch"] == pytest.approx(1.0)


def test_report_leaves_the_store_untouched(binary_store, binary_results):
    assert binary_results["store"]["identity"] == open_store(binary_store).identity()


def test_cancel_stops_with_nothing(binary_store):
    calls = []
    with pytest.raises(Cancelled):
        build_report(
            open_store(binary_store),
            ("crc",),
            (0.2,),
            splits=2,
            n_cal=N_CAL,
            progress=lambda done, total: calls.append(done),
            should_stop=lambda: len(calls) >= 3,
        )
    assert len(calls) == 3


def test_lambda_max_in_some_runs_is_reported_not_fatal(binary_store, tmp_path, monkeypatch, capsys):
    """A (method, α, split) whose λ̂ reaches λ_max is listed, has no metrics, and the rest is intact."""
    from napari_conformal.core.methods.threshold import CRCMethod
    from napari_conformal.errors import LambdaMaxReachedError

    original = CRCMethod.lambda_hat

    def lambda_hat(self, curves, alpha=None, nu=None):
        if self.alpha == 0.1:
            raise LambdaMaxReachedError("the set reaches lambda_max")
        return original(self, curves, alpha, nu)

    monkeypatch.setattr(CRCMethod, "lambda_hat", lambda_hat)
    res = build_report(open_store(binary_store), ("crc",), ALPHAS, splits=2, n_cal=N_CAL, seed=SEED)
    assert len(res["failures"]) == 2 and all("alpha 0.1" in f and "lambda_max" in f for f in res["failures"])
    for run in res["runs"]:
        failed = run["alpha"] == 0.1
        assert (run["lambda_hat"] is None) is failed and ("error" in run) is failed
        assert (len(run["per_image"]) == 0) is failed
    (entry,) = [e for e in res["summary"] if e["alpha"] == 0.1]
    assert entry["guarantee"]["failed_splits"] == 2 and entry["lambda_hat"] == [None, None]
    out = write_report(res, tmp_path / "rep")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Runs without a λ̂" in page and "split 1" in page
    argv = ["report", str(binary_store), "--methods", "crc", "--alpha", "0.2,0.1", "--splits", "1"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "-q"]) == 0
    assert "warning: lambda_hat reached lambda_max in 1 of 2 runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ inputs


def test_resolve_n_cal():
    assert resolve_n_cal(20) == 10
    assert resolve_n_cal(21, cal_fraction=0.3) == 6  # ⌊6.3 + 0.5⌋
    assert resolve_n_cal(20, n_cal=19) == 19
    for kwargs in ({"n_cal": 20}, {"cal_fraction": 0.01}, {"cal_fraction": 0.5, "n_cal": 3}):
        with pytest.raises(ConformalError):
            resolve_n_cal(20, **kwargs)


def test_method_params_routing():
    methods = ("crc", "consema", "rwcp")
    assert method_params(methods, [("rwcp.k", 8)]) == {"rwcp": {"k": 8}}
    assert method_params(methods, [("fg_class", 2)]) == {m: {"fg_class": 2} for m in methods}
    assert method_params(methods, [("features", "multiscale")]) == {"rwcp": {"features": "multiscale"}}
    with pytest.raises(ConformalError, match="tau"):
        method_params(("crc", "rwcp"), [("tau", 0.9)])
    with pytest.raises(ConformalError, match="aps"):
        method_params(methods, [("aps.nu", 0.9)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ("crc", "crc")}, "twice"),
        ({"methods": ("nope",)}, "unknown method"),
        ({"alphas": (0.2, 1.2)}, "alphas"),
        ({"alphas": ()}, "empty"),
        ({"n_cal": 5, "alphas": (0.1,)}, "too few calibration images"),
        ({"methods": ("aps",)}, "needs nu"),
        ({"nu": 0.9}, "nu does not apply"),
        ({"diversity_alphas": (0.3,)}, "not one of"),
        ({"splits": 0}, "splits"),
        ({"params": {"rwcp": {"features": "multiscale"}}}, "not in the report"),
    ],
)
def test_bad_arguments_fail_before_work(binary_store, kwargs, match):
    args = {"methods": ("crc",), "alphas": (0.2,), "splits": 1, "n_cal": N_CAL, **kwargs}
    calls = []
    with pytest.raises(ConformalError, match=match):
        build_report(
            open_store(binary_store),
            args.pop("methods"),
            args.pop("alphas"),
            progress=lambda d, t: calls.append(d),
            **args,
        )
    assert calls == []


# ------------------------------------------------------------------------------------------ output


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_written_report_references_existing_figures(binary_results, multiclass_results, tmp_path):
    out = write_report(binary_results, tmp_path / "bin")
    page = (out / "index.html").read_text(encoding="utf-8")
    names = _images(page)
    assert {"coverage.png", "lambda_hat.png"} <= set(names)
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(n.startswith("diversity") for n in names)  # no sampling method
    for label in ("Model (no CP)", "CRC", "Consema", "RW-CP", "not independent"):
        assert label in page
    doc = json.loads((out / "results.json").read_text())
    assert doc == json.loads(json.dumps(jsonable(binary_results)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # no temporary left behind

    out = write_report(multiclass_results, tmp_path / "mc")
    names = _images((out / "index.html").read_text(encoding="utf-8"))
    assert "diversity_alpha_0p1.png" in names
    assert all((out / n).is_file() for n in names)


def test_write_refuses_an_existing_directory(binary_results, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    with pytest.raises(ConformalError, match="exists"):
        write_report(binary_results, target)
    with pytest.raises(ConformalError):
        write_report(binary_results, target, overwrite=True)  # not a report: never replaced
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------ CLI


def test_cli_report_writes_and_overwrites(binary_store, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["report", str(binary_store), "--methods", "crc,consema", "--alpha", "0.2,0.1"]
    argv += ["--splits", "2", "--n-cal", str(N_CAL), "--seed", str(SEED), "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "report [" not in err  # no progress bar when stderr is not a terminal
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["methods"] == ["crc", "consema"] and doc["settings"]["alphas"] == [0.2, 0.1]
    assert doc["splits"][0]["cal"] == sorted(
        np.random.default_rng(SEED).permutation(N_IMAGES)[:N_CAL].tolist()
    )
    before = (out / "results.json").read_bytes()
    assert main(argv) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main([*argv, "--overwrite", "-q", "--splits", "3"]) == 0
    assert len(json.loads((out / "results.json").read_text())["splits"]) == 3


def test_cli_progress_bar_on_a_terminal(monkeypatch, capsys):
    from napari_conformal import cli

    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    bar = cli._progress_bar("report", quiet=False, width=10)
    bar(5, 10)
    bar(10, 10)
    err = capsys.readouterr().err
    assert "[#####.....]  50% 5/10" in err and err.endswith("[##########] 100% 10/10\n")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--methods", "crc,nope", "--alpha", "0.2"], "nope"),
        (["--methods", "crc", "--alpha", "0.2,1.5"], "1.5"),
        (["--methods", "crc", "--alpha", "0.05", "--n-cal", "10"], "too few calibration images"),
        (["--methods", "aps", "--alpha", "0.2"], "nu"),
        (["--methods", "crc", "--alpha", "0.2", "--n-cal", "20"], "empty"),
        (["--methods", "crc", "--alpha", "0.2", "-o", "tau=0.5"], "tau"),
        (["--methods", "crc", "--alpha", "0.2", "--n-samples", "10,x"], "n-samples"),
        (["--methods", "crc", "--alpha", "0.2", "--cal-fraction", "0.5", "--n-cal", "4"], "not allowed"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(binary_store, tmp_path, capsys, extra, match):
    out = tmp_path / "never"
    assert main(["report", str(binary_store), *extra, "--splits", "1", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_cli_missing_store_and_unlabelled_store(tmp_path, capsys):
    out = tmp_path / "never"
    assert (
        main(
            ["report", str(tmp_path / "absent.zarr"), "--methods", "crc", "--alpha", "0.2", "--out", str(out)]
        )
        == 2
    )
    assert "store not found" in capsys.readouterr().err
    images, samples, _ = binary_blobs_dataset(6, (16, 16), 2, seed=0)
    create_store(tmp_path / "nolabels.zarr", images, samples)
    argv = [
        "report",
        str(tmp_path / "nolabels.zarr"),
        "--methods",
        "crc",
        "--alpha",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "no 'labels'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_consign_in_the_report_when_registered(multiclass_store):
    """CONSIGN (when its engine is registered) goes through the same route as the API."""
    from napari_conformal.core.methods.base import available_methods

    if "consign" not in available_methods():
        pytest.skip("consign is not registered yet")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the search is many small ops: threads only add contention on small machines
    try:
        _consign_check(multiclass_store)
    finally:
        torch.set_num_threads(threads)


def _consign_check(multiclass_store):
    store = open_store(multiclass_store)
    res = build_report(
        store, ("consign",), (0.2,), nu=0.8, k=3, splits=1, n_cal=N_CAL, seed=SEED, n_samples=(5,)
    )
    cal, test = res["splits"][0]["cal"], res["splits"][0]["test"]
    calib = calibrate(store, "consign", alpha=0.2, nu=0.8, k=3, cal_indices=cal)
    assert res["runs"][0]["lambda_hat"] == calib["lambda_hat"]
    metrics = evaluate(store, calib, test_indices=test, n_samples=(5,), seed=SEED)
    assert _same(res["runs"][0]["per_image"], metrics["per_image"])


def test_settings_record_parameters_that_differ_between_alphas(binary_results):
    """Consema's τ defaults to 1 − α: the settings keep each α's value, and the page shows all of them."""
    from napari_conformal.report_figures import _params_text

    params = binary_results["settings"]["params"]
    tau = params["consema"]["tau"]
    assert tau == {"per_alpha": {f"{a:g}": pytest.approx(1 - a) for a in ALPHAS}}
    assert params["rwcp"]["features"] == RWCP["features"]  # the same at every α: a plain value
    text = _params_text(params["consema"])
    assert all(f"(α = {a:g})" in text for a in ALPHAS), text
