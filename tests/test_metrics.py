"""Tests of napari_conformal.core.metrics.segmentation: hand-computed cases, brute force, empty-mask policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from napari_conformal.core.metrics import segmentation as m
from napari_conformal.errors import ConformalError

SQRT2 = math.sqrt(2.0)


def strip(*cols: int, width: int = 5) -> np.ndarray:
    """A 1×width boolean strip with the given columns set."""
    out = np.zeros((1, width), dtype=bool)
    out[0, list(cols)] = True
    return out


def square(r0: int, c0: int, size: int = 3, shape: tuple[int, int] = (6, 6)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[r0 : r0 + size, c0 : c0 + size] = True
    return out


# --------------------------------------------------------------------------- overlap metrics


def test_overlap_metrics_on_a_strip():
    # C = [1 1 1 1 0], Y = [0 0 1 1 1], Ŷ = [0 0 1 0 0]
    # |C∩Y| = 2, |Y| = 3, |C| = 4, |Ŷ| = 1
    c, y, ref = strip(0, 1, 2, 3), strip(2, 3, 4), strip(2)
    assert m.coverage(c, y) == pytest.approx(2 / 3)
    assert m.fnr(c, y) == pytest.approx(1 / 3)
    assert m.dice(c, y) == pytest.approx(2 * 2 / (4 + 3))
    assert m.stretch(c, ref) == pytest.approx(4.0)


def test_integer_masks_are_nonzero_masks():
    # label value 2 counts as "inside" exactly like True
    c = np.array([[0, 2, 2, 0]])
    y = np.array([[0, 1, 0, 0]], dtype=np.uint8)
    assert m.coverage(c, y) == 1.0
    assert m.dice(c, y) == pytest.approx(2 * 1 / (2 + 1))


def test_overlap_metrics_3d():
    # 2×2×2 cube C vs 2×2×1 slab Y sharing 4 voxels: dice = 8/12, coverage = 1, stretch(C, Y) = 2
    c = np.zeros((3, 3, 3), bool)
    c[:2, :2, :2] = True
    y = np.zeros((3, 3, 3), bool)
    y[:2, :2, 0] = True
    assert m.dice(c, y) == pytest.approx(8 / 12)
    assert m.coverage(c, y) == 1.0
    assert m.stretch(c, y) == 2.0


# --------------------------------------------------------------------------- contour


def test_contour_is_face_connected():
    # a plus sign: the centre has all 4 face neighbours inside, so it is interior under
    # 4-connectivity (with 8-connectivity it would be on the contour: diagonals are outside)
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True
    expected = plus.copy()
    expected[2, 2] = False
    np.testing.assert_array_equal(m.contour(plus), expected)


def test_contour_counts_image_border_as_background():
    # a full 3×3 image: only the centre pixel is interior
    full = np.ones((3, 3), bool)
    expected = np.ones((3, 3), bool)
    expected[1, 1] = False
    np.testing.assert_array_equal(m.contour(full), expected)
    # 3D: a full 3×3×3 volume keeps only its centre voxel as interior (26 contour voxels)
    assert m.contour(np.ones((3, 3, 3), bool)).sum() == 26


# --------------------------------------------------------------------------- surface distances by hand


def test_strip_distances_pooled_vs_mean_of_means():
    # a = [1 0 0 0 0], b = [0 0 1 1 1]; in a 1-row image every pixel is on its contour.
    # d_ab = [2], d_ba = [2, 3, 4]
    # pooled ASSD = (2 + 2 + 3 + 4) / 4 = 2.75 ; medpy mean of means = (2 + 3) / 2 = 2.5
    # HD95 = percentile([2, 2, 3, 4], 95): rank 0.95·3 = 2.85 → 3 + 0.85·(4 − 3) = 3.85 ; HD = 4
    a, b = strip(0), strip(2, 3, 4)
    d_ab, d_ba = m.surface_distances(a, b)
    np.testing.assert_allclose(d_ab, [2.0])
    np.testing.assert_allclose(d_ba, [2.0, 3.0, 4.0])
    assert m.assd(a, b) == pytest.approx(2.75)
    mean_of_means = (d_ab.mean() + d_ba.mean()) / 2
    assert mean_of_means == pytest.approx(2.5)
    assert m.assd(a, b) != pytest.approx(mean_of_means)
    assert m.hd95(a, b) == pytest.approx(3.85)
    assert m.hausdorff(a, b) == pytest.approx(4.0)
    # columns have spacing 0.5 (rows 2.0, irrelevant in a single row): everything halves
    sp = (2.0, 0.5)
    assert m.assd(a, b, sp) == pytest.approx(1.375)
    assert m.hd95(a, b, sp) == pytest.approx(1.925)
    assert m.hausdorff(a, b, sp) == pytest.approx(2.0)


def test_anisotropic_spacing_changes_the_nearest_point():
    # a = {(0,0)}, b = {(3,0), (0,1)} (isolated pixels: each is its own contour)
    # unit spacing: d_ab = [1]; d_ba (C order: (0,1), (3,0)) = [1, 3]
    #   ASSD = 5/3, HD95 = percentile([1,1,3], 95) = 1 + 0.9·2 = 2.8, HD = 3
    #   mean of means = (1 + 2)/2 = 1.5 ≠ 5/3
    # spacing (2.0, 0.5): (0,1) is 0.5 away, (3,0) is 6 away
    #   d_ab = [0.5]; d_ba = [0.5, 6] ; ASSD = 7/3, HD95 = 0.5 + 0.9·5.5 = 5.45, HD = 6
    a = np.zeros((5, 5), bool)
    a[0, 0] = True
    b = np.zeros((5, 5), bool)
    b[3, 0] = b[0, 1] = True
    d_ab, d_ba = m.surface_distances(a, b)
    np.testing.assert_allclose(d_ab, [1.0])
    np.testing.assert_allclose(d_ba, [1.0, 3.0])
    assert m.assd(a, b) == pytest.approx(5 / 3)
    assert (d_ab.mean() + d_ba.mean()) / 2 == pytest.approx(1.5)
    assert m.hd95(a, b) == pytest.approx(2.8)
    assert m.hausdorff(a, b) == pytest.approx(3.0)
    sp = (2.0, 0.5)
    d_ab, d_ba = m.surface_distances(a, b, sp)
    np.testing.assert_allclose(d_ab, [0.5])
    np.testing.assert_allclose(d_ba, [0.5, 6.0])
    assert m.assd(a, b, sp) == pytest.approx(7 / 3)
    assert m.hd95(a, b, sp) == pytest.approx(5.45)
    assert m.hausdorff(a, b, sp) == pytest.approx(6.0)


def test_square_shifted_by_one_column():
    # A = rows 1–3 × cols 1–3, B = rows 1–3 × cols 2–4; each contour is the 8-pixel ring.
    # ∂A → ∂B: (1,2),(1,3),(3,2),(3,3) lie on ∂B (0); (1,1),(2,1),(3,1) are one column left of
    # ∂B (1); (2,3) is inside B but not on ∂B, its face neighbours (1,3),(2,2),(2,4),(3,3) are (1).
    # d_ab = four 0s and four 1s; by mirror symmetry d_ba the same.
    # ASSD = 8/16 = 0.5 ; HD95: 8 zeros, 8 ones → rank 14.25 lands on 1 ; HD = 1
    # spacing (2.0, 0.5): every nonzero distance is one column → 0.5 ; ASSD 0.25, HD95 0.5
    a, b = square(1, 1), square(1, 2)
    d_ab, d_ba = m.surface_distances(a, b)
    assert sorted(d_ab) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sorted(d_ba) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert m.assd(a, b) == pytest.approx(0.5)
    assert m.hd95(a, b) == pytest.approx(1.0)
    assert m.hausdorff(a, b) == pytest.approx(1.0)
    assert m.assd(a, b, (2.0, 0.5)) == pytest.approx(0.25)
    assert m.hd95(a, b, (2.0, 0.5)) == pytest.approx(0.5)


def test_square_shifted_diagonally_with_anisotropic_spacing():
    # A = rows 1–3 × cols 1–3 (ring around (2,2)), B = rows 2–4 × cols 2–4 (ring around (3,3)).
    # ∂B = {(2,2),(2,3),(2,4),(3,2),(3,4),(4,2),(4,3),(4,4)}.
    # unit spacing, ∂A → ∂B:
    #   (1,1)→(2,2) √2 ; (1,2)→(2,2) 1 ; (1,3)→(2,3) 1 ; (2,1)→(2,2) 1 ; (2,3) on ∂B 0 ;
    #   (3,1)→(3,2) 1 ; (3,2) on ∂B 0 ; (3,3) (B's centre)→(3,2) 1      sum = 5 + √2
    #   point reflection through (2.5, 2.5) swaps A and B, so d_ba is the same multiset.
    #   ASSD = 2(5 + √2)/16 = (5 + √2)/8 ; HD = √2 ; HD95: sorted 4×0, 10×1, 2×√2, rank 14.25 → √2
    # spacing (2.0, 0.5) (rows 2, cols 0.5):
    #   (1,1)→(2,2) √(4 + 0.25) ; (1,2)→(2,2) 2 ; (1,3)→(2,3) 2 ; (2,1)→(2,2) 0.5 ; (2,3) 0 ;
    #   (3,1)→(3,2) 0.5 ; (3,2) 0 ; (3,3)→(3,2) 0.5                    sum = 5.5 + √4.25
    #   ASSD = (5.5 + √4.25)/8 ; HD = √4.25 ; HD95 (4×0, 6×0.5, 4×2, 2×√4.25; rank 14.25) = √4.25
    a, b = square(1, 1), square(2, 2)
    assert m.assd(a, b) == pytest.approx((5 + SQRT2) / 8)
    assert m.hausdorff(a, b) == pytest.approx(SQRT2)
    assert m.hd95(a, b) == pytest.approx(SQRT2)
    sp = (2.0, 0.5)
    d_ab, _ = m.surface_distances(a, b, sp)
    np.testing.assert_allclose(d_ab, [math.sqrt(4.25), 2, 2, 0.5, 0, 0.5, 0, 0.5])
    assert m.assd(a, b, sp) == pytest.approx((5.5 + math.sqrt(4.25)) / 8)
    assert m.hausdorff(a, b, sp) == pytest.approx(math.sqrt(4.25))
    assert m.hd95(a, b, sp) == pytest.approx(math.sqrt(4.25))


def test_cube_shifted_along_z():
    # A = [1:4]^3 (3×3×3 cube), B = A shifted by +1 in z, in a 6×5×5 volume (6-connectivity).
    # ∂A = 26 voxels (all but the centre (2,2,2)); ∂B = 26 voxels (all but (3,2,2)).
    # ∂A → ∂B: z=1 face (9 voxels): nearest is B's bottom face z=2, distance 1 ;
    #          z=2 ring (8): on B's bottom face, 0 ; z=3 face (9): 8 on B's middle ring (0),
    #          (3,2,2) is B's centre → 1.   d_ab: 10 ones, 16 zeros; d_ba the same by symmetry.
    #   ASSD = 20/52 = 5/13 ; HD = HD95 = 1
    # spacing (2, 1, 1): the z=1 face is 2 away (no ∂B voxel at z=1); (3,2,2) is still 1 away
    #   in-plane. d_ab sum = 9·2 + 1 = 19, same for d_ba ; ASSD = 38/52 = 19/26 ; HD = 2 ;
    #   HD95: sorted 32×0, 2×1, 18×2, rank 0.95·51 = 48.45 → 2
    a = np.zeros((6, 5, 5), bool)
    a[1:4, 1:4, 1:4] = True
    b = np.roll(a, 1, axis=0)
    d_ab, d_ba = m.surface_distances(a, b)
    assert d_ab.size == d_ba.size == 26
    assert np.count_nonzero(d_ab == 1) == 10 and np.count_nonzero(d_ab == 0) == 16
    assert m.assd(a, b) == pytest.approx(5 / 13)
    assert m.hd95(a, b) == pytest.approx(1.0)
    assert m.hausdorff(a, b) == pytest.approx(1.0)
    sp = (2.0, 1.0, 1.0)
    assert m.assd(a, b, sp) == pytest.approx(19 / 26)
    assert m.hausdorff(a, b, sp) == pytest.approx(2.0)
    assert m.hd95(a, b, sp) == pytest.approx(2.0)


def test_identical_masks_have_zero_distance():
    a = square(1, 1)
    assert m.assd(a, a) == 0.0
    assert m.hd95(a, a) == 0.0
    assert m.hausdorff(a, a) == 0.0


# --------------------------------------------------------------------------- brute force


def _brute_contour(mask: np.ndarray) -> np.ndarray:
    """Contour by explicit face-neighbour test on a zero-padded copy (no erosion call)."""
    padded = np.pad(mask, 1)
    inside = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            shifted = np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            inside &= shifted
    return mask & ~inside


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(_brute_contour(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_contour(b)) * np.asarray(spacing)
    return cdist(pa, pb).min(axis=1)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 31), (1.0, 1.0)), ((24, 31), (2.5, 0.7)), ((9, 14, 12), (3.0, 0.8, 1.1)), ((9, 14, 12), None)],
)
def test_surface_distances_match_brute_force(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        # smooth-ish random blobs, some touching the image border
        a = rng.random(shape) < 0.35
        b = rng.random(shape) < 0.25
        a[(slice(0, 3),) * len(shape)] = True
        sp = (1.0,) * len(shape) if spacing is None else spacing
        d_ab, d_ba = m.surface_distances(a, b, spacing)
        np.testing.assert_allclose(d_ab, _brute_directed(a, b, sp), atol=1e-12)
        np.testing.assert_allclose(d_ba, _brute_directed(b, a, sp), atol=1e-12)
        pooled = np.concatenate([_brute_directed(a, b, sp), _brute_directed(b, a, sp)])
        assert m.assd(a, b, spacing) == pytest.approx(pooled.mean())
        assert m.hd95(a, b, spacing) == pytest.approx(np.percentile(pooled, 95))
        assert m.hausdorff(a, b, spacing) == pytest.approx(pooled.max())


def test_small_objects_far_from_border_match_brute_force():
    # exercises the bounding-box crop: objects in the middle of a large volume
    a = np.zeros((40, 50, 60), bool)
    b = np.zeros_like(a)
    a[18:22, 20:27, 30:33] = True
    b[19:24, 22:25, 28:35] = True
    b[20, 23, 29] = False
    sp = (2.0, 0.9, 0.9)
    d_ab, d_ba = m.surface_distances(a, b, sp)
    np.testing.assert_allclose(d_ab, _brute_directed(a, b, sp))
    np.testing.assert_allclose(d_ba, _brute_directed(b, a, sp))


def test_metrics_are_symmetric():
    rng = np.random.default_rng(3)
    a, b = rng.random((20, 20)) < 0.3, rng.random((20, 20)) < 0.5
    for f in (m.dice, m.assd, m.hd95, m.hausdorff):
        assert f(a, b) == pytest.approx(f(b, a))


# --------------------------------------------------------------------------- empty-mask policy


def test_empty_truth_and_reference():
    empty, full = np.zeros((4, 4), bool), square(0, 0, 2, (4, 4))
    assert math.isnan(m.coverage(full, empty))
    assert math.isnan(m.coverage(empty, empty))
    assert math.isnan(m.fnr(full, empty))
    assert m.coverage(empty, full) == 0.0
    assert m.fnr(empty, full) == 1.0
    assert math.isnan(m.stretch(full, empty))
    assert math.isnan(m.stretch(empty, empty))
    assert m.stretch(empty, full) == 0.0


def test_empty_dice():
    empty, full = np.zeros((4, 4), bool), square(0, 0, 2, (4, 4))
    assert math.isnan(m.dice(empty, empty))
    assert m.dice(empty, full) == 0.0
    assert m.dice(full, empty) == 0.0


@pytest.mark.parametrize("f", [m.assd, m.hd95, m.hausdorff])
def test_empty_distance_metrics_are_nan(f):
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:3, 1:3] = True
    assert math.isnan(f(empty, full))
    assert math.isnan(f(full, empty))
    assert math.isnan(f(empty, empty))
    assert math.isnan(f(empty, empty, (1.0, 2.0, 3.0)))


def test_empty_surface_distances():
    empty, full = np.zeros((5, 5), bool), square(1, 1, 3, (5, 5))
    d_ab, d_ba = m.surface_distances(empty, full)
    assert d_ab.size == 0
    assert d_ba.shape == (8,) and np.all(np.isinf(d_ba))
    d_ab, d_ba = m.surface_distances(full, empty)
    assert d_ab.shape == (8,) and np.all(np.isinf(d_ab))
    assert d_ba.size == 0
    d_ab, d_ba = m.surface_distances(empty, empty)
    assert d_ab.size == 0 and d_ba.size == 0


# --------------------------------------------------------------------------- segmentation_metrics


def test_segmentation_metrics_bundle():
    # strip: C = [1 1 1 1 0], Y = [0 0 1 1 1], Ŷ = [0 0 1 0 0]
    # contours = masks; d_CY = [2, 1, 0, 0], d_YC = [0, 0, 1]
    # ASSD = 4/7 ; HD95 = percentile([0,0,0,0,1,1,2], 95): rank 5.7 → 1 + 0.7 = 1.7
    c, y, ref = strip(0, 1, 2, 3), strip(2, 3, 4), strip(2)
    out = m.segmentation_metrics(c, y, ref)
    assert list(out) == list(m.METRIC_KEYS)
    assert out["coverage"] == pytest.approx(2 / 3)
    assert out["stretch"] == pytest.approx(4.0)
    assert out["dice"] == pytest.approx(4 / 7)
    assert out["assd"] == pytest.approx(4 / 7)
    assert out["hd95"] == pytest.approx(1.7)
    # spacing halves the distances only
    out2 = m.segmentation_metrics(c, y, ref, spacing=(1.0, 0.5))
    assert out2["assd"] == pytest.approx(2 / 7)
    assert out2["hd95"] == pytest.approx(0.85)
    assert out2["dice"] == out["dice"]


def test_segmentation_metrics_empty_branches():
    empty, full = np.zeros((4, 4), bool), square(0, 0, 2, (4, 4))
    out = m.segmentation_metrics(full, full)  # no reference
    assert math.isnan(out["stretch"])
    assert out["coverage"] == 1.0 and out["dice"] == 1.0 and out["assd"] == 0.0
    out = m.segmentation_metrics(empty, full, reference=full)
    assert out["coverage"] == 0.0 and out["stretch"] == 0.0 and out["dice"] == 0.0
    assert math.isnan(out["assd"]) and math.isnan(out["hd95"])
    out = m.segmentation_metrics(empty, empty, reference=empty)
    assert all(math.isnan(v) for v in out.values())


# --------------------------------------------------------------------------- validation


def test_shape_mismatch_names_the_arguments():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 5), bool)
    with pytest.raises(ConformalError, match="pred_set and truth"):
        m.coverage(a, b)
    with pytest.raises(ConformalError, match="pred_set and reference"):
        m.stretch(a, b)
    with pytest.raises(ConformalError, match="pred and truth"):
        m.dice(a, b)
    with pytest.raises(ConformalError, match="a and b"):
        m.assd(a, b)
    with pytest.raises(ConformalError, match="pred_set and reference"):
        m.segmentation_metrics(a, a, reference=b)


def test_bad_spacing_and_dtype():
    a = square(1, 1)
    with pytest.raises(ConformalError, match="one value per axis"):
        m.assd(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ConformalError, match="positive"):
        m.hd95(a, a, (1.0, 0.0))
    with pytest.raises(ConformalError, match="positive"):
        m.surface_distances(a, a, (1.0, float("nan")))
    with pytest.raises(ConformalError, match="spacing"):
        m.assd(a, a, 1.0)
    with pytest.raises(ConformalError, match="spacing"):
        # validated even when the result would be NaN
        m.assd(np.zeros((3, 3), bool), a[:3, :3], (1.0,))
    with pytest.raises(ConformalError, match="boolean or integer"):
        m.dice(a.astype(float), a)
    with pytest.raises(ConformalError, match="at least one axis"):
        m.contour(np.bool_(True))


# --------------------------------------------------------------------------- nanmean_metrics


def test_nanmean_metrics():
    rows = [
        {"index": 0, "dice": 0.5, "assd": float("nan"), "covered": True, "chao1": {10: 2.0, 50: 4.0}},
        {"index": 1, "dice": 1.0, "assd": 3.0, "covered": False, "chao1": {10: float("nan"), 50: 6.0}},
        {"index": 2, "dice": None, "assd": 1.0, "covered": True},
    ]
    out = m.nanmean_metrics(rows)
    assert "index" not in out
    assert out["dice"] == pytest.approx(0.75)
    assert out["assd"] == pytest.approx(2.0)
    assert out["covered"] == pytest.approx(2 / 3)
    assert out["chao1"] == {10: pytest.approx(2.0), 50: pytest.approx(5.0)}
    all_nan = m.nanmean_metrics([{"hd95": float("nan")}, {"hd95": None}])
    assert math.isnan(all_nan["hd95"])
    assert m.nanmean_metrics([]) == {}
    with pytest.raises(ConformalError, match="'dice'"):
        m.nanmean_metrics([{"dice": "high"}])
    with pytest.raises(ConformalError, match="mixes"):
        m.nanmean_metrics([{"sec": {10: 1.0}}, {"sec": 1.0}])
