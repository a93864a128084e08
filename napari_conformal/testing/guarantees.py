"""Checks of a conformal guarantee from independent repetitions, with a stated false-alarm rate.

The statistical tests run a method on ``R`` fresh calibration/test draws of data with known truth
(:func:`run_repetitions`, the harness) and hand the outcome to one of these checks; the bands are
those of :mod:`napari_conformal.core.bands`, one per family of guarantee:

=====================================  ==========================================================
family                                 check
=====================================  ==========================================================
split CP with exact per-image λ_i      :func:`check_split_coverage` with ``strict_counts``: the
(pixel-wise APS/RAPS/LAC, SACP;        exact two-sided BetaBinomial band, its upper side on the
Consema's integer scores)              count strictly below λ̂, which keeps it exact under ties
CONSIGN (a conservative search)        :func:`check_split_coverage`, ``two_sided=False``: the
                                       exact lower band only
FNR risk control (CRC, RW-CP)          :func:`check_fnr_risk`: the two-sided betting interval
                                       of the mean test FNR against ``[α − 2/(n+1), α]``
=====================================  ==========================================================

Each check's ``false_alarm`` bounds the probability that a correct implementation fails it; a
test that makes several checks states their sum (union bound). Deliberately wrong rules (a rank
one too small, a CRC target of 1.5α) run through the same harness as ``variants`` of a method
and share its per-image work, so the suite proves that each check rejects them
(:func:`~napari_conformal.core.bands.splitcp_power` gives the exact power for tie-free scores).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_conformal.core.bands import (
    betting_mean_interval,
    crc_risk_lower_bound,
    crc_risk_tolerance,
    splitcp_coverage_band,
    splitcp_rank,
)
from napari_conformal.core.methods.base import ConformalMethod
from napari_conformal.errors import CalibrationError, ConformalError, LambdaMaxReachedError

__all__ = [
    "GuaranteeCheck",
    "Repetitions",
    "check_crc_risk",
    "check_fnr_risk",
    "check_split_coverage",
    "run_repetitions",
]


@dataclass(frozen=True)
class GuaranteeCheck:
    """Outcome of a statistical guarantee check.

    Attributes
    ----------
    passed : bool
        Whether the statistic lies inside the acceptance band.
    statistic : float
        The observed statistic (total covered count, or mean realised risk).
    band : tuple of float
        Closed acceptance interval ``(low, high)``.
    false_alarm : float
        Upper bound on the probability that a correct implementation fails.
    message : str
        One-line human-readable summary.
    interval : tuple of float, optional
        Betting checks (:func:`check_fnr_risk`): the confidence interval of the expected value; the
        check passes when it meets ``band`` (the values the guarantee allows), not when
        ``statistic`` lies in it.
    """

    passed: bool
    statistic: float
    band: tuple[float, float]
    false_alarm: float
    message: str
    interval: tuple[float, float] | None = None


def _whole_counts(values: Sequence[int] | np.ndarray, n_test: int, name: str) -> np.ndarray:
    counts = np.asarray(values)
    if counts.ndim != 1 or counts.size == 0:
        raise ConformalError(f"{name} must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        if not (np.all(np.isfinite(counts)) and np.all(counts == np.round(counts))):
            raise ConformalError(f"{name} must hold whole numbers")
        counts = counts.astype(np.int64)
    if counts.min() < 0 or counts.max() > n_test:
        raise ConformalError(f"{name} must lie in 0..n_test={n_test}")
    return counts


def check_split_coverage(
    covered_counts: Sequence[int] | np.ndarray,
    n_cal: int,
    n_test: int,
    alpha: float,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
    *,
    strict_counts: Sequence[int] | np.ndarray | None = None,
) -> GuaranteeCheck:
    """Test split-CP coverage from the covered counts of independent repetitions.

    Parameters
    ----------
    covered_counts : array_like of int, shape (R,)
        Number of covered test points (``λ_i ≤ λ̂``) in each repetition (each in 0..n_test).
    n_cal, n_test, alpha, false_alarm, bound, two_sided
        As in :func:`splitcp_coverage_band`.
    strict_counts : array_like of int, shape (R,), optional
        Number of test points with ``λ_i < λ̂`` (covered by every smaller λ) in each repetition.
        Given, the upper side of a two-sided band is checked on these counts and the lower side
        on ``covered_counts``, which keeps both tails exact when scores tie
        (:mod:`napari_conformal.core.bands`, "Ties: a sandwich"); without ties the two coincide.

    Returns
    -------
    GuaranteeCheck
        ``statistic`` is the total covered count.
    """
    counts = _whole_counts(covered_counts, n_test, "covered_counts")
    reps = counts.size
    strict = counts
    if strict_counts is not None:
        strict = _whole_counts(strict_counts, n_test, "strict_counts")
        if strict.size != reps or np.any(strict > counts):
            raise ConformalError("strict_counts must have one entry per repetition, each <= covered_counts")
    lower, upper = splitcp_coverage_band(n_cal, n_test, alpha, reps, false_alarm, bound, two_sided)
    total, total_strict = int(counts.sum()), int(strict.sum())
    passed = lower <= total and total_strict <= upper
    kind = "two-sided" if two_sided else "one-sided (lower)"
    nominal = splitcp_rank(n_cal, alpha, bound) / (n_cal + 1)
    below = f", {total_strict} strictly below lambda_hat" if strict_counts is not None else ""
    message = (
        f"{'PASS' if passed else 'FAIL'}: {total} of {reps * n_test} test points covered{below} "
        f"(rate {total / (reps * n_test):.4f}, expected {nominal:.4f}); {kind} exact band "
        f"[{lower}, {upper}] at false-alarm {false_alarm:g} over {reps} repetitions of n_cal={n_cal}"
    )
    return GuaranteeCheck(passed, float(total), (float(lower), float(upper)), float(false_alarm), message)


def check_crc_risk(
    realised_risks: Sequence[float] | np.ndarray,
    alpha: float,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
) -> GuaranteeCheck:
    """Test ``E[risk] ≤ α`` from the realised risks of independent repetitions.

    Parameters
    ----------
    realised_risks : array_like of float, shape (R,)
        Mean test loss of each repetition, each in ``[0, B]``.
    alpha, false_alarm, bound
        As in :func:`crc_risk_tolerance`.

    Returns
    -------
    GuaranteeCheck
        ``statistic`` is the mean realised risk; the band is ``[0, α + t]``.
    """
    risks = np.asarray(realised_risks, dtype=np.float64)
    if risks.ndim != 1 or risks.size == 0:
        raise ConformalError(f"realised_risks must be a non-empty 1-D array, got shape {risks.shape}")
    if not np.all(np.isfinite(risks)):
        raise ConformalError("realised_risks contain NaN or inf")
    if risks.min() < 0 or risks.max() > float(bound):
        raise ConformalError(f"realised_risks must lie in [0, B] = [0, {bound}]")
    t = crc_risk_tolerance(alpha, risks.size, false_alarm, bound)
    mean = float(risks.mean())
    high = float(alpha) + t
    passed = mean <= high
    message = (
        f"{'PASS' if passed else 'FAIL'}: mean realised risk {mean:.4f} over {risks.size} repetitions "
        f"vs alpha={float(alpha):g} + tolerance {t:.4f} (Chernoff-Hoeffding, false-alarm {false_alarm:g})"
    )
    return GuaranteeCheck(passed, mean, (0.0, high), float(false_alarm), message)


def check_fnr_risk(
    realised_risks: Sequence[float] | np.ndarray,
    alpha: float,
    n_cal: int,
    false_alarm: float = 1e-3,
    bound: float = 1.0,
    two_sided: bool = True,
) -> GuaranteeCheck:
    """Test ``α − 2B/(n+1) ≤ E[risk] ≤ α`` from the realised risks of independent repetitions.

    Each repetition calibrates on ``n_cal`` fresh images and records the mean loss ``X_r`` of its
    test images (the mean FNR), so ``E X_r ≤ α`` (CRC's guarantee) and, for continuous scores,
    ``E X_r ≥ α − 2B/(n+1)`` (its tightness bound). The check computes the betting confidence
    interval ``[L, U]`` of the mean (:func:`~napari_conformal.core.bands.betting_mean_interval`,
    exact for any law on ``[0, B]``) and passes when it meets ``[α − 2B/(n+1), α]``: a correct
    implementation fails with probability at most ``false_alarm`` (``false_alarm/2`` per side).
    Unlike the Chernoff–Hoeffding tolerance of :func:`check_crc_risk`, whose worst case is a coin
    flip per repetition, the interval's width follows the actual spread of the ``X_r``.

    Parameters
    ----------
    realised_risks : array_like of float, shape (R,)
        Mean test loss of each repetition, each in ``[0, B]``.
    alpha : float
        The risk level α.
    n_cal : int
        Calibration images per repetition (sets the lower bound).
    false_alarm : float
        Probability bound of a false rejection.
    bound : float
        B.
    two_sided : bool
        False: only ``E[risk] ≤ α`` is tested, with the full ``false_alarm`` (for losses with
        jumps, where the lower bound does not hold).

    Returns
    -------
    GuaranteeCheck
        ``statistic`` the mean realised risk, ``band`` the allowed interval of ``E[risk]``,
        ``interval`` the betting confidence interval.
    """
    risks = np.asarray(realised_risks, dtype=np.float64)
    if risks.ndim != 1 or risks.size == 0:
        raise ConformalError(f"realised_risks must be a non-empty 1-D array, got shape {risks.shape}")
    if not np.all(np.isfinite(risks)):
        raise ConformalError("realised_risks contain NaN or inf")
    if risks.min() < 0 or risks.max() > float(bound):
        raise ConformalError(f"realised_risks must lie in [0, B] = [0, {bound}]")
    a = float(alpha)
    if not (0 < a < float(bound)):
        raise ConformalError(f"alpha must lie in (0, B) = (0, {bound}), got {alpha!r}")
    low_bound = max(crc_risk_lower_bound(a, n_cal, bound), 0.0) if two_sided else 0.0
    lo, hi = betting_mean_interval(risks, false_alarm, bound, two_sided)
    too_high, too_low = lo > a, hi < low_bound
    passed = not (too_high or too_low)
    mean = float(risks.mean())
    verdict = (
        "PASS"
        if passed
        else ("FAIL (risk above alpha)" if too_high else "FAIL (risk below the CRC lower bound)")
    )
    sides = f"[{low_bound:.4f}, {a:g}]" if two_sided else f"[0, {a:g}]"
    message = (
        f"{verdict}: mean realised risk {mean:.4f} over {risks.size} repetitions of n_cal={n_cal}; "
        f"betting interval of E[risk] [{lo:.4f}, {hi:.4f}] vs allowed {sides} "
        f"({'two' if two_sided else 'one'}-sided, false-alarm {false_alarm:g})"
    )
    return GuaranteeCheck(passed, mean, (low_bound, a), float(false_alarm), message, (lo, hi))


# --------------------------------------------------------------------------- the harness


def _drain(gen: Generator[Any, None, Any]) -> Any:
    """Run a progress generator to completion and return its value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


Level = tuple[float, float | None]
Key = tuple[str, float, float | None]


@dataclass(frozen=True)
class Repetitions:
    """What :func:`run_repetitions` observed, per (method or variant, α, ν).

    Attributes
    ----------
    n_cal, n_test, reps : int
        The design.
    risk : dict of str to str
        Each name's :attr:`~napari_conformal.core.methods.base.ConformalMethod.risk`.
    lambda_hats : dict
        ``(name, α, ν) →`` λ̂ of each repetition, shape (R,) (inf where no λ up to the method's
        λ_max satisfies the rule: the trivial set).
    realised : dict
        ``(name, α, ν) →`` :meth:`~napari_conformal.core.methods.base.ConformalMethod.realised` of
        each test image at λ̂, shape (R, n_test): 0/1 coverage, or ``1 − FNR``.
    strict : dict
        The same just below λ̂ (0/1 methods, when ``strict=True``): whether ``λ_i < λ̂``.
    """

    n_cal: int
    n_test: int
    reps: int
    risk: dict[str, str]
    lambda_hats: dict[Key, np.ndarray]
    realised: dict[Key, np.ndarray]
    strict: dict[Key, np.ndarray] = field(default_factory=dict)

    def _get(self, table: dict[Key, np.ndarray], name: str, alpha: float, nu: float | None) -> np.ndarray:
        try:
            return table[(name, float(alpha), None if nu is None else float(nu))]
        except KeyError:
            raise ConformalError(f"no outcome for {name!r} at alpha={alpha}, nu={nu}") from None

    def _defined(self, table: dict[Key, np.ndarray], name: str, alpha: float, nu: float | None) -> np.ndarray:
        values = self._get(table, name, alpha, nu)
        if np.isnan(values).any():
            raise ConformalError(
                f"{name!r}: some test images have an undefined realised value (e.g. no foreground); "
                "draw only images the method can be tested on"
            )
        return values

    def covered_counts(self, name: str, alpha: float, nu: float | None = None) -> np.ndarray:
        """Covered test images per repetition, shape (R,) (0/1 methods)."""
        return np.rint(self._defined(self.realised, name, alpha, nu).sum(axis=1)).astype(np.int64)

    def strict_counts(self, name: str, alpha: float, nu: float | None = None) -> np.ndarray:
        """Test images with ``λ_i < λ̂`` per repetition, shape (R,) (needs ``strict=True``)."""
        return np.rint(self._defined(self.strict, name, alpha, nu).sum(axis=1)).astype(np.int64)

    def mean_risks(self, name: str, alpha: float, nu: float | None = None) -> np.ndarray:
        """Mean test FNR (``1 −`` mean realised) per repetition, shape (R,) (FNR methods)."""
        return np.clip(1.0 - self._defined(self.realised, name, alpha, nu).mean(axis=1), 0.0, 1.0)

    def check(
        self,
        name: str,
        alpha: float,
        nu: float | None = None,
        *,
        false_alarm: float = 1e-3,
        two_sided: bool = True,
    ) -> GuaranteeCheck:
        """The family's check of one outcome.

        FNR methods: :func:`check_fnr_risk`. 0/1 methods: :func:`check_split_coverage`, two-sided
        on the sandwich of covered and strict counts when the strict counts were recorded (else
        with ``two_sided`` as given: pass False for a conservative method such as CONSIGN).
        """
        if self.risk[name] == "fnr":
            return check_fnr_risk(
                self.mean_risks(name, alpha, nu), alpha, self.n_cal, false_alarm, two_sided=two_sided
            )
        key = (name, float(alpha), None if nu is None else float(nu))
        strict = self.strict_counts(name, alpha, nu) if two_sided and key in self.strict else None
        if two_sided and strict is None:
            raise ConformalError(
                f"{name!r}: a two-sided coverage check needs the strict counts (run_repetitions(strict=True)); "
                "pass two_sided=False for the lower band alone"
            )
        return check_split_coverage(
            self.covered_counts(name, alpha, nu),
            self.n_cal,
            self.n_test,
            alpha,
            false_alarm,
            two_sided=two_sided,
            strict_counts=strict,
        )


def _test_curve(method: Any, prepared: Any, label: np.ndarray, alpha: float, nu: float | None) -> Any:
    try:
        return method.curve(prepared, label, alpha=alpha, nu=nu)
    except CalibrationError:  # e.g. no ground-truth foreground: the realised value is undefined
        return None


def _trivial(lam: float, rule: Any) -> float | None:
    """The realised value every test image has at ``lam`` without looking (None: look)."""
    if math.isinf(lam):
        return 1.0  # the trivial set covers everything
    if lam < 0 and rule.risk != "fnr":
        return 0.0  # every per-image threshold is >= 0
    return None


def _realised(rule: Any, curves: Sequence[Any], lam: float, alpha: float, nu: float | None) -> np.ndarray:
    fixed = _trivial(lam, rule)
    out = np.empty(len(curves))
    for j, c in enumerate(curves):
        if c is None:
            out[j] = np.nan
        elif fixed is not None:
            out[j] = fixed
        else:
            out[j] = rule.realised(c, lam, alpha=alpha, nu=nu)
    return out


def _batched_realised(
    rule: Any, test: Sequence[Any], labels: Sequence[np.ndarray], lam: float, alpha: float, nu: float | None
) -> np.ndarray:
    fixed = _trivial(lam, rule)
    if fixed is not None:
        return np.full(len(test), fixed)
    return np.asarray(_drain(rule.iter_realised(test, labels, lam, alpha=alpha, nu=nu)), dtype=np.float64)


def _just_below(lam: float, is_count: bool) -> float:
    """The largest λ below ``lam`` on the method's scale (a whole step for dilation counts)."""
    if math.isinf(lam):
        return sys.float_info.max
    return lam - 1.0 if is_count else float(np.nextafter(lam, -np.inf))


def run_repetitions(
    methods: Mapping[str, Any],
    draw: Callable[[int], tuple[np.ndarray | None, np.ndarray, np.ndarray]],
    *,
    n_cal: int,
    n_test: int,
    reps: int,
    levels: Sequence[Level],
    variants: Mapping[str, tuple[str, Any]] | None = None,
    strict: bool = False,
) -> Repetitions:
    """Calibrate and test methods on ``reps`` independent draws of data: the guarantee tests' harness.

    Repetition r calls ``draw(r)`` for fresh data, prepares every image once per method, takes
    the first ``n_cal`` images as the calibration set and the next ``n_test`` as test images, and
    for every level (α, ν): computes the calibration curves (``iter_curves``, extending the curves
    of the previous level when they do not answer this one), λ̂ (``lambda_hat``) and the realised
    value of every test image at λ̂ (:meth:`~napari_conformal.core.methods.base.ConformalMethod.realised`
    on the test image's curve, or the method's own ``iter_realised`` when it overrides it, as
    CONSIGN's batched search does). A λ̂ that does not exist (``LambdaMaxReachedError``: too many
    calibration images uncovered at λ_max) is the trivial set, λ̂ = ∞, which covers every test
    image: the order statistic of per-image thresholds in ``[0, ∞]``.

    Parameters
    ----------
    methods : mapping of str to ConformalMethod
        The methods under test, by name.
    draw : callable
        ``draw(r) -> (images or None, samples, labels)`` with at least ``n_cal + n_test`` images,
        a fresh independent draw for each r (e.g. a generator seeded with ``seed0 + r``).
    n_cal, n_test, reps : int
        Calibration and test images per repetition, and the number of repetitions.
    levels : sequence of (alpha, nu)
        ν is None for methods without a label-wise accuracy.
    variants : mapping of str to (str, ConformalMethod), optional
        ``name → (base, method)``: a method that differs from ``methods[base]`` only in its
        reduction (``lambda_hat``, e.g. a deliberately wrong order statistic or target). It reuses
        the base's prepared images and calibration curves and gets its own λ̂ and realised values.
    strict : bool
        Also record, for 0/1 methods, whether each test image is covered just below λ̂ (for the
        two-sided band under ties, :func:`check_split_coverage`'s ``strict_counts``).

    Returns
    -------
    Repetitions
    """
    variants = dict(variants or {})
    for name, (base, _) in variants.items():
        if base not in methods:
            raise ConformalError(f"variant {name!r} names an unknown base method {base!r}")
        if name in methods:
            raise ConformalError(f"variant {name!r} has the name of a method")
    levels = [(float(a), None if v is None else float(v)) for a, v in levels]
    if not levels:
        raise ConformalError("levels must name at least one (alpha, nu)")
    every = {**{name: (name, m) for name, m in methods.items()}, **variants}
    lambda_hats: dict[Key, list[float]] = {}
    realised: dict[Key, list[np.ndarray]] = {}
    below: dict[Key, list[np.ndarray]] = {}
    n = n_cal + n_test
    for r in range(reps):
        images, samples, labels = draw(r)
        if len(samples) < n or len(labels) < n:
            raise ConformalError(f"draw({r}) returned {len(samples)} images, need n_cal + n_test = {n}")
        cal_labels, test_labels = list(labels[:n_cal]), list(labels[n_cal:n])
        for base, method in methods.items():
            prepared = [method.prepare(None if images is None else images[i], samples[i]) for i in range(n)]
            cal, test = prepared[:n_cal], prepared[n_cal:n]
            curves = test_curves = None
            for alpha, nu in levels:
                curves = _drain(method.iter_curves(cal, cal_labels, alpha=alpha, nu=nu, previous=curves))
                for name, (of, rule) in every.items():
                    if of != base:
                        continue
                    key = (name, alpha, nu)
                    try:
                        lam = float(rule.lambda_hat(curves, alpha=alpha, nu=nu))
                    except LambdaMaxReachedError:
                        lam = math.inf
                    lambda_hats.setdefault(key, []).append(lam)
                    points = [lam] + (
                        [_just_below(lam, rule.lambda_is_count)] if strict and rule.risk != "fnr" else []
                    )
                    if type(rule).iter_realised is not ConformalMethod.iter_realised:  # a batched search
                        values = [_batched_realised(rule, test, test_labels, p, alpha, nu) for p in points]
                    else:
                        if test_curves is None or not method.answers(test_curves, alpha=alpha, nu=nu):
                            test_curves = [
                                _test_curve(method, p, y, alpha, nu)
                                for p, y in zip(test, test_labels, strict=True)
                            ]
                        values = [_realised(rule, test_curves, p, alpha, nu) for p in points]
                    realised.setdefault(key, []).append(values[0])
                    if len(values) > 1:
                        below.setdefault(key, []).append(values[1])
    risk = {name: str(rule.risk) for name, (_, rule) in every.items()}
    return Repetitions(
        n_cal=n_cal,
        n_test=n_test,
        reps=reps,
        risk=risk,
        lambda_hats={k: np.asarray(v) for k, v in lambda_hats.items()},
        realised={k: np.stack(v) for k, v in realised.items()},
        strict={k: np.stack(v) for k, v in below.items()},
    )
