"""Validation of what users give the core: levels, counts, samples, labels.

One function per kind of input, each raising one error class per kind of
fault (:mod:`napari_conformal.errors`):

* :class:`~napari_conformal.errors.ParameterError` — an argument out of its
  range (α, ν, K, a foreground class, λ);
* :class:`~napari_conformal.errors.InsufficientCalibrationError` — too few
  calibration images for α (``n ≥ ⌈1/α⌉ − 1`` fails), raised *before* any
  per-image work;
* :class:`~napari_conformal.errors.StoreValidationError` — values of an
  image, its samples or its labels that violate the dataset format.

Messages name the argument (or the array and the image) and the value, so
the command line and the docks can show them as they are. :mod:`napari_conformal.io`
reuses the data checks for the dataset store.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np

from napari_conformal.errors import InsufficientCalibrationError, ParameterError, StoreValidationError

__all__ = [
    "check_alpha",
    "check_calibration_size",
    "check_fg_class",
    "check_finite",
    "check_image",
    "check_k",
    "check_label",
    "check_lambda",
    "check_level",
    "check_nu",
    "check_positive_int",
    "check_probabilities",
    "check_samples",
    "exact_fraction",
    "min_alpha",
    "min_calibration_size",
    "sum_tolerance",
]


# ------------------------------------------------------------------------------------------- numbers


def exact_fraction(x: float | Fraction | int) -> Fraction:
    """The decimal a user meant by ``x``, as an exact fraction (``0.1`` → ``1/10``).

    Integer comparisons such as ``⌊(n+1)α⌋`` then never flip through binary rounding.
    """
    if isinstance(x, Fraction):
        return x
    if isinstance(x, Integral):
        return Fraction(int(x))
    return Fraction(repr(float(x)))


def _real(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real | np.floating | np.integer):
        raise ParameterError(f"{name} must be {what}, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ParameterError(f"{name} must be {what}, got {value!r}")
    return v


def check_level(value: Any, name: str, *, closed_low: bool = False) -> float:
    """A level in (0, 1) (``closed_low``: [0, 1)); returns it as float."""
    interval = "[0, 1)" if closed_low else "(0, 1)"
    v = _real(value, name, f"a number in {interval}")
    if not ((v >= 0.0 if closed_low else v > 0.0) and v < 1.0):
        raise ParameterError(f"{name} must lie in {interval}, got {value!r}")
    return v


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """The risk level α, a number in (0, 1)."""
    return check_level(alpha, name)


def check_nu(nu: Any, name: str = "nu") -> float:
    """The label-wise accuracy ν, a number in [0, 1) (a member is ν-close when its accuracy is > ν)."""
    if nu is None:
        raise ParameterError(f"{name} (label-wise accuracy, a number in [0, 1)) is required by this method")
    return check_level(nu, name, closed_low=True)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer ≥ ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral | np.integer) or int(value) < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_k(k: Any, n_samples: int | None = None, name: str = "k") -> int:
    """K principal directions: an integer ≥ 1 and, with ``n_samples`` T, at most T − 1."""
    k = check_positive_int(k, name)
    if n_samples is not None and int(n_samples) < k + 1:
        raise ParameterError(
            f"{name}={k} principal directions need at least {k + 1} samples per image, the store has "
            f"T={n_samples} (the centred samples have rank <= T - 1); lower {name} or draw more samples"
        )
    return k


def check_fg_class(fg_class: Any, n_labels: int | None = None, name: str = "fg_class") -> int:
    """A foreground class: an integer in 1..L−1 (0 is the background)."""
    value = check_positive_int(fg_class, name, minimum=0)
    if n_labels is not None and value >= int(n_labels):
        raise ParameterError(f"{name}={value} is not a class of this data (labels 0..{int(n_labels) - 1})")
    return value


def check_lambda(lam: Any, name: str = "lambda_hat", *, upper: float | None = None) -> float:
    """A threshold λ: finite, ≥ 0 and (with ``upper``) ≤ ``upper``."""
    what = "a finite number >= 0" if upper is None else f"a number in [0, {upper:g}]"
    v = _real(lam, name, what)
    if v < 0.0 or (upper is not None and v > upper):
        raise ParameterError(f"{name} must be {what}, got {lam!r}")
    return v


# ------------------------------------------------------------------------------- calibration size


def min_alpha(n: int) -> Fraction:
    """The smallest α that ``n`` calibration images allow: ``1/(n + 1)`` (then no image may miss)."""
    return Fraction(1, check_positive_int(n, "n", minimum=0) + 1)


def min_calibration_size(alpha: Any, bound: float = 1.0) -> int:
    """The smallest n with ``⌊(n+1)α − B⌋ ≥ 0``, i.e. ``n ≥ ⌈B/α⌉ − 1`` (4, 9, 19 for α = 0.2, 0.1, 0.05, B = 1)."""
    b = exact_fraction(bound)
    if not b > 0:
        raise ParameterError(f"the loss bound B must be positive, got {bound!r}")
    a = _real(alpha, "alpha", f"a number in (0, {float(b):g})")
    if not 0.0 < a < float(b):
        raise ParameterError(f"alpha must lie in (0, {float(b):g}), got {alpha!r}")
    return max(math.ceil(b / exact_fraction(a)) - 1, 1)


def _round_up(x: Fraction, digits: int = 4) -> str:
    """``x`` rounded *up* to ``digits`` significant digits: a level a user can type that is accepted."""
    if x <= 0:
        return "0"
    scale = Fraction(10) ** (digits - 1 - math.floor(math.log10(x)))
    return f"{float(Fraction(math.ceil(x * scale)) / scale):.{digits}g}"


def check_calibration_size(n: int, alpha: Any, bound: float = 1.0) -> None:
    """Refuse ``n`` calibration images that are too few for α, naming n, α and the smallest α n allows.

    Raises
    ------
    InsufficientCalibrationError
        ``n < ⌈B/α⌉ − 1``: no λ can satisfy the conformal bound.
    """
    need = min_calibration_size(alpha, bound)
    if int(n) < need:
        smallest = min_alpha(int(n)) * exact_fraction(bound)
        raise (
            InsufficientCalibrationError(
                f"too few calibration images for alpha = {float(alpha):g}: n = {int(n)}, but it needs "
                f"n >= ceil(1/alpha) - 1 = {need}; with n = {int(n)} the smallest alpha is "
                f"1/(n+1) = {_round_up(smallest)}. Add calibration images or raise alpha"
            )
            if float(bound) == 1.0
            else InsufficientCalibrationError(
                f"n = {int(n)} calibration images are too few for alpha = {float(alpha):g} with a loss bound "
                f"B = {float(bound):g}: it needs n >= ceil(B/alpha) - 1 = {need}; the smallest alpha n allows is "
                f"B/(n+1) = {_round_up(smallest)}"
            )
        )


# --------------------------------------------------------------------------------------------- data


def _where(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry of ``mask``."""
    return tuple(int(k) for k in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _prefix(array: str, index: int | None) -> str:
    return array if index is None else f"{array}, image {int(index)}"


def sum_tolerance(dtype: Any) -> float:
    """Tolerance on ``|Σ_l p_l − 1|`` for probabilities *stored* as ``dtype``.

    float16 rounds each probability with a relative error ≤ 2⁻¹¹ ≈ 4.9e-4, so a sum of rounded
    probabilities is off by at most 4.9e-4: 1e-3. float32 (and wider): 1e-4.
    """
    return 1e-3 if np.dtype(dtype) == np.float16 else 1e-4


def check_finite(name: str, values: np.ndarray) -> None:
    """Every value of ``values`` finite; else a StoreValidationError naming ``name``, the count and the first place."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = ~finite
        at = _where(bad)
        kinds = [k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if f(values).any()]
        raise StoreValidationError(
            f"{name}: {int(bad.sum())} non-finite value(s) ({'/'.join(kinds)}), first at {at} = {values[at]}"
        )


def check_image(image: Any, index: int | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One image ``(*S)``: real numbers, finite, of ``shape`` when given; returned as an array."""
    name = _prefix("images", index)
    arr = np.asarray(image)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise StoreValidationError(f"{name}: dtype {arr.dtype}, expected real numbers")
    if shape is not None and arr.shape != tuple(shape):
        raise StoreValidationError(f"{name}: shape {arr.shape}, expected {tuple(shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        check_finite(name, arr)
    return arr


def check_samples(
    samples: Any,
    index: int | None = None,
    *,
    atol: float | None = None,
    stored_dtype: Any = None,
    spatial_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The softmax samples ``(T, L, *S)`` of one image, checked as the model wrote them.

    Every value finite and in [0, 1]; at every sample t and pixel, ``|Σ_l p_l − 1| ≤ atol``.

    Parameters
    ----------
    samples : array, shape (T, L, *S)
        Probabilities (float16/32/64), S two- or three-dimensional.
    index : int, optional
        Image index, named in messages.
    atol : float, optional
        Sum tolerance; default :func:`sum_tolerance` of ``stored_dtype``.
    stored_dtype : dtype, optional
        How the values were stored (a store's samples dtype); default the array's own dtype, so
        float16 samples get float16's tolerance even after a cast by the caller is avoided.
    spatial_shape : tuple of int, optional
        Expected S.

    Returns
    -------
    ndarray
        ``samples`` as an array (not copied when it already is one).

    Raises
    ------
    StoreValidationError
        Naming the image, the first offending place and the value.
    """
    name = _prefix("samples", index)
    arr = np.asarray(samples)
    if arr.ndim not in (4, 5):
        raise StoreValidationError(f"{name}: shape {arr.shape}, expected (T, L, Y, X) or (T, L, Z, Y, X)")
    t, n_labels = arr.shape[:2]
    if t < 1 or n_labels < 2 or 0 in arr.shape[2:]:
        raise StoreValidationError(
            f"{name}: shape {arr.shape} needs T >= 1 samples, L >= 2 labels and a non-empty image"
        )
    if spatial_shape is not None and arr.shape[2:] != tuple(spatial_shape):
        raise StoreValidationError(
            f"{name}: spatial shape {arr.shape[2:]} differs from the image's {tuple(spatial_shape)}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise StoreValidationError(f"{name}: dtype {arr.dtype}, expected floating-point probabilities")
    # float16 arithmetic is emulated by numpy: check a float32 copy (exact for float16 values)
    values = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    check_finite(name, values)
    lo, hi = float(values.min()), float(values.max())
    if hi == 0.0:
        raise StoreValidationError(f"{name}: all probabilities are 0 (was this image ever written?)")
    if lo < 0.0:
        at = _where(values < 0)
        raise StoreValidationError(f"{name}: negative probability {values[at]} at (t, l, *pixel) = {at}")
    if hi > 1.0:
        at = _where(values > 1)
        raise StoreValidationError(f"{name}: probability {values[at]} > 1 at (t, l, *pixel) = {at}")
    tol = sum_tolerance(arr.dtype if stored_dtype is None else stored_dtype) if atol is None else float(atol)
    total = values.sum(axis=1, dtype=np.float32)
    dev = np.abs(total - np.float32(1.0))
    worst = float(dev.max())
    if worst > tol:
        at = _where(dev == dev.max())
        raise StoreValidationError(
            f"{name}: probabilities do not sum to 1 over the L={n_labels} labels: sum "
            f"{float(total[at]):.6g} at (t, *pixel) = {at}, {int((dev > tol).sum())} place(s) off by more "
            f"than {tol:g} (apply a softmax to logits first)"
        )
    return arr


def check_label(
    label: Any,
    index: int | None = None,
    *,
    n_labels: int | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A ground truth ``(*S)``: integer (or boolean) values in 0..L−1; returned as an int64 array."""
    name = _prefix("labels", index)
    arr = np.asarray(label)
    if shape is not None and arr.shape != tuple(shape):
        raise StoreValidationError(f"{name}: shape {arr.shape}, expected the image's shape {tuple(shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise StoreValidationError(f"{name}: dtype {arr.dtype}, expected an integer label map")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        top = None if n_labels is None else int(n_labels) - 1
        if lo < 0 or (top is not None and hi > top):
            at = _where((arr < 0) | (arr > (hi if top is None else top)))
            raise StoreValidationError(
                f"{name}: value {int(arr[at])} at pixel {at} is outside 0..{'L-1' if top is None else top}"
                + ("" if n_labels is None else f" (L={int(n_labels)} labels)")
            )
    return arr.astype(np.int64, copy=False)


def check_probabilities(probs: Any, name: str = "probs") -> np.ndarray:
    """Per-pixel class probabilities ``(L, *S)`` with L ≥ 2, finite; returned as float64."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] < 2:
        raise StoreValidationError(f"{name} must have shape (L, *S) with L >= 2, got shape {arr.shape}")
    check_finite(name, arr)
    return arr
