"""Lay the MSD hippocampus volumes out as nnU-Net v2 would, with stand-in fold predictions.

Used by the worked example of docs/own_model.md. Writes under OUT::

    imagesTs/hippocampus_XXX_0000.nii.gz   links to MSD/imagesTr/hippocampus_XXX.nii.gz (nnU-Net's channel names)
    labelsTs/hippocampus_XXX.nii.gz        links to MSD/labelsTr/hippocampus_XXX.nii.gz
    fold_k/hippocampus_XXX.npz             "probabilities" (C, z, y, x) float32, as nnUNetv2_predict
                                           --save_probabilities writes them
    dataset.json                           the class names, as nnU-Net's dataset.json has them

The fold predictions stand in for nnU-Net's (neither nnU-Net nor its weights are part of this offline
example): fold k is MC-dropout pass k of the packaged hippocampus demo U-Net, which takes volumes in the
NIfTI's own (x, y, z) voxel order; its output is transposed to (z, y, x), the order nnU-Net's SimpleITK
reader gives and its npz files use. The 60 volumes that U-Net was trained on are left out (calibration
and test cases must be exchangeable, and a model's own training cases are not): 70 cases remain.

Run: ``python scripts/hippocampus_as_nnunet.py MSD_FOLDER OUT [--folds 5] [--cases N]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("msd", type=Path, help="folder with imagesTr/ and labelsTr/")
    parser.add_argument("out", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cases", type=int, help="only the first N cases")
    args = parser.parse_args()

    import nibabel as nib

    from napari_conformal.demo_data import load_demo_data
    from napari_conformal.models import MCDropoutSampler, load_demo_model

    images, labels = args.out / "imagesTs", args.out / "labelsTs"
    folds = [args.out / f"fold_{k}" for k in range(args.folds)]
    for d in (images, labels, *folds):
        d.mkdir(parents=True, exist_ok=True)
    names = ["background", "anterior", "posterior"]
    (args.out / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MRI"}, "labels": {n: k for k, n in enumerate(names)}, "file_ending": ".nii.gz"})
    )
    sampler = MCDropoutSampler(load_demo_model("hippocampus-3d"), args.folds, seed=0)
    trained_on = {int(i) for i in load_demo_data("hippocampus-3d").train_source_ids}
    paths = [
        p
        for p in sorted((args.msd / "imagesTr").glob("hippocampus_*.nii.gz"))
        if int(p.name[len("hippocampus_") : -len(".nii.gz")]) not in trained_on
    ][: args.cases]
    for n, path in enumerate(paths):
        case = path.name[: -len(".nii.gz")]
        for link, target in ((images / f"{case}_0000.nii.gz", path), (labels / path.name, args.msd / "labelsTr" / path.name)):
            if not link.exists():
                os.symlink(target.resolve(), link)
        volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)  # (x, y, z)
        probs = sampler.sample_image(volume, key=n)  # (folds, C, x, y, z)
        for k, fold in enumerate(folds):
            np.savez_compressed(fold / f"{case}.npz", probabilities=probs[k].transpose(0, 3, 2, 1))
        print(f"{n + 1}/{len(paths)} {case}", flush=True)


if __name__ == "__main__":
    main()
