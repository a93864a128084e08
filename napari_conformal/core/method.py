"""The shape every conformal method in napari-conformal shares.

A method is four steps, and each step is a method of :class:`ConformalMethod`::

    prepared = method.prepare(image, samples)        # expensive, label-free, per image
    curve    = method.curve(prepared, label)         # per-image calibration statistic
    lam      = method.lambda_hat([curve, ...])       # the conformal reduction (cheap)
    result   = method.predict(prepared, lam)         # the set for one image
    metrics  = method.evaluate(prepared, label, lam) # per-image metrics (dict)

``prepare`` and ``curve`` run once per image and are what a dask worker or a
background thread executes; ``lambda_hat`` is an exact reduction over the
curves, so a distributed run gives the same λ̂ as a serial one. Parameters that
a user moves live (α, ν) are arguments of ``lambda_hat``/``predict`` so that
moving them never re-runs ``prepare``.

Concrete methods register themselves with :func:`register` and are created by
name with :func:`make_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from napari_conformal.errors import ConformalError

__all__ = ["ConformalMethod", "available_methods", "make_method", "register"]

_REGISTRY: dict[str, Callable[..., ConformalMethod]] = {}
#: options a caller may pass to any method; methods without them ignore them (e.g. ``device`` for CRC)
_OPTIONAL_EVERYWHERE = frozenset({"device"})


class ConformalMethod(ABC):
    """Base class of all methods.

    Subclasses set :attr:`name`, :attr:`uses_nu`, :attr:`uses_k` and
    :attr:`samples_members`, keep their hyper-parameters as attributes and
    return them from :meth:`params` (JSON-serialisable; written into
    ``CALIB.json``).
    """

    name: ClassVar[str]
    #: whether the method has the label-wise accuracy ν (CONSIGN, pixel-wise)
    uses_nu: ClassVar[bool] = False
    #: whether the method has a number of components K (CONSIGN)
    uses_k: ClassVar[bool] = False
    #: whether members of the set can be sampled (Chao1 / SEC / correlation apply)
    samples_members: ClassVar[bool] = False

    def __init__(self, alpha: float, nu: float | None = None, k: int | None = None) -> None:
        self.alpha = float(alpha)
        self.nu = None if nu is None else float(nu)
        self.k = None if k is None else int(k)

    @abstractmethod
    def prepare(self, image: np.ndarray, samples: np.ndarray) -> Any:
        """Label-free per-image work.

        Parameters
        ----------
        image : ndarray, shape (*S,)
            The image, float32.
        samples : ndarray, shape (T, L, *S)
            T softmax samples of the model.
        """

    @abstractmethod
    def curve(self, prepared: Any, label: np.ndarray) -> Any:
        """Per-image calibration statistic from the prepared image and its ground truth."""

    @abstractmethod
    def lambda_hat(self, curves: Sequence[Any], alpha: float | None = None, nu: float | None = None) -> float:
        """Conformal reduction of the calibration curves to λ̂ (defaults: the method's α, ν)."""

    @abstractmethod
    def predict(self, prepared: Any, lambda_hat: float) -> Any:
        """The prediction set of one image at ``lambda_hat``."""

    @abstractmethod
    def evaluate(
        self,
        prepared: Any,
        label: np.ndarray,
        lambda_hat: float,
        *,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics (SPEC §4 keys) of the set at ``lambda_hat``."""

    def params(self) -> dict[str, Any]:
        """Method-specific hyper-parameters for ``CALIB.json`` (JSON types only)."""
        return {}


def register(name: str) -> Callable[[type[ConformalMethod]], type[ConformalMethod]]:
    """Class decorator that makes a method available to :func:`make_method`."""

    def deco(cls: type[ConformalMethod]) -> type[ConformalMethod]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # importing the method modules registers them; kept lazy so that importing
    # napari_conformal.core stays cheap
    import importlib

    for mod in ("crc_method", "consign", "pixelwise", "sacp", "rwcp", "consema"):
        try:
            importlib.import_module(f"napari_conformal.core.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"napari_conformal.core.{mod}":
                raise


def available_methods() -> list[str]:
    """Names of the registered methods."""
    _load_builtin()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[ConformalMethod]:
    """The class registered as ``name`` (its class attributes say what the method uses)."""
    _load_builtin()
    try:
        return _REGISTRY[name]  # type: ignore[return-value]
    except KeyError:
        raise ConformalError(
            f"unknown method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}"
        ) from None


def make_method(name: str, **kwargs: Any) -> ConformalMethod:
    """Create a registered method by name, e.g. ``make_method("crc", alpha=0.1)``."""
    cls = method_class(name)
    import inspect

    sig = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    clean: dict[str, Any] = {}
    for key, value in kwargs.items():
        if accepts_any or key in sig.parameters:
            clean[key] = value
        elif value is not None and key not in _OPTIONAL_EVERYWHERE:
            raise ConformalError(f"method {name!r} has no parameter {key!r}")
    return cls(**clean)
