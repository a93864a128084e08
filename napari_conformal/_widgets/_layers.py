"""The plugin's own layers in a viewer, tracked by identity, so a result never overwrites a user's layer."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

__all__ = ["ResultLayers", "layer_kind", "set_colormap"]


def set_colormap(layer: Any, colour: str) -> None:
    """Draw label 1 of a labels layer in ``colour`` (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})


def iso_level(contrast_limits: tuple[float, float]) -> float:
    """The level of a map's 3D surface: the middle of its contrast range.

    A signed map (a direction, limits ``(-b, b)``) would have its middle at 0, where every voxel
    of noise crosses; it is drawn at ``b / 2``, the voxels the direction pushes strongly.
    """
    lo, hi = (float(v) for v in contrast_limits)
    if lo < 0.0 < hi:
        return 0.5 * hi
    return lo + 0.5 * (hi - lo)


def layer_kind(layer: Any) -> str:
    """``"labels"`` or ``"image"`` (the two layer types the plugin makes), else the class name."""
    from napari.layers import Image, Labels

    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Image):
        return "image"
    return type(layer).__name__.lower()


class ResultLayers:
    """The layers the plugin created in one viewer, by key.

    :meth:`show` updates the layer it created earlier for a key (if the user
    has not deleted it) and otherwise adds a new one; napari makes new names
    unique, so a result never replaces a layer it did not create. Layers asked
    for with ``contour=True`` are drawn as contours in 2D views and as filled
    (iso-categorical) labels in 3D views.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._layers: dict[str, Any] = {}
        self._contoured: set[str] = set()
        self._colours: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        self._parked: dict[str, bool] = {}  # visibility of layers hidden while another explorer has the focus
        self._readonly: set[str] = set()
        self.focused: str | None = None
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    def get(self, key: str) -> Any | None:
        """The layer created for ``key`` if it is still in the viewer."""
        layer = self._layers.get(key)
        viewer = self.viewer
        if layer is None or viewer is None or layer not in viewer.layers:
            return None
        return layer

    def owns(self, layer: Any) -> bool:
        """Whether ``layer`` was created by the plugin (by identity)."""
        return any(layer is own for own in self._layers.values())

    def items(self) -> list[tuple[str, Any]]:
        """``(key, layer)`` of the plugin's layers still in the viewer."""
        return [(k, layer) for k in list(self._layers) if (layer := self.get(k)) is not None]

    def _contour_value(self) -> int:
        viewer = self.viewer
        return 1 if viewer is None or viewer.dims.ndisplay == 2 else 0

    def _on_ndisplay(self, event: Any = None) -> None:
        three_d = self._contour_value() == 0
        for key, layer in self.items():
            if key in self._contoured:
                layer.contour = self._contour_value()
            if key in self._readonly:  # napari resets a layer's editability when the view changes
                layer.editable = False
            if layer_kind(layer) == "image" and key != "image":
                # maps over a volume: a surface at their mid level in 3D, not a bright block of maxima
                layer.rendering = "iso" if three_d else "mip"
                if three_d:
                    layer.iso_threshold = iso_level(layer.contrast_limits)
            elif key == "image":
                layer.rendering = "attenuated_mip" if three_d else "mip"

    def owner(self, key: str) -> str | None:
        """The explorer that draws ``key`` (None: shared, e.g. the image)."""
        return self._owners.get(key)

    def focus(self, owner: str) -> None:
        """Give ``owner``'s layers the view: theirs on top and shown as they were, the other explorers' hidden.

        Layers of another explorer keep their visibility in memory and get it back when that
        explorer takes the focus again; the shared image layer is left alone.
        """
        viewer = self.viewer
        if viewer is None or self.focused == owner:
            return
        self.focused = owner
        mine = []
        for key, layer in self.items():
            who = self._owners.get(key)
            if who is None:
                continue
            if who == owner:
                if key in self._parked:
                    layer.visible = self._parked.pop(key)
                mine.append(layer)
            elif key not in self._parked:
                self._parked[key] = bool(layer.visible)
                layer.visible = False
        self._raise(mine)

    def _raise(self, layers: list[Any]) -> None:
        """Move ``layers`` above every other layer: maps (images) first, then sets (labels) on top."""
        viewer = self.viewer
        if viewer is None:
            return
        ordered = sorted(layers, key=lambda layer: (layer_kind(layer) == "labels", viewer.layers.index(layer)))
        for layer in ordered:
            viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))

    def show(
        self,
        key: str,
        kind: str,
        data: np.ndarray,
        *,
        name: str,
        metadata: dict[str, Any],
        scale: Iterable[float] | None = None,
        contour: bool = False,
        colour: str | None = None,
        owner: str | None = None,
        editable: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Add or update the layer of ``key``.

        Parameters
        ----------
        key : str
            The plugin's identifier of the layer (e.g. ``"set:rwcp"``).
        kind : {"image", "labels"}
            Layer type.
        data : ndarray
            New data.
        name : str
            Layer name (a new layer's name is made unique by napari; an updated
            layer is renamed only when ``name`` changes).
        metadata : dict
            Full layer metadata (``{"napari_conformal": provenance}``).
        scale : sequence of float, optional
            Per-axis scale (the store spacing; leading non-spatial axes get 1).
        contour : bool
            Labels only: contours in 2D views.
        colour : str, optional
            Labels only: colour of label 1.
        owner : str, optional
            The explorer the layer belongs to (see :meth:`focus`); None for shared layers.
        editable : bool
            Labels only: whether painting is allowed (results are not: False keeps a click from
            painting a "member").
        **kwargs
            Passed to ``add_image``/``add_labels`` for a new layer only.
        """
        viewer = self.viewer
        if viewer is None:
            return None
        layer = self.get(key)
        if layer is not None and layer_kind(layer) != kind:
            layer = None
        if scale is not None:
            scale = tuple(float(s) for s in scale)
        if layer is None:
            add = viewer.add_labels if kind == "labels" else viewer.add_image
            # a private copy: later updates overwrite it in place, which must never touch an array
            # the caller still uses (e.g. a map cached in a prepared image)
            data = np.array(data, copy=True)
            if owner is not None and self.focused is not None and owner != self.focused:
                self._parked[key] = bool(kwargs.pop("visible", True))  # drawn for a hidden explorer
                kwargs["visible"] = False
            layer = add(data, name=name, metadata=metadata, scale=scale, **kwargs)
            self._layers[key] = layer
            self._colours.pop(key, None)
            if owner is not None:
                self._owners[key] = owner
                if kind == "image":  # a new map goes under the owner's sets, so contours stay readable
                    self._raise([lay for k, lay in self.items() if self._owners.get(k) == owner])
            if kind == "labels" and not editable:
                layer.mode = "pan_zoom"
                layer.editable = False
                self._readonly.add(key)
            if kind == "image" and key != "image" and self._contour_value() == 0:
                layer.rendering = "iso"
                layer.iso_threshold = iso_level(layer.contrast_limits)
        else:
            reset = kind == "image" and (
                layer.data.shape != data.shape or kwargs.get("contrast_limits") is None
            )
            if scale is not None and tuple(layer.scale) != scale:
                layer.scale = scale
            current = layer.data
            if (
                isinstance(current, np.ndarray)
                and current.shape == data.shape
                and current.dtype == data.dtype
                and current.flags.writeable
            ):
                # our own array: overwrite it and re-slice, which skips the viewer-wide dims update
                # that replacing the data triggers (the extent is unchanged)
                np.copyto(current, data)
                layer.refresh(extent=False)
            else:
                layer.data = np.array(data, copy=True)  # private, as for a new layer
            layer.metadata = metadata
            if kind == "image":
                if "contrast_limits" in kwargs:
                    layer.contrast_limits = kwargs["contrast_limits"]
                elif reset:
                    layer.reset_contrast_limits()
                if key != "image" and self._contour_value() == 0:
                    layer.iso_threshold = iso_level(layer.contrast_limits)
            if layer.name != name:
                layer.name = name
        if kind == "labels" and colour is not None and self._colours.get(key) != colour:
            set_colormap(layer, colour)
            self._colours[key] = colour
        if kind == "labels" and contour:
            self._contoured.add(key)
            if layer.contour != self._contour_value():  # setting it re-renders: only on change
                layer.contour = self._contour_value()
        if key in self._readonly and layer.editable:  # napari makes a layer editable when its data is replaced
            layer.mode = "pan_zoom"
            layer.editable = False
        return layer

    def remove(self, key: str) -> None:
        """Remove the layer of ``key`` from the viewer (if it is still there)."""
        layer = self.get(key)
        viewer = self.viewer
        if layer is not None and viewer is not None:
            viewer.layers.remove(layer)
        self._layers.pop(key, None)
        self._contoured.discard(key)
        self._colours.pop(key, None)
        self._owners.pop(key, None)
        self._parked.pop(key, None)
        self._readonly.discard(key)
