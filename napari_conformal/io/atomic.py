"""Build a directory under a temporary sibling name and rename it into place when complete.

An interrupted or failed writer therefore never leaves a half-written directory at the target path:
either the complete new directory is there, or whatever was there before (nothing, or the previous
version when replacing).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from napari_conformal.errors import ConformalError, StoreExistsError

__all__ = ["atomic_directory", "atomic_file", "check_target"]


def check_target(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "directory",
) -> Path:
    """Check that ``path`` may be written and return it as a :class:`~pathlib.Path`.

    Parameters
    ----------
    path : path-like
        Target directory.
    overwrite : bool
        Whether an existing target may be replaced.
    replaceable : callable, optional
        ``replaceable(path) -> bool``; with ``overwrite=True`` an existing target is replaced only if
        it is an empty directory or this returns True (protects unrelated user folders).
    what : str
        Name of the thing being written, for messages.

    Raises
    ------
    StoreExistsError
        (a :class:`FileExistsError`) The target exists and ``overwrite`` is False, or it is not
        something we may replace.
    """
    target = Path(path)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise StoreExistsError(f"{target} already exists; pass overwrite=True to replace the {what}")
    if target.is_dir() and not target.is_symlink():
        if not any(target.iterdir()):
            return target
        if replaceable is not None and replaceable(target):
            return target
    raise StoreExistsError(f"refusing to overwrite {target}: it exists and is not a {what}")


@contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "directory",
) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path`` to fill; rename it to ``path`` on success.

    On any exception inside the block the temporary directory is removed and the exception
    propagates; an existing target is left untouched. With ``overwrite=True`` the old target is
    moved aside, the new one renamed in, and only then the old one deleted. Missing parent
    directories are created.

    Examples
    --------
    >>> with atomic_directory("out.zarr") as tmp:      # doctest: +SKIP
    ...     write_everything(tmp)
    """
    target = check_target(path, overwrite=overwrite, replaceable=replaceable, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = target.parent / f".{target.name}.partial-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        # Re-check: the target may have appeared while we were writing.
        check_target(target, overwrite=overwrite, replaceable=replaceable, what=what)
        if target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            remove_tree(tmp)


def remove_tree(path: Path, *, attempts: int = 50, settle_s: float = 0.2) -> None:
    """Remove a directory tree, and again while late writes still land in it.

    An interrupted write can leave work in flight: zarr writes chunks from its own I/O thread, which a
    Ctrl-C in the main thread does not stop, and such a write creates its folders again. The tree is
    removed until it has stayed gone for ``settle_s`` seconds (at most ``attempts`` times).
    """
    for _ in range(max(1, attempts)):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(settle_s)
        if not path.exists():
            return


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary sibling of ``path`` for binary writing; rename it to ``path`` on success.

    On any exception inside the block the temporary file is removed and an existing ``path`` is
    left untouched. The data is flushed and fsync'ed before the rename.

    Raises
    ------
    ConformalError
        ``path`` is a directory or its folder does not exist.
    """
    target = Path(os.fspath(path))
    if target.is_dir():
        raise ConformalError(f"cannot write {target}: it is a directory")
    if not target.parent.is_dir():
        raise ConformalError(f"cannot write {target}: the folder {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
