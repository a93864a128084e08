"""Tests of index selections (CLI strings) and random calibration/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conformal.errors import ConformalError
from napari_conformal.io.indices import parse_indices, random_split


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("0-4,9", 10, [0, 1, 2, 3, 4, 9]),
        (" 7 , 2 - 3 ", 8, [2, 3, 7]),
        ("5", 6, [5]),
        ("3-3", 4, [3]),
        ("9,0-1", 10, [0, 1, 9]),
    ],
)
def test_parse_indices_hand_cases(text, n, expected):
    assert parse_indices(text, n) == expected


def test_parse_indices_long_range_matches_python_range():
    assert parse_indices("0-79,90", 100) == [*range(80), 90]


@pytest.mark.parametrize(
    ("text", "n", "pattern"),
    [
        ("", 5, "empty"),
        ("   ", 5, "empty"),
        ("1,,2", 5, "empty entry"),
        ("1,2,", 5, "empty entry"),
        ("a", 5, "cannot read 'a'"),
        ("1-b", 5, "cannot read '1-b'"),
        ("-1", 5, "cannot read '-1'"),
        ("1.5", 5, "cannot read '1.5'"),
        ("1-2-3", 5, "cannot read '1-2-3'"),
        ("4-2", 5, r"range '4-2' is reversed"),
        ("5", 5, r"index 5 in '5' is out of range.*5 images"),
        ("0-5", 5, r"index 5 in '0-5' is out of range"),
        ("0", 0, "out of range"),
        ("1,1", 5, r"index 1 selected twice"),
        ("0-3,2-4", 5, r"index 2 selected twice \(in '0-3' and '2-4'\)"),
    ],
)
def test_parse_indices_errors_name_the_token(text, n, pattern):
    with pytest.raises(ConformalError, match=pattern):
        parse_indices(text, n)


def test_parse_indices_argument_types():
    with pytest.raises(TypeError):
        parse_indices([0, 1], 5)
    with pytest.raises(ValueError, match="n must be"):
        parse_indices("0", -1)


@pytest.mark.parametrize(("n", "fraction", "n_cal"), [(10, 0.5, 5), (10, 0.25, 3), (7, 0.5, 4), (3, 0.4, 1)])
def test_random_split_is_a_sorted_partition(n, fraction, n_cal):
    cal, test = random_split(n, fraction, seed=3)
    assert len(cal) == n_cal  # ⌊fraction·n + 1/2⌋, by hand
    assert cal == sorted(cal) and test == sorted(test)
    assert set(cal).isdisjoint(test)
    assert sorted(cal + test) == list(range(n))
    assert all(type(k) is int for k in cal + test)


def test_random_split_is_deterministic_and_seed_dependent():
    a = random_split(100, 0.3, seed=11)
    assert a == random_split(100, 0.3, seed=11)
    assert a == random_split(100, 0.3, seed=np.int64(11))
    # Two different seeds agreeing on a 30-of-100 subset has probability 1/C(100,30) ≈ 3e-26.
    assert a[0] != random_split(100, 0.3, seed=12)[0]


def test_random_split_is_roughly_uniform():
    """Every index lands in the calibration part with probability 3/10.

    Over 2000 seeds each count is Binomial(2000, 0.3): mean 600, sd ≈ 20.5; the band 600 ± 120
    (±5.9 sd) is left by a correct implementation with probability < 1e-7 for all 10 indices together.
    """
    counts = np.zeros(10, dtype=int)
    for seed in range(2000):
        cal, _ = random_split(10, 0.3, seed)
        counts[cal] += 1
    assert np.all(np.abs(counts - 600) <= 120), counts


@pytest.mark.parametrize(
    ("n", "fraction", "pattern"),
    [
        (10, 0.0, "strictly between 0 and 1"),
        (10, 1.0, "strictly between 0 and 1"),
        (10, -0.1, "strictly between 0 and 1"),
        (10, float("nan"), "strictly between 0 and 1"),
        (10, "0.5", "must be a number"),
        (10, 0.04, "calibration set empty"),
        (10, 0.96, "test set empty"),
        (1, 0.5, "empty"),
        (0, 0.5, "empty"),
    ],
)
def test_random_split_errors(n, fraction, pattern):
    with pytest.raises(ConformalError, match=pattern):
        random_split(n, fraction, seed=0)


def test_random_split_seed_checks():
    with pytest.raises(ConformalError, match="seed"):
        random_split(10, 0.5, seed=-1)
    with pytest.raises(ConformalError, match="seed"):
        random_split(10, 0.5, seed=1.5)


def test_recorded_split_reads_valid_splits_only(tmp_path):
    import zarr

    from napari_conformal.io.indices import recorded_split
    from napari_conformal.io.store import create_store, open_store

    samples = np.full((5, 2, 2, 4, 4), 0.5, dtype=np.float32)
    path = tmp_path / "s.zarr"
    create_store(path, np.zeros((5, 4, 4), np.float32), samples, np.zeros((5, 4, 4), np.int64))

    def split_of(split):
        attrs = zarr.open_group(str(path), mode="r+").attrs
        if split is None:
            attrs.pop("split", None)
        else:
            attrs["split"] = split
        return recorded_split(open_store(path))

    assert split_of({"train": [], "calibration": [0, 1, 2], "test": [3, 4]}) == ([0, 1, 2], [3, 4])
    assert split_of(None) is None
    assert split_of({"calibration": [], "test": [1]}) is None  # nothing to calibrate on
    assert split_of({"calibration": [0, 7], "test": []}) is None  # outside the store
    assert split_of({"calibration": ["x"], "test": []}) is None
    assert split_of(["not", "a", "dict"]) is None
