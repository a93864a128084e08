"""How the docks name and colour methods and report errors."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel

from napari_conformal.errors import ConformalError

__all__ = ["colour", "notify_error", "title"]


def title(name: str) -> str:
    """Display name of a registered method (its class's ``title``)."""
    from napari_conformal.core.methods.base import method_class

    try:
        return method_class(name).title or name
    except ConformalError:
        return name


def colour(name: str) -> str:
    """Colour of a registered method in contours and plots (its class's ``colour``)."""
    from napari_conformal.core.methods.base import method_class

    try:
        return method_class(name).colour
    except ConformalError:
        return "#ffffff"


def notify_error(exc: BaseException, status: QLabel | None = None) -> str:
    """Show an error as a napari notification (and in ``status``); return the one-line message."""
    from napari.utils.notifications import show_error

    message = " ".join(str(exc).split()) or type(exc).__name__
    if status is not None:
        status.setText(f"Error: {message}")
    show_error(f"napari-conformal: {message}")
    return message
