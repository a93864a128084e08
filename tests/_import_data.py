"""Input folders for the importer tests, written with the real libraries (nibabel, numpy, tifffile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: A non-identity affine: voxel axes permuted and flipped, anisotropic voxels (0.8, 0.8, 2.5 mm), an origin.
AFFINE = np.array(
    [
        [0.0, -0.8, 0.0, 10.0],
        [0.0, 0.0, 2.5, -5.0],
        [-0.8, 0.0, 0.0, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
#: The voxel sizes of AFFINE per NIfTI axis (i, j, k): its column norms.
ZOOMS = (0.8, 0.8, 2.5)


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class Case:
    """What was written for one case, in the files' own axis order."""

    image_xyz: np.ndarray
    label_xyz: np.ndarray | None
    probs_zyx: list[np.ndarray] = field(default_factory=list)  # one (C, z, y, x) per member
    channels_xyz: list[np.ndarray] = field(default_factory=list)


@dataclass
class NnunetFolders:
    images: Path
    labels: Path
    members: list[Path]
    cases: dict[str, Case]

    def args(self, out: Path) -> list[str]:
        return [
            "import",
            "nnunet",
            "--images",
            str(self.images),
            "--labels",
            str(self.labels),
            "--members",
            *map(str, self.members),
            "--out",
            str(out),
            "-q",
        ]


def write_nnunet(
    root: Path,
    names: tuple[str, ...] = ("case_2", "case_10", "case_1"),
    shape_xyz: tuple[int, int, int] = (7, 6, 5),
    *,
    n_members: int = 2,
    n_classes: int = 3,
    n_channels: int = 1,
    affine: np.ndarray = AFFINE,
    dtype: type = np.float32,
    shapes: dict[str, tuple[int, int, int]] | None = None,
    seed: int = 0,
    dataset_json: bool = False,
) -> NnunetFolders:
    """nnU-Net v2 folders: ``imagesTs/CASE_000c.nii.gz``, ``labelsTs/CASE.nii.gz``, ``fold_t/CASE.npz``."""
    import json

    import nibabel as nib

    rng = np.random.default_rng(seed)
    images, labels = root / "imagesTs", root / "labelsTs"
    members = [root / f"fold_{t}" for t in range(n_members)]
    for d in (images, labels, *members):
        d.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name in names:
        xyz = (shapes or {}).get(name, shape_xyz)
        channels = []
        for c in range(n_channels):
            img = rng.normal(100.0 * (c + 1), 10.0, size=xyz).astype(np.float32)
            nib.save(nib.Nifti1Image(img, affine), images / f"{name}_{c:04d}.nii.gz")
            channels.append(img)
        lab = rng.integers(0, n_classes, size=xyz).astype(np.uint8)
        nib.save(nib.Nifti1Image(lab, affine), labels / f"{name}.nii.gz")
        case = Case(channels[0], lab, channels_xyz=channels)
        zyx = tuple(reversed(xyz))
        for member in members:
            probs = softmax(rng.normal(0, 2, size=(n_classes, *zyx))).astype(dtype)
            np.savez_compressed(member / f"{name}.npz", probabilities=probs)
            case.probs_zyx.append(probs)
        cases[name] = case
    if dataset_json:
        doc = {"labels": {"background": 0, **{f"structure {k}": k for k in range(1, n_classes)}}, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(doc))
    return NnunetFolders(images, labels, members, cases)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to check that inputs are untouched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """What an import left at ``out`` or beside it (the store, a temporary sibling)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))
