"""napari-conformal: conformal prediction sets for image segmentation, with a napari viewer.

The public face (see docs/api.md)::

    import napari_conformal as nc

    store = nc.open_store("data.zarr")
    calib = nc.calibrate(store, "consign", alpha=0.1, nu=0.9, cal_indices=range(40))
    calib.save("calib.json")                       # nc.Calibration.load("calib.json")
    metrics = nc.evaluate(store, calib)            # per-image and mean metrics
    calib = nc.calibrate(method="crc", alpha=0.1, images=x, samples=p, labels=y)   # arrays in memory
    per_class = nc.calibrate_per_class(store, "crc", alpha=0.1, cal_indices=range(40))  # one λ̂ per structure
    store = nc.import_nnunet("imagesTs", ["fold_0", "fold_1"], "data.zarr", labels="labelsTs")
    store = nc.build_store("data.zarr", images, samples, labels)  # your arrays, checked, atomic

Everything is imported on first use: ``import napari_conformal`` loads neither torch nor Qt. The
numerical library lives in :mod:`napari_conformal.core` (numpy/torch, no Qt), the dataset store in
:mod:`napari_conformal.io`, the napari docks in :mod:`napari_conformal._widgets`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("napari-conformal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: public name → module that defines it
_LAZY = {
    "calibrate": "napari_conformal.api",
    "calibrate_per_class": "napari_conformal.api",
    "evaluate": "napari_conformal.api",
    "evaluate_per_class": "napari_conformal.api",
    "extend": "napari_conformal.api",
    "cache_features": "napari_conformal.api",
    "Calibration": "napari_conformal.core.calibration",
    "ClassCalibrations": "napari_conformal.core.per_class",
    "available_methods": "napari_conformal.core.methods.base",
    "make_method": "napari_conformal.core.methods.base",
    "ConformalMethod": "napari_conformal.core.methods.base",
    "Option": "napari_conformal.core.methods.base",
    "open_store": "napari_conformal.io.store",
    "create_store": "napari_conformal.io.store",
    "DatasetStore": "napari_conformal.io.store",
    "ArrayDataset": "napari_conformal.io.dataset",
    "ConsignMethod": "napari_conformal.core.methods.consign",
    "RWCPMethod": "napari_conformal.core.methods.rwcp",
    "CRCMethod": "napari_conformal.core.methods.threshold",
    "ConsemaMethod": "napari_conformal.core.methods.consema",
    "APS": "napari_conformal.core.methods.pixelwise",
    "RAPS": "napari_conformal.core.methods.pixelwise",
    "LAC": "napari_conformal.core.methods.pixelwise",
    "SACP": "napari_conformal.core.methods.sacp",
    "ConformalError": "napari_conformal.errors",
    "build_store": "napari_conformal.io.importers",
    "import_nnunet": "napari_conformal.io.importers",
    "import_arrays": "napari_conformal.io.importers",
    "sample_store": "napari_conformal.models.store_sampler",
}

__all__ = [
    "APS",
    "LAC",
    "RAPS",
    "SACP",
    "ArrayDataset",
    "CRCMethod",
    "Calibration",
    "ClassCalibrations",
    "ConformalError",
    "ConformalMethod",
    "ConsemaMethod",
    "ConsignMethod",
    "DatasetStore",
    "Option",
    "RWCPMethod",
    "__version__",
    "available_methods",
    "build_store",
    "cache_features",
    "calibrate",
    "calibrate_per_class",
    "create_store",
    "evaluate",
    "evaluate_per_class",
    "extend",
    "import_arrays",
    "import_nnunet",
    "make_method",
    "open_store",
    "sample_store",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_conformal.api import (
        cache_features,
        calibrate,
        calibrate_per_class,
        evaluate,
        evaluate_per_class,
        extend,
    )
    from napari_conformal.core.calibration import Calibration
    from napari_conformal.core.methods.base import ConformalMethod, Option, available_methods, make_method
    from napari_conformal.core.methods.consema import ConsemaMethod
    from napari_conformal.core.methods.consign import ConsignMethod
    from napari_conformal.core.methods.pixelwise import APS, LAC, RAPS
    from napari_conformal.core.methods.rwcp import RWCPMethod
    from napari_conformal.core.methods.sacp import SACP
    from napari_conformal.core.methods.threshold import CRCMethod
    from napari_conformal.core.per_class import ClassCalibrations
    from napari_conformal.errors import ConformalError
    from napari_conformal.io.dataset import ArrayDataset
    from napari_conformal.io.importers import build_store, import_arrays, import_nnunet
    from napari_conformal.io.store import DatasetStore, create_store, open_store
    from napari_conformal.models.store_sampler import sample_store


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_conformal' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
