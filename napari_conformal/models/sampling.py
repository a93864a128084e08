"""Turn a torch segmentation model into the store's ``samples``: T softmax samples per image.

Three samplers share one interface (:class:`SampleGenerator`):

* :class:`MCDropoutSampler` — Monte-Carlo dropout: T forward passes with the dropout layers active
  and batch normalisation in evaluation mode (running statistics); ``train_mode=True`` gives the
  variant that runs the whole network in training mode (batch statistics of the T copies).
* :class:`EnsembleSampler` — a deep ensemble: one sample per model.
* :class:`TTASampler` — test-time augmentation: one sample per flip of the spatial axes, with the
  flip undone on the output.

Each sampler reads images ``(N, *S)`` (or ``(N, C, *S)`` with ``channel_axis=0`` per image) and
returns float32 probabilities ``(N, T, L, *S)`` that sum to 1 over L, the layout of the dataset
store (docs/store.md); :meth:`SampleGenerator.iter_samples` yields them one image at a time, so stores
larger than memory can be written image by image. A model returns ``(B, L, *S)`` logits (softmax is
applied), or probabilities with ``output="probabilities"``; a single output channel is read as a
binary foreground logit/probability and expanded to L = 2 (background, foreground).

Randomness: with an integer ``seed`` the samples of image ``i`` come from a torch RNG seeded from
``(seed, key_i)`` (``key_i = i`` unless ``keys`` are given) inside :func:`torch.random.fork_rng`,
so the caller's global RNG state is untouched and an image's samples do not depend on which other
images are processed. Results are reproducible for the same seed, ``batch_size`` and device.

The model's train/eval flags, its device and (for ``train_mode``) its batch-norm running
statistics are restored after every call.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_conformal.core.device import resolve_device
from napari_conformal.errors import Cancelled, ConformalError

__all__ = [
    "EnsembleSampler",
    "MCDropoutSampler",
    "SampleGenerator",
    "TTASampler",
    "ensemble_samples",
    "has_dropout",
    "mc_dropout_samples",
    "quantize_probabilities",
    "tta_samples",
]

Progress = Callable[[int, int], Any]
ShouldStop = Callable[[], bool]

_DROPOUT_NAMES = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
)
_BATCHNORM_NAMES = frozenset(
    {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d"}
)


# --------------------------------------------------------------------------------- module helpers


def _kind_name(module: nn.Module) -> str:
    """Class name of a module, also for TorchScript modules (which keep it as ``original_name``)."""
    return str(getattr(module, "original_name", type(module).__name__))


def _is_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.dropout._DropoutNd) or _kind_name(module) in _DROPOUT_NAMES


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or _kind_name(module) in _BATCHNORM_NAMES


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` contains a dropout layer (also inside a TorchScript module)."""
    return any(_is_dropout(m) for m in model.modules())


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def _prepared(model: nn.Module, device: torch.device, *, dropout: bool, train_all: bool) -> Iterator[None]:
    """Put ``model`` on ``device`` in sampling mode; restore flags, device and BN statistics after.

    ``dropout=True`` switches only the dropout layers to training mode (everything else evaluates,
    batch norm uses running statistics); ``train_all=True`` switches the whole model to training
    mode, and the batch-norm buffers it updates are put back afterwards.
    """
    modules = list(model.modules())
    flags = [m.training for m in modules]
    home = _model_device(model)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        model.to(device)
        model.eval()
        if train_all:
            model.train()
            for m in modules:
                if _is_batchnorm(m):
                    saved.extend((b, b.detach().clone()) for b in m.buffers())
        elif dropout:
            for m in modules:
                if _is_dropout(m):
                    m.train()
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag
        if home is not None and home != device:
            model.to(home)


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _image_seed(seed: int, key: int) -> int:
    """A 63-bit torch seed derived from (seed, key) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, key]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------- base class


class SampleGenerator(ABC):
    """Common machinery: input checks, batching, softmax, progress, cancellation, seeding.

    Parameters
    ----------
    batch_size : int
        Forward passes per batch (copies of one image; samples are batched, images are not).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:i"`` (see :func:`napari_conformal.core.device.resolve_device`).
    seed : int or None
        Seed of the sampling randomness (None: the global torch RNG, not reproducible).
    output : {"logits", "probabilities"}
        What the model returns along axis 1.
    channel_axis : int or None
        None: every image is ``(*S)`` and gets a channel axis of size 1; 0: every image is ``(C, *S)``.
    patch_size : sequence of int, optional
        The model's input size ``(Y, X)`` / ``(Z, Y, X)``: images are sampled window by window and the
        windows blended (:mod:`napari_conformal.models.sliding_window`). None: whole images.
    overlap : float
        Fraction of a window shared with each neighbour when ``patch_size`` is given, in [0, 1).
    """

    #: Value of the store's ``sampler`` attribute.
    name: str = "unknown"

    def __init__(
        self,
        *,
        batch_size: int = 8,
        device: str | torch.device = "auto",
        seed: int | None = 0,
        output: str = "logits",
        channel_axis: int | None = None,
        patch_size: Sequence[int] | None = None,
        overlap: float = 0.5,
    ) -> None:
        from napari_conformal.models.sliding_window import check_patch

        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ConformalError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise ConformalError(f"seed must be a non-negative integer or None, got {seed!r}")
        if output not in ("logits", "probabilities"):
            raise ConformalError(f"output must be 'logits' or 'probabilities', got {output!r}")
        if channel_axis not in (None, 0):
            raise ConformalError(f"channel_axis must be None or 0, got {channel_axis!r}")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.seed = None if seed is None else int(seed)
        self.output = output
        self.channel_axis = channel_axis
        self.patch_size, self.overlap = check_patch(patch_size, overlap)

    # -- to be provided by subclasses ----------------------------------------------------------

    @property
    @abstractmethod
    def n_samples(self) -> int:
        """T, the number of samples per image."""

    @abstractmethod
    def _sample_tensor(self, x: torch.Tensor, should_stop: ShouldStop | None) -> torch.Tensor:
        """Probabilities ``(T, L, *S)`` for one input ``(1, C, *S)`` already on the device."""

    @abstractmethod
    def _sampling_mode(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the model(s) sit on the device in sampling mode."""

    # -- shared pieces -------------------------------------------------------------------------

    def _sample_image_tensor(self, x: torch.Tensor, should_stop: ShouldStop | None) -> torch.Tensor:
        """Probabilities ``(T, L, *S)`` of one input ``(1, C, *S)``, window by window when ``patch_size``."""
        if self.patch_size is None:
            return self._sample_tensor(x, should_stop)
        from napari_conformal.models.sliding_window import sliding_window

        return sliding_window(lambda w: self._sample_tensor(w, should_stop), x, self.patch_size, self.overlap)

    def _to_input(self, image: Any, index: int) -> torch.Tensor:
        arr = np.asarray(image)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ConformalError(f"images, image {index}: dtype {arr.dtype}, expected real numbers")
        if self.channel_axis is None:
            arr = arr[np.newaxis]
        if arr.ndim not in (3, 4):
            extra = "(C, Y, X) or (C, Z, Y, X)" if self.channel_axis == 0 else "(Y, X) or (Z, Y, X)"
            raise ConformalError(
                f"images, image {index}: expected shape {extra}, got {np.asarray(image).shape}"
            )
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ConformalError(f"images, image {index}: contains NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0).to(self.device)

    def _probabilities(self, out: Any, spatial: Sequence[int]) -> torch.Tensor:
        """Model output ``(B, L or 1, *S)`` → float32 probabilities ``(B, L ≥ 2, *S)``."""
        if not isinstance(out, torch.Tensor):
            raise ConformalError(
                f"the model returned {type(out).__name__}, expected one tensor (B, L, *S); "
                "wrap the model so that forward returns the segmentation logits"
            )
        if out.dim() != len(spatial) + 2 or tuple(out.shape[2:]) != tuple(spatial):
            raise ConformalError(
                f"the model output has shape {tuple(out.shape)}, expected (B, L, {', '.join(map(str, spatial))})"
            )
        out = out.float()
        if self.output == "logits":
            if out.shape[1] == 1:
                fg = torch.sigmoid(out)
                return torch.cat([1.0 - fg, fg], dim=1)
            return torch.softmax(out, dim=1)
        if out.shape[1] == 1:
            out = torch.cat([1.0 - out, out], dim=1)
        if not torch.isfinite(out).all() or out.min() < -1e-4 or out.max() > 1 + 1e-4:
            raise ConformalError("the model output is not probabilities in [0, 1] (use output='logits'?)")
        total = out.sum(dim=1)
        if (total - 1).abs().max() > 1e-3:
            raise ConformalError("the model output does not sum to 1 over the classes (use output='logits'?)")
        return out.clamp(0.0, 1.0) / total.unsqueeze(1)

    def _batched(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        inputs: Callable[[int, int], torch.Tensor],
        total: int,
        spatial: Sequence[int],
        should_stop: ShouldStop | None,
    ) -> torch.Tensor:
        """Run ``forward`` over ``inputs(start, stop)`` in batches; probabilities ``(total, L, *S)``."""
        parts = []
        for start in range(0, total, self.batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled()
            stop = min(total, start + self.batch_size)
            parts.append(self._probabilities(forward(inputs(start, stop)), spatial))
        return torch.cat(parts, dim=0)

    def sample_image(self, image: Any, *, key: int = 0, should_stop: ShouldStop | None = None) -> np.ndarray:
        """Samples of one image.

        Parameters
        ----------
        image : array ``(*S)`` (or ``(C, *S)`` with ``channel_axis=0``)
        key : int
            Mixed into the seed (the image's index or identifier).
        should_stop : callable, optional
            Polled before every batch; True raises :class:`napari_conformal.errors.Cancelled`.

        Returns
        -------
        numpy.ndarray, float32, shape ``(T, L, *S)``
        """
        return next(iter(self.iter_samples([image], keys=[key], should_stop=should_stop)))

    def iter_samples(
        self,
        images: Iterable[Any],
        *,
        keys: Iterable[int] | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the samples ``(T, L, *S)`` float32 of each image in turn.

        Parameters
        ----------
        images : array ``(N, *S)`` or iterable of arrays
        keys : iterable of int, optional
            Per-image seed keys (default 0, 1, 2, …): give stable identifiers to make an image's
            samples independent of its position.
        progress : callable, optional
            ``progress(done, total)`` after each image (``total`` is ``len(images)`` or None).
        should_stop : callable, optional
            Polled before every batch; True raises :class:`napari_conformal.errors.Cancelled`.

        While the iterator runs the model sits on ``device`` in sampling mode; its device, flags and
        batch-norm statistics are restored when the iterator is exhausted, closed or collected.
        """
        if progress is not None and not callable(progress):
            raise TypeError("progress must be a callable progress(done, total)")
        total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
        key_iter = iter(keys) if keys is not None else itertools.count()
        with self._sampling_mode():
            for i, image in enumerate(images):
                try:
                    key = int(next(key_iter))
                except StopIteration:
                    raise ConformalError(f"keys: fewer keys than images (no key for image {i})") from None
                if key < 0:
                    raise ConformalError(f"keys: must be non-negative integers, got {key} for image {i}")
                x = self._to_input(image, i)
                with torch.inference_mode():
                    if self.seed is None:
                        probs = self._sample_image_tensor(x, should_stop)
                    else:
                        with _fork_rng(self.device):
                            torch.manual_seed(_image_seed(self.seed, key))
                            probs = self._sample_image_tensor(x, should_stop)
                    result = probs.cpu().numpy().astype(np.float32, copy=True)
                yield result
                if progress is not None:
                    progress(i + 1, total)

    def __call__(
        self,
        images: Iterable[Any],
        *,
        keys: Iterable[int] | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> np.ndarray:
        """Samples of all images as one array ``(N, T, L, *S)`` float32 (see :meth:`iter_samples`)."""
        out = list(self.iter_samples(images, keys=keys, progress=progress, should_stop=should_stop))
        if not out:
            raise ConformalError("images: no images given")
        shapes = {a.shape for a in out}
        if len(shapes) != 1:
            raise ConformalError(
                f"images have different shapes {sorted(shapes)}; use iter_samples for mixed sizes"
            )
        return np.stack(out)


# --------------------------------------------------------------------------------- samplers


def _check_module(name: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConformalError(
            f"{name} must be a torch.nn.Module (or a TorchScript module), got {type(model).__name__}"
        )
    return model


class MCDropoutSampler(SampleGenerator):
    """Monte-Carlo dropout: ``n_samples`` forward passes with dropout active.

    Parameters
    ----------
    model : torch.nn.Module
        The segmentation network (contains at least one dropout layer).
    n_samples : int
        T.
    train_mode : bool
        False (default): only the dropout layers are in training mode; batch norm uses its running
        statistics, so every sample sees the same normalisation. True: the whole model in training
        mode (batch norm normalises with the statistics of the batch of copies), the variant used by
        some papers; the running statistics it updates are restored afterwards.
    **kwargs
        ``batch_size``, ``device``, ``seed``, ``output``, ``channel_axis`` (see :class:`SampleGenerator`).
    """

    name = "mc-dropout"

    def __init__(
        self, model: nn.Module, n_samples: int = 20, *, train_mode: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model = _check_module("model", model)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ConformalError(f"n_samples must be a positive integer, got {n_samples!r}")
        if not has_dropout(self.model):
            raise ConformalError(
                "the model has no dropout layer: MC-dropout samples would all be identical "
                "(use an ensemble or test-time augmentation instead)"
            )
        self._n = int(n_samples)
        self.train_mode = bool(train_mode)
        if self.train_mode:
            self.name = "mc-dropout (train mode)"

    @property
    def n_samples(self) -> int:
        return self._n

    def _sampling_mode(self) -> contextlib.AbstractContextManager[Any]:
        return _prepared(self.model, self.device, dropout=True, train_all=self.train_mode)

    def _sample_tensor(self, x: torch.Tensor, should_stop: ShouldStop | None) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        return self._batched(
            self.model, lambda a, b: x.expand(b - a, *x.shape[1:]), self._n, spatial, should_stop
        )


class EnsembleSampler(SampleGenerator):
    """A deep ensemble: one sample per member model, each in evaluation mode.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        The T members (same input and output layout).
    **kwargs
        ``device``, ``seed``, ``output``, ``channel_axis`` (``batch_size`` is unused: one pass per model).
    """

    name = "ensemble"

    def __init__(self, models: Sequence[nn.Module], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(models, nn.Module) or not isinstance(models, Sequence) or len(models) < 1:
            raise ConformalError("models must be a non-empty list of torch.nn.Module")
        self.models = [_check_module(f"models[{k}]", m) for k, m in enumerate(models)]

    @property
    def n_samples(self) -> int:
        return len(self.models)

    def _sampling_mode(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        try:
            for model in self.models:
                stack.enter_context(_prepared(model, self.device, dropout=False, train_all=False))
        except BaseException:
            stack.close()
            raise
        return stack

    def _sample_tensor(self, x: torch.Tensor, should_stop: ShouldStop | None) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        parts = []
        for model in self.models:
            if should_stop is not None and should_stop():
                raise Cancelled()
            parts.append(self._probabilities(model(x), spatial))
        return torch.cat(parts, dim=0)


def _all_flips(ndim: int) -> list[tuple[int, ...]]:
    return [c for r in range(ndim + 1) for c in itertools.combinations(range(ndim), r)]


class TTASampler(SampleGenerator):
    """Test-time augmentation: one sample per flip of the spatial axes, flipped back.

    Parameters
    ----------
    model : torch.nn.Module
        The network, run in evaluation mode.
    flips : sequence of tuples of int, optional
        Spatial axes (0 = first spatial axis) to flip for each sample; ``()`` is the identity.
        Default: every subset of the axes (4 samples in 2D, 8 in 3D), the identity first.
    **kwargs
        ``batch_size``, ``device``, ``seed``, ``output``, ``channel_axis``.
    """

    name = "tta-flips"

    def __init__(self, model: nn.Module, flips: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = _check_module("model", model)
        if flips is not None:
            if isinstance(flips, str | bytes) or len(flips) < 1:
                raise ConformalError("flips must be a non-empty list of tuples of spatial axes")
            checked = []
            for f in flips:
                axes = tuple(int(a) for a in f)
                if len(set(axes)) != len(axes) or any(a < 0 or a > 2 for a in axes):
                    raise ConformalError(f"flips: {tuple(f)} is not a set of distinct spatial axes in 0..2")
                checked.append(axes)
            self.flips: list[tuple[int, ...]] | None = checked
        else:
            self.flips = None

    @property
    def n_samples(self) -> int:
        if self.flips is None:
            raise ConformalError(
                "the number of default flips depends on the image dimension (4 in 2D, 8 in 3D)"
            )
        return len(self.flips)

    def _sampling_mode(self) -> contextlib.AbstractContextManager[Any]:
        return _prepared(self.model, self.device, dropout=False, train_all=False)

    def _flips_for(self, ndim: int) -> list[tuple[int, ...]]:
        flips = self.flips if self.flips is not None else _all_flips(ndim)
        for f in flips:
            if any(a >= ndim for a in f):
                raise ConformalError(f"flips: {f} names an axis beyond the {ndim} spatial axes of the image")
        return flips

    def _sample_tensor(self, x: torch.Tensor, should_stop: ShouldStop | None) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        flips = self._flips_for(len(spatial))

        def dims(f: tuple[int, ...]) -> list[int]:
            return [a + 2 for a in f]

        def inputs(a: int, b: int) -> torch.Tensor:
            return torch.cat([torch.flip(x, dims(f)) if f else x for f in flips[a:b]], dim=0)

        probs = self._batched(self.model, inputs, len(flips), spatial, should_stop)
        return torch.stack(
            [torch.flip(probs[t], [a + 1 for a in f]) if f else probs[t] for t, f in enumerate(flips)]
        )


# --------------------------------------------------------------------------------- functions


def mc_dropout_samples(
    model: nn.Module,
    images: Iterable[Any],
    n_samples: int = 20,
    *,
    train_mode: bool = False,
    keys: Iterable[int] | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """MC-dropout samples ``(N, T, L, *S)`` float32 of ``images`` (see :class:`MCDropoutSampler`)."""
    sampler = MCDropoutSampler(model, n_samples, train_mode=train_mode, **kwargs)
    return sampler(images, keys=keys, progress=progress, should_stop=should_stop)


def ensemble_samples(
    models: Sequence[nn.Module],
    images: Iterable[Any],
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Ensemble samples ``(N, len(models), L, *S)`` float32 (see :class:`EnsembleSampler`)."""
    return EnsembleSampler(models, **kwargs)(images, progress=progress, should_stop=should_stop)


def tta_samples(
    model: nn.Module,
    images: Iterable[Any],
    flips: Sequence[Sequence[int]] | None = None,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Flip test-time-augmentation samples ``(N, T, L, *S)`` float32 (see :class:`TTASampler`)."""
    return TTASampler(model, flips, **kwargs)(images, progress=progress, should_stop=should_stop)


def quantize_probabilities(probs: np.ndarray, axis: int, denominator: int = 2048) -> np.ndarray:
    """Round probabilities to multiples of ``1 / denominator`` that still sum to exactly 1.

    Every class but the first (background) is rounded to the nearest multiple; the first takes the
    remainder ``1 − Σ others`` (when rounding pushed the others above 1, the excess is taken off the
    largest one). With ``denominator`` ≤ 2048 every value is exact in float16, so a float16 store
    holds sums of exactly 1, and the many near-0/near-1 values become exact 0 and 1, which compress
    several times better. No value moves by more than ``L / (2·denominator)``.

    Parameters
    ----------
    probs : float array
        Probabilities summing to 1 along ``axis`` (e.g. ``(T, L, *S)`` with ``axis=1``).
    axis : int
        The class axis.
    denominator : int
        Grid of the result (≥ 2).

    Returns
    -------
    float32 array of the same shape
    """
    if isinstance(denominator, bool) or not isinstance(denominator, int | np.integer) or denominator < 2:
        raise ConformalError(f"denominator must be an integer >= 2, got {denominator!r}")
    p = np.moveaxis(np.asarray(probs, dtype=np.float64), axis, 0)
    if p.shape[0] < 2:
        raise ConformalError(f"probs: the class axis {axis} has {p.shape[0]} entries, expected at least 2")
    counts = np.rint(p[1:] * denominator)
    excess = np.maximum(counts.sum(axis=0) - denominator, 0.0)
    if excess.any():
        largest = counts.argmax(axis=0)
        np.put_along_axis(
            counts,
            largest[np.newaxis],
            np.take_along_axis(counts, largest[np.newaxis], axis=0) - excess[np.newaxis],
            axis=0,
        )
    first = denominator - counts.sum(axis=0, keepdims=True)
    out = np.concatenate([first, counts], axis=0) / denominator
    return np.moveaxis(out, 0, axis).astype(np.float32)
