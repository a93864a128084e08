"""Pixel-wise conformity scores and the sets they define.

One concept a module:

* :mod:`.probabilities` — the mean softmax X̄ of an image's samples;
* :mod:`.aps` — APS and RAPS scores (cumulative probability mass, optionally penalised);
* :mod:`.lac` — LAC scores (one minus the probability);
* :mod:`.neighbourhood` — SACP's spatial aggregation of probabilities or scores;
* :mod:`.sets` — the pixel-wise set at λ: masks, set sizes, volume, sampled members;
* :mod:`.membership` — the relaxed ν-membership of a ground truth and its exact per-image λ_i(ν).

The methods built on them live in :mod:`napari_conformal.core.methods.pixelwise` and
:mod:`napari_conformal.core.methods.sacp`.
"""
