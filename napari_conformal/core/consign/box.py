"""The λ-scaled box of principal-component coefficients (CONSIGN eq. 6; docs/algorithms.md#coefficient-box).

With the quantiles ``a_k, b_k`` of eq. 5 and the singular values σ_k::

    m_k     = (a_k + b_k) / 2                   centre
    h_k     = σ_k · (b_k − a_k) / 2             half-width per unit λ
    A_k(λ)  = m_k − λ h_k,   B_k(λ) = m_k + λ h_k

(σ_k is the raw singular value, as in the reference code.) The boxes are
nested: ``λ ≤ λ'`` implies ``[A(λ), B(λ)] ⊆ [A(λ'), B(λ')]``, which is what
makes CONSIGN's loss monotone in λ.

The smallest box that contains a coefficient vector ``c`` has ::

    λ(c) = max_k |c_k − m_k| / h_k

(a coordinate with ``h_k = 0`` must equal ``m_k``, else ``λ(c) = ∞``). The
coverage search records every candidate by this λ, so one search answers
every λ at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from napari_conformal.core.consign.basis import ImageBasis, check_quantile_level, coefficient_quantiles
from napari_conformal.core.consign.spill import BasisLike, SpilledBasis
from napari_conformal.errors import CalibrationError

__all__ = ["CoefficientBox", "check_lambda", "make_box"]


def check_lambda(lam: float | torch.Tensor, name: str = "lam") -> None:
    """Raise :class:`CalibrationError` unless ``lam`` is finite and ≥ 0 (any shape)."""
    t = torch.as_tensor(lam, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise CalibrationError(f"{name} must be finite and >= 0, got {lam!r}")


@dataclass(frozen=True)
class CoefficientBox:
    """The family of boxes ``[m − λh, m + λh]`` of one or many images.

    Attributes
    ----------
    centre : Tensor, shape (..., K), float64
        m_k.
    half_width : Tensor, shape (..., K), float64
        h_k ≥ 0, the half-width at λ = 1.
    quantile_level : float
        The q the quantiles were taken at.
    """

    centre: torch.Tensor
    half_width: torch.Tensor
    quantile_level: float

    @property
    def k(self) -> int:
        """Number of coefficients K."""
        return int(self.centre.shape[-1])

    def _lam(self, lam: float | torch.Tensor) -> torch.Tensor:
        check_lambda(lam)
        t = torch.as_tensor(lam, dtype=torch.float64, device=self.centre.device)
        return t[..., None] if t.ndim else t

    def lower(self, lam: float | torch.Tensor) -> torch.Tensor:
        """``A(λ) = m − λh``; a tensor λ of shape (...,) broadcasts against the leading axes."""
        return self.centre - self._lam(lam) * self.half_width

    def upper(self, lam: float | torch.Tensor) -> torch.Tensor:
        """``B(λ) = m + λh``."""
        return self.centre + self._lam(lam) * self.half_width

    def bounds(self, lam: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A(λ), B(λ))``."""
        return self.lower(lam), self.upper(lam)

    def clip(self, coefficients: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
        """Project coefficients (..., K) onto the box at λ (float64)."""
        lo, hi = self.bounds(lam)
        return torch.maximum(torch.minimum(coefficients.to(torch.float64), hi), lo)

    def lambda_of(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Smallest λ whose box contains ``coefficients`` (shape (..., K) → (...)), float64."""
        c = coefficients.to(torch.float64)
        dev = (c - self.centre).abs()
        h = self.half_width
        ratio = torch.where(h > 0, dev / torch.where(h > 0, h, torch.ones_like(h)), torch.zeros_like(dev))
        ratio = torch.where((h <= 0) & (dev > 0), torch.full_like(dev, float("inf")), ratio)
        return ratio.amax(dim=-1)

    def contains(self, coefficients: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
        """Whether ``A(λ) ≤ c ≤ B(λ)`` holds in every coordinate (shape (...))."""
        lo, hi = self.bounds(lam)
        c = coefficients.to(torch.float64)
        return ((c >= lo) & (c <= hi)).all(dim=-1)

    def __getitem__(self, index: int | slice | torch.Tensor) -> CoefficientBox:
        return CoefficientBox(self.centre[index], self.half_width[index], self.quantile_level)


def make_box(basis: BasisLike | Sequence[BasisLike], quantile_level: float) -> CoefficientBox:
    """The eq.-6 box family of one image (K,) or of a list of images (N, K).

    Parameters
    ----------
    basis : ImageBasis or SpilledBasis, or a list of them
        The image(s)' bases (same K); only their σ and γ are read (a spilled basis stays on disk).
    quantile_level : float
        q in (0, 0.5); CONSIGN's default is α/2.
    """
    q = check_quantile_level(quantile_level)
    if isinstance(basis, (ImageBasis, SpilledBasis)):
        gamma, sigma = basis.coefficients, basis.singular_values
    else:
        if len(basis) == 0:
            raise CalibrationError("make_box needs at least one image basis")
        ks = {b.k for b in basis}
        if len(ks) != 1:
            raise CalibrationError(f"all bases must have the same k, got {sorted(ks)}")
        gamma = torch.stack([b.coefficients for b in basis])
        sigma = torch.stack([b.singular_values for b in basis])
    a, b = coefficient_quantiles(gamma, q)
    centre = 0.5 * (a + b)
    half_width = sigma.to(torch.float64) * 0.5 * (b - a)
    return CoefficientBox(centre, half_width.clamp_min(0.0), q)
