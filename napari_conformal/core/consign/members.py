"""Members of a calibrated CONSIGN set: the slider path, random members, directions, regions.

For one image with basis (μ, u_1..u_K) and box ``[A(λ̂), B(λ̂)]`` (eq. 6) the
segmentations the set is built from are ``P(μ + Σ_k c_k u_k)`` for c in the
box (eq. 7; P = argmax over labels, ties to the lower label):

* :func:`segment` — the live-slider path: one matrix–vector product
  ``μ + Uᵀc`` and one reduction over the labels (a comparison for L = 2), no
  Python loop over K or L;
* :func:`segment_batch` — many coefficient vectors at once (chunked);
* :func:`sample_coefficients` / :func:`sample_members` — N members with
  coefficients uniform in the box (docs/algorithms.md#sampling-members);
* :func:`principal_maps` — the K directions as (L, *S) maps;
* :func:`~napari_conformal.core.consign.intervals.label_regions` — labels a
  pixel takes in every / some member (re-exported here).

:class:`ConsignSet` bundles one image's set at λ̂ and returns numpy arrays
for viewers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis
from napari_conformal.core.consign.box import CoefficientBox, check_lambda
from napari_conformal.core.consign.intervals import LabelRegions, label_regions
from napari_conformal.errors import ConformalError

__all__ = [
    "ConsignSet",
    "LabelRegions",
    "label_regions",
    "principal_maps",
    "sample_coefficients",
    "sample_members",
    "segment",
    "segment_batch",
]

_CHUNK_BYTES = 64 * 2**20


def _coefficients(basis: ImageBasis, coefficients: np.ndarray | torch.Tensor, batched: bool) -> torch.Tensor:
    c = torch.as_tensor(coefficients, dtype=torch.float32, device=basis.device)
    want = 2 if batched else 1
    if c.ndim != want or c.shape[-1] != basis.k:
        shape = "(N, K)" if batched else "(K,)"
        raise ConformalError(f"coefficients must have shape {shape} with K={basis.k}, got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ConformalError("coefficients must be finite")
    return c


def _labels_dtype(n_labels: int) -> torch.dtype:
    return torch.uint8 if n_labels <= 256 else torch.int64


def segment(basis: ImageBasis, coefficients: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The member ``argmax_l(μ + Σ_k c_k u_k)`` for one coefficient vector (slider path).

    Parameters
    ----------
    basis : ImageBasis
        The image's basis.
    coefficients : array, shape (K,)
        c (need not lie in the box).

    Returns
    -------
    Tensor, shape S
        Labels (uint8 for L ≤ 256, else int64) on the basis' device; ties go
        to the lower label.
    """
    c = _coefficients(basis, coefficients, batched=False)
    scores = torch.addmv(basis.mean, basis.directions.T, c).view(basis.n_labels, -1)
    if basis.n_labels == 2:
        labels = (scores[1] > scores[0]).to(torch.uint8)
    else:
        labels = scores.max(dim=0).indices.to(_labels_dtype(basis.n_labels))
    return labels.view(basis.spatial_shape)


def segment_batch(
    basis: ImageBasis, coefficients: np.ndarray | torch.Tensor, *, chunk_bytes: int = _CHUNK_BYTES
) -> torch.Tensor:
    """Members for N coefficient vectors (N, K) → labels (N, *S), computed in chunks."""
    c = _coefficients(basis, coefficients, batched=True)
    n, d = c.shape[0], basis.mean.numel()
    out = torch.empty((n, basis.n_pixels), dtype=_labels_dtype(basis.n_labels), device=basis.device)
    step = max(1, int(chunk_bytes) // (4 * d))
    for start in range(0, n, step):
        part = torch.addmm(basis.mean[None, :], c[start : start + step], basis.directions)
        part = part.view(part.shape[0], basis.n_labels, -1)
        if basis.n_labels == 2:
            out[start : start + step] = (part[:, 1] > part[:, 0]).to(out.dtype)
        else:
            out[start : start + step] = part.max(dim=1).indices.to(out.dtype)
    return out.view(n, *basis.spatial_shape)


def sample_coefficients(box: CoefficientBox, lam: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """N coefficient vectors uniform in the box at λ: ``c = A + U·(B − A)``, U ~ U[0,1)^K.

    Returns
    -------
    ndarray of float64, shape (N, K)
    """
    check_lambda(lam)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConformalError(f"n must be a non-negative integer, got {n!r}")
    lo, hi = (t.detach().cpu().numpy() for t in box.bounds(lam))
    if lo.ndim != 1:
        raise ConformalError(f"sample_coefficients needs the box of one image (K,), got shape {lo.shape}")
    return lo + rng.random((int(n), lo.size)) * (hi - lo)


def sample_members(
    basis: ImageBasis, box: CoefficientBox, lam: float, n: int, rng: np.random.Generator | int = 0
) -> torch.Tensor:
    """N members of the set at λ with coefficients uniform in the box (labels (N, *S))."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return segment_batch(basis, sample_coefficients(box, lam, n, gen))


def principal_maps(basis: ImageBasis) -> torch.Tensor:
    """The directions u_k as maps, shape (K, L, *S) (a view of the basis)."""
    return basis.directions.view(basis.k, basis.n_labels, *basis.spatial_shape)


@dataclass(frozen=True)
class ConsignSet:
    """One image's calibrated CONSIGN set ``{P(μ + Σ c_k u_k) : c ∈ [A(λ̂), B(λ̂)]}``.

    Attributes
    ----------
    basis : ImageBasis
    box : CoefficientBox
        The image's box family, shape (K,).
    lambda_hat : float
    """

    basis: ImageBasis
    box: CoefficientBox
    lambda_hat: float

    def __post_init__(self) -> None:
        check_lambda(self.lambda_hat, "lambda_hat")
        if self.box.centre.ndim != 1 or self.box.k != self.basis.k:
            raise ConformalError(
                f"box must have shape (K,) = ({self.basis.k},), got {tuple(self.box.centre.shape)}"
            )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Slider ranges ``(A(λ̂), B(λ̂))``, each (K,) float64."""
        lo, hi = self.box.bounds(self.lambda_hat)
        return lo.cpu().numpy(), hi.cpu().numpy()

    def centre(self) -> np.ndarray:
        """The box centre m (K,), the default slider position."""
        return self.box.centre.cpu().numpy()

    def segment(self, coefficients: np.ndarray) -> np.ndarray:
        """Member for slider coefficients (K,) → labels S."""
        return segment(self.basis, coefficients).cpu().numpy()

    def sample(self, n: int, rng: np.random.Generator | int = 0) -> np.ndarray:
        """N random members (N, *S)."""
        return sample_members(self.basis, self.box, self.lambda_hat, n, rng).cpu().numpy()

    def principal_maps(self) -> np.ndarray:
        """Directions (K, L, *S) float32."""
        return principal_maps(self.basis).cpu().numpy()

    def regions(self) -> LabelRegions:
        """Always / possibly label regions (torch masks (L, *S))."""
        return label_regions(self.basis, self.box, self.lambda_hat)
