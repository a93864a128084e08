"""Packaging contracts: the npe2 manifest, the core's independence from Qt, the console script."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import napari_conformal

PKG = Path(napari_conformal.__file__).parent


def test_manifest_validates_and_every_command_resolves():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(PKG / "napari.yaml")
    assert manifest.name == "napari-conformal"
    commands = manifest.contributions.commands or []
    assert commands, "the manifest contributes no commands"
    for command in commands:
        target = command.python_name
        module, _, attr = target.partition(":")
        mod = __import__(module, fromlist=[attr.split(".")[0]])
        resolved = mod
        for part in attr.split("."):
            resolved = getattr(resolved, part)
        assert callable(resolved), f"{command.id} -> {target} is not callable"
    ids = {c.id for c in commands}
    for widget in manifest.contributions.widgets or []:
        assert widget.command in ids


def test_manifest_entry_point_points_at_packaged_file():
    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-conformal"]
    assert len(eps) == 1
    assert eps[0].value == "napari_conformal:napari.yaml"
    assert (PKG / "napari.yaml").is_file()


GUI_ROOTS = (
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "napari",
    "magicgui",
    "superqt",
    "vispy",
    "matplotlib",
)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _core_modules() -> list[str]:
    import pkgutil

    import napari_conformal.core as core

    return sorted(m.name for m in pkgutil.walk_packages(core.__path__, "napari_conformal.core."))


def test_core_walk_finds_every_concept():
    """The walk below really covers the reshaped core (a broken walk must not pass vacuously)."""
    names = set(_core_modules())
    for expected in (
        "napari_conformal.core.calibration",
        "napari_conformal.core.validation",
        "napari_conformal.core.quantiles",
        "napari_conformal.core.bands",
        "napari_conformal.core.progress",
        "napari_conformal.core.arrays_json",
        "napari_conformal.core.methods.base",
        "napari_conformal.core.methods.threshold",
        "napari_conformal.core.methods.rwcp",
        "napari_conformal.core.methods.consema",
        "napari_conformal.core.methods.pixelwise",
        "napari_conformal.core.methods.sacp",
        "napari_conformal.core.methods.consign",
        "napari_conformal.core.scores.aps",
        "napari_conformal.core.scores.lac",
        "napari_conformal.core.scores.sets",
        "napari_conformal.core.scores.membership",
        "napari_conformal.core.scores.probabilities",
        "napari_conformal.core.scores.neighbourhood",
        "napari_conformal.core.rwcp.features",
        "napari_conformal.core.rwcp.graph",
        "napari_conformal.core.rwcp.diffusion",
        "napari_conformal.core.metrics.accuracy",
        "napari_conformal.core.metrics.diversity",
        "napari_conformal.core.metrics.segmentation",
        "napari_conformal.core.consign.calibrator",
        "napari_conformal.core.consign.search",
    ):
        assert expected in names, expected
    # what moved out of the core stays out
    for gone in ("synthetic", "guarantees", "cancel", "crc", "method", "pixelwise", "sacp", "consema"):
        assert f"napari_conformal.core.{gone}" not in names, gone


def test_core_imports_no_gui_or_napari():
    """Importing every core module (and the Qt-free engine around it) must not pull in Qt or napari.

    One interpreter imports them one by one and names the first module after whose import a GUI
    module appeared (any GUI import anywhere shows up in ``sys.modules``, whatever the order).
    """
    code = (
        "import importlib, pkgutil, sys\n"
        "import napari_conformal.core as core, napari_conformal.testing as testing\n"
        "mods = [m.name for m in pkgutil.walk_packages(core.__path__, 'napari_conformal.core.')]\n"
        "mods += [m.name for m in pkgutil.walk_packages(testing.__path__, 'napari_conformal.testing.')]\n"
        "mods += ['napari_conformal.api', 'napari_conformal.io.dataset', 'napari_conformal.errors']\n"
        f"roots = {GUI_ROOTS!r}\n"
        "culprit = ''\n"
        "for name in mods:\n"
        "    importlib.import_module(name)\n"
        "    if not culprit and any(n.split('.')[0] in roots for n in sys.modules):\n"
        "        culprit = name\n"
        "from napari_conformal.core.methods.base import available_methods, make_method\n"
        "[make_method(m) for m in available_methods() if m != 'rwcp']\n"
        "make_method('rwcp', features='multiscale', device='cpu')\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in roots)\n"
        "print(len(mods), culprit or '-', ','.join(bad) or '-')\n"
    )
    count, culprit, bad = _run(code).split(" ")
    assert int(count) > 30
    assert (culprit, bad) == ("-", "-"), f"{culprit} imported GUI modules: {bad}"


def test_package_import_is_light():
    """``import napari_conformal`` (and the CLI module) loads neither torch nor Qt nor napari."""
    code = (
        "import sys, napari_conformal, napari_conformal.cli\n"
        f"roots = {('torch', *GUI_ROOTS)!r}\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] in roots)))\n"
    )
    assert _run(code) == ""


def test_public_face_is_lazy():
    """The public names resolve from ``napari_conformal`` itself, still without importing torch or Qt."""
    code = (
        "import sys, napari_conformal as nc\n"
        "public = (nc.calibrate, nc.evaluate, nc.extend, nc.Calibration, nc.make_method, nc.available_methods)\n"
        f"heavy = sorted(n for n in sys.modules if n.split('.')[0] in {('torch', *GUI_ROOTS)!r})\n"
        "from napari_conformal import api\n"
        "from napari_conformal.core.calibration import Calibration\n"
        "from napari_conformal.core.methods.base import available_methods, make_method\n"
        "assert public == (api.calibrate, api.evaluate, api.extend, Calibration, make_method, available_methods)\n"
        "assert {'calibrate', 'evaluate', 'extend', 'Calibration', 'make_method'} <= set(dir(nc))\n"
        "print(','.join(heavy))\n"
    )
    assert _run(code) == ""


def test_console_script_help():
    script = Path(sys.executable).parent / "napari-conformal"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for sub in ("calibrate", "evaluate", "demo"):
        assert sub in out.stdout
