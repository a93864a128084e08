"""Choosing RW-CP's k, β and n_step for Dice on part of the calibration set, the rest left for λ̂.

The paper chose k, β and n_step "by optimizing for the Dice Similarity score on the calibration
set" (docs/algorithms.md#rw-cp-tuning). Tuning on the images that then calibrate λ̂ would make λ̂
depend on them twice, and CRC's guarantee ``E[FNR] ≤ α`` assumes the score map is fixed before
the calibration images are looked at. So the calibration images are split once, by a seeded
permutation that looks at nothing but their number (:func:`tuning_split`):

* the **tuning part** chooses the hyper-parameters (:func:`iter_tune`); its labels are read here
  and nowhere else;
* the **λ̂ part** computes λ̂ with the chosen hyper-parameters by exact CRC, as without tuning.

The chosen hyper-parameters are a function of the tuning images only, which are independent of the
λ̂ part and of the test images, so for exchangeable images the λ̂ part and a test image are still
exchangeable given the chosen map: the guarantee holds exactly, with n = the size of the λ̂ part.

Selection (per candidate h = (k, β, n_step) of the grid):

1. the diffused map ``S_h`` of every tuning image;
2. the plug-in threshold ``λ_h = inf{λ : R̂_tune(λ) ≤ α*}``, where ``R̂_tune`` is the mean FNR of
   the tuning images and ``α* = ((m+1)α − 1)/m`` is the target the λ̂ part of m images will face
   (so the candidates are compared at the stretch they will be used at);
3. the mean Dice of the sets ``{S_h ≥ 1 − λ_h}`` over the tuning images.

The candidate with the highest mean Dice wins; ties go to the fewer steps (less diffusion), then the
smaller k, then the smaller β. ``n_step = 0`` is always a candidate: its map is S⁽⁰⁾ itself, so it
is standard CRC on any feature grid, and tuning falls back to "no diffusion" where diffusion does
not help.

Cost: one feature map and one kNN search (at the largest k) per tuning image; every (k, β) reuses
the search (the neighbours of a smaller k are a prefix of the sorted list) and every n_step is a
step of one walk. The diffused maps are kept on the feature grid (float32, M values per candidate
and image) and upsampled only to score them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_conformal.core.progress import Step, check_stop
from napari_conformal.core.quantiles import ThresholdRiskCurve, adjusted_alpha
from napari_conformal.core.rwcp.diffusion import from_grid, random_walk, to_grid
from napari_conformal.core.rwcp.features import FeatureMap
from napari_conformal.core.rwcp.graph import TransitionMatrix, kernel_weights, knn_cosine
from napari_conformal.core.validation import check_alpha, check_calibration_size
from napari_conformal.errors import InsufficientCalibrationError, ParameterError

__all__ = [
    "DEFAULT_GRID",
    "Candidate",
    "TuningResult",
    "best_candidate",
    "candidate_maps",
    "candidate_score",
    "check_grid",
    "grid_candidates",
    "iter_tune",
    "score_candidates",
    "tuning_split",
]

#: candidate values searched when no grid is given (a subset of the paper's CAMUS ablation, plus
#: n_step = 0, "no diffusion")
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "k": (5, 10, 20, 40),
    "rw_beta": (5.0, 20.0, 50.0, 100.0),
    "n_step": (0, 1, 2, 5, 10, 20),
}
_KEYS = ("k", "rw_beta", "n_step")


@dataclass(frozen=True, order=True)
class Candidate:
    """One setting of the searched hyper-parameters (ordered as the tie-break prefers)."""

    n_step: int
    k: int
    rw_beta: float

    def as_dict(self) -> dict[str, Any]:
        """``{"k", "rw_beta", "n_step"}`` in JSON types."""
        return {"k": int(self.k), "rw_beta": float(self.rw_beta), "n_step": int(self.n_step)}


def check_grid(grid: Mapping[str, Any] | None) -> dict[str, tuple[float, ...]]:
    """The search grid with defaults filled in, validated.

    Parameters
    ----------
    grid : mapping, optional
        Any of ``"k"`` (integers ≥ 1), ``"rw_beta"`` (numbers ≥ 0) and ``"n_step"`` (integers ≥ 0),
        each a list of candidate values; missing keys take :data:`DEFAULT_GRID`'s.

    Raises
    ------
    ParameterError
        Unknown keys, empty lists or values of the wrong type or range.
    """
    grid = dict(grid or {})
    unknown = sorted(set(grid) - set(_KEYS))
    if unknown:
        raise ParameterError(f"tune_grid has unknown keys {unknown}; it takes k, rw_beta and n_step")
    out: dict[str, tuple[float, ...]] = {}
    for key in _KEYS:
        values = grid.get(key, DEFAULT_GRID[key])
        if isinstance(values, int | float) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list | tuple) or not values:
            raise ParameterError(f"tune_grid[{key!r}] must be a non-empty list of numbers, got {values!r}")
        clean = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise ParameterError(f"tune_grid[{key!r}] holds {v!r}, not a number")
            if key == "rw_beta":
                if not math.isfinite(float(v)) or float(v) < 0:
                    raise ParameterError(f"tune_grid['rw_beta'] values must be finite and >= 0, got {v!r}")
                clean.append(float(v))
            else:
                if float(v) != int(v) or int(v) < (1 if key == "k" else 0):
                    low = 1 if key == "k" else 0
                    raise ParameterError(f"tune_grid[{key!r}] values must be integers >= {low}, got {v!r}")
                clean.append(int(v))
        out[key] = tuple(sorted(set(clean)))
    return out


def grid_candidates(grid: Mapping[str, Sequence[float]], default: Candidate) -> list[Candidate]:
    """Every distinct setting of the grid; n_step = 0 appears once (k and β do not matter there).

    The n_step = 0 candidate takes ``default``'s k and β when they are in the grid, else the grid's
    smallest.
    """
    out = []
    for n in grid["n_step"]:
        if n == 0:
            k = default.k if default.k in grid["k"] else int(min(grid["k"]))
            b = default.rw_beta if default.rw_beta in grid["rw_beta"] else float(min(grid["rw_beta"]))
            out.append(Candidate(0, int(k), float(b)))
            continue
        for k in grid["k"]:
            for b in grid["rw_beta"]:
                out.append(Candidate(int(n), int(k), float(b)))
    return sorted(out)


def tuning_split(n: int, fraction: float, alpha: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Positions of the tuning part and of the λ̂ part of n calibration images.

    ``⌊fraction · n⌋`` images (at least 1) tune, chosen by ``numpy.random.default_rng(seed)``'s
    permutation of ``range(n)``: a function of n and the seed only, never of the data. Both parts are
    returned in ascending order.

    Raises
    ------
    InsufficientCalibrationError
        The λ̂ part would be too small for α (fewer than ``⌈1/α⌉ − 1`` images) or there is nothing
        to tune on; the message says how many images tuning needs.
    """
    a = check_alpha(alpha)
    if not 0.0 < float(fraction) < 1.0:
        raise ParameterError(f"tune_fraction must lie in (0, 1), got {fraction!r}")
    n_tune = max(1, math.floor(float(fraction) * n))
    n_lambda = n - n_tune
    need = math.ceil(1.0 / a - 1e-12) - 1
    if n_lambda < max(need, 1):
        raise InsufficientCalibrationError(
            f"tuning takes {n_tune} of the {n} calibration images (tune_fraction={fraction:g}), which leaves "
            f"{n_lambda} for lambda-hat, fewer than the {need} alpha={a:g} needs; use more calibration images, "
            f"a smaller tune_fraction, or tune='off'"
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    return sorted(int(j) for j in order[:n_tune]), sorted(int(j) for j in order[n_tune:])


@dataclass(frozen=True)
class TuningResult:
    """What :func:`iter_tune` chose and why.

    Attributes
    ----------
    chosen : Candidate
        The winning setting.
    candidates : list of Candidate
        Every setting tried, in tie-break order.
    dice : ndarray, shape (n_candidates,)
        Mean Dice over the tuning images of each candidate's sets.
    lambdas : ndarray, shape (n_candidates,)
        Each candidate's plug-in threshold λ_h on the tuning images.
    level : float
        The empirical-FNR target α* the thresholds were taken at.
    n_tune : int
        Number of tuning images.
    """

    chosen: Candidate
    candidates: list[Candidate]
    dice: np.ndarray
    lambdas: np.ndarray
    level: float
    n_tune: int
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: its settings, λ_h and mean Dice (JSON types)."""
        return [
            {**c.as_dict(), "lambda": float(lam), "dice": float(d)}
            for c, lam, d in zip(self.candidates, self.lambdas, self.dice, strict=True)
        ]


def candidate_maps(
    fmap: FeatureMap,
    base: np.ndarray,
    candidates: Sequence[Candidate],
    *,
    include_self: bool = False,
    device: Any = "cpu",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Every candidate's diffused map ``s⁽ⁿ⁾`` of one image, on the feature grid.

    One kNN search at the largest k of the candidates; each (k, β) takes the first k neighbours
    with their kernel weights and walks to its largest n_step once.

    Parameters
    ----------
    fmap : FeatureMap
        The image's features (grid S').
    base : ndarray, shape S
        ``S⁽⁰⁾``.
    candidates : sequence of Candidate
    include_self, device, should_stop
        As in :func:`~napari_conformal.core.rwcp.graph.knn_cosine`.

    Returns
    -------
    ndarray of float32, shape (n_candidates, *S')
        Upsample row j with :func:`~napari_conformal.core.rwcp.diffusion.from_grid` to get the
        score map RW-CP thresholds with candidate j (bit-identical to what
        :meth:`~napari_conformal.core.methods.rwcp.RWCPMethod.prepare` computes, up to float32).
    """
    grid = fmap.grid_shape
    coarse = to_grid(np.array(base, dtype=np.float64), grid).reshape(-1)  # a writable copy for torch
    out = np.empty((len(candidates), *grid), dtype=np.float32)
    walkers = [c for c in candidates if c.n_step > 0]
    by_graph: dict[tuple[int, float], int] = {}
    for c in walkers:
        by_graph[(c.k, c.rw_beta)] = max(by_graph.get((c.k, c.rw_beta), 0), c.n_step)
    steps: dict[tuple[int, float], torch.Tensor] = {}
    if by_graph:
        k_max = max(k for k, _ in by_graph)
        neighbors, sim = knn_cosine(
            torch.from_numpy(fmap.nodes()),
            k_max,
            device=device,
            include_self=include_self,
            should_stop=should_stop,
        )
        for (k, b), n_max in by_graph.items():
            check_stop(should_stop)
            matrix = TransitionMatrix(neighbors[:, :k].contiguous(), kernel_weights(sim[:, :k], b))
            steps[(k, b)] = random_walk(matrix, coarse, n_max).cpu()
    flat0 = coarse.cpu()
    for j, c in enumerate(candidates):
        values = flat0 if c.n_step == 0 else steps[(c.k, c.rw_beta)][c.n_step]
        out[j] = values.reshape(grid).to(torch.float32).numpy()
    return out


def candidate_score(
    maps: np.ndarray, j: int, candidate: Candidate, base: np.ndarray
) -> np.ndarray:
    """The score map (image grid, float64) of candidate ``j`` of one image.

    n_step = 0 is ``S⁽⁰⁾`` itself, as :meth:`~napari_conformal.core.methods.rwcp.RWCPMethod.prepare`
    makes it (standard CRC); any other candidate is its diffused grid map, upsampled.
    """
    if candidate.n_step == 0:
        return np.asarray(base, dtype=np.float64)
    return from_grid(torch.from_numpy(np.ascontiguousarray(maps[j])), np.shape(base)).to(torch.float64).numpy()


def score_candidates(
    maps: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    level: float,
    candidates: Sequence[Candidate],
    bases: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean Dice and plug-in threshold of every candidate over the tuning images.

    Parameters
    ----------
    maps : sequence of ndarray, each (n_candidates, *S'_i)
        :func:`candidate_maps` of each tuning image.
    truths : sequence of bool ndarray, each S_i
        The ground truth of each tuning image.
    level : float
        Target of the empirical FNR (α* of the λ̂ part).
    candidates : sequence of Candidate
        The settings of the maps' rows.
    bases : sequence of ndarray, each S_i
        ``S⁽⁰⁾`` of each tuning image (the n_step = 0 map, :func:`candidate_score`).

    Returns
    -------
    dice : ndarray, shape (n_candidates,)
        Mean over the images of the Dice of ``{S_h ≥ 1 − λ_h}``.
    lambdas : ndarray, shape (n_candidates,)
        ``λ_h = inf{λ : R̂_tune(λ) ≤ level}``.
    """
    n_candidates = len(candidates)
    dice = np.zeros(n_candidates)
    lambdas = np.zeros(n_candidates)
    for j, c in enumerate(candidates):
        score_maps = [candidate_score(m, j, c, b) for m, b in zip(maps, bases, strict=True)]
        curve = ThresholdRiskCurve.from_nonconformity(
            [1.0 - m[t] for m, t in zip(score_maps, truths, strict=True)]
        )
        lam = curve.lambda_for_risk(level)
        per_image = []
        for m, t in zip(score_maps, truths, strict=True):
            pred = (1.0 - m) <= lam
            inter = np.count_nonzero(pred & t)
            per_image.append(2.0 * inter / (np.count_nonzero(pred) + np.count_nonzero(t)))
        dice[j] = float(np.mean(per_image))
        lambdas[j] = lam
    return dice, lambdas


def best_candidate(dice: np.ndarray) -> int:
    """Index of the highest mean Dice; ties (to 1e-12) go to the earliest candidate (fewest steps)."""
    return max(range(len(dice)), key=lambda j: (round(float(dice[j]), 12), -j))


def iter_tune(
    images: Iterable[tuple[FeatureMap, np.ndarray, np.ndarray]],
    n_tune: int,
    *,
    alpha: float,
    n_lambda: int,
    grid: Mapping[str, Any] | None = None,
    default: Candidate | None = None,
    include_self: bool = False,
    device: Any = "cpu",
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Choose (k, β, n_step) for Dice on the tuning images, as a progress generator.

    Parameters
    ----------
    images : iterable of (FeatureMap, ndarray, ndarray)
        Per tuning image, lazily: its features, ``S⁽⁰⁾`` (shape S, float) and the boolean ground
        truth of the foreground class (shape S).
    n_tune : int
        Number of tuning images (for progress).
    alpha : float
        The calibration's risk level.
    n_lambda : int
        Size of the λ̂ part (sets the target α* the candidates are compared at).
    grid : mapping, optional
        Candidate values (:func:`check_grid`).
    default : Candidate, optional
        The method's own setting (k and β of the n_step = 0 candidate).
    include_self, device, should_stop
        As for the graph (:func:`~napari_conformal.core.rwcp.graph.knn_cosine`).

    Yields
    ------
    Step
        One per tuning image (stage ``"tuning"``), then one when the candidates are scored.

    Returns
    -------
    TuningResult
    """
    a = check_alpha(alpha)
    check_calibration_size(n_lambda, a)
    level = adjusted_alpha(n_lambda, a)
    full = check_grid(grid)
    candidates = grid_candidates(full, default or Candidate(10, 20, 50.0))
    maps: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    bases: list[np.ndarray] = []
    total = int(n_tune) + 1
    yield Step(0, total, "tuning")
    for j, (fmap, base, truth) in enumerate(images):
        check_stop(should_stop)
        truths.append(np.asarray(truth, dtype=bool))
        bases.append(np.asarray(base, dtype=np.float64))
        maps.append(
            candidate_maps(
                fmap,
                np.asarray(base),
                candidates,
                include_self=include_self,
                device=device,
                should_stop=should_stop,
            )
        )
        yield Step(j + 1, total, "tuning")
    if not maps:
        raise InsufficientCalibrationError("no tuning images")
    dice, lambdas = score_candidates(maps, truths, level, candidates, bases)
    yield Step(total, total, "tuning")
    best = best_candidate(dice)
    return TuningResult(candidates[best], candidates, dice, lambdas, float(level), len(maps))
