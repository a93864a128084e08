"""Shared fixtures. GUI tests use pytest-qt's ``qtbot`` and napari's ``make_napari_viewer``
(napari registers that fixture through its pytest plugin); pytest-xvfb provides the display."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
