"""The ``import`` and ``sample`` commands (a user's data or model into a dataset store), and ``prefer-reader``.

* ``napari-conformal import nnunet --images DIR --labels DIR --members DIR [DIR ...] --out STORE``
* ``napari-conformal import arrays --images DIR --samples DIR [DIR ...] [--labels DIR] --out STORE``
* ``napari-conformal sample --model MODEL --images DIR --out STORE (--mc-dropout T | --members M ...)``
* ``napari-conformal prefer-reader [--remove]``: make napari open stores and NIfTI files dropped on its
  canvas with this plugin (:mod:`napari_conformal.io.reader_preference`).

As every command of :mod:`napari_conformal.cli`: arguments and the output path are checked first, every
case is checked before the store is written (:mod:`napari_conformal.io.importers`), a bad input ends with
one line ``napari-conformal: error: …`` and exit status 2, and nothing is left behind (the store is built
under a temporary name and renamed into place when complete; Ctrl-C removes it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "handlers"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {text!r}")
    return names


def _add_store_options(p: argparse.ArgumentParser, *, precheck: bool = True) -> None:
    p.add_argument("--out", required=True, help="the dataset store to create (a folder, e.g. data.zarr)")
    p.add_argument("--pad", action="store_true", help="pad cases of different shapes to the largest (centred)")
    p.add_argument("--label-names", type=_names, metavar="NAMES", help="class names, background first: 'bg,head,body'")
    p.add_argument(
        "--samples-dtype", choices=("float16", "float32"), default="float16", help="storage precision (default float16)"
    )
    if precheck:
        p.add_argument(
            "--single-pass",
            action="store_true",
            help="check each case while writing it into the temporary store instead of checking all first "
            "(reads the inputs once; an error still leaves no store)",
        )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def add_parsers(sub: Any) -> None:
    """Add ``import`` (with ``nnunet`` and ``arrays``) and ``sample`` to the command's subparsers."""
    imp = sub.add_parser("import", help="import a model's predictions (nnU-Net folders, array files) into a store")
    isub = imp.add_subparsers(dest="importer", required=True, parser_class=type(imp))

    nn = isub.add_parser(
        "nnunet",
        help="nnU-Net v2 predictions: NIfTI images/labels, one folder of CASE.npz per fold or member",
        description=(
            "Import nnUNetv2_predict --save_probabilities output. Store axes (z, y, x) are the NIfTI voxel "
            "axes (i, j, k) reversed, exactly the npz's (z, y, x); spacing is pixdim reversed (docs/own_model.md)."
        ),
    )
    nn.add_argument("--images", required=True, help="folder of CASE_0000.nii.gz (CASE_0001… further channels)")
    nn.add_argument("--labels", help="folder of CASE.nii.gz ground truth (optional)")
    nn.add_argument("--members", required=True, nargs="+", metavar="DIR", help="one folder of CASE.npz per fold/member")
    nn.add_argument("--channel", type=int, help="the image channel to store when the images have several")
    nn.add_argument(
        "--npz-order",
        choices=("voxel", "ras"),
        default="voxel",
        help="'voxel' (nnU-Net's default readers) or 'ras' (predicted with NibabelIOWithReorient)",
    )
    _add_store_options(nn)

    ar = isub.add_parser(
        "arrays",
        help="per-case NumPy/NPZ/TIFF/zarr files: images, labels, samples (T, L, *S) or one folder per member",
    )
    ar.add_argument("--images", required=True, help="folder with one image CASE.<npy|npz|tif|zarr|nii.gz> per case")
    ar.add_argument("--labels", help="folder with one ground truth CASE.<…> per case (optional)")
    ar.add_argument(
        "--samples",
        required=True,
        nargs="+",
        metavar="DIR",
        help="folders of CASE.<…> samples: (T, L, *S) stacks, or (L, *S) one per member folder",
    )
    ar.add_argument("--logits", action="store_true", help="the files hold logits: apply a softmax over L")
    ar.add_argument(
        "--spatial-order", choices=("zyx", "xyz"), default="zyx", help="spatial axis order of the arrays (default zyx)"
    )
    ar.add_argument("--spacing", type=_positive_float, nargs="+", metavar="MM", help="voxel size (Z) Y X in mm")
    _add_store_options(ar)

    sm = sub.add_parser(
        "sample",
        help="draw samples from your TorchScript or state-dict model on a folder of images into a store",
    )
    sm.add_argument("--model", help="TorchScript file, or a state dict with --architecture")
    how = sm.add_mutually_exclusive_group(required=True)
    how.add_argument("--mc-dropout", type=_positive_int, metavar="T", help="T MC-dropout passes of --model")
    how.add_argument("--members", nargs="+", metavar="MODEL", help="ensemble members (with --model, it comes first)")
    sm.add_argument("--architecture", help="for state dicts: 'package.module:function' or 'file.py:function'")
    sm.add_argument("--images", required=True, help="folder with one image per case (NIfTI, npy, npz, tif, zarr)")
    sm.add_argument("--labels", help="folder of ground truth per case (optional)")
    sm.add_argument("--nnunet-names", action="store_true", help="images are CASE_0000, CASE_0001, … (input channels)")
    sm.add_argument("--channel", type=int, default=0, help="with --nnunet-names: the channel stored (default 0)")
    sm.add_argument("--patch-size", type=_positive_int, nargs="+", metavar="N", help="model input size: sliding window")
    sm.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    sm.add_argument("--output", choices=("logits", "probabilities"), default="logits", help="what the model returns")
    sm.add_argument("--normalize", choices=("none", "zscore"), default="none", help="model input normalisation")
    sm.add_argument("--spatial-order", choices=("zyx", "xyz"), default="zyx", help="axis order of array files")
    sm.add_argument("--model-axes", choices=("zyx", "xyz"), default="zyx", help="spatial axis order the model expects")
    sm.add_argument("--spacing", type=_positive_float, nargs="+", metavar="MM", help="voxel size when not NIfTI")
    sm.add_argument("--batch-size", type=_positive_int, default=4, help="forward passes per batch (default 4)")
    sm.add_argument("--device", default="auto", help="auto (a GPU when present), cpu or cuda[:i]")
    sm.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    _add_store_options(sm, precheck=False)

    pref = sub.add_parser(
        "prefer-reader",
        help="make napari open stores (*.zarr) and NIfTI files with napari-conformal (saved in napari's settings)",
    )
    pref.add_argument("--remove", action="store_true", help="remove these preferences again")


def _check_out(path: str, overwrite: bool, inputs: list[str]) -> Path:
    """Before any work: ``--out`` may become a new store (or replace one with --overwrite)."""
    from napari_conformal.cli import UsageError
    from napari_conformal.io.atomic import check_target
    from napari_conformal.io.paths import path_kind

    target = Path(path)
    if target.is_symlink():
        raise UsageError(f"--out {path} is a symbolic link; give the real path (links are not followed)")
    resolved = target.resolve()
    for given in inputs:
        if given and (resolved == Path(given).resolve() or Path(given).resolve() in resolved.parents):
            raise UsageError(f"--out {path} lies in the input folder {given}; write the store elsewhere")
    folder = resolved.parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: the folder {folder} is not writable")
    from napari_conformal.errors import StoreExistsError

    try:
        check_target(target, overwrite=overwrite, replaceable=lambda p: path_kind(p) == "store")
    except StoreExistsError:
        if overwrite:
            raise UsageError(
                f"--out {path} exists and is not a napari-conformal store; --overwrite replaces only a store"
            ) from None
        raise UsageError(f"--out {path} already exists; pass --overwrite to replace it") from None
    return target


def _finish(store_path: Path, quiet: bool) -> int:
    from napari_conformal.io.store import open_store

    store = open_store(store_path)
    if not quiet:
        spacing = " x ".join(f"{s:g}" for s in store.spacing)
        print(
            f"wrote {store.n_images} cases of shape {store.spatial_shape} ({spacing} mm), T = {store.n_samples} "
            f"samples of L = {store.n_labels} classes ({', '.join(store.label_names)}), "
            f"{'with' if store.has_labels else 'without'} ground truth, to {store_path}",
            file=sys.stderr,
        )
    print(store_path)
    return 0


def _spacing(args: argparse.Namespace) -> list[float] | None:
    from napari_conformal.cli import UsageError

    if args.spacing is not None and len(args.spacing) not in (2, 3):
        raise UsageError(f"--spacing takes 2 or 3 numbers (Y X or Z Y X, mm), got {len(args.spacing)}")
    return args.spacing


def cmd_import(args: argparse.Namespace) -> int:
    """``import nnunet`` / ``import arrays``."""
    from napari_conformal.cli import _run
    from napari_conformal.io.importers import iter_import_arrays, iter_import_nnunet

    common = {
        "pad": args.pad,
        "label_names": args.label_names,
        "samples_dtype": args.samples_dtype,
        "precheck": not args.single_pass,
        "overwrite": args.overwrite,
    }
    if args.importer == "nnunet":
        out = _check_out(args.out, args.overwrite, [args.images, args.labels, *args.members])
        gen = iter_import_nnunet(
            args.images, args.labels, args.members, out, channel=args.channel, npz_order=args.npz_order, **common
        )
    else:
        out = _check_out(args.out, args.overwrite, [args.images, args.labels, *args.samples])
        gen = iter_import_arrays(
            args.images,
            args.samples,
            out,
            labels=args.labels,
            logits=args.logits,
            spatial_order=args.spatial_order,
            spacing=_spacing(args),
            **common,
        )
    return _finish(_run(gen, "importing", args.quiet), args.quiet)


def cmd_sample(args: argparse.Namespace) -> int:
    """``sample``: a model's samples on a folder of images."""
    from napari_conformal.cli import UsageError, _run

    if args.mc_dropout is not None and not args.model:
        raise UsageError("--mc-dropout samples --model: give the model file with --model")
    paths = ([args.model] if args.model else []) + list(args.members or [])
    out = _check_out(args.out, args.overwrite, [args.images, args.labels, *paths])
    spacing = _spacing(args)
    from napari_conformal.core.device import resolve_device
    from napari_conformal.models.sliding_window import check_patch
    from napari_conformal.models.store_sampler import iter_sample_store, load_models

    device = resolve_device(args.device)
    check_patch(args.patch_size, args.overlap)
    models = load_models(paths, args.architecture, device="cpu")
    gen = iter_sample_store(
        models,
        args.images,
        out,
        mc_dropout=args.mc_dropout,
        labels=args.labels,
        nnunet_names=args.nnunet_names,
        channel=args.channel,
        spatial_order=args.spatial_order,
        model_axes=args.model_axes,
        normalize=args.normalize,
        patch_size=args.patch_size,
        overlap=args.overlap,
        output=args.output,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        spacing=spacing,
        pad=args.pad,
        label_names=args.label_names,
        samples_dtype=args.samples_dtype,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(f"sampling on {device}", file=sys.stderr)
    return _finish(_run(gen, "sampling", args.quiet), args.quiet)


def cmd_prefer_reader(args: argparse.Namespace) -> int:
    """``prefer-reader``: napari's preferred reader for stores and NIfTI files."""
    from napari_conformal.io.reader_preference import (
        PATTERNS,
        PLUGIN,
        prefer_plugin_reader,
        remove_plugin_preference,
    )

    if args.remove:
        removed = remove_plugin_preference()
        print(f"napari's reader preferences for {', '.join(removed) or 'nothing'} removed", file=sys.stderr)
        return 0
    before = prefer_plugin_reader()
    replaced = {p: v for p, v in before.items() if v not in (None, PLUGIN)}
    note = f" (replacing {', '.join(f'{p}: {v}' for p, v in replaced.items())})" if replaced else ""
    print(f"napari opens {', '.join(PATTERNS)} with {PLUGIN} from now on{note}", file=sys.stderr)
    return 0


def handlers() -> dict[str, Any]:
    """Command name → handler, for :func:`napari_conformal.cli.main`."""
    return {"import": cmd_import, "sample": cmd_sample, "prefer-reader": cmd_prefer_reader}
