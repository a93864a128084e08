"""The shape every conformal method shares, and the registry of methods.

A method is a handful of steps over three types of its own — a prepared image ``P``, a per-image
calibration curve ``C`` and the set of one image ``S``::

    prepared = method.prepare(image, samples)                    # expensive, label-free, per image
    curve    = method.curve(prepared, label, alpha=α)            # per-image calibration statistic
    curves   = method.iter_curves(prepared_list, labels, …)      # the same for a calibration set
    lam      = method.lambda_hat(curves, alpha=α, nu=ν)          # the conformal reduction (cheap)
    the_set  = method.predict(prepared, lam, alpha=α, nu=ν)      # the set of one image
    metrics  = method.evaluate(prepared, label, lam, alpha=α, nu=ν, …)

α and ν are arguments of the steps, never constructor state: a method object holds only the
hyper-parameters declared in its :attr:`~ConformalMethod.options`, so one object answers every
level a slider visits. Two levels enter before the reduction, and each method says how:

* CONSIGN's box uses the quantile level q = α/2 unless ``quantile_level`` fixes it, so its curves
  belong to one q and another α needs curves of its own (:meth:`ConformalMethod.answers` tells);
* Consema's coverage ratio τ is ``1 − α`` unless ``tau`` fixes it; its curves keep every pixel's
  dilation distance, so any τ (and α) is a re-reduction.

Everything a caller needs to know about a method without switching on its name is a class
attribute or a hook: the guarantee in words (:meth:`~ConformalMethod.guarantee`), λ's name and unit,
whether members can be sampled, which layers it draws, and the options spec from which the command
line's flags and the dock's inputs are generated (:class:`Option`).

A method may choose some of its hyper-parameters on part of the calibration images before λ̂
(:meth:`~ConformalMethod.tuning_positions`, :meth:`~ConformalMethod.iter_tune`; RW-CP's
``tune="dice"``): the caller then computes λ̂ on the other images only, with the method the tuning
returned, and records both parts.

``iter_curves`` is the batch hook: by default one :meth:`~ConformalMethod.curve` per image, and
CONSIGN overrides it with its batched search, so every caller (command line, API, dock, report,
dask) takes the same fast path and gets the same λ̂.

Methods register themselves with :func:`register` and are created by name with :func:`make_method`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from napari_conformal.core.progress import Step, check_stop
from napari_conformal.core.validation import check_alpha, check_calibration_size, check_nu
from napari_conformal.errors import ParameterError

__all__ = [
    "ConformalMethod",
    "Option",
    "PreparedPool",
    "Step",
    "TuningImage",
    "available_methods",
    "make_method",
    "method_class",
    "methods_drawing",
    "register",
]

P = TypeVar("P")  # a prepared image
C = TypeVar("C")  # one image's calibration curve
S = TypeVar("S")  # the set of one image

_REGISTRY: dict[str, type[ConformalMethod[Any, Any, Any]]] = {}
_KINDS = ("int", "ints", "float", "bool", "choice", "text", "json")


@dataclass(frozen=True)
class Option:
    """One hyper-parameter of a method: what the command line and the dock generate an input from.

    Attributes
    ----------
    name : str
        Constructor keyword and attribute name, also its key in ``CALIB.json``'s ``params``.
    kind : {"int", "ints", "float", "bool", "choice", "text", "json"}
        Value type (``ints``: one integer or one per spatial axis, ``3`` or ``3,7,7``; ``json``: a
        JSON object given as text on the command line).
    default : object
        Default value (None: "automatic", say what in ``help``).
    help : str
        One sentence, shown as the flag's help and the input's tooltip.
    label : str, optional
        Short label of the dock input (default: ``name``).
    choices : tuple of str
        Allowed values of a ``choice``.
    minimum, maximum : float, optional
        Closed bounds of a number.
    flag : str, optional
        Command-line flag without dashes (default ``name`` with ``-`` for ``_``).
    optional : bool
        None is a valid value (the automatic default).
    exclusive_minimum : bool
        ``minimum`` itself is not allowed.
    """

    name: str
    kind: str
    default: Any
    help: str
    label: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None
    optional: bool = False
    exclusive_minimum: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"option {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")

    @property
    def cli_flag(self) -> str:
        """The command-line flag, e.g. ``--rw-beta``."""
        return "--" + (self.flag or self.name.replace("_", "-"))

    @property
    def display(self) -> str:
        """The dock label."""
        return self.label or self.name

    def parse(self, value: Any, method: str = "") -> Any:
        """``value`` checked and converted to this option's type.

        Raises
        ------
        ParameterError
            Naming the method, the option and the value.
        """
        where = f"{method} option {self.name}" if method else f"option {self.name}"
        if value is None:
            if self.optional or self.default is None:
                return None
            raise ParameterError(f"{where} needs a value (default {self.default!r})")
        if self.kind == "bool":
            if isinstance(value, bool | np.bool_):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ParameterError(f"{where} must be true or false, got {value!r}")
        if self.kind == "int":
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise ParameterError(f"{where} must be an integer, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                if isinstance(value, float | np.floating) and float(value).is_integer():
                    value = int(value)
                else:
                    raise ParameterError(f"{where} must be an integer, got {value!r}")
            return self._bounded(int(value), where)
        if self.kind == "ints":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            if isinstance(value, list | tuple):
                if not value:
                    raise ParameterError(f"{where} must be an integer or a list of integers, got {value!r}")
                item = Option(self.name, "int", None, "", minimum=self.minimum, maximum=self.maximum)
                items = [item.parse(v, method) for v in value]
                return items[0] if len(items) == 1 else items
            return Option(self.name, "int", None, "", minimum=self.minimum, maximum=self.maximum).parse(value, method)
        if self.kind == "float":
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ParameterError(f"{where} must be a number, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ParameterError(f"{where} must be a number, got {value!r}")
            v = float(value)
            if not np.isfinite(v):
                raise ParameterError(f"{where} must be a finite number, got {value!r}")
            return self._bounded(v, where)
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ParameterError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind == "text":
            if not isinstance(value, str):
                raise ParameterError(f"{where} must be text, got {value!r}")
            return value
        # json: a JSON object (a dict, or its text)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ParameterError(f"{where} must be a JSON object, got {value!r}") from None
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where} must be a JSON object, got {value!r}")
        return dict(value)

    def _bounded(self, v: float, where: str) -> Any:
        low_bad = self.minimum is not None and (
            v < self.minimum or (self.exclusive_minimum and v == self.minimum)
        )
        high_bad = self.maximum is not None and v > self.maximum
        if low_bad or high_bad:
            lo = "" if self.minimum is None else (">" if self.exclusive_minimum else ">=") + f" {self.minimum:g}"
            hi = "" if self.maximum is None else f"<= {self.maximum:g}"
            raise ParameterError(f"{where} must be {' and '.join(x for x in (lo, hi) if x)}, got {v:g}")
        return v


class PreparedPool:
    """Where a batched calibration keeps its prepared images and labels from ``prepare`` to ``iter_curves``.

    This one keeps them in memory; a method may return another from
    :meth:`ConformalMethod.prepared_pool` (CONSIGN spills its bases to disk beyond a memory budget,
    :class:`napari_conformal.core.consign.spill.BasisSpill`). A context manager: what it holds
    outside memory is removed when the block ends.

    Attributes
    ----------
    prepared : list
        The prepared images, in the order added.
    labels : list
        Their ground truths, in the order added.
    """

    def __init__(self) -> None:
        self.prepared: list[Any] = []
        self.labels: list[Any] = []

    def add(self, prepared: Any, label: Any = None) -> None:
        """Keep one prepared image and its ground truth."""
        self.prepared.append(prepared)
        self.labels.append(label)

    def close(self) -> None:
        """Release what the pool holds outside memory (nothing here)."""

    def __enter__(self) -> PreparedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TuningImage:
    """One calibration image handed to :meth:`ConformalMethod.iter_tune`.

    Attributes
    ----------
    index : int
        Its index in the data.
    image : ndarray, shape S, or None
        The image.
    samples : ndarray, shape (T, L, *S)
        Softmax samples (validated).
    label : ndarray, shape S
        Ground truth.
    features : ndarray, shape (C, *S'), or None
        Cached image features (methods with ``uses_features``), when the data hold matching ones.
    stored_dtype : dtype or None
        How the samples were stored.
    """

    index: int
    image: np.ndarray | None
    samples: np.ndarray
    label: np.ndarray
    features: np.ndarray | None = None
    stored_dtype: Any = None


class ConformalMethod(ABC, Generic[P, C, S]):
    """Base class of all methods (see the module docstring for the steps).

    Parameters
    ----------
    device : str, optional
        Where a method that uses torch computes ("auto", "cpu", "cuda", "cuda:i"); ignored by the
        others. Not a hyper-parameter: it is recorded in a calibration's provenance, not its params.
    **options
        Values of the method's :attr:`options` (anything else raises :class:`ParameterError`).
    """

    #: registered name (set by :func:`register`)
    name: ClassVar[str]
    #: display name, e.g. "Pixel-wise APS"
    title: ClassVar[str] = ""
    #: colour of the method in plots and contours (hex)
    colour: ClassVar[str] = "#ffffff"
    #: whether λ̂ depends on the label-wise accuracy ν
    uses_nu: ClassVar[bool] = False
    #: whether members of the set can be sampled (Chao1 / SEC / correlation apply)
    samples_members: ClassVar[bool] = False
    #: what the guarantee bounds: "miscoverage" (P(covered) ≥ 1 − α) or "fnr" (E[FNR] ≤ α)
    risk: ClassVar[str] = "miscoverage"
    #: what λ is, and its unit, for labels and tooltips
    lambda_name: ClassVar[str] = "λ"
    lambda_unit: ClassVar[str] = ""
    #: whether λ counts steps (Consema's dilations) rather than lying on a [0, 1]-like scale
    lambda_is_count: ClassVar[bool] = False
    #: the layers its explorer draws ("contour", "diffusion", "set_size", "member", "regions", "directions", "members")
    layers: ClassVar[tuple[str, ...]] = ()
    #: hyper-parameters (the command line's flags and the dock's inputs are generated from them)
    options: ClassVar[tuple[Option, ...]] = ()
    #: whether :meth:`iter_curves` needs all prepared images at once (a batched search)
    batch_curves: ClassVar[bool] = False
    #: whether ``prepare`` takes a ``features=`` array read from a store's feature cache
    uses_features: ClassVar[bool] = False
    #: whether the method computes with torch on a device
    uses_device: ClassVar[bool] = False
    #: the ``k`` option where a method has one (CONSIGN's K, RW-CP's neighbours); written as ``k`` in CALIB.json
    k: int | None = None
    #: the option that picks the one structure (label) the guarantee is about: ``"fg_class"`` for the
    #: threshold methods (one-vs-rest), ``"structure"`` for the label-wise methods (None there: every
    #: label present counts); None when the method has no such option. Per-structure calibration
    #: (:mod:`napari_conformal.core.per_class`) sets it to each class in turn.
    structure_option: ClassVar[str | None] = None

    def __init__(self, *, device: str | None = None, **options: Any) -> None:
        spec = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(spec))
        if unknown:
            known = ", ".join(spec) or "none"
            raise ParameterError(
                f"method {self.name!r} has no option {unknown[0]!r} (its options: {known})"
            )
        for opt in self.options:
            setattr(self, opt.name, opt.parse(options.get(opt.name, opt.default), self.name))
        self.device = "auto" if device is None else str(device)
        self._setup()

    def _setup(self) -> None:
        """Derived state and cross-option checks, after the options are set (override)."""

    # -- the steps -------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, image: np.ndarray | None, samples: np.ndarray, **kwargs: Any) -> P:
        """Label-free per-image work.

        Parameters
        ----------
        image : ndarray, shape (*S,), or None
            The image (methods that do not look at it accept None).
        samples : ndarray, shape (T, L, *S)
            T softmax samples of the model (float16/32/64).
        **kwargs
            ``stored_dtype`` (how the samples were stored: the sum tolerance of
            :func:`~napari_conformal.core.validation.check_samples`), ``validated`` (the values were
            checked already, by :func:`~napari_conformal.io.dataset.read_image`: only the layout is
            checked again), and method-specific inputs (RW-CP: ``features``).
        """

    @abstractmethod
    def curve(self, prepared: P, label: np.ndarray, *, alpha: float | None = None, nu: float | None = None) -> C:
        """The per-image calibration statistic from the prepared image and its ground truth.

        ``alpha`` and ``nu`` matter only where the curve itself depends on them (CONSIGN's box
        quantile level; its search target).
        """

    def iter_curves(
        self,
        prepared: Sequence[P],
        labels: Sequence[np.ndarray],
        *,
        alpha: float,
        nu: float | None = None,
        previous: Sequence[C] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, list[C]]:
        """Curves of a calibration set that answer λ̂ at (α, ν), as a progress generator.

        The batch hook: by default one :meth:`curve` per image (``previous`` curves are returned
        as they are when they already answer these levels). CONSIGN overrides it with its batched
        search, which extends ``previous`` with the curves of another quantile level.
        """
        if previous is not None and self.answers(previous, alpha=alpha, nu=nu):
            return list(previous)
        total = len(prepared)
        out = []
        yield Step(0, total, "curves")
        for j, (p, y) in enumerate(zip(prepared, labels, strict=True)):
            check_stop(should_stop)
            out.append(self.curve(p, y, alpha=alpha, nu=nu))
            yield Step(j + 1, total, "curves")
        return out

    def prepared_pool(self, n: int) -> PreparedPool:
        """Where a batched calibration of ``n`` images keeps them until :meth:`iter_curves` (in memory here)."""
        return PreparedPool()

    @abstractmethod
    def lambda_hat(self, curves: Sequence[C], *, alpha: float, nu: float | None = None) -> float:
        """The conformal reduction of the calibration curves to λ̂ at (α, ν)."""

    def tuning_positions(self, n: int, alpha: float) -> list[int]:
        """Positions (in ``0 … n−1``) of the calibration images to choose hyper-parameters on.

        Default: none (no tuning). A method that tunes returns a data-independent choice and raises
        :class:`~napari_conformal.errors.InsufficientCalibrationError` when the rest would be too
        small for α; the caller computes λ̂ on the other positions only.
        """
        return []

    def iter_tune(
        self,
        images: Iterable[TuningImage],
        *,
        n_tune: int,
        n_lambda: int,
        alpha: float,
        nu: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, tuple[ConformalMethod[Any, Any, Any], dict[str, Any]]]:
        """Choose hyper-parameters on the tuning images, as a progress generator.

        Parameters
        ----------
        images : iterable of TuningImage
            The images at :meth:`tuning_positions`, read lazily.
        n_tune, n_lambda : int
            Sizes of the tuning part and of the λ̂ part.
        alpha, nu : float
            The calibration's levels.

        Returns
        -------
        (ConformalMethod, dict)
            The method with the chosen hyper-parameters (which computes λ̂ and every set), and a
            JSON record of the choice (kept in the calibration's ``tuning``).
        """
        raise NotImplementedError(f"method {self.name!r} does not tune")

    def answers(self, curves: Sequence[C], *, alpha: float, nu: float | None = None) -> bool:
        """Whether ``curves`` answer λ̂ at (α, ν) without more per-image work (default: always)."""
        return True

    @abstractmethod
    def predict(self, prepared: P, lambda_hat: float, *, alpha: float, nu: float | None = None) -> S:
        """The prediction set of one image at ``lambda_hat``."""

    @abstractmethod
    def realised(self, curve: C, lambda_hat: float, *, alpha: float, nu: float | None = None) -> float:
        """What the set at ``lambda_hat`` realises on one image, read from its curve.

        ``1 − FNR`` for risk-controlling methods, 1.0 or 0.0 (covered or not) for the others: the
        quantity whose mean over test images the guarantee bounds.
        """

    def iter_realised(
        self,
        prepared: Sequence[P],
        labels: Sequence[np.ndarray],
        lambda_hat: float,
        *,
        alpha: float,
        nu: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[Step, None, list[float]]:
        """:meth:`realised` of many test images at λ̂, as a progress generator (NaN where undefined).

        The batch hook of test-set coverage: by default one :meth:`curve` per image; CONSIGN
        overrides it with one batched membership search up to λ̂.
        """
        from napari_conformal.errors import CalibrationError

        total = len(prepared)
        out: list[float] = []
        yield Step(0, total, "coverage")
        for j, (p, y) in enumerate(zip(prepared, labels, strict=True)):
            check_stop(should_stop)
            try:
                out.append(self.realised(self.curve(p, y, alpha=alpha, nu=nu), lambda_hat, alpha=alpha, nu=nu))
            except CalibrationError:  # e.g. no ground-truth foreground: the value is undefined
                out.append(float("nan"))
            yield Step(j + 1, total, "coverage")
        return out

    @abstractmethod
    def evaluate(
        self,
        prepared: P,
        label: np.ndarray,
        lambda_hat: float,
        *,
        alpha: float,
        nu: float | None = None,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics of the set at ``lambda_hat`` (``covered``/``coverage``, ``dice``, …)."""

    # -- what a caller needs to know --------------------------------------------------------------

    @abstractmethod
    def guarantee(self, alpha: float, nu: float | None = None) -> str:
        """The guarantee at (α, ν) in one plain sentence, for a clinician."""

    def lambda_note(self, lambda_hat: float, *, alpha: float, nu: float | None = None) -> str | None:
        """A plain remark on what λ̂ means at these levels (e.g. "the set is the model's own segmentation")."""
        return None

    def check_levels(self, alpha: float, nu: float | None = None) -> tuple[float, float | None]:
        """α (and ν for methods that use it) validated; ν refused where it does not apply."""
        a = check_alpha(alpha)
        if self.uses_nu:
            return a, check_nu(nu)
        if nu is not None:
            raise ParameterError(f"nu does not apply to method {self.name!r} (it has no label-wise accuracy)")
        return a, None

    def check_calibration(self, n: int, alpha: float) -> None:
        """Refuse a calibration set too small for α, before any per-image work."""
        check_calibration_size(n, alpha)

    def check_data(self, *, n_labels: int, n_samples: int, ndim: int) -> None:
        """Refuse data the options cannot apply to (e.g. K ≥ T, a foreground class ≥ L), before any work."""

    def check_truth(self, label: np.ndarray) -> None:
        """Refuse a ground truth ``(*S)`` the calibration statistic is undefined on, as it is read.

        Batch methods (CONSIGN) compute their curves after every image is read; this check lets the
        reader name the image. By default nothing is refused; with a ``structure`` set, the
        label-wise methods refuse a ground truth without it.
        """

    def check_lambda(self, lambda_hat: float) -> float:
        """A λ̂ read from a file, checked against what the method can produce."""
        from napari_conformal.core.validation import check_lambda

        return check_lambda(lambda_hat, "lambda_hat", upper=self.lambda_limit())

    def lambda_limit(self) -> float | None:
        """The largest λ the method can calibrate to (None: unbounded)."""
        return None

    @property
    def target_structure(self) -> int | None:
        """The structure the guarantee is about (the :attr:`structure_option`'s value; None: every label)."""
        return None if self.structure_option is None else getattr(self, self.structure_option)

    def full_set_lambda(self) -> float | None:
        """A λ whose set provably covers every ground truth (the trivial "full set"), or None.

        What a structure too rare to calibrate can fall back on (:mod:`napari_conformal.core.per_class`):
        threshold methods keep every pixel at λ = 1; LAC keeps every label of every pixel at λ = 1.
        None where no λ the method records is sure to hold everything (APS-type scores can exceed 1
        by the samples' rounding, RAPS is unbounded, Consema dilates a possibly empty prediction,
        CONSIGN's box at ``lambda_max`` need not reach the truth).
        """
        return None

    def params(self) -> dict[str, Any]:
        """The option values (JSON types): what rebuilds this method with :func:`make_method`."""
        return {o.name: getattr(self, o.name) for o in self.options}

    # -- curves in a calibration file ---------------------------------------------------------------

    @abstractmethod
    def encode_curve(self, curve: C) -> dict[str, Any]:
        """One curve as a JSON object (arrays through :mod:`napari_conformal.core.arrays_json`)."""

    @abstractmethod
    def decode_curve(self, doc: Mapping[str, Any]) -> C:
        """The inverse of :meth:`encode_curve`; raises on anything malformed."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({opts})"


def register(name: str) -> Callable[[type[ConformalMethod[Any, Any, Any]]], type[ConformalMethod[Any, Any, Any]]]:
    """Class decorator that makes a method available to :func:`make_method` under ``name``."""

    def deco(cls: type[ConformalMethod[Any, Any, Any]]) -> type[ConformalMethod[Any, Any, Any]]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # importing the method modules registers them; kept lazy so that importing the core stays cheap
    import importlib

    for mod in ("threshold", "consign", "pixelwise", "sacp", "rwcp", "consema"):
        importlib.import_module(f"napari_conformal.core.methods.{mod}")


def available_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[ConformalMethod[Any, Any, Any]]:
    """The class registered as ``name`` (its class attributes say what the method uses)."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}") from None


def methods_drawing(layer: str) -> list[str]:
    """Names of the registered methods whose explorer draws ``layer`` (e.g. "set_size", "directions")."""
    return [name for name in available_methods() if layer in method_class(name).layers]


def make_method(name: str, **kwargs: Any) -> ConformalMethod[Any, Any, Any]:
    """Create a registered method by name, e.g. ``make_method("rwcp", k=20, features="multiscale")``.

    ``device`` is accepted by every method (ignored where it does not apply).
    """
    return method_class(name)(**kwargs)
