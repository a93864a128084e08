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


def test_core_imports_no_gui_or_napari():
    """Importing every core module must not pull in Qt, napari, magicgui or superqt."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import napari_conformal.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'napari_conformal.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "{'qtpy','PyQt5','PyQt6','PySide2','PySide6','napari','magicgui','superqt','vispy','matplotlib'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported GUI modules: {out.stdout.strip()}"


def test_package_import_is_light():
    code = (
        "import sys, napari_conformal, napari_conformal.cli\n"
        "print(','.join(sorted(n for n in ('torch','napari','qtpy','matplotlib') if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_console_script_help():
    script = Path(sys.executable).parent / "napari-conformal"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for sub in ("calibrate", "evaluate", "demo"):
        assert sub in out.stdout
