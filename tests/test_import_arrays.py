"""Array files (NumPy, NPZ, TIFF, zarr, NIfTI images) and in-memory arrays → store, value for value."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from _import_data import leftovers, softmax

from napari_conformal.cli import main
from napari_conformal.errors import Cancelled, ImportInputError
from napari_conformal.io.importers import build_store, import_arrays, iter_build_store
from napari_conformal.io.store import open_store


def _cases(n=3, shape=(4, 5, 6), t=3, ll=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        logits = rng.normal(0, 2, size=(t, ll, *shape)).astype(np.float32)
        out[f"p{k:02d}"] = (
            rng.normal(size=shape).astype(np.float32),
            rng.integers(0, ll, size=shape).astype(np.uint8),
            logits,
            softmax(logits, axis=1).astype(np.float32),
        )
    return out


def test_stacks_in_every_format_by_case_name(tmp_path):
    """Images .npy, labels .tif, sample stacks (T, L, *S) as .npy / .npz / zarr: matched by name, stored as given."""
    cases = _cases()
    for d in ("img", "lab", "smp"):
        (tmp_path / d).mkdir()
    writers = [
        lambda p, a: np.save(p.with_suffix(".npy"), a),
        lambda p, a: np.savez(p.with_suffix(".npz"), probabilities=a, spacing=np.ones(3)),
        lambda p, a: zarr.create_array(str(p.with_suffix(".zarr")), data=a),
    ]
    for k, (name, (img, lab, _logits, probs)) in enumerate(cases.items()):
        np.save(tmp_path / "img" / f"{name}.npy", img)
        tifffile.imwrite(tmp_path / "lab" / f"{name}.tif", lab, photometric="minisblack")
        writers[k](tmp_path / "smp" / (f"{name}_samples" if k == 0 else name), probs)
    out = tmp_path / "s.zarr"
    rc = main(
        ["import", "arrays", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
         "--samples", str(tmp_path / "smp"), "--spacing", "2", "1", "0.5", "--samples-dtype", "float32",
         "--out", str(out), "-q"]
    )  # fmt: skip
    assert rc == 0
    store = open_store(out)
    assert store.attrs["case_names"] == list(cases) and store.spacing == (2.0, 1.0, 0.5)
    assert store.attrs["import"]["importer"] == "arrays"
    for i, (img, lab, _logits, probs) in enumerate(cases.values()):
        np.testing.assert_array_equal(store.image(i), img)
        np.testing.assert_array_equal(store.label(i), lab)
        np.testing.assert_array_equal(store.samples(i), probs)


def test_one_folder_per_member_logits_and_xyz_order(tmp_path):
    """(L, *S) logit files, one folder per member, in (x, y, z) order: softmax, axes reversed, members in order."""
    cases = _cases(n=2, t=2)
    members = [tmp_path / "m0", tmp_path / "m1"]
    for d in (tmp_path / "img", *members):
        d.mkdir()
    for name, (img, _lab, logits, _probs) in cases.items():
        np.save(tmp_path / "img" / f"{name}.npy", img.transpose(2, 1, 0))
        for t, member in enumerate(members):
            np.save(member / f"{name}.npy", logits[t].transpose(0, 3, 2, 1))
    store = import_arrays(
        tmp_path / "img", members, tmp_path / "s.zarr", logits=True, spatial_order="xyz", samples_dtype="float32"
    )
    assert store.sampler == "ensemble" and not store.has_labels
    for i, (img, _lab, logits, _probs) in enumerate(cases.values()):
        np.testing.assert_array_equal(store.image(i), img)
        np.testing.assert_allclose(store.samples(i), softmax(logits, axis=1), rtol=0, atol=2e-7)


def test_nifti_images_give_the_spacing_and_numpy_samples_follow_store_order(tmp_path):
    import nibabel as nib

    cases = _cases(n=2, shape=(3, 4, 5))
    for d in ("img", "smp"):
        (tmp_path / d).mkdir()
    for name, (img, _lab, _logits, probs) in cases.items():
        nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), np.diag([0.5, 0.7, 3.0, 1.0])), tmp_path / "img" / f"{name}.nii.gz")
        np.save(tmp_path / "smp" / f"{name}.npy", probs)
    store = import_arrays(tmp_path / "img", [tmp_path / "smp"], tmp_path / "s.zarr")
    assert store.spacing == (3.0, 0.7, 0.5)
    np.testing.assert_array_equal(store.image(1), list(cases.values())[1][0])
    with pytest.raises(ImportInputError, match="spacing is given but the files record their own"):
        import_arrays(tmp_path / "img", [tmp_path / "smp"], tmp_path / "t.zarr", spacing=(1, 1, 1))


def test_build_store_from_lists_with_pad_logits_and_names(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(6, 7)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)]
    logits = [rng.normal(size=(2, 2, 6, 7)), rng.normal(size=(2, 2, 4, 7))]
    labels = [np.ones((6, 7), np.int64), np.ones((4, 7), np.int64)]
    steps = []
    store = build_store(
        tmp_path / "s.zarr", images, logits, labels, case_names=["x", "y"], logits=True, pad=True,
        label_names=["bg", "cell"], spacing=(0.3, 0.3), progress=lambda *s: steps.append(s),
    )  # fmt: skip
    assert store.attrs["case_names"] == ["x", "y"] and store.label_names == ["bg", "cell"]
    assert store.spatial_shape == (6, 7) and store.spacing == (0.3, 0.3)
    assert store.attrs["import"]["cases"][1]["offset"] == [1, 0]
    np.testing.assert_allclose(store.samples(1)[:, :, 1:5].astype(np.float32), softmax(logits[1], axis=1), atol=1e-3)
    assert (store.label(1)[[0, 5]] == 0).all() and (store.label(1)[1:5] == 1).all()
    assert steps[-1] == (2, 2, "writing")


def test_build_store_from_stacked_arrays_equals_create_store(tmp_path):
    from napari_conformal.io.store import create_store

    img, lab, _logits, probs = zip(*_cases(n=3).values(), strict=True)
    images, labels, samples = np.stack(img), np.stack(lab), np.stack(probs).astype(np.float16)
    a = build_store(tmp_path / "a.zarr", images, samples, labels)
    b = create_store(tmp_path / "b.zarr", images, samples, labels)
    for i in range(3):
        np.testing.assert_array_equal(a.samples(i), b.samples(i))
        np.testing.assert_array_equal(a.label(i), b.label(i))
        np.testing.assert_array_equal(a.image(i), b.image(i))


def test_cancel_and_closing_leave_no_store(tmp_path):
    img, lab, _logits, probs = zip(*_cases(n=3).values(), strict=True)
    out = tmp_path / "s.zarr"
    calls = []

    def stop_while_writing() -> bool:
        calls.append(1)
        return len(calls) > 8  # past the headers and checks, inside the writing stage

    with pytest.raises(Cancelled):
        build_store(out, list(img), list(probs), list(lab), should_stop=stop_while_writing)
    assert leftovers(out) == []
    gen = iter_build_store(out, list(img), list(probs), list(lab))
    for step in gen:
        if step.stage == "writing" and step.done == 1:
            assert any(p.name.startswith(".s.zarr.partial") for p in tmp_path.iterdir())
            gen.close()
    assert leftovers(out) == []
