"""``napari-conformal report``: repeated random calibration/test splits of one store, as a web page.

The modules, one concept each:

* :mod:`~napari_conformal.report.plan` — the arguments checked, one method object per method, and
  what the report reads from a method's class (title, colour, guarantee kind, binary or not);
* :mod:`~napari_conformal.report.runs` — the splits, one calibration and one evaluation per method
  and split (:func:`iter_report`, :func:`build_report`);
* :mod:`~napari_conformal.report.reference` — what the model alone does on each test image;
* :mod:`~napari_conformal.report.checks` — the per-split acceptance bands and their false-alarm rates;
* :mod:`~napari_conformal.report.summary` — means and standard deviations over splits, the checks
  applied per method and α;
* :mod:`~napari_conformal.report.conditional` — coverage by structure-size and base-Dice tertile;
* :mod:`~napari_conformal.report.output` — ``results.json`` and the directory (:func:`write_report`);
* :mod:`~napari_conformal.report.html` — the page; :mod:`~napari_conformal.report.figures` — its
  figures (the only module that imports matplotlib, inside its functions).
"""

from __future__ import annotations

from napari_conformal.report.output import check_report_target, jsonable, write_report
from napari_conformal.report.plan import (
    DEFAULT_FALSE_ALARM,
    DEFAULT_N_SAMPLES,
    REPORT_FORMAT,
    REPORT_VERSION,
    method_accepts,
    method_params,
    resolve_n_cal,
)
from napari_conformal.report.runs import build_report, iter_report
from napari_conformal.report.summary import summarize_runs

__all__ = [
    "DEFAULT_FALSE_ALARM",
    "DEFAULT_N_SAMPLES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "build_report",
    "check_report_target",
    "iter_report",
    "jsonable",
    "method_accepts",
    "method_params",
    "resolve_n_cal",
    "summarize_runs",
    "write_report",
]
