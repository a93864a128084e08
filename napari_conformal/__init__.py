"""napari-conformal: conformal prediction sets for image segmentation, with a napari viewer.

The numerical library lives in :mod:`napari_conformal.core` (numpy/torch, no Qt),
the dataset store in :mod:`napari_conformal.io`, and the napari widgets in
:mod:`napari_conformal._widgets`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-conformal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
