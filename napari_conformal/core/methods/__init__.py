"""The conformal methods, one module each, all of the shape of :class:`~.base.ConformalMethod`.

* :mod:`.base` — the protocol every method follows and the registry (:func:`~.base.make_method`);
* :mod:`.threshold` — FNR risk control of threshold sets, and standard CRC;
* :mod:`.rwcp` — RW-CP: CRC on a random-walk-diffused map;
* :mod:`.consema` — Consema: conformal dilation of the hard prediction;
* :mod:`.pixelwise` — pixel-wise APS, RAPS and LAC sets with the relaxed ν-membership;
* :mod:`.sacp` — SACP: pixel-wise sets on neighbourhood-aggregated scores;
* :mod:`.consign` — CONSIGN: a calibrated box of principal-component coefficients.
"""
