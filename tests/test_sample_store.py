"""``napari-conformal sample``: a tiny TorchScript model with dropout and batch norm, end to end.

Checked: MC-dropout samples really vary; batch norm is frozen on its running statistics (with a dropout
rate of 0 every sample is exactly the evaluation-mode output, and the statistics do not move); the
sliding window runs a model that only takes 8³ inputs on a larger volume and gives what the whole volume
gives; ensembles of state dicts with an architecture; a pickled module is refused.
"""

from __future__ import annotations

import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch
from _import_data import leftovers
from torch import nn

from napari_conformal.cli import main
from napari_conformal.io.store import open_store

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Tiny(nn.Module):
    """Pointwise 3-D segmentation net: conv → batch norm → ReLU → dropout → conv, 3 classes."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 6, 1)
        self.bn = nn.BatchNorm3d(6)
        self.drop = nn.Dropout(p)
        self.conv2 = nn.Conv3d(6, 3, 1)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(torch.relu(self.bn(self.conv1(x)))))


class FixedInput(nn.Module):
    """``Tiny`` that refuses every input but (1, 1, 8, 8, 8) windows (a model with a fixed input size)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 8 or x.shape[3] != 8 or x.shape[4] != 8:
            raise RuntimeError("this model takes 8x8x8 inputs")
        return self.inner(x)


def _expected(model: nn.Module, image_zyx: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(image_zyx[None, None].astype(np.float32)))
    return torch.softmax(out, dim=1)[0].numpy()


def _images(root, n=3, shape_xyz=(9, 11, 10), seed=0):
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    images = {}
    for k in range(n):
        img = rng.normal(size=shape_xyz).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), root / "img" / f"s{k}.nii.gz")
        nib.save(nib.Nifti1Image(rng.integers(0, 3, size=shape_xyz).astype(np.uint8), affine), root / "lab" / f"s{k}.nii.gz")
        images[f"s{k}"] = img.transpose(2, 1, 0)
    return images


@pytest.fixture
def scripted(tmp_path):
    def save(model: nn.Module, name: str = "model.pt"):
        path = tmp_path / name
        torch.jit.script(model).save(str(path))
        return path

    return save


def _sample(tmp_path, model_path, *extra, name="s.zarr"):
    out = tmp_path / name
    argv = ["sample", "--model", str(model_path), "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
            "--out", str(out), "--device", "cpu", "-q", *extra]  # fmt: skip
    return main(argv), out


def test_mc_dropout_varies_between_samples(tmp_path, scripted):
    torch.manual_seed(0)
    images = _images(tmp_path)
    rc, out = _sample(tmp_path, scripted(Tiny(0.5)), "--mc-dropout", "6", "--samples-dtype", "float32")
    assert rc == 0
    store = open_store(out)
    assert (store.n_images, store.n_samples, store.n_labels, store.spatial_shape) == (3, 6, 3, (10, 11, 9))
    assert store.spacing == (2.0, 0.7, 0.7) and store.sampler == "mc-dropout" and store.has_labels
    assert store.attrs["case_names"] == list(images)
    samples = store.samples(0)
    spread = samples.std(axis=0)
    assert spread.mean() > 0.01  # dropout masks differ between passes
    assert not np.allclose(samples[0], samples[1])
    np.testing.assert_allclose(samples.sum(axis=1), 1.0, atol=1e-5)


def test_batch_norm_frozen_rate_zero_dropout_is_the_eval_model(tmp_path, scripted):
    """p = 0: every MC sample equals the eval-mode output, which uses BN's running statistics."""
    torch.manual_seed(1)
    model = Tiny(0.0)
    images = _images(tmp_path)
    rc, out = _sample(tmp_path, scripted(model), "--mc-dropout", "3", "--samples-dtype", "float32")
    assert rc == 0
    store = open_store(out)
    for i, img in enumerate(images.values()):
        expected = _expected(model, img)
        for t in range(3):
            np.testing.assert_allclose(store.samples(i)[t], expected, atol=2e-6)
    # and batch statistics would have given something else: the check above can fail
    model.train()
    with torch.no_grad():
        batch_stats = torch.softmax(model(torch.from_numpy(images["s0"][None, None])), 1)[0].numpy()
    assert not np.allclose(batch_stats, _expected(model, images["s0"]), atol=1e-3)


def test_running_statistics_do_not_move(tmp_path):
    from napari_conformal.models.store_sampler import sample_store

    model = torch.jit.script(Tiny(0.5))
    images = _images(tmp_path, n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    store = sample_store([model], tmp_path / "img", tmp_path / "s.zarr", mc_dropout=4, device="cpu")
    assert store.n_samples == 4 and len(images) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in model.modules()] == flags  # modes restored too


def test_sliding_window_runs_a_fixed_size_model_on_a_larger_volume(tmp_path, scripted, capsys):
    torch.manual_seed(2)
    inner = Tiny(0.0)
    images = _images(tmp_path, shape_xyz=(13, 11, 10))
    path = scripted(FixedInput(inner), "fixed.pt")
    rc, _ = _sample(tmp_path, path, "--mc-dropout", "2")
    assert rc == 2 and leftovers(tmp_path / "s.zarr") == []  # the whole volume is not an input it takes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case 's0'" in err and "8x8x8" in err and "--patch-size" in err
    rc, out = _sample(tmp_path, path, "--mc-dropout", "2", "--patch-size", "8", "8", "8", "--samples-dtype", "float32")
    assert rc == 0
    store = open_store(out)
    assert store.attrs["import"]["patch_size"] == [8, 8, 8]
    for i, img in enumerate(images.values()):
        np.testing.assert_allclose(store.samples(i)[1], _expected(inner, img), atol=2e-6)


def test_sliding_window_pads_a_volume_smaller_than_the_patch(tmp_path, scripted):
    torch.manual_seed(3)
    inner = Tiny(0.0)
    images = _images(tmp_path, n=1, shape_xyz=(6, 9, 5))  # z = 5 < 8, x = 6 < 8
    rc, out = _sample(tmp_path, scripted(FixedInput(inner)), "--mc-dropout", "1", "--patch-size", "8", "8", "8",
                      "--samples-dtype", "float32")  # fmt: skip
    assert rc == 0
    np.testing.assert_allclose(open_store(out).samples(0)[0], _expected(inner, images["s0"]), atol=2e-6)


def test_ensemble_of_state_dicts_with_an_architecture_file(tmp_path):
    torch.manual_seed(4)
    images = _images(tmp_path, n=2)
    (tmp_path / "arch.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(tmp_path.parent)!r})
            from torch import nn

            def build():
                return nn.Sequential(nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 1))
            """
        )
    )
    members = []
    for k in range(3):
        net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 1))
        torch.save(net.state_dict(), tmp_path / f"m{k}.pt")
        members.append(net.eval())
    out = tmp_path / "s.zarr"
    argv = ["sample", "--members", *[str(tmp_path / f"m{k}.pt") for k in range(3)], "--architecture",
            f"{tmp_path / 'arch.py'}:build", "--images", str(tmp_path / "img"), "--out", str(out), "-q",
            "--samples-dtype", "float32"]  # fmt: skip
    assert main(argv) == 0
    store = open_store(out)
    assert store.n_samples == 3 and store.sampler == "ensemble" and not store.has_labels
    for t, net in enumerate(members):
        np.testing.assert_allclose(store.samples(1)[t], _expected(net, images["s1"]), atol=2e-6)


@pytest.mark.parametrize(
    ("setup", "extra", "phrases"),
    [
        ("pickled", ["--mc-dropout", "2"], ("whole pickled model", "state_dict")),
        ("no-dropout", ["--mc-dropout", "2"], ("no dropout layer",)),
        ("state-dict", ["--mc-dropout", "2"], ("not TorchScript", "--architecture")),
        ("missing", ["--mc-dropout", "2"], ("no such file",)),
        ("two-classes-out-of-labels", ["--mc-dropout", "2"], ("case 's0'", "value 2", "0..1")),
        ("scripted", ["--mc-dropout", "2", "--patch-size", "8", "8"], ("patch_size (8, 8) has 2 axes", "3 spatial axes")),
    ],
)
def test_bad_sample_input(tmp_path, capsys, scripted, setup, extra, phrases):
    _images(tmp_path)
    path = tmp_path / "model.pt"
    if setup == "pickled":
        torch.save(Tiny(), path)  # the whole module, pickled
    elif setup == "no-dropout":
        scripted(nn.Conv3d(1, 2, 1))
    elif setup == "state-dict":
        torch.save(Tiny().state_dict(), path)
    elif setup == "two-classes-out-of-labels":
        scripted(nn.Sequential(nn.Conv3d(1, 2, 1), nn.Dropout(0.5)))
    elif setup == "scripted":
        scripted(Tiny())
    rc, out = _sample(tmp_path, path, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("napari-conformal: error: "), err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert leftovers(out) == []


def test_sampling_imports_no_gui():
    """The sampler's modules load without Qt or napari (a headless GPU box)."""
    import subprocess

    code = (
        "import sys; import napari_conformal.models.store_sampler, napari_conformal.cli_import; "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'matplotlib') if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_axes_on_real_volumes_with_the_demo_unet(tmp_path, scripted):
    """Real hippocampus MRI (packaged) as NIfTI, the packaged U-Net (trained on (x, y, z) arrays): with
    --model-axes xyz the mean prediction matches the expert labels (Dice > 0.8), in the wrong order it does not."""
    from napari_conformal.demo_data import load_demo_data
    from napari_conformal.models import load_demo_model

    data = load_demo_data("hippocampus-3d", n_images=3)
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for k, (img, lab) in enumerate(zip(data.images, data.labels, strict=True)):  # (x, y, z) volumes
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), tmp_path / "img" / f"h{k}.nii.gz")
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), np.eye(4)), tmp_path / "lab" / f"h{k}.nii.gz")
    model = scripted(load_demo_model("hippocampus-3d"), "hippo.pt")

    def dice(out):
        store = open_store(out)
        scores = []
        for i in range(store.n_images):
            pred = store.samples(i).astype(np.float32).mean(axis=0).argmax(axis=0)
            truth = store.label(i)
            scores += [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in (1, 2)]
        return float(np.mean(scores))

    rc, out = _sample(tmp_path, model, "--mc-dropout", "2", "--model-axes", "xyz")
    assert rc == 0
    good = dice(out)
    np.testing.assert_array_equal(open_store(out).label(0), data.labels[0].transpose(2, 1, 0))
    rc, wrong = _sample(tmp_path, model, "--mc-dropout", "2", "--model-axes", "zyx", name="wrong.zarr")
    assert rc == 0
    assert good > 0.8 and dice(wrong) < good - 0.2, (good, dice(wrong))
