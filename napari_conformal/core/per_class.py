"""Per-structure calibration: one λ̂ per foreground class, each with a guarantee of its own.

A marginal guarantee averages over the structures of a multi-class store: a small structure can be
missed far more often than the average says. Calibrating each structure c on its own gives a
guarantee about c (docs/algorithms.md#per-structure-guarantees)::

    for c in classes:                                   # default 1..L−1
        images_c = calibration images whose ground truth contains c
        λ̂_c      = calibrate(images_c, <structure option> = c)     # fg_class or structure

The guarantee of λ̂_c is for **new images that contain c** (the calibration images of c are
exchangeable with those, not with images lacking it). A class present in fewer than ⌈1/α⌉ − 1
calibration images cannot be calibrated at α (no order statistic exists): it is refused, or, when
the user asks (``rare="full"``), it gets the method's full set (every pixel, every label), whose
guarantee holds trivially; the record says so.

:class:`ClassCalibrations` is the frozen result, with its own versioned JSON (``to_json`` /
``from_json`` / ``save`` / ``load``, every field checked on reading, like
:class:`~napari_conformal.core.calibration.Calibration`, whose JSON each calibrated class embeds)::

    {"format": "napari-conformal-class-calibrations", "schema_version": 1,
     "method": "crc", "structure_option": "fg_class", "params": {...options but the structure...},
     "alpha": 0.1, "nu": null, "min_images": 9, "cal_indices": [...every calibration image...],
     "store": {...}, "label_names": ["background", "wall", "cavity"],
     "classes": [{"label": 1, "name": "wall", "n": 20, "rule": "calibrated", "lambda_hat": 0.41,
                  "calibration": {...a CALIB.json object...}},
                 {"label": 2, "name": "cavity", "n": 3, "rule": "full_set", "lambda_hat": 1.0,
                  "calibration": null}],
     "provenance": {...}, "digest": "<BLAKE2b-128 of the rest>"}

The calibration itself runs in :func:`napari_conformal.api.iter_calibrate_per_class`; evaluation per
class in :func:`napari_conformal.api.iter_evaluate_per_class`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from napari_conformal.core.calibration import (
    Calibration,
    Provenance,
    StoreRef,
    _digest,
    _integer,
    _jsonable,
    _number,
)
from napari_conformal.errors import CalibrationFileError, ConformalError

__all__ = [
    "FORMAT",
    "RARE_RULES",
    "SCHEMA_VERSION",
    "ClassCalibrations",
    "ClassEntry",
    "load_calibration_file",
    "rare_message",
]

FORMAT = "napari-conformal-class-calibrations"
SCHEMA_VERSION = 1
#: what happens to a class in fewer than ⌈1/α⌉ − 1 calibration images
RARE_RULES = ("refuse", "full")
_KEYS = (
    "format",
    "schema_version",
    "method",
    "structure_option",
    "params",
    "alpha",
    "nu",
    "min_images",
    "cal_indices",
    "store",
    "label_names",
    "classes",
    "provenance",
    "digest",
)
_ENTRY_KEYS = ("label", "name", "n", "rule", "lambda_hat", "calibration")


def class_words(label: int, name: str | None) -> str:
    """``"structure 2 (cavity)"``, or ``"structure 2"`` without a name."""
    return f"structure {int(label)}" + (f" ({name})" if name else "")


def rare_message(
    rare: Sequence[tuple[int, str | None, int]], need: int, alpha: float, n_pool: int, *, full: bool = True
) -> str:
    """The refusal of classes too rare for α: each class with its count, and the number needed.

    Parameters
    ----------
    rare : sequence of (label, name, count)
        The classes and how many calibration images contain each.
    need : int
        ⌈1/α⌉ − 1.
    alpha : float
        The level.
    n_pool : int
        Number of calibration images.
    full : bool
        Whether to suggest the full-set fallback (the method has one).
    """
    parts = [f"{class_words(c, name)} is in {n} of the {n_pool} calibration images" for c, name, n in rare]
    return (
        f"{'; '.join(parts)}, but a calibration of one structure at alpha = {float(alpha):g} needs at least "
        f"ceil(1/alpha) - 1 = {need} images that contain it. Add calibration images that contain it, raise "
        "alpha, "
        + (
            "leave the class out (classes=, --classes), or give it the full set (rare='full', --rare full)"
            if full
            else "or leave the class out (classes=, --classes)"
        )
    )


@dataclass(frozen=True)
class ClassEntry:
    """One structure of a per-class calibration.

    Attributes
    ----------
    label : int
        The class (label value).
    name : str or None
        Its label name, when the data name their labels.
    n : int
        Calibration images whose ground truth contains it.
    rule : {"calibrated", "full_set"}
        ``calibrated``: λ̂ from those n images; ``full_set``: too few images (n < ⌈1/α⌉ − 1), and the
        user asked for the full set instead of a refusal.
    lambda_hat : float
        λ̂ of the class (for ``full_set``: the method's :meth:`full_set_lambda`).
    calibration : Calibration or None
        The class's calibration (``calibrate(images with c, <structure option> = c)``); None for
        ``full_set``.
    """

    label: int
    name: str | None
    n: int
    rule: str
    lambda_hat: float
    calibration: Calibration | None = field(repr=False)

    @property
    def full_set(self) -> bool:
        """Whether the class got the full set."""
        return self.rule == "full_set"

    @property
    def title(self) -> str:
        """``"structure 2 (cavity)"``."""
        return class_words(self.label, self.name)


@dataclass(frozen=True, eq=False)
class ClassCalibrations:
    """One calibration per structure (see the module docstring), frozen.

    Build with :func:`napari_conformal.api.calibrate_per_class` or :meth:`load`.

    Attributes
    ----------
    method : str
        Registered method name.
    params : dict
        The method's options except its structure option (JSON types).
    alpha : float
        Level of every class.
    nu : float or None
        Label-wise accuracy (None for methods without it).
    cal_indices : tuple of int
        Every calibration image (each class uses those that contain it).
    store : StoreRef
        The data.
    label_names : tuple of str or None
        L names, background first (None when the data have none).
    entries : tuple of ClassEntry
        One per class, by label.
    provenance : Provenance
        Version, time, device, seed.
    """

    method: str
    params: dict[str, Any]
    alpha: float
    nu: float | None
    cal_indices: tuple[int, ...]
    store: StoreRef
    label_names: tuple[str, ...] | None
    entries: tuple[ClassEntry, ...]
    provenance: Provenance = field(repr=False)

    # -- what it is ------------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[int, ...]:
        """The classes, ascending."""
        return tuple(e.label for e in self.entries)

    @property
    def full_set_classes(self) -> tuple[int, ...]:
        """The classes that got the full set."""
        return tuple(e.label for e in self.entries if e.full_set)

    @property
    def min_images(self) -> int:
        """⌈1/α⌉ − 1: the images of a class that a calibration at α needs."""
        from napari_conformal.core.validation import min_calibration_size

        return int(min_calibration_size(self.alpha))

    @cached_property
    def structure_option(self) -> str:
        """The option that picks the structure (``"fg_class"``, ``"structure"``)."""
        from napari_conformal.core.methods.base import method_class

        option = method_class(self.method).structure_option
        if option is None:  # pragma: no cover - refused when built and when read
            raise ConformalError(f"method {self.method!r} has no structure option")
        return option

    def __getitem__(self, label: int) -> ClassEntry:
        for e in self.entries:
            if e.label == int(label):
                return e
        raise KeyError(
            f"no structure {label} in this per-class calibration (its classes: {list(self.classes)})"
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, int) and label in self.classes

    def calibration(self, label: int) -> Calibration:
        """The calibration of class ``label`` (what the explorers show).

        Raises
        ------
        ConformalError
            The class got the full set: it has no calibration.
        """
        entry = self[label]
        if entry.calibration is None:
            raise ConformalError(
                f"{entry.title} got the full set (only {entry.n} calibration images contain it, fewer than "
                f"{self.min_images}): it has no calibration to show"
            )
        return entry.calibration

    def lambda_hat(self, label: int) -> float:
        """λ̂ of class ``label``."""
        return self[label].lambda_hat

    def build_method(self, label: int, device: str | None = None) -> Any:
        """The method of class ``label`` (its structure option set to it)."""
        from napari_conformal.core.methods.base import make_method

        return make_method(self.method, device=device, **self.params, **{self.structure_option: int(label)})

    def guarantee(self, label: int) -> str:
        """The guarantee of class ``label`` in one sentence: for new images that contain it."""
        entry = self[label]
        where = f"For a new image that contains {entry.title}: "
        if entry.calibration is not None:
            text = entry.calibration.guarantee()
            return where + text[0].lower() + text[1:]
        return where + (
            "the set is the full set (every pixel and label), which covers it trivially; only "
            f"{entry.n} calibration images contain it, fewer than the {self.min_images} a calibration at "
            f"α = {self.alpha:g} needs."
        )

    def summary(self) -> list[str]:
        """One line per class: λ̂, n and the rule (for the command line and the dock)."""
        lines = []
        for e in self.entries:
            if e.full_set:
                lines.append(
                    f"{e.title}: full set (lambda = {e.lambda_hat:g}; in {e.n} < {self.min_images} images)"
                )
            else:
                lines.append(f"{e.title}: lambda_hat = {e.lambda_hat:.6g} from n = {e.n} images")
        return lines

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the schema (module docstring), digest included."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "structure_option": self.structure_option,
            "params": _jsonable(dict(self.params), "params"),
            "alpha": float(self.alpha),
            "nu": None if self.nu is None else float(self.nu),
            "min_images": self.min_images,
            "cal_indices": [int(i) for i in self.cal_indices],
            "store": dataclasses.asdict(self.store),
            "label_names": None if self.label_names is None else list(self.label_names),
            "classes": [
                {
                    "label": int(e.label),
                    "name": e.name,
                    "n": int(e.n),
                    "rule": e.rule,
                    "lambda_hat": float(e.lambda_hat),
                    "calibration": None if e.calibration is None else e.calibration.to_dict(),
                }
                for e in self.entries
            ],
            "provenance": dataclasses.asdict(self.provenance),
        }
        doc["digest"] = _digest(doc)
        return doc

    def to_json(self, indent: int | None = 1) -> str:
        """The per-class calibration as JSON text (schema version :data:`SCHEMA_VERSION`)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a temporary sibling, then a rename)."""
        from napari_conformal.io.atomic import atomic_file

        target = Path(path)
        with atomic_file(target) as fh:
            fh.write(self.to_json().encode("utf-8"))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassCalibrations:
        """Read a per-class calibration file (see :meth:`from_json`)."""
        return cls.from_json(_read_text(path), source=str(path))

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "per-class calibration") -> ClassCalibrations:
        """The per-class calibration a JSON text holds, every field checked.

        Raises
        ------
        CalibrationFileError
            Not JSON, another format or schema version, a field of the wrong type or range, a class
            calibration that does not read (its own checks) or disagrees with the file (method,
            levels, options, store, images, λ̂), a full set the method has no λ for, a count that
            contradicts the rule, or a digest mismatch.
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
    def from_dict(cls, doc: Any) -> ClassCalibrations:
        """The inverse of :meth:`to_dict` (see :meth:`from_json` for the checks)."""
        from napari_conformal.core.methods.base import available_methods, make_method, method_class
        from napari_conformal.core.validation import min_calibration_size

        if not isinstance(doc, dict):
            raise CalibrationFileError("not a per-class calibration: the JSON is not an object")
        if doc.get("format") != FORMAT:
            raise CalibrationFileError(
                f"not a napari-conformal per-class calibration (format {doc.get('format')!r})"
            )
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise CalibrationFileError(
                f"per-class calibration schema version {doc.get('schema_version')!r} is not one this "
                f"napari-conformal reads (it reads version {SCHEMA_VERSION}); calibrate again"
            )
        missing = [k for k in _KEYS if k not in doc]
        extra = sorted(set(doc) - set(_KEYS))
        if missing or extra:
            raise CalibrationFileError(
                "the per-class calibration "
                + "; ".join(
                    x
                    for x in (
                        missing and f"lacks {', '.join(missing)}",
                        extra and f"has unknown keys {', '.join(extra)}",
                    )
                    if x
                )
            )
        try:
            expected = _digest(doc)
        except ValueError:
            raise CalibrationFileError(
                "the file holds NaN or infinity, which napari-conformal never writes"
            ) from None
        if doc["digest"] != expected:
            raise CalibrationFileError(
                "the file was changed after it was written (its digest does not match its contents); "
                "restore the original or calibrate again"
            )
        method = doc["method"]
        if not isinstance(method, str) or method not in available_methods():
            raise CalibrationFileError(f"unknown method {method!r}")
        option = method_class(method).structure_option
        if option is None or doc["structure_option"] != option:
            raise CalibrationFileError(f"structure_option must be {option!r} for method {method!r}")
        params = doc["params"]
        if not isinstance(params, dict) or option in params:
            raise CalibrationFileError(f"params must be an object without the structure option {option!r}")
        alpha = _number(doc, "alpha", 0.0, 1.0, open_low=True, open_high=True)
        nu = None if doc["nu"] is None else _number(doc, "nu", 0.0, 1.0, open_high=True)
        need = min_calibration_size(alpha)
        if doc["min_images"] != need:
            raise CalibrationFileError(
                f"min_images must be ceil(1/alpha) - 1 = {need}, got {doc['min_images']!r}"
            )
        pool = doc["cal_indices"]
        if not (
            isinstance(pool, list)
            and pool
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pool)
            and len(set(pool)) == len(pool)
        ):
            raise CalibrationFileError(
                "cal_indices must be a non-empty list of distinct non-negative integers"
            )
        store = doc["store"]
        if not (isinstance(store, dict) and set(store) == {"path", "identity", "n_images"}):
            raise CalibrationFileError("store must be {path, identity, n_images}")
        if not (store["path"] is None or isinstance(store["path"], str)) or not isinstance(
            store["identity"], str
        ):
            raise CalibrationFileError("store path must be text or null and its identity text")
        n_images = _integer(store, "n_images", 1, where="store n_images")
        if max(pool) >= n_images:
            raise CalibrationFileError(f"cal_indices reach {max(pool)}, but the data has {n_images} images")
        store_ref = StoreRef(store["path"], store["identity"], n_images)
        names = doc["label_names"]
        if not (
            names is None
            or (isinstance(names, list) and len(names) >= 2 and all(isinstance(s, str) for s in names))
        ):
            raise CalibrationFileError("label_names must be null or a list of at least two names")
        prov = doc["provenance"]
        fields = {f.name for f in dataclasses.fields(Provenance)}
        if not (isinstance(prov, dict) and set(prov) == fields):
            raise CalibrationFileError(f"provenance must be {{{', '.join(sorted(fields))}}}")
        if not all(isinstance(prov[k], str) for k in fields - {"seed"}) or not (
            prov["seed"] is None or (isinstance(prov["seed"], int) and not isinstance(prov["seed"], bool))
        ):
            raise CalibrationFileError("provenance fields must be text (seed: an integer or null)")
        entries_doc = doc["classes"]
        if not isinstance(entries_doc, list) or not entries_doc:
            raise CalibrationFileError("classes must be a non-empty list")
        entries: list[ClassEntry] = []
        for j, e in enumerate(entries_doc):
            if not (isinstance(e, dict) and set(e) == set(_ENTRY_KEYS)):
                raise CalibrationFileError(f"class entry {j} must be {{{', '.join(_ENTRY_KEYS)}}}")
            label = _integer(e, "label", 0, where=f"class entry {j} label")
            where = f"structure {label}"
            if entries and label <= entries[-1].label:
                raise CalibrationFileError("classes must be listed once each, by label")
            if names is not None and label >= len(names):
                raise CalibrationFileError(f"{where} is not a label of the data ({len(names)} labels)")
            name = e["name"]
            if name != (None if names is None else names[label]):
                raise CalibrationFileError(f"{where}: its name {name!r} is not the data's label name")
            n = _integer(e, "n", 0, where=f"{where} n")
            if n > len(pool):
                raise CalibrationFileError(f"{where}: n = {n} exceeds the {len(pool)} calibration images")
            lam = e["lambda_hat"]
            if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
                raise CalibrationFileError(f"{where}: lambda_hat must be a finite number")
            try:
                obj = make_method(method, **params, **{option: label})
            except ConformalError as exc:
                raise CalibrationFileError(
                    f"{where}: params do not rebuild method {method!r}: {exc}"
                ) from None
            if e["rule"] == "full_set":
                full = obj.full_set_lambda()
                if e["calibration"] is not None or full is None or float(lam) != float(full) or n >= need:
                    raise CalibrationFileError(
                        f"{where}: a full set needs n < {need}, no calibration, and the method's full-set lambda "
                        f"({full!r})"
                    )
                calib = None
            elif e["rule"] == "calibrated":
                if n < need:
                    raise CalibrationFileError(
                        f"{where}: n = {n} is too few to calibrate at alpha = {alpha:g}"
                    )
                calib = _entry_calibration(e["calibration"], where)
                if not (
                    calib.method == method
                    and calib.alpha == alpha
                    and calib.nu == nu
                    and calib.params == obj.params()
                    and calib.store == store_ref
                    and calib.n == n
                    and set(calib.cal_indices) <= set(pool)
                    and calib.lambda_hat == float(lam)
                ):
                    raise CalibrationFileError(
                        f"{where}: its calibration disagrees with the file (method, levels, options, store, "
                        "images or lambda_hat)"
                    )
            else:
                raise CalibrationFileError(
                    f"{where}: rule must be 'calibrated' or 'full_set', got {e['rule']!r}"
                )
            entries.append(ClassEntry(label, name, n, e["rule"], float(lam), calib))
        return cls(
            method=method,
            params=dict(params),
            alpha=alpha,
            nu=nu,
            cal_indices=tuple(pool),
            store=store_ref,
            label_names=None if names is None else tuple(names),
            entries=tuple(entries),
            provenance=Provenance(**prov),
        )


def _entry_calibration(doc: Any, where: str) -> Calibration:
    if not isinstance(doc, dict):
        raise CalibrationFileError(f"{where}: a calibrated class needs its calibration")
    try:
        return Calibration.from_dict(doc)
    except CalibrationFileError as exc:
        raise CalibrationFileError(f"{where}: {exc}") from None


def _read_text(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationFileError(f"calibration file not found: {p}") from None
    except IsADirectoryError:
        raise CalibrationFileError(f"{p} is a directory, not a calibration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"cannot read calibration file {p}: {exc}") from None


def load_calibration_file(path: str | os.PathLike[str]) -> Calibration | ClassCalibrations:
    """A ``CALIB.json`` or a per-class calibration file, whichever ``path`` holds (every field checked).

    Raises
    ------
    CalibrationFileError
        Unreadable, or not a valid file of either kind.
    """
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return ClassCalibrations.from_json(text, source=str(path))
    return Calibration.from_json(text, source=str(path))  # its own messages, for a broken file too
