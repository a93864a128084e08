"""Tests of napari_conformal.core.metrics.diversity: uncertain pixels, Chao1, SEC, sample correlation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from napari_conformal.core.metrics import diversity as d
from napari_conformal.errors import ConformalError


def _stack(rows: list[list[int]]) -> np.ndarray:
    """Samples of shape (N, 1, U) from a list of label vectors."""
    return np.asarray(rows, dtype=np.int64)[:, None, :]


# --------------------------------------------------------------------------- uncertain columns


def test_uncertain_columns_hand_case():
    samples = np.array(
        [
            [[0, 1], [2, 2]],
            [[0, 0], [2, 1]],
            [[0, 1], [2, 2]],
        ]
    )
    # (0,0): 0,0,0 constant ; (0,1): 1,0,1 varies ; (1,0): 2,2,2 constant ; (1,1): 2,1,2 varies
    np.testing.assert_array_equal(d.uncertain_columns(samples), [[False, True], [False, True]])
    assert not d.uncertain_columns(samples[:1]).any()


# --------------------------------------------------------------------------- Chao1


def test_chao1_known_frequencies():
    # patterns with multiplicities: A1 B1 C1 D2 E2 F3 → N = 10, S_obs = 6, f1 = 3, f2 = 2
    # bias-corrected = 6 + 3·2/(2·3) = 7 ; classical = 6 + 9/(2·2) = 8.25
    patterns = {
        "A": [0, 0, 1],
        "B": [0, 1, 0],
        "C": [1, 0, 0],
        "D": [1, 1, 0],
        "E": [0, 1, 1],
        "F": [1, 1, 1],
    }
    order = list("FDAEFBDECF")
    samples = _stack([[*patterns[k], 2] for k in order])  # last column constant (label 2)
    res = d.chao1(samples)
    assert (res.n_samples, res.s_obs, res.f1, res.f2) == (10, 6, 3, 2)
    assert res.bias_corrected == pytest.approx(7.0)
    assert res.classical == pytest.approx(8.25)
    assert res.to_dict()["s_obs"] == 6


def test_chao1_without_doubletons_uses_bias_corrected():
    # three distinct singletons: f1 = 3, f2 = 0 → bc = 3 + 3·2/(2·1) = 6, classical falls back to 6
    res = d.chao1(_stack([[0, 1], [1, 0], [1, 1]]))
    assert (res.s_obs, res.f1, res.f2) == (3, 3, 0)
    assert res.bias_corrected == pytest.approx(6.0)
    assert res.classical == pytest.approx(6.0)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_chao1_no_uncertain_pixels_is_one(n):
    res = d.chao1(np.ones((n, 4, 4), dtype=np.uint8))
    assert res.s_obs == 1
    assert res.bias_corrected == 1.0 and res.classical == 1.0


def test_chao1_matches_counter_brute_force():
    rng = np.random.default_rng(5)
    # few uncertain pixels so that repeats (f1, f2 > 0) occur; labels > 255 exercise wider dtypes
    samples = np.zeros((200, 6, 6), dtype=np.int64)
    samples[:, 2, 1:4] = rng.choice([0, 300, 7], size=(200, 3), p=[0.6, 0.3, 0.1])
    counts = Counter(tuple(row) for row in samples.reshape(200, -1))
    freq = Counter(counts.values())
    s_obs, f1, f2 = len(counts), freq[1], freq[2]
    res = d.chao1(samples)
    assert (res.s_obs, res.f1, res.f2) == (s_obs, f1, f2)
    assert res.bias_corrected == pytest.approx(s_obs + f1 * (f1 - 1) / (2 * (f2 + 1)))
    if f2:
        assert res.classical == pytest.approx(s_obs + f1**2 / (2 * f2))


# --------------------------------------------------------------------------- SEC


def _sec_fixture():
    # image 1: truth [0 0 1 1]
    #   s1 = [0 0 0 0]: label 0 recall 1, label 1 recall 0 → 0.5
    #   s2 = [0 0 1 0]: 1 and 1/2 → 0.75 ; s3 = truth → 1
    # image 2: truth [1 1 1 1] (only label 1 present)
    #   s1 = [1 1 1 0] → 0.75 ; s2 = [0 0 0 0] → 0 ; s3 = truth → 1
    truths = [np.array([[0, 0, 1, 1]]), np.array([[1, 1, 1, 1]])]
    samples = [
        np.array([[[0, 0, 0, 0]], [[0, 0, 1, 0]], [[0, 0, 1, 1]]]),
        np.array([[[1, 1, 1, 0]], [[0, 0, 0, 0]], [[1, 1, 1, 1]]]),
    ]
    return samples, truths


def test_sec_hand_case():
    samples, truths = _sec_fixture()
    # ν = 0.7: image 1 covered from N = 2 (0.75 > 0.7), image 2 from N = 1
    assert d.covered_within(samples[0], truths[0], 0.7, [1, 2, 3]) == {1: False, 2: True, 3: True}
    assert d.sec(samples, truths, 0.7, [1, 2, 3]) == {1: 0.5, 2: 1.0, 3: 1.0}
    # ν = 0.75, strict: 0.75 does not count, both images need the exact sample s3
    assert d.sec(samples, truths, 0.75, [1, 2, 3]) == {1: 0.0, 2: 0.0, 3: 1.0}
    # stacked array input works the same
    assert d.sec(np.stack(samples), np.stack(truths), 0.7, (2,)) == {2: 1.0}


def test_sec_validation():
    samples, truths = _sec_fixture()
    with pytest.raises(ConformalError, match="only 3 were given"):
        d.sec(samples, truths, 0.7, [4])
    with pytest.raises(ConformalError, match="same images"):
        d.sec(samples, truths[:1], 0.7, [1])
    with pytest.raises(ConformalError, match="positive"):
        d.sec(samples, truths, 0.7, [0])
    with pytest.raises(ConformalError, match="nu"):
        d.sec(samples, truths, 1.5, [1])


# --------------------------------------------------------------------------- correlation


def _brute_correlation(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    flat = samples.reshape(n, -1)
    cols = flat[:, flat.min(axis=0) != flat.max(axis=0)].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.nan_to_num(np.corrcoef(cols), nan=0.0)
    pairs = [corr[i, j] for i in range(n) for j in range(i + 1, n)]
    return float(corr.mean()), float(np.mean(pairs))


def test_correlation_hand_case():
    # s1 = [0 1], s2 = [1 0]: ρ = −1 ; full mean = (1 + 1 − 1 − 1)/4 = 0 ; off-diagonal = −1
    full, off = d.sample_correlation(_stack([[0, 1], [1, 0]]))
    assert full == pytest.approx(0.0)
    assert off == pytest.approx(-1.0)
    # add an identical copy of s1: ρ matrix [[1,-1,1],[-1,1,-1],[1,-1,1]] ; sum = 1 ; pairs −1, 1, −1
    full, off = d.sample_correlation(_stack([[0, 1], [1, 0], [0, 1]]))
    assert full == pytest.approx(1 / 9)
    assert off == pytest.approx(-1 / 3)


def test_correlation_matches_corrcoef(monkeypatch):
    rng = np.random.default_rng(7)
    samples = rng.integers(0, 3, size=(25, 12, 11))
    samples[:, :4] = 1  # constant rows of pixels: not uncertain
    samples[4, 4:] = 0  # sample 4 becomes constant on every uncertain pixel → NaN row → 0 (diagonal too)
    expected = _brute_correlation(samples)
    assert d.sample_correlation(samples) == pytest.approx(expected)
    # tiny blocks: the chunked Gram accumulation must give the same answer
    monkeypatch.setattr(d, "_GRAM_BLOCK_BYTES", 8 * 25 * 3)
    assert d.sample_correlation(samples) == pytest.approx(expected)


def test_correlation_three_dimensional():
    rng = np.random.default_rng(8)
    samples = rng.integers(0, 2, size=(6, 3, 4, 5))
    assert d.sample_correlation(samples) == pytest.approx(_brute_correlation(samples))


def test_correlation_at_most_one_uncertain_pixel_is_one():
    assert d.sample_correlation(np.zeros((5, 3, 3), int)) == (1.0, 1.0)
    one = np.zeros((5, 3, 3), int)
    one[2, 1, 1] = 1
    assert d.sample_correlation(one) == (1.0, 1.0)
    assert d.sample_correlation(np.zeros((1, 3, 3), int)) == (1.0, 1.0)


# --------------------------------------------------------------------------- diversity_curves


def _draw_from(pool: np.ndarray):
    def draw(n, rng):
        return pool[rng.integers(0, pool.shape[0], size=n)]

    return draw


def test_diversity_curves_use_prefixes_of_one_draw():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, size=(5, 6))
    pool = rng.integers(0, 3, size=(40, 5, 6))
    pool[:5] = truth
    draw = _draw_from(pool)
    n_values = (3, 10, 30)
    out = d.diversity_curves(draw, truth, 0.9, n_values, seed=11)
    assert set(out) >= {"chao1", "sec", "correlation"}
    drawn = draw(30, np.random.default_rng(11))
    for n in n_values:
        res = d.chao1(drawn[:n])
        assert out["chao1"][n] == res.bias_corrected
        assert out["chao1_classical"][n] == res.classical
        assert (out["correlation"][n], out["correlation_offdiag"][n]) == d.sample_correlation(drawn[:n])
        assert out["sec"][n] == float(d.labelwise_accuracy(drawn[:n], truth).max() > 0.9)
    # SEC indicator is non-decreasing in N (nested prefixes)
    assert np.all(np.diff([out["sec"][n] for n in n_values]) >= 0)
    # same seed, same curves
    assert d.diversity_curves(draw, truth, 0.9, n_values, seed=11) == out


def test_diversity_curves_correlation_cap_and_validation():
    truth = np.zeros((4, 4), int)
    pool = np.random.default_rng(0).integers(0, 2, size=(20, 4, 4))
    out = d.diversity_curves(_draw_from(pool), truth, 0.5, (5, 20), correlation_max_n=10)
    assert not np.isnan(out["correlation"][5])
    assert np.isnan(out["correlation"][20]) and np.isnan(out["correlation_offdiag"][20])
    with pytest.raises(ConformalError, match="draw"):
        d.diversity_curves(lambda n, rng: np.zeros((n, 3, 3), int), truth, 0.5, (5,))
    with pytest.raises(ConformalError, match="integer"):
        d.chao1(np.zeros((3, 2, 2)))
    with pytest.raises(ConformalError, match=r"\(N, \*S\)"):
        d.uncertain_columns(np.zeros(4, int))
