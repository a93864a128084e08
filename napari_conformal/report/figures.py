"""The PNG figures of a report page; the only module of the report that imports matplotlib.

``coverage.png``
    Realised coverage of every split against the nominal ``1 − α``, one panel per method, with each
    split's acceptance band (grey) and the splits outside their band in red.
``conditional.png``
    Realised coverage by tertile of structure size (top row) and base-model Dice (bottom row), one
    column per α, one line per method.
``lambda_hat.png``
    λ̂ of every split, one panel per method, one line per α.
``diversity_alpha_<α>.png``
    Chao1, SEC and sample correlation against the number N of sampled members (the CONSIGN paper's
    Figures 2–4), one line per sampling method, mean ± std over splits.

matplotlib is imported inside the functions with the non-interactive Agg backend, so importing this
module is cheap and no display is needed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_conformal.errors import ConformalError
from napari_conformal.report.doc import colour, num, summary_by_method, title

__all__ = ["figure_conditional", "figure_coverage", "figure_diversity", "figure_lambda"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConformalError("the report figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(plt: Any, n_panels: int, width: float = 3.6, height: float = 3.2) -> tuple[Any, list[Any]]:
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_coverage(doc: Mapping[str, Any], path: Path) -> None:
    """Realised coverage per split against 1 − α, with every split's acceptance band.

    Grey bars: the split's band (a bar reaching 1 is a lower limit only). Dots: splits (red when
    outside their band); diamond: mean over splits; dashed: y = 1 − α.
    """
    plt = _pyplot()
    methods = doc["settings"]["methods"]
    alphas = sorted(doc["settings"]["alphas"], reverse=True)
    summary = summary_by_method(doc)
    xs = [1.0 - a for a in alphas]
    step = min((b - a for a, b in itertools.pairwise(xs)), default=0.1)
    fig, axes = _grid(plt, len(methods))
    for ax, name in zip(axes, methods, strict=True):
        lows = []
        kind = "miscoverage"
        for alpha, x0 in zip(alphas, xs, strict=True):
            g = summary[name][alpha]["guarantee"]
            kind = g["kind"]
            points = [p for p in g["per_split"] if p["realised"] is not None]
            offsets = [
                (j - (len(points) - 1) / 2) * 0.5 * step / max(len(points), 1) for j in range(len(points))
            ]
            for dx, p in zip(offsets, points, strict=True):
                ax.plot(
                    [x0 + dx] * 2, [p["low"], p["high"]], color="0.78", lw=3, solid_capstyle="butt", zorder=1
                )
                lows.append(p["low"])
                out = p.get("outside") is not None
                ax.plot(x0 + dx, p["realised"], "o", ms=4, color="tab:red" if out else "tab:blue", zorder=3)
            if points and math.isfinite(num(g["mean_realised"])):
                ax.plot(x0, g["mean_realised"], "D", ms=6, mfc="none", mec="k", zorder=4)
        lo = min([*xs, *lows])
        ax.plot([lo, 1.0], [lo, 1.0], "k--", lw=0.8)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlim(min(xs) - 0.6 * step, max(xs) + 0.6 * step)
        ax.set_ylim(max(lo - 0.05, 0.0), 1.01)
        ax.set_xlabel("nominal 1 − α (dashed: y = 1 − α)")
        ax.set_ylabel("realised 1 − FNR" if kind == "fnr" else "fraction of test images covered")
        ax.set_title(title(doc, name), fontsize=10, color=_dark(colour(doc, name)))
        ax.grid(alpha=0.3)
    fig.suptitle("Realised coverage: splits (dots, red: outside), mean (diamond), bands (grey)", fontsize=10)
    _save(plt, fig, path)


def _dark(hex_colour: str | None) -> str:
    """A method colour dark enough for text on white (light colours such as gold are darkened)."""
    if not hex_colour or not hex_colour.startswith("#") or len(hex_colour) != 7:
        return "black"
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    if 0.299 * r + 0.587 * g + 0.114 * b < 160:
        return hex_colour
    return "#{:02x}{:02x}{:02x}".format(*(int(c * 0.6) for c in (r, g, b)))


def figure_conditional(doc: Mapping[str, Any], path: Path) -> None:
    """Realised coverage by tertile: rows structure size and base-model Dice, columns α."""
    plt = _pyplot()
    cond = doc["conditional"]
    alphas = doc["settings"]["alphas"]
    bys = list(cond["by"])
    fig, axes = plt.subplots(
        len(bys), len(alphas), figsize=(3.6 * len(alphas), 3.0 * len(bys)), squeeze=False
    )
    for r, by in enumerate(bys):
        for c, alpha in enumerate(alphas):
            ax = axes[r][c]
            for name in doc["settings"]["methods"]:
                row = next(
                    (
                        x
                        for x in cond["rows"]
                        if x["method"] == name and x["alpha"] == alpha and x["by"] == by
                    ),
                    None,
                )
                if row is None or not row["n_splits"]:
                    continue
                ys = [num(cell["realised"]) for cell in row["cells"]]
                ax.plot(range(3), ys, "o-", ms=4, color=_dark(colour(doc, name)), label=title(doc, name))
            first = next((x for x in cond["rows"] if x["by"] == by), None)
            names = [cell["name"] for cell in first["cells"]] if first else ["1", "2", "3"]
            ax.axhline(1.0 - alpha, color="k", ls="--", lw=0.8)
            ax.set_xticks(range(3), names)
            ax.set_xlim(-0.3, 2.3)
            ax.set_title(f"α = {alpha:g}: by {by}", fontsize=10)
            ax.set_ylabel("realised coverage")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Coverage by tertile of structure size and base-model Dice (dashed: 1 − α)", fontsize=10)
    _save(plt, fig, path)


def figure_lambda(doc: Mapping[str, Any], path: Path) -> None:
    """λ̂ of every split, one panel per method, one line per α."""
    plt = _pyplot()
    methods = doc["settings"]["methods"]
    summary = summary_by_method(doc)
    fig, axes = _grid(plt, len(methods))
    for ax, name in zip(axes, methods, strict=True):
        for alpha in doc["settings"]["alphas"]:
            lams = [num(v) for v in summary[name][float(alpha)]["lambda_hat"]]  # None: λ_max reached
            ax.plot(range(len(lams)), lams, "o-", ms=4, label=f"α = {alpha:g}")
        ax.set_xlabel("split")
        ax.set_ylabel("λ̂ (" + str(doc["settings"]["methods_info"][name].get("lambda_name", "λ")) + ")")
        ax.set_title(title(doc, name))
        ax.set_xticks(range(doc["settings"]["splits"]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def figure_diversity(doc: Mapping[str, Any], alpha: float, methods: Sequence[str], path: Path) -> None:
    """Chao1, SEC and correlation against N at one α (CONSIGN paper Figs. 2–4 layout)."""
    plt = _pyplot()
    summary = summary_by_method(doc)
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
            mean = [num(stats.get(str(n), {}).get("mean")) for n in ns]
            std = [num(stats.get(str(n), {}).get("std")) for n in ns]
            std = [0.0 if not math.isfinite(s) else s for s in std]
            ax.errorbar(
                ns,
                mean,
                yerr=std,
                marker="o",
                ms=4,
                capsize=3,
                label=title(doc, name),
                color=_dark(colour(doc, name)),
            )
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
    _save(plt, fig, path)
