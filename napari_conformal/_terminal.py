"""A progress bar on stderr for the command line and the demo (only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["progress_bar"]


def progress_bar(label: str, quiet: bool = False, width: int = 30) -> Callable[..., None]:
    """``report(done, total, stage=None)`` drawing ``label [####....] 40% 40/100 (12 s left)``.

    Silent when ``quiet`` or when stderr is not a terminal. A new stage ("images", "search") starts
    a new bar line.
    """
    show = not quiet and sys.stderr.isatty()
    state = {"stage": None, "start": time.monotonic()}

    def report(done: int, total: int, stage: str | None = None) -> None:
        if not show or total <= 0:
            return
        if stage != state["stage"]:
            if state["stage"] is not None:
                print(file=sys.stderr)
            state.update(stage=stage, start=time.monotonic())
        filled = int(width * min(done, total) / total)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - state["start"]
        left = f" ({elapsed * (total - done) / done:.0f} s left)" if 0 < done < total and elapsed > 2 else ""
        name = label if not stage or stage == "images" else f"{label}: {stage}"
        end = "\n" if done >= total else ""
        print(f"\r{name} [{bar}] {100 * done / total:3.0f}% {done}/{total}{left}   ", end=end, file=sys.stderr, flush=True)

    return report
