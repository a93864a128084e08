"""One context per viewer: the shared workspace of its docks and the plugin's layers in it.

napari hands each plugin widget its own proxy of the viewer; :func:`context_for` keys by the viewer
behind the proxy, so every dock of one viewer shares one
:class:`~napari_conformal.explore.workspace.Workspace`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from napari_conformal._widgets._layers import ResultLayers
from napari_conformal.errors import ConformalError
from napari_conformal.explore.workspace import Workspace

if TYPE_CHECKING:
    import napari

__all__ = [
    "SHORTCUTS",
    "ViewerContext",
    "bind_keys",
    "context_for",
    "step_image",
    "step_member",
    "unwrap_viewer",
]


@dataclass
class ViewerContext:
    """Workspace and plugin layers of one viewer, and which store the view was last fitted to."""

    workspace: Workspace
    layers: ResultLayers
    fitted: str | None = None

    def show_image(self, index: int) -> Any:
        """Show image ``index`` of the workspace's store in the shared ``image`` layer."""
        ws = self.workspace
        store = ws.store
        meta = {
            "napari_conformal": {
                "store": {"path": str(store.path), "identity": ws.store_identity},
                "array": "images",
                "image_index": int(index),
            }
        }
        layer = self.layers.show(
            "image", "image", store.image(index), name=f"image {index}", metadata=meta, scale=store.spacing
        )
        viewer = self.layers.viewer
        if viewer is not None and self.fitted != ws.store_identity:  # a new store: fit it to the view
            self.fitted = ws.store_identity
            viewer.reset_view()
        return layer

    def ensure_image(self, index: int) -> Any:
        """The shared ``image`` layer, showing image ``index`` (updated only when it shows another)."""
        layer = self.layers.get("image")
        prov = (layer.metadata.get("napari_conformal") or {}) if layer is not None else {}
        shown = (prov.get("image_index"), (prov.get("store") or {}).get("identity"))
        if shown != (index, self.workspace.store_identity):  # another image, or the same index of a new store
            layer = self.show_image(index)
        return layer


_CONTEXTS: dict[int, ViewerContext] = {}


def unwrap_viewer(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer behind napari's ``PublicOnlyProxy``.

    napari hands each plugin widget its own proxy of the viewer, so proxies of
    one viewer are different objects: anything keyed by viewer identity must
    key by the viewer they wrap.
    """
    return getattr(viewer, "__wrapped__", viewer)


def context_for(viewer: napari.Viewer) -> ViewerContext:
    """The :class:`ViewerContext` of ``viewer`` (created on first use, dropped with the viewer).

    Every dock of one viewer gets the same context, whether napari injected the
    viewer itself or a proxy of it.
    """
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    ctx = _CONTEXTS.get(key)
    if ctx is None or ctx.layers.viewer is not viewer:
        ctx = ViewerContext(workspace=Workspace(), layers=ResultLayers(viewer))
        _CONTEXTS[key] = ctx
        weakref.finalize(viewer, _CONTEXTS.pop, key, None)
        viewer.layers.selection.events.active.connect(partial(_follow_active_layer, weakref.ref(ctx)))
        bind_keys(viewer, weakref.ref(ctx))
    return ctx


#: the plugin's keyboard shortcuts: key → (what it does, handler name); listed in the user guide
SHORTCUTS = {
    "Alt-Right": "next image (test images first, then calibration images)",
    "Alt-Left": "previous image",
    "Shift-Right": "next member (the sample axis of a members layer)",
    "Shift-Left": "previous member",
    "Alt-C": "show or hide the companion methods of the explorer in front",
}


def step_image(workspace: Workspace, step: int) -> None:
    """Move the current image ``step`` places along test-then-calibration order (wrapping)."""
    order = list(workspace.test_indices) + list(workspace.cal_indices)
    if not order or workspace.index is None:
        return
    pos = order.index(workspace.index) if workspace.index in order else -1
    workspace.index = order[(pos + step) % len(order)]


def step_member(viewer: napari.Viewer, layers: ResultLayers, step: int) -> None:
    """Move the sample axis of the plugin's members layer in front by ``step`` (wrapping)."""
    for key, layer in reversed(layers.items()):
        if key.endswith("members") and layer.visible and layer.ndim == viewer.dims.ndim:
            n = layer.data.shape[0]
            current = viewer.dims.current_step[0]
            viewer.dims.set_current_step(0, (current + step) % n)
            return


def bind_keys(viewer: napari.Viewer, ctx_ref: Callable[[], ViewerContext | None]) -> None:
    """Install :data:`SHORTCUTS` on ``viewer`` (napari keybindings; they act on this viewer's workspace)."""

    def with_ctx(fn: Callable[[ViewerContext], None]) -> Callable[[Any], None]:
        def handler(_viewer: Any) -> None:
            ctx = ctx_ref()
            if ctx is not None and ctx.workspace.ready:
                try:
                    fn(ctx)
                except ConformalError:
                    pass

        return handler

    actions = {
        "Alt-Right": with_ctx(lambda c: step_image(c.workspace, 1)),
        "Alt-Left": with_ctx(lambda c: step_image(c.workspace, -1)),
        "Shift-Right": with_ctx(lambda c: step_member(viewer, c.layers, 1)),
        "Shift-Left": with_ctx(lambda c: step_member(viewer, c.layers, -1)),
        "Alt-C": with_ctx(lambda c: c.workspace.toggle_companions.emit()),
    }
    for key, action in actions.items():
        viewer.bind_key(key, action, overwrite=True)


def _follow_active_layer(ctx_ref: Callable[[], ViewerContext | None], event: Any) -> None:
    """Selecting a plugin layer of another image makes that image current (panels follow)."""
    ctx = ctx_ref()
    layer = getattr(event, "value", None)
    if ctx is None or layer is None or not ctx.workspace.ready:
        return
    prov = (getattr(layer, "metadata", None) or {}).get("napari_conformal") or {}
    index = prov.get("image_index")
    store = prov.get("store") or {}
    if index is None or store.get("identity") != ctx.workspace.store_identity:
        return
    try:
        ctx.workspace.index = int(index)
    except ConformalError:
        pass
