"""Label-wise accuracy of many coefficient vectors, evaluated on the free pixels only.

The coverage search evaluates ``acc(P(μ + Σ_k c_k u_k); Y)`` for thousands of
coefficient vectors per image. Inside a box at λ most pixels are *fixed*:
every member of the box gives them the same label (exact interval test,
:mod:`~napari_conformal.core.consign.intervals`). Their contribution to the
accuracy is a constant count, so only the *free* pixels need the scores::

    hits_l(c) = fixed_hits_l + #{p free : Y_p = l ∧ argmax_l' s_l'(p; c) = l}
    acc(c)    = (1/|𝓛(Y)|) Σ_{l ∈ 𝓛(Y)} hits_l(c) / n_l

The sum runs label by label in float64, exactly as
:func:`napari_conformal.core.metrics.accuracy.labelwise_accuracy_torch`. Scores are
computed in float64 from the float32 basis: the argmax is then that of exact
arithmetic except at ties within ~1e-16 (the search never profits from
rounding luck), and it does not depend on the batch beyond float64 round-off. A viewer's
float32 rendering of the same member (:func:`.members.segment`) can differ
only at pixels whose top two scores are within float32 rounding.

The soft surrogate (docs/algorithms.md#calibration-search) replaces the indicator of a free
pixel by its temperature softmax ``q_p = softmax_l(s(p)/τ)_{Y_p}``; fixed
pixels keep their constant hard contribution (their q is 0 or 1 to within
exp(−margin/τ), and they carry no gradient)::

    soft(c) = fixed part + Σ_{p free} w_p q_p,        w_p = 1/(|𝓛(Y)| n_{Y_p})
    ∂soft/∂c_k = Σ_{p,l} w_p q_p (1[l = Y_p] − softmax_l(s(p)/τ)) / τ · u_{k,l,p}

The gradient is computed in closed form (batched matrix products per pixel chunk, summed in order), not by
autograd.

**Counted labels** (a per-structure guarantee, docs/algorithms.md#per-structure-guarantees):
with ``counted`` only the labels of K enter ``𝓛(Y)``. Their counts n_l and fixed hits are kept,
the others' are zeroed, and so is the weight of their pixels (which, unlike an absent label's, do
exist); with K = {c} the accuracy is the recall of structure c.

A :class:`RestrictedBatch` holds B images' free pixels padded to a common
length P, label-major (``view(B, L, P)``), so one batched matrix product
scores S coefficient vectors of every image at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from napari_conformal.core.consign.spill import BasisLike, load_basis

__all__ = ["PIXEL_CHUNK", "RestrictedBatch", "build_restricted_batch"]

#: Free pixels are padded to a multiple of this; sums over pixels run per chunk, then chunk by chunk in
#: order, so an image's results do not depend on how far the batch pads it (trailing zero chunks add
#: exact zeros at the end of a sequential sum), up to the round-off of BLAS kernel choices.
PIXEL_CHUNK = 128


def _ordered_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis strictly left to right (a cumulative sum's last entry)."""
    return torch.cumsum(x, dim=-1)[..., -1]


@dataclass(frozen=True)
class RestrictedBatch:
    """Free pixels of B images, padded to ``P`` pixels each.

    Attributes
    ----------
    mean : Tensor, shape (B, L·P), float64
        μ at the free pixels, label-major.
    directions : Tensor, shape (B, K, L·P), float64
        u_k at the free pixels, label-major.
    truth : Tensor of int64, shape (B, P)
        Y at the free pixels, 0 on padding (padding has zero weight and is
        excluded from the hit counts by ``valid``).
    valid : Tensor of bool, shape (B, P)
        False on padding.
    onehot : Tensor, shape (B, P, L), float64
        One-hot of ``truth`` (zero rows on padding).
    weight : Tensor, shape (B, P), float64
        ``1/(|𝓛(Y)| n_{Y_p})`` (0 on padding and on pixels of uncounted labels).
    fixed_hits : Tensor of int64, shape (B, L)
        Correct fixed pixels per label (0 for uncounted labels).
    counts : Tensor of int64, shape (B, L)
        n_l, pixels of label l in Y (0 for uncounted labels: they are not in 𝓛(Y)).
    """

    mean: torch.Tensor
    directions: torch.Tensor
    truth: torch.Tensor
    valid: torch.Tensor
    onehot: torch.Tensor
    weight: torch.Tensor
    fixed_hits: torch.Tensor
    counts: torch.Tensor

    @property
    def n_labels(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_free(self) -> int:
        """Padded number of free pixels P."""
        return int(self.truth.shape[1])

    def select(self, rows: Sequence[int]) -> RestrictedBatch:
        """The sub-batch of the given image rows."""
        index = torch.as_tensor(list(rows), dtype=torch.int64, device=self.truth.device)
        return RestrictedBatch(*(getattr(self, f).index_select(0, index) for f in self.__dataclass_fields__))

    def scores(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Scores ``s`` of shape (B, S, L, P) for coefficients (B, S, K)."""
        c = coefficients.to(self.directions.dtype)
        s = torch.baddbmm(self.mean[:, None, :], c, self.directions)
        return s.view(s.shape[0], s.shape[1], self.n_labels, self.n_free)

    def accuracy_from_hits(self, hits: torch.Tensor) -> torch.Tensor:
        """Label-wise accuracy (B, S) float64 from free-pixel hits (B, S, L)."""
        total = torch.zeros(hits.shape[:2], dtype=torch.float64, device=hits.device)
        present = self.counts > 0
        safe = self.counts.clamp_min(1).to(torch.float64)
        for label in range(self.n_labels):
            term = (hits[:, :, label].to(torch.float64) + self.fixed_hits[:, None, label]) / safe[
                :, None, label
            ]
            total += torch.where(present[:, None, label], term, torch.zeros_like(term))
        return total / present.sum(dim=1, keepdim=True).to(torch.float64)

    def _hits(self, pred: torch.Tensor) -> torch.Tensor:
        correct = ((pred == self.truth[:, None, :]) & self.valid[:, None, :]).to(torch.float64)
        return torch.bmm(correct, self.onehot)  # (B, S, L), exact counts

    def hard_accuracy(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Hard (argmax, ties to the lower label) label-wise accuracy (B, S) float64."""
        pred = self.scores(coefficients).max(dim=2).indices
        return self.accuracy_from_hits(self._hits(pred))

    def fixed_accuracy(self) -> torch.Tensor:
        """Accuracy contribution (B,) float64 of the fixed pixels alone."""
        zeros = torch.zeros(self.counts.shape[0], 1, self.n_labels, device=self.counts.device)
        return self.accuracy_from_hits(zeros)[:, 0]

    def evaluate(
        self, coefficients: torch.Tensor, tau: float, *, gradient: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Hard accuracy, soft surrogate and its gradient, in one pass.

        Parameters
        ----------
        coefficients : Tensor, shape (B, S, K)
        tau : float
            Soft-argmax temperature.
        gradient : bool
            Whether to compute ∂soft/∂c.

        Returns
        -------
        hard : Tensor (B, S) float64
        soft : Tensor (B, S) float64
        grad : Tensor (B, S, K) float64, or None
        """
        z = self.scores(coefficients) / float(tau)  # (B, S, L, P)
        zmax, pred = z.max(dim=2, keepdim=True)
        hard = self.accuracy_from_hits(self._hits(pred[:, :, 0]))
        e = torch.exp(z - zmax)
        del z
        e /= e.sum(dim=2, keepdim=True)  # softmax probabilities
        idx = self.truth[:, None, None, :].expand(e.shape[0], e.shape[1], 1, e.shape[3])
        q = torch.gather(e, 2, idx)  # (B, S, 1, P)
        wq = q * self.weight[:, None, None, :]
        b, s_count, n_labels, p = e.shape
        n_chunks = p // PIXEL_CHUNK
        soft = (
            _ordered_sum(wq.view(b, s_count, n_chunks, PIXEL_CHUNK).sum(dim=3))
            + self.fixed_accuracy()[:, None]
        )
        if not gradient:
            return hard, soft, None
        e.neg_()
        e.scatter_add_(2, idx, torch.ones_like(q))  # 1[l = Y] − p_l
        e *= wq
        # per pixel chunk: Σ_{l, p ∈ chunk} e · u_k, then the chunks in order (see _ordered_sum)
        e_chunks = e.view(b, s_count, n_labels, n_chunks, PIXEL_CHUNK).permute(0, 3, 1, 2, 4)
        u_chunks = self.directions.view(b, -1, n_labels, n_chunks, PIXEL_CHUNK).permute(0, 3, 2, 4, 1)
        partial = torch.matmul(
            e_chunks.reshape(b, n_chunks, s_count, n_labels * PIXEL_CHUNK),
            u_chunks.reshape(b, n_chunks, n_labels * PIXEL_CHUNK, -1),
        )  # (B, n_chunks, S, K)
        grad = _ordered_sum(partial.permute(0, 2, 3, 1)) / float(tau)
        return hard, soft, grad

    def _exact_weight(self) -> torch.Tensor:
        """Per-pixel accuracy weights ``1/(|𝓛(Y)| n_{Y_p})``, float64 (0 on padding and uncounted labels)."""
        return (self.onehot.to(torch.float64) * _per_label_weight(self.counts)[:, None, :]).sum(dim=2)

    def coordinate_sweep(
        self,
        coefficients: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        k: int,
        centre: torch.Tensor,
        level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact line search of the hard accuracy along coordinate k.

        Along ``c + t·e_k`` every score is affine in t, so pixel p is correct
        exactly on an interval ``(lo_p, hi_p)`` (the intersection of
        ``s_Y − s_l > 0`` over l ≠ Y), and the accuracy is
        ``fixed + Σ_p w_p 1[t ∈ (lo_p, hi_p)]``: a sort of the 2P interval
        ends and a cumulative sum (float64) give it exactly on the box segment
        ``[lower_k − c_k, upper_k − c_k]``. The gaps considered are the
        maximising ones, or with ``level`` those with accuracy ≥ level
        (λ-descent: shrink |c_k − m_k|, hence λ(c), without losing accuracy).
        Among them the one nearest the box centre in coordinate k wins, and
        the point taken is the one nearest the centre inside it, kept 10 % of
        the gap width off the gap ends (where a pixel flips: points close to
        a flip would make the label there depend on float rounding). Callers
        re-score the result with the hard argmax, which decides.

        Parameters
        ----------
        coefficients : Tensor (B, S, K) float64
        lower, upper : Tensor (B, S, K) float64
            Each chain's box.
        k : int
            Coordinate to move.
        centre : Tensor (B, K) float64
            Box centres m.
        level : Tensor (B, S) float64, optional
            Accuracy to keep (λ-descent mode) instead of maximising.

        Returns
        -------
        Tensor (B, S, K) float64
            The coefficients with coordinate k moved.
        """
        f64 = torch.float64
        b, s_count = coefficients.shape[:2]
        n_labels, p = self.n_labels, self.n_free
        s = self.scores(coefficients).to(f64)  # (B, S, L, P)
        idx = self.truth[:, None, None, :].expand(b, s_count, 1, p)
        alpha = torch.gather(s, 2, idx) - s  # s_Y − s_l
        del s
        u = self.directions.view(b, -1, n_labels, p)[:, k].to(f64)  # (B, L, P)
        beta = (torch.gather(u, 1, self.truth[:, None, :]) - u)[:, None].expand_as(alpha)
        own = torch.arange(n_labels, device=alpha.device)[None, None, :, None] == self.truth[:, None, None, :]
        inf = torch.tensor(float("inf"), dtype=f64, device=alpha.device)
        root = -alpha / torch.where(beta == 0, torch.ones_like(beta), beta)
        lo = torch.where((beta > 0) & ~own, root, -inf).amax(dim=2)  # (B, S, P)
        hi = torch.where((beta < 0) & ~own, root, inf).amin(dim=2)
        blocked = ((beta == 0) & (alpha <= 0) & ~own).any(dim=2)
        del alpha, beta, root
        t_lo = (lower[:, :, k] - coefficients[:, :, k]).to(f64)[:, :, None]
        t_hi = (upper[:, :, k] - coefficients[:, :, k]).to(f64)[:, :, None]
        lo = torch.maximum(lo, t_lo)
        hi = torch.minimum(hi, t_hi)
        usable = (lo < hi) & ~blocked & self.valid[:, None, :]
        w = torch.where(usable, self._exact_weight()[:, None, :].expand_as(lo), torch.zeros_like(lo))
        lo = torch.where(usable, lo, t_lo.expand_as(lo))
        hi = torch.where(usable, hi, t_lo.expand_as(hi))
        times = torch.cat([t_lo, lo, hi, t_hi], dim=2)  # (B, S, 2P + 2)
        delta = torch.cat([torch.zeros_like(t_lo), w, -w, torch.zeros_like(t_hi)], dim=2)
        times, order = torch.sort(times, dim=2)
        value = torch.cumsum(torch.gather(delta, 2, order), dim=2)[:, :, :-1]
        value += self.fixed_accuracy()[:, None, None]
        start, end = times[:, :, :-1], times[:, :, 1:]
        gap = end > start
        target = (centre[:, None, k] - coefficients[:, :, k]).to(f64)[:, :, None]
        margin = 0.1 * (end - start)
        point = torch.minimum(torch.maximum(target, start + margin), end - margin)
        descent = level is not None
        if level is None:
            level = torch.where(gap, value, -inf).amax(dim=2)
        cand = gap & (value >= level[:, :, None] - 1e-12)
        choice = torch.where(cand, (point - target).abs(), inf).argmin(dim=2, keepdim=True)
        t_star = torch.gather(point, 2, choice)[:, :, 0]
        t_star = torch.where(cand.any(dim=2), t_star, torch.zeros_like(t_star))
        if descent:  # never move away from the centre (the current point already has the level)
            t_star = torch.where(
                (t_star - target[:, :, 0]).abs() < target[:, :, 0].abs(), t_star, torch.zeros_like(t_star)
            )
        out = coefficients.clone()
        out[:, :, k] = torch.minimum(torch.maximum(out[:, :, k] + t_star, lower[:, :, k]), upper[:, :, k])
        return out


def _per_label_weight(counts: torch.Tensor) -> torch.Tensor:
    """``1/(|𝓛(Y)| n_l)`` per image and label (B, L) float64, 0 where n_l = 0.

    The zero matters for uncounted labels, whose pixels exist (their n_l was zeroed); an absent
    label has no pixel, so its weight multiplies only zeros and the value there is immaterial.
    """
    present = (counts > 0).sum(dim=1, keepdim=True).clamp_min(1)
    per_label = 1.0 / (present * counts.clamp_min(1)).to(torch.float64)
    return torch.where(counts > 0, per_label, torch.zeros_like(per_label))


def build_restricted_batch(
    bases: Sequence[BasisLike],
    truths: Sequence[torch.Tensor],
    free: Sequence[torch.Tensor],
    centre_labels: Sequence[torch.Tensor],
    counted: torch.Tensor | None = None,
) -> RestrictedBatch:
    """Gather the free pixels of B images into a padded batch.

    Parameters
    ----------
    bases : sequence of ImageBasis or SpilledBasis
        The images' bases (same K and L, same device). A spilled basis is read back from disk
        while its free pixels are gathered and dropped before the next image's is read, so at
        most one full basis is in memory here (:mod:`.spill`).
    truths : sequence of integer Tensor, each (P_i,)
        Flattened ground truths (any integer dtype, e.g. uint8).
    free : sequence of Tensor of bool, each (P_i,)
        Free pixels (label can change in the box).
    centre_labels : sequence of integer Tensor, each (P_i,)
        Label of every member at the fixed pixels (the centre label; any integer dtype).
    counted : Tensor of bool, shape (L,), optional
        The counted labels K (None: every label). Pixels of uncounted labels may be left out of
        ``free``: they carry no weight.
    """
    n_labels, k = bases[0].n_labels, bases[0].k
    dev = bases[0].device
    b = len(bases)
    idx = [torch.nonzero(f).flatten() for f in free]
    width = PIXEL_CHUNK * max(1, -(-max(int(i.numel()) for i in idx) // PIXEL_CHUNK))
    mean = torch.zeros(b, n_labels, width, dtype=torch.float64, device=dev)
    directions = torch.zeros(b, k, n_labels, width, dtype=torch.float64, device=dev)
    truth = torch.zeros(b, width, dtype=torch.int64, device=dev)
    valid = torch.zeros(b, width, dtype=torch.bool, device=dev)
    fixed_hits = torch.zeros(b, n_labels, dtype=torch.int64, device=dev)
    counts = torch.zeros(b, n_labels, dtype=torch.int64, device=dev)
    for j, (handle, y, f, lab, ix) in enumerate(zip(bases, truths, free, centre_labels, idx, strict=True)):
        basis = load_basis(handle)  # one full basis in memory at a time (read back when spilled)
        y = y.to(torch.int64)  # a compact truth (uint8) widened for this image only
        n = int(ix.numel())
        mean[j, :, :n] = basis.mean.view(n_labels, -1).index_select(1, ix)
        directions[j, :, :, :n] = basis.directions.view(k, n_labels, -1).index_select(2, ix)
        del basis
        truth[j, :n] = y.index_select(0, ix)
        valid[j, :n] = True
        counts[j] = torch.bincount(y, minlength=n_labels)[:n_labels]
        fixed_hits[j] = torch.bincount(y[(~f) & (lab == y)], minlength=n_labels)[:n_labels]
    if counted is not None:
        keep = counted.to(device=dev, dtype=torch.bool)[None, :]
        counts = torch.where(keep, counts, torch.zeros_like(counts))
        fixed_hits = torch.where(keep, fixed_hits, torch.zeros_like(fixed_hits))
    onehot = torch.nn.functional.one_hot(truth, n_labels).to(torch.float64) * valid[:, :, None]
    weight = (onehot * _per_label_weight(counts)[:, None, :]).sum(dim=2)
    return RestrictedBatch(
        mean.view(b, n_labels * width),
        directions.view(b, k, n_labels * width),
        truth,
        valid,
        onehot,
        weight,
        fixed_hits,
        counts,
    )
