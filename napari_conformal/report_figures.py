"""The HTML page and PNG figures of a report (``napari-conformal report``).

:func:`render_report` turns the ``results.json`` document of
:func:`napari_conformal.report.iter_report` into files in a directory:

``coverage.png``
    Realised coverage of every split against the nominal ``1 − α``, one panel per method, with
    each split's acceptance band (lower end; a correct method falls below it with probability at
    most the stated false-alarm rate, for that split taken alone).
``lambda_hat.png``
    λ̂ of every split, one panel per method, one line per α.
``diversity_alpha_<α>.png``
    Chao1, SEC and sample correlation against the number N of sampled members (the CONSIGN
    paper's Figures 2–4), one line per sampling method, mean ± std over splits.
``index.html``
    The page: settings, the guarantee table, the RW-CP paper's Table 1 layout (coverage,
    stretch, DSC, ASSD, HD95 for the binary methods at each α, mean ± std over splits), a table of
    the set-valued methods, the figures and notes on how to read them.

matplotlib is imported inside the functions with the non-interactive Agg backend, so importing
this module is cheap and no display is needed.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_conformal.errors import ConformalError

__all__ = ["alpha_tag", "render_report", "table1_rows"]

#: Table 1 columns: (key, heading, better) with better = "max" / "min" / None (not ranked)
TABLE1_COLUMNS = (
    ("coverage", "Coverage", None),
    ("stretch", "Stretch", "min"),
    ("dice", "DSC", "max"),
    ("assd", "ASSD", "min"),
    ("hd95", "HD95", "min"),
)
#: set-valued (sampling) methods table columns
SET_COLUMNS = (
    (("covered",), "Covered"),
    (("accuracy_in", "best_accuracy"), "Best-member accuracy"),
    (("mean_set_size",), "Mean labels per pixel"),
    (("log10_volume",), "log10 |set|"),
    (("uncertain_fraction",), "Uncertain pixels"),
    (("dice",), "Dice of the centre member"),
)
_DISPLAY = {
    "crc": "CRC",
    "consema": "Consema",
    "rwcp": "RW-CP",
    "consign": "CONSIGN",
    "aps": "Pixel-wise APS",
    "raps": "Pixel-wise RAPS",
    "lac": "Pixel-wise LAC",
    "sacp": "SACP",
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConformalError("the report figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def display_name(method: str) -> str:
    """Name of a method as the papers write it (``rwcp`` → ``RW-CP``)."""
    return _DISPLAY.get(method, method)


def alpha_tag(alpha: float) -> str:
    """File-name-safe text for α (``0.05`` → ``0p05``)."""
    return f"{alpha:g}".replace(".", "p").replace("-", "m")


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` with ``digits`` significant digits (– for missing)."""
    if not stat:
        return "–"
    mean, std = _num(stat.get("mean")), _num(stat.get("std"))
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}g}"
    if math.isfinite(std) and stat.get("n", 0) > 1:
        text += f" ± {std:.2g}"
    return text


def _summary_by_method(doc: Mapping[str, Any]) -> dict[str, dict[float, Mapping[str, Any]]]:
    out: dict[str, dict[float, Mapping[str, Any]]] = {}
    for entry in doc["summary"]:
        out.setdefault(entry["method"], {})[float(entry["alpha"])] = entry
    return out


# ----------------------------------------------------------------------------------------- figures


def _grid(plt: Any, n_panels: int, width: float = 3.6, height: float = 3.2) -> tuple[Any, list[Any]]:
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def figure_coverage(doc: Mapping[str, Any], path: Path) -> None:
    """Realised coverage per split against 1 − α, with the acceptance bands.

    Split-CP methods: one grey bar per split (that split's exact band). FNR methods: one grey bar
    for the mean over splits (the Chernoff–Hoeffding band for R repetitions; a single split's band
    is vacuous). Dots: splits (red when below their band); diamond: mean over splits.
    """
    plt = _pyplot()
    methods = doc["settings"]["methods"]
    alphas = sorted(doc["settings"]["alphas"], reverse=True)
    summary = _summary_by_method(doc)
    xs = [1.0 - a for a in alphas]
    step = min((b - a for a, b in itertools.pairwise(xs)), default=0.1)
    fig, axes = _grid(plt, len(methods))
    for ax, name in zip(axes, methods, strict=True):
        lows = []
        kind = "split"
        for alpha, x0 in zip(alphas, xs, strict=True):
            g = summary[name][alpha]["guarantee"]
            kind = g["kind"]
            points = [p for p in g["per_split"] if p["realised"] is not None]
            offsets = [
                (j - (len(points) - 1) / 2) * 0.5 * step / max(len(points), 1) for j in range(len(points))
            ]
            if kind == "risk" and g.get("mean_low") is not None and math.isfinite(_num(g["mean_low"])):
                ax.bar(
                    x0, 1.0 - g["mean_low"], bottom=g["mean_low"], width=0.6 * step, color="0.88", zorder=0
                )
                lows.append(g["mean_low"])
            for dx, p in zip(offsets, points, strict=True):
                if kind == "split":
                    ax.plot(
                        [x0 + dx] * 2, [p["low"], 1.0], color="0.75", lw=3, solid_capstyle="butt", zorder=1
                    )
                    lows.append(p["low"])
                below = p.get("inside") is False
                ax.plot(x0 + dx, p["realised"], "o", ms=4, color="tab:red" if below else "tab:blue", zorder=3)
            if points and math.isfinite(_num(g["mean_realised"])):
                ax.plot(x0, g["mean_realised"], "D", ms=6, mfc="none", mec="k", zorder=4)
        lo = min([*xs, *lows])
        ax.plot([lo, 1.0], [lo, 1.0], "k--", lw=0.8)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlim(min(xs) - 0.6 * step, max(xs) + 0.6 * step)
        ax.set_ylim(max(lo - 0.05, 0.0), 1.01)
        ax.set_xlabel("nominal 1 − α (dashed: y = 1 − α)")
        ax.set_ylabel("realised 1 − FNR" if kind == "risk" else "fraction of test images covered")
        ax.set_title(display_name(name) + (" (band: mean of splits)" if kind == "risk" else ""), fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Realised coverage: splits (dots), mean (diamond), acceptance bands (grey)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_lambda(doc: Mapping[str, Any], path: Path) -> None:
    """λ̂ of every split, one panel per method, one line per α."""
    plt = _pyplot()
    methods = doc["settings"]["methods"]
    summary = _summary_by_method(doc)
    fig, axes = _grid(plt, len(methods))
    for ax, name in zip(axes, methods, strict=True):
        for alpha in doc["settings"]["alphas"]:
            lams = [_num(v) for v in summary[name][float(alpha)]["lambda_hat"]]  # None: λ_max reached
            ax.plot(range(len(lams)), lams, "o-", ms=4, label=f"α = {alpha:g}")
        ax.set_xlabel("split")
        ax.set_ylabel("λ̂")
        ax.set_title(display_name(name))
        ax.set_xticks(range(doc["settings"]["splits"]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_diversity(doc: Mapping[str, Any], alpha: float, methods: Sequence[str], path: Path) -> None:
    """Chao1, SEC and correlation against N at one α (CONSIGN paper Figs. 2–4 layout)."""
    plt = _pyplot()
    summary = _summary_by_method(doc)
    ns = doc["settings"]["n_samples"]
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4))
    panels = (
        ("chao1", "Chao1 (distinct segmentations)", True),
        ("sec", "SEC", False),
        ("correlation", "correlation", False),
    )
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for name in methods:
            stats = summary[name][alpha]["metrics"].get(key, {})
            mean = [_num(stats.get(str(n), {}).get("mean")) for n in ns]
            std = [_num(stats.get(str(n), {}).get("std")) for n in ns]
            std = [0.0 if not math.isfinite(s) else s for s in std]
            ax.errorbar(ns, mean, yerr=std, marker="o", ms=4, capsize=3, label=display_name(name))
        if key == "sec":
            ax.axhline(1.0 - alpha, color="k", ls="--", lw=0.8, label="1 − α")
            ax.set_ylim(-0.03, 1.03)
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("number of sampled members N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Sampled members at α = {alpha:g}, ν = {doc['settings']['nu']} (mean ± std over splits)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- tables


def _is_pixel_set(by_alpha: Mapping[float, Mapping[str, Any]]) -> bool:
    """Whether a method makes one binary pixel set (pixel coverage and stretch apply): Table 1."""
    metrics = next(iter(by_alpha.values()))["metrics"]
    return "coverage" in metrics and "stretch" in metrics


def table1_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the RW-CP Table 1 layout: per α, the model row then one row per binary method.

    Returns
    -------
    list of dict
        ``{"alpha", "method" (display name or None for the model), "cells": {key: stat},
        "best": set of keys where this row is the best CP result at its α}``.
    """
    summary = _summary_by_method(doc)
    binary = [m for m in doc["settings"]["methods"] if _is_pixel_set(summary[m])]
    if not binary:
        return []
    rows: list[dict[str, Any]] = []
    for alpha in doc["settings"]["alphas"]:
        block = [
            {
                "alpha": float(alpha),
                "method": name,
                "cells": summary[name][float(alpha)]["metrics"],
                "best": set(),
            }
            for name in binary
        ]
        for key, _, better in TABLE1_COLUMNS:
            if better is None:
                continue
            values = [_num((r["cells"].get(key) or {}).get("mean")) for r in block]
            finite = [v for v in values if math.isfinite(v)]
            if len(finite) < 2:
                continue
            target = max(finite) if better == "max" else min(finite)
            for r, v in zip(block, values, strict=True):
                if v == target:
                    r["best"].add(key)
        if doc.get("reference"):
            rows.append(
                {"alpha": float(alpha), "method": None, "cells": doc["reference"]["summary"], "best": set()}
            )
        rows.extend(block)
    return rows


def _table1_html(doc: Mapping[str, Any]) -> str:
    rows = table1_rows(doc)
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for _, h, _ in TABLE1_COLUMNS)
    body = []
    n_binary = sum(1 for r in rows if r["alpha"] == rows[0]["alpha"])
    for j, row in enumerate(rows):
        cells = []
        if j == 0 or rows[j - 1]["alpha"] != row["alpha"]:
            cells.append(f'<td rowspan="{n_binary}">{row["alpha"]:g}</td>')
        name = "Model (no CP)" if row["method"] is None else display_name(row["method"])
        cells.append(f"<td>{html.escape(name)}</td>")
        for key, _, _ in TABLE1_COLUMNS:
            text = html.escape(_fmt(row["cells"].get(key)))
            cells.append(f"<td><b>{text}</b></td>" if key in row["best"] else f"<td>{text}</td>")
        cls = ' class="model"' if row["method"] is None else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        "<h2>Binary methods: the RW-CP paper's Table 1 layout</h2>\n"
        "<p>Coverage is 1 − FNR (mean over test images), stretch |C|/|Ŷ|, DSC the Dice of the set "
        "against the truth, ASSD and HD95 in the store's spacing units (mm); mean ± std over "
        "splits of each split's test mean. Bold: best CP result at that α (coverage is a constraint, "
        "not ranked). The model row is the model's own prediction Ŷ = S⁽⁰⁾ ≥ 0.5 on the same test "
        "images.</p>\n"
        f'<table class="t1"><tr><th>α</th><th>Method</th>{head}</tr>\n' + "\n".join(body) + "</table>\n"
    )


def _sets_table_html(doc: Mapping[str, Any]) -> str:
    summary = _summary_by_method(doc)
    names = [m for m in doc["settings"]["methods"] if not _is_pixel_set(summary[m])]
    if not names:
        return ""
    head = "".join(f"<th>{h}</th>" for _, h in SET_COLUMNS)
    body = []
    for alpha in doc["settings"]["alphas"]:
        for name in names:
            stats = summary[name][float(alpha)]["metrics"]
            cells = "".join(
                f"<td>{html.escape(_fmt(next((stats[k] for k in keys if k in stats), None)))}</td>"
                for keys, _ in SET_COLUMNS
            )
            body.append(f"<tr><td>{alpha:g}</td><td>{html.escape(display_name(name))}</td>{cells}</tr>")
    return (
        "<h2>Set-valued methods (CONSIGN, pixel-wise, SACP)</h2>\n"
        "<p>Covered: fraction of test images whose ground truth is in the set at label-wise accuracy "
        "ν. Best-member accuracy: label-wise accuracy of the best member of the set. Mean labels per "
        "pixel and log10 |set| (number of segmentations in a pixel-wise set) measure the size of the "
        "set; uncertain pixels (CONSIGN) is the fraction of pixels whose label is not the same in "
        "every member, and the Dice is that of CONSIGN's box-centre member. – where a method does "
        "not report the quantity.</p>\n"
        f"<table><tr><th>α</th><th>Method</th>{head}</tr>\n" + "\n".join(body) + "</table>\n"
    )


def _guarantee_table_html(doc: Mapping[str, Any]) -> str:
    body = []
    for entry in doc["summary"]:
        g = entry["guarantee"]
        real = [p for p in g["per_split"] if p["realised"] is not None]
        values = ", ".join(f"{p['realised']:.3f}" for p in real)
        if g["kind"] == "risk":
            mean_low = _num(g.get("mean_low"))
            band = f"mean ≥ {mean_low:.3f}" if math.isfinite(mean_low) else "–"
            ok = math.isfinite(mean_low) and _num(g["mean_realised"]) >= mean_low
            verdict = "mean inside" if ok else "mean below"
        else:
            lows = sorted({round(p["low"], 4) for p in real})
            band = " / ".join(f"≥ {v:.3f}" for v in lows) if lows else "–"
            ok = g["splits_below_band"] == 0
            verdict = "all splits inside" if ok else f"{g['splits_below_band']} of {len(real)} below"
        if g.get("failed_splits"):
            ok = False
            verdict += f"; λ̂ reached λ_max in {g['failed_splits']} split(s)"
        cls = "" if ok else ' class="warn"'
        body.append(
            f"<tr{cls}><td>{html.escape(display_name(entry['method']))}</td><td>{entry['alpha']:g}</td>"
            f"<td>{g['nominal']:.3g}</td><td>{html.escape(g['statistic'])}</td><td>{values}</td>"
            f"<td>{_num(g['mean_realised']):.3f}</td><td>{band}</td><td>{verdict}</td>"
            f"<td>{html.escape(_fmt(entry['lambda_hat_summary'], 4))}</td></tr>"
        )
    fa = doc["settings"]["false_alarm"]
    return (
        "<h2>Did the guarantee hold?</h2>\n"
        "<p><b>CONSIGN, pixel-wise, SACP and Consema</b> promise P(covered) ≥ 1 − α for a new image. "
        "Their statistic is the fraction of a split's test images that are covered, and each split "
        "has an exact lower acceptance bound from the Beta-Binomial law of split conformal "
        f"prediction: a correct method falls below it with probability at most {fa:g} for that split "
        "taken alone (one-sided: ties and conservative searches only raise coverage). "
        "<b>CRC and RW-CP</b> promise E[FNR] ≤ α, an expectation: their statistic is the mean test "
        "1 − FNR. One split cannot test an expectation at a useful level (its Chernoff–Hoeffding band "
        "is vacuous), so the band is for the mean over the splits, computed as if they were "
        f"independent repetitions, at false-alarm rate {fa:g}: guidance only. Realised coverage well "
        "above 1 − α is allowed (the guarantees are lower bounds) but means larger sets than "
        "needed.</p>\n"
        "<table><tr><th>Method</th><th>α</th><th>1 − α</th><th>Statistic</th><th>Realised per split</th>"
        "<th>Mean</th><th>Band</th><th>Verdict</th><th>λ̂ (mean ± std)</th></tr>\n"
        + "\n".join(body)
        + "</table>\n"
    )


def _params_text(params: Mapping[str, Any]) -> str:
    def text(v: Any) -> str:
        if isinstance(v, Mapping) and "per_alpha" in v:
            return " / ".join(f"{x} (α = {a})" for a, x in v["per_alpha"].items())
        return str(v)

    return ", ".join(f"{k}={text(v)}" for k, v in params.items() if v is not None) or "defaults"


def _settings_html(doc: Mapping[str, Any]) -> str:
    s, st = doc["settings"], doc["store"]
    sampled = "none of the methods samples members"
    if any(r.get("sampled") for r in doc["runs"]):
        alphas = ", ".join(f"{a:g}" for a in s["diversity_alphas"])
        sampled = (
            f"N = {', '.join(map(str, s['n_samples']))} at α = {alphas} (seed {s['seed']} + image index)"
        )
    items = [
        ("Store", f"{st['path']} (identity {st['identity']})"),
        (
            "Images",
            f"{st['n_images']} of shape {tuple(st['spatial_shape'])}, T = {st['n_samples']} samples, "
            f"L = {st['n_labels']} labels, spacing {tuple(st['spacing'])}",
        ),
        ("Methods", ", ".join(display_name(m) for m in s["methods"])),
        ("α", ", ".join(f"{a:g}" for a in s["alphas"])),
        ("ν / K", f"{s['nu']} / {s['k']}"),
        (
            "Splits",
            f"{s['splits']} random splits (seed {s['seed']}): {s['n_cal']} calibration, {s['n_test']} test images each",
        ),
        ("Sampled members N", sampled),
        (
            "Method parameters",
            "; ".join(f"{display_name(m)}: {_params_text(p)}" for m, p in s["params"].items()),
        ),
        ("Package", f"napari-conformal {doc['package_version']}, {doc['created']}, {doc['elapsed_s']:.0f} s"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f'<table class="settings">{rows}</table>\n'


_CSS = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
tr.model td { color: #555; font-style: italic; }
tr.warn td { background: #fde8e8; }
table.settings th { background: #f4f4f4; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
img { max-width: 100%; }
"""


def render_report(doc: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """Write the figures and ``index.html`` of a report document into ``out_dir``.

    Parameters
    ----------
    doc : mapping
        The JSON-ready ``results.json`` document (NaN already turned into None).
    out_dir : path-like
        An existing directory.

    Returns
    -------
    list of str
        The file names written, ``index.html`` last.
    """
    out = Path(out_dir)
    summary = _summary_by_method(doc)
    written: list[str] = []
    sections = [
        f"<h1>Conformal report: {html.escape(Path(doc['store']['path']).name)}</h1>\n",
        _settings_html(doc),
    ]
    sections.append(
        '<p class="note">The splits are random calibration/test partitions of <b>one</b> dataset, so '
        "they share images and are <b>not independent</b> repetitions. Each split's band is exact "
        "for that split alone and is shown as guidance; the spread across splits understates the "
        "spread across fresh datasets, and the bands must not be combined over splits as if they "
        "were independent.</p>\n"
    )
    if doc.get("failures"):
        items = "".join(f"<li>{html.escape(msg)}</li>" for msg in doc["failures"])
        sections.append(
            '<h2>Runs without a λ̂</h2>\n<p class="note">In these splits the method could not reach the '
            "guarantee within its largest λ (λ_max): the set would have to be larger than the method "
            "allows, so it cannot promise that α (at that ν) from that calibration set. These runs have "
            "no test metrics and are left out of the means.</p>\n"
            f"<ul>{items}</ul>\n"
        )
    sections.append(_guarantee_table_html(doc))
    figure_coverage(doc, out / "coverage.png")
    written.append("coverage.png")
    sections.append('<img src="coverage.png" alt="realised coverage against 1 - alpha">\n')
    sections.append(_table1_html(doc))
    sections.append(_sets_table_html(doc))
    sampling = [
        m
        for m in doc["settings"]["methods"]
        if any(summary[m][float(a)]["metrics"].get("chao1") for a in doc["settings"]["diversity_alphas"])
    ]
    if sampling:
        sections.append(
            "<h2>Sampled members: Chao1, SEC and correlation against N</h2>\n"
            "<p>N members are drawn from each test image's set (CONSIGN: random coefficients in the "
            "box; pixel-wise and SACP: labels drawn independently per pixel). Chao1 estimates the "
            "number of distinct segmentations in the set (smaller: a tighter set), SEC(N) the fraction "
            "of images for which one of the first N members matches the truth at accuracy ν (it "
            "approaches the realised coverage; faster is better), and the correlation is the mean "
            "Pearson correlation between members over the uncertain pixels (higher: members vary "
            "together along few directions).</p>\n"
        )
        for alpha in doc["settings"]["diversity_alphas"]:
            name = f"diversity_alpha_{alpha_tag(float(alpha))}.png"
            figure_diversity(doc, float(alpha), sampling, out / name)
            written.append(name)
            sections.append(f'<img src="{name}" alt="Chao1, SEC and correlation at alpha {alpha:g}">\n')
    sections.append(
        "<h2>λ̂ across splits</h2>\n<p>The calibrated threshold of every split: its spread shows how "
        "much λ̂ depends on which images calibrate; a λ̂ at the method's largest value means the set "
        "had to grow to the whole image.</p>\n"
    )
    figure_lambda(doc, out / "lambda_hat.png")
    written.append("lambda_hat.png")
    sections.append('<img src="lambda_hat.png" alt="lambda hat across splits">\n')
    sections.append(
        "<p>All numbers are in <code>results.json</code> beside this page (per split and per test "
        "image). See the documentation page <i>Reading a report</i> for details.</p>\n"
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>napari-conformal report</title><style>{_CSS}</style></head><body>\n"
        + "".join(sections)
        + "</body></html>\n"
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    written.append("index.html")
    return written
