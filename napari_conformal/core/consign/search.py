"""Coverage search: the best label-wise accuracy reachable in the box, as a curve over λ.

Algorithm 2 of CONSIGN asks, for one calibration image and one λ, whether
some c in the box at λ gives ``acc(P(μ + U c); Y) > ν``. This module answers
it for every λ and ν at once, for many images in one batch
(docs/algorithms.md#calibration-search describes the reference loop it replaces):

1. **Grid in blocks.** A geometric λ grid (``λ_min · ρ^j`` up to λ_max) is
   walked in blocks of ``points_per_block`` grid points. Every image has
   ``starts`` chains per grid point of the block, all optimised at once.
2. **Surrogate ascent.** Each chain runs projected Adam on the paper's
   soft-argmax surrogate (temperature τ) of the label-wise accuracy, with
   the step size a fraction ``lr`` of the box half-width, clamping to its
   own box after every step (the reference's clamp projection).
3. **Hard accuracy decides.** Every iterate is scored with the hard argmax
   and recorded with λ(c), the smallest box that holds it (clipped to the
   chain's λ). The curve acc*(λ) is the running maximum of these records
   (:mod:`.curves`), so it is non-decreasing by construction and every value
   is the accuracy of an actual member of the box.
4. **Warm starts.** The boxes are nested, so a chain's last point is inside
   every later box: each block starts from the previous block's chains,
   one chain per grid point from the best point found so far. The first
   block starts from a Latin-hypercube design (scored by hard then soft
   accuracy, best ``starts`` kept), the box centre and the ground truth's
   projection ``⟨u_k, onehot(Y) − μ⟩`` clipped into the box.
5. **Radial refinement.** When a block improves an image's best accuracy,
   the improving point is shrunk towards the centre, ``m + t(c − m)``, and
   clipped into smaller boxes, to find the same accuracy at a smaller λ
   between grid points.
6. **Free pixels only.** Pixels whose label cannot change in the box of the
   block's largest λ (exact interval test, :mod:`.intervals`) are counted
   once; only the free pixels are scored (:mod:`.restricted`).
7. **Stopping.** An image stops when its best accuracy exceeds ``nu_max``
   (its curve then answers every ν < that accuracy), or when the grid ends
   at λ_max. The whole search stops early once ``stop_count`` images exceed
   ``stop_nu`` (then λ̂ for ν ≤ ``stop_nu`` and that many covered images is
   decided: the others' λ_i lie beyond every searched box; see
   :class:`~.curves.CurveSet`).

``labels=K`` (counted labels) makes the search maximise the label-wise accuracy over the labels of
K only (``K = {c}``: the recall of structure c, docs/algorithms.md#per-structure-guarantees);
pixels of other labels are never scored (they carry no weight), and an image whose ground truth
has no pixel of K is refused.

Each image's search depends only on that image (a shared seeded design, no
cross-image coupling), so calibration and test images are treated alike and
the conformal guarantee holds for the search's own membership test, which is
conservative for the set C*_λ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_conformal.core.consign.box import CoefficientBox
from napari_conformal.core.consign.curves import CoverageCurve, CurveSet
from napari_conformal.core.consign.intervals import flip_lambda
from napari_conformal.core.consign.restricted import RestrictedBatch, build_restricted_batch
from napari_conformal.core.consign.spill import BasisLike, load_basis
from napari_conformal.core.progress import Step, check_stop
from napari_conformal.errors import CalibrationError, ConformalError, StoreValidationError

__all__ = ["CoverageSearch", "SearchConfig", "lambda_grid", "search_curves"]


@dataclass(frozen=True)
class SearchConfig:
    """Parameters of the coverage search.

    Attributes
    ----------
    lambda_max : float
        Largest λ searched (paper: 500).
    lambda_min : float
        First grid point after λ = 0 (paper: 0.01).
    ratio : float
        Ratio of consecutive grid points (> 1).
    points_per_block : int
        Grid points optimised together in one block.
    starts : int
        Chains per grid point.
    adam_steps : int
        Projected Adam steps per block.
    lr : float
        Adam step as a fraction of the chain's box half-width.
    tau : float
        Soft-argmax temperature (softmax-probability units).
    lhs_points : int
        Latin-hypercube candidates for the first block.
    lhs_per_block : int
        Latin-hypercube candidates in each later block (the best replace one
        chain per grid point; 0 disables, as do ``starts`` < 3).
    refine : int
        Radial refinement points per improvement (0 disables).
    sweeps : int
        Rounds of exact coordinate line searches per block (0 disables).
    descents : int
        Rounds of λ-descent line searches per block: each coordinate moves
        towards the centre as far as the accuracy allows (0 disables).
    nu_max : float
        An image stops once its best accuracy exceeds this (1.0: never).
    seed : int
        Seed of the Latin-hypercube design.
    pixel_budget : int
        Free pixels × chains × labels scored per batch (memory bound).
    """

    lambda_max: float = 500.0
    lambda_min: float = 0.01
    ratio: float = 1.05
    points_per_block: int = 4
    starts: int = 3
    adam_steps: int = 6
    lr: float = 0.15
    tau: float = 0.02
    lhs_points: int = 128
    lhs_per_block: int = 64
    refine: int = 16
    sweeps: int = 2
    descents: int = 2
    nu_max: float = 0.99
    seed: int = 0
    pixel_budget: int = 24_000_000

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CalibrationError(f"{name} must be a positive number, got {value!r}")

        positive("lambda_max", self.lambda_max)
        positive("lambda_min", self.lambda_min)
        positive("lr", self.lr)
        positive("tau", self.tau)
        if self.lambda_min > self.lambda_max:
            raise CalibrationError(f"lambda_min={self.lambda_min} exceeds lambda_max={self.lambda_max}")
        if not self.ratio > 1.0:
            raise CalibrationError(f"ratio must be > 1, got {self.ratio!r}")
        for name in ("points_per_block", "starts", "lhs_points", "pixel_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CalibrationError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("adam_steps", "refine", "sweeps", "descents", "lhs_per_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CalibrationError(f"{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.nu_max, (int, float)) and 0.0 <= self.nu_max <= 1.0):
            raise CalibrationError(f"nu_max must lie in [0, 1], got {self.nu_max!r}")


def lambda_grid(config: SearchConfig) -> np.ndarray:
    """The λ grid ``λ_min · ratio^j`` (j ≥ 0), its last point exactly λ_max."""
    n = math.ceil(math.log(config.lambda_max / config.lambda_min) / math.log(config.ratio) - 1e-9)
    grid = config.lambda_min * config.ratio ** np.arange(n + 1, dtype=np.float64)
    grid[-1] = config.lambda_max
    return grid[grid <= config.lambda_max]


def _lhs(n: int, k: int, seed: int) -> np.ndarray:
    """Latin-hypercube design of n points in [0, 1]^k (seeded).

    Column j is ``(π_j + U)/n`` for an independent random permutation π_j of
    0..n−1 and U ~ U[0, 1): every one of the n strata of every coordinate
    holds exactly one point (McKay et al. 1979; what ``scipy.stats.qmc``
    draws, without importing scipy.stats, which costs seconds).
    """
    rng = np.random.default_rng(seed)
    strata = np.argsort(rng.random((k, n)), axis=1).T  # (n, k): a permutation per column
    return (strata + rng.random((n, k))) / n


@dataclass
class _ImageState:
    """What the search keeps of one image: full-volume arrays only as compact labels and flip λ."""

    basis: BasisLike  # in memory or spilled to disk (read back only to build a restricted batch)
    truth: torch.Tensor  # (P,) compact integer (uint8 for L ≤ 256)
    centre_label: torch.Tensor  # (P,) compact integer
    flip: torch.Tensor  # (P,) float32
    centre: torch.Tensor  # (K,) float64
    half_width: torch.Tensor  # (K,) float64
    gt_coefficients: torch.Tensor  # (K,) float64
    chains: torch.Tensor | None = None  # (S, K) float64
    best_c: torch.Tensor | None = None
    best_acc: float = -math.inf
    best_lam: float = math.inf
    rec_lam: list[np.ndarray] = field(default_factory=list)
    rec_acc: list[np.ndarray] = field(default_factory=list)
    rec_c: list[np.ndarray] = field(default_factory=list)
    position: int = 0  # grid index of this image's next block
    searched_to: float = 0.0
    exhausted: bool = False


def _accuracy_at(st: _ImageState, lam: float) -> float:
    """acc*(λ) of one image from its records so far (−inf when none)."""
    best = -math.inf
    for lam_r, acc_r in zip(st.rec_lam, st.rec_acc, strict=True):
        sel = acc_r[lam_r <= lam]
        if sel.size:
            best = max(best, float(sel.max()))
    return best


def _counted_words(labels: Sequence[int]) -> str:
    return f"structure {labels[0]}" if len(labels) == 1 else f"labels {', '.join(map(str, labels))}"


def _label_dtype(n_labels: int) -> torch.dtype:
    """The smallest torch integer dtype holding 0..L−1 (uint8 up to 256 labels)."""
    if n_labels <= 256:
        return torch.uint8
    return torch.int16 if n_labels <= 2**15 else torch.int32


def _check_truth(truth: np.ndarray | torch.Tensor, basis: BasisLike, index: int) -> torch.Tensor:
    y = truth if isinstance(truth, torch.Tensor) else torch.from_numpy(np.asarray(truth))
    if tuple(y.shape) != basis.spatial_shape:
        raise StoreValidationError(
            f"label of image {index} has shape {tuple(y.shape)}, but its samples have spatial shape "
            f"{basis.spatial_shape}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise StoreValidationError(f"label of image {index} must be an integer label map, got {y.dtype}")
    y = y.to(device=basis.device, dtype=torch.int64).reshape(-1)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= basis.n_labels:
        raise StoreValidationError(
            f"label of image {index} has values {lo}..{hi}, outside 0..L-1 = 0..{basis.n_labels - 1} "
            "(L from the samples)"
        )
    return y


class CoverageSearch:
    """Resumable batched coverage search over n images (see the module docstring).

    Parameters
    ----------
    bases : sequence of ImageBasis or SpilledBasis
        The images' bases (same K, L and device). Spilled bases (:mod:`.spill`) stay on disk: each
        is read back once here (for its flip λ and ground-truth projection) and then only while a
        restricted batch gathers its free pixels, one image at a time; the search keeps per image
        only its compact ground truth and centre labels (uint8 for L ≤ 256) and its flip λ
        (float32), and the curves are those of the same bases in memory, value for value.
    truths : sequence of array
        Ground truths, each of the image's spatial shape, values in 0..L−1.
    box : CoefficientBox
        Box family of shape (n, K) (:func:`~.box.make_box` on the bases).
    config : SearchConfig
        Search parameters.
    labels : sequence of int, optional
        Counted labels K of the label-wise accuracy (None: every label present).

    Raises
    ------
    CalibrationError
        Among others: with ``labels``, an image whose ground truth has none of them (naming its
        position in ``bases``).
    """

    def __init__(
        self,
        bases: Sequence[BasisLike],
        truths: Sequence[np.ndarray | torch.Tensor],
        box: CoefficientBox,
        config: SearchConfig | None = None,
        *,
        labels: Sequence[int] | None = None,
    ) -> None:
        from napari_conformal.core.metrics.accuracy import check_counted

        self.config = config if config is not None else SearchConfig()
        if len(bases) == 0:
            raise CalibrationError("the coverage search needs at least one image")
        if len(truths) != len(bases):
            raise CalibrationError(f"got {len(bases)} bases but {len(truths)} labels")
        if box.centre.ndim != 2 or box.centre.shape[0] != len(bases):
            raise CalibrationError(f"box must have shape ({len(bases)}, K), got {tuple(box.centre.shape)}")
        k, n_labels = bases[0].k, bases[0].n_labels
        for i, b in enumerate(bases):
            if b.k != k or b.n_labels != n_labels:
                raise StoreValidationError(
                    f"image {i} has k={b.k}, L={b.n_labels} but image 0 has k={k}, L={n_labels}"
                )
        self.quantile_level = box.quantile_level
        self.grid = lambda_grid(self.config)
        self.device = bases[0].device
        try:
            self.labels = check_counted(labels, n_labels)
        except ConformalError as exc:
            raise CalibrationError(str(exc)) from None
        self._counted: torch.Tensor | None = None
        if self.labels is not None:
            self._counted = torch.zeros(n_labels, dtype=torch.bool, device=self.device)
            self._counted[list(self.labels)] = True
        self.states: list[_ImageState] = []
        compact = _label_dtype(n_labels)
        for i, (handle, truth) in enumerate(zip(bases, truths, strict=True)):
            y = _check_truth(truth, handle, i)
            basis = load_basis(handle)  # a spilled basis is in memory for this image only
            sub = box[i]
            centre_label, flip = flip_lambda(basis, sub)
            if self._counted is not None:
                mine = self._counted[y]
                if not bool(mine.any()):
                    raise CalibrationError(
                        f"the ground truth of image {i} has no pixel of {_counted_words(self.labels)}: its "
                        "label-wise accuracy restricted to it is undefined; leave the image out"
                    )
                flip = torch.where(mine, flip, torch.full_like(flip, math.inf))  # never scored: no weight
            onehot = torch.nn.functional.one_hot(y.view(-1), n_labels).T.reshape(-1).to(torch.float32)
            gt = (basis.directions @ (onehot - basis.mean)).to(torch.float64)
            del onehot, basis
            self.states.append(
                _ImageState(
                    handle,
                    y.to(compact),
                    centre_label.to(compact),
                    flip,
                    sub.centre.to(self.device),
                    sub.half_width.to(self.device),
                    gt,
                )
            )
        self._initialised = False

    # ------------------------------------------------------------------ public

    @property
    def n(self) -> int:
        return len(self.states)

    def run(
        self,
        *,
        nu_max: float | None = None,
        stop_when: Callable[[], bool] | None = None,
        until_lambda: float | None = None,
        until_nu: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """:meth:`iter_run` to its end, with a ``progress(done, total)`` callback."""
        for step in self.iter_run(
            nu_max=nu_max, stop_when=stop_when, until_lambda=until_lambda, until_nu=until_nu, should_stop=should_stop
        ):
            if progress is not None:
                progress(*step)

    def iter_run(
        self,
        *,
        nu_max: float | None = None,
        stop_when: Callable[[], bool] | None = None,
        until_lambda: float | None = None,
        until_nu: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, None]:
        """Search block by block; resumable (each image keeps its grid position).

        An image is finished when its best accuracy exceeds ``nu_max`` or the
        grid is exhausted; images behind the others (e.g. after ``nu_max``
        was raised) catch up first, so blocks always run in grid order.

        Parameters
        ----------
        nu_max : float, optional
            Overrides ``config.nu_max`` for this run.
        stop_when : callable, optional
            Checked before each block; True ends the run (e.g. "λ̂ is decided").
        until_lambda : float, optional
            Membership mode: an image's blocks stop at the first block whose
            lower end is ≥ this λ (later blocks cannot change acc*(until_lambda)).
        until_nu : float, optional
            With ``until_lambda``: an image also stops once acc*(until_lambda) > until_nu.
        should_stop : callable, optional
            Polled between batches; True raises ``Cancelled``.

        Yields
        ------
        Step
            After each block, in image × grid-point units (stage ``"search"``).
        """
        if not self._initialised:
            self._initialise(should_stop)
        target = self.config.nu_max if nu_max is None else float(nu_max)
        n_grid = len(self.grid)

        def finished(st: _ImageState) -> bool:
            if st.exhausted:
                return True
            if until_lambda is not None:
                lam_lo = float(self.grid[st.position - 1]) if st.position else 0.0
                if lam_lo >= until_lambda:
                    return True
                return until_nu is not None and _accuracy_at(st, until_lambda) > until_nu
            return st.best_acc > target or st.best_acc >= 1.0

        while True:
            check_stop(should_stop)
            active = [i for i, st in enumerate(self.states) if not finished(st)]
            if not active:
                break
            if stop_when is not None and stop_when():
                break
            position = min(self.states[i].position for i in active)
            group = [i for i in active if self.states[i].position == position]
            points = self.grid[position : position + self.config.points_per_block]
            lam_lo = float(self.grid[position - 1]) if position else 0.0
            for chunk in self._chunks(group, float(points[-1])):
                check_stop(should_stop)
                self._run_block(chunk, points, lam_lo, position)
            for i in group:
                st = self.states[i]
                st.position = position + len(points)
                st.searched_to = float(points[-1])
                st.exhausted = st.position >= n_grid
            done = sum(n_grid if finished(st) else st.position for st in self.states)
            yield Step(done, self.n * n_grid, "search")

    def accuracy_at(self, index: int, lam: float) -> float:
        """acc*(λ) of image ``index`` from the blocks searched so far (−inf before any record)."""
        return _accuracy_at(self.states[index], float(lam))

    def curves(self) -> CurveSet:
        """The curves found so far, packed (see :class:`~.curves.CurveSet`)."""
        return CurveSet.from_curves([self._curve(s) for s in self.states])

    # ------------------------------------------------------------------ internals

    def _chunks(self, active: list[int], lam: float) -> list[list[int]]:
        """Images grouped so that free pixels × images × chains × labels stays within ``pixel_budget``.

        This bounds the restricted batch of a chunk (its float64 mean and directions at the free
        pixels) and the score tensors of its evaluations; the full bases are read one image at a
        time while the batch is built (:func:`~.restricted.build_restricted_batch`), so a chunk of
        spilled volumes never has more than one of them in memory. The grouping does not depend
        on where the bases are, so spilled and in-memory searches run the same batches.
        """
        budget = self.config.pixel_budget
        per_chain = self.config.starts * self.config.points_per_block
        chunks: list[list[int]] = []
        current: list[int] = []
        width = 0
        n_labels = self.states[0].basis.n_labels
        for i in active:
            free = int((self.states[i].flip <= lam).sum())
            new_width = max(width, free, 1)
            if current and new_width * (len(current) + 1) * per_chain * n_labels > budget:
                chunks.append(current)
                current, new_width = [], max(free, 1)
            current.append(i)
            width = new_width
        if current:
            chunks.append(current)
        return chunks

    def _batch(self, ids: list[int], lam: float) -> RestrictedBatch:
        sts = [self.states[i] for i in ids]
        return build_restricted_batch(
            [s.basis for s in sts],
            [s.truth for s in sts],
            [s.flip <= lam for s in sts],
            [s.centre_label for s in sts],
            self._counted,
        )

    def _boxes(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        centre = torch.stack([self.states[i].centre for i in ids])
        half = torch.stack([self.states[i].half_width for i in ids])
        return centre, half

    def _record(self, ids: list[int], c: torch.Tensor, acc: torch.Tensor, lam: torch.Tensor) -> None:
        """Record evaluated coefficients (B, N, K) with accuracies and λ (B, N).

        ``lam`` is λ(c) clipped to [floor, chain λ] by the caller: a block
        records nothing at or below its lower end, so acc*(λ) is final once
        the blocks below λ are done.
        """
        c_np, acc_np, lam_np = (
            c.detach().cpu().numpy(),
            acc.detach().cpu().numpy(),
            lam.detach().cpu().numpy(),
        )
        for j, i in enumerate(ids):
            st = self.states[i]
            # keep only points that beat every earlier point with smaller λ (cheap pre-filter)
            order = np.lexsort((-acc_np[j], lam_np[j]))
            lam_j, acc_j = lam_np[j][order], acc_np[j][order]
            run = np.maximum.accumulate(acc_j)
            keep = np.r_[True, acc_j[1:] > run[:-1]]
            st.rec_lam.append(lam_j[keep])
            st.rec_acc.append(acc_j[keep])
            st.rec_c.append(c_np[j][order][keep])
            best = int(np.argmax(acc_j))  # first max = smallest λ among the best
            if acc_j[best] > st.best_acc or (acc_j[best] == st.best_acc and lam_j[best] < st.best_lam):
                st.best_acc, st.best_lam = float(acc_j[best]), float(lam_j[best])
                st.best_c = torch.from_numpy(c_np[j][order][best].copy()).to(self.device)

    def _lambda_of(self, c: torch.Tensor, centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
        """λ(c) (B, N) of coefficients (B, N, K) for boxes (B, K)."""
        dev = (c - centre[:, None, :]).abs()
        pos = half[:, None, :] > 0
        ratio = torch.where(
            pos, dev / torch.where(pos, half[:, None, :], torch.ones_like(dev)), torch.zeros_like(dev)
        )
        ratio = torch.where(~pos & (dev > 0), torch.full_like(dev, math.inf), ratio)
        return ratio.amax(dim=2)

    def _evaluate_and_record(
        self,
        ids: list[int],
        batch: RestrictedBatch,
        c: torch.Tensor,
        floor: float,
        cap: torch.Tensor | float,
        acc: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hard-score coefficients (B, N, K) and record them at λ(c) clipped to [floor, cap]."""
        centre, half = self._boxes(ids)
        if acc is None:
            acc = batch.hard_accuracy(c)
        lam = torch.minimum(
            self._lambda_of(c, centre, half), torch.as_tensor(cap, dtype=c.dtype, device=c.device)
        )
        lam = lam.clamp_min(floor)  # last: a block never records at or below its lower end
        self._record(ids, c, acc, lam)
        return acc

    def _initialise(self, should_stop: Callable[[], bool] | None) -> None:
        """Evaluate the box centre (λ = 0) of every image."""
        ids = list(range(self.n))
        for chunk in self._chunks(ids, 0.0):
            check_stop(should_stop)
            batch = self._batch(chunk, 0.0)
            centre, _ = self._boxes(chunk)
            self._evaluate_and_record(chunk, batch, centre[:, None, :], 0.0, 0.0)
        self._initialised = True

    def _candidates(
        self,
        ids: list[int],
        batch: RestrictedBatch,
        lam_hi: float,
        floor: float,
        n_pick: int,
        design: torch.Tensor,
    ) -> torch.Tensor:
        """Best ``n_pick`` of {centre, GT projection, a design} in the box at ``lam_hi`` (all recorded)."""
        centre, half = self._boxes(ids)
        lo = centre - lam_hi * half
        scaled = lo[:, None, :] + design[None, :, :] * (2.0 * lam_hi * half)[:, None, :]
        gt = torch.stack([self.states[i].gt_coefficients for i in ids])
        gt = torch.maximum(torch.minimum(gt, centre + lam_hi * half), lo)
        cand = torch.cat([centre[:, None, :], gt[:, None, :], scaled], dim=1)  # (B, M, K)
        keys, hards = [], []
        per = max(1, self.config.pixel_budget // max(1, batch.n_free * batch.n_labels * len(ids)))
        for start in range(0, cand.shape[1], per):
            hard, soft, _ = batch.evaluate(cand[:, start : start + per], self.config.tau, gradient=False)
            keys.append(hard + 1e-6 * soft)  # hard first, soft breaks ties
            hards.append(hard)
        self._evaluate_and_record(ids, batch, cand, floor, lam_hi, acc=torch.cat(hards, dim=1))
        key = torch.cat(keys, dim=1)
        top = key.topk(min(n_pick, key.shape[1]), dim=1).indices
        chosen = torch.gather(cand, 1, top[:, :, None].expand(-1, -1, cand.shape[2]))
        if chosen.shape[1] < n_pick:
            chosen = chosen.repeat(1, math.ceil(n_pick / chosen.shape[1]), 1)[:, :n_pick]
        return chosen

    def _block_design(self, position: int) -> torch.Tensor:
        """The Latin-hypercube design of the block at grid index ``position`` (seeded by it)."""
        n = self.config.lhs_points if position == 0 else self.config.lhs_per_block
        seed = self.config.seed + 7919 * position
        return torch.from_numpy(_lhs(n, self.states[0].basis.k, seed)).to(self.device)

    def _start_chains(
        self, ids: list[int], batch: RestrictedBatch, points: np.ndarray, floor: float, position: int
    ) -> torch.Tensor:
        """Chains (B, S, K) of a block: warm starts, plus design candidates."""
        r = self.config.starts
        n_chains = r * len(points)
        lam_hi = float(points[-1])
        if position == 0:  # first block: chains from the design
            return self._candidates(ids, batch, lam_hi, floor, n_chains, self._block_design(position))
        fresh = None
        if self.config.lhs_per_block and r > 2:
            fresh = self._candidates(ids, batch, lam_hi, floor, len(points), self._block_design(position))
        chains = []
        for j, i in enumerate(ids):
            st = self.states[i]
            c = st.chains[:n_chains].clone()  # a shorter last block reuses the first chains
            c[::r] = st.best_c  # one chain per grid point from the best point so far
            if fresh is not None:
                c[r - 1 :: r] = fresh[j]  # and one from this block's design
            chains.append(c)
        return torch.stack(chains)

    def _run_block(self, ids: list[int], points: np.ndarray, lam_lo: float, position: int) -> None:
        """One block: Adam on the surrogate, exact sweeps, λ-descent; every iterate recorded."""
        cfg = self.config
        floor = math.nextafter(lam_lo, math.inf)
        batch = self._batch(ids, float(points[-1]))
        centre, half = self._boxes(ids)
        chain_lam = torch.from_numpy(np.repeat(points, cfg.starts)).to(self.device)  # (S,)
        lo = centre[:, None, :] - chain_lam[None, :, None] * half[:, None, :]
        hi = centre[:, None, :] + chain_lam[None, :, None] * half[:, None, :]
        before = [self.states[i].best_acc for i in ids]
        c = torch.maximum(torch.minimum(self._start_chains(ids, batch, points, floor, position), hi), lo)

        step_scale = cfg.lr * chain_lam[None, :, None] * half[:, None, :]
        m1 = torch.zeros_like(c)
        m2 = torch.zeros_like(c)
        b1, b2, eps = 0.9, 0.999, 1e-12
        seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (c, acc, cap)
        for t in range(1, cfg.adam_steps + 1):
            hard, _, grad = batch.evaluate(c, cfg.tau)
            seen.append((c, hard, chain_lam))
            g = grad.to(torch.float64)
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b2 * m2 + (1 - b2) * g * g
            update = (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + eps)
            c = torch.maximum(torch.minimum(c + step_scale * update, hi), lo)  # ascent on the soft accuracy
        if cfg.sweeps or cfg.descents:
            c = self._polish(batch, c, lo, hi, centre, points, chain_lam, seen)
        seen.append((c, batch.hard_accuracy(c), chain_lam))
        self._evaluate_and_record(
            ids,
            batch,
            torch.cat([x[0] for x in seen], dim=1),
            floor,
            torch.cat([x[2] for x in seen])[None, :],
            acc=torch.cat([x[1] for x in seen], dim=1),
        )
        for j, i in enumerate(ids):
            self.states[i].chains = c[j].clone()
        if cfg.refine:
            self._refine(ids, batch, before, lam_lo, floor)

    def _polish(
        self,
        batch: RestrictedBatch,
        c: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        centre: torch.Tensor,
        points: np.ndarray,
        chain_lam: torch.Tensor,
        seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Exact coordinate sweeps, then λ-descent sweeps, on the best chain of each grid point."""
        r = self.config.starts
        acc = batch.hard_accuracy(c)
        seen.append((c, acc, chain_lam))
        b, n_points = c.shape[0], len(points)
        pick = acc.view(b, n_points, r).argmax(dim=2) + torch.arange(n_points, device=c.device)[None, :] * r
        index = pick[:, :, None].expand(-1, -1, c.shape[2])
        sub, sub_lo, sub_hi = (torch.gather(x, 1, index) for x in (c, lo, hi))
        sub_lam = chain_lam.view(n_points, r)[:, 0]
        level = torch.gather(acc, 1, pick)
        for _ in range(self.config.sweeps):
            for k in range(c.shape[2]):
                sub = batch.coordinate_sweep(sub, sub_lo, sub_hi, k, centre)
            level = batch.hard_accuracy(sub)
            seen.append((sub, level, sub_lam))
        for _ in range(self.config.descents):
            for k in range(c.shape[2]):
                sub = batch.coordinate_sweep(sub, sub_lo, sub_hi, k, centre, level=level)
            level = batch.hard_accuracy(sub)
            seen.append((sub, level, sub_lam))
        return c.scatter(1, index, sub)

    def _refine(
        self, ids: list[int], batch: RestrictedBatch, before: list[float], lam_lo: float, floor: float
    ) -> None:
        """Shrink improving points towards the centre to find their accuracy at smaller λ in the block."""
        better = [j for j, i in enumerate(ids) if self.states[i].best_acc > before[j]]
        if not better:
            return
        sub = [ids[j] for j in better]
        centre, half = self._boxes(sub)
        best = torch.stack([self.states[i].best_c for i in sub])  # (B', K)
        lam_best = torch.tensor(
            [self.states[i].best_lam for i in sub], dtype=torch.float64, device=self.device
        )
        n = self.config.refine
        frac = torch.arange(1, n + 1, dtype=torch.float64, device=self.device) / (n + 1)
        lam_t = (
            lam_lo + (lam_best[:, None] - lam_lo).clamp_min(0.0) * frac[None, :]
        )  # (B', n) in (λ_lo, λ_best)
        t = (lam_t / lam_best[:, None].clamp_min(1e-300)).clamp(0.0, 1.0)
        radial = centre[:, None, :] + t[:, :, None] * (best - centre)[:, None, :]
        clipped = torch.maximum(
            torch.minimum(best[:, None, :], centre[:, None, :] + lam_t[:, :, None] * half[:, None, :]),
            centre[:, None, :] - lam_t[:, :, None] * half[:, None, :],
        )
        cand = torch.cat([radial, clipped], dim=1)
        cap = torch.cat([lam_t, lam_t], dim=1)
        self._evaluate_and_record(sub, batch.select(better), cand, floor, cap)

    def _curve(self, st: _ImageState) -> CoverageCurve:
        k = st.basis.k
        if st.rec_lam:
            lam = np.concatenate(st.rec_lam)
            acc = np.concatenate(st.rec_acc)
            cs = np.concatenate(st.rec_c)
            order = np.lexsort((-acc, lam))
            lam, acc, cs = lam[order], acc[order], cs[order]
            run = np.maximum.accumulate(acc)
            keep = np.r_[True, acc[1:] > run[:-1]]
            lam, acc, cs = lam[keep], acc[keep], cs[keep]
            # equal λ: keep the last (highest) accuracy only
            last = np.r_[lam[1:] != lam[:-1], True]
            lam, acc, cs = lam[last], acc[last], cs[last]
            st.rec_lam, st.rec_acc, st.rec_c = [lam], [acc], [cs]
        else:
            lam, acc, cs = np.zeros(0), np.zeros(0), np.zeros((0, k))
        return CoverageCurve(
            lam, acc, cs, st.searched_to, st.exhausted, self.quantile_level, float(self.config.lambda_max)
        )


def search_curves(
    bases: Sequence[BasisLike],
    truths: Sequence[np.ndarray | torch.Tensor],
    box: CoefficientBox,
    config: SearchConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    labels: Sequence[int] | None = None,
) -> CurveSet:
    """Run a :class:`CoverageSearch` to its end (every image past ``nu_max`` or λ_max); return its curves."""
    search = CoverageSearch(bases, truths, box, config, labels=labels)
    search.run(progress=progress, should_stop=should_stop)
    return search.curves()
