"""Multi-class data built from integers only, so results are the same bit for bit on every platform.

Softmax samples are dyadic fractions ``n/64`` (exact in float16, float32 and float64) and the ground
truths are discs drawn with integer arithmetic; no transcendental function is involved, so golden
values computed once stay valid under any libm, BLAS or CPU. Structure 3 is left out of some images
(the per-structure tests need images without a structure); other labels may be hidden by later
discs too (label 1 in image 13 of the default data).
"""

from __future__ import annotations

import numpy as np

#: images of :func:`dyadic_dataset` whose ground truth has no pixel of label 3
WITHOUT_3 = (2, 5, 9)


def dyadic_dataset(
    n: int = 14,
    shape: tuple[int, int] = (16, 16),
    n_labels: int = 4,
    n_samples: int = 6,
    seed: int = 7,
    without_3: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 (N, *S), samples float32 (N, T, L, *S), labels int64 (N, *S)).

    Each image holds one disc per foreground label (label l inside radius r_l around its own
    centre, later labels drawn over earlier ones); the samples favour the true label with
    integer weights (at 30 % of the pixels a random label instead) and put the rest of the mass on
    random labels, every pixel summing to 64/64. ``without_3``: the images without label 3
    (default :data:`WITHOUT_3`).
    """
    absent = set(WITHOUT_3 if without_3 is None else without_3)
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros((n, *shape), dtype=np.int64)
    for i in range(n):
        for lab in range(1, n_labels):
            if lab == 3 and i in absent:
                continue
            cy, cx = rng.integers(3, shape[0] - 3), rng.integers(3, shape[1] - 3)
            r2 = int(rng.integers(4, 20))
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r2] = lab
    samples = np.zeros((n, n_samples, n_labels, *shape), dtype=np.float32)
    for i in range(n):
        for t in range(n_samples):
            weights = rng.integers(0, 8, size=(n_labels, *shape))
            # the model favours the true label at most pixels and a wrong one at the others
            favoured = np.where(rng.random(shape) < 0.3, rng.integers(0, n_labels, size=shape), labels[i])
            own = np.arange(n_labels)[:, None, None] == favoured[None]
            weights += np.where(own, rng.integers(0, 16, size=shape), 0)
            weights[0] += 1  # never all zero
            total = weights.sum(axis=0)
            # largest-remainder rounding of 64·w/Σw to integers summing to 64 (integer arithmetic only)
            scaled = 64 * weights
            counts = scaled // total
            rest = 64 - counts.sum(axis=0)
            remainder = scaled - counts * total
            order = np.argsort(-remainder, axis=0, kind="stable")
            ranks = np.argsort(order, axis=0, kind="stable")
            counts += (ranks < rest[None]).astype(counts.dtype)
            samples[i, t] = counts.astype(np.float32) / np.float32(64)
    images = labels.astype(np.float32) + rng.integers(0, 4, size=labels.shape).astype(
        np.float32
    ) / np.float32(4)
    assert np.all(samples.sum(axis=2) == 1.0)
    return images, samples, labels


def confused_dataset(
    n: int,
    shape: tuple[int, int] = (12, 12),
    n_labels: int = 4,
    n_samples: int = 4,
    *,
    confused: float = 0.3,
    p_absent: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """i.i.d. images whose per-structure recall can never pass ν = 0.7 at the model's own argmax.

    Every image holds one disc per foreground label; label ``L − 1`` is left out with probability
    ``p_absent`` (independently per image, so the images containing it are i.i.d. too). In every
    structure a fraction ``confused`` of its pixels (⌈·⌉, at least one) is confused: in every sample
    a wrong label scores strictly above the true one there, so the true label is never the most
    likely and the per-image λ_i(ν) of a pixel-wise set is never 0 for ν ≥ 1 − ``confused``.
    Everything else is continuous (Gaussian logits), so the λ_i of different images are distinct
    almost surely: the covered count of split conformal is then exactly Beta-Binomial.

    Returns
    -------
    images : ndarray of float32, shape (N, *S)
    samples : ndarray of float32, shape (N, T, L, *S)
    labels : ndarray of int64, shape (N, *S)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros((n, *shape), dtype=np.int64)
    samples = np.zeros((n, n_samples, n_labels, *shape), dtype=np.float32)
    for i in range(n):
        for lab in range(1, n_labels):
            if lab == n_labels - 1 and rng.random() < p_absent:
                continue
            cy, cx = rng.uniform(2, shape[0] - 2), rng.uniform(2, shape[1] - 2)
            radius = rng.uniform(2.0, 3.5)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = lab
        truth = labels[i]
        favoured = truth.copy()
        wrong = np.zeros(shape, dtype=bool)
        for lab in np.unique(truth).tolist():
            where = np.flatnonzero(truth.reshape(-1) == lab)
            pick = rng.choice(where, size=max(1, int(np.ceil(confused * where.size))), replace=False)
            wrong.reshape(-1)[pick] = True
        other = (truth + rng.integers(1, n_labels, size=shape)) % n_labels
        favoured[wrong] = other[wrong]
        bonus = rng.uniform(1.0, 3.0, size=shape)
        for t in range(n_samples):
            logits = rng.normal(0.0, 0.7, size=(n_labels, *shape))
            logits += np.where(np.arange(n_labels)[:, None, None] == favoured[None], bonus[None], 0.0)
            top = np.take_along_axis(logits, favoured[None], axis=0)[0]
            true_logit = top - rng.uniform(0.2, 2.0, size=shape)  # strictly below the wrong label's
            np.put_along_axis(
                logits,
                truth[None],
                np.where(wrong, true_logit, np.take_along_axis(logits, truth[None], axis=0)[0])[None],
                axis=0,
            )
            e = np.exp(logits - logits.max(axis=0, keepdims=True))
            samples[i, t] = (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
    images = (labels + rng.normal(0.0, 0.3, size=labels.shape)).astype(np.float32)
    return images, samples, labels
