"""Metrics of prediction sets.

* :mod:`.segmentation` — coverage, stretch, Dice, ASSD, HD95 of a pixel set against a ground truth;
* :mod:`.accuracy` — the label-wise accuracy behind CONSIGN's and the pixel-wise ν-membership;
* :mod:`.diversity` — Chao1, SEC and correlation of sampled members.
"""
