"""Progress and cooperative cancellation for the long loops of the core.

Long computations are generators that yield a :class:`Step` after each unit of work (an image, a
search block), so one loop serves a terminal progress bar, a test, a dask client and a napari
thread worker (whose ``quit()`` closes the generator). Loops that take a ``should_stop()`` callback
poll it between units with :func:`check_stop`, which turns a True answer into
:class:`~napari_conformal.errors.Cancelled`, so nothing partial is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_conformal.errors import Cancelled

__all__ = ["Step", "check_stop"]


class Step(tuple):
    """Progress ``(done, total)`` in units of ``stage`` ("images", "search", …).

    A tuple of two, so ``done, total = step`` works; ``step.stage`` names what is counted.
    """

    stage: str

    def __new__(cls, done: int, total: int, stage: str = "images") -> Step:
        self = super().__new__(cls, (int(done), int(total)))
        self.stage = stage
        return self

    @property
    def done(self) -> int:
        """Units done."""
        return self[0]

    @property
    def total(self) -> int:
        """Units in all (of this stage)."""
        return self[1]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Step, (self[0], self[1], self.stage))

    def __repr__(self) -> str:
        return f"Step({self[0]}, {self[1]}, {self.stage!r})"


def check_stop(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`~napari_conformal.errors.Cancelled` when ``should_stop()`` returns True."""
    if should_stop is not None and should_stop():
        raise Cancelled()
