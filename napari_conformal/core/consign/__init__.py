"""CONSIGN: conformal segmentation sets from the principal directions of a model's samples.

Modules (one concept each):

* :mod:`.basis` — per-image mean, principal directions, singular values and
  coefficient quantiles (eqs. 4–5);
* :mod:`.box` — the λ-scaled coefficient box (eq. 6) and λ(c);
* :mod:`.intervals` — exact interval arithmetic over the box: fixed/free
  pixels, "always"/"possibly" label regions;
* :mod:`.restricted` — batched label-wise accuracy, soft surrogate and exact
  line searches on the free pixels;
* :mod:`.search` — the batched coverage search producing acc*_i(λ) curves;
* :mod:`.curves` — curves and λ̂(α, ν) as an order statistic;
* :mod:`.calibrator` — interactive calibrator (curves cached per α);
* :mod:`.members` — slider path, random members, direction maps.

The registered ``"consign"`` method is :mod:`napari_conformal.core.methods.consign`.
"""

from napari_conformal.core.consign.basis import ImageBasis, compute_bases, compute_basis
from napari_conformal.core.consign.box import CoefficientBox, make_box
from napari_conformal.core.consign.calibrator import ConsignCalibrator
from napari_conformal.core.consign.curves import CoverageCurve, CurveSet, IncompleteCurvesError
from napari_conformal.core.consign.intervals import LabelRegions, label_regions
from napari_conformal.core.consign.members import (
    ConsignSet,
    principal_maps,
    sample_coefficients,
    sample_members,
    segment,
    segment_batch,
)
from napari_conformal.core.consign.search import CoverageSearch, SearchConfig, search_curves

__all__ = [
    "CoefficientBox",
    "ConsignCalibrator",
    "ConsignSet",
    "CoverageCurve",
    "CoverageSearch",
    "CurveSet",
    "ImageBasis",
    "IncompleteCurvesError",
    "LabelRegions",
    "SearchConfig",
    "compute_bases",
    "compute_basis",
    "label_regions",
    "make_box",
    "principal_maps",
    "sample_coefficients",
    "sample_members",
    "search_curves",
    "segment",
    "segment_batch",
]
