"""Qt-free model layer of the napari explorers.

The dock widgets in :mod:`napari_conformal._widgets` are views of the objects defined here:

* :class:`~napari_conformal.explore.session.MethodSession`: one calibration
  (:class:`~napari_conformal.core.calibration.Calibration`) on one dataset, with a cache of prepared
  images, λ̂(α, ν) re-reduced from the calibration's curves, and the background extension of those
  curves where they cannot answer (CONSIGN at another α);
* :class:`~napari_conformal.explore.workspace.Workspace`: the store, the calibration/test split, the
  shared α, ν and current image (psygnal signals) and the sessions calibrated on that split;
* :mod:`~napari_conformal.explore.evaluation`: test-set curves and metrics;
* :mod:`~napari_conformal.explore.export`: writing sets, members and calibrations with provenance.

Nothing here imports Qt or napari; the expensive steps are generators that yield
:class:`~napari_conformal.core.progress.Step` so a napari thread worker (or a test) can drive them.
"""

from napari_conformal.explore.session import LevelsPending, MethodSession
from napari_conformal.explore.workspace import Workspace

__all__ = ["LevelsPending", "MethodSession", "Workspace"]
