"""A napari progress bar fed by the :class:`~napari_conformal.core.progress.Step` values a worker yields.

``progress.update`` can process Qt events, which can deliver the worker's next ``yielded`` signal
while the first update is still running. :class:`ProgressFeed` never re-enters: a step that arrives
during an update is kept, and the latest one is applied when the update returns, so the bar ends on
the last value and no recursion builds up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressFeed"]


class ProgressFeed:
    """Apply worker steps to one napari ``progress`` bar, coalescing re-entrant updates.

    Parameters
    ----------
    description : str
        The bar's label; a step of another stage than "images" is appended (``"…: search"``).
    total : int
        Initial total.
    """

    def __init__(self, description: str, total: int = 0) -> None:
        from napari.utils import progress

        self.description = description
        self.bar = progress(total=total, desc=description)
        self._busy = False
        self._pending: Any = None
        #: the last step applied, e.g. for a status line
        self.last: Any = None

    def __call__(self, step: Any) -> None:
        """Apply ``step`` (``(done, total)``, optionally with ``.stage``)."""
        if not (isinstance(step, tuple) and len(step) == 2):
            return
        if self._busy:
            self._pending = step
            return
        self._busy = True
        try:
            while step is not None:
                self._apply(step)
                step, self._pending = self._pending, None
        finally:
            self._busy = False

    def _apply(self, step: Any) -> None:
        done, total = int(step[0]), int(step[1])
        stage = getattr(step, "stage", None)
        bar = self.bar
        desc = self.description if not stage or stage == "images" else f"{self.description}: {stage}"
        if not str(bar.desc).startswith(desc):  # napari appends ": " to a description
            bar.set_description(desc)
        if bar.total != total:
            bar.total = total
            bar.n = 0
        bar.update(done - bar.n)
        self.last = step

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
