"""Per (method, α): λ̂ and metrics as mean ± std over splits, and every split's guarantee check.

The checks themselves (the bands and their false-alarm rates) are in
:mod:`napari_conformal.report.checks`; this module groups the runs, applies the check that the
method's guarantee kind (its ``risk``) calls for, and counts the splits outside their bands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_conformal.report.checks import (
    alpha_star,
    check_fnr_split,
    check_miscoverage_split,
    expected_coverage_bracket,
)
from napari_conformal.report.conditional import realised_key
from napari_conformal.report.plan import DEFAULT_FALSE_ALARM

__all__ = ["mean_std", "mean_std_dicts", "split_guarantees", "summarize_runs"]

_STATISTIC = {
    "fnr": "mean test coverage 1 − FNR",
    "miscoverage": "fraction of test images covered",
}


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and (population) standard deviation over splits, ignoring NaN and None."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def mean_std_dicts(means: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over splits of each key of the splits' mean-metric dicts (nested dicts per N)."""
    keys: list[str] = []
    for m in means:
        keys.extend(k for k in m if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [m.get(key) for m in means]
        if any(isinstance(v, Mapping) for v in values):
            out[key] = mean_std_dicts([v if isinstance(v, Mapping) else {} for v in values])
        else:
            out[key] = mean_std(values)
    return out


def split_guarantees(
    info: Mapping[str, Any], alpha: float, runs: Sequence[Mapping[str, Any]], false_alarm: float
) -> dict[str, Any]:
    """The guarantee check of every split of one (method, α) (see :mod:`~napari_conformal.report.checks`).

    Parameters
    ----------
    info : mapping
        The method's ``settings["methods_info"]`` entry (``risk``, ``exact_coverage``).
    alpha : float
        Risk level.
    runs : sequence of dict
        The runs of the splits, each with ``per_image`` and ``cal_realised`` (and, for FNR methods,
        ``cal_realised_left``).
    false_alarm : float
        Per-split false-alarm rate.
    """
    risk = info["risk"]
    metric = realised_key(risk)
    per_split = []
    for run in runs:
        values = [np.nan if r.get(metric) is None else float(r[metric]) for r in run["per_image"]]
        if run.get("lambda_hat") is None:
            entry: dict[str, Any] = {"n_test": 0, "realised": None}
        elif risk == "fnr":
            entry = check_fnr_split(
                values,
                run["cal_realised"],
                run["cal_realised_left"],
                run["n_cal"],
                alpha,
                false_alarm,
                seed=int(run["split"]),
            )
        else:
            entry = check_miscoverage_split(
                values,
                run.get("cal_realised", []),
                run.get("cal_realised_left", []),
                run["n_cal"],
                alpha,
                false_alarm,
                exact=bool(info["exact_coverage"]),
            )
        per_split.append({"split": run["split"], **entry})
    checked = [p for p in per_split if p["realised"] is not None]
    n_cal = runs[0]["n_cal"] if runs else 0
    out: dict[str, Any] = {
        "kind": risk,
        "statistic": _STATISTIC.get(risk, "realised coverage"),
        "nominal": 1.0 - alpha,
        "false_alarm": float(false_alarm),
        "per_split": per_split,
        "mean_realised": float(np.mean([p["realised"] for p in checked])) if checked else math.nan,
        "splits_outside": sum(1 for p in checked if p.get("outside")),
        "splits_below": sum(1 for p in checked if p.get("outside") == "below"),
        "splits_above": sum(1 for p in checked if p.get("outside") == "above"),
        "failed_splits": sum(1 for run in runs if run.get("lambda_hat") is None),
    }
    if risk == "fnr" and n_cal:
        out["centre"] = 1.0 - alpha_star(n_cal, alpha)
        out["expected_bracket"] = list(expected_coverage_bracket(n_cal, alpha))
        out["band"] = "two-sided: 1 − α* minus a re-split quantile of the test-minus-calibration FNR at λ̂"
    elif n_cal:
        from napari_conformal.core.bands import splitcp_rank

        out["centre"] = splitcp_rank(n_cal, alpha) / (n_cal + 1)
        out["band"] = (
            "exact Beta-Binomial, two-sided"
            if info["exact_coverage"]
            else "exact Beta-Binomial, lower limit only (ties or a conservative search raise coverage)"
        )
    return out


def summarize_runs(
    runs: Sequence[Mapping[str, Any]],
    methods_info: Mapping[str, Mapping[str, Any]],
    false_alarm: float = DEFAULT_FALSE_ALARM,
) -> list[dict[str, Any]]:
    """Per (method, α): λ̂ and metrics as mean ± std over splits, plus the guarantee check.

    Parameters
    ----------
    runs : sequence of dict
        The ``runs`` of a report (one per method, α and split).
    methods_info : mapping
        ``{method: settings["methods_info"][method]}``.
    false_alarm : float
        Per-split false-alarm rate of the bands.

    Returns
    -------
    list of dict
        In the order methods and α first appear in ``runs``.
    """
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], float(run["alpha"])), []).append(run)
    out = []
    for (name, alpha), group in groups.items():
        group = sorted(group, key=lambda r: r["split"])
        info = methods_info[name]
        out.append(
            {
                "method": name,
                "title": info["title"],
                "alpha": alpha,
                "guarantee_text": group[0].get("guarantee"),
                "lambda_hat": [None if r["lambda_hat"] is None else float(r["lambda_hat"]) for r in group],
                "lambda_hat_summary": mean_std([r["lambda_hat"] for r in group]),
                "metrics": mean_std_dicts([r["mean"] for r in group]),
                "guarantee": split_guarantees(info, alpha, group, false_alarm),
            }
        )
    return out
