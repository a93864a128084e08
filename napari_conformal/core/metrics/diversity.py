"""Metrics over N sampled members of a segmentation set (CONSIGN §3.2; docs/algorithms.md#metrics).

Given N label maps drawn from a method's prediction set (``samples``, shape
``(N, *S)``, integer labels):

* **uncertain pixels** (:func:`uncertain_columns`): pixels whose label is not
  constant across the N samples. Every metric below is computed on these
  columns only (the others carry no information about the differences).
* **Chao1** (:func:`chao1`): estimate of the number of distinct segmentations,
  from S_obs distinct sample vectors, f1 singletons and f2 doubletons::

      bias_corrected = S_obs + f1 (f1 − 1) / (2 (f2 + 1))   (always; the reference code's value)
      classical      = S_obs + f1² / (2 f2)                  if f2 > 0
                     = bias_corrected                        if f2 = 0 (the paper's rule: the
                                                               classical form is undefined there)

  With no uncertain pixel both are 1 (one distinct segmentation).
* **SEC** (:func:`sec`, :func:`covered_within`): sample-based estimated
  coverage, the fraction of images for which one of the first N samples
  matches the ground truth at accuracy rate ν::

      SEC(N) = mean_i 1[ max_{s ≤ N} acc(Ŷ_i^(s); Y_i) > ν ]

  with the label-wise accuracy of :mod:`napari_conformal.core.metrics.accuracy` (over the counted
  labels only when ``labels=`` restricts it to one structure).
* **Correlation** (:func:`sample_correlation`): Pearson correlation matrix of
  the N samples taken as N variables over the uncertain pixels (label indices
  as numbers), NaN (constant sample) replaced by 0. Reported as the mean over
  all N×N entries (diagonal included, the reference code's value) and as the
  off-diagonal mean ``2/(N(N−1)) Σ_{s<s'} ρ_{ss'}`` (docs/algorithms.md#choices-where-the-papers-are-silent).
  With ≤ 1 uncertain pixel both are 1.

:func:`diversity_curves` draws max(N) samples once and evaluates all three on
the prefixes of that draw, so the curves over N are nested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_conformal.core.metrics.accuracy import labelwise_accuracy
from napari_conformal.errors import ConformalError

__all__ = [
    "DEFAULT_N_VALUES",
    "Chao1Result",
    "chao1",
    "covered_within",
    "diversity_curves",
    "labelwise_accuracy",
    "sample_correlation",
    "sec",
    "uncertain_columns",
]

#: Sample counts reported by default (the CONSIGN paper's up to 1000).
DEFAULT_N_VALUES = (10, 50, 100, 500, 1000)

# Columns per block in the chunked Gram matrix (N × block float64 per block).
_GRAM_BLOCK_BYTES = 32 * 2**20


def _as_samples(samples: Any, name: str = "samples") -> np.ndarray:
    arr = np.asarray(samples)
    if arr.ndim < 2:
        raise ConformalError(
            f"{name} must have shape (N, *S) with at least one spatial axis, got {arr.shape}"
        )
    if arr.shape[0] < 1:
        raise ConformalError(f"{name} must hold at least one sample (N >= 1), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ConformalError(f"{name} must be integer label maps, got dtype {arr.dtype}")
    return arr


def uncertain_columns(samples: np.ndarray) -> np.ndarray:
    """Pixels whose label differs between at least two of the N samples.

    Parameters
    ----------
    samples : ndarray of int, shape (N, *S)
        N label maps.

    Returns
    -------
    ndarray of bool, shape S
        True where ``samples[:, p]`` is not constant (``ptp > 0``).
    """
    arr = _as_samples(samples)
    return arr.min(axis=0) != arr.max(axis=0)


def _uncertain_matrix(arr: np.ndarray) -> np.ndarray:
    """The (N, U) matrix of the uncertain columns, in the smallest unsigned/signed int dtype."""
    mask = uncertain_columns(arr).reshape(-1)
    cols = arr.reshape(arr.shape[0], -1)[:, mask]
    if cols.size:
        lo, hi = int(cols.min()), int(cols.max())
        dtype = np.result_type(np.min_scalar_type(lo), np.min_scalar_type(hi))
        cols = cols.astype(dtype, copy=False)
    return np.ascontiguousarray(cols)


@dataclass(frozen=True)
class Chao1Result:
    """Chao1 richness estimate of the distinct segmentations in N samples.

    Attributes
    ----------
    n_samples : int
        N.
    s_obs : int
        Distinct sample vectors (on the uncertain pixels).
    f1, f2 : int
        Vectors seen exactly once / exactly twice.
    classical : float
        ``S_obs + f1²/(2 f2)`` when f2 > 0, else ``bias_corrected``.
    bias_corrected : float
        ``S_obs + f1(f1 − 1)/(2 (f2 + 1))`` (used for figures, as the reference code).
    """

    n_samples: int
    s_obs: int
    f1: int
    f2: int
    classical: float
    bias_corrected: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict of the fields (JSON-ready)."""
        return asdict(self)


def chao1(samples: np.ndarray) -> Chao1Result:
    """Chao1 estimate of the number of distinct segmentations among N samples.

    Parameters
    ----------
    samples : ndarray of int, shape (N, *S)
        N label maps drawn from one image's prediction set.

    Returns
    -------
    Chao1Result
        See the module docstring for the formulas and the f2 = 0 rule.
    """
    arr = _as_samples(samples)
    n = arr.shape[0]
    rows = _uncertain_matrix(arr)
    if rows.shape[1] == 0:
        counts = np.array([n])
    else:
        # one opaque byte string per row: a 1-D sort instead of a lexicographic one
        packed = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
        _, counts = np.unique(packed, return_counts=True)
    s_obs = int(counts.size)
    f1 = int(np.count_nonzero(counts == 1))
    f2 = int(np.count_nonzero(counts == 2))
    bias_corrected = s_obs + f1 * (f1 - 1) / (2.0 * (f2 + 1))
    classical = s_obs + f1 * f1 / (2.0 * f2) if f2 > 0 else bias_corrected
    return Chao1Result(n, s_obs, f1, f2, float(classical), float(bias_corrected))


def _check_n_values(n_values: Sequence[int], available: int | None, name: str = "n_values") -> list[int]:
    values = [int(v) for v in np.atleast_1d(np.asarray(n_values))]
    if not values:
        raise ConformalError(f"{name} must hold at least one sample count")
    if any(v < 1 for v in values):
        raise ConformalError(f"{name} must be positive sample counts, got {values}")
    if available is not None and max(values) > available:
        raise ConformalError(f"{name} asks for N = {max(values)} samples but only {available} were given")
    return values


def covered_within(
    samples: np.ndarray,
    truth: np.ndarray,
    nu: float,
    n_values: Sequence[int],
    n_labels: int | None = None,
    *,
    labels: Sequence[int] | None = None,
) -> dict[int, bool]:
    """For one image: does one of the first N samples match the truth at rate ν?

    Parameters
    ----------
    samples : ndarray of int, shape (N_max, *S)
        Samples in draw order.
    truth : ndarray of int, shape S
        Ground truth label map.
    nu : float
        Accuracy rate ν in [0, 1); the match is ``acc > ν`` (strict).
    n_values : sequence of int
        Prefix lengths N (each ≤ N_max).
    n_labels : int, optional
        Number of labels (for validating ``truth``).
    labels : sequence of int, optional
        Counted labels of the accuracy (``[c]``: the recall of structure c); None: every label.

    Returns
    -------
    dict
        ``{N: max_{s≤N} acc(samples[s]; truth) > ν}``.
    """
    arr = _as_samples(samples)
    nu = _check_nu(nu)
    values = _check_n_values(n_values, arr.shape[0])
    acc = labelwise_accuracy(arr[: max(values)], truth, n_labels, labels=labels)
    best = np.maximum.accumulate(acc)
    return {v: bool(best[v - 1] > nu) for v in values}


def _check_nu(nu: float) -> float:
    nu = float(nu)
    if not 0.0 <= nu < 1.0:
        raise ConformalError(f"nu must lie in [0, 1), got {nu}")
    return nu


def sec(
    sample_sets: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    nu: float,
    n_values: Sequence[int],
    n_labels: int | None = None,
    *,
    labels: Sequence[int] | None = None,
) -> dict[int, float]:
    """Sample-based estimated coverage over a set of images.

    Parameters
    ----------
    sample_sets : sequence of ndarray, each (N_i, *S_i), or ndarray (n_images, N, *S)
        Samples of each image's prediction set, in draw order.
    truths : sequence of ndarray, each S_i, or ndarray (n_images, *S)
        Ground truths.
    nu : float
        Accuracy rate ν in [0, 1).
    n_values : sequence of int
        Numbers of samples N (each ≤ min_i N_i).
    n_labels : int, optional
        Number of labels (for validating the truths).
    labels : sequence of int, optional
        Counted labels of the accuracy (see :func:`covered_within`).

    Returns
    -------
    dict
        ``{N: SEC(N)}``, the fraction of images covered within N samples.
    """
    if len(sample_sets) != len(truths):
        raise ConformalError(
            f"sample_sets and truths must list the same images, got {len(sample_sets)} and {len(truths)}"
        )
    if len(sample_sets) == 0:
        raise ConformalError("sec needs at least one image")
    pairs = zip(sample_sets, truths, strict=True)
    hits = [covered_within(s, y, nu, n_values, n_labels, labels=labels) for s, y in pairs]
    return {v: float(np.mean([h[v] for h in hits])) for v in hits[0]}


def sample_correlation(samples: np.ndarray) -> tuple[float, float]:
    """Mean Pearson correlation among N samples on their uncertain pixels.

    Parameters
    ----------
    samples : ndarray of int, shape (N, *S)
        N label maps; each is one variable observed at the U uncertain pixels.

    Returns
    -------
    full_mean : float
        Mean of all N×N entries of the correlation matrix, diagonal included
        (entries of a constant sample are 0, also on the diagonal, as
        ``nan_to_num(corrcoef(...))``).
    offdiag_mean : float
        ``2/(N(N−1)) Σ_{s<s'} ρ_{ss'}``, the mean over distinct pairs.

    Notes
    -----
    With ≤ 1 uncertain pixel (always the case for N = 1) both values are 1.0
    (reference convention). The N×N centred Gram matrix is accumulated over
    blocks of uncertain columns, so memory is O(N² + N·block): about 32 MB of
    float64 per block whatever U is (N = 1000 on 256² pixels: < 100 MB).
    """
    arr = _as_samples(samples)
    n = arr.shape[0]
    flat = arr.reshape(n, -1)
    cols = np.flatnonzero(uncertain_columns(arr).reshape(-1))
    u = cols.size
    if u <= 1:
        return 1.0, 1.0
    block = max(1, _GRAM_BLOCK_BYTES // (8 * n))
    row_sum = np.zeros(n, dtype=np.float64)
    for start in range(0, u, block):
        row_sum += flat[:, cols[start : start + block]].sum(axis=1, dtype=np.float64)
    row_mean = row_sum / u
    gram = np.zeros((n, n), dtype=np.float64)
    for start in range(0, u, block):
        centred = flat[:, cols[start : start + block]].astype(np.float64) - row_mean[:, None]
        gram += centred @ centred.T
    std = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = gram / std[:, None] / std[None, :]
    corr = np.clip(np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    total = float(corr.sum())
    trace = float(np.trace(corr))
    return total / (n * n), (total - trace) / (n * (n - 1))


def diversity_curves(
    draw: Callable[[int, np.random.Generator], np.ndarray],
    truth: np.ndarray,
    nu: float,
    n_values: Sequence[int] = DEFAULT_N_VALUES,
    seed: int = 0,
    *,
    n_labels: int | None = None,
    correlation_max_n: int | None = 2000,
    labels: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Chao1, SEC and correlation of one image's set at several sample counts.

    Parameters
    ----------
    draw : callable ``draw(n, rng) -> ndarray (n, *S)``
        Draws n integer label maps from the image's prediction set using the
        given generator.
    truth : ndarray of int, shape S
        Ground truth label map.
    nu : float
        Accuracy rate ν in [0, 1) for SEC.
    n_values : sequence of int
        Sample counts N; ``max(n_values)`` samples are drawn once and each N
        uses the first N of them (nested curves).
    seed : int
        Seed of the ``np.random.default_rng`` passed to ``draw``.
    n_labels : int, optional
        Number of labels (for validating ``truth``).
    correlation_max_n : int or None
        Correlation is NaN for N above this (an N×N matrix); None computes all.
    labels : sequence of int, optional
        Counted labels of SEC's accuracy (see :func:`covered_within`); Chao1 and the correlation
        describe the set and do not depend on them.

    Returns
    -------
    dict
        ``{"chao1": {N: bias-corrected}, "chao1_classical": {N: classical},
        "sec": {N: 0.0 or 1.0}, "correlation": {N: full mean},
        "correlation_offdiag": {N: off-diagonal mean}}`` with int keys N in
        the order of ``n_values``. ``sec`` is this image's indicator; its mean
        over images is SEC(N).
    """
    values = _check_n_values(n_values, None)
    truth = np.asarray(truth)
    n_max = max(values)
    drawn = _as_samples(draw(n_max, np.random.default_rng(seed)), "draw(n, rng)")
    if drawn.shape != (n_max, *truth.shape):
        raise ConformalError(
            f"draw(n, rng) must return shape (n, *truth.shape) = {(n_max, *truth.shape)}, got {drawn.shape}"
        )
    covered = covered_within(drawn, truth, nu, values, n_labels, labels=labels)
    out: dict[str, dict[int, float]] = {
        "chao1": {},
        "chao1_classical": {},
        "sec": {},
        "correlation": {},
        "correlation_offdiag": {},
    }
    for v in values:
        prefix = drawn[:v]
        richness = chao1(prefix)
        out["chao1"][v] = richness.bias_corrected
        out["chao1_classical"][v] = richness.classical
        out["sec"][v] = float(covered[v])
        if correlation_max_n is None or v <= correlation_max_n:
            full, offdiag = sample_correlation(prefix)
        else:
            full, offdiag = float("nan"), float("nan")
        out["correlation"][v] = full
        out["correlation_offdiag"][v] = offdiag
    return out
