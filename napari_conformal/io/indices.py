"""Image index sets: parse command-line selections, draw random calibration/test splits, read a store's recorded split."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError

__all__ = ["parse_indices", "random_split", "recorded_split"]

_NUMBER = r"\s*(\d+)\s*"
_SINGLE = re.compile(rf"^{_NUMBER}$")
_RANGE = re.compile(rf"^{_NUMBER}-{_NUMBER}$")


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or int(n) < 0:
        raise ConformalError(f"n must be a non-negative integer (the number of images), got {n!r}")
    return int(n)


def parse_indices(text: str, n: int) -> list[int]:
    """Parse an index selection such as ``"0-79, 90"`` into a sorted list of image indices.

    Parameters
    ----------
    text : str
        Comma-separated tokens, each a non-negative integer ``k`` or an inclusive range ``a-b`` with
        ``a <= b``. Whitespace around numbers and commas is ignored.
    n : int
        Number of images; every index must lie in ``0..n-1``.

    Returns
    -------
    list of int
        The selected indices in increasing order.

    Raises
    ------
    ConformalError
        (a :class:`ValueError`) Naming the offending token: empty text or token, not a number/range, reversed range,
        index out of range, or an index selected twice.

    Examples
    --------
    >>> parse_indices("0-3, 7", 10)
    [0, 1, 2, 3, 7]
    """
    n = _check_n(n)
    if not isinstance(text, str):
        raise TypeError(f"indices must be given as a string like '0-79,90', got {type(text).__name__}")
    if not text.strip():
        raise ConformalError("index selection is empty (expected e.g. '0-79,90')")
    seen: dict[int, str] = {}
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise ConformalError(f"empty entry in index selection {text!r} (stray comma?)")
        if m := _SINGLE.match(token):
            lo = hi = int(m.group(1))
        elif m := _RANGE.match(token):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ConformalError(f"index range {token!r} is reversed (start {lo} > end {hi})")
        else:
            raise ConformalError(
                f"cannot read {token!r} in index selection {text!r}: expected an index 'k' or a range 'a-b'"
            )
        if hi >= n:
            raise ConformalError(
                f"index {hi} in {token!r} is out of range: the store has {n} images (0..{n - 1})"
            )
        for k in range(lo, hi + 1):
            if k in seen:
                raise ConformalError(f"index {k} selected twice (in {seen[k]!r} and {token!r})")
            seen[k] = token
    return sorted(seen)


def random_split(n: int, cal_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` at random into calibration and test indices.

    The calibration part has ``⌊cal_fraction · n + 1/2⌋`` images, chosen by a permutation from
    ``numpy.random.default_rng(seed)``; the same ``(n, cal_fraction, seed)`` always gives the same
    split.

    Parameters
    ----------
    n : int
        Number of images.
    cal_fraction : float
        Fraction of images used for calibration, strictly between 0 and 1.
    seed : int
        Seed of the random generator (non-negative).

    Returns
    -------
    cal, test : list of int
        Disjoint, sorted, together ``range(n)``; both non-empty.

    Raises
    ------
    ConformalError
        (a :class:`ValueError`) ``cal_fraction`` outside (0, 1), a bad seed, or a split with an empty part.
    """
    n = _check_n(n)
    if isinstance(cal_fraction, bool) or not isinstance(cal_fraction, int | float | np.floating):
        raise ConformalError(f"cal_fraction must be a number in (0, 1), got {cal_fraction!r}")
    frac = float(cal_fraction)
    if not 0.0 < frac < 1.0:
        raise ConformalError(f"cal_fraction must lie strictly between 0 and 1, got {cal_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ConformalError(f"seed must be a non-negative integer, got {seed!r}")
    n_cal = math.floor(frac * n + 0.5)
    if n_cal == 0 or n_cal == n:
        part = "calibration" if n_cal == 0 else "test"
        raise ConformalError(
            f"cal_fraction={cal_fraction!r} of n={n} images leaves the {part} set empty; "
            "use more images or a fraction further from 0 and 1"
        )
    perm = np.random.default_rng(int(seed)).permutation(n)
    cal = sorted(int(k) for k in perm[:n_cal])
    test = sorted(int(k) for k in perm[n_cal:])
    return cal, test


def recorded_split(store: Any) -> tuple[list[int], list[int]] | None:
    """The store's recorded ``attrs["split"]`` (calibration, test), or None when it has none.

    Demo stores record the split documented in ``docs/demo_data.md``; a split that
    names images outside the store is ignored (None).
    """
    split = store.attrs.get("split")
    if not isinstance(split, dict):
        return None
    try:
        cal = [int(i) for i in split.get("calibration") or []]
        test = [int(i) for i in split.get("test") or []]
    except (TypeError, ValueError):
        return None
    if not cal or not all(0 <= i < store.n_images for i in cal + test):
        return None
    return cal, test
