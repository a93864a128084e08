"""A cardiac-like synthetic dataset for CONSIGN benchmarks: small structures, low-rank contour jitter.

:func:`napari_conformal.testing.synthetic.lowrank_multiclass_dataset` draws large
regions, so a useful label-wise accuracy needs large sample variation and the
calibrated λ lands far below the paper's range (λ ∝ 1/σ through eq. 6). This
generator mimics the cardiac MC-dropout setting of the paper instead: a few
small structures (a disc, a ring around it and an adjacent ellipse, like LV,
myocardium and RV; ellipsoids in 3D) whose boundaries move by about
``shift`` pixels along K smooth random modes::

    d_l(x)     signed distance (pixels) to structure l, positive inside
    w_{k,l}(x) smooth unit-variance fields (correlation length ``smoothness``)
    sample_t   = softmax_l( sharpness · (d_l + shift · Σ_k z_{t,k} w_{k,l}) ),  z ~ N(0, 1)
    truth      = argmax_l( d_l + shift · Σ_k z*_k w_{k,l} + bias · e_l ),    z* ~ N(0, 1)

with label 0 (background) at logit 0 and ``e_l`` a further smooth field the
samples do not span (model error). The truth is an independent draw of the
same modes plus that error, so it is close to, but not exactly on, the span
of the samples' principal directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.testing.synthetic import smooth_noise

__all__ = ["cardiac_phantom"]


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _distances(rng: np.random.Generator, shape: tuple[int, ...], n_labels: int, size: float) -> np.ndarray:
    """Signed distances (n_labels − 1, *S) of the foreground structures of one image."""
    scale = float(size) * min(shape) / 128.0
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float64) / 2 + rng.uniform(-0.08, 0.08, len(shape)) * np.array(shape)
    radius = rng.uniform(7.0, 11.0) * scale
    aspect = rng.uniform(0.8, 1.2, len(shape))
    rho = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, aspect, strict=True)))
    inner = radius - rho  # disc ("LV")
    out = [inner]
    if n_labels > 2:
        thick = rng.uniform(3.0, 5.0) * scale
        out.append(np.minimum(radius + thick - rho, rho - radius))  # ring ("MYO")
    if n_labels > 3:
        offset = np.zeros(len(shape))
        offset[-1] = radius + thick + rng.uniform(5.0, 8.0) * scale
        rv_radius = np.array([rng.uniform(10.0, 14.0), rng.uniform(5.0, 7.0)]) * scale
        rv_radius = np.r_[np.full(len(shape) - 2, rv_radius[0]), rv_radius]
        rv_centre = centre + offset
        rv = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, rv_centre, rv_radius, strict=True)))
        out.append((1.0 - rv) * rv_radius.min())  # adjacent ellipse ("RV")
    for extra in range(4, n_labels):  # further small blobs on a circle around the centre
        angle = 2 * np.pi * extra / max(n_labels, 1)
        offset = np.zeros(len(shape))
        offset[-1], offset[-2] = 3.2 * radius * np.cos(angle), 3.2 * radius * np.sin(angle)
        r = rng.uniform(4.0, 7.0) * scale
        blob = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre + offset, strict=True)))
        out.append(r - blob)
    return np.stack(out)


def cardiac_phantom(
    n: int,
    shape: Sequence[int] = (128, 128),
    n_labels: int = 4,
    n_samples: int = 20,
    rank: int = 5,
    *,
    shift: float = 1.0,
    sharpness: float = 1.5,
    bias: float = 0.5,
    size: float = 1.0,
    smoothness: float = 6.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small structures with low-rank boundary jitter (see the module docstring).

    Parameters
    ----------
    n : int
        Number of images.
    shape : sequence of int
        Spatial shape, 2D or 3D, every side ≥ 16 (structure sizes scale with
        ``size · min(shape)/128``).
    n_labels : int
        L ≥ 2 (background included).
    n_samples : int
        T ≥ 2 samples per image.
    rank : int
        Number of jitter modes ≥ 1.
    shift : float
        Boundary displacement (pixels) per unit mode coefficient.
    sharpness : float
        Logit per pixel of signed distance (softmax width).
    bias : float
        Amplitude (pixels) of the truth's error outside the modes.
    size : float
        Scale of the structures (1: a disc of radius 7–11 pixels at 128²).
    smoothness : float
        Correlation length (pixels) of the fields.
    seed : int
        Seed.

    Returns
    -------
    images : ndarray float32 (N, *S)
    samples : ndarray float32 (N, T, L, *S)
    labels : ndarray int32 (N, *S)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 16:
        raise ConformalError(f"shape must be 2D or 3D with every side >= 16, got {shape}")
    for name, value, low in (
        ("n", n, 1),
        ("n_labels", n_labels, 2),
        ("n_samples", n_samples, 2),
        ("rank", rank, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConformalError(f"{name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    fg = n_labels - 1
    images = np.empty((n, *shape), dtype=np.float32)
    samples = np.empty((n, n_samples, n_labels, *shape), dtype=np.float32)
    labels = np.empty((n, *shape), dtype=np.int32)
    intensity = np.linspace(0.0, 1.0, n_labels)
    for i in range(n):
        dist = _distances(rng, shape, n_labels, size)  # (fg, *S)
        modes = smooth_noise(rng, (rank, fg), shape, smoothness)  # (K, fg, *S)
        error = smooth_noise(rng, (fg,), shape, smoothness)
        z = rng.standard_normal((n_samples + 1, rank))
        jitter = float(shift) * np.tensordot(z, modes, axes=(1, 0))  # (T+1, fg, *S)
        logits = np.zeros((n_samples, n_labels, *shape))
        logits[:, 1:] = float(sharpness) * (dist[None] + jitter[:n_samples])
        samples[i] = _softmax(logits, axis=1)
        truth = np.zeros((n_labels, *shape))
        truth[1:] = dist + jitter[n_samples] + float(bias) * error
        labels[i] = np.argmax(truth, axis=0)
        anatomy = np.argmax(np.concatenate([np.zeros((1, *shape)), dist]), axis=0)
        images[i] = intensity[anatomy] + 0.1 * rng.standard_normal(shape)
    return images, samples, labels
