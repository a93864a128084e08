"""Sample arrays as napari layers: mean probabilities, predictive entropy, argmax of the mean.

``<name>_samples.npy`` / ``.npz`` / ``.zarr`` (zarr array) hold the softmax samples of one image,
``(T, L, *S)`` or the foreground probability ``(T, *S)`` of a binary model. The axes come from an
``axes`` entry (a ``.npz`` member or a zarr attribute: ``"TLYX"``, ``"TLZYX"``, ``"TYX"`` or
``"TZYX"``) when present. Without it, 3 axes mean ``(T, Y, X)``, 5 axes ``(T, L, Z, Y, X)``, and
4 axes ``(T, L, Y, X)`` when the first sample sums to 1 over axis 0 (within the tolerance of its
dtype), else ``(T, Z, Y, X)``. Optional ``spacing`` and ``label_names`` entries work the same way.
Layers: the mean probability of every foreground class (images, ``[0, 1]``), the predictive entropy
``H(mean p)`` in nats (image, ``[0, ln L]``) and the argmax of the mean (labels). Every sample is
checked while streaming over T by :func:`napari_conformal.core.validation.check_samples`: finite, in
[0, 1], summing to 1 over L.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.core.validation import check_samples
from napari_conformal.errors import ConformalError, StoreValidationError
from napari_conformal.io.layers import LayerData, class_features
from napari_conformal.io.paths import stem_of, suffix_of, zarr_node
from napari_conformal.io.provenance import PROVENANCE_KEY
from napari_conformal.io.safe_load import load_npy, load_npz, open_zarr_array
from napari_conformal.io.validate import default_label_names, labels_storage_dtype

__all__ = ["SAMPLES_AXES", "read_samples", "summarize_samples"]

#: Axis orders a sample array may have.
SAMPLES_AXES = ("TLYX", "TLZYX", "TYX", "TZYX")


def _infer_axes(path: Path, arr: Any, hint: Any) -> str:
    if hint is not None:
        axes = str(np.asarray(hint)[()]) if not isinstance(hint, str) else hint
        axes = axes.upper()
        if axes not in SAMPLES_AXES:
            raise ConformalError(f"{path}: axes {axes!r} must be one of {', '.join(SAMPLES_AXES)}")
        if len(axes) != arr.ndim:
            raise ConformalError(f"{path}: axes {axes!r} do not match the array's shape {tuple(arr.shape)}")
        return axes
    if arr.ndim == 3:
        return "TYX"
    if arr.ndim == 5:
        return "TLZYX"
    if arr.ndim == 4:  # (T, L, Y, X) when the first sample passes as class probabilities
        try:
            check_samples(np.asarray(arr[0])[None], stored_dtype=arr.dtype)
        except StoreValidationError:
            return "TZYX"
        return "TLYX"
    raise ConformalError(
        f"{path}: samples must have shape (T, L, *S) or (T, *S) with S = (Y, X) or (Z, Y, X), "
        f"got {tuple(arr.shape)}"
    )


def _sample_error(source: str, t: int, exc: StoreValidationError, has_classes: bool) -> ConformalError:
    """The check of sample ``t`` (given alone, as ``samples[t:t+1]``) as an error naming the file and t."""
    detail = str(exc).removeprefix("samples: ")
    detail = re.sub(r"(= |at )\(0, ", rf"\g<1>({t}, ", detail, count=1)  # positions: t within the whole array
    if has_classes:
        return ConformalError(f"{source}: sample {t}: {detail}")
    return ConformalError(
        f"{source}: sample {t}: foreground probabilities p must be in [0, 1]; checked as the classes "
        f"l = 0: 1 - p, l = 1: p: {detail}"
    )


def summarize_samples(
    samples: Any, axes: str, *, atol: float | None = None, source: str = "samples"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probability, predictive entropy and argmax of softmax samples, streaming over T.

    Parameters
    ----------
    samples : array-like
        ``(T, L, *S)`` class probabilities (``axes`` starting ``"TL"``) or ``(T, *S)`` foreground
        probabilities of a binary model (``axes`` starting ``"T"`` then spatial). Read one sample
        at a time, so a memory-mapped or zarr array is never loaded whole.
    axes : str
        One of ``"TLYX"``, ``"TLZYX"``, ``"TYX"``, ``"TZYX"``.
    atol : float, optional
        Tolerance on ``|Σ_l p_l − 1|`` (default :func:`~napari_conformal.core.validation.sum_tolerance`
        of the array's dtype: 1e-3 for float16, 1e-4 otherwise).
    source : str
        Name for error messages.

    Returns
    -------
    mean : float32 array, shape ``(L, *S)``
        Mean over T of the class probabilities (L = 2 for foreground input: ``1 − p``, ``p``).
    entropy : float32 array, shape ``S``
        ``−Σ_l m_l ln m_l`` of the mean ``m`` (nats; 0 ln 0 = 0), in ``[0, ln L]``.
    argmax : integer array, shape ``S``
        Class of highest mean probability (ties to the lower index).

    Raises
    ------
    ConformalError
        Non-finite values, values outside [0, 1], or class probabilities not summing to 1 (the check
        of :func:`napari_conformal.core.validation.check_samples`, naming the file and the sample).
    """
    if axes not in SAMPLES_AXES:
        raise ConformalError(f"axes must be one of {', '.join(SAMPLES_AXES)}, got {axes!r}")
    has_classes = axes[1] == "L"
    n_t = int(samples.shape[0])
    if n_t < 1:
        raise ConformalError(
            f"{source}: needs at least one sample (T >= 1), got shape {tuple(samples.shape)}"
        )
    total = None
    for t in range(n_t):
        p = np.asarray(samples[t])
        if not has_classes:  # a binary model's foreground probability: the classes (1 - p, p)
            p = np.asarray(p, dtype=np.float32)
            p = np.stack([1.0 - p, p])
        try:
            check_samples(p[None], atol=atol, stored_dtype=samples.dtype)
        except StoreValidationError as exc:
            raise _sample_error(source, t, exc, has_classes) from None
        total = p.astype(np.float64) if total is None else total + p
    mean = (total / n_t).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(mean > 0, -mean * np.log(np.where(mean > 0, mean, 1.0)), 0.0)
    entropy = np.maximum(terms.sum(axis=0), 0.0).astype(np.float32)
    argmax = mean.argmax(axis=0).astype(labels_storage_dtype(mean.shape[0]))
    return mean, entropy, argmax


def _sidecar_entries(path: Path) -> tuple[Any, dict[str, Any]]:
    """The samples array and its optional ``axes`` / ``spacing`` / ``label_names`` entries."""
    suffix = suffix_of(path)
    if zarr_node(path) is not None:
        arr = open_zarr_array(path)
        attrs = dict(arr.attrs)
        return arr, {k: attrs[k] for k in ("axes", "spacing", "label_names") if k in attrs}
    if suffix == ".npy":
        return load_npy(path), {}
    members = load_npz(path)
    extras = {k: members.pop(k) for k in ("axes", "spacing", "label_names") if k in members}
    if "samples" in members:
        return members["samples"], extras
    if len(members) == 1:
        return next(iter(members.values())), extras
    raise ConformalError(
        f"{path}: a samples .npz must hold a 'samples' member or exactly one array; found {sorted(members)}"
    )


def read_samples(path: str | os.PathLike[str]) -> list[LayerData]:
    """Layers for a ``*_samples`` array (see the module docstring): mean probabilities, entropy, argmax.

    Raises
    ------
    ConformalError
        Unreadable file, unexpected shape, values that are not probabilities.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise ConformalError(f"{p}: no such file or directory")
    arr, extras = _sidecar_entries(p)
    if not (np.issubdtype(np.dtype(arr.dtype), np.floating)):
        raise ConformalError(f"{p}: samples must be floating-point probabilities, got dtype {arr.dtype}")
    axes = _infer_axes(p, arr, extras.get("axes"))
    mean, entropy, argmax = summarize_samples(arr, axes, source=str(p))
    n_labels, ndim = mean.shape[0], mean.ndim - 1
    spacing = extras.get("spacing")
    if spacing is None:
        scale = [1.0] * ndim
    else:
        scale = [float(s) for s in np.asarray(spacing, dtype=float).ravel()]
        if len(scale) != ndim or not all(math.isfinite(s) and s > 0 for s in scale):
            raise ConformalError(f"{p}: spacing {scale} must hold {ndim} positive numbers")
    names = extras.get("label_names")
    names = default_label_names(n_labels) if names is None else [str(n) for n in np.asarray(names).ravel()]
    if len(names) != n_labels:
        raise ConformalError(f"{p}: label_names has {len(names)} entries for L={n_labels} classes")
    stem = stem_of(p).removesuffix("_samples") or stem_of(p)
    prov = {
        "source": "samples",
        "path": str(p.resolve()),
        "axes": axes,
        "n_samples": int(arr.shape[0]),
        "label_names": names,
        "spacing": scale,
    }
    layers: list[LayerData] = []
    for k in range(1, n_labels):
        layers.append(
            (
                mean[k],
                {
                    "name": f"{stem} mean p({names[k]})",
                    "scale": scale,
                    "contrast_limits": [0.0, 1.0],
                    "colormap": "magma",
                    "blending": "additive",
                    "metadata": {PROVENANCE_KEY: {**prov, "view": f"mean probability of class {k}"}},
                },
                "image",
            )
        )
    layers.append(
        (
            entropy,
            {
                "name": f"{stem} entropy",
                "scale": scale,
                "contrast_limits": [0.0, float(np.log(n_labels))],
                "colormap": "viridis",
                "visible": False,
                "metadata": {PROVENANCE_KEY: {**prov, "view": "predictive entropy (nats)"}},
            },
            "image",
        )
    )
    layers.append(
        (
            argmax,
            {
                "name": f"{stem} argmax",
                "scale": scale,
                "features": class_features(names),
                "opacity": 0.6,
                "metadata": {PROVENANCE_KEY: {**prov, "view": "argmax of the mean"}},
            },
            "labels",
        )
    )
    return layers
