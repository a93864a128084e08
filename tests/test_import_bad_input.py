"""Bad input to ``import nnunet`` / ``import arrays`` / ``sample``: exit 2, one line, nothing written.

Each case damages a fresh copy of good input folders and runs ``napari-conformal`` in this process
(``cli.main``). Checked every time:

* exit status 2 and exactly one line on stderr, ``napari-conformal: error: …``, containing the phrases that
  name the problem (the case, the file, both shapes where shapes disagree);
* no store at ``--out`` and no temporary sibling of it;
* every input file byte for byte as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _import_data import AFFINE, leftovers, tree_digest, write_nnunet

from napari_conformal.cli import main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good") / "nn"
    write_nnunet(root, names=("a", "b", "c"))
    arrays = root.parent / "arrays"
    rng = np.random.default_rng(3)
    for d in ("img", "lab", "smp"):
        (arrays / d).mkdir(parents=True)
    for name in ("a", "b", "c"):
        np.save(arrays / "img" / f"{name}.npy", rng.normal(size=(4, 5, 6)).astype(np.float32))
        np.save(arrays / "lab" / f"{name}.npy", rng.integers(0, 2, size=(4, 5, 6)).astype(np.uint8))
        fg = rng.uniform(size=(3, 4, 5, 6)).astype(np.float32)
        np.save(arrays / "smp" / f"{name}.npy", np.stack([1 - fg, fg], axis=1))
    return root.parent


def _nn(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "import", "nnunet", "--images", str(root / "nn/imagesTs"), "--labels", str(root / "nn/labelsTs"),
        "--members", str(root / "nn/fold_0"), str(root / "nn/fold_1"), "--out", str(out), "-q", *extra,
    ]  # fmt: skip


def _ar(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "import", "arrays", "--images", str(root / "arrays/img"), "--labels", str(root / "arrays/lab"),
        "--samples", str(root / "arrays/smp"), "--out", str(out), "-q", *extra,
    ]  # fmt: skip


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def _npz(root: Path, fold: int, case: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    path = root / f"nn/fold_{fold}/{case}.npz"
    with np.load(path) as z:
        probs = z["probabilities"]
    np.savez_compressed(path, probabilities=fn(probs))


def _shifted(affine: np.ndarray) -> np.ndarray:
    out = affine.copy()
    out[0, 3] += 5.0  # same voxel size, origin 5 mm away
    return out


def _nan(p: np.ndarray) -> np.ndarray:
    p = p.copy()
    p[1, 2, 3, 4] = np.nan
    return p


# (id, damage(root) -> None, argv(root, out) -> list, phrases expected in the one line)
CASES: list[tuple[str, Callable[[Path], None], Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    (
        "npz-missing-in-a-member",
        lambda r: (r / "nn/fold_1/b.npz").unlink(),
        _nn,
        ("case names do not match", "case 'b'", "b_0000.nii.gz", "fold_1/b.npz"),
    ),
    (
        "extra-npz-without-image",
        lambda r: shutil.copy(r / "nn/fold_0/a.npz", r / "nn/fold_0/zz.npz"),
        _nn,
        ("case names do not match", "fold_0/zz.npz", "zz_0000.nii.gz"),
    ),
    (
        "label-missing",
        lambda r: (r / "nn/labelsTs/c.nii.gz").unlink(),
        _nn,
        ("case names do not match", "case 'c'", "labelsTs/c.nii.gz"),
    ),
    (
        "label-shape",
        lambda r: _nifti(r / "nn/labelsTs/b.nii.gz", np.zeros((7, 6, 4), np.uint8)),
        _nn,
        ("case 'b'", "shape mismatch", "labelsTs/b.nii.gz", "(7, 6, 4)", "b_0000.nii.gz", "(7, 6, 5)"),
    ),
    (
        "npz-in-xyz-order",
        lambda r: _npz(r, 0, "a", lambda p: p.transpose(0, 3, 2, 1)),
        _nn,
        ("case 'a'", "shape mismatch", "fold_0/a.npz", "(3, 7, 6, 5)", "a_0000.nii.gz", "(C, 5, 6, 7)"),
    ),
    (
        "label-spacing",
        lambda r: _nifti(r / "nn/labelsTs/a.nii.gz", np.zeros((7, 6, 5), np.uint8), AFFINE @ np.diag([1, 1, 1.2, 1])),
        _nn,
        ("case 'a'", "spacing mismatch", "labelsTs/a.nii.gz", "(0.8, 0.8, 3)", "(0.8, 0.8, 2.5)"),
    ),
    (
        "label-other-grid",
        lambda r: _nifti(r / "nn/labelsTs/a.nii.gz", np.zeros((7, 6, 5), np.uint8), _shifted(AFFINE)),
        _nn,
        ("case 'a'", "another voxel grid", "labelsTs/a.nii.gz"),
    ),
    (
        "spacing-between-cases",
        lambda r: [
            _nifti(r / "nn/imagesTs/c_0000.nii.gz", np.zeros((7, 6, 5), np.float32), AFFINE @ np.diag([2, 1, 1, 1])),
            _nifti(r / "nn/labelsTs/c.nii.gz", np.zeros((7, 6, 5), np.uint8), AFFINE @ np.diag([2, 1, 1, 1])),
        ],
        _nn,
        ("spacing mismatch", "case 'c'", "c_0000.nii.gz", "case 'a'", "(2.5, 0.8, 1.6)", "(2.5, 0.8, 0.8)"),
    ),
    (
        "probabilities-not-summing-to-1",
        lambda r: _npz(r, 1, "b", lambda p: p * 0.9),
        _nn,
        ("case 'b'", "fold_1/b.npz", "do not sum to 1", "sum 0.89", "210 voxel(s)"),
    ),
    (
        "logits-instead-of-probabilities",
        lambda r: _npz(r, 1, "b", lambda p: np.log(p) + 0.3),
        _nn,
        ("case 'b'", "fold_1/b.npz", "outside [0, 1]", "logits"),
    ),
    (
        "nan-probability",
        lambda r: _npz(r, 0, "c", _nan),
        _nn,
        ("case 'c'", "fold_0/c.npz", "NaN", "(1, 2, 3, 4)"),
    ),
    (
        "label-not-below-C",
        lambda r: _nifti(r / "nn/labelsTs/b.nii.gz", np.full((7, 6, 5), 3, np.uint8)),
        _nn,
        ("case 'b'", "labelsTs/b.nii.gz", "value 3", "C = 3"),
    ),
    (
        "label-not-whole",
        lambda r: _nifti(r / "nn/labelsTs/b.nii.gz", np.full((7, 6, 5), 0.5, np.float32)),
        _nn,
        ("case 'b'", "labelsTs/b.nii.gz", "not a whole class number"),
    ),
    (
        "npz-without-probabilities",
        lambda r: np.savez(r / "nn/fold_0/a.npz", softmax=np.zeros((3, 5, 6, 7))),
        _nn,
        ("case 'a'", "fold_0/a.npz", "no 'probabilities'", "softmax"),
    ),
    (
        "classes-differ-between-members",
        lambda r: _npz(r, 1, "a", lambda p: np.concatenate([p[:2], p[2:] * 0.5, p[2:] * 0.5])),
        _nn,
        ("case 'a'", "C = 4", "C = 3"),
    ),
    (
        "image-not-named-by-channel",
        lambda r: shutil.copy(r / "nn/imagesTs/a_0000.nii.gz", r / "nn/imagesTs/d.nii.gz"),
        _nn,
        ("imagesTs/d.nii.gz", "CASE_XXXX"),
    ),
    (
        "out-exists",
        lambda r: (r / "out.zarr").mkdir(),
        _nn,
        ("already exists", "--overwrite"),
    ),
    (
        "out-folder-missing",
        lambda r: None,
        lambda r, out: _nn(r, out.parent / "missing" / "s.zarr"),
        ("does not exist",),
    ),
    (
        "out-inside-an-input",
        lambda r: None,
        lambda r, out: _nn(r, r / "nn/fold_0/s.zarr"),
        ("lies in the input folder",),
    ),
    (
        "images-folder-missing",
        lambda r: shutil.rmtree(r / "nn/imagesTs"),
        _nn,
        ("images", "does not exist"),
    ),
    (
        "arrays-samples-shape",
        lambda r: np.save(r / "arrays/smp/b.npy", np.full((3, 2, 4, 5, 7), 0.5, np.float32)),
        _ar,
        ("case 'b'", "shape mismatch", "smp/b.npy", "(3, 2, 4, 5, 7)", "img/b.npy", "(4, 5, 6)"),
    ),
    (
        "arrays-samples-in-xyz",
        lambda r: np.save(r / "arrays/smp/b.npy", np.full((3, 2, 6, 5, 4), 0.5, np.float32)),
        _ar,
        ("case 'b'", "shape mismatch", "--spatial-order xyz"),
    ),
    (
        "arrays-label-shape",
        lambda r: np.save(r / "arrays/lab/c.npy", np.zeros((4, 5), np.uint8)),
        _ar,
        ("case 'c'", "shape mismatch", "lab/c.npy", "(4, 5)", "(4, 5, 6)"),
    ),
    (
        "arrays-name-mismatch",
        lambda r: (r / "arrays/smp/a.npy").rename(r / "arrays/smp/A.npy"),
        _ar,
        ("case names do not match", "case 'a'", "smp/a.npy"),
    ),
    (
        "arrays-label-too-large",
        lambda r: np.save(r / "arrays/lab/a.npy", np.full((4, 5, 6), 2, np.uint8)),
        _ar,
        ("case 'a'", "lab/a.npy", "value 2", "0..1"),
    ),
    (
        "arrays-logits-without-flag",
        lambda r: np.save(r / "arrays/smp/a.npy", np.full((3, 2, 4, 5, 6), 2.0, np.float32)),
        _ar,
        ("case 'a'", "smp/a.npy", "outside [0, 1]", "--logits"),
    ),
    (
        "arrays-pickled-object-array",
        lambda r: np.save(r / "arrays/smp/a.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True),
        _ar,
        ("smp/a.npy", "Python objects", "unpickle"),
    ),
    (
        "arrays-npz-ambiguous",
        lambda r: [(r / "arrays/smp/a.npy").unlink(), np.savez(r / "arrays/smp/a.npz", x=np.zeros((3, 2, 4, 5, 6)), y=np.zeros(2))],
        _ar,
        ("smp/a.npz", "2 arrays", "x, y"),
    ),
    (
        "arrays-spacing-count",
        lambda r: None,
        lambda r, out: _ar(r, out, "--spacing", "1", "1", "1", "1"),
        ("--spacing takes 2 or 3 numbers",),
    ),
]


@pytest.mark.parametrize(("damage", "argv", "phrases"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_import_input(pristine, tmp_path, capsys, damage, argv, phrases):
    root = tmp_path / "in"
    shutil.copytree(pristine, root)
    damage(root)
    before = tree_digest(root)
    out = root / "out.zarr"
    args = argv(root, out)
    target = Path(args[args.index("--out") + 1])
    existed = target.exists()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-conformal: error: ") and err.count("\n") == 1, err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"
    if not existed:
        assert leftovers(target) == [] if target.parent.exists() else True
    assert tree_digest(root) == before


def test_interrupt_leaves_no_store(pristine, tmp_path):
    """Ctrl-C (SIGINT) in the middle of writing: exit 130, no store, no temporary folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from _import_data import write_nnunet

    root = tmp_path / "big"
    write_nnunet(root, names=tuple(f"c{k:02d}" for k in range(40)), shape_xyz=(40, 40, 30), n_members=3)
    out = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "napari_conformal.cli", "import", "nnunet", "--images", str(root / "imagesTs"),
            "--members", *[str(root / f"fold_{t}") for t in range(3)], "--out", str(out), "-q"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".s.zarr.partial") for p in tmp_path.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "interrupted" in proc.stderr.read()
    assert leftovers(out) == []


def test_interrupt_while_the_bar_draws_leaves_no_store(tmp_path, monkeypatch):
    """Ctrl-C outside the import generator (while the progress bar draws): its temporary folder goes at once.

    The generator is still referenced here when the interrupt propagates, so only the command's own
    closing of it can run the atomic write's cleanup before the process would exit.
    """
    from napari_conformal import _terminal
    from napari_conformal.cli import _run
    from napari_conformal.core.progress import Step
    from napari_conformal.io.atomic import atomic_directory

    out = tmp_path / "s.zarr"

    def writing():
        with atomic_directory(out) as tmp:
            for i in range(3):
                (tmp / f"chunk{i}").write_bytes(b"0")
                yield Step(i + 1, 3, "writing")
        return out

    def bar_hit_by_ctrl_c(label, quiet):
        def draw(done, total, stage=None):
            raise KeyboardInterrupt

        return draw

    monkeypatch.setattr(_terminal, "progress_bar", bar_hit_by_ctrl_c)
    gen = writing()
    with pytest.raises(KeyboardInterrupt):
        _run(gen, "importing", quiet=False)
    assert leftovers(out) == []


def test_a_write_landing_after_the_interrupt_is_removed_too(tmp_path):
    """zarr writes chunks from its own thread: one that lands after Ctrl-C must not leave the folder behind."""
    import threading
    import time

    from napari_conformal.io.atomic import atomic_directory

    out = tmp_path / "s.zarr"
    writer = None

    def late_write(folder):
        time.sleep(0.05)  # after the interrupt, while (or after) the folder is being removed
        (folder / "samples" / "c" / "0").mkdir(parents=True, exist_ok=True)
        (folder / "samples" / "c" / "0" / "0").write_bytes(b"chunk")

    with pytest.raises(KeyboardInterrupt), atomic_directory(out) as tmp:
        writer = threading.Thread(target=late_write, args=(tmp,))
        writer.start()
        raise KeyboardInterrupt
    writer.join()
    assert leftovers(out) == []
