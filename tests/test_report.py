"""The ``report`` command: repeated splits, results.json, the HTML page and its figures.

Every number the report computes is compared with the plain route (:func:`napari_conformal.api.calibrate`
then :func:`~napari_conformal.api.evaluate` on the same split), and the summaries, bands and tertile
tables with direct numpy/scipy computations. Methods that behave wrongly on purpose are real method
classes registered for one test (no mocks).
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
from napari_conformal.core.methods import base as methods_base
from napari_conformal.core.methods.base import register
from napari_conformal.core.methods.consema import ConsemaMethod
from napari_conformal.core.methods.pixelwise import APS
from napari_conformal.core.methods.threshold import CRCMethod
from napari_conformal.errors import ConformalError, LambdaMaxReachedError
from napari_conformal.io.store import create_store, open_store
from napari_conformal.report import build_report, jsonable, method_params, resolve_n_cal, write_report
from napari_conformal.report.checks import alpha_star, check_fnr_split, fnr_band
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
def big_binary_store(tmp_path_factory) -> Path:
    """80 small images: enough calibration and test images for informative two-sided bands."""
    images, samples, labels = binary_blobs_dataset(80, (16, 16), 4, noise=2.5, seed=21)
    path = tmp_path_factory.mktemp("big") / "big.zarr"
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


@pytest.fixture
def registered():
    """Register method classes for one test: ``registered("name", cls)``; removed afterwards."""
    names = []

    def add(name, cls):
        register(name)(cls)
        names.append(name)
        return cls

    yield add
    for name in names:
        methods_base._REGISTRY.pop(name, None)


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


def _entry(results: dict, method: str, alpha: float) -> dict:
    (entry,) = [e for e in results["summary"] if e["method"] == method and e["alpha"] == alpha]
    return entry


# ------------------------------------------------------------------------------------------ numbers


def test_splits_are_disjoint_partitions(binary_results):
    splits = binary_results["splits"]
    assert len(splits) == 2 and splits[0]["cal"] != splits[1]["cal"]
    for s in splits:
        assert len(s["cal"]) == N_CAL and len(s["test"]) == N_IMAGES - N_CAL
        assert sorted(s["cal"] + s["test"]) == list(range(N_IMAGES))


@pytest.mark.parametrize("split", [0, 1])
def test_binary_runs_equal_calibrate_then_evaluate(binary_store, binary_results, split):
    """One calibration per split re-reduced at the other α gives exactly what calibrate + evaluate give.

    RW-CP is checked at one α per split (its per-image diffusion is the slow part).
    """
    store = open_store(binary_store)
    cal, test = binary_results["splits"][split]["cal"], binary_results["splits"][split]["test"]
    pairs = [(m, a) for m in ("crc", "consema") for a in ALPHAS] + [("rwcp", ALPHAS[split])]
    for method, alpha in pairs:
        run = _run(binary_results, method, alpha, split)
        calib = calibrate(store, method, alpha=alpha, cal_indices=cal, **(RWCP if method == "rwcp" else {}))
        assert run["lambda_hat"] == calib.lambda_hat
        metrics = evaluate(store, calib, test_indices=test, seed=SEED)
        assert _same(run["per_image"], metrics["per_image"])
        assert _same(run["mean"], metrics["mean"])
        assert run["guarantee"] == calib.guarantee()


def test_multiclass_runs_equal_calibrate_then_evaluate(multiclass_store, multiclass_results):
    """Pixel-wise and SACP, with sampled members at the diversity α only (seed + index as in evaluate)."""
    store = open_store(multiclass_store)
    split = 1
    cal, test = multiclass_results["splits"][split]["cal"], multiclass_results["splits"][split]["test"]
    for method in ("aps", "sacp"):
        for alpha in ALPHAS:
            run = _run(multiclass_results, method, alpha, split)
            calib = calibrate(store, method, alpha=alpha, nu=0.8, cal_indices=cal)
            assert run["lambda_hat"] == calib.lambda_hat
            sampled = (5, 20) if alpha == 0.1 else ()
            assert run["sampled"] is bool(sampled)
            metrics = evaluate(store, calib, test_indices=test, n_samples=sampled, seed=SEED)
            assert _same(run["per_image"], metrics["per_image"])
            assert _same(run["mean"], metrics["mean"])
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


def test_split_cp_band_is_the_beta_binomial_quantile(binary_results):
    """Consema (ties: lower limit only) — covered count and band recomputed from the BetaBinomial law."""
    fa = binary_results["settings"]["false_alarm"]
    for alpha in ALPHAS:
        g = _entry(binary_results, "consema", alpha)["guarantee"]
        assert g["kind"] == "miscoverage"
        for p in g["per_split"]:
            run = _run(binary_results, "consema", alpha, p["split"])
            flags = [row["covered"] for row in run["per_image"]]
            assert p["covered"] == sum(flags) and p["n_test"] == len(flags)
            n, m = N_CAL, math.floor((N_CAL + 1) * Fraction(str(alpha)) - 1)
            k = n - m  # rank of the order statistic
            cdf = betabinom.cdf(np.arange(-1, len(flags)), len(flags), k, n + 1 - k)  # P(count ≤ l − 1)
            lower = max(l for l in range(len(flags) + 1) if cdf[l] <= fa)
            assert p["two_sided"] is False and p["high_count"] == len(flags)
            assert p["low_count"] == lower
            assert p["inside"] is (p["covered"] >= lower)


def test_fnr_guarantee_statistic_is_mean_test_coverage(binary_results):
    for entry in binary_results["summary"]:
        if entry["method"] not in ("crc", "rwcp"):
            continue
        g = entry["guarantee"]
        assert g["kind"] == "fnr" and g["nominal"] == pytest.approx(1 - entry["alpha"])
        assert g["centre"] == pytest.approx(1 - ((N_CAL + 1) * entry["alpha"] - 1) / N_CAL)
        for p in g["per_split"]:
            run = _run(binary_results, entry["method"], entry["alpha"], p["split"])
            assert p["realised"] == pytest.approx(np.mean([row["coverage"] for row in run["per_image"]]))
            assert 0 < p["low"] < p["high"] <= 1 and p["two_sided"] is True
        assert g["mean_realised"] == pytest.approx(np.mean([p["realised"] for p in g["per_split"]]))


def test_calibration_realised_values_come_from_the_calibration_curves(binary_store, binary_results):
    """``cal_realised``: 1 − FNR of each calibration image at λ̂ (and just below λ̂)."""
    store = open_store(binary_store)
    run = _run(binary_results, "crc", 0.1, 0)
    cal = binary_results["splits"][0]["cal"]
    lam = run["lambda_hat"]
    for j, i in enumerate(cal):
        truth = store.label(i) == 1
        score = store.samples(i)[:, 1].astype(np.float64).mean(axis=0)
        assert run["cal_realised"][j] == pytest.approx(np.mean((1.0 - score[truth]) <= lam), abs=1e-12)
        below = np.nextafter(lam, -np.inf)
        assert run["cal_realised_left"][j] == pytest.approx(np.mean((1.0 - score[truth]) <= below), abs=1e-12)
    # the CRC rule: calibration risk at λ̂ within α*, and above it just below λ̂
    risk = 1 - np.mean(run["cal_realised"])
    assert risk <= alpha_star(N_CAL, 0.1) + 1e-12 < 1 - np.mean(run["cal_realised_left"])


def test_reference_row_is_the_models_own_prediction(binary_store, binary_results):
    """Dice of Ŷ = mean foreground ≥ 0.5, recomputed by hand on every split's test images."""
    store = open_store(binary_store)
    ref = binary_results["reference"]
    for split, s in enumerate(binary_results["splits"]):
        dices = []
        for i in s["test"]:
            pred = store.samples(i)[:, 1].astype(np.float64).mean(axis=0) >= 0.5
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


def test_progress_is_monotone_and_ends_at_the_total(binary_store):
    seen = []
    build_report(
        open_store(binary_store),
        ("crc", "consema"),
        ALPHAS,
        splits=2,
        n_cal=N_CAL,
        progress=lambda d, t: seen.append((d, t)),
    )
    done = [d for d, _ in seen]
    assert done == sorted(done) and len({t for _, t in seen}) == 1 and done[-1] == seen[-1][1]


def test_lambda_max_in_some_runs_is_reported_not_fatal(binary_store, tmp_path, capsys, registered):
    """A (method, α, split) whose λ̂ reaches λ_max is listed, has no metrics, and the rest is intact."""

    class CappedCRC(CRCMethod):
        title = "Capped CRC"

        def lambda_hat(self, curves, *, alpha, nu=None):
            if alpha == 0.1:
                raise LambdaMaxReachedError("the set reaches lambda_max")
            return super().lambda_hat(curves, alpha=alpha, nu=nu)

    registered("capped-crc", CappedCRC)
    res = build_report(open_store(binary_store), ("capped-crc",), ALPHAS, splits=2, n_cal=N_CAL, seed=SEED)
    assert len(res["failures"]) == 2 and all("alpha 0.1" in f and "lambda_max" in f for f in res["failures"])
    for run in res["runs"]:
        failed = run["alpha"] == 0.1
        assert (run["lambda_hat"] is None) is failed and ("error" in run) is failed
        assert (len(run["per_image"]) == 0) is failed
    entry = _entry(res, "capped-crc", 0.1)
    assert entry["guarantee"]["failed_splits"] == 2 and entry["lambda_hat"] == [None, None]
    out = write_report(res, tmp_path / "rep")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Runs without a λ̂" in page and "split 1" in page
    argv = ["report", str(binary_store), "--methods", "capped-crc", "--alpha", "0.2,0.1", "--splits", "1"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "-q"]) == 0
    assert "warning: lambda_hat reached lambda_max in 1 of 2 runs" in capsys.readouterr().err


def test_each_images_curve_is_computed_once_across_splits(binary_store, registered):
    """Repeated splits reuse an image's calibration curve: one curve per image, not one per split,
    and the λ̂ of every split equals a fresh calibration on its images."""
    computed: list[int] = []

    class CountingCRC(CRCMethod):
        title = "Counting CRC"

        def curve(self, prepared, label, *, alpha=None, nu=None):
            computed.append(int(label.sum()))
            return super().curve(prepared, label, alpha=alpha, nu=nu)

    registered("counting-crc", CountingCRC)
    store = open_store(binary_store)
    res = build_report(store, ("counting-crc",), (0.2, 0.1), splits=4, n_cal=N_CAL, seed=SEED)
    cal_sets = [set(split["cal"]) for split in res["splits"]]
    union = set().union(*cal_sets)
    assert sum(len(c) for c in cal_sets) > len(union)  # the splits overlap, so a cache has work to spare
    assert len(computed) == len(union)
    for r, (split, cal) in enumerate(zip(res["splits"], cal_sets, strict=True)):
        fresh = calibrate(store, "crc", alpha=0.2, cal_indices=split["cal"])
        run = next(x for x in res["runs"] if x["split"] == r and x["alpha"] == 0.2)
        assert run["lambda_hat"] == fresh.lambda_hat and len(cal) == run["n_cal"]
    # through the API: a cached calibration's curves line up with its images, as a fresh one's do
    cache: dict = {}
    first = calibrate(store, "crc", alpha=0.2, cal_indices=res["splits"][0]["cal"], curve_cache=cache)
    order = list(reversed(res["splits"][1]["cal"]))
    cached = calibrate(store, "crc", alpha=0.2, cal_indices=order, curve_cache=cache)
    fresh = calibrate(store, "crc", alpha=0.2, cal_indices=order)
    assert len(cache) == len(set(res["splits"][0]["cal"]) | set(order)) and first.n == len(cal_sets[0])
    method = fresh.method_object
    for lam in (0.3, fresh.lambda_hat, 0.9):
        got = [method.realised(c, lam, alpha=0.2) for c in cached.curves]
        assert got == [method.realised(c, lam, alpha=0.2) for c in fresh.curves]


# ------------------------------------------------------------------------------------------ bands


def _synthetic_curves(rng, n_images):
    """Per-image FNR curves of a threshold method: sorted nonconformity of the truth pixels (skewed)."""
    out = []
    for _ in range(n_images):
        hard = rng.random() < 0.3
        a = rng.choice([0.3, 0.6, 1.5]) if hard else 0.4
        out.append(np.sort(rng.beta(a, 4.0, int(rng.integers(20, 300)))))
    return out


@pytest.mark.slow
def test_fnr_band_false_alarm_rate_with_exact_crc():
    """Exact CRC on fresh synthetic data leaves the two-sided band at about the stated rate.

    The band is not the old vacuous one: its lower coverage limit is far above 0 and its upper below 1.
    """
    crc = CRCMethod()
    rng = np.random.default_rng(7)
    n, m, alpha, fa, reps = 30, 30, 0.1, 0.02, 300
    flags = {"below": 0, "above": 0}
    for r in range(reps):
        curves = _synthetic_curves(rng, n + m)
        cal, test = curves[:n], curves[n:]
        lam = crc.lambda_hat(cal, alpha=alpha)
        below = np.nextafter(lam, -np.inf)
        entry = check_fnr_split(
            [crc.realised(c, lam) for c in test],
            [crc.realised(c, lam) for c in cal],
            [crc.realised(c, below) for c in cal],
            n,
            alpha,
            fa,
            seed=r,
        )
        assert 0.8 < entry["low"] < 1 - alpha_star(n, alpha) < entry["high"] < 1.0
        if entry["outside"]:
            flags[entry["outside"]] += 1
    # nominal 1 % per side; 300 repetitions: more than 12 (4 %) on one side would be a broken band
    assert flags["below"] <= 12 and flags["above"] <= 12, flags


def test_fnr_band_is_centred_at_alpha_star_and_widens_with_the_spread():
    rng = np.random.default_rng(0)
    tight = rng.beta(2, 30, 60)
    wide = rng.beta(0.3, 3, 60)
    lo_t, hi_t = fnr_band(tight, 30, 0.1, 0.01, draws=4000)
    lo_w, hi_w = fnr_band(wide, 30, 0.1, 0.01, draws=4000)
    centre = alpha_star(30, 0.1)
    assert lo_t < centre < hi_t and lo_w < centre < hi_w
    assert hi_w - lo_w > 2 * (hi_t - lo_t)
    # a jump of the calibration risk at λ̂ (ties) lowers only the lower FNR limit
    lo_j, hi_j = fnr_band(tight, 30, 0.1, 0.01, jump=0.01, draws=4000)
    assert lo_j == pytest.approx(max(lo_t - 0.01, 0.0)) and hi_j == hi_t


def _scaled_crc(factor: float, title: str):
    """A deliberately miscalibrated CRC: λ̂ scaled by ``factor`` (a real threshold method otherwise)."""

    class Scaled(CRCMethod):
        def lambda_hat(self, curves, *, alpha, nu=None):
            return min(factor * super().lambda_hat(curves, alpha=alpha, nu=nu), 1.0)

    Scaled.title = title
    return Scaled


def test_fnr_split_outside_its_band_is_flagged(big_binary_store, tmp_path, registered):
    """λ̂ too small: too little coverage ("below"); λ̂ too large: more than exact CRC gives ("above")."""
    registered("stingy-crc", _scaled_crc(0.6, "Stingy CRC"))
    registered("lavish-crc", _scaled_crc(1.6, "Lavish CRC"))
    res = build_report(
        open_store(big_binary_store), ("crc", "stingy-crc", "lavish-crc"), (0.2,), splits=2, n_cal=40, seed=1
    )
    correct = _entry(res, "crc", 0.2)["guarantee"]
    stingy = _entry(res, "stingy-crc", 0.2)["guarantee"]
    lavish = _entry(res, "lavish-crc", 0.2)["guarantee"]
    assert correct["splits_outside"] == 0
    assert [p["outside"] for p in stingy["per_split"]] == ["below", "below"] and stingy["splits_below"] == 2
    assert [p["outside"] for p in lavish["per_split"]] == ["above", "above"] and lavish["splits_above"] == 2
    assert all(p["inside"] is False for p in stingy["per_split"] + lavish["per_split"])
    out = write_report(res, tmp_path / "rep")
    doc = json.loads((out / "results.json").read_text())
    assert _entry(doc, "lavish-crc", 0.2)["guarantee"]["per_split"][0]["outside"] == "above"
    page = (out / "index.html").read_text(encoding="utf-8")
    rows = {
        m: _page_row(page, t) for m, t in (("stingy", "Stingy CRC"), ("lavish", "Lavish CRC"), ("crc", "CRC"))
    }
    assert (
        rows["stingy"].count('class="out"') == 2
        and "↓" in rows["stingy"]
        and "2 of 2 outside" in rows["stingy"]
    )
    assert rows["lavish"].count('class="out"') == 2 and "↑" in rows["lavish"]
    assert 'class="out"' not in rows["crc"] and "all 2 splits inside" in rows["crc"]


def _page_row(page: str, title: str) -> str:
    """The guarantee-table row of a method (the first table row whose first cell is ``title``)."""
    match = re.search(r"<tr[^>]*><td>" + re.escape(title) + r"</td><td>0\.2</td>.*?</tr>", page, flags=re.S)
    assert match, title
    return match.group(0)


def test_split_cp_band_is_two_sided_for_exact_methods(big_binary_store, registered):
    """Pixel-wise APS (exact λ_i): a λ̂ too large is flagged above; Consema (ties) never is."""

    class LavishAPS(APS):
        title = "Lavish APS"

        def lambda_hat(self, curves, *, alpha, nu=None):
            return super().lambda_hat(curves, alpha=alpha / 10, nu=nu)

    class LavishConsema(ConsemaMethod):
        title = "Lavish Consema"

        def lambda_hat(self, curves, *, alpha, nu=None):
            return super().lambda_hat(curves, alpha=alpha, nu=nu) + 3

    registered("lavish-aps", LavishAPS)
    registered("lavish-consema", LavishConsema)
    res = build_report(
        open_store(big_binary_store),
        ("aps", "lavish-aps", "lavish-consema"),
        (0.5,),
        nu=0.9,
        splits=2,
        n_cal=40,
        seed=1,
    )
    exact = _entry(res, "aps", 0.5)["guarantee"]
    lavish = _entry(res, "lavish-aps", 0.5)["guarantee"]
    consema = _entry(res, "lavish-consema", 0.5)["guarantee"]
    assert all(p["ties"] == 0 and p["two_sided"] is True and p["high"] < 1.0 for p in exact["per_split"])
    assert exact["splits_outside"] == 0
    assert all(p["two_sided"] is True for p in lavish["per_split"])  # a too-large λ̂ is not a tie
    assert [p["outside"] for p in lavish["per_split"]] == ["above", "above"]
    assert all(p["two_sided"] is False and p["high"] == 1.0 for p in consema["per_split"])
    assert consema["splits_outside"] == 0


# ------------------------------------------------------------------------------------------ conditional


def _tertiles_by_hand(values: dict[int, float]) -> dict[int, int | None]:
    """Rank by (value, index); three groups, the first ``len % 3`` of them one image larger."""
    defined = sorted((v, i) for i, v in values.items() if np.isfinite(v))
    out: dict[int, int | None] = {i: None for i in values}
    sizes = [len(defined) // 3 + (1 if g < len(defined) % 3 else 0) for g in range(3)]
    for rank, (_, i) in enumerate(defined):
        out[i] = 0 if rank < sizes[0] else (1 if rank < sizes[0] + sizes[1] else 2)
    return out


@pytest.mark.parametrize(
    ("results_name", "method", "fg"), [("binary_results", "crc", 1), ("multiclass_results", "aps", None)]
)
def test_tertile_tables_by_hand(request, results_name, method, fg):
    """Sizes, base Dice, tertiles and per-tertile coverage recomputed from the store by hand."""
    res = request.getfixturevalue(results_name)
    store = open_store(request.getfixturevalue(results_name.replace("results", "store")))
    tested = sorted({i for s in res["splits"] for i in s["test"]})
    size, dice = {}, {}
    for i in tested:
        label, samples = store.label(i), store.samples(i).astype(np.float64)
        if fg is None:
            truth, pred = label != 0, (1.0 - samples[:, 0].mean(axis=0)) >= 0.5
        else:
            truth, pred = label == fg, samples[:, fg].mean(axis=0) >= 0.5
        size[i] = float(truth.sum())
        denom = pred.sum() + truth.sum()
        dice[i] = 2 * np.sum(pred & truth) / denom if denom else np.nan
    key = "coverage" if method == "crc" else "covered"
    rows = {(r["by"], r["alpha"]): r for r in res["conditional"]["rows"] if r["method"] == method}
    for by, values in (("size", size), ("dice", dice)):
        group = _tertiles_by_hand(values)
        for alpha in ALPHAS:
            row = rows[(by, alpha)]
            assert row["foreground"] == ("all structures" if fg is None else f"class {fg}")
            runs = [
                r
                for r in res["runs"]
                if r["method"] == method and r["alpha"] == alpha and r["lambda_hat"] is not None
            ]
            assert sum(c["n"] for c in row["cells"]) + row["undefined"]["n"] == len(runs) * (N_IMAGES - N_CAL)
            assert row["n_total"] == len(runs) * (N_IMAGES - N_CAL)
            for t, cell in enumerate(row["cells"]):
                pairs = [(p["index"], p[key]) for r in runs for p in r["per_image"] if group[p["index"]] == t]
                assert cell["n"] == len(pairs)
                assert cell["n_images"] == len({i for i, _ in pairs})
                vals = [v for _, v in pairs if v is not None and np.isfinite(v)]
                assert cell["realised"] == pytest.approx(np.mean(vals), abs=1e-12)
                members = [values[i] for i in tested if group[i] == t]
                assert cell["range"] == pytest.approx([min(members), max(members)])


def test_tertile_counts_add_up_to_the_test_images(binary_results, multiclass_results):
    for res in (binary_results, multiclass_results):
        tested = {i for s in res["splits"] for i in s["test"]}
        for fg in res["conditional"]["foregrounds"].values():
            assert set(fg["images"]) == tested
            for by in ("size", "dice"):
                groups = list(fg[f"{by}_tertiles"]["group"].values())
                counts = [groups.count(t) for t in range(3)]
                assert sum(counts) + groups.count(None) == len(tested)
                assert max(counts) - min(counts) <= 1
        for row in res["conditional"]["rows"]:
            assert sum(c["n"] for c in row["cells"]) + row["undefined"]["n"] == row["n_splits"] * (
                N_IMAGES - N_CAL
            )


# ------------------------------------------------------------------------------------------ no name switch


def test_a_new_method_class_shows_up_with_its_title_and_kind(binary_store, tmp_path, registered):
    """The report reads title, colour, guarantee kind and binary-ness from the class, never the name."""

    class Frugal(CRCMethod):
        title = "Frugal threshold"
        colour = "#123456"

    class Dilator(ConsemaMethod):
        title = "Dilate-o-matic"
        colour = "#654321"

    registered("zz-frugal", Frugal)
    registered("zz-dilator", Dilator)
    res = build_report(
        open_store(binary_store), ("zz-frugal", "zz-dilator"), ALPHAS, splits=1, n_cal=N_CAL, seed=SEED
    )
    info = res["settings"]["methods_info"]
    assert info["zz-frugal"]["title"] == "Frugal threshold" and info["zz-frugal"]["colour"] == "#123456"
    assert info["zz-frugal"]["risk"] == "fnr" and info["zz-dilator"]["risk"] == "miscoverage"
    assert info["zz-frugal"]["binary"] and info["zz-dilator"]["binary"]
    assert _entry(res, "zz-frugal", 0.1)["guarantee"]["kind"] == "fnr"
    assert _entry(res, "zz-dilator", 0.1)["guarantee"]["per_split"][0]["two_sided"] is False
    assert res["reference"] is not None  # binary methods: the model row of Table 1
    page = (write_report(res, tmp_path / "rep") / "index.html").read_text(encoding="utf-8")
    for text in ("Frugal threshold", "Dilate-o-matic", "Model (no CP)"):
        assert text in page
    assert "zz-frugal" not in page and "zz-dilator" not in page  # the registered names are never shown
    table1 = page.split("Table 1 layout")[1].split("</table>")[0]
    assert "Frugal threshold" in table1 and "Dilate-o-matic" in table1


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
    assert method_params(methods, [("device", "cpu")]) == {m: {"device": "cpu"} for m in methods}
    with pytest.raises(ConformalError, match="tau"):
        method_params(("crc", "rwcp"), [("tau", 0.9)])
    with pytest.raises(ConformalError, match="aps"):
        method_params(methods, [("aps.nu", 0.9)])
    with pytest.raises(ConformalError, match="no parameter 'nope'"):
        method_params(methods, [("crc.nope", 1)])


def test_report_k_goes_to_the_member_sampling_methods_only(multiclass_store):
    """``k`` is CONSIGN's K; RW-CP's neighbours keep their own value."""
    from napari_conformal.report.plan import build_methods

    objs = build_methods(("consign", "rwcp"), 0.8, 3, {"rwcp": {"features": "multiscale"}})
    assert objs["consign"].k == 3 and objs["rwcp"].k == 20


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
        ({"k": 3}, "k .principal components. does not apply"),
        ({"diversity_alphas": (0.3,)}, "not one of"),
        ({"splits": 0}, "splits"),
        ({"false_alarm": 0.0}, "false_alarm"),
        ({"params": {"rwcp": {"features": "multiscale"}}}, "not in the report"),
        ({"params": {"crc": {"fg_class": 5}}}, "fg_class"),
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
    assert {"coverage.png", "lambda_hat.png", "conditional.png"} <= set(names)
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(n.startswith("diversity") for n in names)  # no sampling method
    for label in (
        "Model (no CP)",
        "CRC",
        "Consema",
        "RW-CP",
        "not independent",
        "Where is the guarantee thin",
    ):
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


def test_matplotlib_only_where_figures_are_drawn():
    """Importing the report (and computing one) does not import matplotlib; only the figures do."""
    import subprocess
    import sys

    code = (
        "import sys, napari_conformal.report, napari_conformal.report.html;print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "False"
    source = {p.name: p.read_text() for p in (Path(napari_conformal_report_dir())).glob("*.py")}
    assert [n for n, text in source.items() if "import matplotlib" in text] == ["figures.py"]


def napari_conformal_report_dir() -> Path:
    import napari_conformal.report

    return Path(napari_conformal.report.__file__).parent


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
    import sys

    from napari_conformal._terminal import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar("report", quiet=False, width=10)
    bar(5, 10)
    bar(10, 10)
    err = capsys.readouterr().err
    # each redraw returns to the line start and pads with spaces over a longer previous line
    assert "[#####.....]  50% 5/10" in err and err.endswith("\n")
    assert err.rstrip().endswith("[##########] 100% 10/10")


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
    argv = ["report", str(tmp_path / "absent.zarr"), "--methods", "crc", "--alpha", "0.2", "--out", str(out)]
    assert main(argv) == 2
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


def test_consign_in_the_report_equals_calibrate_then_evaluate(multiclass_store):
    """CONSIGN: one batched calibration per split, extended to the other α's box; as the API gives it."""
    store = open_store(multiclass_store)
    res = build_report(
        store,
        ("consign",),
        (0.3, 0.2),
        nu=0.6,
        k=3,
        splits=1,
        n_cal=N_CAL,
        seed=SEED,
        n_samples=(5,),
        diversity_alphas=(0.2,),
    )
    cal, test = res["splits"][0]["cal"], res["splits"][0]["test"]
    for alpha, ns in ((0.3, ()), (0.2, (5,))):
        run = _run(res, "consign", alpha, 0)
        calib = calibrate(store, "consign", alpha=alpha, nu=0.6, k=3, cal_indices=cal)
        assert run["lambda_hat"] == calib.lambda_hat
        metrics = evaluate(store, calib, test_indices=test, n_samples=ns, seed=SEED)
        assert _same(run["per_image"], metrics["per_image"])
    assert (
        _entry(res, "consign", 0.2)["guarantee"]["per_split"][0]["two_sided"] is False
    )  # conservative search


def test_settings_record_parameters_and_the_guarantee_at_every_alpha(binary_results):
    """Consema's τ is unset (τ = 1 − α): the parameters say so, and each α's guarantee states its τ."""
    from napari_conformal.report.html import _params_text

    params = binary_results["settings"]["params"]
    assert params["consema"]["tau"] is None
    assert params["rwcp"]["features"] == RWCP["features"]
    assert "tau=auto" in _params_text(params["consema"])
    for alpha in ALPHAS:
        text = _entry(binary_results, "consema", alpha)["guarantee_text"]
        assert f"at least {100 * (1 - alpha):g} % of the structure" in text, text
