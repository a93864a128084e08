"""Interval arithmetic over the coefficient box: which labels a pixel can take.

For coefficients ``c`` in the box ``[m − λh, m + λh]`` (eq. 6) the score of
label l at pixel p is affine in c, ``s_l(c) = μ_l + Σ_k c_k u_{k,l}``, so the
difference of two labels' scores ranges over an interval whose ends are exact::

    s_l(c) − s_l'(c) ∈ [g − λR, g + λR],   g = s_l(m) − s_l'(m),
                                             R = Σ_k h_k |u_{k,l} − u_{k,l'}|

From the pairwise intervals (ties go to the lower label, as ``argmax``):

* **always[l]** at p: ``g − λR > tol`` for every l' ≠ l. Exact for every L:
  the label is l at every point of the box iff each pairwise difference
  stays positive on the whole box, and each pairwise minimum is exact.
* **possibly[l]** at p: ``g + λR > −tol`` for every l' ≠ l. Exact for L = 2
  (one pair); for L > 2 it is a *superset* of the true region (each rival
  is beaten somewhere in the box, maybe not at one common c), i.e.
  conservative: every member's label l lies inside possibly[l].
* **flip λ** of p: the smallest λ at which the centre label (the label at
  c = m) is no longer certain, ``min_{l'} (g − tol₀)/(R + tol₁)`` — a pixel
  is *free* (its label can change in the box at λ) iff ``λ ≥ flip λ``.

``tol = rtol · (S₀ + λ S₁)`` with ``S₀ = |μ_l| + |μ_l'| + Σ_k |m_k|(|u_{k,l}| + |u_{k,l'}|)``
and ``S₁ = Σ_k h_k (|u_{k,l}| + |u_{k,l'}|)`` bounds the float32 rounding of the
scores (rtol = 1e-5 is ~25× the worst-case accumulation error for K ≤ 10),
so a pixel called fixed really is fixed in float32 evaluation, and the
regions err on the conservative side by at most that margin.

Everything runs over chunks of pixels (no loop over K; L² pairs per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_conformal.core.consign.basis import ImageBasis
from napari_conformal.core.consign.box import CoefficientBox, check_lambda

__all__ = ["DEFAULT_RTOL", "LabelRegions", "flip_lambda", "label_regions"]

#: Relative rounding tolerance of the interval tests.
DEFAULT_RTOL = 1e-5
_CHUNK_PIXELS = 1 << 18


@dataclass(frozen=True)
class LabelRegions:
    """Labels a pixel takes in every / in some member of the box at λ.

    Attributes
    ----------
    always : Tensor of bool, shape (L, *S)
        ``always[l]``: every member of the set labels the pixel l (exact).
    possibly : Tensor of bool, shape (L, *S)
        ``possibly[l]``: some member labels the pixel l (exact for L = 2,
        a superset for L > 2).
    """

    always: torch.Tensor
    possibly: torch.Tensor

    def uncertain(self) -> torch.Tensor:
        """Pixels (bool, shape S) whose label is not the same in every member."""
        return ~self.always.any(dim=0)


def _pair_terms(
    basis: ImageBasis, box: CoefficientBox, sl: slice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For pixels ``sl``: centre difference g, radius R, scales S₀ and S₁, each (L, L, p)."""
    n_labels, k = basis.n_labels, basis.k
    dev = basis.device
    m = box.centre.to(device=dev, dtype=torch.float32)
    h = box.half_width.to(device=dev, dtype=torch.float32)
    mu = basis.mean.view(n_labels, -1)[:, sl]  # (L, p)
    u = basis.directions.view(k, n_labels, -1)[:, :, sl]  # (K, L, p)
    centre = mu + torch.einsum("k,klp->lp", m, u)
    g = centre[:, None, :] - centre[None, :, :]
    diff = (u[:, :, None, :] - u[:, None, :, :]).abs()  # (K, L, L, p)
    radius = torch.einsum("k,kabp->abp", h, diff)
    absu = u.abs()
    pair_abs = absu[:, :, None, :] + absu[:, None, :, :]
    mu_abs = mu.abs()
    s0 = mu_abs[:, None, :] + mu_abs[None, :, :] + torch.einsum("k,kabp->abp", m.abs(), pair_abs)
    s1 = torch.einsum("k,kabp->abp", h, pair_abs)
    return g, radius, s0, s1


def label_regions(
    basis: ImageBasis, box: CoefficientBox, lam: float, *, rtol: float = DEFAULT_RTOL
) -> LabelRegions:
    """Always / possibly label regions of one image's set at λ.

    Parameters
    ----------
    basis : ImageBasis
        The image's basis.
    box : CoefficientBox
        Its box family (shape (K,)).
    lam : float
        λ ≥ 0 (λ̂ for the calibrated set).
    rtol : float
        Relative rounding tolerance (see module docstring).

    Returns
    -------
    LabelRegions
        Masks of shape (L, *S) on the basis' device.
    """
    check_lambda(lam)
    lam = float(lam)
    n_labels, n_pix = basis.n_labels, basis.n_pixels
    always = torch.empty(n_labels, n_pix, dtype=torch.bool, device=basis.device)
    possibly = torch.empty_like(always)
    eye = torch.eye(n_labels, dtype=torch.bool, device=basis.device)[:, :, None]
    for start in range(0, n_pix, _CHUNK_PIXELS):
        sl = slice(start, min(start + _CHUNK_PIXELS, n_pix))
        g, radius, s0, s1 = _pair_terms(basis, box, sl)
        tol = rtol * (s0 + lam * s1)
        always[:, sl] = ((g - lam * radius > tol) | eye).all(dim=1)
        possibly[:, sl] = ((g + lam * radius > -tol) | eye).all(dim=1)
    shape = (n_labels, *basis.spatial_shape)
    return LabelRegions(always.view(shape), possibly.view(shape))


def flip_lambda(
    basis: ImageBasis, box: CoefficientBox, *, rtol: float = DEFAULT_RTOL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre label and the λ from which each pixel's label can change.

    Only the pairs (centre label, l') are needed, so this costs O(K·L·P)
    (not the L² pairs of :func:`label_regions`).

    Returns
    -------
    centre_label : Tensor of int64, shape (P,)
        Label of the box-centre member (ties to the lower label).
    flip : Tensor of float32, shape (P,)
        ``inf`` where no λ changes the label (every R = 0), 0 where the
        centre is within rounding of a tie. The pixel is free at λ iff
        ``λ ≥ flip``, i.e. ``always[centre_label]`` holds iff ``λ < flip``.
    """
    n_labels, n_pix, k = basis.n_labels, basis.n_pixels, basis.k
    dev = basis.device
    m = box.centre.to(device=dev, dtype=torch.float32)
    h = box.half_width.to(device=dev, dtype=torch.float32)
    labels = torch.empty(n_pix, dtype=torch.int64, device=dev)
    flip = torch.empty(n_pix, dtype=torch.float32, device=dev)
    inf = float("inf")
    own_index = torch.arange(n_labels, device=dev)[:, None]
    for start in range(0, n_pix, _CHUNK_PIXELS):
        sl = slice(start, min(start + _CHUNK_PIXELS, n_pix))
        mu = basis.mean.view(n_labels, -1)[:, sl]  # (L, p)
        u = basis.directions.view(k, n_labels, -1)[:, :, sl]  # (K, L, p)
        centre = mu + torch.einsum("k,klp->lp", m, u)
        lab = centre.max(dim=0).indices  # (p,)
        u_star = torch.gather(u, 1, lab[None, None, :].expand(k, 1, -1))  # (K, 1, p)
        g = torch.gather(centre, 0, lab[None, :]) - centre  # (L, p): s_lab − s_l'
        radius = torch.einsum("k,klp->lp", h, (u_star - u).abs())
        absu = u.abs()
        pair_abs = absu + u_star.abs()
        mu_abs = mu.abs()
        s0 = torch.gather(mu_abs, 0, lab[None, :]) + mu_abs + torch.einsum("k,klp->lp", m.abs(), pair_abs)
        s1 = torch.einsum("k,klp->lp", h, pair_abs)
        num = g - rtol * s0
        den = radius + rtol * s1
        ratio = torch.where(
            den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, inf)
        )
        ratio = torch.where(num <= 0, torch.zeros_like(ratio), ratio)
        ratio = torch.where(own_index == lab[None, :], torch.full_like(ratio, inf), ratio)
        labels[sl] = lab
        flip[sl] = ratio.amin(dim=0)
    return labels, flip
