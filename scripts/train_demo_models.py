"""Train the four demo U-Nets on real data, deterministically, on the CPU; write their weights.

Usage (from the repository root)::

    .venv/bin/python scripts/train_demo_models.py                       # all four
    .venv/bin/python scripts/train_demo_models.py --only nuclei --only brain-mri

Each model trains for a fixed number of iterations (no wall-clock budget, so the result does not
depend on the machine's speed) with torch's deterministic algorithms, one CPU thread (``--threads``;
on a shared 2-core machine one thread was 3-6x faster than two) and fixed seeds;
the weights are written as float16 state dicts to ``napari_conformal/data/demo/models/<name>.pt``
and the held-out Dice of the float16 model to ``training_report.json`` beside them.

Training data (never part of a demo store):

* hippocampus-3d / hippocampus-2d: the 60 training volumes of the split, read from the raw
  MSD folder (``--hippocampus``, default ``../shared/data/msd_hippocampus``) with the same
  preprocessing as the packaged volumes; 2D: every axis-0 slice holding hippocampus.
* hippocampus-2d-fewshot: the same, from only the first 3 training volumes (lowest case numbers),
  a smaller U-Net and few iterations: a deliberately weak model whose probabilities miss much of
  the structure, the regime where CRC must inflate its sets a lot.
* brain-mri: the training slices of the MNI152 template (nilearn, offline).
* nuclei: the training tiles of the packaged image.

Held-out evaluation: the test part of the packaged data (Dice per foreground class, averaged over
classes and images; prediction = argmax of the eval-mode model, dropout off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_conformal.demo_data import packaged, sources  # noqa: E402
from napari_conformal.models.demo import DEMO_MODELS, build_demo_model, demo_weights_path  # noqa: E402
from napari_conformal.models.loading import load_model, save_state_dict  # noqa: E402

SEED = 1234


@dataclass(frozen=True)
class Recipe:
    iterations: int
    batch_size: int
    lr: float
    flip_axes: tuple[int, ...]  # spatial axes that may be flipped
    rot90: bool  # random 90° rotations of the last two axes (square images only)
    n_volumes: int | None = None  # hippocampus: train on the first n training volumes only


RECIPES = {
    "hippocampus-3d": Recipe(iterations=400, batch_size=4, lr=3e-3, flip_axes=(0,), rot90=False),
    "hippocampus-2d": Recipe(iterations=600, batch_size=16, lr=3e-3, flip_axes=(), rot90=False),
    "hippocampus-2d-fewshot": Recipe(
        iterations=300, batch_size=16, lr=3e-3, flip_axes=(), rot90=False, n_volumes=3
    ),
    "brain-mri": Recipe(iterations=500, batch_size=8, lr=3e-3, flip_axes=(1,), rot90=False),
    "nuclei": Recipe(iterations=400, batch_size=8, lr=3e-3, flip_axes=(0, 1), rot90=True),
}


# ------------------------------------------------------------------------------------------ data


def training_data(name: str, hippocampus_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 in [0, 1] ``(N, *S)`` and labels uint8 of the model-training part."""
    if name.startswith("hippocampus"):
        train_ids = packaged.read_npz("hippocampus.npz")["train_ids"]
        n_volumes = RECIPES[name].n_volumes
        if n_volumes is not None:
            train_ids = np.sort(train_ids)[:n_volumes]
        ids, images, labels = sources.read_hippocampus(hippocampus_root)
        keep = np.isin(ids, train_ids)
        if keep.sum() != len(train_ids):
            raise SystemExit(f"{hippocampus_root} lacks some training volumes of the split")
        images, labels = images[keep], labels[keep]
        if name.startswith("hippocampus-2d"):
            has_fg = labels.reshape(labels.shape[0], labels.shape[1], -1).max(axis=2) > 0  # (N, X)
            images = np.concatenate([v[m] for v, m in zip(images, has_fg, strict=True)])
            labels = np.concatenate([v[m] for v, m in zip(labels, has_fg, strict=True)])
    elif name == "brain-mri":
        train_z = packaged.read_npz("brain_mri.npz")["train_ids"]
        z, images, labels = sources.read_mni152_axial()
        keep = np.isin(z, train_z)
        images, labels = images[keep], labels[keep]
    elif name == "nuclei":
        data = packaged.read_npz("nuclei.npz")
        tile = int(data["tile_size"])
        idx = data["train_ids"]
        images = packaged.tile_grid(data["image"], tile)[idx]
        labels = packaged.tile_grid(data["mask"], tile)[idx]
    else:
        raise SystemExit(f"unknown model {name}")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def test_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The test part of the packaged demo data (images float32, labels)."""
    data = packaged.load_demo_data(name)
    idx = data.split["test"]
    return data.images[idx], data.labels[idx].astype(np.int64)


# ------------------------------------------------------------------------------------------ training


def augment(x: torch.Tensor, y: torch.Tensor, recipe: Recipe, rng: np.random.Generator):
    """Random flips / 90° rotations of a batch (same transform for image and label)."""
    for axis in recipe.flip_axes:
        if rng.random() < 0.5:
            x = torch.flip(x, [axis + 2])
            y = torch.flip(y, [axis + 1])
    if recipe.rot90:
        k = int(rng.integers(4))
        x = torch.rot90(x, k, [-2, -1])
        y = torch.rot90(y, k, [-2, -1])
    return x.contiguous(), y.contiguous()


def loss_fn(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Cross-entropy + soft Dice over the foreground classes."""
    ce = F.cross_entropy(logits, y)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(y, n_classes).movedim(-1, 1).float()
    axes = [0, *range(2, logits.dim())]
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1.0 - soft_dice[1:].mean())


def train(name: str, images: np.ndarray, labels: np.ndarray, recipe: Recipe, log_every: int = 50):
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = build_demo_model(name)
    n_classes = DEMO_MODELS[name].n_classes
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.iterations, pct_start=0.1
    )
    x_all = torch.from_numpy(images).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    model.train()
    order: list[int] = []
    t0 = time.time()
    for it in range(recipe.iterations):
        if len(order) < recipe.batch_size:
            order += list(rng.permutation(len(images)))
        idx, order = order[: recipe.batch_size], order[recipe.batch_size :]
        x, y = augment(x_all[idx], y_all[idx], recipe, rng)
        loss = loss_fn(model(x), y, n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % log_every == 0 or it == 0:
            print(
                f"  {name} it {it + 1}/{recipe.iterations} loss {loss.item():.4f} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    return model.eval()


def per_image_dice(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean over foreground classes of Dice (a class absent from both counts as 1)."""
    scores = []
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        den = p.sum() + t.sum()
        scores.append(1.0 if den == 0 else 2.0 * (p & t).sum() / den)
    return float(np.mean(scores))


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    with torch.inference_mode():
        logits = torch.cat(
            [model(torch.from_numpy(images[k : k + 8]).unsqueeze(1)) for k in range(0, len(images), 8)]
        )
    pred = logits.argmax(1).numpy()
    dices = [per_image_dice(p, t, n_classes) for p, t in zip(pred, labels, strict=True)]
    return {"n_test": len(images), "dice_mean": float(np.mean(dices)), "dice_min": float(np.min(dices))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(RECIPES))
    parser.add_argument(
        "--hippocampus", type=Path, default=REPO.parent / "shared" / "data" / "msd_hippocampus"
    )
    parser.add_argument("--iterations", type=int, help="override the iteration count (experiments)")
    parser.add_argument("--no-save", action="store_true", help="train and evaluate without writing weights")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, help="write weights and report here instead of the package")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out_dir = args.out or demo_weights_path("nuclei").parent
    report_path = out_dir / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    for name in args.only or list(RECIPES):
        recipe = RECIPES[name]
        if args.iterations:
            recipe = Recipe(
                args.iterations, recipe.batch_size, recipe.lr, recipe.flip_axes, recipe.rot90, recipe.n_volumes
            )
        images, labels = training_data(name, args.hippocampus)
        print(f"{name}: {len(images)} training images {images.shape[1:]}", flush=True)
        t0 = time.time()
        model = train(name, images, labels, recipe)
        seconds = time.time() - t0
        test_images, test_labels = test_data(name)
        n_classes = DEMO_MODELS[name].n_classes
        if args.no_save:
            result = evaluate(model, test_images, test_labels, n_classes)
        else:
            path = save_state_dict(model, out_dir / demo_weights_path(name).name)
            reloaded = load_model(path, DEMO_MODELS[name].build)  # float16 weights, as shipped
            result = evaluate(reloaded, test_images, test_labels, n_classes)
            result["weights_bytes"] = os.path.getsize(path)
        result.update(
            n_train=len(images),
            iterations=recipe.iterations,
            batch_size=recipe.batch_size,
            train_seconds=round(seconds, 1),
            torch=torch.__version__,
        )
        print(f"{name}: {json.dumps(result)}", flush=True)
        if not args.no_save:
            report[name] = result
            report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
