"""A user's trained model and a folder of images → a dataset store of the model's samples.

:func:`iter_sample_store` reads the images case by case, draws T samples from the model (MC dropout:
dropout active, batch norm frozen on its running statistics; or an ensemble of models, one sample each;
:mod:`napari_conformal.models.sampling`), windowed when the model has a fixed input size
(:mod:`napari_conformal.models.sliding_window`), on a GPU when there is one, and writes the store with the
import engine (:mod:`napari_conformal.io.importers.build`): the images' and labels' headers and values are
checked before the model runs, the model's outputs as they are written into the temporary store, and a
failure or a cancel leaves no store behind.

Models (:func:`load_models`): a TorchScript file (``torch.jit.script(model).save(path)``; carries its own
architecture), or a state dict (``torch.save(model.state_dict(), path)``, read with
``weights_only=True``) with an ``architecture`` — ``"package.module:function"`` or
``"path/to/file.py:function"`` — returning the untrained ``torch.nn.Module``. A whole pickled module
(``torch.save(model)``) is refused: loading it would run arbitrary code.

Images (:func:`image_cases`): one file per case (NIfTI, ``.npy``, ``.npz``, TIFF, zarr), or with
``nnunet_names=True`` nnU-Net's ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, … with one file per input
channel, stacked as the model's input ``(C, *S)``; channel ``channel`` is the image kept in the store.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.core.progress import Step
from napari_conformal.errors import Cancelled, ConformalError, ImportInputError
from napari_conformal.io.importers.build import (
    CaseArrays,
    CaseHeader,
    CaseSource,
    checked_image,
    checked_label,
    checked_sample,
    iter_import,
)
from napari_conformal.io.importers.cases import CaseFolder, find_case_files, match_cases, natural_key
from napari_conformal.io.importers.files import ARRAY_SUFFIXES, InputFile, case_name_of, open_input

__all__ = ["ModelCase", "image_cases", "iter_sample_store", "load_architecture", "load_models", "sample_store"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NORMALIZE = ("none", "zscore")


# ------------------------------------------------------------------------------------------ models


def load_architecture(spec: str) -> Callable[[], Any]:
    """The model factory named by ``"package.module:function"`` or ``"path/to/file.py:function"``.

    This imports (runs) the named Python code: the user's own architecture definition.
    """
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise ConformalError(
            f"architecture must be 'package.module:function' or 'file.py:function', got {spec!r}"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConformalError(f"architecture: the file {path} does not exist")
            loader_spec = importlib.util.spec_from_file_location(f"_napari_conformal_arch_{path.stem}", path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConformalError(f"architecture: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConformalError:
        raise
    except Exception as exc:
        raise ConformalError(f"architecture: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConformalError(f"architecture: {module_name} has no callable {attr!r}")
    return factory


def load_models(
    paths: Sequence[str | os.PathLike[str]], architecture: str | Callable[[], Any] | None = None, *, device: Any = "cpu"
) -> list[Any]:
    """Load each model file: TorchScript, or a state dict into ``architecture()``; evaluation mode.

    Raises
    ------
    ConformalError
        Missing or unreadable file, a state dict without an architecture, a whole pickled module.
    """
    from napari_conformal.models.loading import is_torchscript_file, load_model, load_state_dict

    factory = load_architecture(architecture) if isinstance(architecture, str) else architecture
    models = []
    for path in paths:
        p = Path(os.fspath(path))
        if not p.is_file():
            raise ConformalError(f"model {p}: no such file")
        if is_torchscript_file(p):
            models.append(load_model(p, device=device))
            continue
        try:
            load_state_dict(p)  # safe (weights_only): tells a state dict from a pickled module
        except ConformalError:
            raise ConformalError(
                f"model {p}: neither TorchScript nor a state dict of tensors; a whole pickled model "
                "(torch.save(model)) is refused because loading it would run code: save model.state_dict() "
                "and give --architecture, or save TorchScript (torch.jit.script(model).save(path))"
            ) from None
        if factory is None:
            raise ConformalError(
                f"model {p} is not TorchScript: a state dict needs its architecture (--architecture "
                "module:function); or save the model with torch.jit.script(model).save(path)"
            )
        models.append(load_model(p, factory, device=device))
    return models


# ------------------------------------------------------------------------------------------ cases


def image_cases(
    images: str | os.PathLike[str], *, nnunet_names: bool = False
) -> tuple[CaseFolder, dict[str, list[Path]]]:
    """The image folder's cases: ``(folder of each case's first channel, case → channel files)``."""
    root = Path(os.fspath(images))
    if not nnunet_names:
        folder = find_case_files(root, role="image", suffixes=ARRAY_SUFFIXES)
        return folder, {case: [path] for case, path in folder.files.items()}

    def channel_name(path: Path) -> str | None:
        match = _CHANNEL.match(case_name_of(path))
        return None if match is None else f"{match['case']}\0{int(match['channel'])}"

    raw = find_case_files(root, role="image", suffixes=ARRAY_SUFFIXES, name_of=channel_name)
    grouped: dict[str, dict[int, Path]] = {}
    for key, path in raw.files.items():
        case, channel = key.split("\0")
        grouped.setdefault(case, {})[int(channel)] = path
    channels: dict[str, list[Path]] = {}
    for case, files in grouped.items():
        if sorted(files) != list(range(len(files))):
            raise ImportInputError(
                f"case {case!r}: image channels {sorted(files)} are not numbered 0, 1, … ({case}_0000, {case}_0001, …)"
            )
        channels[case] = [files[k] for k in range(len(files))]
    counts = {len(v) for v in channels.values()}
    if len(counts) > 1:
        a, b = sorted(counts)[:2]
        ca = next(c for c, v in channels.items() if len(v) == a)
        cb = next(c for c, v in channels.items() if len(v) == b)
        raise ImportInputError(f"case {ca!r} has {a} image channel(s) but case {cb!r} has {b}")
    folder = CaseFolder("image", root, {c: v[0] for c, v in channels.items()}, lambda c: f"{c}_0000.nii.gz")
    return folder, channels


class ModelCase(CaseSource):
    """One case for :func:`iter_sample_store`: its image channel files, label file, and the sampler."""

    def __init__(
        self,
        name: str,
        index: int,
        channels: Sequence[Path],
        label: Path | None,
        sampler: Any,
        *,
        channel: int = 0,
        reverse_spatial: bool = False,
        model_axes: str = "zyx",
        normalize: str = "none",
    ) -> None:
        self.name = name
        self.index = index
        self.channel_paths = list(channels)
        self.label_path = label
        self.sampler = sampler
        self.channel = channel
        self.reverse = reverse_spatial
        self.model_axes = model_axes
        self.normalize = normalize
        self._header: CaseHeader | None = None

    def _files(self) -> tuple[list[InputFile], InputFile | None]:
        return (
            [open_input(p, reverse_spatial=self.reverse) for p in self.channel_paths],
            None if self.label_path is None else open_input(self.label_path, reverse_spatial=self.reverse),
        )

    def header(self) -> CaseHeader:
        if self._header is not None:
            return self._header
        channels, label = self._files()
        image = channels[self.channel]
        s = image.shape()
        if len(s) not in (2, 3):
            raise ImportInputError(f"case {self.name!r}: image {image.path} has shape {s}; expected (Y, X) or (Z, Y, X)")
        for f in channels:
            if f.shape() != s:
                raise ImportInputError(
                    f"case {self.name!r}: shape mismatch: image channel {f.path} has shape {f.shape()} but "
                    f"{image.path} has {s}"
                )
        if label is not None and label.shape() != s:
            raise ImportInputError(
                f"case {self.name!r}: shape mismatch: label {label.path} has shape {label.shape()} but image "
                f"{image.path} has {s}"
            )
        self._header = CaseHeader(
            name=self.name,
            spatial_shape=s,
            n_samples=int(self.sampler.n_samples),
            n_labels=None,
            has_label=label is not None,
            spacing=image.spacing,
            where=str(image.path),
            record={
                "image": [str(p) for p in self.channel_paths],
                "label": None if label is None else str(label.path),
            },
        )
        return self._header

    def _inputs(self) -> tuple[list[np.ndarray], np.ndarray | None]:
        head = self.header()
        channels, label = self._files()
        values = [checked_image(self.name, f"image {f.path}", f.read(), head.spatial_shape) for f in channels]
        lab = None
        if label is not None:
            lab = checked_label(self.name, f"label {label.path}", label.read(), head.spatial_shape, 2**31 - 1)
        return values, lab

    def check(self, samples_dtype: np.dtype) -> None:
        """Images finite and labels whole non-negative numbers, before the model runs."""
        self._inputs()

    def _model_input(self, channels: list[np.ndarray]) -> np.ndarray:
        x = np.stack(channels).astype(np.float32)
        if self.normalize == "zscore":
            mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
            std = x.std(axis=tuple(range(1, x.ndim)), keepdims=True)
            x = (x - mean) / np.where(std > 0, std, 1.0)
        if self.model_axes == "xyz":
            x = np.ascontiguousarray(np.transpose(x, [0, *range(x.ndim - 1, 0, -1)]))
        return x

    def load(self, samples_dtype: np.dtype) -> CaseArrays:
        head = self.header()
        s = head.spatial_shape
        channels, label = self._inputs()
        x = self._model_input(channels)
        try:
            probs = self.sampler.sample_image(x, key=self.index)
        except (ConformalError, Cancelled):
            raise
        except Exception as exc:  # the user's model failed: name the case and the input it was given
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = lines[-1] if lines else type(exc).__name__
            hint = "" if self.sampler.patch_size is not None else "; a model with a fixed input size needs --patch-size"
            raise ImportInputError(
                f"case {self.name!r}: the model failed on its input of shape {x.shape} (C, *S): {why}{hint}"
            ) from None
        if self.model_axes == "xyz":
            probs = np.transpose(probs, [0, 1, *range(probs.ndim - 1, 1, -1)])
        out = np.empty(probs.shape, dtype=samples_dtype)
        for t in range(probs.shape[0]):
            out[t] = checked_sample(self.name, f"model output, sample {t}", probs[t], s, samples_dtype)
        if label is not None:
            label = checked_label(self.name, f"label {self.label_path}", label, s, out.shape[1])
        return CaseArrays(channels[self.channel], out, label)


# ------------------------------------------------------------------------------------------ entry


def iter_sample_store(
    models: Sequence[Any],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mc_dropout: int | None = None,
    labels: str | os.PathLike[str] | None = None,
    nnunet_names: bool = False,
    channel: int = 0,
    spatial_order: str = "zyx",
    model_axes: str = "zyx",
    normalize: str = "none",
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    output: str = "logits",
    batch_size: int = 4,
    device: str = "auto",
    seed: int | None = 0,
    spacing: Sequence[float] | None = None,
    pad: bool = False,
    label_names: Sequence[str] | None = None,
    samples_dtype: str = "float16",
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Path]:
    """:func:`sample_store` as a generator of progress steps."""
    from napari_conformal.models.sampling import EnsembleSampler, MCDropoutSampler

    if spatial_order not in ("zyx", "xyz") or model_axes not in ("zyx", "xyz"):
        raise ConformalError("spatial_order and model_axes must be 'zyx' or 'xyz'")
    if normalize not in _NORMALIZE:
        raise ConformalError(f"normalize must be one of {', '.join(_NORMALIZE)}, got {normalize!r}")
    models = list(models)
    if not models:
        raise ConformalError("no model given")
    common = {
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "output": output,
        "channel_axis": 0,
        "patch_size": None if patch_size is None else tuple(int(p) for p in patch_size),
        "overlap": overlap,
    }
    if mc_dropout is not None:
        if len(models) != 1:
            raise ConformalError(f"MC dropout samples one model; {len(models)} were given (use an ensemble instead)")
        sampler: Any = MCDropoutSampler(models[0], int(mc_dropout), **common)
        what = f"mc-dropout: T = {int(mc_dropout)} passes, dropout active, batch norm frozen"
    else:
        sampler = EnsembleSampler(models, **common)
        what = f"ensemble: {len(models)} models, one sample each (evaluation mode)"
    image_folder, channels = image_cases(images, nnunet_names=nnunet_names)
    others = []
    label_folder = None
    if labels is not None:
        label_folder = find_case_files(labels, role="label", suffixes=ARRAY_SUFFIXES)
        others.append(label_folder)
    names = match_cases(image_folder, others)
    n_channels = len(channels[names[0]])
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < n_channels:
        raise ConformalError(f"channel {channel!r} does not exist: the images have {n_channels} channel(s)")
    cases = [
        ModelCase(
            case,
            i,
            channels[case],
            None if label_folder is None else label_folder.files[case],
            sampler,
            channel=channel,
            reverse_spatial=spatial_order == "xyz",
            model_axes=model_axes,
            normalize=normalize,
        )
        for i, case in enumerate(sorted(names, key=natural_key))
    ]
    record = {
        "importer": "model",
        "images": str(Path(os.fspath(images)).resolve()),
        "labels": None if labels is None else str(Path(os.fspath(labels)).resolve()),
        "sampler": what,
        "device": str(sampler.device),
        "patch_size": None if patch_size is None else list(common["patch_size"]),
        "overlap": overlap if patch_size is not None else None,
        "seed": seed,
        "normalize": normalize,
        "model_axes": model_axes,
    }
    return (
        yield from iter_import(
            cases,
            out,
            pad=pad,
            spacing=spacing,
            label_names=label_names,
            sampler=sampler.name,
            samples_dtype=samples_dtype,
            record=record,
            precheck=True,
            overwrite=overwrite,
            should_stop=should_stop,
        )
    )


def sample_store(
    models: Sequence[Any],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mc_dropout: int | None = None,
    progress: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Sample a model (or an ensemble) on a folder of images and write the samples as a new store.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        One model with ``mc_dropout=T`` (it needs a dropout layer), or the members of an ensemble
        (``mc_dropout=None``: one sample per model). Load files with :func:`load_models`.
    images : path-like
        Folder of images, one file per case (or nnU-Net channel files with ``nnunet_names=True``).
    out : path-like
        The new store.
    mc_dropout : int, optional
        T, the number of MC-dropout passes.
    progress : callable, optional
        ``progress(done, total, stage)`` after each case of each stage.
    **kwargs
        ``labels`` (folder of ground truth), ``nnunet_names``, ``channel`` (the channel stored),
        ``spatial_order`` / ``model_axes`` ("zyx" or "xyz": the arrays' and the model's spatial axis
        order), ``normalize`` ("none" or "zscore" per channel, model input only), ``patch_size``
        (sliding window; the model's input size), ``overlap``, ``output`` ("logits" or
        "probabilities"), ``batch_size``, ``device`` ("auto" takes a GPU when present), ``seed``,
        ``spacing``, ``pad``, ``label_names``, ``samples_dtype``, ``overwrite``, ``should_stop``.

    Returns
    -------
    DatasetStore
        The new store, opened read-only; its ``sampler`` attribute says how the samples were drawn.
    """
    from napari_conformal.io.store import open_store

    gen = iter_sample_store(models, images, out, mc_dropout=mc_dropout, **kwargs)
    try:
        while True:
            step = next(gen)
            if progress is not None:
                progress(step[0], step[1], step.stage)
    except StopIteration as stop:
        return open_store(stop.value)
