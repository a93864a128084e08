"""An exclusive writer lock on a file, held by one process at a time and released when it dies.

:func:`writer_lock` takes an advisory lock (``fcntl.flock``; ``msvcrt.locking`` where there is no
``fcntl``) on a lock file and writes the holder's pid, host and start time into it, so that a second
writer is refused with a message naming the first instead of interfering with it. The operating
system drops the lock when its process ends, however it ends (SIGKILL included), so a killed writer
never leaves a lock that blocks the next one.

The lock file is removed on release. A process that locks a file which another has just removed
(it opened the old inode before the removal) notices that the path no longer names what it locked
and starts again, so two holders are impossible.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from napari_conformal.errors import StoreBusyError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["holder", "pid_alive", "writer_lock"]


def _try_lock(fd: int) -> None:
    """Lock ``fd`` without waiting; BlockingIOError (or PermissionError on Windows) when held."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file at ``path`` says about its holder (``pid``, ``host``, ``since``), or None."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as alive until it is reaped)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # pragma: no cover - no cheap, safe check (os.kill(pid, 0) would signal it)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _busy_message(path: Path, what: str) -> str:
    info = holder(path) or {}
    pid, host, since = info.get("pid"), info.get("host"), info.get("since")
    here = not isinstance(host, str) or host == socket.gethostname()
    who = f"pid {pid}" if isinstance(pid, int) else "pid unknown"
    if not here:
        who += f" on {host}"
    if isinstance(since, int | float):
        who += f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
    if here and pid == os.getpid():
        return f"another writer in this process ({who}) is {what}; finish or close it first"
    return (
        f"another process ({who}) is {what}; wait for it to finish (its lock {path} is released "
        "when that process ends)"
    )


@contextmanager
def writer_lock(path: str | os.PathLike[str], *, what: str, wait: float = 1.0) -> Iterator[None]:
    """Hold the exclusive lock of the lock file ``path`` for the block.

    Parameters
    ----------
    path : path-like
        The lock file (created when missing; removed on release).
    what : str
        What the holder does, for the refusal message ("writing features to the store at …").
    wait : float
        Seconds to keep trying before refusing (absorbs short holders such as a clean-up on open).

    Raises
    ------
    StoreBusyError
        Another process (or another open of the same file in this one) holds the lock: "another
        process (pid N) is <what>".
    """
    lock = Path(path)
    deadline = time.monotonic() + max(float(wait), 0.0)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise StoreBusyError(_busy_message(lock, what)) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked must still be the one at the path (not removed by a releasing holder)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "doing": what}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(doc).encode())
        yield
    finally:
        try:  # remove while still holding the lock, then release it
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
