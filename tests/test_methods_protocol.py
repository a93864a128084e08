"""The method protocol (napari_conformal.core.methods.base) that every registered method follows.

The option spec (one parse per kind, messages naming the method and the option), what a caller
reads from a method without switching on its name, the registry's errors, α and ν as arguments
(Consema's τ follows α unless fixed; CONSIGN's box quantile level), RW-CP with a user's extractor,
and ``realised`` against the conformal rule on the calibration images of every method.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from _method_data import BINARY, CAL, LEVELS, N_CAL, OPTIONS, arrays, kind, make_stores

from napari_conformal import api
from napari_conformal.core.calibration import Calibration
from napari_conformal.core.methods.base import (
    ConformalMethod,
    Option,
    available_methods,
    make_method,
    method_class,
)
from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.core.rwcp.features import FeatureExtractor, MultiscaleExtractor
from napari_conformal.errors import CalibrationFileError, ParameterError

METHODS = sorted(OPTIONS)
LAYERS = {"contour", "diffusion", "set_size", "member", "regions", "directions", "members"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


def _calibrate(data, name, alpha=None, nu=None, **options):
    a, v = LEVELS[name]
    opts = {**OPTIONS[name], **options}
    return api.calibrate(
        data,
        name,
        alpha=a if alpha is None else alpha,
        nu=v if nu is None else nu,
        cal_indices=CAL,
        device="cpu",
        **opts,
    )


class _Calibrations(dict):
    """Each method calibrated on first use (one failing method fails its own tests only)."""

    def __init__(self, stores):
        super().__init__()
        self.stores = stores

    def __missing__(self, name):
        self[name] = calib = _calibrate(self.stores[kind(name)], name)
        return calib


@pytest.fixture(scope="module")
def calibrations(stores):
    return _Calibrations(stores)


# --------------------------------------------------------------------------- the Option spec


def test_option_int():
    opt = Option("k", "int", 20, "neighbours", minimum=1, maximum=50)
    assert opt.parse(7, "rwcp") == 7 and opt.parse("7", "rwcp") == 7 and opt.parse(7.0, "rwcp") == 7
    assert opt.parse(np.int64(7), "rwcp") == 7 and isinstance(opt.parse(np.int64(7)), int)
    for bad, what in ((True, "must be an integer, got True"), ("x", "must be an integer, got 'x'"),
                      (7.5, "must be an integer, got 7.5"), ([7], "must be an integer, got \\[7\\]"),
                      (0, "must be >= 1 and <= 50, got 0"), (51, "must be >= 1 and <= 50, got 51"),
                      ("0", "must be >= 1 and <= 50, got 0")):  # fmt: skip
        with pytest.raises(ParameterError, match=rf"^rwcp option k {what}$"):
            opt.parse(bad, "rwcp")
    with pytest.raises(ParameterError, match=r"^option k must be an integer, got 'x'$"):  # no method named
        opt.parse("x")


def test_option_ints():
    opt = Option("size", "ints", None, "box side(s)", minimum=1, optional=True)
    assert opt.parse("3,7,7", "sacp") == [3, 7, 7] and opt.parse(" 3 , 5 ", "sacp") == [3, 5]
    assert opt.parse("5", "sacp") == 5 and opt.parse([5], "sacp") == 5 and opt.parse((1, 7), "sacp") == [1, 7]
    assert opt.parse(3, "sacp") == 3 and opt.parse(None, "sacp") is None
    with pytest.raises(
        ParameterError, match=r"^sacp option size must be an integer or a list of integers, got \[\]$"
    ):
        opt.parse([], "sacp")
    with pytest.raises(ParameterError, match=r"^sacp option size must be an integer, got 'x'$"):
        opt.parse("3,x", "sacp")
    with pytest.raises(ParameterError, match=r"^sacp option size must be >= 1, got 0$"):
        opt.parse("3,0", "sacp")


def test_option_float():
    opt = Option(
        "tau", "float", None, "ratio", minimum=0.0, maximum=1.0, exclusive_minimum=True, optional=True
    )
    assert opt.parse(0.5, "consema") == 0.5 and opt.parse("0.25", "consema") == 0.25
    assert opt.parse(1, "consema") == 1.0 and isinstance(opt.parse(1, "consema"), float)
    assert opt.parse(np.float32(0.5), "consema") == 0.5 and opt.parse(None, "consema") is None
    for bad, what in ((0.0, "must be > 0 and <= 1, got 0"), (1.5, "must be > 0 and <= 1, got 1.5"),
                      (float("nan"), "must be a finite number, got nan"), ("inf", "must be a finite number, got inf"),
                      ("x", "must be a number, got 'x'"), (True, "must be a number, got True"),
                      ([0.5], "must be a number, got \\[0.5\\]")):  # fmt: skip
        with pytest.raises(ParameterError, match=rf"^consema option tau {what}$"):
            opt.parse(bad, "consema")
    closed = Option("w", "float", 0.0, "", minimum=0.0)
    assert closed.parse(0.0, "m") == 0.0
    with pytest.raises(ParameterError, match=r"^m option w must be >= 0, got -1$"):
        closed.parse(-1, "m")


def test_option_bool():
    opt = Option("include_self", "bool", False, "self-loops")
    for value, want in ((True, True), (False, False), (np.bool_(True), True), ("true", True), ("False", False),
                        ("yes", True), ("no", False), ("1", True), ("0", False)):  # fmt: skip
        assert opt.parse(value, "rwcp") is want
    for bad in (1, 0, "maybe", 0.0):
        with pytest.raises(
            ParameterError,
            match=rf"^rwcp option include_self must be true or false, got {re.escape(repr(bad))}$",
        ):
            opt.parse(bad, "rwcp")


def test_option_choice_text_json():
    choice = Option("variant", "choice", "consign", "", choices=("consign", "liu"))
    assert choice.parse("liu", "sacp") == "liu"
    for bad in ("LIU", 3, "bereska"):
        with pytest.raises(
            ParameterError,
            match=rf"^sacp option variant must be one of consign, liu, got {re.escape(repr(bad))}$",
        ):
            choice.parse(bad, "sacp")
    text = Option("model_dir", "text", None, "", optional=True)
    assert text.parse("/models/dino", "rwcp") == "/models/dino" and text.parse(None, "rwcp") is None
    with pytest.raises(ParameterError, match=r"^rwcp option model_dir must be text, got 3$"):
        text.parse(3, "rwcp")
    js = Option("search", "json", None, "", optional=True)
    assert js.parse('{"starts": 4}', "consign") == {"starts": 4}
    given = {"starts": 4}
    parsed = js.parse(given, "consign")
    assert parsed == given and parsed is not given  # a copy
    for bad in ("[1, 2]", "not json", 3, [("a", 1)]):
        with pytest.raises(ParameterError, match=r"^consign option search must be a JSON object, got"):
            js.parse(bad, "consign")


def test_option_none_default_and_required():
    required = Option("k", "int", 5, "")
    with pytest.raises(ParameterError, match=r"^consign option k needs a value \(default 5\)$"):
        required.parse(None, "consign")
    assert Option("q", "float", None, "").parse(None, "m") is None  # an automatic default
    assert Option("q", "float", 0.1, "", optional=True).parse(None, "m") is None


def test_option_flags_labels_and_kinds():
    assert Option("rw_beta", "float", 50.0, "").cli_flag == "--rw-beta"
    assert Option("n_step", "int", 10, "", flag="steps").cli_flag == "--steps"
    assert Option("k", "int", 5, "", label="components K").display == "components K"
    assert Option("k", "int", 5, "").display == "k"
    with pytest.raises(ValueError, match=r"option 'k': kind must be one of"):
        Option("k", "integer", 5, "")


# --------------------------------------------------------------------------- what every method declares


def test_registry_and_unknown_methods():
    assert (
        available_methods()
        == METHODS
        == sorted(["aps", "consema", "consign", "crc", "lac", "raps", "rwcp", "sacp"])
    )
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, ConformalMethod) and cls.name == name
        assert type(make_method(name, **OPTIONS[name])) is cls
    for call in (lambda: make_method("nope"), lambda: method_class("nope")):
        with pytest.raises(
            ParameterError,
            match=r"^unknown method 'nope'; choose one of aps, consema, consign, crc, lac, raps, rwcp, sacp$",
        ):
            call()


@pytest.mark.parametrize("name", METHODS)
def test_method_declares_what_callers_read(name):
    cls = method_class(name)
    m = make_method(name, device="cpu", **OPTIONS[name])  # device: accepted by every method
    assert isinstance(cls.title, str) and cls.title.strip()
    assert re.fullmatch(r"#[0-9a-f]{6}", cls.colour), cls.colour
    assert cls.lambda_name and cls.lambda_unit
    assert cls.layers and set(cls.layers) <= LAYERS
    assert cls.risk in ("miscoverage", "fnr") and (cls.risk == "fnr") == (name in ("crc", "rwcp"))
    assert cls.uses_nu == (name not in BINARY)
    assert isinstance(cls.options, tuple) and all(isinstance(o, Option) for o in cls.options)
    names = [o.name for o in cls.options]
    assert len(set(names)) == len(names) and len({o.cli_flag for o in cls.options}) == len(names)
    for opt in cls.options:
        assert opt.help and opt.parse(opt.default, name) == opt.default  # every default is valid
        assert hasattr(m, opt.name)
    # params: JSON values that rebuild the method
    params = json.loads(json.dumps(m.params()))
    assert set(params) == set(names)
    assert make_method(name, **params).params() == m.params()
    assert type(m).__name__ in repr(m)
    # α and ν are arguments, never options
    assert "alpha" not in names and "nu" not in names


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(("alpha", "nu"), [(0.2, 0.7), (0.125, 0.9), (0.05, 0.55)])
def test_guarantee_in_words_names_the_percentages(name, alpha, nu):
    m = make_method(name, **OPTIONS[name])
    text = m.guarantee(alpha, nu if m.uses_nu else None)
    assert text.endswith(".") and "\n" not in text
    pct = lambda x: f"{x * 100:.4g} %"  # noqa: E731
    if m.risk == "fnr":
        assert f"at most {pct(alpha)}" in text
    else:
        assert f"With probability ≥ {pct(1 - alpha)}" in text
    if m.uses_nu:
        assert f"above {pct(nu)}" in text
        with pytest.raises(ParameterError, match=r"^nu \(label-wise accuracy"):
            m.guarantee(alpha, None)
    else:
        with pytest.raises(ParameterError, match=rf"^nu does not apply to method '{name}'"):
            m.check_levels(alpha, nu)
    with pytest.raises(ParameterError, match=r"^alpha must lie in \(0, 1\)"):
        m.guarantee(1.0, nu if m.uses_nu else None)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_names_the_known_ones(name):
    known = ", ".join(o.name for o in method_class(name).options) or "none"
    with pytest.raises(
        ParameterError, match=rf"^method '{name}' has no option 'bogus' \(its options: {re.escape(known)}\)$"
    ):
        make_method(name, bogus=1)
    with pytest.raises(ParameterError, match=rf"^method '{name}' has no option 'alpha'"):
        make_method(name, alpha=0.1)


def test_bad_option_values_name_method_and_option():
    cases = [
        ("rwcp", {"k": "x"}, r"^rwcp option k must be an integer, got 'x'$"),
        (
            "rwcp",
            {"include_self": "perhaps"},
            r"^rwcp option include_self must be true or false, got 'perhaps'$",
        ),
        (
            "consema",
            {"footprint": "disk"},
            r"^consema option footprint must be one of cross, square, got 'disk'$",
        ),
        (
            "consign",
            {"quantile_level": 0.7},
            r"^consign option quantile_level must be > 0 and <= 0.5, got 0.7$",
        ),
        ("consign", {"search": "[1]"}, r"^consign option search must be a JSON object, got \[1\]$"),
        ("raps", {"reg_weight": "heavy"}, r"^raps option reg_weight must be a number, got 'heavy'$"),
        ("aps", {"seed": -1}, r"^aps option seed must be >= 0, got -1$"),
        ("crc", {"fg_class": 1.5}, r"^crc option fg_class must be an integer, got 1.5$"),
    ]
    for name, options, message in cases:
        with pytest.raises(ParameterError, match=message):
            make_method(name, **options)


# --------------------------------------------------------------------------- levels are arguments


def test_consema_tau_follows_alpha_unless_fixed(stores, calibrations):
    data = stores["binary"]
    free = calibrations["consema"]  # τ unset, α = 0.2
    assert free.params["tau"] is None
    for alpha in (0.2, 0.3, 0.5):
        tau = float(1 - Fraction(str(alpha)))
        fixed_here = _calibrate(data, "consema", alpha=alpha, tau=tau)
        assert free.lambda_at(alpha) == fixed_here.lambda_hat  # unset τ is 1 − α at every α
        assert f"covers at least {tau * 100:.4g} %" in free.guarantee(alpha)
    fixed = _calibrate(data, "consema", tau=0.8)
    assert fixed.lambda_hat == free.lambda_hat  # at α = 0.2 both have τ = 0.8
    assert fixed.guarantee(0.5) == "With probability ≥ 50 %, the set covers at least 80 % of the structure."
    assert free.guarantee(0.5) == "With probability ≥ 50 %, the set covers at least 50 % of the structure."
    # a fixed τ stays at 0.8 when α moves: the rank moves, the scores do not
    m = fixed.method_object
    scores = sorted(c.score(Fraction(4, 5)) for c in fixed.curves)
    for alpha in (0.3, 0.5):
        rank = math.ceil((N_CAL + 1) * (1 - Fraction(str(alpha))))
        assert fixed.lambda_at(alpha) == scores[rank - 1] == m.lambda_hat(fixed.curves, alpha=alpha)
    assert fixed.lambda_at(0.5) != free.lambda_at(0.5)  # and here that matters


def test_one_method_object_answers_every_level(calibrations):
    """λ̂ at (α, ν) depends only on the arguments: the same object, called in any order, agrees."""
    for name in ("crc", "aps", "consema"):
        calib = calibrations[name]
        m, curves = calib.method_object, calib.curves
        levels = [(0.2, 0.7), (0.5, 0.6), (0.3, 0.8), (0.2, 0.7)]
        got = [m.lambda_hat(curves, alpha=a, nu=v if m.uses_nu else None) for a, v in levels]
        assert got[0] == got[-1] == calib.lambda_hat
        fresh = make_method(name, **calib.params)
        assert got == [fresh.lambda_hat(curves, alpha=a, nu=v if m.uses_nu else None) for a, v in levels]


# --------------------------------------------------------------------------- RW-CP with a user's extractor


class _Intensity(FeatureExtractor):
    """A user's own extractor: 2×2 block means of the intensity and its square, and a constant."""

    name = "intensity-blocks"

    def _extract(self, image, device, progress, should_stop):
        y, x = image.shape
        blocks = image[: y - y % 2, : x - x % 2].reshape(y // 2, 2, x // 2, 2).mean(axis=(1, 3))
        return np.stack([blocks, blocks**2, np.ones_like(blocks)])


def test_rwcp_accepts_a_user_extractor_object(stores):
    data = stores["binary"]
    rw = {k: v for k, v in OPTIONS["rwcp"].items() if k not in ("features", "grid_stride")}
    # a built-in extractor object: the same calibration as the named one, and rebuildable from JSON
    obj = RWCPMethod(extractor=MultiscaleExtractor(grid_stride=2), device="cpu", **rw)
    by_object = api.calibrate(data, obj, alpha=0.2, cal_indices=CAL)
    by_name = _calibrate(data, "rwcp")
    assert by_object.lambda_hat == by_name.lambda_hat and by_object.params == by_name.params
    assert [c.tobytes() for c in by_object.curves] == [c.tobytes() for c in by_name.curves]
    assert Calibration.from_json(by_object.to_json()).lambda_hat == by_name.lambda_hat
    # a user's own extractor class: RW-CP on its graph, λ̂ exact on its diffused maps
    user = RWCPMethod(extractor=_Intensity(), device="cpu", **rw)
    assert user.params()["features"] == "intensity-blocks"
    calib = api.calibrate(data, user, alpha=0.2, cal_indices=CAL)
    images, samples, labels = arrays("binary")
    prepared = [user.prepare(images[i], samples[i]) for i in CAL]
    assert prepared[0].extras["grid_shape"] == (8, 8)
    curves = [user.curve(p, labels[i]) for p, i in zip(prepared, CAL, strict=True)]
    assert calib.lambda_hat == user.lambda_hat(curves, alpha=0.2)
    assert calib.lambda_hat != by_name.lambda_hat  # other features, another graph
    # recorded by name only: such a calibration cannot be rebuilt from its file (and says so)
    with pytest.raises(
        CalibrationFileError,
        match=r"params do not rebuild method 'rwcp': rwcp option features must be one of",
    ):
        Calibration.from_json(calib.to_json())
    # a plain function works too
    fn = RWCPMethod(extractor=lambda im: _Intensity()._extract(im, None, None, None), device="cpu", **rw)
    assert api.calibrate(data, fn, alpha=0.2, cal_indices=CAL).lambda_hat == calib.lambda_hat
    with pytest.raises(ParameterError, match=r"options \['k'\] cannot be applied to a method instance"):
        api.calibrate(data, user, alpha=0.2, cal_indices=CAL, k=3)


# --------------------------------------------------------------------------- realised against the rule


def _below(lam: float) -> float:
    return float(np.nextafter(lam, -np.inf))


@pytest.mark.parametrize("name", METHODS)
def test_realised_obeys_the_conformal_rule_on_the_calibration_images(calibrations, name):
    """For the 0/1 methods at most ⌊(n+1)α − 1⌋ calibration images are not covered at λ̂ and, just
    below λ̂, more are (λ̂ is the order statistic, not merely a valid threshold). For CRC and RW-CP the
    exact finite-sample rule Σ_i FNR_i(λ̂) ≤ (n+1)α − 1 holds, and fails just below λ̂."""
    calib = calibrations[name]
    m, curves, n = calib.method_object, calib.curves, calib.n
    levels = [(calib.alpha, calib.nu)]
    if name != "consign":  # CONSIGN's curves answer one box quantile level (see test_calibration)
        levels.append((0.3, 0.6 if m.uses_nu else None))
    for alpha, nu in levels:
        lam = calib.lambda_at(alpha, nu)
        budget = (n + 1) * Fraction(str(alpha)) - 1
        if m.risk == "fnr":

            def misses(at: float, alpha: float = alpha, nu: float | None = nu) -> Fraction:
                total = Fraction(0)
                for c in curves:
                    r = m.realised(c, at, alpha=alpha, nu=nu)
                    total += 1 - Fraction(r).limit_denominator(c.size)  # exactly count/|Y_i|
                    assert Fraction(r).limit_denominator(c.size) == Fraction(
                        int(np.count_nonzero(c <= at)), c.size
                    )
                return total

            assert misses(lam) <= budget
            if lam > 0:
                assert misses(_below(lam)) > budget
        else:
            allowed = math.floor(budget)
            realised = [m.realised(c, lam, alpha=alpha, nu=nu) for c in curves]
            assert set(realised) <= {0.0, 1.0}
            assert realised.count(0.0) <= allowed
            if lam > 0:
                below = [m.realised(c, _below(lam), alpha=alpha, nu=nu) for c in curves]
                assert below.count(0.0) > allowed
        # evaluate agrees with realised on calibration images (the event the guarantee is about)
        if name != "consign":  # CONSIGN's per-image search may differ from the batched one by rounding
            images, samples, labels = arrays(kind(name))
            for i in CAL[:3]:
                p = m.prepare(images[i], samples[i])
                out = m.evaluate(p, labels[i], lam, alpha=alpha, nu=nu)
                key = "coverage" if m.risk == "fnr" else "covered"
                assert out[key] == pytest.approx(m.realised(curves[i], lam, alpha=alpha, nu=nu), abs=1e-12)


def test_too_small_a_calibration_set_is_refused_before_any_per_image_work(stores):
    """InsufficientCalibrationError names n, α and the smallest α, and comes before reading an image."""
    from napari_conformal.errors import InsufficientCalibrationError

    steps: list[int] = []
    for name in METHODS:
        nu = LEVELS[name][1]
        with pytest.raises(
            InsufficientCalibrationError, match=r"alpha = 0.1: n = 5, .* = 9; .*1/\(n\+1\) = 0\.1667"
        ):
            api.calibrate(
                stores[kind(name)], name, alpha=0.1, nu=nu, cal_indices=range(5), device="cpu",
                progress=lambda d, t: steps.append(d), **OPTIONS[name],
            )  # fmt: skip
        assert steps == []  # no image was read or prepared
