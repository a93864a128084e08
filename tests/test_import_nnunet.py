"""nnU-Net folders → store: every voxel where the documented rule (docs/own_model.md) puts it.

The folders are written with nibabel (a non-identity affine with permuted, flipped axes and anisotropic
voxels) and numpy (``probabilities`` of shape (C, z, y, x), as nnU-Net saves them). The rule checked:
store ``(z, y, x)`` = NIfTI voxel ``(i, j, k)`` reversed = the npz's ``(z, y, x)``; spacing = pixdim reversed.
"""

from __future__ import annotations

import numpy as np
import pytest
from _import_data import AFFINE, ZOOMS, leftovers, write_nnunet

from napari_conformal.cli import main
from napari_conformal.errors import ImportInputError
from napari_conformal.io.importers import import_nnunet
from napari_conformal.io.store import open_store


def test_cli_import_puts_every_voxel_where_the_rule_says(tmp_path, capsys):
    folders = write_nnunet(tmp_path / "nn", dataset_json=True)
    out = tmp_path / "store.zarr"
    assert main(folders.args(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    store = open_store(out)
    assert store.attrs["case_names"] == ["case_1", "case_2", "case_10"]  # natural order
    assert (store.n_images, store.spatial_shape, store.n_samples, store.n_labels) == (3, (5, 6, 7), 2, 3)
    assert store.spacing == tuple(reversed(ZOOMS))  # (z, y, x) mm
    assert store.samples_dtype == np.float16 and store.has_labels
    assert store.label_names == ["background", "structure 1", "structure 2"]  # from dataset.json
    assert "nnU-Net" in store.sampler
    for i, name in enumerate(store.attrs["case_names"]):
        case = folders.cases[name]
        np.testing.assert_array_equal(store.image(i), case.image_xyz.transpose(2, 1, 0))
        np.testing.assert_array_equal(store.label(i), case.label_xyz.transpose(2, 1, 0))
        samples = store.samples(i)
        for t in range(2):
            np.testing.assert_array_equal(samples[t], case.probs_zyx[t].astype(np.float16))
        record = store.attrs["import"]["cases"][i]
        assert record["name"] == name and record["nifti_shape_xyz"] == [7, 6, 5]
        np.testing.assert_allclose(record["nifti_affine"], AFFINE)


def test_a_store_voxel_and_its_nifti_voxel_are_the_same_point_in_the_scanner(tmp_path):
    """One marked voxel: the store index (z, y, x), reversed, through the affine gives the NIfTI voxel's world point."""
    import nibabel as nib

    folders = write_nnunet(tmp_path / "nn", names=("a",))
    path = folders.labels / "a.nii.gz"
    label = np.zeros((7, 6, 5), np.uint8)
    ijk = (5, 1, 3)
    label[ijk] = 2
    nib.save(nib.Nifti1Image(label, AFFINE), path)
    store = import_nnunet(folders.images, folders.members, tmp_path / "s.zarr", labels=folders.labels)
    zyx = tuple(int(v) for v in np.argwhere(store.label(0) == 2)[0])
    assert zyx == (3, 1, 5)
    world_from_store = AFFINE @ np.array([*reversed(zyx), 1.0])
    world_from_nifti = AFFINE @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(world_from_store, world_from_nifti)


def test_npz_on_the_closest_ras_grid_is_mapped_back(tmp_path):
    """Predictions made with NibabelIOWithReorient (npz on the RAS grid) land on the file's own grid."""
    import nibabel as nib

    folders = write_nnunet(tmp_path / "nn", names=("a", "b"))
    for name, case in folders.cases.items():
        for t, member in enumerate(folders.members):
            ijk = case.probs_zyx[t].transpose(0, 3, 2, 1)  # (C, i, j, k) on the file's grid
            ras = np.stack(
                [np.asarray(nib.as_closest_canonical(nib.Nifti1Image(c, AFFINE)).dataobj) for c in ijk]
            )
            assert ras.shape[1:] != ijk.shape[1:]  # the affine really permutes the axes
            np.savez_compressed(member / f"{name}.npz", probabilities=ras.transpose(0, 3, 2, 1))
    with pytest.raises(Exception, match="shape mismatch"):
        import_nnunet(folders.images, folders.members, tmp_path / "wrong.zarr", labels=folders.labels)
    store = import_nnunet(folders.images, folders.members, tmp_path / "s.zarr", labels=folders.labels, npz_order="ras")
    for i, name in enumerate(store.attrs["case_names"]):
        for t in range(2):
            np.testing.assert_array_equal(store.samples(i)[t], folders.cases[name].probs_zyx[t].astype(np.float16))


def test_extra_channels_refused_then_chosen(tmp_path, capsys):
    folders = write_nnunet(tmp_path / "nn", n_channels=2)
    out = tmp_path / "s.zarr"
    assert main(folders.args(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 image channels" in err and "--channel" in err
    assert leftovers(out) == []
    assert main([*folders.args(out), "--channel", "1"]) == 0
    store = open_store(out)
    for i, name in enumerate(store.attrs["case_names"]):
        np.testing.assert_array_equal(store.image(i), folders.cases[name].channels_xyz[1].transpose(2, 1, 0))
    assert store.attrs["import"]["channel"] == 1


def test_pad_centres_smaller_cases(tmp_path, capsys):
    folders = write_nnunet(tmp_path / "nn", names=("a", "b"), shapes={"a": (7, 6, 5), "b": (4, 6, 2)})
    out = tmp_path / "s.zarr"
    assert main(folders.args(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shape mismatch between cases" in err and "--pad" in err
    assert "(2, 6, 4)" in err and "(5, 6, 7)" in err
    assert main([*folders.args(out), "--pad"]) == 0
    store = open_store(out)
    assert store.spatial_shape == (5, 6, 7)
    b = folders.cases["b"]
    rec = store.attrs["import"]["cases"][1]
    assert rec["name"] == "b" and rec["shape"] == [2, 6, 4] and rec["offset"] == [1, 0, 1]
    inner = (slice(1, 3), slice(0, 6), slice(1, 5))
    np.testing.assert_array_equal(store.image(1)[inner], b.image_xyz.transpose(2, 1, 0))
    np.testing.assert_array_equal(store.label(1)[inner], b.label_xyz.transpose(2, 1, 0))
    np.testing.assert_array_equal(store.samples(1)[(slice(None), slice(None), *inner)][1], b.probs_zyx[1].astype(np.float16))
    outside = np.ones((5, 6, 7), bool)
    outside[inner] = False
    assert (store.label(1)[outside] == 0).all()
    assert (store.samples(1)[:, 0][:, outside] == 1).all() and (store.samples(1)[:, 1:][:, :, outside] == 0).all()
    assert np.allclose(store.image(1)[outside], b.image_xyz.min())


def test_float16_probabilities_are_kept_in_float16(tmp_path):
    folders = write_nnunet(tmp_path / "nn", names=("a", "b"), dtype=np.float16)
    store = import_nnunet(folders.images, folders.members, tmp_path / "s.zarr", labels=folders.labels)
    assert store.samples_dtype == np.float16
    np.testing.assert_array_equal(store.samples(0)[0], folders.cases["a"].probs_zyx[0])
    with pytest.raises(ImportInputError, match=r"holds float16.*--samples-dtype float16"):
        import_nnunet(folders.images, folders.members, tmp_path / "f32.zarr", samples_dtype="float32")
    assert leftovers(tmp_path / "f32.zarr") == []


def test_float32_storage_keeps_float32_probabilities_exactly(tmp_path):
    folders = write_nnunet(tmp_path / "nn", names=("a", "b"))
    store = import_nnunet(folders.images, folders.members, tmp_path / "s.zarr", samples_dtype="float32")
    assert store.samples_dtype == np.float32
    np.testing.assert_array_equal(store.samples(1)[1], folders.cases["b"].probs_zyx[1])


def test_without_labels_and_single_pass(tmp_path):
    folders = write_nnunet(tmp_path / "nn", names=("a", "b"))
    steps = []
    store = import_nnunet(
        folders.images, folders.members, tmp_path / "s.zarr", precheck=False, progress=lambda *s: steps.append(s)
    )
    assert not store.has_labels
    assert {s[2] for s in steps} == {"headers", "writing"}  # no separate checking pass
    assert steps[-1] == (2, 2, "writing")


def test_the_store_calibrates(tmp_path):
    """An imported store is an ordinary store: CRC calibrates on it."""
    folders = write_nnunet(tmp_path / "nn", names=tuple(f"c{k}" for k in range(6)), n_classes=2)
    out = tmp_path / "s.zarr"
    assert main(folders.args(out)) == 0
    calib = tmp_path / "calib.json"
    assert main(["calibrate", str(out), "--method", "crc", "--alpha", "0.2", "--cal", "0-4", "--out", str(calib), "-q"]) == 0
    assert calib.exists()


def test_every_value_is_checked_before_the_store_is_begun(tmp_path):
    """A NaN in the last case's last member stops the import in the checking stage: no temporary store yet."""
    from napari_conformal.io.importers import iter_import_nnunet

    folders = write_nnunet(tmp_path / "nn", names=("a", "b", "c"))
    probs = folders.cases["c"].probs_zyx[1].copy()
    probs[0, 0, 0, 0] = np.nan
    np.savez_compressed(folders.members[1] / "c.npz", probabilities=probs)
    out = tmp_path / "s.zarr"
    stages = []
    with pytest.raises(ImportInputError, match=r"case 'c'.*fold_1/c.npz.*NaN"):
        for step in iter_import_nnunet(folders.images, folders.labels, folders.members, out):
            stages.append(step.stage)
            assert leftovers(out) == []
    assert stages[-1] == "checking" and "writing" not in stages
