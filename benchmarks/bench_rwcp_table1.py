"""RW-CP's Table 1 on real stores: base model, CRC, Consema, pixel-wise APS and RW-CP over repeated splits.

One command regenerates the Table-1 part of ``docs/benchmarks_rwcp.md`` (between the
``<!-- table1:begin -->`` and ``<!-- table1:end -->`` markers; the timing sections written by
``benchmarks/bench_rwcp.py`` are kept), its figure ``docs/images/rwcp_table1_dice.png`` and the raw
numbers ``docs/benchmarks_rwcp_table1.json``::

    python benchmarks/bench_rwcp_table1.py                 # 4 stores, 10 splits, α ∈ {0.2, 0.1, 0.05}
    python benchmarks/bench_rwcp_table1.py --quick         # smoke test: 2 splits, 2 stores, nothing written

Stores: the demo stores built from the packaged real data (docs/demo_data.md), foreground = class 1.
Splits are **by group** (a hippocampus volume, a brain slice, a nuclei tile): the calibration part
takes as many groups as the store's own demo split, the test part the rest, so no volume is in both.

Per image, everything label-free is computed once (the methods' ``prepare``: S⁽⁰⁾, Consema's
dilation distances, the pixel-wise scores, RW-CP's features and its diffused map at every candidate
(k, β, n_step) of the tuning grid); per split only the cheap steps run: λ̂ from the calibration
curves and the sets and metrics of the test images. RW-CP (tuned) runs the product's tuning
(:mod:`napari_conformal.core.rwcp.tuning`: :func:`tuning_split`, :func:`score_candidates`,
:func:`best_candidate`) on the precomputed maps; once per store the script checks that
``api.calibrate(..., tune="dice")`` on the first split gives the same choice and λ̂.

Methods:

* **base model**: Ŷ = S⁽⁰⁾ ≥ 0.5 (its coverage is its recall);
* **CRC** and **Consema** (τ = 1 − α, the cross footprint);
* **APS** (pixel-wise, ν = 0.9): the set of the structure is ``{p : class 1 ∈ C(p)}``; its guarantee
  is about the label-wise accuracy of the whole set, so its coverage is only comparable, not bound;
* **RW-CP (paper)**: k = 20, β = 50, n_step = 10 on every calibration image;
* **RW-CP (tuned)**: ``tune="dice"`` — k, β, n_step chosen on a seeded part of the calibration
  images, λ̂ on the rest (docs/algorithms.md#rw-cp-tuning).

CONSIGN is not in the table: its set is a set of segmentations (members), not one pixel mask, so
coverage, stretch and DSC of a mask do not apply to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_conformal.core.methods.base import make_method  # noqa: E402
from napari_conformal.core.methods.threshold import ThresholdPrepared  # noqa: E402
from napari_conformal.core.metrics.segmentation import segmentation_metrics  # noqa: E402
from napari_conformal.core.quantiles import ThresholdRiskCurve, adjusted_alpha  # noqa: E402
from napari_conformal.core.rwcp.features import make_extractor  # noqa: E402
from napari_conformal.core.rwcp.tuning import (  # noqa: E402
    Candidate,
    best_candidate,
    candidate_maps,
    candidate_score,
    check_grid,
    grid_candidates,
    score_candidates,
    tuning_split,
)

ALPHAS = (0.2, 0.1, 0.05)
STORES = ("hippocampus-2d", "hippocampus-2d-fewshot", "brain-mri", "nuclei")
METRICS = ("coverage", "stretch", "dice", "assd", "hd95")
NU = 0.9
BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
#: feature extractors compared on the calibration data (name → RW-CP options)
EXTRACTORS = {
    "EfficientNet-Lite0, native slice": {"features": "efficientnet-lite0", "input_scale": 1.0},
    "EfficientNet-Lite0, enlarged (default)": {"features": "efficientnet-lite0"},
    "segmentation model's own layers": {"features": "model"},
    "multiscale (weight-free)": {"features": "multiscale"},
}
DEFAULT_EXTRACTOR = "EfficientNet-Lite0, enlarged (default)"


def tune_fraction_for(n_cal: int) -> float:
    """The tuning share: RW-CP's default ``tune_fraction`` (a quarter of the calibration images)."""
    from napari_conformal.core.methods.base import method_class

    return float(next(o.default for o in method_class("rwcp").options if o.name == "tune_fraction"))


# ----------------------------------------------------------------------------------------- data


class StoreData:
    """Everything label-free of one store, computed once, and the labels."""

    def __init__(self, name: str, extractors: Sequence[str], log: Any) -> None:
        from napari_conformal.demo_data import build_demo_store
        from napari_conformal.io.store import open_store

        self.name = name
        self.path = build_demo_store(name, device="cpu")
        store = open_store(self.path)
        self.store = store
        self.n = store.n_images
        self.spacing = store.spacing
        self.groups = np.asarray(store.attrs["demo"]["source_ids"])
        cal = store.attrs["split"]["calibration"]
        self.n_cal_groups = len(set(self.groups[cal].tolist()))
        self.images = [store.image(i) for i in range(self.n)]
        self.labels = [store.label(i) for i in range(self.n)]
        self.truth = [lab == 1 for lab in self.labels]
        t0 = time.perf_counter()
        self.methods = {
            "crc": make_method("crc"),
            "consema": make_method("consema"),
            "aps": make_method("aps"),
            "rwcp": make_method("rwcp", device="cpu"),
        }
        self.prepared: dict[str, list[Any]] = {k: [] for k in self.methods}
        self.curves: dict[str, list[Any]] = {k: [] for k in self.methods}
        self.base: list[np.ndarray] = []
        default = self.methods["rwcp"]
        self.grid = check_grid(None)
        self.candidates = grid_candidates(self.grid, Candidate(default.n_step, default.k, default.rw_beta))
        self.maps: dict[str, list[np.ndarray]] = {e: [] for e in extractors}
        extractor_objs = {e: self._extractor(e) for e in extractors}
        default_ext = extractor_objs.get(DEFAULT_EXTRACTOR) or self._extractor(DEFAULT_EXTRACTOR)
        for i in range(self.n):
            samples = store.samples(i)
            fmaps = {e: ext(self.images[i], device="cpu") for e, ext in extractor_objs.items()}
            default_fmap = fmaps.get(DEFAULT_EXTRACTOR) or default_ext(self.images[i], device="cpu")
            for key, m in self.methods.items():
                kw: dict[str, Any] = {"stored_dtype": store.samples_dtype}
                if key == "rwcp":
                    kw["features"] = default_fmap  # the same extractor as make_method("rwcp"): computed once
                p = m.prepare(self.images[i], samples, **kw)
                self.prepared[key].append(p)
                self.curves[key].append(
                    m.curve(p, self.labels[i], alpha=0.1, nu=NU if key == "aps" else None)
                )
            base = self.prepared["crc"][i].base
            self.base.append(base)
            for e, fmap in fmaps.items():
                self.maps[e].append(candidate_maps(fmap, base, self.candidates, device="cpu"))
            if (i + 1) % 50 == 0 or i + 1 == self.n:
                log(f"  {name}: {i + 1}/{self.n} images prepared ({time.perf_counter() - t0:.0f} s)")
        self.prepare_seconds = time.perf_counter() - t0

    def _extractor(self, label: str) -> Any:
        opts = dict(EXTRACTORS[label])
        if opts["features"] == "model":
            return make_extractor("model", feature_model=f"demo:{self.name}")
        return make_method("rwcp", device="cpu", **opts).extractor

    def splits(self, reps: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
        """``reps`` random by-group splits (calibration, test), image indices ascending."""
        unique = np.unique(self.groups)
        out = []
        for r in range(reps):
            perm = np.random.default_rng(seed + r).permutation(unique)
            cal_groups = set(perm[: self.n_cal_groups].tolist())
            cal = [i for i in range(self.n) if self.groups[i] in cal_groups]
            test = [i for i in range(self.n) if self.groups[i] not in cal_groups]
            out.append((cal, test))
        return out


# ----------------------------------------------------------------------------------------- one split


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}


def _threshold_metrics(data: StoreData, score: np.ndarray, i: int, lam: float) -> dict[str, float]:
    p = ThresholdPrepared(base=data.base[i], score=score, n_labels=3)
    pred = (1.0 - score) <= lam
    return segmentation_metrics(pred, data.truth[i], reference=p.base >= 0.5, spacing=data.spacing)


def _score_map(data: StoreData, extractor: str, i: int, j: int) -> np.ndarray:
    return candidate_score(data.maps[extractor][i], j, data.candidates[j], data.base[i])


def tuned_rwcp(
    data: StoreData, extractor: str, cal: list[int], test: list[int], alpha: float, *, metrics: bool = True
) -> dict[str, Any]:
    """RW-CP with tune="dice" on one split, from the precomputed candidate maps."""
    fraction = tune_fraction_for(len(cal))
    tune_pos, lam_pos = tuning_split(len(cal), fraction, alpha, seed=0)
    tune = [cal[j] for j in tune_pos]
    lam_part = [cal[j] for j in lam_pos]
    level = adjusted_alpha(len(lam_part), alpha)
    dice, _ = score_candidates(
        [data.maps[extractor][i] for i in tune],
        [data.truth[i] for i in tune],
        level,
        data.candidates,
        [data.base[i] for i in tune],
    )
    j = best_candidate(dice)
    scores = {i: _score_map(data, extractor, i, j) for i in lam_part + test}
    curve = ThresholdRiskCurve.from_nonconformity([1.0 - scores[i][data.truth[i]] for i in lam_part])
    lam = curve.lambda_hat(alpha)
    out: dict[str, Any] = {
        "chosen": data.candidates[j],
        "tune_dice": float(dice[j]),
        "lambda": lam,
        "n_lambda": len(lam_part),
    }
    if metrics:
        out["metrics"] = _mean_metrics([_threshold_metrics(data, scores[i], i, lam) for i in test])
    else:
        out["test_dice"] = float(np.mean([_threshold_metrics(data, scores[i], i, lam)["dice"] for i in test]))
    return out


def run_split(data: StoreData, cal: list[int], test: list[int], alpha: float) -> dict[str, dict[str, float]]:
    """Mean test metrics of every method at α on one split."""
    out: dict[str, dict[str, float]] = {}
    out["base"] = _mean_metrics(
        [
            segmentation_metrics(
                data.base[i] >= 0.5, data.truth[i], reference=data.base[i] >= 0.5, spacing=data.spacing
            )
            for i in test
        ]
    )
    for key in ("crc", "consema", "rwcp"):
        m = data.methods[key]
        lam = m.lambda_hat([data.curves[key][i] for i in cal], alpha=alpha)
        rows = [
            m.evaluate(data.prepared[key][i], data.labels[i], lam, alpha=alpha, spacing=data.spacing)
            for i in test
        ]
        out[key] = _mean_metrics(rows)
    aps = data.methods["aps"]
    lam = aps.lambda_hat([data.curves["aps"][i] for i in cal], alpha=alpha, nu=NU)
    rows = []
    for i in test:
        fg = aps.predict(data.prepared["aps"][i], lam)[1]
        rows.append(
            segmentation_metrics(fg, data.truth[i], reference=data.base[i] >= 0.5, spacing=data.spacing)
        )
    out["aps"] = _mean_metrics(rows)
    tuned = tuned_rwcp(data, DEFAULT_EXTRACTOR, cal, test, alpha)
    out["rwcp_tuned"] = tuned["metrics"]
    out["rwcp_tuned_choice"] = {**tuned["chosen"].as_dict(), "n_lambda": tuned["n_lambda"]}  # type: ignore[dict-item]
    return out


def check_against_api(data: StoreData, cal: list[int], alpha: float) -> dict[str, Any]:
    """``api.calibrate(tune="dice")`` must make the same choice and λ̂ as the shortcut."""
    from napari_conformal.api import calibrate

    fraction = tune_fraction_for(len(cal))
    calib = calibrate(
        data.store, "rwcp", alpha=alpha, cal_indices=cal, device="cpu", tune="dice", tune_fraction=fraction
    )
    short = tuned_rwcp(data, DEFAULT_EXTRACTOR, cal, [], alpha, metrics=False)
    chosen = short["chosen"].as_dict()
    api_choice = {k: calib.params[k] for k in chosen}
    same_choice = api_choice == chosen
    # float16-free path both ways; the map of the API is float64 from float32 grid values
    same_lambda = math.isclose(calib.lambda_hat, short["lambda"], rel_tol=0, abs_tol=1e-6)
    if not (same_choice and same_lambda):
        raise SystemExit(
            f"{data.name}: the benchmark's tuning disagrees with api.calibrate: {chosen} λ̂={short['lambda']} vs "
            f"{api_choice} λ̂={calib.lambda_hat}"
        )
    return {
        "alpha": alpha,
        "chosen": chosen,
        "lambda_hat": calib.lambda_hat,
        "tune_indices": len(calib.tune_indices),
    }


# ----------------------------------------------------------------------------------------- output

LABELS = {
    "base": "base model (Ŷ = S⁽⁰⁾ ≥ 0.5)",
    "crc": "CRC",
    "consema": "Consema (τ = 1 − α)",
    "aps": "APS, pixel-wise (ν = 0.9)",
    "rwcp": "RW-CP (paper: k 20, β 50, 10 steps)",
    "rwcp_tuned": "RW-CP (tuned)",
}


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v):.{digits}f}"


def table_markdown(name: str, results: dict[float, list[dict[str, Any]]], unit: str) -> list[str]:
    lines = [
        f"| α | method | coverage | stretch | DSC | ASSD ({unit}) | HD95 ({unit}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in ALPHAS:
        runs = results[a]
        keys = (
            ["base", "crc", "consema", "aps", "rwcp", "rwcp_tuned"]
            if a == ALPHAS[0]
            else ["crc", "consema", "aps", "rwcp", "rwcp_tuned"]
        )
        for key in keys:
            row = [_fmt([r[key][m] for r in runs], 3 if m in ("coverage", "dice") else 2) for m in METRICS]
            if key == "base":
                row[1] = "–"
            lines.append(f"| {'–' if key == 'base' else a} | {LABELS[key]} | " + " | ".join(row) + " |")
    return lines


def plot(results: dict[str, dict[float, list[dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), sharey=False)
    axes = np.atleast_1d(axes)
    colours = {
        "crc": "#00bfff",
        "consema": "#ff4fa3",
        "aps": "#7cfc00",
        "rwcp": "#b8860b",
        "rwcp_tuned": "#ffa500",
    }
    for ax, name in zip(axes, names, strict=True):
        x = [1 - a for a in ALPHAS]
        for key, colour in colours.items():
            mean = [np.mean([r[key]["dice"] for r in results[name][a]]) for a in ALPHAS]
            std = [np.std([r[key]["dice"] for r in results[name][a]]) for a in ALPHAS]
            ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=2, color=colour, label=LABELS[key])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("1 − α")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test DSC (mean ± std over splits)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _band(n: int, alpha: float) -> tuple[float, float]:
    """CRC's band of the expected coverage 1 − FNR: [1 − α, 1 − α + 2/(n+1)] (the upper end for i.i.d. losses)."""
    return 1 - alpha, 1 - alpha + 2 / (n + 1)


def write_doc(doc: Path, section: str) -> None:
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# RW-CP\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + BEGIN + "\n" + section + "\n" + END + tail
    else:
        text = text.rstrip() + "\n\n" + BEGIN + "\n" + section + "\n" + END + "\n"
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, doc)


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="2 splits of the first 2 stores; nothing written"
    )
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks_rwcp.md")
    parser.add_argument(
        "--from-json", type=Path, help="re-render the section and figure from a saved results file"
    )
    args = parser.parse_args(argv)
    raw_path = REPO / "docs" / "benchmarks_rwcp_table1.json"
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        results = {n: {float(a): v for a, v in r.items()} for n, r in raw["results"].items()}
        features = {
            n: {e: {float(a): v for a, v in r.items()} for e, r in per.items()}
            for n, per in raw["features"].items()
        }
        meta = raw["meta"]
        section = render(
            results, features, raw["info"], meta["splits"], meta["seconds"], meta["load"][0], meta["load"][1]
        )
        write_doc(args.doc, section)
        plot(results, REPO / "docs" / "images" / "rwcp_table1_dice.png")
        return 0
    torch.set_num_threads(args.threads)
    stores = [s for s in args.stores.split(",") if s]
    reps = args.splits
    extractors = list(EXTRACTORS)
    if args.quick:
        stores, reps, extractors = stores[:2], 2, [DEFAULT_EXTRACTOR]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    results: dict[str, dict[float, list[dict[str, Any]]]] = {}
    features: dict[str, dict[str, dict[float, list[dict[str, Any]]]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in stores:
        log(f"{name}: preparing")
        data = StoreData(name, extractors, log)
        splits = data.splits(reps)
        n_cal = [len(c) for c, _ in splits]
        info[name] = {
            "images": data.n,
            "groups": len(np.unique(data.groups)),
            "cal_groups": data.n_cal_groups,
            "n_cal": [min(n_cal), max(n_cal)],
            "tune_fraction": [
                round(tune_fraction_for(min(n_cal)), 3),
                round(tune_fraction_for(max(n_cal)), 3),
            ],
            "shape": list(data.truth[0].shape),
            "spacing": list(data.spacing),
            "prepare_seconds": round(data.prepare_seconds, 1),
            "check": check_against_api(data, splits[0][0], 0.1),
        }
        results[name] = {a: [] for a in ALPHAS}
        features[name] = {e: {a: [] for a in ALPHAS} for e in extractors}
        for r, (cal, test) in enumerate(splits):
            for a in ALPHAS:
                results[name][a].append(run_split(data, cal, test, a))
                for e in extractors:
                    t = tuned_rwcp(data, e, cal, test, a, metrics=False)
                    features[name][e][a].append(
                        {
                            "tune_dice": t["tune_dice"],
                            "test_dice": t["test_dice"],
                            "chosen": t["chosen"].as_dict(),
                        }
                    )
            log(f"  {name}: split {r + 1}/{reps}")
        del data
    seconds = time.perf_counter() - t_start
    section = render(results, features, info, reps, seconds, load0, os.getloadavg()[0])
    if args.quick:
        print(section)
        return 0
    write_doc(args.doc, section)
    plot(results, REPO / "docs" / "images" / "rwcp_table1_dice.png")
    raw = {
        "results": results,
        "features": features,
        "info": info,
        "meta": {"splits": reps, "seconds": seconds, "load": [load0, os.getloadavg()[0]]},
    }
    raw_path.write_text(
        json.dumps(raw, indent=1, default=lambda o: o.as_dict() if hasattr(o, "as_dict") else str(o)) + "\n"
    )
    log(f"wrote {args.doc} in {seconds:.0f} s")
    return 0


def render(results, features, info, reps, seconds, load0, load1) -> str:
    lines = [
        "## Table 1 on real data",
        "",
        "Regenerate (this section, `docs/images/rwcp_table1_dice.png` and `docs/benchmarks_rwcp_table1.json`): "
        "`python benchmarks/bench_rwcp_table1.py` "
        f"({seconds / 60:.0f} min on this machine with one torch thread, load average {load0:.1f} → {load1:.1f}).",
        "",
        f"Mean ± std over {reps} random splits **by group** (a hippocampus volume, a brain slice, a nuclei tile: no "
        "group is in both the calibration and the test part), of the per-split mean over the test images. "
        "Foreground = class 1 (anterior hippocampus, white matter, nucleus). Coverage = mean 1 − FNR of the test "
        "images (for the base model: its recall); stretch = |C| / |Ŷ|; DSC, ASSD and HD95 of the set against the "
        "ground truth, distances in mm (hippocampus, brain) or pixels (nuclei). RW-CP uses EfficientNet-Lite0 on "
        "the enlarged image (its default, docs/algorithms.md#features); *tuned* chooses k, β and n_step for Dice "
        "on part of the calibration images and computes λ̂ on the rest (docs/algorithms.md#rw-cp-tuning).",
        "",
        "| store | images (groups) | calibration images per split | tuning share | λ̂ images of RW-CP (tuned) |",
        "|---|---|---|---|---|",
    ]
    for name, d in info.items():
        n0, n1 = d["n_cal"]
        f0 = d["tune_fraction"][0]
        lines.append(
            f"| `{name}` | {d['images']} ({d['groups']}) | {n0}–{n1} ({d['cal_groups']} groups) | {f0:g} | "
            f"{n0 - max(1, math.floor(f0 * n0))}–{n1 - max(1, math.floor(d['tune_fraction'][1] * n1))} |"
        )
    lines += [
        "",
        'Each store\'s tuned RW-CP was checked against `api.calibrate(store, "rwcp", tune="dice", …)` on its '
        "first split at α = 0.1 (same choice, same λ̂): "
        + "; ".join(
            f"`{n}` k = {d['check']['chosen']['k']}, β = {d['check']['chosen']['rw_beta']:g}, "
            f"n_step = {d['check']['chosen']['n_step']}"
            for n, d in info.items()
        )
        + ".",
        "",
        "![Test DSC against 1 − α](images/rwcp_table1_dice.png)",
        "",
    ]
    for name, res in results.items():
        unit = "px" if name == "nuclei" else "mm"
        lines += [f"### `{name}`", ""]
        lines += table_markdown(name, res, unit)
        choices = {}
        for a in ALPHAS:
            for r in res[a]:
                c = r["rwcp_tuned_choice"]
                choices.setdefault(a, []).append(f"({c['k']}, {c['rw_beta']:g}, {c['n_step']})")
        lines += [
            "",
            "RW-CP (tuned) chose (k, β, n_step): "
            + "; ".join(
                f"α = {a}: "
                + ", ".join(
                    f"{v} ×{choices[a].count(v)}" for v in sorted(set(choices[a]), key=choices[a].index)
                )
                for a in ALPHAS
            )
            + ".",
        ]
        rows = []
        for a in ALPHAS:
            n_min = info[name]["n_cal"][0]
            lo, hi = _band(n_min, a)
            cells = []
            for k in ("crc", "rwcp", "rwcp_tuned"):
                v = np.asarray([r[k]["coverage"] for r in res[a]])
                se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
                flag = " ✗" if v.mean() < lo - 2 * se else ""
                cells.append(f"{v.mean():.3f} ± {se:.3f}{flag}")
            rows.append(f"| {a} | [{lo:.3f}, {hi:.3f}] | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Mean test coverage over the splits ± its standard error, against CRC's band "
            "[1 − α, 1 − α + 2/(n + 1)] of the expected coverage (n = the calibration images; the upper end "
            "holds for i.i.d. losses); ✗ marks a mean more than two standard errors below 1 − α:",
            "",
            "| α | band | CRC | RW-CP (paper) | RW-CP (tuned) |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    lines += [
        "### Which features, on the calibration data",
        "",
        "RW-CP (tuned) with each extractor: the tuning images' mean Dice of the chosen setting (**calibration "
        "data**, what the tuning sees) and the test DSC that follows, mean over the splits, at α = 0.1 and 0.05.",
        "",
        "| store | extractor | tuning DSC α = 0.1 | test DSC α = 0.1 | tuning DSC α = 0.05 | test DSC α = 0.05 | most chosen n_step (α = 0.1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per in features.items():
        for e, res in per.items():
            cells = []
            for a in (0.1, 0.05):
                cells.append(f"{np.mean([r['tune_dice'] for r in res[a]]):.3f}")
                cells.append(f"{np.mean([r['test_dice'] for r in res[a]]):.3f}")
            steps = [r["chosen"]["n_step"] for r in res[0.1]]
            common = max(set(steps), key=steps.count)
            lines.append(f"| `{name}` | {e} | " + " | ".join(cells) + f" | {common} |")
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical cores shared with other jobs, Python "
        f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
