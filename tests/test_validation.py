"""Tests of napari_conformal.core.validation: every check, its range, its error class and its message.

Messages must name the argument (or the array and the image) and the value, so that the command
line and the docks can show them as they are.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from napari_conformal.core import validation as v
from napari_conformal.core.quantiles import max_uncovered
from napari_conformal.errors import InsufficientCalibrationError, ParameterError, StoreValidationError

# --------------------------------------------------------------------------- numbers


def test_exact_fraction_is_the_typed_decimal():
    assert v.exact_fraction(0.1) == Fraction(1, 10)
    assert v.exact_fraction(np.float32(0.25)) == Fraction(1, 4)
    assert v.exact_fraction(0.29) == Fraction(29, 100)  # not the binary 0.28999…
    assert v.exact_fraction(7) == Fraction(7) and v.exact_fraction(np.int64(3)) == Fraction(3)
    assert v.exact_fraction(Fraction(2, 7)) == Fraction(2, 7)


@pytest.mark.parametrize("good", [1e-9, 0.1, 0.5, np.float32(0.2), np.float64(0.999), 0.9999999])
def test_alpha_accepts_the_open_unit_interval(good):
    assert v.check_alpha(good) == float(good) and isinstance(v.check_alpha(good), float)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (0.0, r"^alpha must lie in \(0, 1\), got 0.0$"),
        (1.0, r"^alpha must lie in \(0, 1\), got 1.0$"),
        (-0.1, r"^alpha must lie in \(0, 1\), got -0.1$"),
        (1.5, r"^alpha must lie in \(0, 1\), got 1.5$"),
        (float("nan"), r"^alpha must be a number in \(0, 1\), got nan$"),
        (float("inf"), r"^alpha must be a number in \(0, 1\), got inf$"),
        ("0.1", r"^alpha must be a number in \(0, 1\), got '0.1'$"),
        (None, r"^alpha must be a number in \(0, 1\), got None$"),
        (True, r"^alpha must be a number in \(0, 1\), got True$"),
        ([0.1], r"^alpha must be a number in \(0, 1\), got \[0.1\]$"),
    ],
)
def test_alpha_refuses_everything_else(bad, message):
    with pytest.raises(ParameterError, match=message):
        v.check_alpha(bad)


def test_messages_name_the_argument():
    with pytest.raises(ParameterError, match=r"^risk_level must lie in \(0, 1\), got 2$"):
        v.check_alpha(2, "risk_level")
    with pytest.raises(ParameterError, match=r"^accuracy must lie in \[0, 1\), got 1$"):
        v.check_nu(1, "accuracy")
    with pytest.raises(ParameterError, match=r"^q must lie in \(0, 1\), got 0$"):
        v.check_level(0, "q")
    with pytest.raises(ParameterError, match=r"^starts must be an integer >= 2, got 1$"):
        v.check_positive_int(1, "starts", minimum=2)
    with pytest.raises(ParameterError, match=r"^components must be an integer >= 1, got 0$"):
        v.check_k(0, name="components")
    with pytest.raises(ParameterError, match=r"^structure=3 is not a class"):
        v.check_fg_class(3, 3, name="structure")
    with pytest.raises(ParameterError, match=r"^threshold must be a finite number >= 0, got -1$"):
        v.check_lambda(-1, "threshold")


def test_nu_is_closed_at_zero_and_required():
    assert v.check_nu(0.0) == 0.0 and v.check_nu(0.9) == 0.9
    for bad in (1.0, -0.01, 1.2):
        with pytest.raises(ParameterError, match=rf"^nu must lie in \[0, 1\), got {re.escape(repr(bad))}$"):
            v.check_nu(bad)
    with pytest.raises(
        ParameterError, match=r"^nu \(label-wise accuracy, a number in \[0, 1\)\) is required"
    ):
        v.check_nu(None)
    with pytest.raises(ParameterError, match=r"^nu must be a number in \[0, 1\), got nan$"):
        v.check_nu(float("nan"))


def test_check_level_closed_low():
    assert v.check_level(0.0, "x", closed_low=True) == 0.0
    with pytest.raises(ParameterError, match=r"^x must lie in \(0, 1\), got 0.0$"):
        v.check_level(0.0, "x")


def test_positive_int_refuses_bools_floats_and_small_values():
    assert v.check_positive_int(3, "n") == 3 and v.check_positive_int(np.int64(3), "n") == 3
    assert isinstance(v.check_positive_int(np.int32(3), "n"), int)
    assert v.check_positive_int(0, "n", minimum=0) == 0
    for bad in (0, -2, 3.0, True, "3", None):
        with pytest.raises(ParameterError, match=rf"^n must be an integer >= 1, got {re.escape(repr(bad))}$"):
            v.check_positive_int(bad, "n")


def test_k_needs_k_plus_one_samples():
    assert v.check_k(5) == 5 and v.check_k(4, 5) == 4 and v.check_k(1, 2) == 1
    with pytest.raises(
        ParameterError,
        match=r"^k=5 principal directions need at least 6 samples per image, the store has T=5 .*lower k",
    ):
        v.check_k(5, 5)
    with pytest.raises(ParameterError, match=r"^K=3 principal directions need at least 4 samples .* lower K"):
        v.check_k(3, 1, name="K")
    with pytest.raises(ParameterError, match=r"^k must be an integer >= 1, got 0$"):
        v.check_k(0, 10)


def test_fg_class_is_a_label_of_the_data():
    assert v.check_fg_class(1, 2) == 1 and v.check_fg_class(3, 4) == 3 and v.check_fg_class(7) == 7
    with pytest.raises(ParameterError, match=r"^fg_class=2 is not a class of this data \(labels 0\.\.1\)$"):
        v.check_fg_class(2, 2)
    with pytest.raises(ParameterError, match=r"^fg_class must be an integer >= 0, got -1$"):
        v.check_fg_class(-1, 4)
    with pytest.raises(ParameterError, match=r"^fg_class must be an integer >= 0, got 1.0$"):
        v.check_fg_class(1.0, 4)


def test_lambda_is_finite_non_negative_and_bounded():
    assert v.check_lambda(0) == 0.0 and v.check_lambda(3.5) == 3.5 and v.check_lambda(1.0, upper=1.0) == 1.0
    for bad in (-0.1, float("nan"), float("inf"), None, "1", True):
        with pytest.raises(ParameterError, match=r"^lambda_hat must be a finite number >= 0, got"):
            v.check_lambda(bad)
    with pytest.raises(ParameterError, match=r"^lambda_hat must be a number in \[0, 1\], got 1.0000001$"):
        v.check_lambda(1.0000001, upper=1.0)
    with pytest.raises(ParameterError, match=r"^lambda_hat must be a number in \[0, 500\], got -1$"):
        v.check_lambda(-1, upper=500)


# --------------------------------------------------------------------------- calibration size


@pytest.mark.parametrize(
    ("alpha", "need"), [(0.2, 4), (0.1, 9), (0.05, 19), (0.3, 3), (0.25, 3), (0.9, 1), (0.01, 99)]
)
def test_min_calibration_size_hand(alpha, need):
    # n ≥ ⌈1/α⌉ − 1: 1/0.3 = 3.33 → 3; 1/0.25 = 4 exactly → 3; at least one image always
    assert v.min_calibration_size(alpha) == need
    v.check_calibration_size(need, alpha)
    if need > 1:
        with pytest.raises(InsufficientCalibrationError):
            v.check_calibration_size(need - 1, alpha)


def test_min_calibration_size_with_a_bound():
    assert v.min_calibration_size(0.5, bound=2.0) == 3  # ⌈2/0.5⌉ − 1
    assert v.min_calibration_size(1.5, bound=2.0) == 1
    with pytest.raises(ParameterError, match=r"^alpha must lie in \(0, 2\), got 2.0$"):
        v.min_calibration_size(2.0, bound=2.0)
    with pytest.raises(ParameterError, match=r"^the loss bound B must be positive, got 0$"):
        v.min_calibration_size(0.1, bound=0)
    with pytest.raises(ParameterError, match=r"^alpha must be a number in \(0, 1\), got nan$"):
        v.min_calibration_size(float("nan"))


def test_min_alpha_is_one_over_n_plus_one():
    assert v.min_alpha(0) == 1 and v.min_alpha(9) == Fraction(1, 10) and v.min_alpha(19) == Fraction(1, 20)
    with pytest.raises(ParameterError, match=r"^n must be an integer >= 0, got -1$"):
        v.min_alpha(-1)


def test_calibration_size_agrees_with_the_conformal_rule():
    """n passes at α exactly when ⌊(n+1)α − 1⌋ ≥ 0 (the rule can leave m ≥ 0 images uncovered),
    and α = 1/(n+1) is the smallest level n allows (exactly, in rationals)."""
    for n in range(0, 60):
        for hundredths in range(1, 100):
            alpha = hundredths / 100
            ok = math.floor((n + 1) * Fraction(hundredths, 100) - 1) >= 0
            if ok:
                v.check_calibration_size(n, alpha)
                assert max_uncovered(n, alpha) >= 0
            else:
                with pytest.raises(InsufficientCalibrationError):
                    v.check_calibration_size(n, alpha)
            assert ok == (Fraction(hundredths, 100) >= v.min_alpha(n))


@pytest.mark.parametrize(
    ("n", "alpha", "need", "shown"), [(8, 0.1, 9, "0.1112"), (5, 0.1, 9, "0.1667"), (18, 0.05, 19, "0.05264"),
                                      (3, 0.2, 4, "0.25"), (2, 0.3, 3, "0.3334"), (1, 0.1, 9, "0.5")]
)  # fmt: skip
def test_insufficient_message_names_n_alpha_and_the_smallest_alpha(n, alpha, need, shown):
    with pytest.raises(InsufficientCalibrationError) as info:
        v.check_calibration_size(n, alpha)
    text = str(info.value)
    assert text == (
        f"too few calibration images for alpha = {alpha:g}: n = {n}, but it needs n >= ceil(1/alpha) - 1 = "
        f"{need}; with n = {n} the smallest alpha is 1/(n+1) = {shown}. Add calibration images or raise alpha"
    )
    # the α the message offers is really accepted for this n (rounded up, never down to a refused level)
    v.check_calibration_size(n, float(shown))
    assert float(shown) >= 1 / (n + 1)


def test_insufficient_message_with_a_bound():
    with pytest.raises(
        InsufficientCalibrationError,
        match=r"^n = 2 calibration images are too few for alpha = 0.5 with a loss bound B = 2: it needs "
        r"n >= ceil\(B/alpha\) - 1 = 3; the smallest alpha n allows is B/\(n\+1\) = 0.6667$",
    ):
        v.check_calibration_size(2, 0.5, bound=2.0)
    v.check_calibration_size(2, 0.6667, bound=2.0)


def test_insufficient_is_raised_before_any_other_work():
    """The class hierarchy the docks rely on: a CalibrationError, and a ConformalError (ValueError)."""
    from napari_conformal.errors import CalibrationError, ConformalError

    with pytest.raises(InsufficientCalibrationError) as info:
        v.check_calibration_size(1, 0.1)
    assert isinstance(info.value, CalibrationError) and isinstance(info.value, ConformalError)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- data


def test_sum_tolerance_by_stored_dtype():
    assert v.sum_tolerance(np.float16) == 1e-3
    assert v.sum_tolerance("float16") == 1e-3 and v.sum_tolerance(np.dtype("<f2")) == 1e-3
    assert v.sum_tolerance(np.float32) == 1e-4 and v.sum_tolerance("float64") == 1e-4
    # float16 rounding of each probability is at most 2^-11 relative: the sum is off by < 1e-3
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20000).T.astype(np.float16)
    assert np.abs(p.astype(np.float64).sum(axis=0) - 1).max() <= v.sum_tolerance(np.float16)


def _softmax(rng, t=2, n_labels=3, shape=(4, 5)) -> np.ndarray:
    e = np.exp(rng.normal(size=(t, n_labels, *shape)))
    return e / e.sum(axis=1, keepdims=True)


def _float16_off_by(rng, dev: float) -> np.ndarray:
    """float16 samples whose worst sum is off by ``dev`` (measured after the float16 rounding)."""
    s = _softmax(rng).astype(np.float16)
    # exact float16 sums: put each pixel's remainder on label 0 (float16 steps keep it exact enough)
    for _ in range(3):
        s[:, 0] = (s[:, 0].astype(np.float64) + 1 - s.astype(np.float64).sum(axis=1)).astype(np.float16)
    s[0, 1, 2, 3] = np.float16(float(s[0, 1, 2, 3]) + dev)
    return s


def test_float16_samples_pass_as_float16_and_fail_as_float32():
    rng = np.random.default_rng(1)
    s16 = _float16_off_by(rng, 6e-4)
    worst = float(np.abs(s16.astype(np.float32).sum(axis=1) - 1).max())
    assert 1e-4 < worst <= 1e-3  # within float16's tolerance, beyond float32's
    assert v.check_samples(s16) is s16  # its own dtype: float16 → 1e-3; returned as is
    v.check_samples(s16.astype(np.float32), stored_dtype=np.float16)  # stored as float16, read as float32
    with pytest.raises(
        StoreValidationError,
        match=r"^samples, image 4: probabilities do not sum to 1 over the L=3 labels: sum \S+ at "
        r"\(t, \*pixel\) = \(0, 2, 3\), \d+ place\(s\) off by more than 0\.0001 \(apply a softmax to logits first\)$",
    ):
        v.check_samples(s16.astype(np.float32), 4)
    with pytest.raises(StoreValidationError, match=r"more than 0\.0001"):
        v.check_samples(s16, stored_dtype=np.float32)  # claimed float32 storage: float32's tolerance
    v.check_samples(s16.astype(np.float32), atol=1e-3)  # an explicit tolerance wins
    with pytest.raises(StoreValidationError, match="more than 1e-05"):
        v.check_samples(s16, atol=1e-5)
    # beyond float16's own tolerance fails in float16 too
    with pytest.raises(StoreValidationError, match=r"more than 0\.001"):
        v.check_samples(_float16_off_by(rng, 3e-3))


def test_float16_samples_through_a_store_and_arrays(tmp_path):
    """A real store keeps float16 (samples(i) returns float16) and read_image uses its tolerance;
    the same values handed over as float32 arrays are refused, naming the image."""
    from napari_conformal.io.dataset import ArrayDataset, read_image
    from napari_conformal.io.store import create_store

    rng = np.random.default_rng(2)
    samples = np.stack([_float16_off_by(rng, 6e-4) for _ in range(3)])
    images = rng.random((3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 4, 5))
    store = create_store(tmp_path / "s.zarr", images, samples, labels)
    assert store.samples_dtype == np.float16 and store.samples(1).dtype == np.float16
    assert read_image(store, 1).samples.dtype == np.float16
    np.testing.assert_array_equal(read_image(store, 2).samples, samples[2])
    read_image(ArrayDataset(images, samples, labels), 1)
    with pytest.raises(StoreValidationError, match=r"^samples, image 1: probabilities do not sum to 1"):
        read_image(ArrayDataset(images, samples.astype(np.float32), labels), 1)


def test_samples_shapes_and_dtypes():
    good = _softmax(np.random.default_rng(3))
    assert v.check_samples(good, spatial_shape=(4, 5)) is good
    v.check_samples(_softmax(np.random.default_rng(3), shape=(2, 3, 4)))  # 3D
    cases = [
        (good[0], r"^samples: shape \(3, 4, 5\), expected \(T, L, Y, X\) or \(T, L, Z, Y, X\)$"),
        (good[None, None], r"^samples: shape \(1, 1, 2, 3, 4, 5\), expected"),
        (
            good[:0],
            r"^samples: shape \(0, 3, 4, 5\) needs T >= 1 samples, L >= 2 labels and a non-empty image$",
        ),
        (good[:, :1], r"^samples: shape \(2, 1, 4, 5\) needs T >= 1 samples, L >= 2 labels"),
        (good[:, :, :0], r"needs T >= 1 samples, L >= 2 labels and a non-empty image"),
        ((good * 100).astype(np.int32), r"^samples: dtype int32, expected floating-point probabilities$"),
        (np.zeros_like(good), r"^samples: all probabilities are 0 \(was this image ever written\?\)$"),
    ]
    for bad, message in cases:
        with pytest.raises(StoreValidationError, match=message):
            v.check_samples(bad)
    with pytest.raises(
        StoreValidationError,
        match=r"^samples, image 7: spatial shape \(4, 5\) differs from the image's \(5, 4\)$",
    ):
        v.check_samples(good, 7, spatial_shape=(5, 4))


def test_samples_values_name_the_first_bad_place():
    good = _softmax(np.random.default_rng(4))
    nan = good.copy()
    nan[1, 2, 3, 4] = np.nan
    nan[1, 0, 0, 0] = np.inf
    with pytest.raises(
        StoreValidationError,
        match=r"^samples, image 2: 2 non-finite value\(s\) \(NaN/inf\), first at \(1, 0, 0, 0\) = inf$",
    ):
        v.check_samples(nan, 2)
    neg = good.copy()
    neg[0, 1, 2, 3] = -0.25
    with pytest.raises(
        StoreValidationError,
        match=r"^samples: negative probability -0.25 at \(t, l, \*pixel\) = \(0, 1, 2, 3\)$",
    ):
        v.check_samples(neg)
    big = good.copy()
    big[1, 2, 0, 1] = 1.5
    with pytest.raises(
        StoreValidationError, match=r"^samples: probability 1.5 > 1 at \(t, l, \*pixel\) = \(1, 2, 0, 1\)$"
    ):
        v.check_samples(big)
    off = good * 0.9
    with pytest.raises(
        StoreValidationError, match=r"sum 0.9 at \(t, \*pixel\) = \(\d, \d, \d\), 40 place\(s\) off"
    ):
        v.check_samples(off)


def test_image_checks():
    img = np.zeros((4, 5), np.float32)
    assert v.check_image(img) is img
    assert v.check_image(np.zeros((4, 5), np.uint16), shape=(4, 5)).dtype == np.uint16
    with pytest.raises(StoreValidationError, match=r"^images, image 3: shape \(4, 5\), expected \(5, 4\)$"):
        v.check_image(img, 3, shape=(5, 4))
    with pytest.raises(StoreValidationError, match=r"^images: dtype complex128, expected real numbers$"):
        v.check_image(np.zeros((4, 5), complex))
    with pytest.raises(StoreValidationError, match=r"^images: dtype bool, expected real numbers$"):
        v.check_image(np.zeros((4, 5), bool))
    bad = img.copy()
    bad[2, 1] = np.nan
    with pytest.raises(
        StoreValidationError,
        match=r"^images, image 0: 1 non-finite value\(s\) \(NaN\), first at \(2, 1\) = nan$",
    ):
        v.check_image(bad, 0)


def test_label_checks():
    lab = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    out = v.check_label(lab, n_labels=3, shape=(2, 2))
    assert out.dtype == np.int64 and np.array_equal(out, lab)
    np.testing.assert_array_equal(v.check_label(np.array([[True, False]])), [[1, 0]])
    assert v.check_label(np.array([[True, False]])).dtype == np.int64
    with pytest.raises(
        StoreValidationError,
        match=r"^labels, image 5: value 2 at pixel \(1, 0\) is outside 0\.\.1 \(L=2 labels\)$",
    ):
        v.check_label(lab, 5, n_labels=2)
    with pytest.raises(
        StoreValidationError, match=r"^labels: value -1 at pixel \(0, 1\) is outside 0\.\.L-1$"
    ):
        v.check_label(np.array([[0, -1]]))
    with pytest.raises(
        StoreValidationError, match=r"^labels: shape \(2, 2\), expected the image's shape \(2, 3\)$"
    ):
        v.check_label(lab, shape=(2, 3))
    with pytest.raises(StoreValidationError, match=r"^labels: dtype float64, expected an integer label map$"):
        v.check_label(lab.astype(float))


def test_probability_checks():
    p = v.check_probabilities(np.full((2, 3, 3), 0.5, np.float32))
    assert p.dtype == np.float64
    with pytest.raises(
        StoreValidationError, match=r"^probs must have shape \(L, \*S\) with L >= 2, got shape \(3,\)$"
    ):
        v.check_probabilities(np.zeros(3))
    with pytest.raises(
        StoreValidationError, match=r"^X must have shape \(L, \*S\) with L >= 2, got shape \(1, 3\)$"
    ):
        v.check_probabilities(np.zeros((1, 3)), "X")
    with pytest.raises(StoreValidationError, match=r"^probs: 1 non-finite value\(s\) \(inf\)"):
        v.check_probabilities(np.array([[0.5, np.inf], [0.5, 0.0]]))
