"""A calibration: one frozen object, and the one JSON schema it is saved in (``CALIB.json``).

:class:`Calibration` is what :func:`napari_conformal.api.calibrate` returns and everything else reads
(``evaluate``, the report, the explorers, the dock's *Load calibration…*): the method and its
options, the levels α and ν, λ̂, the calibration images and the data they came from, provenance
(package version, time, device, seed) and the per-image calibration curves. The curves are what
make the object answer other levels without per-image work: :meth:`Calibration.lambda_at` is the
method's reduction over them (CRC, RW-CP, Consema, pixel-wise sets: every α and ν; CONSIGN: every
α whose box quantile level the curves hold, every ν up to the one searched).

The JSON schema (``schema_version`` 2; version 1 files, which predate tuning, are read too) is
written and read only here (:meth:`~Calibration.to_json`, :meth:`~Calibration.from_json`)::

    {"format": "napari-conformal-calibration", "schema_version": 2,
     "method": "crc", "alpha": 0.1, "nu": null, "k": null, "lambda_hat": 0.53, "n": 20,
     "cal_indices": [...], "tune_indices": [], "tuning": null, "version": "0.1.0",
     "store": {"path": "...", "identity": "...", "n_images": 70},
     "params": {...the method's options...}, "guarantee": "On average ...",
     "provenance": {"version": ..., "created": ..., "device": ..., "seed": ..., ...},
     "curves": [...one object per calibration image...],
     "digest": "<BLAKE2b-128 of the rest>"}

``cal_indices`` are the images λ̂ was computed on (one curve each). A method that chooses its
hyper-parameters on part of the calibration images (RW-CP with ``tune="dice"``,
docs/algorithms.md#rw-cp-tuning) records that part in ``tune_indices`` — disjoint from
``cal_indices``, so a reader can check that λ̂ never saw them — and what it chose, and from what,
in ``tuning``.

Reading checks everything a truncated, edited or foreign file could break, and raises
:class:`~napari_conformal.errors.CalibrationFileError` with one line saying what: the format and
schema version, every field's type and range, the curves, the λ̂ they reproduce, and the digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from napari_conformal.errors import CalibrationFileError, ConformalError

__all__ = ["FORMAT", "SCHEMA_VERSION", "Calibration", "Provenance", "StoreRef"]

FORMAT = "napari-conformal-calibration"
SCHEMA_VERSION = 2
#: schema versions this version reads (1: before tuning, without ``tune_indices`` and ``tuning``)
READS_VERSIONS = (1, 2)
_KEYS = (
    "format",
    "schema_version",
    "method",
    "alpha",
    "nu",
    "k",
    "lambda_hat",
    "n",
    "cal_indices",
    "tune_indices",
    "tuning",
    "version",
    "store",
    "params",
    "guarantee",
    "provenance",
    "curves",
    "digest",
)


@dataclass(frozen=True)
class StoreRef:
    """The data a calibration was made on.

    Attributes
    ----------
    path : str or None
        Absolute path of the store (None for in-memory arrays).
    identity : str
        Content identity (:meth:`~napari_conformal.io.store.DatasetStore.identity`).
    n_images : int
        Number of images of the data (calibration indices lie below it).
    """

    path: str | None
    identity: str
    n_images: int

    @classmethod
    def of(cls, data: Any) -> StoreRef:
        """The reference of a dataset store or an in-memory dataset."""
        path = getattr(data, "path", None)
        return cls(None if path is None else str(Path(path).resolve()), str(data.identity()), int(data.n_images))


@dataclass(frozen=True)
class Provenance:
    """Where and when a calibration was computed.

    Attributes
    ----------
    version : str
        napari-conformal version.
    created : str
        UTC time, ISO 8601.
    device : str
        Where the method computed ("cpu", "cuda:0", …).
    seed : int or None
        Seed of the random calibration split (None: the indices were given).
    python, numpy, torch : str
        Versions.
    """

    version: str
    created: str
    device: str
    seed: int | None
    python: str
    numpy: str
    torch: str

    @classmethod
    def now(cls, *, device: str = "cpu", seed: int | None = None) -> Provenance:
        """The provenance of a calibration computed now, in this process."""
        import sys

        import numpy as np

        from napari_conformal import __version__

        torch = sys.modules.get("torch")
        return cls(
            version=__version__,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            device=str(device),
            seed=None if seed is None else int(seed),
            python=platform.python_version(),
            numpy=np.__version__,
            torch=getattr(torch, "__version__", "not loaded"),
        )


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.blake2b(_canonical({k: v for k, v in doc.items() if k != "digest"}), digest_size=16).hexdigest()


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as it reads back from JSON (tuples → lists); refuses NaN and non-JSON types."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConformalError(f"{where} cannot be written as JSON: {exc}") from None


@dataclass(frozen=True, eq=False)
class Calibration:
    """A calibrated conformal method: levels, λ̂, the calibration images and their curves.

    Build with :func:`napari_conformal.api.calibrate` (or :meth:`from_json`); never mutated (use
    :meth:`at` and :meth:`with_curves` for variants).

    Attributes
    ----------
    method : str
        Registered method name.
    params : dict
        The method's options (JSON types): ``make_method(method, **params)`` rebuilds it.
    alpha : float
        Risk level α the calibration was made at.
    nu : float or None
        Label-wise accuracy ν (None for methods without it).
    lambda_hat : float
        λ̂ at (α, ν).
    cal_indices : tuple of int
        The calibration images λ̂ was computed on, in the order of ``curves``.
    store : StoreRef
        The data.
    curves : tuple
        One calibration curve per calibration image (the method's own type).
    provenance : Provenance
        Version, time, device, seed.
    tune_indices : tuple of int
        Calibration images the method chose its hyper-parameters on (empty without tuning);
        disjoint from ``cal_indices``: λ̂ never saw them.
    tuning : dict or None
        What the tuning chose and the score of every candidate (JSON types), None without tuning.
    """

    method: str
    params: dict[str, Any]
    alpha: float
    nu: float | None
    lambda_hat: float
    cal_indices: tuple[int, ...]
    store: StoreRef
    curves: tuple[Any, ...] = field(repr=False)
    provenance: Provenance = field(repr=False)
    tune_indices: tuple[int, ...] = ()
    tuning: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        overlap = sorted(set(self.tune_indices) & set(self.cal_indices))
        if overlap:
            raise ConformalError(f"tuning images {overlap[:10]} are also calibration images of lambda-hat")
        if (self.tuning is None) != (not self.tune_indices):
            raise ConformalError("a calibration has tuning images exactly when it has a tuning record")

    # -- what it is ------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of calibration images λ̂ was computed on."""
        return len(self.cal_indices)

    @property
    def images(self) -> tuple[int, ...]:
        """Every image the calibration used: ``cal_indices`` then ``tune_indices`` (none is a test image)."""
        return tuple(self.cal_indices) + tuple(self.tune_indices)

    @property
    def k(self) -> int | None:
        """The method's ``k`` option (CONSIGN's K, RW-CP's neighbours), None when it has none."""
        value = self.params.get("k")
        return None if value is None else int(value)

    @cached_property
    def method_object(self) -> Any:
        """The method, rebuilt from :attr:`params` (device "auto")."""
        return self.build_method()

    def build_method(self, device: str | None = None) -> Any:
        """The method object this calibration was made with, on ``device`` (default "auto")."""
        from napari_conformal.core.methods.base import make_method

        return make_method(self.method, device=device, **self.params)

    def guarantee(self, alpha: float | None = None, nu: float | None = None) -> str:
        """The guarantee at (α, ν) (default: the calibration's) in one sentence."""
        a = self.alpha if alpha is None else alpha
        v = self.nu if nu is None else nu
        return self.method_object.guarantee(a, v if self.method_object.uses_nu else None)

    # -- other levels ----------------------------------------------------------------------------

    def _levels(self, alpha: float | None, nu: float | None) -> tuple[float, float | None]:
        a = self.alpha if alpha is None else float(alpha)
        if not self.method_object.uses_nu:
            return a, None
        return a, self.nu if nu is None else float(nu)

    def lambda_at(self, alpha: float | None = None, nu: float | None = None) -> float:
        """λ̂ at (α, ν) from the curves, no per-image work.

        Raises
        ------
        InsufficientCalibrationError
            n is too small for α.
        CurvesPending
            (CONSIGN) the curves hold no search at α's box quantile level, or not one that went
            far enough: compute it with :func:`napari_conformal.api.extend`.
        """
        a, v = self._levels(alpha, nu)
        method = self.method_object
        method.check_levels(a, v)
        method.check_calibration(self.n, a)
        return float(method.lambda_hat(self.curves, alpha=a, nu=v))

    def answers(self, alpha: float | None = None, nu: float | None = None) -> bool:
        """Whether :meth:`lambda_at` can answer (α, ν) from the curves (n large enough, curves searched)."""
        a, v = self._levels(alpha, nu)
        try:
            self.method_object.check_levels(a, v)
            self.method_object.check_calibration(self.n, a)
        except ConformalError:
            return False
        return bool(self.method_object.answers(self.curves, alpha=a, nu=v))

    def at(self, alpha: float | None = None, nu: float | None = None) -> Calibration:
        """This calibration re-reduced at (α, ν): same images and curves, that λ̂."""
        a, v = self._levels(alpha, nu)
        if (a, v) == (self.alpha, self.nu):
            return self
        return dataclasses.replace(self, alpha=a, nu=v, lambda_hat=self.lambda_at(a, v))

    def with_curves(self, curves: Sequence[Any]) -> Calibration:
        """The same calibration with ``curves`` (e.g. extended to another α); λ̂ must not change."""
        curves = tuple(curves)
        if len(curves) != self.n:
            raise ConformalError(f"expected {self.n} curves, one per calibration image, got {len(curves)}")
        out = dataclasses.replace(self, curves=curves)
        if out.lambda_at() != self.lambda_hat:
            raise ConformalError("the new curves do not reproduce this calibration's lambda_hat")
        return out

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the schema (module docstring), digest included."""
        method = self.method_object
        doc: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "alpha": float(self.alpha),
            "nu": None if self.nu is None else float(self.nu),
            "k": self.k,
            "lambda_hat": float(self.lambda_hat),
            "n": self.n,
            "cal_indices": [int(i) for i in self.cal_indices],
            "tune_indices": [int(i) for i in self.tune_indices],
            "tuning": None if self.tuning is None else _jsonable(dict(self.tuning), "tuning"),
            "version": self.provenance.version,
            "store": dataclasses.asdict(self.store),
            "params": _jsonable(dict(self.params), "params"),
            "guarantee": self.guarantee(),
            "provenance": dataclasses.asdict(self.provenance),
            "curves": [method.encode_curve(c) for c in self.curves],
        }
        doc["digest"] = _digest(doc)
        return doc

    def to_json(self, indent: int | None = 1) -> str:
        """The calibration as JSON text (schema version :data:`SCHEMA_VERSION`)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a temporary sibling, then a rename)."""
        from napari_conformal.io.atomic import atomic_file

        target = Path(path)
        with atomic_file(target) as fh:
            fh.write(self.to_json().encode("utf-8"))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a ``CALIB.json`` (see :meth:`from_json`); a missing or unreadable file is a :class:`CalibrationFileError`."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationFileError(f"calibration file not found: {p}") from None
        except IsADirectoryError:
            raise CalibrationFileError(f"{p} is a directory, not a calibration file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationFileError(f"cannot read calibration file {p}: {exc}") from None
        return cls.from_json(text, source=str(p))

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "calibration") -> Calibration:
        """The calibration a JSON text holds, every field checked.

        Raises
        ------
        CalibrationFileError
            Not JSON (or truncated), another format, an unknown schema version, a field of the wrong
            type or range, curves that do not decode or do not reproduce λ̂, or a digest mismatch
            (the file was edited after it was written).
        """
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationFileError(f"{source} is not valid JSON (truncated?): {exc}") from None
        try:
            return cls.from_dict(doc)
        except CalibrationFileError as exc:
            raise CalibrationFileError(f"{source}: {exc}") from None

    @classmethod
    def from_dict(cls, doc: Any) -> Calibration:
        """The inverse of :meth:`to_dict` (see :meth:`from_json` for the checks)."""
        from napari_conformal.core.methods.base import available_methods

        if not isinstance(doc, dict):
            raise CalibrationFileError("not a calibration: the JSON is not an object")
        if doc.get("format") != FORMAT:
            if "lambda_hat" in doc and "schema_version" not in doc:
                raise CalibrationFileError(
                    "a calibration written by napari-conformal before versioned calibration files (it has no "
                    "curves); calibrate again to make a file this version reads"
                )
            raise CalibrationFileError(f"not a napari-conformal calibration (format {doc.get('format')!r})")
        version = doc.get("schema_version")
        if isinstance(version, bool) or version not in READS_VERSIONS:
            raise CalibrationFileError(
                f"calibration schema version {version!r} is not one this napari-conformal reads (it reads "
                f"versions {', '.join(map(str, READS_VERSIONS))}); use the version that wrote it, or calibrate again"
            )
        keys = _KEYS if version == 2 else tuple(k for k in _KEYS if k not in ("tune_indices", "tuning"))
        missing = [k for k in keys if k not in doc]
        extra = sorted(set(doc) - set(keys))
        if missing or extra:
            what = (f"lacks {', '.join(missing)}" if missing else "") + (
                f"{'; ' if missing else ''}has unknown keys {', '.join(extra)}" if extra else ""
            )
            raise CalibrationFileError(f"the calibration {what}")
        try:
            expected = _digest(doc)
        except ValueError:  # NaN or ±inf (Python's json reads NaN, Infinity and 1e999): never written here
            raise CalibrationFileError(
                "the calibration holds NaN or infinity, which napari-conformal never writes "
                "(an edited or damaged file)"
            ) from None
        if not isinstance(doc["digest"], str) or doc["digest"] != expected:
            raise CalibrationFileError(
                "the file was changed after it was written (its digest does not match its contents); "
                "restore the original or calibrate again"
            )
        method = doc["method"]
        if method not in available_methods():
            raise CalibrationFileError(f"unknown method {method!r}")
        alpha = _number(doc, "alpha", 0.0, 1.0, open_low=True, open_high=True)
        nu = None if doc["nu"] is None else _number(doc, "nu", 0.0, 1.0, open_high=True)
        lam = _number(doc, "lambda_hat", -math.inf, math.inf)
        n = _integer(doc, "n", 1)
        cal = doc["cal_indices"]
        if not (isinstance(cal, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in cal)):
            raise CalibrationFileError("cal_indices must be a list of non-negative integers")
        if len(cal) != n or len(set(cal)) != n:
            raise CalibrationFileError(
                f"cal_indices must hold n = {n} distinct images, it holds {len(cal)} ({len(set(cal))} distinct)"
            )
        tune = doc.get("tune_indices", [])
        if not (isinstance(tune, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in tune)):
            raise CalibrationFileError("tune_indices must be a list of non-negative integers")
        if len(set(tune)) != len(tune):
            raise CalibrationFileError("tune_indices must be distinct")
        shared = sorted(set(tune) & set(cal))
        if shared:
            raise CalibrationFileError(
                f"tune_indices and cal_indices share images {shared[:10]}: lambda-hat would have seen tuning images"
            )
        tuning = doc.get("tuning")
        if tuning is not None and not isinstance(tuning, dict):
            raise CalibrationFileError("tuning must be an object or null")
        if (tuning is None) != (not tune):
            raise CalibrationFileError("tuning must be recorded exactly when tune_indices is not empty")
        store = doc["store"]
        if not (isinstance(store, dict) and set(store) == {"path", "identity", "n_images"}):
            raise CalibrationFileError("store must be {path, identity, n_images}")
        if not (store["path"] is None or isinstance(store["path"], str)) or not isinstance(store["identity"], str):
            raise CalibrationFileError("store path must be text or null and its identity text")
        n_images = _integer(store, "n_images", 1, where="store n_images")
        for what, indices in (("cal_indices", cal), ("tune_indices", tune)):
            if indices and max(indices) >= n_images:
                raise CalibrationFileError(f"{what} reach {max(indices)}, but the data has {n_images} images")
        params = doc["params"]
        if not isinstance(params, dict):
            raise CalibrationFileError("params must be an object")
        try:
            from napari_conformal.core.methods.base import make_method

            obj = make_method(method, **params)
        except ConformalError as exc:
            raise CalibrationFileError(f"params do not rebuild method {method!r}: {exc}") from None
        if doc["k"] != obj.k:
            raise CalibrationFileError(f"k = {doc['k']!r} disagrees with the method's k = {obj.k!r}")
        if obj.uses_nu != (nu is not None):
            raise CalibrationFileError(f"nu must be {'a number' if obj.uses_nu else 'null'} for method {method!r}")
        try:
            obj.check_lambda(lam)
        except ConformalError as exc:
            raise CalibrationFileError(str(exc)) from None
        prov = doc["provenance"]
        fields = {f.name for f in dataclasses.fields(Provenance)}
        if not (isinstance(prov, dict) and set(prov) == fields):
            raise CalibrationFileError(f"provenance must be {{{', '.join(sorted(fields))}}}")
        if not all(isinstance(prov[k], str) for k in fields - {"seed"}) or not (
            prov["seed"] is None or (isinstance(prov["seed"], int) and not isinstance(prov["seed"], bool))
        ):
            raise CalibrationFileError("provenance fields must be text (seed: an integer or null)")
        if not isinstance(doc["version"], str) or doc["version"] != prov["version"]:
            raise CalibrationFileError("version must be the provenance's package version")
        curves_doc = doc["curves"]
        if not isinstance(curves_doc, list) or len(curves_doc) != n:
            raise CalibrationFileError(f"curves must be a list of n = {n} curves")
        curves = []
        for j, c in enumerate(curves_doc):
            try:
                curves.append(obj.decode_curve(c))
            except CalibrationFileError as exc:
                raise CalibrationFileError(f"curve {j} (image {cal[j]}): {exc}") from None
        out = cls(
            method=method,
            params=obj.params(),
            alpha=alpha,
            nu=nu,
            lambda_hat=lam,
            cal_indices=tuple(cal),
            store=StoreRef(store["path"], store["identity"], n_images),
            curves=tuple(curves),
            provenance=Provenance(**prov),
            tune_indices=tuple(tune),
            tuning=tuning,
        )
        out.__dict__["method_object"] = obj
        try:
            again = out.lambda_at()
        except ConformalError as exc:
            raise CalibrationFileError(f"the curves do not give a lambda_hat at alpha={alpha:g}: {exc}") from None
        if again != lam:
            raise CalibrationFileError(f"the curves give lambda_hat = {again!r}, the file says {lam!r}")
        return out


def _number(doc: Mapping[str, Any], key: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> float:
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise CalibrationFileError(f"{key} must be a finite number, got {v!r}")
    if v < low or v > high or (open_low and v == low) or (open_high and v == high):
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise CalibrationFileError(f"{key} must lie in {lo}{low:g}, {high:g}{hi}, got {v!r}")
    return float(v)


def _integer(doc: Mapping[str, Any], key: str, minimum: int, *, where: str | None = None) -> int:
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise CalibrationFileError(f"{where or key} must be an integer >= {minimum}, got {v!r}")
    return int(v)
