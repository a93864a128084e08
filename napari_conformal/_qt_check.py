"""Whether a Qt binding is installed, asked before any GUI work starts (the demo, a viewer).

napari and the docks need a Qt binding (PyQt5/6 or PySide2/6), which a plain ``pip install
napari-conformal`` does not bring (headless servers do not need one). :func:`require_qt` turns its absence
into one :class:`~napari_conformal.errors.ConformalError` naming the fix, before anything slow runs.
"""

from __future__ import annotations

__all__ = ["QT_FIX", "qt_binding", "require_qt"]

#: What to install when no Qt binding is found.
QT_FIX = "pip install 'napari-conformal[qt]' (or 'napari-conformal[all]', or any of PyQt6, PyQt5, PySide6)"


def qt_binding() -> str | None:
    """The Qt binding qtpy finds (``"PyQt6"``, …), or None when there is none."""
    try:
        import qtpy
    except Exception:  # qtpy raises QtBindingsNotFoundError (an ImportError) without a binding
        return None
    return str(getattr(qtpy, "API_NAME", "") or "") or None


def require_qt(what: str = "the napari viewer") -> None:
    """Raise a one-line ConformalError naming the fix when no Qt binding is installed."""
    if qt_binding() is None:
        from napari_conformal.errors import ConformalError

        raise ConformalError(f"{what} needs a Qt binding and none is installed: {QT_FIX}")
