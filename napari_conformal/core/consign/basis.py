"""Per-image principal basis of the model's samples (CONSIGN eqs. 4–5; docs/algorithms.md#principal-basis).

For one image with T softmax samples ``f^(t) ∈ [0, 1]^{L×S}`` flattened
label-major to ``s_t ∈ R^D`` (``D = L·|S|``)::

    μ      = (1/T) Σ_t s_t
    M      = [s_1 − μ, …, s_T − μ]          (T × D here: one row per sample)
    M      = V Σ Uᵀ                         (thin SVD; rank ≤ T − 1)
    u_k    = k-th right singular vector      (k = 1..K, a unit vector in R^D)
    σ_k    = k-th singular value
    γ_{k,t} = ⟨u_k, s_t − μ⟩ = σ_k V[t, k]    (coefficients of the samples)

The SVD goes through the T × T Gram matrix ``G = M Mᵀ = V Σ² Vᵀ`` in float64,
then ``u_k = Mᵀ v_k / σ_k``: O(T²·D) work and O(T·D) memory per image
(batched over images), exact to float64 round-off for the K ≤ T − 1 leading
directions (``torch.linalg.svd`` of the T × D matrix does the same work
slower on the CPU; ``svd_lowrank`` is randomised, so not used). Directions
whose singular value is below ``rtol·σ_1`` (samples that do not vary along
them) are *degenerate*: their ``u_k`` and coefficients are set to 0, so the
box of that coefficient has zero width.

Signs are fixed so that the largest-magnitude entry of each ``u_k`` is
positive (the set does not depend on the signs; fixing them makes the
coefficient sliders reproducible).

Quantiles (eq. 5, type-7 linear interpolation as ``numpy.quantile``)::

    a_k = Q_q({γ_{k,t}}_t),   b_k = Q_{1−q}({γ_{k,t}}_t),   q = α/2 by default

Everything is computed per image from that image's own samples, in torch on a
chosen device, batched over images of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from napari_conformal.core.device import resolve_device
from napari_conformal.core.progress import check_stop
from napari_conformal.errors import CalibrationError, StoreValidationError

__all__ = [
    "ImageBasis",
    "check_quantile_level",
    "coefficient_quantiles",
    "compute_bases",
    "compute_basis",
]

#: Singular values below ``rtol · σ_1`` are treated as exactly zero.
DEFAULT_RTOL = 1e-6
# Bytes of samples (float32 input + float64 working copy) per batch of images.
_BATCH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ImageBasis:
    """The principal basis of one image's samples.

    Attributes
    ----------
    mean : Tensor, shape (D,), float32
        μ, the mean sample, label-major: ``mean.view(L, *S)`` is the mean
        softmax.
    directions : Tensor, shape (K, D), float32
        Rows ``u_k``: orthonormal (zero rows for degenerate directions).
    singular_values : Tensor, shape (K,), float64
        σ_k, descending (0 for degenerate directions).
    coefficients : Tensor, shape (K, T), float64
        γ_{k,t}, the coefficients of the T samples.
    n_labels : int
        L.
    spatial_shape : tuple of int
        S, e.g. (Y, X) or (Z, Y, X).
    """

    mean: torch.Tensor
    directions: torch.Tensor
    singular_values: torch.Tensor
    coefficients: torch.Tensor
    n_labels: int
    spatial_shape: tuple[int, ...]

    @property
    def k(self) -> int:
        """Number of directions K."""
        return int(self.directions.shape[0])

    @property
    def n_samples(self) -> int:
        """Number of samples T the basis was computed from."""
        return int(self.coefficients.shape[1])

    @property
    def n_pixels(self) -> int:
        """Number of pixels/voxels P = |S|."""
        return int(np.prod(self.spatial_shape))

    @property
    def device(self) -> torch.device:
        """Device holding the tensors."""
        return self.mean.device

    def quantiles(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``, each (K,) float64: the ``level`` and ``1 − level`` quantiles of γ_k."""
        return coefficient_quantiles(self.coefficients, level)

    def to(self, device: torch.device | str) -> ImageBasis:
        """A copy on another device."""
        device = resolve_device(device)
        return ImageBasis(
            self.mean.to(device),
            self.directions.to(device),
            self.singular_values.to(device),
            self.coefficients.to(device),
            self.n_labels,
            self.spatial_shape,
        )


def check_quantile_level(level: float) -> float:
    """Validate the quantile level q of eq. 5: a number in (0, 0.5)."""
    try:
        q = float(level)
    except (TypeError, ValueError):
        raise CalibrationError(f"quantile_level must be a number in (0, 0.5), got {level!r}") from None
    if not (np.isfinite(q) and 0.0 < q < 0.5):
        raise CalibrationError(f"quantile_level must lie in (0, 0.5), got {level!r}")
    return q


def coefficient_quantiles(coefficients: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Type-7 quantiles ``a = Q_q``, ``b = Q_{1−q}`` of the coefficients over the samples (eq. 5).

    Parameters
    ----------
    coefficients : Tensor, shape (..., K, T)
        γ_{k,t}.
    level : float
        q in (0, 0.5).

    Returns
    -------
    a, b : Tensor, shape (..., K), float64
    """
    q = check_quantile_level(level)
    gamma = coefficients.to(torch.float64)
    probs = torch.tensor([q, 1.0 - q], dtype=torch.float64, device=gamma.device)
    qs = torch.quantile(gamma, probs, dim=-1, interpolation="linear")
    return qs[0], qs[1]


def _as_samples(samples: np.ndarray | torch.Tensor, index: int) -> torch.Tensor:
    x = samples if isinstance(samples, torch.Tensor) else torch.from_numpy(np.asarray(samples))
    if x.ndim < 3 or x.ndim > 5:
        raise StoreValidationError(
            f"samples of image {index} must have shape (T, L, *S) with S 2D or 3D, got {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise StoreValidationError(f"samples of image {index} must be floating point, got {x.dtype}")
    return x


def _check_k(k: int, t: int, index: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CalibrationError(f"k (number of principal directions) must be an integer >= 1, got {k!r}")
    if t < int(k) + 1:
        raise CalibrationError(
            f"image {index} has T={t} samples but k={k} directions need T >= k + 1 "
            f"(the centred samples have rank <= T - 1); lower k or draw more samples"
        )
    return int(k)


#: Values per sample row processed at once (float64) in :func:`_basis_batch`; images with more are
#: handled in column chunks, so a 160³ volume's float64 working copy is never in memory whole.
_CHUNK_VALUES = 2**21


def _column_chunks(d: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(d, a + chunk)) for a in range(0, d, chunk)]


def _basis_batch(
    x: torch.Tensor, k: int, rtol: float, first_index: int = 0, chunk: int = _CHUNK_VALUES
) -> tuple[torch.Tensor, ...]:
    """Basis of a batch ``x`` (B, T, D) float32 → mean, directions, σ, γ (batched), in float64.

    The columns (voxel-classes) are processed in chunks of ``chunk``: the Gram matrix is summed over
    the chunks and the directions are filled chunk by chunk, so the float64 working memory is
    ``B·T·chunk`` values whatever D is (one chunk when D ≤ ``chunk``: the computation is then the
    unchunked one, operation for operation).
    """
    b, t, d = x.shape
    spans = _column_chunks(d, chunk)

    def centred(a: int, z: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = x[:, :, a:z].to(torch.float64)
        mean64 = part.mean(dim=1)  # (B, z - a)
        return part.sub_(mean64[:, None, :]), mean64  # in place: part is ours

    mean32 = torch.empty((b, d), dtype=torch.float32, device=x.device)
    gram = torch.zeros((b, t, t), dtype=torch.float64, device=x.device)
    for a, z in spans:
        m, mean64 = centred(a, z)
        bad = (~torch.isfinite(mean64).all(dim=1)).nonzero().flatten()  # NaN/inf anywhere reach the mean
        if bad.numel():
            raise StoreValidationError(f"samples of image {first_index + int(bad[0])} contain NaN or inf")
        gram += m @ m.transpose(1, 2)
        mean32[:, a:z] = mean64.to(torch.float32)
        m_single = m if len(spans) == 1 else None  # one chunk: reused below, not recomputed
        del m
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.flip(-1)[:, :k]
    evecs = evecs.flip(-1)[:, :, :k]  # (B, T, K)
    sigma = evals.clamp_min(0.0).sqrt()
    keep = sigma > rtol * sigma[:, :1]
    sigma = torch.where(keep, sigma, torch.zeros_like(sigma))
    inv = torch.where(keep, 1.0 / torch.where(keep, sigma, torch.ones_like(sigma)), torch.zeros_like(sigma))
    weights = (evecs * inv[:, None, :]).transpose(1, 2)  # (B, K, T)
    directions = torch.empty((b, k, d), dtype=torch.float32, device=x.device)
    best = torch.full((b, k), -1.0, dtype=torch.float32, device=x.device)
    peak = torch.zeros((b, k), dtype=torch.int64, device=x.device)
    for a, z in spans:
        m = centred(a, z)[0] if len(spans) > 1 else m_single
        directions[:, :, a:z] = (weights @ m).to(torch.float32)  # Vᵀ M / σ
        del m
        # sign convention: the largest-magnitude entry of u_k is positive (the first one on ties)
        value, where = directions[:, :, a:z].abs().max(dim=2)
        better = value > best
        best = torch.where(better, value, best)
        peak = torch.where(better, where + a, peak)
    m_single = None
    sign = torch.sign(torch.gather(directions, 2, peak[:, :, None])).squeeze(2).to(torch.float64)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    directions *= sign[:, :, None].to(torch.float32)
    coefficients = (sigma * sign)[:, :, None] * evecs.transpose(1, 2)  # (B, K, T)
    return mean32, directions, sigma, coefficients


def compute_bases(
    samples: Iterable[np.ndarray | torch.Tensor],
    k: int,
    *,
    device: torch.device | str = "cpu",
    rtol: float = DEFAULT_RTOL,
    batch_bytes: int = _BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    total: int | None = None,
) -> list[ImageBasis]:
    """Principal bases of many images, batched on ``device``.

    Parameters
    ----------
    samples : iterable of array, each (T, L, *S); or an array (N, T, L, *S)
        The images' softmax samples (any float dtype; read one image at a
        time, so a lazy sequence over a store works).
    k : int
        Number K of principal directions, ``1 ≤ K ≤ T − 1``.
    device : torch.device or str
        Where to compute and keep the bases.
    rtol : float
        Relative threshold below which singular values count as zero.
    batch_bytes : int
        Device memory for one batch (12 bytes per sample value: the float32
        input and its float64 working copy).
    progress : callable ``(done, total)``, optional
        Called after each batch with the number of images done.
    should_stop : callable, optional
        Polled between batches; True cancels (raises ``Cancelled``).
    total : int, optional
        Number of images for ``progress`` when ``samples`` has no ``len``.

    Returns
    -------
    list of ImageBasis
        One per image, on ``device``.

    Raises
    ------
    StoreValidationError
        A sample array is not (T, L, *S) float, contains NaN or inf, or its
        shape differs from the first image's.
    CalibrationError
        ``k`` is not an integer in 1..T−1.
    """
    device = resolve_device(device)
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    out: list[ImageBasis] = []
    pending: list[torch.Tensor] = []
    shape: tuple[int, ...] | None = None

    def flush() -> None:
        check_stop(should_stop)
        x = pending[0].unsqueeze(0) if len(pending) == 1 else torch.stack(pending)  # no copy of a lone image
        t, n_labels, spatial = x.shape[1], x.shape[2], tuple(x.shape[3:])
        mean, directions, sigma, coefficients = _basis_batch(x.reshape(x.shape[0], t, -1), k, rtol, len(out))
        for j in range(x.shape[0]):
            out.append(ImageBasis(mean[j], directions[j], sigma[j], coefficients[j], n_labels, spatial))
        pending.clear()
        if progress is not None:
            progress(len(out), total if total is not None else len(out))

    for index, raw in enumerate(samples):
        x = _as_samples(raw, index)
        if shape is None:
            shape = tuple(x.shape)
            if shape[1] < 2:
                raise StoreValidationError(f"samples must have L >= 2 labels, got L={shape[1]}")
            _check_k(k, shape[0], index)
            per_image = 12 * int(np.prod(shape))  # float32 input + float64 working copy
            batch = max(1, int(batch_bytes) // max(per_image, 1))
        elif tuple(x.shape) != shape:
            raise StoreValidationError(
                f"samples of image {index} have shape {tuple(x.shape)}, but image 0 has {shape}: "
                "T, L and the spatial shape must agree"
            )
        pending.append(x.to(device=device, dtype=torch.float32))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return out


def compute_basis(
    samples: np.ndarray | torch.Tensor,
    k: int,
    *,
    device: torch.device | str = "cpu",
    rtol: float = DEFAULT_RTOL,
) -> ImageBasis:
    """Principal basis of one image's samples ``(T, L, *S)``; see :func:`compute_bases`."""
    return compute_bases([samples], k, device=device, rtol=rtol)[0]

