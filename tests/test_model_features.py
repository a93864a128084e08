"""RW-CP features from a network's own layers (forward hooks) and EfficientNet-Lite0 on an enlarged image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_conformal.core.methods.base import make_method
from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.core.rwcp.diffusion import diffuse
from napari_conformal.core.rwcp.features import EfficientNetLite0Extractor, _stride_taps, make_extractor
from napari_conformal.core.rwcp.graph import transition_matrix
from napari_conformal.core.rwcp.model_features import (
    ModelLayerExtractor,
    align_to_image,
    default_layer,
    state_digest,
)
from napari_conformal.errors import ConformalError, ParameterError


class Tiny(nn.Module):
    """conv (4 ch) → relu → ``mid`` conv (3 ch) → ``down`` stride-2 conv (5 ch) → ``head`` 1×1 conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.mid = nn.Conv2d(4, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.act(self.stem(x)))
        self.down(h)  # a branch whose output only the hooks see
        return self.head(self.drop(h))


class PadNet(nn.Module):
    """Pads the input at the far end to a multiple of 4 (as a U-Net does) and returns the padded map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_y, pad_x = (-x.shape[-2]) % 4, (-x.shape[-1]) % 4
        x = F.pad(x, (0, pad_x, 0, pad_y), value=-7.0)
        return self.conv(x)


def _image(shape=(10, 7), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_hooked_layer_output_is_the_feature_map():
    net = Tiny()
    img = _image()
    fm = ModelLayerExtractor(net, "mid", grid_stride=1)(img)
    assert fm.features.shape == (3, 10, 7) and fm.grid_shape == img.shape
    with torch.no_grad():
        expected = net.mid(net.act(net.stem(torch.from_numpy(img)[None, None])))[0]
    np.testing.assert_allclose(fm.features, F.normalize(expected, dim=0).numpy(), atol=1e-6)


def test_default_is_the_input_of_the_last_layer():
    net = Tiny()
    assert default_layer(net) == "head"
    img = _image()
    fm = ModelLayerExtractor(net, grid_stride=1)(img)
    with torch.no_grad():  # eval mode: the dropout in front of the head is off
        expected = net.mid(net.act(net.stem(torch.from_numpy(img)[None, None])))[0]
    np.testing.assert_allclose(fm.features, F.normalize(expected, dim=0).numpy(), atol=1e-6)


def test_layers_are_concatenated_each_normalised_and_coarse_ones_aligned():
    net = Tiny()
    img = _image((10, 7))
    ext = ModelLayerExtractor(net, "mid, down", grid_stride=1)
    fm = ext(img)
    assert fm.features.shape == (3 + 5, 10, 7)
    np.testing.assert_allclose(np.linalg.norm(fm.features[:3], axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fm.features[3:], axis=0), 1.0, atol=1e-5)
    # the stride-2 layer (5 × 4 cells) is interpolated to the 10 × 7 pixel grid
    with torch.no_grad():
        h = net.mid(net.act(net.stem(torch.from_numpy(img)[None, None])))
        down = net.down(h)
    assert down.shape[-2:] == (5, 4)
    up = F.interpolate(down, size=(10, 7), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(fm.features[3:], F.normalize(up, dim=0).numpy(), atol=1e-5)


def test_padding_cells_are_cropped_and_the_grid_is_the_node_grid():
    img = _image((10, 7), seed=2)
    fm = ModelLayerExtractor(PadNet(), "conv", grid_stride=1)(img)  # the layer sees 12 × 8
    assert fm.grid_shape == (10, 7)
    # both channels equal the (positive-weight) pixel value; normalised: ±1/√2, never the padding
    sign = np.sign(img)
    np.testing.assert_allclose(fm.features[0], sign / np.sqrt(2), atol=1e-6)
    coarse = ModelLayerExtractor(PadNet(), "conv", grid_stride=2)(img)
    assert coarse.grid_shape == (5, 4)  # ⌈10/2⌉, ⌈7/2⌉ nodes, area-averaged from the cropped map
    cropped = align_to_image(torch.ones(2, 12, 8), (10, 7))
    assert tuple(cropped.shape) == (2, 10, 7)
    assert tuple(align_to_image(torch.ones(2, 3, 2), (10, 7)).shape) == (2, 3, 2)  # stride 4: ⌈10/4⌉, ⌈7/4⌉
    assert tuple(align_to_image(torch.ones(2, 7, 4), (52, 36)).shape) == (
        2,
        7,
        4,
    )  # stride 8 of a padded 56 × 40


def test_model_flags_restored_hooks_removed_and_bad_inputs_refused():
    net = Tiny().train()
    ModelLayerExtractor(net, "mid", grid_stride=1)(_image())
    assert net.training and net.drop.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(ConformalError, match="no layer 'nope'"):
        ModelLayerExtractor(net, "nope")
    with pytest.raises(ConformalError, match="TorchScript"):
        ModelLayerExtractor(torch.jit.script(PadNet()), "conv")
    with pytest.raises(ConformalError, match="3D feature model cannot run on a 2D image"):
        ModelLayerExtractor(net, "mid", spatial_dims=3)(_image())


def test_a_2d_network_on_a_volume_slice_by_slice():
    net = Tiny()
    vol = np.random.default_rng(3).normal(size=(4, 10, 7)).astype(np.float32)
    fm = ModelLayerExtractor(net, "mid", grid_stride=2, spatial_dims=2)(vol)
    assert fm.features.shape == (3, 2, 5, 4)
    per_slice = [ModelLayerExtractor(net, "mid", grid_stride=2)(vol[z]).features for z in range(4)]
    pooled = (np.stack(per_slice, axis=1).reshape(3, 2, 2, 5, 4)).mean(axis=2)
    pooled /= np.linalg.norm(pooled, axis=0, keepdims=True)
    np.testing.assert_allclose(fm.features, pooled, atol=1e-5)


def test_params_name_the_weights():
    a, b = Tiny(), Tiny()
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b.head.bias.add_(1.0)
    pa = ModelLayerExtractor(a, "mid").params()
    assert pa["name"] == "model" and pa["layers"] == ["mid"] and pa["model"].endswith("Tiny")
    assert pa["weights_blake2b"] != ModelLayerExtractor(b, "mid").params()["weights_blake2b"]


def test_rwcp_diffuses_over_the_hooked_features():
    """RW-CP with a user's network: the graph is built from the hooked layer, nothing else."""
    net = Tiny()
    img = _image((12, 9), seed=4)
    rng = np.random.default_rng(5)
    fg = rng.uniform(0.05, 0.95, size=img.shape)
    samples = np.stack([1 - fg, fg])[None].astype(np.float32)  # (T=1, L=2, *S)
    m = RWCPMethod(extractor=ModelLayerExtractor(net, "mid", grid_stride=1), k=5, n_step=3, device="cpu")
    got = m.prepare(img, samples).score
    feats = ModelLayerExtractor(net, "mid", grid_stride=1)(img)
    matrix = transition_matrix(torch.from_numpy(feats.nodes()), 5, 50.0, device="cpu")
    expected = diffuse(matrix, samples[0, 1].astype(np.float64), feats.grid_shape, 3).final
    np.testing.assert_allclose(got, expected, atol=1e-6)
    other = RWCPMethod(extractor=ModelLayerExtractor(net, "down", grid_stride=1), k=5, n_step=3, device="cpu")
    assert not np.allclose(other.prepare(img, samples).score, got)  # another layer, another map
    assert m.params()["features"] == "model"


def test_named_demo_model_from_the_options():
    m = make_method("rwcp", features="model", feature_model="demo:nuclei", feature_layer="up.2", device="cpu")
    p = m.extractor.params()
    assert p["model"] == "demo:nuclei" and p["layers"] == ["up.2"]
    again = make_method("rwcp", **m.params(), device="cpu")
    assert again.extractor.params() == p
    with pytest.raises(ConformalError, match="demo:<name>"):
        make_method("rwcp", features="model", feature_model="/some/file.pt")
    with pytest.raises(ConformalError, match="needs feature_model"):
        make_method("rwcp", features="model")
    with pytest.raises(ParameterError, match="feature_model does not apply"):
        make_method("rwcp", features="multiscale", feature_model="demo:nuclei")
    with pytest.raises(ParameterError, match="input_scale does not apply"):
        make_method("rwcp", features="multiscale", input_scale=2.0)


# ------------------------------------------------------------------------ EfficientNet-Lite0, enlarged


def test_automatic_input_scale():
    ext = EfficientNetLite0Extractor()
    assert ext.input_scale_for((52, 36)) == 2.0  # pixel grid: stride-4 cells of 2 pixels
    assert ext.input_scale_for((128, 128)) == 2.0  # 16384 > 4096 nodes → stride 2, cells of 2 pixels
    assert ext.input_scale_for((512, 512)) == 1.0  # stride-8 nodes: native cells (4 px) are finer
    assert ext.input_scale_for((128, 128, 128)) == 1.0  # stride-4 nodes
    assert ext.input_scale_for((640, 16)) == 1.6  # stride 2, but never beyond 1024 pixels a side
    assert EfficientNetLite0Extractor(input_scale=3.0).input_scale_for((52, 36)) == 3.0
    with pytest.raises(ConformalError, match="input_scale"):
        EfficientNetLite0Extractor(input_scale=0.5)


def test_enlarged_image_gives_feature_cells_of_at_most_two_pixels():
    """A hook on the stride-4 block sees ≥ S/2 cells per axis for a small slice (and S/4 without enlarging)."""
    img = _image((52, 36), seed=6)
    seen = {}
    for scale in (None, 1.0):
        ext = make_extractor("efficientnet-lite0", input_scale=scale)
        model = ext._load(torch.device("cpu"))
        tap = _stride_taps(model, (4,))[4]
        handle = model._blocks[tap].register_forward_hook(
            lambda mod, inp, out, key=scale: seen.__setitem__(key, tuple(out.shape[-2:]))
        )
        try:
            fm = ext(img, device="cpu")
        finally:
            handle.remove()
        assert fm.grid_shape == (52, 36)
    assert seen[None] == (26, 18)  # 2 pixels per cell
    assert seen[1.0] == (13, 9)  # the native slice: 4 pixels per cell
    native = make_extractor("efficientnet-lite0", input_scale=1.0)(img, device="cpu").features
    enlarged = make_extractor("efficientnet-lite0")(img, device="cpu").features
    assert not np.allclose(native, enlarged)
