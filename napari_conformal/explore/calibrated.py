"""A calibration together with the curves it was computed from.

:func:`napari_conformal.api.iter_calibrate` returns the ``CALIB.json`` record
and discards the per-image calibration curves. The explorers need those curves:
λ̂ for another α or ν is an exact reduction over them
(:meth:`~napari_conformal.core.methods.base.ConformalMethod.lambda_hat`), so moving a
slider never re-runs the per-image work. :func:`iter_calibrate_keeping_curves`
runs the very same :func:`~napari_conformal.api.iter_calibrate` (same
validation, same record) and keeps the curves it reduced.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from napari_conformal.core.methods.base import ConformalMethod, make_method
from napari_conformal.errors import ConformalError

__all__ = ["CalibratedMethod", "iter_calibrate_keeping_curves"]


@dataclass(frozen=True)
class CalibratedMethod:
    """A calibration record, its method object and its calibration curves.

    Attributes
    ----------
    record : dict
        The ``CALIB.json`` record (SPEC §4) of :func:`napari_conformal.api.iter_calibrate`.
    method : ConformalMethod
        The method the record was made with (its α, ν are the record's).
    curves : tuple
        One curve per calibration image, in the order of ``record["cal_indices"]``
        (whatever :meth:`ConformalMethod.curve` returns for the method).
    """

    record: dict[str, Any]
    method: ConformalMethod
    curves: tuple[Any, ...]

    @property
    def name(self) -> str:
        """The method's registered name."""
        return str(self.record["method"])

    @property
    def n(self) -> int:
        """Number of calibration images."""
        return len(self.curves)


def iter_calibrate_keeping_curves(
    store: Any,
    method: str | ConformalMethod,
    *,
    cal_indices: Iterable[int],
    alpha: float | None = None,
    nu: float | None = None,
    k: int | None = None,
    params: dict[str, Any] | None = None,
) -> Generator[tuple[int, int], None, CalibratedMethod]:
    """:func:`napari_conformal.api.iter_calibrate`, keeping the calibration curves.

    Parameters
    ----------
    store : DatasetStore
        An open store with labels.
    method : str or ConformalMethod
        A registered name (then ``alpha`` is required) or an instance.
    cal_indices : iterable of int
        Calibration image indices.
    alpha, nu, k, params
        As in :func:`~napari_conformal.api.iter_calibrate`.

    Yields
    ------
    (done, total)
        Progress in images.

    Returns
    -------
    CalibratedMethod
        As the generator's return value. ``record["lambda_hat"]`` equals
        ``method.lambda_hat(curves)``.
    """
    from napari_conformal.api import iter_calibrate

    if isinstance(method, str):
        if alpha is None:
            raise ConformalError("alpha is required")
        name = method
        method = make_method(name, alpha=alpha, nu=nu, k=k, **(params or {}))
        if nu is not None and not method.uses_nu:
            raise ConformalError(f"nu does not apply to method {name!r}")
    kept: list[Sequence[Any]] = []
    reduce = method.lambda_hat

    def keeping(curves: Sequence[Any], alpha: float | None = None, nu: float | None = None) -> float:
        kept.append(tuple(curves))
        return reduce(curves, alpha, nu)

    # an instance attribute shadows the class's method for this one run only
    method.lambda_hat = keeping  # type: ignore[method-assign]
    try:
        record = yield from iter_calibrate(store, method, cal_indices=cal_indices)
    finally:
        del method.lambda_hat
    if len(kept) != 1:  # pragma: no cover - iter_calibrate reduces exactly once
        raise RuntimeError(f"expected one reduction of the calibration curves, saw {len(kept)}")
    return CalibratedMethod(record=record, method=method, curves=kept[0])
