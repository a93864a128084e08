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
    n: int = 14, shape: tuple[int, int] = (16, 16), n_labels: int = 4, n_samples: int = 6, seed: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 (N, *S), samples float32 (N, T, L, *S), labels int64 (N, *S)).

    Each image holds one disc per foreground label (label l inside radius r_l around its own
    centre, later labels drawn over earlier ones); the samples favour the true label with
    integer weights (at 30 % of the pixels a random label instead) and put the rest of the mass on
    random labels, every pixel summing to 64/64.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros((n, *shape), dtype=np.int64)
    for i in range(n):
        for lab in range(1, n_labels):
            if lab == 3 and i in WITHOUT_3:
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
