"""Arrays held in memory (a notebook's, or napari layers') as the cases of an import.

:func:`memory_cases` turns ``images``, ``samples`` and ``labels`` — each either one array with the cases
along its first axis or a list with one array per case (cases may then differ in shape, for ``pad=True``)
— into :class:`MemoryCase` objects for :func:`~napari_conformal.io.importers.build.iter_import`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_conformal.errors import ImportInputError
from napari_conformal.io.importers.build import (
    CaseArrays,
    CaseHeader,
    CaseSource,
    checked_image,
    checked_label,
    checked_sample,
)

__all__ = ["MemoryCase", "cases_from_layers", "memory_cases"]


def _per_case(name: str, values: Any) -> list[Any]:
    """``values`` split into cases: the first axis of an array, or the items of a list/tuple."""
    if values is None:
        raise ImportInputError(f"{name}: required")
    if hasattr(values, "shape") and hasattr(values, "__getitem__") and not isinstance(values, list | tuple):
        if len(values.shape) < 1:
            raise ImportInputError(f"{name}: expected one array per case or an array (N, …), got a scalar")
        return [values[i] for i in range(values.shape[0])]
    if isinstance(values, list | tuple):
        return list(values)
    raise ImportInputError(f"{name}: expected an array (N, …) or a list of per-case arrays, got {type(values).__name__}")


class MemoryCase(CaseSource):
    """One case given as arrays: image ``(*S)``, samples ``(T, L, *S)``, label ``(*S)`` or None."""

    def __init__(self, name: str, image: Any, samples: Any, label: Any | None, *, logits: bool = False) -> None:
        self.name = name
        self.image = image
        self.samples = samples
        self.label = label
        self.logits = logits

    def header(self) -> CaseHeader:
        s = tuple(int(v) for v in np.shape(self.image))
        smp = tuple(int(v) for v in np.shape(self.samples))
        if len(s) not in (2, 3):
            raise ImportInputError(f"case {self.name!r}: image of shape {s}; expected (Y, X) or (Z, Y, X)")
        if len(smp) != len(s) + 2 or smp[2:] != s:
            raise ImportInputError(
                f"case {self.name!r}: shape mismatch: samples of shape {smp}, image of shape {s}; expected "
                f"(T, L, *S) = (T, L, {', '.join(map(str, s))})"
            )
        if smp[1] < 2:
            raise ImportInputError(f"case {self.name!r}: samples have L = {smp[1]} class; need L >= 2, background first")
        if self.label is not None and tuple(np.shape(self.label)) != s:
            raise ImportInputError(
                f"case {self.name!r}: shape mismatch: label of shape {tuple(np.shape(self.label))}, image of shape {s}"
            )
        return CaseHeader(self.name, s, smp[0], smp[1], self.label is not None, None, "the arrays given")

    def load(self, samples_dtype: np.dtype) -> CaseArrays:
        head = self.header()
        s = head.spatial_shape
        image = checked_image(self.name, "image", np.asarray(self.image), s)
        label = None
        if self.label is not None:
            label = checked_label(self.name, "label", np.asarray(self.label), s, head.n_labels)
        out = np.empty((head.n_samples, head.n_labels, *s), dtype=samples_dtype)
        for t in range(head.n_samples):
            out[t] = checked_sample(
                self.name, f"samples[{t}]", np.asarray(self.samples[t]), s, samples_dtype, logits=self.logits
            )
        return CaseArrays(image, out, label)


def memory_cases(
    images: Any,
    samples: Any,
    labels: Any | None = None,
    *,
    case_names: Sequence[str] | None = None,
    logits: bool = False,
) -> list[MemoryCase]:
    """One :class:`MemoryCase` per case (see the module docstring).

    Raises
    ------
    ImportInputError
        Different numbers of cases in images, samples, labels and case names.
    """
    imgs = _per_case("images", images)
    smps = _per_case("samples", samples)
    labs = None if labels is None else _per_case("labels", labels)
    counts = {"images": len(imgs), "samples": len(smps)}
    if labs is not None:
        counts["labels"] = len(labs)
    if case_names is not None:
        if isinstance(case_names, str):
            raise ImportInputError("case_names: expected a list of names, got one string")
        counts["case_names"] = len(case_names)
    if len(set(counts.values())) != 1:
        raise ImportInputError(
            "the number of cases differs: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
    if not imgs:
        raise ImportInputError("no cases given")
    names = [str(c) for c in case_names] if case_names is not None else [f"case_{i:03d}" for i in range(len(imgs))]
    return [
        MemoryCase(names[i], imgs[i], smps[i], None if labs is None else labs[i], logits=logits)
        for i in range(len(imgs))
    ]


def cases_from_layers(image: Any, samples: Any, label: Any | None = None) -> tuple[Any, Any, Any | None]:
    """Image, samples and label arrays as napari layers hold them → per-case ``(images, samples, labels)``.

    Two layouts are read:

    * one case: image ``(*S)``, samples ``(T, L, *S)``, label ``(*S)``;
    * N cases along the first axis: image ``(N, *S)``, samples ``(N, T, L, *S)``, label ``(N, *S)``.

    When the shapes fit both (a 3-D image layer with 5-D samples can be one volume or N slices), N cases
    win if the samples' first axis equals the image's; otherwise one case.

    Raises
    ------
    ImportInputError
        Shapes that fit neither layout (naming both shapes).
    """
    img_shape = tuple(np.shape(image))
    smp_shape = tuple(np.shape(samples))
    stack = len(img_shape) in (3, 4) and len(smp_shape) == len(img_shape) + 2
    stack = stack and smp_shape[0] == img_shape[0] and smp_shape[3:] == img_shape[1:]
    single = len(img_shape) in (2, 3) and smp_shape[2:] == img_shape and len(smp_shape) == len(img_shape) + 2
    if not (stack or single):
        raise ImportInputError(
            f"shape mismatch: samples layer of shape {smp_shape}, image layer of shape {img_shape}: expected samples "
            "(T, L, *S) for an image (*S), or (N, T, L, *S) for images (N, *S)"
        )
    if label is not None and tuple(np.shape(label)) != img_shape:
        raise ImportInputError(
            f"shape mismatch: labels layer of shape {tuple(np.shape(label))}, image layer of shape {img_shape}"
        )
    if stack:
        return image, samples, label
    return [image], [samples], None if label is None else [label]
