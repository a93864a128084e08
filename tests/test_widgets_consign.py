"""GUI tests of the CONSIGN explorer (real napari viewer under Xvfb via pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_data import assert_same, binary_store, calibrated

from napari_conformal.api import calibrate
from napari_conformal.core.consign import label_regions, make_box, principal_maps, segment
from napari_conformal.core.consign.calibrator import quantile_level_for
from napari_conformal.core.consign.members import sample_members
from napari_conformal.core.methods.base import make_method

pytestmark = pytest.mark.gui


def test_levels_coefficients_regions_directions_and_members(make_napari_viewer, qtbot, tmp_path):
    from napari_conformal._widgets.consign_explorer import ConsignExplorer

    viewer = make_napari_viewer(show=True)
    explorer = ConsignExplorer(viewer)
    viewer.window.add_dock_widget(explorer)
    store = binary_store(tmp_path / "b.zarr")
    result, cal, test = calibrated(store, "consign", alpha=0.2, nu=0.8, k=3)
    ws = explorer.workspace
    ws.publish(store, result, test)

    def settled(*keys: str) -> None:
        qtbot.waitUntil(
            lambda: explorer.settled() and all(explorer.layers.get(k) is not None for k in keys),
            timeout=60_000,
        )

    settled("consign:member", "consign:always", "consign:possibly", "consign:u1", "consign:u3")
    i = test[0]
    method = make_method("consign", k=3)  # independent of the explorer's objects
    basis = method.prepare(store.image(i), store.samples(i))

    def expected_box(alpha: float):
        return make_box(basis, quantile_level_for(alpha))

    def check_set(alpha: float, lam: float) -> None:
        box = expected_box(alpha)
        lo, hi = (t.numpy() for t in box.bounds(lam))
        c = explorer.coefficients
        assert np.all(c >= lo - 1e-12) and np.all(c <= hi + 1e-12)
        for j, slider in enumerate(explorer.coefficient_sliders):
            assert slider.minimum() == pytest.approx(lo[j]) and slider.maximum() == pytest.approx(hi[j])
        assert_same(explorer.layers.get("consign:member").data, segment(basis, c).numpy())
        regions = label_regions(basis, box, lam)
        assert_same(explorer.layers.get("consign:always").data.astype(bool), regions.always[1].numpy())
        assert_same(explorer.layers.get("consign:possibly").data.astype(bool), regions.possibly[1].numpy())
        prov = explorer.layers.get("consign:member").metadata["napari_conformal"]
        assert prov["method"] == "consign" and prov["lambda_hat"] == lam and prov["alpha"] == alpha

    lam0 = result.lambda_hat
    centre = expected_box(0.2).centre.numpy()
    assert np.allclose(explorer.coefficients, centre)
    check_set(0.2, lam0)
    maps = principal_maps(basis).numpy()
    for j in range(3):
        assert_same(explorer.layers.get(f"consign:u{j + 1}").data, maps[j, 1])

    # coefficient sliders: the member is argmax(μ + Σ c_k u_k) for the slider values
    lo, hi = (t.numpy() for t in expected_box(0.2).bounds(lam0))
    for j, frac in ((0, 0.9), (1, 0.1), (2, 0.75)):
        explorer.set_coefficient(j, lo[j] + frac * (hi[j] - lo[j]))
        explorer.flush()
        assert explorer.coefficients[j] == pytest.approx(lo[j] + frac * (hi[j] - lo[j]), rel=1e-3)
        assert_same(explorer.layers.get("consign:member").data, segment(basis, explorer.coefficients).numpy())
    # dragging: the last value is drawn
    for v in np.linspace(lo[0], hi[0], 7):
        explorer.set_coefficient(0, float(v))
    qtbot.waitUntil(explorer.settled, timeout=10_000)
    assert explorer.coefficients[0] == pytest.approx(hi[0], rel=1e-3)
    assert_same(explorer.layers.get("consign:member").data, segment(basis, explorer.coefficients).numpy())

    explorer.n_spin.setValue(6)
    explorer.seed_spin.setValue(4)
    explorer.draw_members()
    assert_same(
        explorer.layers.get("consign:members").data,
        sample_members(basis, expected_box(0.2), lam0, 6, 4).numpy(),
    )

    # ν below the calibrated one: read from the kept curves
    explorer.levels.nu_slider.setValue(0.7)
    explorer.flush()
    lam = result.lambda_at(0.2, ws.nu)
    check_set(0.2, lam)
    assert_same(
        explorer.layers.get("consign:members").data,
        sample_members(basis, expected_box(0.2), lam, 6, 4).numpy(),
    )

    # another α: a background coverage search at that α's box; λ̂ equals a fresh calibration at (α, ν)
    explorer.levels.alpha_slider.setValue(0.3)
    settled()
    assert explorer.layers.get("consign:member").metadata["napari_conformal"]["alpha"] == ws.alpha
    fresh = calibrate(store, "consign", alpha=ws.alpha, nu=ws.nu, k=3, cal_indices=cal).lambda_hat
    assert ws.lambda_hat("consign") == fresh
    check_set(ws.alpha, fresh)

    screenshot = viewer.screenshot(canvas_only=False, flash=False)
    assert screenshot[..., :3].std() > 5
