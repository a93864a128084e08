"""The RW-CP method (core/methods/rwcp.py): pipeline, exact λ̂, parameters and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conformal.core.methods.base import available_methods, make_method
from napari_conformal.core.methods.rwcp import RWCPMethod
from napari_conformal.core.methods.threshold import CRCMethod
from napari_conformal.core.rwcp.diffusion import diffuse
from napari_conformal.core.rwcp.features import check_features
from napari_conformal.core.rwcp.graph import transition_matrix
from napari_conformal.errors import (
    CalibrationError,
    Cancelled,
    ConformalError,
    InsufficientCalibrationError,
    ParameterError,
    StoreValidationError,
)
from napari_conformal.testing.synthetic import binary_blobs_dataset


def pooled_features(image: np.ndarray) -> np.ndarray:
    """A cheap deterministic extractor: 2×2 block means of intensity and its square, plus a constant."""
    y, x = image.shape
    blocks = image[: y - y % 2, : x - x % 2].reshape(y // 2, 2, x // 2, 2).mean(axis=(1, 3))
    return np.stack([blocks, blocks**2, np.ones_like(blocks)])


def _method(**kw) -> RWCPMethod:
    kw.setdefault("extractor", pooled_features)  # a user's own extractor object
    kw.setdefault("device", "cpu")
    return RWCPMethod(**kw)


@pytest.fixture(scope="module")
def blobs():
    return binary_blobs_dataset(12, (16, 16), n_samples=3, seed=11)


def test_registered_and_defaults():
    assert "rwcp" in available_methods()
    m = make_method("rwcp")
    with pytest.raises(ParameterError, match=r"rwcp option k needs a value \(default 20\)"):
        make_method("rwcp", k=None)
    assert isinstance(m, RWCPMethod)
    assert (m.k, m.rw_beta, m.n_step, m.fg_class, m.device) == (20, 50.0, 10, 1, "auto")
    assert (m.features, m.model_dir, m.grid_stride, m.include_self) == (
        "efficientnet-lite0",
        None,
        None,
        False,
    )
    assert m.extractor.name == "efficientnet-lite0"
    assert m.risk == "fnr" and m.uses_features and m.uses_device and not m.uses_nu
    with pytest.raises(
        ParameterError, match=r"method 'rwcp' has no option 'alpha' \(its options: k, rw_beta, n_step"
    ):
        make_method("rwcp", alpha=0.1)


def test_params_rebuild_the_method():
    m = make_method("rwcp", k=7, rw_beta=5.0, n_step=3, features="multiscale", grid_stride=2)
    again = make_method("rwcp", **m.params())
    assert again.params() == m.params() and again.k == 7
    assert m.params()["features"] == "multiscale" and m.params()["grid_stride"] == 2
    assert m.params() == {
        "k": 7,
        "rw_beta": 5.0,
        "n_step": 3,
        "features": "multiscale",
        "model_dir": None,
        "input_scale": None,
        "feature_model": None,
        "feature_layer": None,
        "grid_stride": 2,
        "include_self": False,
        "fg_class": 1,
        "tune": "off",
        "tune_fraction": 0.25,
        "tune_grid": None,
        "tune_seed": 0,
    }
    assert again.extractor.params() == m.extractor.params()


def test_params_of_an_extractor_instance_and_pickling():
    import pickle

    from napari_conformal.core.rwcp.features import EfficientNetLite0Extractor

    m = RWCPMethod(extractor=EfficientNetLite0Extractor(grid_stride=4), device="cpu")
    assert m.params()["features"] == "efficientnet-lite0" and m.params()["grid_stride"] == 4
    assert make_method("rwcp", **m.params()).extractor.params() == m.extractor.params()  # rebuilt by name
    clone = pickle.loads(pickle.dumps(m))  # dask workers receive the method pickled
    assert clone.params() == m.params() and clone.k == m.k
    # a plain function is recorded by name only: it cannot be rebuilt from the params
    user = _method()
    assert user.params()["features"] == "callable" and user.extractor.params()["name"] == "callable"
    with pytest.raises(ParameterError, match="rwcp option features must be one of"):
        make_method("rwcp", **user.params())


def test_prepare_equals_the_pipeline_by_hand(blobs):
    images, samples, _ = blobs
    m = _method(k=6, rw_beta=10.0, n_step=4)
    prepared = m.prepare(images[0], samples[0])
    fmap = check_features(pooled_features(images[0]), images[0].shape)
    matrix = transition_matrix(fmap.nodes(), 6, 10.0, device="cpu")
    by_hand = diffuse(matrix, samples[0, :, 1].astype(np.float64).mean(axis=0), fmap.grid_shape, 4)
    np.testing.assert_array_equal(prepared.score, by_hand.final.astype(np.float64))
    d = prepared.extras["diffusion"]
    assert d.n_step == 4 and d.grid_shape == (8, 8) and d.all_steps().shape == (5, 16, 16)
    np.testing.assert_allclose(prepared.base, samples[0, :, 1].mean(axis=0), rtol=1e-6)
    assert not prepared.score.flags.writeable


def test_precomputed_features_give_the_same_map(blobs):
    images, samples, _ = blobs
    m = _method(k=5)
    a = m.prepare(images[1], samples[1])
    b = m.prepare(None, samples[1], features=pooled_features(images[1]))
    np.testing.assert_array_equal(a.score, b.score)
    fm = m.compute_features(images[1])
    c = m.prepare(images[1], samples[1], features=fm)
    np.testing.assert_array_equal(a.score, c.score)


def test_no_diffusion_is_crc_on_any_grid(blobs):
    """n_step = 0 keeps the model's map bit for bit, also on a coarse feature grid (here 8 × 8 of 16 × 16)."""
    images, samples, _labels = blobs
    rw = _method(n_step=0, k=3)  # pooled_features: 2 × 2 blocks
    crc = CRCMethod()
    for i in range(4):
        a, b = rw.prepare(images[i], samples[i]), crc.prepare(images[i], samples[i])
        assert a.extras["grid_shape"] == (8, 8)
        np.testing.assert_array_equal(a.score, b.score)


def test_no_diffusion_at_full_resolution_is_crc(blobs):
    """n_step = 0 on the image grid: S⁽ⁿ⁾ = S⁽⁰⁾ up to float32 rounding, so λ̂ matches CRC."""
    images, samples, labels = blobs

    def full_grid(image):
        return np.stack([image, np.ones_like(image)])

    rw = _method(extractor=full_grid, n_step=0, k=3)
    crc = CRCMethod()
    rw_prep = [rw.prepare(images[i], samples[i]) for i in range(12)]
    crc_prep = [crc.prepare(images[i], samples[i]) for i in range(12)]
    for a, b in zip(rw_prep, crc_prep, strict=True):
        np.testing.assert_allclose(a.score, b.score, atol=1e-7)
    lam_rw = rw.lambda_hat([rw.curve(p, labels[i]) for i, p in enumerate(rw_prep)], alpha=0.2)
    lam_crc = crc.lambda_hat([crc.curve(p, labels[i]) for i, p in enumerate(crc_prep)], alpha=0.2)
    assert lam_rw == pytest.approx(lam_crc, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.35])
def test_lambda_hat_matches_brute_force(blobs, alpha):
    """λ̂ = the smallest candidate λ whose sets satisfy n/(n+1)·R̂ + 1/(n+1) ≤ α, by direct search."""
    images, samples, labels = blobs
    m = _method(k=5, rw_beta=20.0, n_step=5)
    prepared = [m.prepare(images[i], samples[i]) for i in range(12)]
    curves = [m.curve(p, labels[i]) for i, p in enumerate(prepared)]
    lam = m.lambda_hat(curves, alpha=alpha)
    # the risk only changes at values 1 − S_p of ground-truth pixels; also try 0
    candidates = np.unique(
        np.concatenate([[0.0]] + [1.0 - p.score[labels[i] == 1] for i, p in enumerate(prepared)])
    )
    n = len(prepared)
    best = None
    for c in candidates:
        fnr = [1 - np.mean(m.predict(p, c)[labels[i] == 1]) for i, p in enumerate(prepared)]
        if n / (n + 1) * np.mean(fnr) + 1 / (n + 1) <= alpha + 1e-12:
            best = c
            break
    assert best is not None
    assert lam == pytest.approx(best, abs=1e-12)
    # the set at λ̂ is what evaluate measures
    metrics = m.evaluate(prepared[0], labels[0], lam, alpha=alpha)
    cov = np.mean(m.predict(prepared[0], lam, alpha=alpha)[labels[0] == 1])
    assert metrics["coverage"] == pytest.approx(cov)
    assert m.realised(curves[0], lam, alpha=alpha) == pytest.approx(cov, abs=1e-15)


def test_alpha_is_live_after_calibration(blobs):
    images, samples, labels = blobs
    m = _method(k=5)
    curves = [m.curve(m.prepare(images[i], samples[i]), labels[i]) for i in range(12)]
    lams = [m.lambda_hat(curves, alpha=a) for a in (0.4, 0.3, 0.2, 0.1)]
    assert lams == sorted(lams)  # smaller α → larger sets


def test_multiclass_one_vs_rest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 12, 12))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = _method(fg_class=2, n_step=0, extractor=lambda im: np.stack([im, np.ones_like(im)]), k=2)
    prep = m.prepare(rng.normal(size=(12, 12)), probs)
    np.testing.assert_allclose(prep.score, probs[:, 2].mean(axis=0), atol=1e-6)
    label = np.zeros((12, 12), dtype=int)
    label[3:6, 3:6] = 2
    label[0, 0] = 1  # class 1 is background for this method
    assert m.curve(prep, label).shape == (9,)


def test_3d_volume_end_to_end():
    images, samples, labels = binary_blobs_dataset(3, (8, 12, 10), n_samples=2, seed=3)
    m = make_method("rwcp", k=4, features="multiscale", grid_stride=2, device="cpu", n_step=3)
    prep = [m.prepare(images[i], samples[i]) for i in range(3)]
    assert prep[0].extras["grid_shape"] == (4, 6, 5) and prep[0].score.shape == (8, 12, 10)
    lam = m.lambda_hat([m.curve(p, labels[i]) for i, p in enumerate(prep)], alpha=0.5)
    assert m.predict(prep[0], lam).shape == (8, 12, 10)


def test_progress_and_cancel(blobs):
    images, samples, _ = blobs
    m = _method(k=4, n_step=3)
    seen = []
    m.prepare(images[0], samples[0], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (300, 300) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(Cancelled):
        m.prepare(images[0], samples[0], should_stop=lambda: True)


# --------------------------------------------------------------------------- bad inputs


def test_empty_ground_truth(blobs):
    images, samples, _ = blobs
    m = _method()
    prep = m.prepare(images[0], samples[0])
    with pytest.raises(CalibrationError, match="empty foreground"):
        m.curve(prep, np.zeros((16, 16), dtype=int))


def test_shape_mismatches(blobs):
    images, samples, labels = blobs
    m = _method()
    with pytest.raises(StoreValidationError, match=r"image shape \(15, 16\) does not match .* \(16, 16\)"):
        m.prepare(images[0][:15], samples[0])
    prep = m.prepare(images[0], samples[0])
    with pytest.raises(
        StoreValidationError, match=r"labels: shape \(16, 15\), expected the image's shape \(16, 16\)"
    ):
        m.curve(prep, labels[0][:, :15])
    with pytest.raises(ConformalError, match="needs the image"):
        m.prepare(None, samples[0])


def test_too_few_calibration_images(blobs):
    images, samples, labels = blobs
    m = _method()  # α = 0.05 needs n ≥ 19
    curves = [m.curve(m.prepare(images[i], samples[i]), labels[i]) for i in range(5)]
    with pytest.raises(
        InsufficientCalibrationError, match=r"n = 5, but it needs n >= ceil\(1/alpha\) - 1 = 19.*= 0\.1667"
    ):
        m.lambda_hat(curves, alpha=0.05)
    with pytest.raises(InsufficientCalibrationError, match=r"n = 5, .* = 19"):
        m.check_calibration(5, 0.05)  # the same refusal before any per-image work
    m.check_calibration(19, 0.05)


def test_feature_grid_mismatch(blobs):
    images, samples, _ = blobs
    m = _method()
    with pytest.raises(ConformalError, match="spatial axes"):
        m.prepare(images[0], samples[0], features=np.ones((3, 8, 8, 2)))
    with pytest.raises(ConformalError, match="coarser"):
        m.prepare(images[0], samples[0], features=np.ones((3, 32, 8)))
    fm = check_features(np.ones((2, 4, 4)), (12, 12))
    with pytest.raises(ConformalError, match="computed for an image of shape"):
        m.prepare(images[0], samples[0], features=fm)
    with pytest.raises(ConformalError, match="k=20"):  # 2×2 grid: 3 candidates
        RWCPMethod(device="cpu", extractor=pooled_features).prepare(
            images[0], samples[0], features=np.ones((2, 2, 2))
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"k": 0}, r"rwcp option k must be >= 1, got 0"),
        ({"rw_beta": float("nan")}, r"rwcp option rw_beta must be a finite number, got nan"),
        ({"n_step": -1}, r"rwcp option n_step must be >= 0, got -1"),
        (
            {"features": "vgg", "extractor": None},
            r"rwcp option features must be one of .*multiscale.*, got 'vgg'",
        ),
        ({"fg_class": -1}, r"rwcp option fg_class must be >= 0, got -1"),
        ({"grid_stride": 0}, r"rwcp option grid_stride must be >= 1, got 0"),
        ({"alpha": 1.5}, r"method 'rwcp' has no option 'alpha'"),
    ],
)
def test_bad_parameters(kw, match):
    with pytest.raises(ParameterError, match=match):
        _method(**kw)


def test_bad_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConformalError, match="no CUDA GPU"):
        make_method("rwcp", device="cuda:0")
