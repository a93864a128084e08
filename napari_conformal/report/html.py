"""The HTML page of a report (``index.html``), from its ``results.json`` document alone.

:func:`render_report` writes the figures (:mod:`napari_conformal.report.figures`) and the page:
settings; the guarantee table (every split's realised coverage, its acceptance band, the splits
outside it flagged); coverage by structure-size and base-Dice tertile; the RW-CP paper's Table 1
layout for the binary methods (those with an ``fg_class`` option); a table of the set-valued
methods; the sampled-member curves and λ̂ across splits. Display names and colours are the method
classes' ``title`` and ``colour`` (``settings["methods_info"]``); nothing switches on a method's name.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_conformal.report.doc import alpha_tag, fmt, num, summary_by_method, title

__all__ = ["render_report", "table1_rows"]

#: Table 1 columns: (key, heading, better) with better = "max" / "min" / None (not ranked)
TABLE1_COLUMNS = (
    ("coverage", "Coverage", None),
    ("stretch", "Stretch", "min"),
    ("dice", "DSC", "max"),
    ("assd", "ASSD", "min"),
    ("hd95", "HD95", "min"),
)
#: set-valued methods table columns: (metric keys, first present wins; heading)
SET_COLUMNS = (
    (("covered",), "Covered"),
    (("accuracy_in", "best_accuracy"), "Best-member accuracy"),
    (("mean_set_size",), "Mean labels per pixel"),
    (("log10_volume",), "log10 |set|"),
    (("uncertain_fraction",), "Uncertain pixels"),
    (("dice",), "Dice of the centre member"),
)
_ARROW = {"below": "↓", "above": "↑"}


def _e(text: Any) -> str:
    return html.escape(str(text))


def _binary(doc: Mapping[str, Any]) -> list[str]:
    info = doc["settings"]["methods_info"]
    return [m for m in doc["settings"]["methods"] if info[m]["binary"]]


# ----------------------------------------------------------------------------------------- tables


def table1_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the RW-CP Table 1 layout: per α, the model row then one row per binary method.

    Returns
    -------
    list of dict
        ``{"alpha", "method" (name, or None for the model), "cells": {key: stat}, "best": set of keys
        where this row is the best conformal result at its α}``.
    """
    summary = summary_by_method(doc)
    binary = _binary(doc)
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
            values = [num((r["cells"].get(key) or {}).get("mean")) for r in block]
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
    n_block = sum(1 for r in rows if r["alpha"] == rows[0]["alpha"])
    for j, row in enumerate(rows):
        cells = []
        if j == 0 or rows[j - 1]["alpha"] != row["alpha"]:
            cells.append(f'<td rowspan="{n_block}">{row["alpha"]:g}</td>')
        name = "Model (no CP)" if row["method"] is None else title(doc, row["method"])
        cells.append(f"<td>{_e(name)}</td>")
        for key, _, _ in TABLE1_COLUMNS:
            text = _e(fmt(row["cells"].get(key)))
            cells.append(f"<td><b>{text}</b></td>" if key in row["best"] else f"<td>{text}</td>")
        cls = ' class="model"' if row["method"] is None else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    names = ", ".join(title(doc, m) for m in _binary(doc))
    return (
        f"<h2>Binary methods ({_e(names)}): the RW-CP paper's Table 1 layout</h2>\n"
        "<p>Coverage is 1 − FNR (mean over test images), stretch |C|/|Ŷ|, DSC the Dice of the set "
        "against the truth, ASSD and HD95 in the store's spacing units (mm); mean ± std over "
        "splits of each split's test mean. Bold: best conformal result at that α (coverage is a "
        "constraint, not ranked). The model row is the model's own prediction Ŷ = S⁽⁰⁾ ≥ 0.5 on the "
        "same test images.</p>\n"
        f'<table class="t1"><tr><th>α</th><th>Method</th>{head}</tr>\n' + "\n".join(body) + "</table>\n"
    )


def _sets_table_html(doc: Mapping[str, Any]) -> str:
    summary = summary_by_method(doc)
    binary = set(_binary(doc))
    names = [m for m in doc["settings"]["methods"] if m not in binary]
    if not names:
        return ""
    head = "".join(f"<th>{h}</th>" for _, h in SET_COLUMNS)
    body = []
    for alpha in doc["settings"]["alphas"]:
        for name in names:
            stats = summary[name][float(alpha)]["metrics"]
            cells = "".join(
                f"<td>{_e(fmt(next((stats[k] for k in keys if k in stats), None)))}</td>"
                for keys, _ in SET_COLUMNS
            )
            body.append(f"<tr><td>{alpha:g}</td><td>{_e(title(doc, name))}</td>{cells}</tr>")
    listed = ", ".join(title(doc, m) for m in names)
    return (
        f"<h2>Set-valued methods ({_e(listed)})</h2>\n"
        "<p>Covered: fraction of test images whose ground truth is in the set (at label-wise accuracy "
        "ν). Best-member accuracy: label-wise accuracy of the best member of the set. Mean labels per "
        "pixel and log10 |set| (number of segmentations in a pixel-wise set) measure the size of the "
        "set; uncertain pixels is the fraction of pixels whose label is not the same in every member, "
        "and the Dice is that of the box-centre member. – where a method does not report the "
        "quantity.</p>\n"
        f"<table><tr><th>α</th><th>Method</th>{head}</tr>\n" + "\n".join(body) + "</table>\n"
    )


def _split_cell(p: Mapping[str, Any]) -> str:
    """One split: its realised value and band, flagged when outside."""
    high = "1" if p["high"] >= 1.0 else f"{p['high']:.3f}"
    text = f"{p['realised']:.3f} [{p['low']:.3f}, {high}]"
    if p.get("outside"):
        return f'<span class="out" title="outside its band ({p["outside"]})">{_e(text)} {_ARROW[p["outside"]]}</span>'
    return _e(text)


def _guarantee_table_html(doc: Mapping[str, Any]) -> str:
    body = []
    for entry in doc["summary"]:
        g = entry["guarantee"]
        checked = [p for p in g["per_split"] if p["realised"] is not None]
        splits = "<br>".join(f"{p['split']}: {_split_cell(p)}" for p in checked) or "–"
        n_out = g["splits_outside"]
        if not checked:
            verdict, ok = "no split has a λ̂", False
        elif n_out == 0:
            verdict, ok = f"all {len(checked)} splits inside", True
        else:
            parts = [f"{g[k]} {w}" for k, w in (("splits_below", "below"), ("splits_above", "above")) if g[k]]
            verdict, ok = f"<b>{n_out} of {len(checked)} outside</b> ({', '.join(parts)})", False
        if g.get("failed_splits"):
            ok = False
            verdict += f"; λ̂ reached λ_max in {g['failed_splits']} split(s)"
        sides = (
            "two-sided"
            if all(p.get("two_sided") for p in checked) and checked
            else (
                "lower limit only"
                if not any(p.get("two_sided") for p in checked)
                else "two-sided where no tie at λ̂"
            )
        )
        cls = "" if ok else ' class="warn"'
        body.append(
            f"<tr{cls}><td>{_e(entry.get('title') or title(doc, entry['method']))}</td><td>{entry['alpha']:g}</td>"
            f"<td>{_e(entry.get('guarantee_text') or '')}</td><td>{_e(g['statistic'])}</td>"
            f"<td>{g.get('centre', math.nan):.3f}</td><td class='splits'>{splits}</td>"
            f"<td>{num(g['mean_realised']):.3f}</td><td>{_e(sides)}</td><td>{verdict}</td>"
            f"<td>{_e(fmt(entry['lambda_hat_summary'], 4))}</td></tr>"
        )
    fa = doc["settings"]["false_alarm"]
    n_checks = sum(
        1 for entry in doc["summary"] for p in entry["guarantee"]["per_split"] if p["realised"] is not None
    )
    n_out = sum(entry["guarantee"]["splits_outside"] for entry in doc["summary"])
    return (
        "<h2>Did the guarantee hold?</h2>\n"
        f'<p class="note">{n_checks} split checks, {n_out} outside their band. At a false-alarm rate of '
        f"{fa:g} per check, about {n_checks * fa:.2g} checks are expected outside by chance alone even when "
        "every method is correct; one isolated flag is no evidence, flags in several splits or at several "
        "α are.</p>\n"
        "<p>Each split is checked against an acceptance band: a correct method falls outside it with "
        f"probability about {fa:g} for that split taken alone. A split outside is marked in red with "
        "↓ (less coverage than a correct method gives: the guarantee is in doubt) or ↑ (more than an "
        "exact calibration gives: sets larger than needed, or a λ̂ that is not the method's). "
        "<b>Coverage guarantees</b> (P(covered) ≥ 1 − α): the statistic is the fraction of the split's "
        "test images covered and the band the exact Beta-Binomial law of split conformal prediction; "
        "two-sided for methods whose per-image thresholds are exact and tie-free, a lower limit only "
        "where ties or a conservative search can only raise coverage (also in a split with a tie at "
        "λ̂). <b>FNR guarantees</b> (E[FNR] ≤ α): the statistic is the split's mean test 1 − FNR; the "
        "band is centred at 1 − α*, the coverage an exact calibration reaches on its calibration "
        "images (α* = ((n+1)α − 1)/n), and spans the test-minus-calibration differences of the split's "
        "per-image FNR at λ̂ over random re-splits of its images. Centre: the expected coverage of a "
        "correct method (1 − α* for FNR methods, k/(n+1) for coverage methods).</p>\n"
        "<table><tr><th>Method</th><th>α</th><th>Guarantee</th><th>Statistic</th><th>Centre</th>"
        "<th>Split: realised [band]</th><th>Mean</th><th>Band</th><th>Verdict</th>"
        "<th>λ̂ (mean ± std)</th></tr>\n" + "\n".join(body) + "</table>\n"
    )


def _conditional_html(doc: Mapping[str, Any]) -> str:
    cond = doc.get("conditional")
    if not cond or not cond["rows"]:
        return ""
    bys = list(cond["by"])
    rows: dict[tuple[str, float], dict[str, Mapping[str, Any]]] = {}
    for row in cond["rows"]:
        rows.setdefault((row["method"], float(row["alpha"])), {})[row["by"]] = row
    first = {by: next(r for r in cond["rows"] if r["by"] == by) for by in bys}
    head1 = "".join(f'<th colspan="3">{_e(cond["by"][by])}</th>' for by in bys)
    head2 = "".join(f"<th>{_e(c['name'])}</th>" for by in bys for c in first[by]["cells"])
    body = []
    for alpha in doc["settings"]["alphas"]:
        for name in doc["settings"]["methods"]:
            per = rows.get((name, float(alpha)))
            if not per:
                continue
            cells = []
            for by in bys:
                for c in per[by]["cells"]:
                    if c["realised"] is None:
                        cells.append("<td>–</td>")
                        continue
                    thin = c["realised"] < 1.0 - alpha
                    cls = ' class="thin"' if thin else ""
                    cells.append(f"<td{cls}>{c['realised']:.3f} <small>({c['n']})</small></td>")
            fg = per[bys[0]]["foreground"]
            body.append(
                f"<tr><td>{_e(title(doc, name))}</td><td>{alpha:g}</td><td>{_e(fg)}</td>{''.join(cells)}</tr>"
            )
    ranges = []
    for key, entry in cond["foregrounds"].items():
        for by in bys:
            spans = [
                "–" if r is None else f"{r[0]:.3g}–{r[1]:.3g}" for r in entry[f"{by}_tertiles"]["ranges"]
            ]
            ranges.append(f"{_e(key)}, {_e(by)}: {' / '.join(spans)}")
    return (
        "<h2>Where is the guarantee thin? Coverage by structure size and model quality</h2>\n"
        "<p>The guarantees are marginal: averages over images. Here the test images are split into "
        "tertiles of the size of their structure (ground-truth foreground pixels) and of the Dice of "
        "the model's own segmentation (mean foreground probability ≥ 0.5), and the realised coverage "
        "(fraction covered, or 1 − FNR for FNR methods) is given per tertile, pooled over splits; in "
        "brackets the number of (split, test image) pairs. Shaded: below 1 − α. Nothing is promised "
        "per tertile, so a shaded cell is not a failure of the method, but it shows which images "
        "carry the misses. A binary method's foreground is its structure (fg_class); for the others "
        f"every non-background label. Tertile ranges: {'; '.join(ranges)}.</p>\n"
        f'<table><tr><th rowspan="2">Method</th><th rowspan="2">α</th><th rowspan="2">Foreground</th>'
        f"{head1}</tr><tr>{head2}</tr>\n" + "\n".join(body) + "</table>\n"
    )


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={'auto' if v is None else v}" for k, v in params.items()) or "defaults"


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
        ("Methods", ", ".join(title(doc, m) for m in s["methods"])),
        ("α", ", ".join(f"{a:g}" for a in s["alphas"])),
        ("ν / K", f"{s['nu']} / {s['k']}"),
        (
            "Splits",
            f"{s['splits']} random splits (seed {s['seed']}): {s['n_cal']} calibration, {s['n_test']} test images each",
        ),
        ("Sampled members N", sampled),
        (
            "Method parameters",
            "; ".join(f"{title(doc, m)}: {_params_text(p)}" for m, p in s["params"].items()),
        ),
        ("Package", f"napari-conformal {doc['package_version']}, {doc['created']}, {doc['elapsed_s']:.0f} s"),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="settings">{rows}</table>\n'


_CSS = """
body { font-family: sans-serif; max-width: 76em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
tr.model td { color: #555; font-style: italic; }
tr.warn td { background: #fde8e8; }
td.thin { background: #fff1cc; }
span.out { color: #b00000; font-weight: bold; }
td.splits { white-space: nowrap; font-size: 0.9em; }
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
    from napari_conformal.report import figures

    out = Path(out_dir)
    summary = summary_by_method(doc)
    written: list[str] = []
    name = Path(doc["store"]["path"]).name if doc["store"].get("path") else "in-memory data"
    sections = [f"<h1>Conformal report: {_e(name)}</h1>\n", _settings_html(doc)]
    sections.append(
        '<p class="note">The splits are random calibration/test partitions of <b>one</b> dataset, so '
        "they share images and are <b>not independent</b> repetitions. Each split's band is a "
        "statement about that split alone; the spread across splits understates the spread across "
        "fresh datasets, and the bands must not be combined over splits as if they were "
        "independent.</p>\n"
    )
    if doc.get("failures"):
        items = "".join(f"<li>{_e(msg)}</li>" for msg in doc["failures"])
        sections.append(
            '<h2>Runs without a λ̂</h2>\n<p class="note">In these splits the method could not reach the '
            "guarantee within its largest λ (λ_max): the set would have to be larger than the method "
            "allows, so it cannot promise that α (at that ν) from that calibration set. These runs have "
            "no test metrics and are left out of the means.</p>\n"
            f"<ul>{items}</ul>\n"
        )
    sections.append(_guarantee_table_html(doc))
    figures.figure_coverage(doc, out / "coverage.png")
    written.append("coverage.png")
    sections.append('<img src="coverage.png" alt="realised coverage against 1 - alpha">\n')
    conditional = _conditional_html(doc)
    if conditional:
        sections.append(conditional)
        figures.figure_conditional(doc, out / "conditional.png")
        written.append("conditional.png")
        sections.append('<img src="conditional.png" alt="coverage by structure size and base-model Dice">\n')
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
            "<p>N members are drawn from each test image's set. Chao1 estimates the number of distinct "
            "segmentations in the set (smaller: a tighter set), SEC(N) the fraction of images for which "
            "one of the first N members matches the truth at accuracy ν (it approaches the realised "
            "coverage; faster is better), and the correlation is the mean Pearson correlation between "
            "members over the uncertain pixels (higher: members vary together along few "
            "directions).</p>\n"
        )
        for alpha in doc["settings"]["diversity_alphas"]:
            fname = f"diversity_alpha_{alpha_tag(float(alpha))}.png"
            figures.figure_diversity(doc, float(alpha), sampling, out / fname)
            written.append(fname)
            sections.append(f'<img src="{fname}" alt="Chao1, SEC and correlation at alpha {alpha:g}">\n')
    sections.append(
        "<h2>λ̂ across splits</h2>\n<p>The calibrated λ̂ of every split: its spread shows how much λ̂ "
        "depends on which images calibrate; a λ̂ at the method's largest value means the set had to "
        "grow to the whole image.</p>\n"
    )
    figures.figure_lambda(doc, out / "lambda_hat.png")
    written.append("lambda_hat.png")
    sections.append('<img src="lambda_hat.png" alt="lambda hat across splits">\n')
    sections.append(
        "<p>All numbers are in <code>results.json</code> beside this page (per split and per test "
        "image). See the documentation page <i>Reading a coverage report</i> for details.</p>\n"
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
