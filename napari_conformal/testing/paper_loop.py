"""The reference calibration loop of the CONSIGN paper (Algorithms 1 + 2), as a baseline.

Written from the algorithm as docs/algorithms.md#calibration-search describes it (not from the GPL reference code) to
compare speed and λ̂ against :mod:`.search`. It walks ``λ = λ₀ + j·step``
(computed exactly, not accumulated) and, at every step, runs Algorithm 2 on
every calibration image that is not yet covered:

1. ``lhs_factor · init_trials`` Latin-hypercube points scaled into the box,
   scored by the soft loss (chunks of 50);
2. the ``init_trials`` best as starts, each optimised by Adam (``lr``) on the
   soft loss ``1 − mean_l cov_l`` with temperature τ = 1e-4 and ε = 1e-6,
   clamped to the box after each step, stopping early when the soft loss is
   below ``1 − ν`` or after ``patience`` epochs without improvement, at most
   ``epochs`` epochs;
3. success iff the hard argmax accuracy of a start's final point exceeds ν.

It stops at the first λ with ``#uncovered ≤ ⌊(n+1)α − 1⌋`` (covered images
stay covered; the boxes are nested). Everything is float64 on the full image,
as the reference code. Seeds are explicit (the reference sets none): the
Latin-hypercube design of image i at step j uses ``seed + 1000003·j + i``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_conformal.core.consign.basis import ImageBasis
from napari_conformal.core.consign.box import CoefficientBox
from napari_conformal.core.progress import check_stop
from napari_conformal.core.quantiles import max_uncovered
from napari_conformal.errors import LambdaMaxReachedError

__all__ = ["PaperLoopConfig", "PaperLoopResult", "paper_loop_calibration", "paper_membership"]


@dataclass(frozen=True)
class PaperLoopConfig:
    """Reference defaults of ``code/config_cp.py`` (docs/algorithms.md#calibration-search)."""

    lam0: float = 0.01
    step: float = 0.01
    lambda_max: float = 500.0
    init_trials: int = 10
    lhs_factor: int = 100
    epochs: int = 10_000
    patience: int = 50
    lr: float = 1.0
    tau: float = 1e-4
    eps: float = 1e-6
    chunk: int = 50
    seed: int = 0


@dataclass(frozen=True)
class PaperLoopResult:
    """Outcome of :func:`paper_loop_calibration`.

    Attributes
    ----------
    lambda_hat : float
        λ̂ (NaN when the run stopped at ``max_seconds`` first).
    covered_at : ndarray of float64, shape (n,)
        λ at which each image became covered (inf if not, up to the last step).
    seconds : ndarray of float64, shape (n,)
        Time spent on each image (all steps).
    steps : int
        Number of λ steps started.
    finished : bool
        False when ``max_seconds`` ran out before λ̂.
    last_lambda : float
        The λ of the last step started.
    """

    lambda_hat: float
    covered_at: np.ndarray
    seconds: np.ndarray
    steps: int
    finished: bool = True
    last_lambda: float = float("nan")


class _Image:
    """Full-resolution float64 tensors of one image for the soft and hard tests."""

    def __init__(self, basis: ImageBasis, truth: torch.Tensor) -> None:
        self.n_labels = basis.n_labels
        self.mean = basis.mean.to(torch.float64).view(self.n_labels, -1)
        self.dirs = basis.directions.to(torch.float64).view(basis.k, self.n_labels, -1)
        y = truth.reshape(-1).to(torch.int64)
        self.onehot = torch.nn.functional.one_hot(y, self.n_labels).T.to(torch.float64)  # (L, P)
        self.counts = self.onehot.sum(dim=1)
        self.present = self.counts > 0
        self.truth = y

    def recon(self, c: torch.Tensor) -> torch.Tensor:
        """Scores (N, L, P) for coefficients (N, K)."""
        return self.mean[None] + torch.einsum("nk,klp->nlp", c, self.dirs)

    def soft_loss(self, c: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
        q = torch.softmax(self.recon(c) / tau, dim=1)
        cov = ((q * self.onehot[None]).sum(dim=2) + eps) / (self.counts[None] + eps)  # (N, L)
        return 1.0 - cov[:, self.present].mean(dim=1)

    def hard_accuracy(self, c: torch.Tensor) -> float:
        pred = self.recon(c[None])[0].max(dim=0).indices
        hits = torch.bincount(self.truth[pred == self.truth], minlength=self.n_labels).to(torch.float64)
        return float((hits[self.present] / self.counts[self.present]).mean())


def _algorithm2(
    img: _Image, lo: torch.Tensor, hi: torch.Tensor, nu: float, cfg: PaperLoopConfig, seed: int
) -> bool:
    from scipy.stats import qmc

    k = lo.numel()
    design = torch.from_numpy(qmc.LatinHypercube(d=k, seed=seed).random(cfg.init_trials * cfg.lhs_factor))
    cand = lo + design * (hi - lo)
    with torch.no_grad():
        losses = torch.cat(
            [
                img.soft_loss(cand[s : s + cfg.chunk], cfg.tau, cfg.eps)
                for s in range(0, cand.shape[0], cfg.chunk)
            ]
        )
    starts = cand[torch.argsort(losses)[: cfg.init_trials]]
    for c0 in starts:
        c = c0.clone().requires_grad_(True)
        opt = torch.optim.Adam([c], lr=cfg.lr)
        best, stall = math.inf, 0
        for _ in range(cfg.epochs):
            loss = img.soft_loss(c[None], cfg.tau, cfg.eps)[0]
            value = float(loss.detach())
            if value < 1.0 - nu:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                c.copy_(torch.maximum(torch.minimum(c, hi), lo))
            if value < best:
                best, stall = value, 0
            else:
                stall += 1
                if stall >= cfg.patience:
                    break
        with torch.no_grad():
            if img.hard_accuracy(c.detach()) > nu:
                return True
    return False


def paper_membership(
    basis: ImageBasis,
    truth: np.ndarray | torch.Tensor,
    box: CoefficientBox,
    lam: float,
    nu: float,
    config: PaperLoopConfig | None = None,
    seed: int = 0,
) -> bool:
    """Algorithm 2 for one image at one λ: True when it finds c with accuracy > ν."""
    cfg = config or PaperLoopConfig()
    y = truth if isinstance(truth, torch.Tensor) else torch.from_numpy(np.asarray(truth))
    img = _Image(basis, y)
    lo, hi = box.bounds(lam)
    return _algorithm2(img, lo.cpu(), hi.cpu(), nu, cfg, seed)


def paper_loop_calibration(
    bases: Sequence[ImageBasis],
    truths: Sequence[np.ndarray | torch.Tensor],
    box: CoefficientBox,
    alpha: float,
    nu: float,
    config: PaperLoopConfig | None = None,
    *,
    max_seconds: float | None = None,
    progress: Callable[[float, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PaperLoopResult:
    """Algorithm 1 (with Algorithm 2 inline) on n calibration images.

    Parameters
    ----------
    bases, truths : sequences of length n
    box : CoefficientBox, shape (n, K)
    alpha, nu : float
    config : PaperLoopConfig
    max_seconds : float, optional
        Stop after this much time with ``finished=False`` (the partial
        per-image times and coverage are kept, for extrapolation).
    progress : callable ``(lam, n_uncovered)``, optional
        Called after each λ step.

    Raises
    ------
    LambdaMaxReachedError
        λ reached λ_max first.
    """
    cfg = config or PaperLoopConfig()
    n = len(bases)
    m = max_uncovered(n, alpha)
    images = [
        _Image(b.to("cpu"), t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t)))
        for b, t in zip(bases, truths, strict=True)
    ]
    box = CoefficientBox(box.centre.cpu(), box.half_width.cpu(), box.quantile_level)
    covered_at = np.full(n, np.inf)
    seconds = np.zeros(n)
    start = time.perf_counter()
    j = 0
    while True:
        lam = cfg.lam0 + j * cfg.step
        if lam > cfg.lambda_max + 1e-12:
            raise LambdaMaxReachedError(
                f"paper loop reached lambda_max={cfg.lambda_max} before covering enough images"
            )
        lo_all, hi_all = box.bounds(lam)
        for i in np.flatnonzero(~np.isfinite(covered_at)):
            check_stop(should_stop)
            t0 = time.perf_counter()
            if _algorithm2(images[i], lo_all[i], hi_all[i], nu, cfg, cfg.seed + 1_000_003 * j + int(i)):
                covered_at[i] = lam
            seconds[i] += time.perf_counter() - t0
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                return PaperLoopResult(float("nan"), covered_at, seconds, j + 1, False, lam)
        uncovered = int(np.sum(~np.isfinite(covered_at)))
        if progress is not None:
            progress(lam, uncovered)
        if uncovered <= m:
            return PaperLoopResult(lam, covered_at, seconds, j + 1, True, lam)
        j += 1
