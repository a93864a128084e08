"""Cases of an import: which file in each folder belongs to which case, matched by name.

A *case* is one image of the store. Each input folder (images, labels, one per ensemble member) holds
one file per case, named after it; :func:`find_case_files` lists a folder, :func:`match_cases` checks
that every folder names the same cases and, when they do not, says which case is missing where in one
message (the file that exists and the file that was expected).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_conformal.errors import ImportInputError
from napari_conformal.io.importers.files import case_name_of
from napari_conformal.io.paths import suffix_of, zarr_node

__all__ = [
    "CaseFolder",
    "check_label_names",
    "find_case_files",
    "label_names_from_mapping",
    "match_cases",
    "natural_key",
]


def natural_key(name: str) -> list[object]:
    """Sort key ordering ``case_2`` before ``case_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _suffix(path: Path) -> str:
    if zarr_node(path) is not None:
        return ".zarr"
    return suffix_of(path)


@dataclass(frozen=True)
class CaseFolder:
    """The files of one input folder, by case name.

    Attributes
    ----------
    role : str
        What the folder holds, for messages ("images", "labels", "members folder 2", …).
    folder : pathlib.Path
    files : dict of str → pathlib.Path
        Case name → its file.
    expected : callable
        ``expected(case) -> str``: the file name a missing case would have (for messages).
    """

    role: str
    folder: Path
    files: dict[str, Path]
    expected: Callable[[str], str]


def find_case_files(
    folder: str | os.PathLike[str],
    *,
    role: str,
    suffixes: Sequence[str],
    name_of: Callable[[Path], str | None] | None = None,
    expected: Callable[[str], str] | None = None,
) -> CaseFolder:
    """The case files of ``folder``: entries whose suffix is one of ``suffixes``, keyed by case name.

    Parameters
    ----------
    folder : path-like
        The folder (not searched recursively; hidden files are skipped).
    role : str
        Its role, named in messages ("labels", …).
    suffixes : sequence of str
        Accepted suffixes (``.nii.gz`` counts as one, ``.zarr`` is a zarr array folder).
    name_of : callable, optional
        ``name_of(path) -> case name or None`` (None: not a case file, skipped); default the file
        name without its suffix.
    expected : callable, optional
        ``expected(case) -> file name`` for messages; default ``case + suffixes[0]``.

    Raises
    ------
    ImportInputError
        The folder does not exist, holds no case file, or two files name the same case.
    """
    root = Path(os.fspath(folder))
    if not root.exists():
        raise ImportInputError(f"{role}: the folder {root} does not exist")
    if not root.is_dir():
        raise ImportInputError(f"{role}: {root} is not a folder")
    files: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if _suffix(entry) not in suffixes:
            continue
        name = name_of(entry) if name_of is not None else case_name_of(entry)
        if name is None:
            continue
        if name in files:
            raise ImportInputError(
                f"{role}: two files for case {name!r} in {root}: {files[name].name} and {entry.name}"
            )
        files[name] = entry
    if not files:
        raise ImportInputError(
            f"{role}: no case files ({', '.join(suffixes)}) in {root}"
        )
    return CaseFolder(role, root, files, expected or (lambda case: case + suffixes[0]))


def match_cases(reference: CaseFolder, others: Sequence[CaseFolder]) -> list[str]:
    """The case names, in natural order, after checking that every folder names the same cases.

    Raises
    ------
    ImportInputError
        One message naming the first case missing from a folder (the file that exists and the one
        expected), and how many other mismatches there are.
    """
    names = set(reference.files)
    problems: list[str] = []
    for other in others:
        for case in sorted(names - set(other.files), key=natural_key):
            problems.append(
                f"case {case!r} has {reference.role} file {reference.files[case]} but no {other.role} file "
                f"(expected {other.folder / other.expected(case)})"
            )
        for case in sorted(set(other.files) - names, key=natural_key):
            problems.append(
                f"{other.role} file {other.files[case]} names case {case!r}, which has no {reference.role} "
                f"file (expected {reference.folder / reference.expected(case)})"
            )
    if problems:
        more = f" ({len(problems) - 1} more mismatch{'es' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ImportInputError(f"case names do not match: {problems[0]}{more}")
    return sorted(names, key=natural_key)


def check_label_names(label_names: Sequence[str] | None, n_labels: int, where: str) -> list[str] | None:
    """``label_names`` as a list when given (L distinct non-empty names), else None."""
    if label_names is None:
        return None
    names = [str(n).strip() for n in label_names]
    if len(names) != n_labels:
        raise ImportInputError(
            f"label names: {len(names)} given ({', '.join(names)}) but {where} has C = {n_labels} classes"
        )
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ImportInputError(f"label names must be distinct and non-empty, got {names}")
    return names


def label_names_from_mapping(mapping: Mapping[str, object], n_labels: int) -> list[str] | None:
    """Names from an nnU-Net ``dataset.json`` ``labels`` entry ``{name: value}``, when they are 0..C−1."""
    by_value: dict[int, str] = {}
    for name, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, int):
            return None  # region-based labels (lists) have no single class per name
        by_value[value] = str(name)
    if sorted(by_value) != list(range(n_labels)):
        return None
    return [by_value[k] for k in range(n_labels)]
