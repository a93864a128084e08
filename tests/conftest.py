"""Shared fixtures. GUI tests use pytest-qt's ``qtbot`` and napari's ``make_napari_viewer``
(napari registers that fixture through its pytest plugin); pytest-xvfb provides the display."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report as ``item.rep_<phase>`` (napari's viewer fixture reads ``rep_call``)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
