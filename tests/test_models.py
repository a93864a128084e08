"""Sample generators (MC dropout, ensembles, TTA), model loading and the U-Net.

Expected values come from direct forward passes of the models written out in the test (softmax of an
eval-mode model, sigmoid of a known constant, flips undone by hand), never from the sampler itself.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from napari_conformal.errors import Cancelled, ConformalError
from napari_conformal.models import (
    EnsembleSampler,
    MCDropoutSampler,
    TTASampler,
    UNet,
    ensemble_samples,
    has_dropout,
    is_torchscript_file,
    load_model,
    load_state_dict,
    mc_dropout_samples,
    quantize_probabilities,
    save_state_dict,
    tta_samples,
)

# torch 2.13 marks TorchScript deprecated; loading TorchScript files is still a supported input
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(ndim: int = 2, n_classes: int = 3, dropout: float = 0.3, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(ndim, 1, n_classes, base_channels=4, depth=1, dropout=dropout)
    # non-trivial running statistics, so that batch statistics would give different outputs
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images_2d(n: int = 3, shape=(12, 10), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def eval_softmax(model: nn.Module, image: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(image)[None, None]), dim=1)[0].numpy()


class Recorder:
    """Forward hooks recording the training flag of every dropout and batch-norm module."""

    def __init__(self, model: nn.Module) -> None:
        self.dropout: set[bool] = set()
        self.bn: set[bool] = set()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.register_forward_hook(lambda mod, i, o: self.dropout.add(mod.training))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_hook(lambda mod, i, o: self.bn.add(mod.training))


# ----------------------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize(("ndim", "shape"), [(2, (13, 11)), (3, (5, 7, 9))])
def test_unet_keeps_any_spatial_size(ndim, shape):
    model = UNet(ndim, 1, 3, base_channels=2, depth=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 3, *shape)


def test_unet_dropout_placement():
    """Dropout at the bottleneck and the coarse decoder stages; the full-resolution stage only on request."""
    model = UNet(2, 1, 2, base_channels=2, depth=3, dropout=0.3)
    assert isinstance(model.bottom_drop, nn.Dropout2d) and model.bottom_drop.p == 0.3
    assert [isinstance(stage.drop, nn.Dropout2d) for stage in model.up] == [True, True, False]
    full = UNet(3, 1, 2, base_channels=2, depth=2, dropout=0.3, full_resolution_dropout=True)
    assert all(isinstance(stage.drop, nn.Dropout3d) for stage in full.up)
    element = UNet(2, 1, 2, base_channels=2, depth=2, dropout=0.3, dropout_mode="element")
    assert type(element.bottom_drop) is nn.Dropout


def test_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ndim"):
        UNet(4)
    with pytest.raises(ValueError, match="dropout"):
        UNet(2, dropout=1.0)
    with pytest.raises(ValueError, match="depth"):
        UNet(2, depth=0)


def test_unet_standardizes_its_input():
    """An affine change of intensities (a·x + b, a > 0) does not change the output."""
    model = tiny_unet()
    x = torch.randn(1, 1, 12, 10)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), model(3.0 * x + 7.0).numpy(), atol=1e-4)


# ----------------------------------------------------------------------------------------- MC dropout


def test_mc_dropout_shape_and_simplex():
    samples = mc_dropout_samples(tiny_unet(), images_2d(3), n_samples=5, device="cpu")
    assert samples.shape == (3, 5, 3, 12, 10)
    assert samples.dtype == np.float32
    assert np.all(samples >= 0) and np.all(samples <= 1)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)


def test_mc_dropout_really_varies_while_batch_norm_stays_in_eval():
    model = tiny_unet()
    rec = Recorder(model)
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = MCDropoutSampler(model, 8, device="cpu", batch_size=3)(images_2d(2))
    assert rec.dropout == {True}
    assert rec.bn == {False}
    assert samples.std(axis=1).max() > 1e-3  # the T samples differ
    assert not model.training and not any(m.training for m in model.modules())  # flags restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, bn_before[k]), k


def test_mc_dropout_with_zero_rate_equals_the_eval_model():
    """p = 0: every sample must equal softmax of the eval-mode model (BN uses running statistics)."""
    model = tiny_unet(dropout=0.0)
    model.extra = nn.Dropout(0.0)  # a dropout layer that drops nothing
    image = images_2d(1)[0]
    samples = MCDropoutSampler(model, 4, device="cpu")([image])[0]
    expected = eval_softmax(model, image)
    for t in range(4):
        np.testing.assert_allclose(samples[t], expected, atol=1e-6)


def test_train_mode_variant_uses_batch_statistics_and_restores_them():
    model = tiny_unet(dropout=0.0)
    model.extra = nn.Dropout(0.0)
    rec = Recorder(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = images_2d(1)[0]
    sampler = MCDropoutSampler(model, 3, device="cpu", train_mode=True)
    samples = sampler([image])[0]
    assert rec.bn == {True}
    assert sampler.name == "mc-dropout (train mode)"
    # batch statistics of identical copies differ from the perturbed running statistics
    assert np.abs(samples[0] - eval_softmax(model, image)).max() > 1e-3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics and counters restored
    assert not model.training


def test_mc_dropout_is_deterministic_with_a_seed_and_leaves_the_global_rng():
    model, images = tiny_unet(), images_2d(2)
    state = torch.random.get_rng_state()
    a = mc_dropout_samples(model, images, 6, seed=3, device="cpu")
    b = mc_dropout_samples(model, images, 6, seed=3, device="cpu")
    c = mc_dropout_samples(model, images, 6, seed=4, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_keys_make_an_images_samples_independent_of_its_position():
    model, images = tiny_unet(), images_2d(3)
    sampler = MCDropoutSampler(model, 4, device="cpu", seed=5)
    together = sampler(images, keys=[10, 11, 12])
    alone = sampler(images[2:], keys=[12])
    np.testing.assert_array_equal(together[2], alone[0])
    single = sampler.sample_image(images[1], key=11)
    np.testing.assert_array_equal(together[1], single)


def test_progress_and_cancel():
    model, images = tiny_unet(), images_2d(3)
    calls = []
    MCDropoutSampler(model, 2, device="cpu")(images, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 2

    model.train()  # the caller's flags must come back even after a cancel
    with pytest.raises(Cancelled):
        MCDropoutSampler(model, 4, device="cpu", batch_size=2)(images, should_stop=stop)
    assert all(m.training for m in model.modules())


def test_mc_dropout_refuses_a_model_without_dropout():
    model = nn.Conv2d(1, 2, 1)
    assert not has_dropout(model)
    with pytest.raises(ConformalError, match="no dropout"):
        MCDropoutSampler(model, 4)


def test_single_output_channel_is_a_binary_logit():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.0)

        def forward(self, x):
            return self.drop(torch.full_like(x, 0.7))

    samples = mc_dropout_samples(Constant(), images_2d(1, (4, 5)), 2, device="cpu")
    fg = 1.0 / (1.0 + math.exp(-0.7))
    assert samples.shape == (1, 2, 2, 4, 5)
    np.testing.assert_allclose(samples[..., 1, :, :], fg, rtol=1e-6)
    np.testing.assert_allclose(samples[..., 0, :, :], 1 - fg, rtol=1e-6)


def test_probability_outputs_are_checked():
    class Probs(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.drop = nn.Dropout(0.0)
            self.scale = scale

        def forward(self, x):
            half = torch.full_like(x, 0.5 * self.scale)
            return self.drop(torch.cat([half, half], dim=1))

    ok = mc_dropout_samples(Probs(1.0), images_2d(1, (3, 3)), 2, output="probabilities", device="cpu")
    np.testing.assert_allclose(ok, 0.5)
    with pytest.raises(ConformalError, match="sum to 1"):
        mc_dropout_samples(Probs(1.5), images_2d(1, (3, 3)), 2, output="probabilities", device="cpu")


def test_bad_inputs_are_named():
    model = tiny_unet()
    with pytest.raises(ConformalError, match="NaN"):
        mc_dropout_samples(model, [np.full((4, 4), np.nan, np.float32)], 2, device="cpu")
    with pytest.raises(ConformalError, match="expected shape"):
        mc_dropout_samples(model, [np.zeros(4, np.float32)], 2, device="cpu")
    with pytest.raises(ConformalError, match="n_samples"):
        MCDropoutSampler(model, 0)
    with pytest.raises(ConformalError, match="fewer keys"):
        mc_dropout_samples(model, images_2d(2), 2, keys=[1], device="cpu")
    with pytest.raises(ConformalError, match="non-negative"):
        mc_dropout_samples(model, images_2d(1), 2, keys=[-1], device="cpu")
    with pytest.raises(ConformalError, match="device"):
        MCDropoutSampler(model, 2, device="tpu")


def test_channel_axis_reads_multichannel_images():
    torch.manual_seed(0)
    model = UNet(2, 2, 2, base_channels=2, depth=1).eval()
    images = np.random.default_rng(0).normal(size=(2, 2, 8, 8)).astype(np.float32)
    samples = mc_dropout_samples(model, images, 3, channel_axis=0, device="cpu")
    assert samples.shape == (2, 3, 2, 8, 8)


# ----------------------------------------------------------------------------------------- ensembles


def test_ensemble_sample_k_is_member_k_in_eval_mode():
    models = [tiny_unet(seed=s) for s in range(3)]
    for m in models:
        m.train()
    images = images_2d(2)
    samples = ensemble_samples(models, images, device="cpu")
    assert samples.shape == (2, 3, 3, 12, 10)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    for k, m in enumerate(models):
        assert m.training  # restored
        np.testing.assert_allclose(samples[1, k], eval_softmax(m, images[1]), atol=1e-6)
        m.train()
    assert EnsembleSampler(models).name == "ensemble"
    with pytest.raises(ConformalError, match="non-empty list"):
        EnsembleSampler([])


# ----------------------------------------------------------------------------------------- TTA


class Pointwise(nn.Module):
    """Per-pixel logits (a 1×1 convolution): exactly flip-equivariant."""

    def __init__(self, ndim: int):
        super().__init__()
        torch.manual_seed(2)
        self.conv = (nn.Conv2d if ndim == 2 else nn.Conv3d)(1, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize(("ndim", "shape", "t"), [(2, (6, 5), 4), (3, (3, 4, 5), 8)])
def test_tta_undoes_every_flip(ndim, shape, t):
    """For a flip-equivariant model all T un-flipped samples coincide with the plain prediction."""
    model = Pointwise(ndim)
    image = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    samples = tta_samples(model, [image], device="cpu", batch_size=3)
    assert samples.shape == (1, t, 3, *shape)
    plain = eval_softmax(model, image)
    for k in range(t):
        np.testing.assert_allclose(samples[0, k], plain, atol=1e-6)


def test_tta_sample_is_the_flipped_back_prediction_of_the_flipped_image():
    model = tiny_unet()  # not flip-equivariant
    image = images_2d(1)[0]
    samples = TTASampler(model, flips=[(), (1,), (0, 1)], device="cpu")([image])[0]
    for k, axes in enumerate([(), (1,), (0, 1)]):
        flipped = np.flip(image, axes).copy() if axes else image
        expected = eval_softmax(model, flipped)
        if axes:
            expected = np.flip(expected, [a + 1 for a in axes])
        np.testing.assert_allclose(samples[k], expected, atol=1e-5)
    assert not np.allclose(samples[0], samples[1], atol=1e-4)
    with pytest.raises(ConformalError, match="beyond"):
        TTASampler(model, flips=[(2,)], device="cpu")([image])


# ----------------------------------------------------------------------------------------- loading


def test_state_dict_round_trip_float32_is_exact(tmp_path):
    model = tiny_unet()
    path = save_state_dict(model, tmp_path / "w.pt", dtype=None)
    loaded = load_model(path, lambda: UNet(2, 1, 3, base_channels=4, depth=1, dropout=0.3))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert not loaded.training


def test_state_dict_float16_round_trip(tmp_path):
    model = tiny_unet()
    path = save_state_dict(model, tmp_path / "w16.pt")
    raw = load_state_dict(path)
    assert all(v.dtype == torch.float16 for v in raw.values() if v.is_floating_point())
    loaded = load_model(path, lambda: UNet(2, 1, 3, base_channels=4, depth=1, dropout=0.3))
    assert next(loaded.parameters()).dtype == torch.float32
    image = images_2d(1)[0]
    np.testing.assert_allclose(eval_softmax(loaded, image), eval_softmax(model, image), atol=2e-2)


def test_nested_checkpoint_is_unwrapped(tmp_path):
    model = tiny_unet()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt", lambda: UNet(2, 1, 3, base_channels=4, depth=1, dropout=0.3))
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_torchscript_round_trip_and_mc_dropout(tmp_path):
    model = tiny_unet()
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    assert is_torchscript_file(path)
    loaded = load_model(path)
    image = images_2d(1)[0]
    np.testing.assert_allclose(eval_softmax(loaded, image), eval_softmax(model, image), atol=1e-6)
    assert has_dropout(loaded)
    a = MCDropoutSampler(loaded, 5, device="cpu", seed=1)([image])
    b = MCDropoutSampler(model, 5, device="cpu", seed=1)([image])
    assert a.std(axis=1).max() > 1e-3
    np.testing.assert_allclose(a, b, atol=1e-5)  # same dropout masks, same network


def test_loading_errors(tmp_path):
    model = tiny_unet()
    sd = save_state_dict(model, tmp_path / "w.pt")
    ts = tmp_path / "s.pt"
    torch.jit.script(model).save(str(ts))
    assert not is_torchscript_file(sd)
    with pytest.raises(ConformalError, match="factory"):
        load_model(sd)
    with pytest.raises(ConformalError, match="no factory"):
        load_model(ts, lambda: model)
    with pytest.raises(ConformalError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ConformalError, match="do not fit"):
        load_model(sd, lambda: UNet(2, 1, 2, base_channels=4, depth=1))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_state_dict_loading_never_unpickles_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(ConformalError, match="weights_only"):
        load_state_dict(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ConformalError):
        load_model(plain, lambda: tiny_unet())
    assert "this must never run" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- quantisation


def test_quantize_by_hand():
    probs = np.array([[0.1, 0.3, 0.6], [0.0, 0.375, 0.625], [1.0, 0.0, 0.0]])
    got = quantize_probabilities(probs, axis=1, denominator=4)
    # rint(1.2)=1, rint(2.4)=2 -> [1, 1, 2]/4; rint(1.5)=2, rint(2.5)=2 -> [0, 2, 2]/4
    np.testing.assert_array_equal(got, [[0.25, 0.25, 0.5], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_quantize_takes_the_excess_off_the_largest_class():
    probs = np.array([0.0, 0.375, 0.375, 0.25])  # rounds to 2 + 2 + 1 = 5 quarters
    got = quantize_probabilities(probs, axis=0, denominator=4)
    np.testing.assert_array_equal(got, [0.0, 0.25, 0.5, 0.25])


def test_quantized_samples_sum_to_exactly_one_in_float16():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(5, 3, 17, 13))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = quantize_probabilities(probs, axis=1)
    half = got.astype(np.float16)
    assert np.array_equal(half.astype(np.float32), got)  # exact in float16
    assert np.all(half.astype(np.float32).sum(axis=1) == 1.0)
    assert np.all(got >= 0)
    assert np.abs(got - probs).max() <= 3 / (2 * 2048) + 1e-12
    with pytest.raises(ConformalError, match="denominator"):
        quantize_probabilities(probs, axis=1, denominator=1)
