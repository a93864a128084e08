"""Qt-free model layer of the napari explorers.

The dock widgets in :mod:`napari_conformal._widgets` are views of the objects
defined here:

* :class:`~napari_conformal.explore.calibrated.CalibratedMethod`: a calibration
  record together with the method object and the per-image calibration curves
  it was computed from (the curves are what makes α and ν live).
* :class:`~napari_conformal.explore.session.MethodSession`: one calibrated
  method on one store, with a cache of prepared test images and λ̂(α, ν)
  recomputed from the cached curves.
* :class:`~napari_conformal.explore.workspace.Workspace`: the store, the
  calibration/test split, the shared α, ν and current image (psygnal signals)
  and the method sessions calibrated on that split.
* :mod:`~napari_conformal.explore.evaluation`: test-set curves and metrics.
* :mod:`~napari_conformal.explore.export`: writing sets, members and calibration
  records with provenance.

Nothing here imports Qt or napari; the expensive steps are generators that
yield ``(done, total)`` so a napari thread worker (or a test) can drive them.
"""

from napari_conformal.explore.calibrated import CalibratedMethod, iter_calibrate_keeping_curves
from napari_conformal.explore.session import MethodSession
from napari_conformal.explore.workspace import Workspace

__all__ = ["CalibratedMethod", "MethodSession", "Workspace", "iter_calibrate_keeping_curves"]
