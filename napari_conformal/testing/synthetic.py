"""Seeded synthetic segmentation data with a known truth, 2D or 3D.

Two generators produce arrays in the layout of the dataset store
(``images (N, *S)``, ``samples (N, T, L, *S)``, ``labels (N, *S)``), fast
enough to draw fresh data for every repetition of a statistical test.

:func:`binary_blobs_dataset` (standard CRC, RW-CP, Consema)
    The ground truth is a union of 1–``max_blobs`` axis-aligned ellipses
    (ellipsoids in 3D) with random centres and radii. The model's foreground
    logit is ``φ/width + noise·η + bias``: ``φ`` an approximate signed distance
    to the truth (positive inside), ``η`` a smooth unit-variance random field.
    The smooth error field makes the model miss parts of the truth and add
    false positives, so threshold calibration is non-trivial. The ``T``
    samples add a further smooth field per sample on the logit scale:
    ``S_t = sigmoid(logit + sample_noise·η_t)``, stored as ``(1 − S_t, S_t)``.

:func:`lowrank_multiclass_dataset` (CONSIGN, pixel-wise sets)
    ``L`` classes (background 0) in nested shells of one ellipse or in
    adjacent ellipses. Per image the mean logits ``m (L, *S)`` come from the
    region geometry and ``K`` smooth random directions ``v_k (L, *S)``,
    concentrated near region boundaries, span the uncertainty::

        sample_t = softmax_L(m + amplitude · Σ_k z_{t,k} v_k),  z_{t,k} ~ N(0, 1)
        truth    = argmax_L(m + amplitude · Σ_k z*_k v_k),       z*_k ~ N(0, 1)

    The truth is one more independent draw from the same K-dimensional model,
    so the samples and the truth are exchangeable members of one family and a
    set that covers the family's spread covers the truth at a meaningful
    rate.

Both use one ``numpy.random.Generator`` seeded by ``seed``: the same
arguments give bit-identical arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_conformal.errors import ConformalError

__all__ = ["binary_blobs_dataset", "lowrank_multiclass_dataset", "smooth_noise"]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ConformalError(f"shape must be 2D or 3D with every side >= 8, got {shape}")
    return shape


def _check_count(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConformalError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def smooth_noise(
    rng: np.random.Generator, lead: tuple[int, ...], shape: tuple[int, ...], sigma: float
) -> np.ndarray:
    """Gaussian-smoothed white noise normalised to zero mean and unit variance per field.

    Parameters
    ----------
    rng : numpy.random.Generator
    lead : tuple of int
        Batch axes, each field is independent.
    shape : tuple of int
        Spatial shape S.
    sigma : float
        Smoothing scale in pixels (correlation length).

    Returns
    -------
    ndarray of float64, shape (*lead, *S)
    """
    white = rng.standard_normal(lead + shape)
    axes = tuple(range(len(lead), len(lead) + len(shape)))
    # periodic Gaussian smoothing as a product in Fourier space (much faster than
    # separable convolution for wide kernels): transfer function exp(−2π²σ²|f|²)
    gain = np.ones(1)
    for a, s in enumerate(shape):
        f = np.fft.rfftfreq(s) if a == len(shape) - 1 else np.fft.fftfreq(s)
        g = np.exp(-2.0 * (np.pi * float(sigma) * f) ** 2)
        gain = np.multiply.outer(gain, g) if a else g
    field = np.fft.irfftn(np.fft.rfftn(white, axes=axes) * gain, s=shape, axes=axes)
    field -= field.mean(axis=axes, keepdims=True)
    field /= field.std(axis=axes, keepdims=True) + 1e-12
    return field


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Pixel-centre coordinates, one broadcastable array per axis."""
    return [
        np.arange(s, dtype=np.float64).reshape((1,) * (1 + a) + (s,) + (1,) * (len(shape) - a - 1))
        for a, s in enumerate(shape)
    ]


def _ellipse_rho(centres: np.ndarray, radii: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Normalised radius ``ρ = sqrt(Σ_d ((x_d − c_d)/r_d)²)`` of ellipses.

    centres, radii : shape (N, D); returns shape (N, *S) (ρ ≤ 1 inside).
    """
    sq = 0.0
    for a, coords in enumerate(_grid(shape)):
        c = centres[:, a].reshape((-1,) + (1,) * len(shape))
        r = radii[:, a].reshape((-1,) + (1,) * len(shape))
        sq = sq + ((coords - c) / r) ** 2
    return np.sqrt(sq)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def binary_blobs_dataset(
    n: int,
    shape: Sequence[int] = (64, 64),
    n_samples: int = 8,
    *,
    max_blobs: int = 2,
    radius_range: tuple[float, float] = (0.1, 0.25),
    width: float = 1.5,
    noise: float = 1.5,
    sample_noise: float = 0.75,
    bias: float = 0.0,
    smoothness: float = 3.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary segmentation data: ellipse unions with a noisy foreground model.

    Parameters
    ----------
    n : int
        Number of images N.
    shape : sequence of int
        Spatial shape S, 2D (Y, X) or 3D (Z, Y, X), every side ≥ 8.
    n_samples : int
        Number T of model samples per image.
    max_blobs : int
        Each image has 1..max_blobs ellipses (uniform).
    radius_range : (float, float)
        Ellipse semi-axes as fractions of the side length (each axis drawn
        independently, at least 2 pixels).
    width : float
        Logit slope scale in pixels: the clean logit is ``φ / width``.
    noise : float
        Amplitude (logit units) of the smooth error field of the mean model.
    sample_noise : float
        Amplitude (logit units) of the per-sample smooth perturbation.
    bias : float
        Constant added to the logit (negative: the model under-segments).
    smoothness : float
        Correlation length (pixels) of the random fields.
    seed : int
        Seed of the random stream.

    Returns
    -------
    images : ndarray of float32, shape (N, *S)
        Truth with contrast 1 plus smooth and white noise.
    samples : ndarray of float32, shape (N, T, 2, *S)
        Softmax samples (background, foreground), summing to 1 over axis 2.
    labels : ndarray of int32, shape (N, *S)
        Ground truth in {0, 1}; every image has foreground.
    """
    n = _check_count(n, "n")
    shape = _check_shape(shape)
    t = _check_count(n_samples, "n_samples")
    max_blobs = _check_count(max_blobs, "max_blobs")
    lo, hi = (float(v) for v in radius_range)
    if not 0 < lo <= hi < 0.5:
        raise ConformalError(f"radius_range must satisfy 0 < low <= high < 0.5, got {radius_range}")
    rng = np.random.default_rng(seed)
    d = len(shape)
    size = np.asarray(shape, dtype=np.float64)
    n_blobs = rng.integers(1, max_blobs + 1, size=n)
    radii = np.maximum(rng.uniform(lo, hi, size=(n, max_blobs, d)) * size, 2.0)
    centres = rng.uniform(radii, size - 1.0 - radii)
    phi = np.full((n, *shape), -np.inf)
    for b in range(max_blobs):
        rho = _ellipse_rho(centres[:, b], radii[:, b], shape)
        # (1 − ρ)·r̄ approximates the signed distance (pixels) near the boundary
        level = (1.0 - rho) * radii[:, b].mean(axis=1).reshape((-1,) + (1,) * d)
        active = (b < n_blobs).reshape((-1,) + (1,) * d)
        phi = np.where(active, np.maximum(phi, level), phi)
    labels = (phi >= 0).astype(np.int32)
    logit = phi / float(width) + float(noise) * smooth_noise(rng, (n,), shape, smoothness) + float(bias)
    fg = _sigmoid(logit[:, None] + float(sample_noise) * smooth_noise(rng, (n, t), shape, smoothness))
    fg = fg.astype(np.float32)
    samples = np.stack([np.float32(1.0) - fg, fg], axis=2)
    images = (
        labels + 0.3 * smooth_noise(rng, (n,), shape, 2 * smoothness) + 0.2 * rng.standard_normal((n, *shape))
    )
    return images.astype(np.float32), samples, labels


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def lowrank_multiclass_dataset(
    n: int,
    shape: Sequence[int] = (64, 64),
    n_classes: int = 3,
    n_samples: int = 20,
    rank: int = 3,
    *,
    layout: str = "nested",
    amplitude: float = 3.0,
    sharpness: float = 1.0,
    boundary_width: float = 3.0,
    smoothness: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-class data whose samples and truth share a rank-K logit model.

    Parameters
    ----------
    n : int
        Number of images N.
    shape : sequence of int
        Spatial shape S, 2D or 3D, every side ≥ 8.
    n_classes : int
        Number of labels L ≥ 2 (background 0 included).
    n_samples : int
        Number T of samples per image.
    rank : int
        Number K ≥ 1 of random directions per image.
    layout : {"nested", "adjacent"}
        ``nested``: class l occupies the shell ``f_{l+1} < ρ ≤ f_l``,
        ``f_l = 1 − (l−1)/(L−1)``, of one ellipse with normalised radius ρ
        (class L−1 innermost, like a cavity inside a wall);
        ``adjacent``: one ellipse per foreground class, side by side along
        the last axis.
    amplitude : float
        Logit scale of the random directions.
    sharpness : float
        Logit per pixel of distance from a region boundary in the mean model.
    boundary_width : float
        Pixels over which the directions decay away from region boundaries
        (they keep 10 % of their amplitude far from boundaries).
    smoothness : float
        Correlation length (pixels) of the directions.
    seed : int
        Seed of the random stream.

    Returns
    -------
    images : ndarray of float32, shape (N, *S)
        Class-wise intensity of the mean segmentation plus noise.
    samples : ndarray of float32, shape (N, T, L, *S)
        Softmax samples, summing to 1 over axis 2.
    labels : ndarray of int32, shape (N, *S)
        Truth in 0..L−1, one independent draw of the same model.
    """
    n = _check_count(n, "n")
    shape = _check_shape(shape)
    n_classes = _check_count(n_classes, "n_classes", 2)
    t = _check_count(n_samples, "n_samples")
    k = _check_count(rank, "rank")
    if layout not in ("nested", "adjacent"):
        raise ConformalError(f"layout must be 'nested' or 'adjacent', got {layout!r}")
    rng = np.random.default_rng(seed)
    d = len(shape)
    size = np.asarray(shape, dtype=np.float64)
    n_fg = n_classes - 1
    expand = (-1,) + (1,) * d
    logits = np.zeros((n, n_classes, *shape))
    if layout == "nested":
        # clipped so that a centre range exists on small grids (a no-op from 15 pixels up)
        radii = np.minimum(rng.uniform(0.22, 0.4, size=(n, d)) * size, (size - 3.0) / 2.0)
        centres = rng.uniform(radii + 1.0, size - 2.0 - radii)
        rho = _ellipse_rho(centres, radii, shape)
        rbar = radii.mean(axis=1).reshape(expand)
        # ψ_l > 0 inside radius f_l = 1 − (l−1)/L' (pixels), class l = shell between f_l and f_{l+1}
        psi = [(1.0 - (l - 1) / n_fg - rho) * rbar for l in range(1, n_classes)]
        for l in range(1, n_classes):
            inner = -psi[l] if l < n_fg else np.inf
            logits[:, l] = sharpness * np.minimum(psi[l - 1], inner)
        dist = np.min(np.abs(np.stack(psi)), axis=0)
    else:
        band = size[-1] / n_fg
        psis = []
        for l in range(1, n_classes):
            r = rng.uniform(0.2, 0.4, size=(n, d)) * size
            r[:, -1] = rng.uniform(0.25, 0.42, size=n) * band
            r = np.minimum(r, (size - 3.0) / 2.0)
            c = rng.uniform(r + 1.0, size - 2.0 - r)
            c[:, -1] = (l - 0.5) * band + rng.uniform(-0.05, 0.05, size=n) * band
            psi = (1.0 - _ellipse_rho(c, r, shape)) * r.mean(axis=1).reshape(expand)
            logits[:, l] = sharpness * psi
            psis.append(psi)
        dist = np.min(np.abs(np.stack(psis)), axis=0)
    envelope = 0.1 + 0.9 * np.exp(-0.5 * (dist / float(boundary_width)) ** 2)  # (N, *S)
    directions = smooth_noise(rng, (n, k, n_classes), shape, smoothness) * envelope[:, None, None]
    z = rng.standard_normal((n, t + 1, k))
    samples = np.empty((n, t, n_classes, *shape), dtype=np.float32)
    labels = np.empty((n, *shape), dtype=np.int32)
    for i in range(n):  # per image keeps the (T, L, *S) temporaries small
        draws = logits[i] + float(amplitude) * np.tensordot(z[i], directions[i], axes=(1, 0))
        samples[i] = _softmax(draws[:t], axis=1)
        labels[i] = np.argmax(draws[t], axis=0)
    anatomy = np.argmax(logits, axis=1)
    intensity = np.linspace(0.0, 1.0, n_classes)
    images = intensity[anatomy] + 0.1 * rng.standard_normal((n, *shape))
    return images.astype(np.float32), samples, labels
