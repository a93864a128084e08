"""The viewer as a clinician meets it: every dock open, one method in focus, the guarantee in words.

Real napari viewers under Xvfb (pytest-xvfb, a 1600×1000 screen, see ``[tool.pytest.ini_options]``),
docks added the way the Plugins menu adds them, stores written to disk with float16 samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from _widget_data import FAST_RWCP, calibrated, multiclass_store

from napari_conformal.io.store import create_store
from napari_conformal.testing.synthetic import binary_blobs_dataset

pytestmark = pytest.mark.gui

PLUGIN = "napari-conformal"
SCREEN = (1600, 1000)


def _names() -> list[str]:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    return [w.display_name for w in manifest.contributions.widgets]


def _float16_store(path, n=16, shape=(32, 32), seed=0):
    """A binary store whose samples are float16 on disk, as real models write them."""
    images, samples, labels = binary_blobs_dataset(n, shape, n_samples=6, seed=seed)
    return create_store(
        path, images, samples.astype(np.float16), labels, label_names=["background", "hippocampus"]
    )


@pytest.fixture
def docks(make_napari_viewer, qtbot):
    """A shown viewer with every plugin dock added as the Plugins menu adds them (no tabify argument)."""
    viewer = make_napari_viewer(show=True)
    widgets = {}
    for name in _names():
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        widgets[name] = widget
    qtbot.wait(50)
    return viewer, widgets


def _dock(widget):
    from napari_conformal._widgets._explorer import _dock_of

    return _dock_of(widget)


def _bring_forward(qtbot, widget) -> None:
    from napari_conformal._widgets._explorer import raise_dock

    raise_dock(widget)
    qtbot.waitUntil(
        lambda: getattr(widget, "in_front", True) and not _dock(widget).visibleRegion().isEmpty(),
        timeout=5_000,
    )


def _settle(qtbot, widgets, timeout=120_000) -> None:
    from napari_conformal._widgets._explorer import ExplorerBase

    explorers = [w for w in widgets if isinstance(w, ExplorerBase)]
    qtbot.waitUntil(lambda: all(w.settled() for w in explorers), timeout=timeout)


def _widget_of(widgets, prefix):
    return next(w for name, w in widgets.items() if name.startswith(prefix))


def test_every_dock_from_the_plugins_menu_fits_the_screen_tabbed(docks, qtbot):
    """Every dock (six) added one by one, as the Plugins menu does, is tabbed: the window fits 1600×1000."""
    viewer, widgets = docks
    window = viewer.window._qt_window
    qtbot.wait(100)
    assert len(widgets) == 6  # calibration, four explorers and panels, Build store
    dock_list = [_dock(w) for w in widgets.values()]
    first = dock_list[0]
    tabbed = set(map(id, window.tabifiedDockWidgets(first)))
    assert tabbed == {id(d) for d in dock_list[1:]}, [d.windowTitle() for d in dock_list]
    frame = window.frameGeometry()
    assert frame.height() <= SCREEN[1] and frame.width() <= SCREEN[0], (frame.width(), frame.height())
    # the calibration dock, what a user does first, is the tab in front; every dock is at least 380 px wide
    assert widgets[_names()[0]].isVisible() and not first.visibleRegion().isEmpty()
    assert all(w.minimumWidth() >= 380 for w in widgets.values())
    # and nothing in a dock is wider than the dock: no control cut off at the right edge
    from qtpy.QtWidgets import QScrollArea

    for name, w in widgets.items():
        _bring_forward(qtbot, w)
        scroll = w.findChild(QScrollArea)
        need = scroll.widget().minimumSizeHint().width()
        assert need <= scroll.viewport().width(), (name, need, scroll.viewport().width())


def test_one_method_in_focus_each_explorer_on_top_and_others_hidden(docks, qtbot, tmp_path):
    """The explorer in front shows its own layers on top; another explorer's stay hidden until its tab is."""
    viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    rwcp = _widget_of(widgets, "RW-CP explorer")
    store = _float16_store(tmp_path / "f16.zarr")
    result, _cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    rw_result, _, _ = calibrated(store, "rwcp", alpha=0.2, params=FAST_RWCP)
    ws = consign.workspace
    ws.publish(store, result, test)
    ws.add_session(rw_result)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    layers = consign.layers
    own = [layer for key, layer in layers.items() if layers.owner(key) == consign.owner]
    assert own and all(layer.visible for layer in own if "direction" not in layer.name)
    # nothing of RW-CP drawn over CONSIGN's set while CONSIGN is in front
    assert all(not layer.visible for key, layer in layers.items() if layers.owner(key) == rwcp.owner)
    top = list(viewer.layers)[-len(own) :]
    assert {id(x) for x in top} == {id(x) for x in own}, [x.name for x in viewer.layers]

    member = layers.get("consign:member")
    member.visible = False  # the user hides one of CONSIGN's layers
    _bring_forward(qtbot, rwcp)
    _settle(qtbot, widgets.values())
    rw_own = [layer for key, layer in layers.items() if layers.owner(key) == rwcp.owner]
    assert layers.get("set:rwcp") is not None and layers.get("set:rwcp").visible
    assert all(not layer.visible for layer in own)  # CONSIGN's hidden now
    assert {id(x) for x in list(viewer.layers)[-len(rw_own) :]} == {id(x) for x in rw_own}
    assert layers.get("set:crc") is None  # companions are off until ticked

    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    assert not member.visible  # the user's choice is kept
    assert layers.get("consign:possibly").visible and not layers.get("set:rwcp").visible


def test_guarantee_in_words_and_the_note_when_the_set_is_the_models_own(docks, qtbot, tmp_path):
    """Each explorer states its guarantee; at λ̂ = 0 it says the set is the model's own segmentation."""
    viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    store = _float16_store(tmp_path / "g.zarr")
    result, _cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    ws = consign.workspace
    ws.publish(store, result, test)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    text = consign.banner.text()
    assert "With probability ≥ 80 %" in text and "80 %" in text.split("segmentations", 1)[1], text
    # ν low enough that the model's own segmentation is accurate enough on every calibration image
    ws.nu = 0.05
    _settle(qtbot, widgets.values())
    lam = ws.session("consign").lambda_hat(ws.alpha, ws.nu)
    assert lam == 0.0
    assert "the set is the model's own segmentation" in consign.banner.text(), consign.banner.text()
    # the directions are the samples' principal axes, the same at every level; the sets carry α and ν
    names = [
        n for n in (layer.name for layer in viewer.layers) if n.startswith("CONSIGN") and "direction" not in n
    ]
    assert len(names) >= 3 and all("ν=0.05" in n and "α=0.2" in n for n in names), names


def test_layer_names_carry_method_structure_and_levels_and_members_are_not_editable(docks, qtbot, tmp_path):
    viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    store = multiclass_store(tmp_path / "m.zarr")
    result, _cal, test = calibrated(store, "consign", alpha=0.3, nu=0.6, k=3)
    ws = consign.workspace
    ws.publish(store, result, test)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    layers = consign.layers
    possibly = layers.get("consign:possibly")
    assert possibly.name.startswith("CONSIGN") and "wall" in possibly.name and "α=0.3" in possibly.name
    ws.nu = 0.5  # a ν change renames (and redraws) CONSIGN's layers at once
    _settle(qtbot, widgets.values())
    assert "ν=0.5" in layers.get("consign:member").name and "ν=0.5" in possibly.name
    consign.draw_members()
    _settle(qtbot, widgets.values())
    members = next(layer for key, layer in layers.items() if key.endswith("members"))
    for layer in (members, layers.get("consign:member"), possibly):
        assert not layer.editable and layer.mode == "pan_zoom", layer.name
    viewer.layers.selection.active = members
    consign.n_spin.setValue(5)  # other members: napari makes a layer editable when its data is replaced
    consign.draw_members()
    _settle(qtbot, widgets.values())
    assert members.data.shape[0] == 5 and not members.editable and members.mode == "pan_zoom"
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2
    assert not members.editable


@pytest.mark.filterwarnings("ignore:Contours are not displayed during 3D rendering")
def test_3d_shows_surfaces_and_2d_contours(docks, qtbot, tmp_path):
    """In 3D, sets are filled labels and maps iso-surfaces at a meaningful level, not a MIP block."""
    from napari_conformal._widgets._layers import iso_level

    viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    images, samples, labels = binary_blobs_dataset(10, (10, 20, 20), n_samples=6, seed=1)
    store = create_store(tmp_path / "v.zarr", images, samples.astype(np.float16), labels)
    result, _cal, test = calibrated(store, "consign", alpha=0.25, nu=0.8, k=3)
    consign.workspace.publish(store, result, test)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    layers = consign.layers
    viewer.dims.ndisplay = 3
    _settle(qtbot, widgets.values())
    assert layers.get("consign:possibly").contour == 0
    direction = layers.get("consign:u1")
    assert direction.rendering == "iso"
    lo, hi = direction.contrast_limits
    assert lo < 0 < hi and direction.iso_threshold == pytest.approx(hi / 2)  # not 0, where noise crosses
    assert iso_level((0.0, 1.0)) == 0.5
    assert layers.get("image").rendering == "attenuated_mip"
    viewer.dims.ndisplay = 2
    assert layers.get("consign:possibly").contour == 1 and direction.rendering == "mip"


def test_only_the_explorer_in_front_redraws(docks, qtbot, tmp_path):
    """An α move redraws the dock in front; a tab behind waits and draws when it comes forward."""
    _viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    pixel = _widget_of(widgets, "Pixel-wise")
    store = _float16_store(tmp_path / "r.zarr")
    result, _cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    ws = consign.workspace
    ws.publish(store, result, test)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    assert not pixel.in_front
    before_front, before_behind = consign.redraw_count, pixel.redraw_count
    for alpha in (0.3, 0.25, 0.22):  # a slider drag: the last value is what is drawn
        ws.alpha = alpha
    _settle(qtbot, widgets.values())
    assert consign.redraw_count > before_front
    assert pixel.redraw_count == before_behind
    assert "α=0.22" in consign.layers.get("consign:member").name
    _bring_forward(qtbot, pixel)
    _settle(qtbot, widgets.values())
    assert pixel.redraw_count > before_behind


def test_a_new_store_is_fitted_to_the_view(docks, qtbot, tmp_path):
    """Opening a store of another size (the 512² nuclei after a 32² store) fits it to the canvas."""
    viewer, widgets = docks
    consign = _widget_of(widgets, "CONSIGN explorer")
    small = _float16_store(tmp_path / "small.zarr", n=10, shape=(32, 32))
    result, _cal, test = calibrated(small, "consign", alpha=0.25, nu=0.8, k=3)
    consign.workspace.publish(small, result, test)
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    big = _float16_store(tmp_path / "big.zarr", n=10, shape=(200, 300), seed=2)
    result, _cal, test = calibrated(big, "consign", alpha=0.25, nu=0.8, k=3)
    consign.workspace.publish(big, result, test)
    _settle(qtbot, widgets.values())
    centre = np.asarray(viewer.camera.center)[-2:]
    assert np.allclose(centre, [99.5, 149.5], atol=1.0), centre
    # the whole image is on the canvas: the zoom shows at least its larger side
    canvas = viewer.window._qt_viewer.canvas.size
    assert viewer.camera.zoom * 300 <= max(canvas) + 1


def test_keyboard_shortcuts_step_images_members_and_companions(docks, qtbot, tmp_path):
    from app_model.types import KeyBinding

    from napari_conformal._widgets._context import SHORTCUTS

    viewer, widgets = docks
    rwcp = _widget_of(widgets, "RW-CP explorer")
    consign = _widget_of(widgets, "CONSIGN explorer")
    store = _float16_store(tmp_path / "k.zarr")
    result, _cal, test = calibrated(store, "rwcp", alpha=0.2, params=FAST_RWCP)
    ws = rwcp.workspace
    ws.publish(store, result, test)
    _bring_forward(qtbot, rwcp)
    _settle(qtbot, widgets.values())

    def press(key: str) -> None:
        viewer.keymap[KeyBinding.from_str(key)](viewer)

    assert all(KeyBinding.from_str(key) in viewer.keymap for key in SHORTCUTS)  # all installed
    assert ws.index == test[0]
    press("Alt-Right")
    assert ws.index == test[1]
    press("Alt-Left")
    press("Alt-Left")  # wraps to the last calibration image
    assert ws.index == list(ws.cal_indices)[-1]
    press("Alt-Right")
    assert ws.index == test[0]

    assert rwcp.layers.get("set:crc") is None
    press("Alt-C")
    _settle(qtbot, widgets.values())
    assert rwcp.layers.get("set:crc") is not None and rwcp.layers.get("set:crc").visible
    press("Alt-C")
    _settle(qtbot, widgets.values())
    crc = rwcp.layers.get("set:crc")
    assert crc is None or not crc.visible  # unticked: gone from the canvas

    c_result, _, _ = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    ws.add_session(c_result)
    ws.nu = 0.8
    _bring_forward(qtbot, consign)
    _settle(qtbot, widgets.values())
    consign.n_spin.setValue(4)
    consign.draw_members()
    _settle(qtbot, widgets.values())
    assert any(key.endswith("members") for key, _ in consign.layers.items()), consign.status.text()
    step0 = viewer.dims.current_step[0]
    press("Shift-Right")
    assert viewer.dims.current_step[0] == (step0 + 1) % 4
    press("Shift-Left")
    press("Shift-Left")
    assert viewer.dims.current_step[0] == (step0 - 1) % 4


def test_calibration_comes_forward_with_progress_and_explorers_say_calibrating(docks, qtbot, tmp_path):
    _viewer, widgets = docks
    calib = widgets[_names()[0]]
    consign = _widget_of(widgets, "CONSIGN explorer")
    store = _float16_store(tmp_path / "p.zarr", n=30)
    _bring_forward(qtbot, consign)  # the user looks at an explorer when pressing Run elsewhere
    seen_progress: list[tuple[int, int, str]] = []
    calib.progress_bar.valueChanged.connect(
        lambda v: seen_progress.append((v, calib.progress_bar.maximum(), calib.progress_label.text()))
    )
    banners: list[str] = []
    consign.workspace.calibrating.connect(banners.append)
    calib.store_edit.setText(str(store.path))
    calib.method_combo.setCurrentIndex(calib.method_combo.findData("consign"))
    calib.alpha_spin.setValue(0.2)
    calib.nu_spin.setValue(0.8)
    calib.run()
    qtbot.waitUntil(lambda: not _dock(calib).visibleRegion().isEmpty(), timeout=5_000)  # its tab came forward
    qtbot.waitUntil(lambda: calib.worker is None, timeout=120_000)
    assert calib.calibration is not None, calib.status.text()
    assert banners and banners[0].startswith("Calibrating"), banners
    assert seen_progress, "the progress bar never moved"
    maxima = {m for _, m, _ in seen_progress}
    assert 15 in maxima, maxima  # images done out of the calibration images (half of 30)
    assert any("images read and prepared" in text for _, _, text in seen_progress), seen_progress[-3:]
    assert any("left" in text for _, _, text in seen_progress)
    _settle(qtbot, widgets.values())
    qtbot.waitUntil(lambda: consign.in_front, timeout=10_000)  # its method's explorer comes forward
    assert "With probability" in consign.banner.text()


def test_no_combining_hat_and_errors_are_one_full_line(docks, qtbot, tmp_path):
    """No λ̂ with a combining circumflex anywhere in the GUI (it lands on the wrong glyph); error
    notifications keep the whole message on one line (a toast shows one line)."""
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QAbstractButton, QGroupBox, QLabel

    from napari_conformal._widgets._display import notify_error
    from napari_conformal.errors import ConformalError

    viewer, widgets = docks
    store = _float16_store(tmp_path / "h.zarr")
    result, _cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    ws = _widget_of(widgets, "CONSIGN explorer").workspace
    ws.publish(store, result, test)
    for w in widgets.values():
        _bring_forward(qtbot, w)
        _settle(qtbot, widgets.values())
    texts = [layer.name for layer in viewer.layers]
    for w in widgets.values():
        for child in w.findChildren((QLabel, QAbstractButton, QGroupBox)):
            texts.append(child.title() if isinstance(child, QGroupBox) else child.text())
            texts.append(child.toolTip())
    assert len(texts) > 50
    bad = [t for t in texts if "\u0302" in t]
    assert not bad, bad

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    message = "image 0: the 'efficientnet-lite0' features need the packages\nefficientnet-lite-pytorch"
    shown = notify_error(ConformalError(message))
    assert "\n" not in shown and shown.endswith("efficientnet-lite-pytorch")
    assert any(m.endswith("need the packages efficientnet-lite-pytorch") and "\n" not in m for m in seen), (
        seen
    )
