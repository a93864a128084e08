"""What a report runs: its arguments checked, and one method object per method.

Everything here happens before any per-image work, so bad input (an unknown method, α outside
(0, 1), too few calibration images for an α, ν missing, an option no chosen method has) stops the
report at once with one :class:`~napari_conformal.errors.ConformalError`.

Nothing switches on a method's name: what the report needs to know about a method is read from its
class (:func:`method_info`): the display name and colour (``title``, ``colour``), the guarantee kind
(``risk``: ``"fnr"`` or ``"miscoverage"``), whether it is binary (it has an ``fg_class`` option),
whether it uses ν, samples members, and takes the report's K.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_conformal.core.methods.base import ConformalMethod, make_method, method_class
from napari_conformal.errors import ConformalError

__all__ = [
    "DEFAULT_FALSE_ALARM",
    "DEFAULT_N_SAMPLES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "build_methods",
    "default_diversity_alphas",
    "exact_coverage",
    "is_binary",
    "method_accepts",
    "method_info",
    "method_params",
    "resolve_n_cal",
    "takes_report_k",
]

REPORT_FORMAT = "napari-conformal-report"
#: 2: the new engine (per-split calibrations), two-sided FNR bands, conditional coverage
REPORT_VERSION = 2
#: sample counts N of the Chao1 / SEC / correlation curves (the CONSIGN paper's)
DEFAULT_N_SAMPLES = (10, 50, 100, 500, 1000)
#: per-split false-alarm rate of the acceptance bands shown in the report
DEFAULT_FALSE_ALARM = 0.01

MethodClass = type[ConformalMethod[Any, Any, Any]]


# ----------------------------------------------------------------------------------------- what a method is


def _option_names(cls: MethodClass) -> set[str]:
    return {o.name for o in cls.options}


def is_binary(cls: MethodClass) -> bool:
    """Whether a method makes one binary set of a chosen structure: it has an ``fg_class`` option."""
    return "fg_class" in _option_names(cls)


def takes_report_k(cls: MethodClass) -> bool:
    """Whether the report's ``k`` (K, the dimension of the sampled members: CONSIGN) goes to this method.

    Methods with a ``k`` option that sample members. RW-CP's ``k`` (graph neighbours) is another
    quantity; it is set per method (``params={"rwcp": {"k": 20}}``, ``-o rwcp.k=20``).
    """
    return "k" in _option_names(cls) and bool(cls.samples_members)


def exact_coverage(cls: MethodClass) -> bool:
    """Whether a split-conformal method's per-image covering values λ_i are exact and tie-free.

    Then the number of covered test images of a split has the exact Beta-Binomial law and its band
    is two-sided. Conservative methods (a search that may miss a covering member: CONSIGN) and
    methods with tied scores (whole numbers of dilations: Consema) only get the lower limit.

    The method protocol has no attribute for this yet: a class attribute ``exact_coverage`` is
    used when a method has one; otherwise the pixel-wise family (APS, RAPS, LAC, SACP, whose λ_i
    are computed exactly) is exact and every other method conservative (the safe default: a
    conservative band never raises a false alarm because of ties).
    """
    declared = getattr(cls, "exact_coverage", None)
    if declared is not None:
        return bool(declared)
    from napari_conformal.core.methods.pixelwise import PixelwiseMethod

    return issubclass(cls, PixelwiseMethod)


def method_info(method: ConformalMethod[Any, Any, Any]) -> dict[str, Any]:
    """What the page needs to know about a method, from its class (JSON types)."""
    cls = type(method)
    return {
        "title": cls.title or method.name,
        "colour": cls.colour,
        "risk": cls.risk,
        "binary": is_binary(cls),
        "fg_class": int(method.fg_class) if is_binary(cls) else None,  # type: ignore[attr-defined]
        "uses_nu": bool(cls.uses_nu),
        "samples_members": bool(cls.samples_members),
        "exact_coverage": exact_coverage(cls),
        "lambda_name": cls.lambda_name,
        "k": method.k if "k" in _option_names(cls) else None,
        "params": method.params(),
    }


# ----------------------------------------------------------------------------------------- validation


def check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    """α values in (0, 1), none twice, at least one."""
    out: list[float] = []
    for a in alphas:
        try:
            value = float(a)
        except (TypeError, ValueError):
            raise ConformalError(f"alphas must be numbers in (0, 1), got {a!r}") from None
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ConformalError(f"alphas must be numbers in (0, 1), got {a!r}")
        if value in out:
            raise ConformalError(f"alpha {value:g} is listed twice")
        out.append(value)
    if not out:
        raise ConformalError("alphas is empty: give at least one risk level")
    return tuple(out)


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    """Registered method names, none twice, at least one."""
    names = [str(m).strip() for m in methods]
    if not names or any(not m for m in names):
        raise ConformalError("methods must be a non-empty list of method names (e.g. 'crc,rwcp')")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise ConformalError(f"method {dup[0]!r} is listed twice")
    for m in names:
        method_class(m)  # raises with the list of known methods
    return tuple(names)


def check_positive_int(value: Any, name: str) -> int:
    """A positive integer (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConformalError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_n_samples(n_samples: Iterable[int]) -> tuple[int, ...]:
    """Sorted distinct positive sample counts."""
    return tuple(sorted({check_positive_int(n, "n_samples entries") for n in n_samples}))


def resolve_n_cal(n_images: int, cal_fraction: float | None = None, n_cal: int | None = None) -> int:
    """Number of calibration images per split.

    Parameters
    ----------
    n_images : int
        Images in the store.
    cal_fraction : float, optional
        Fraction in (0, 1); ``⌊cal_fraction · n_images + 1/2⌋`` images, as
        :func:`napari_conformal.io.indices.random_split` rounds it.
    n_cal : int, optional
        Explicit count (give one of the two; neither means ``cal_fraction=0.5``).

    Returns
    -------
    int
        In ``1 .. n_images − 1`` (every split keeps at least one test image).
    """
    if cal_fraction is not None and n_cal is not None:
        raise ConformalError("give either cal_fraction or n_cal, not both")
    if n_cal is None:
        frac = 0.5 if cal_fraction is None else float(cal_fraction)
        if not 0.0 < frac < 1.0:
            raise ConformalError(f"cal_fraction must lie strictly between 0 and 1, got {cal_fraction!r}")
        n_cal = math.floor(frac * n_images + 0.5)
        what = f"cal_fraction={frac:g} of {n_images} images"
    else:
        n_cal = check_positive_int(n_cal, "n_cal")
        what = f"n_cal={n_cal}"
    if not 1 <= n_cal <= n_images - 1:
        raise ConformalError(
            f"{what} leaves the calibration or the test set empty: the store has {n_images} images"
        )
    return int(n_cal)


def default_diversity_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The α closest to 0.1 (the CONSIGN paper's usual level); ties: the smaller α."""
    return (min(alphas, key=lambda a: (abs(a - 0.1), a)),)


# ----------------------------------------------------------------------------------------- method options


def method_accepts(name: str, key: str) -> bool:
    """Whether registered method ``name`` has the option ``key`` (``device`` is accepted by every method)."""
    return key == "device" or key in _option_names(method_class(name))


def method_params(methods: Sequence[str], options: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Route ``NAME=VALUE`` options to the report's methods.

    Parameters
    ----------
    methods : sequence of str
        The report's method names.
    options : iterable of (str, value)
        ``("rwcp.features", "multiscale")`` goes to that method only; ``("features", …)`` to
        every method that has a ``features`` option (an error when none does).

    Returns
    -------
    dict
        ``{method: {parameter: value}}`` for :func:`~napari_conformal.report.iter_report`'s ``params``.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in options:
        target, dot, name = key.rpartition(".")
        name = name.replace("-", "_")
        if dot:
            if target not in methods:
                raise ConformalError(f"option {key!r} names method {target!r}, which is not in the report")
            if not method_accepts(target, name):
                raise ConformalError(f"method {target!r} has no parameter {name!r}")
            out.setdefault(target, {})[name] = value
            continue
        takers = [m for m in methods if method_accepts(m, name)]
        if not takers:
            raise ConformalError(f"none of the methods {', '.join(methods)} has a parameter {name!r}")
        for m in takers:
            out.setdefault(m, {})[name] = value
    return out


def build_methods(
    names: Sequence[str],
    nu: float | None,
    k: int | None,
    params: Mapping[str, Mapping[str, Any]],
) -> dict[str, ConformalMethod[Any, Any, Any]]:
    """One method object per method (α and ν are arguments of its steps, not its state).

    ``nu`` is checked against the methods that use it; ``k`` goes to :func:`takes_report_k` methods
    unless their parameters set ``k`` themselves.
    """
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConformalError(f"parameters given for method {unknown[0]!r}, which is not in the report")
    classes = {m: method_class(m) for m in names}
    if nu is not None and not any(c.uses_nu for c in classes.values()):
        raise ConformalError("nu does not apply to any of the chosen methods")
    if k is not None and not any(takes_report_k(c) for c in classes.values()):
        raise ConformalError("k (principal components) does not apply to any of the chosen methods")
    out: dict[str, ConformalMethod[Any, Any, Any]] = {}
    for name in names:
        cls = classes[name]
        if cls.uses_nu and nu is None:
            raise ConformalError(f"method {name!r} needs nu (label-wise accuracy in (0, 1)); pass --nu")
        kwargs: dict[str, Any] = {}
        if takes_report_k(cls) and k is not None:
            kwargs["k"] = k
        kwargs.update(params.get(name, {}))
        device = kwargs.pop("device", None)
        try:
            out[name] = make_method(name, device=device, **kwargs)
        except ConformalError as exc:
            raise type(exc)(f"method {name}: {exc}") from None
    return out
