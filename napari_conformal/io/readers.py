"""napari readers (npe2 ``readers`` contributions): dataset stores, single volumes, sample arrays.

Every ``get_*_reader(path)`` follows the npe2 contract: it returns a reader function when it
claims ``path`` and ``None`` otherwise. Claiming is decided from the file name and, for zarr, the
small ``zarr.json`` / ``.zarray`` metadata document; it never raises, whatever ``path`` is. A
claimed path that turns out to be broken makes the *reader function* raise a
:class:`~napari_conformal.errors.ConformalError` naming the file and the problem.

What each kind of path opens as (``<name>`` is the file name without its suffixes):

**Dataset store** (a zarr group whose ``format`` attribute is ``"napari-conformal-dataset"``,
SPEC §3) — four layers, all lazy (dask arrays over the per-image zarr chunks, so opening reads one
image to set the contrast and nothing else):

* ``<name> images``: image, ``(N, *S)``;
* ``<name> ground truth``: labels, ``(N, *S)`` (only when the store has labels);
* ``<name> mean prediction``: labels, ``(N, *S)``, the argmax over classes of the mean of the T
  softmax samples (ties go to the lower class index);
* ``<name> sample predictions``: labels, ``(T, N, *S)``, the argmax of every sample, with the
  sample index as an extra leading axis (a dims slider); hidden at first.

Scale is ``(1, *spacing)`` (``(1, 1, *spacing)`` for the samples), spacing in mm. The labels
layers carry a ``features`` table (``index``, ``class``) so the status bar names the class under
the cursor. ``metadata["napari_conformal"]`` holds the store path, its content identity (see
:data:`IDENTITY_MAX_BYTES`), the array shown and the store attributes.

**Single volumes** — one layer each:

* ``.tif`` / ``.tiff`` (tifffile). A file written by :mod:`napari_conformal.io.writers` carries a
  JSON layer header in its ImageDescription; the layer type, name, scale, translate and provenance
  come back from it. For other ImageJ files the Z spacing and X/Y resolution give the scale.
* ``.nii`` / ``.nii.gz`` (nibabel, optional dependency). NIfTI stores voxels as ``(i, j, k)``
  (x fastest); the three spatial axes are reversed to napari's ``(Z, Y, X) = (k, j, i)`` order
  (further axes, e.g. time, go first) and the voxel sizes (``pixdim``, converted to mm) reversed
  the same way. Voxels are not resampled or reoriented; the original affine is kept in the
  metadata (``nifti_affine``, in the file's ``(i, j, k)`` order).
* ``.npy`` (memory-mapped, never unpickled) and ``.npz`` (one layer per member; a file written by
  our writer is recognised by its header member).
* zarr arrays (v2 or v3; opened lazily).

Integer or boolean volumes whose file or folder name contains ``label``, ``mask``, ``seg`` or
``truth`` open as labels layers, everything else as images.

**Sample arrays** — ``<name>_samples.npy`` / ``.npz`` / ``.zarr`` (zarr array) hold the softmax
samples of one image, ``(T, L, *S)`` or the foreground probability ``(T, *S)`` of a binary model.
The axes come from an ``axes`` entry (a ``.npz`` member or a zarr attribute: ``"TLYX"``,
``"TLZYX"``, ``"TYX"`` or ``"TZYX"``) when present. Without it, 3 axes mean ``(T, Y, X)``,
5 axes ``(T, L, Z, Y, X)``, and 4 axes ``(T, L, Y, X)`` when the first sample sums to 1 over
axis 0 (within the float tolerance of the store format), else ``(T, Z, Y, X)``. Optional
``spacing`` and ``label_names`` entries work the same way. Layers: the mean probability of every
foreground class (images, ``[0, 1]``), the predictive entropy ``H(mean p)`` in nats (image,
``[0, ln L]``) and the argmax of the mean (labels). Values are checked while streaming over T:
finite, in [0, 1], summing to 1 over L.

Loading is safe (SPEC §7): ``np.load(..., allow_pickle=False)`` everywhere, object arrays are
refused with an error before anything is read, zarr / NIfTI / TIFF are parsed as data only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.errors import ConformalError
from napari_conformal.io.provenance import (
    HEADER_FORMAT,
    PROVENANCE_KEY,
    header_to_layer_kwargs,
    loads_header,
)
from napari_conformal.io.validate import FORMAT_NAME, default_atol, default_label_names, labels_storage_dtype

__all__ = [
    "HEADER_MEMBER",
    "IDENTITY_MAX_BYTES",
    "LayerData",
    "check_zarr_array_safe",
    "get_reader",
    "get_samples_reader",
    "get_store_reader",
    "get_volume_reader",
    "load_npy",
    "load_npz",
    "path_kind",
    "read",
    "read_samples",
    "read_store",
    "read_volume",
    "summarize_samples",
]

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

#: Stores whose chunk files add up to at most this many bytes get their content identity computed
#: on open (one sequential read of the stored bytes); larger stores record ``identity: None`` so
#: that opening stays fast, and tools that need it call ``DatasetStore.identity()`` themselves.
IDENTITY_MAX_BYTES = 256 * 2**20
#: ``.npz`` member holding the JSON layer header written by :mod:`napari_conformal.io.writers`.
HEADER_MEMBER = "__napari_conformal__"

_VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".npz")
_SAMPLES_SUFFIXES = (".npy", ".npz", ".zarr")
_SAMPLES_AXES = ("TLYX", "TLZYX", "TYX", "TZYX")
_LABEL_HINT = re.compile(r"label|mask|seg|truth", re.IGNORECASE)


# ------------------------------------------------------------------------------------ path sniffing


def _suffix(path: Path) -> str:
    """Lower-case suffix, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _stem(path: Path) -> str:
    """File name without the suffix returned by :func:`_suffix`."""
    suffix = _suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > 16 * 2**20:  # metadata documents are small; don't slurp a huge file
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _zarr_node(path: Path) -> tuple[str, dict[str, Any]] | None:
    """``("group" | "array", attributes)`` for a zarr v2/v3 node at ``path``, else None. Never raises."""
    try:
        if not path.is_dir():
            return None
        doc = _read_json(path / "zarr.json")
        if isinstance(doc, dict) and doc.get("node_type") in ("group", "array"):
            attrs = doc.get("attributes")
            return doc["node_type"], attrs if isinstance(attrs, dict) else {}
        for marker, kind in ((".zgroup", "group"), (".zarray", "array")):
            if (path / marker).is_file():
                attrs = _read_json(path / ".zattrs")
                return kind, attrs if isinstance(attrs, dict) else {}
    except OSError:
        return None
    return None


def path_kind(path: Any) -> str | None:
    """What napari-conformal would open ``path`` as: ``"store"``, ``"samples"``, ``"volume"`` or None.

    Looks only at the name and at zarr metadata documents; never raises.
    """
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return None
    try:
        node = _zarr_node(p)
        if node is not None:
            kind, attrs = node
            if kind == "group":
                return "store" if attrs.get("format") == FORMAT_NAME else None
            return "samples" if _stem(p).endswith("_samples") else "volume"
        if not p.is_file():
            return None
    except OSError:
        return None
    suffix = _suffix(p)
    if suffix in (".npy", ".npz") and _stem(p).endswith("_samples"):
        return "samples"
    if suffix in _VOLUME_SUFFIXES:
        return "volume"
    return None


def _as_paths(path: Any) -> list[str] | None:
    if isinstance(path, str | os.PathLike):
        return [os.fspath(path)]
    if isinstance(path, Sequence) and path and all(isinstance(p, str | os.PathLike) for p in path):
        return [os.fspath(p) for p in path]
    return None


def _reader_for(path: Any, kinds: tuple[str, ...]) -> ReaderFunction | None:
    """A reader for ``path`` (or a list of paths) when every path is of one of ``kinds``."""
    try:
        paths = _as_paths(path)
        if paths is None:
            return None
        found = [path_kind(p) for p in paths]
    except Exception:  # claiming must never raise, whatever napari hands us
        return None
    if all(k in kinds for k in found):
        return read
    return None


def get_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for anything napari-conformal opens (stores, sample arrays, volumes), else None."""
    return _reader_for(path, ("store", "samples", "volume"))


def get_store_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for dataset stores only, else None."""
    return _reader_for(path, ("store",))


def get_samples_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for ``*_samples`` arrays only, else None."""
    return _reader_for(path, ("samples",))


def get_volume_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for single volumes (``.tif``, ``.nii[.gz]``, ``.npy``, ``.npz``, zarr arrays), else None."""
    return _reader_for(path, ("volume",))


def read(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[LayerData]:
    """Read one path or several (layers concatenated) with the reader its kind calls for.

    Raises
    ------
    ConformalError
        A path that is not something napari-conformal opens, or a broken file.
    """
    paths = _as_paths(path)
    if paths is None:
        raise ConformalError(f"expected a path or a list of paths, got {path!r}")
    layers: list[LayerData] = []
    for p in paths:
        kind = path_kind(p)
        if kind == "store":
            layers += read_store(p)
        elif kind == "samples":
            layers += read_samples(p)
        elif kind == "volume":
            layers += read_volume(p)
        elif not Path(p).exists():
            raise ConformalError(f"{p}: no such file or directory")
        else:
            raise ConformalError(
                f"{p}: not a dataset store, a sample array or a volume napari-conformal reads"
            )
    return layers


# ---------------------------------------------------------------------------------------- the store


def _display_name(path: str | os.PathLike[str]) -> str:
    p = Path(os.fspath(path))
    name = p.name or p.resolve().name
    return name[:-5] if name.lower().endswith(".zarr") and len(name) > 5 else name


def _chunk_bytes(root: Path, limit: int) -> int:
    """Total size of the files under ``root``, counting stops once it passes ``limit``."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            total += os.stat(os.path.join(dirpath, f)).st_size
            if total > limit:
                return total
    return total


def _store_identity(store: Any, limit: int) -> str | None:
    if _chunk_bytes(Path(store.path), limit) > limit:
        return None
    return store.identity()


def _class_features(label_names: Sequence[str]) -> dict[str, Any]:
    return {"index": np.arange(len(label_names)), "class": np.asarray(list(label_names), dtype=object)}


def read_store(
    path: str | os.PathLike[str], *, identity_max_bytes: int = IDENTITY_MAX_BYTES
) -> list[LayerData]:
    """Layers for a dataset store (see the module docstring), lazily backed by its zarr arrays.

    Parameters
    ----------
    path : path-like
        The store directory.
    identity_max_bytes : int
        Compute the store identity for the provenance only when its files total at most this many
        bytes; ``identity`` is None otherwise.

    Returns
    -------
    list of (data, kwargs, layer_type)
        napari layer data tuples, in display order (images first).

    Raises
    ------
    StoreValidationError
        The store's structure is broken (a :class:`~napari_conformal.errors.ConformalError`).
    """
    import dask.array as da

    from napari_conformal.io.store import open_store

    root = Path(os.fspath(path))
    if root.is_dir():
        for child in sorted(root.iterdir()):
            node = _zarr_node(child)
            if node is not None and node[0] == "array":
                check_zarr_array_safe(child)
    store = open_store(path, mode="r")
    name = _display_name(path)
    spacing = [float(s) for s in store.spacing]
    names = store.label_names
    spatial_axes = "ZYX"[-store.ndim :]
    base = {
        "source": "dataset-store",
        "store": {
            "path": str(Path(store.path).resolve()),
            "identity": _store_identity(store, identity_max_bytes),
        },
        "spacing": spacing,
        "label_names": names,
        "sampler": store.sampler,
    }

    def meta(array: str, view: str, axes: str) -> dict[str, Any]:
        return {PROVENANCE_KEY: {**base, "array": array, "view": view, "axes": axes}}

    label_dtype = labels_storage_dtype(store.n_labels)
    scale = [1.0, *spacing]
    images = da.from_zarr(store.array("images"))
    first = store.image(0)
    lo, hi = (float(first.min()), float(first.max())) if first.size else (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    layers: list[LayerData] = [
        (
            images,
            {
                "name": f"{name} images",
                "scale": scale,
                "contrast_limits": [lo, hi],
                "colormap": "gray",
                "metadata": meta("images", "images", "N" + spatial_axes),
            },
            "image",
        )
    ]
    if store.has_labels:
        layers.append(
            (
                da.from_zarr(store.array("labels")),
                {
                    "name": f"{name} ground truth",
                    "scale": scale,
                    "features": _class_features(names),
                    "opacity": 0.5,
                    "metadata": meta("labels", "ground truth", "N" + spatial_axes),
                },
                "labels",
            )
        )
    samples = da.from_zarr(store.array("samples"))  # (N, T, L, *S), one chunk per image
    mean_pred = samples.astype(np.float32).sum(axis=1).argmax(axis=1).astype(label_dtype)
    layers.append(
        (
            mean_pred,
            {
                "name": f"{name} mean prediction",
                "scale": scale,
                "features": _class_features(names),
                "opacity": 0.6,
                "metadata": meta("samples", "mean prediction", "N" + spatial_axes),
            },
            "labels",
        )
    )
    per_sample = samples.argmax(axis=2).astype(label_dtype)  # (N, T, *S)
    per_sample = da.moveaxis(per_sample, 1, 0)  # (T, N, *S)
    layers.append(
        (
            per_sample,
            {
                "name": f"{name} sample predictions",
                "scale": [1.0, *scale],
                "features": _class_features(names),
                "opacity": 0.6,
                "visible": False,
                "metadata": meta("samples", "sample predictions", "TN" + spatial_axes),
            },
            "labels",
        )
    )
    return layers


# ------------------------------------------------------------------------------------- safe loading


def _refuse_objects(path: Path, dtype: np.dtype, member: str | None = None) -> None:
    if dtype.hasobject:
        where = f"{path}" + (f" (member {member!r})" if member else "")
        raise ConformalError(
            f"{where} holds Python objects (dtype {dtype}); loading it would unpickle data, which can run "
            "arbitrary code, so napari-conformal refuses. Save plain numeric arrays instead."
        )


def _npy_dtype(path: Path) -> np.dtype:
    """dtype from a ``.npy`` header (no data read); ConformalError if the file is not ``.npy``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                _shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
            else:
                _shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise ConformalError(f"{path}: not a valid .npy file: {exc}") from None
    return np.dtype(dtype)


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only; object arrays are refused before any data is read."""
    p = Path(path)
    _refuse_objects(p, _npy_dtype(p))
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        try:  # e.g. a file system that cannot map: read it instead
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError):
            raise ConformalError(f"{p}: cannot read the .npy file: {exc}") from None


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All members of a ``.npz`` file (no pickles; an object member gives a ConformalError)."""
    p = Path(path)
    try:
        npz = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConformalError(f"{p}: not a valid .npz file: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ConformalError(f"{p}: not a .npz archive (it holds a single .npy array)")
    out = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    _refuse_objects(p, np.dtype(object), key)
                raise ConformalError(f"{p}: cannot read member {key!r}: {exc}") from None
            except (OSError, EOFError) as exc:
                raise ConformalError(f"{p}: cannot read member {key!r}: {exc}") from None
    return out


def _codec_names(doc: Any) -> list[str]:
    """Every ``name`` / ``id`` string in a zarr metadata document (codecs, filters, nested shards)."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("name", "id") and isinstance(value, str):
                found.append(value)
            else:
                found += _codec_names(value)
    elif isinstance(doc, list):
        for value in doc:
            found += _codec_names(value)
    return found


def check_zarr_array_safe(path: str | os.PathLike[str]) -> None:
    """Refuse a zarr array whose metadata asks for unpickling (object dtype or a pickle codec).

    Reads only the metadata document (``zarr.json`` or ``.zarray``), before zarr opens the array.

    Raises
    ------
    ConformalError
        Unreadable metadata, an object dtype, or a codec / filter whose name mentions pickle.
    """
    p = Path(path)
    doc = _read_json(p / "zarr.json")
    if not isinstance(doc, dict):
        doc = _read_json(p / ".zarray")
    if not isinstance(doc, dict):
        raise ConformalError(f"{p}: cannot read the zarr array metadata (zarr.json or .zarray)")
    dtype = doc.get("data_type", doc.get("dtype"))
    if dtype in ("|O", "O", "object") or any("pickle" in n.lower() for n in _codec_names(doc)):
        raise ConformalError(
            f"{p}: the zarr array stores Python objects (dtype {dtype!r} / a pickle codec); reading it "
            "would unpickle data, which can run arbitrary code, so napari-conformal refuses"
        )


def _open_zarr_array(path: Path) -> Any:
    import zarr

    check_zarr_array_safe(path)
    try:
        arr = zarr.open_array(str(path), mode="r")
        dtype = np.dtype(arr.dtype)
    except Exception as exc:  # zarr raises many types for broken metadata
        raise ConformalError(f"{path}: cannot open the zarr array: {exc}") from None
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ConformalError(f"{path}: zarr array of dtype {dtype}; expected numbers")
    return arr


# ------------------------------------------------------------------------------------------ volumes


def _looks_like_labels(path: Path, dtype: np.dtype) -> bool:
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        return False
    return bool(_LABEL_HINT.search(_stem(path)) or _LABEL_HINT.search(path.parent.name))


def _volume_layer(path: Path, data: Any, kwargs: dict[str, Any], fmt: str) -> LayerData:
    layer_type = "labels" if _looks_like_labels(path, np.dtype(data.dtype)) else "image"
    if layer_type == "labels" and np.dtype(data.dtype) == np.bool_:
        data = np.asarray(data, dtype=np.uint8)
    kwargs = {"name": _stem(path), **kwargs}
    kwargs.setdefault("metadata", {})
    kwargs["metadata"].setdefault(
        PROVENANCE_KEY, {"source": "volume", "path": str(path.resolve()), "format": fmt}
    )
    return data, kwargs, layer_type


def _from_header(path: Path, header: dict[str, Any], data: np.ndarray) -> LayerData:
    shape = tuple(header["shape"])
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ConformalError(
            f"{path}: the data has {data.size} values but the napari-conformal header says shape {shape}"
        )
    data = data.reshape(shape)
    try:
        dtype = np.dtype(header.get("dtype") or data.dtype)
    except TypeError:
        raise ConformalError(
            f"{path}: bad dtype in the napari-conformal header: {header.get('dtype')!r}"
        ) from None
    if dtype != data.dtype:
        raise ConformalError(f"{path}: the data has dtype {data.dtype} but the header says {dtype}")
    kwargs = header_to_layer_kwargs(header)
    kwargs.setdefault("name", _stem(path))
    return data, kwargs, header["layer_type"]


def _read_npy_volume(path: Path) -> list[LayerData]:
    data = load_npy(path)
    return [_volume_layer(path, data, {}, "npy")]


def _read_npz_volume(path: Path) -> list[LayerData]:
    members = load_npz(path)
    if not members:
        raise ConformalError(f"{path}: the .npz archive holds no arrays")
    if HEADER_MEMBER in members:
        raw = members[HEADER_MEMBER]
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise ConformalError(f"{path}: member {HEADER_MEMBER!r} must be a JSON string")
        header = loads_header(str(raw[()]), source=str(path))
        if "data" not in members:
            raise ConformalError(f"{path}: napari-conformal layer file without a 'data' member")
        return [_from_header(path, header, members["data"])]
    layers = []
    for key, value in members.items():
        if value.dtype.kind in "USV" or value.ndim < 2:
            continue  # strings, records and scalars/1-D vectors are not images
        data, kwargs, layer_type = _volume_layer(path, value, {}, "npz")
        kwargs["name"] = f"{_stem(path)} {key}" if len(members) > 1 else _stem(path)
        kwargs["metadata"][PROVENANCE_KEY]["member"] = key
        layers.append((data, kwargs, layer_type))
    if not layers:
        raise ConformalError(f"{path}: the .npz archive holds no array with 2 or more axes")
    return layers


def _imagej_scale(tif: Any, ndim: int) -> list[float] | None:
    """Physical pixel size from ImageJ metadata for ``(Y, X)`` / ``(Z, Y, X)`` files, else None."""
    if not tif.is_imagej or ndim not in (2, 3) or tif.series[0].axes not in ("YX", "ZYX"):
        return None
    page = tif.pages[0]
    try:
        yres = page.tags["YResolution"].value
        xres = page.tags["XResolution"].value
        sy, sx = yres[1] / yres[0], xres[1] / xres[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    scale = [float(sy), float(sx)]
    if ndim == 3:
        scale.insert(0, float((tif.imagej_metadata or {}).get("spacing", 1.0)))
    if not all(math.isfinite(s) and s > 0 for s in scale):
        return None
    return scale


def _read_tiff(path: Path) -> list[LayerData]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0 or not tif.series:
                raise ConformalError(f"{path}: cannot read the TIFF file: it holds no image")
            description = tif.pages[0].description
            data = tif.asarray()
            scale = _imagej_scale(tif, data.ndim)
    except ConformalError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, …
        raise ConformalError(f"{path}: cannot read the TIFF file: {exc}") from None
    if description.lstrip().startswith("{") and HEADER_FORMAT in description:
        return [_from_header(path, loads_header(description, source=str(path)), data)]
    kwargs = {"scale": scale} if scale is not None else {}
    return [_volume_layer(path, data, kwargs, "tiff")]


_NIFTI_UNIT_TO_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}


def _read_nifti(path: Path) -> list[LayerData]:
    try:
        import nibabel
    except ImportError:
        raise ConformalError(
            f"{path}: reading NIfTI needs nibabel; install it with  pip install 'napari-conformal[io]'"
        ) from None
    try:
        img = nibabel.load(str(path))
        raw = np.asanyarray(img.dataobj)
        zooms = [float(z) for z in img.header.get_zooms()]
        space_unit = img.header.get_xyzt_units()[0]
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, …
        raise ConformalError(f"{path}: cannot read the NIfTI file: {exc}") from None
    if raw.ndim < 2:
        raise ConformalError(f"{path}: NIfTI data has shape {raw.shape}; need at least 2 axes")
    _refuse_objects(path, raw.dtype)
    n_space = min(raw.ndim, 3)
    order = list(range(n_space, raw.ndim)) + list(range(n_space - 1, -1, -1))
    data = np.ascontiguousarray(np.transpose(raw, order))
    factor = _NIFTI_UNIT_TO_MM.get(space_unit, 1.0)
    zooms = (zooms + [1.0] * raw.ndim)[: raw.ndim]
    scale = [zooms[a] * (factor if a < n_space else 1.0) for a in order]
    scale = [s if math.isfinite(s) and s > 0 else 1.0 for s in scale]
    meta = {
        PROVENANCE_KEY: {
            "source": "volume",
            "path": str(path.resolve()),
            "format": "nifti",
            "axes": "napari axes = NIfTI axes reversed (k, j, i); no resampling or reorientation",
            "nifti_affine": affine.tolist(),
            "nifti_space_unit": space_unit,
        }
    }
    return [_volume_layer(path, data, {"scale": scale, "metadata": meta}, "nifti")]


def _read_zarr_volume(path: Path) -> list[LayerData]:
    arr = _open_zarr_array(path)
    if arr.ndim < 2:
        raise ConformalError(f"{path}: zarr array of shape {arr.shape}; need at least 2 axes")
    return [_volume_layer(path, arr, {}, "zarr")]


def read_volume(path: str | os.PathLike[str]) -> list[LayerData]:
    """Layer for one volume file (see the module docstring for formats, axes and layer types).

    Raises
    ------
    ConformalError
        Unsupported suffix, unreadable or malformed file, object (pickled) data.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise ConformalError(f"{p}: no such file or directory")
    node = _zarr_node(p)
    if node is not None and node[0] == "array":
        return _read_zarr_volume(p)
    suffix = _suffix(p)
    readers = {
        ".tif": _read_tiff,
        ".tiff": _read_tiff,
        ".nii": _read_nifti,
        ".nii.gz": _read_nifti,
        ".npy": _read_npy_volume,
        ".npz": _read_npz_volume,
    }
    if suffix not in readers or not p.is_file():
        raise ConformalError(
            f"{p}: not a volume napari-conformal reads ({', '.join(_VOLUME_SUFFIXES)}, zarr array)"
        )
    return readers[suffix](p)


# ------------------------------------------------------------------------------------- sample arrays


def _infer_axes(path: Path, arr: Any, hint: Any) -> str:
    if hint is not None:
        axes = str(np.asarray(hint)[()]) if not isinstance(hint, str) else hint
        axes = axes.upper()
        if axes not in _SAMPLES_AXES:
            raise ConformalError(f"{path}: axes {axes!r} must be one of {', '.join(_SAMPLES_AXES)}")
        if len(axes) != arr.ndim:
            raise ConformalError(f"{path}: axes {axes!r} do not match the array's shape {tuple(arr.shape)}")
        return axes
    if arr.ndim == 3:
        return "TYX"
    if arr.ndim == 5:
        return "TLZYX"
    if arr.ndim == 4:
        first = np.asarray(arr[0], dtype=np.float32)
        tol = default_atol(
            np.dtype(np.float16) if np.dtype(arr.dtype) == np.float16 else np.dtype(np.float32)
        )
        if (
            first.shape[0] >= 2
            and np.isfinite(first).all()
            and float(first.min()) >= 0.0
            and float(first.max()) <= 1.0
            and float(np.abs(first.sum(axis=0) - 1.0).max()) <= tol
        ):
            return "TLYX"
        return "TZYX"
    raise ConformalError(
        f"{path}: samples must have shape (T, L, *S) or (T, *S) with S = (Y, X) or (Z, Y, X), "
        f"got {tuple(arr.shape)}"
    )


def summarize_samples(
    samples: Any, axes: str, *, atol: float | None = None, source: str = "samples"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probability, predictive entropy and argmax of softmax samples, streaming over T.

    Parameters
    ----------
    samples : array-like
        ``(T, L, *S)`` class probabilities (``axes`` starting ``"TL"``) or ``(T, *S)`` foreground
        probabilities of a binary model (``axes`` starting ``"T"`` then spatial). Read one sample
        at a time, so a memory-mapped or zarr array is never loaded whole.
    axes : str
        One of ``"TLYX"``, ``"TLZYX"``, ``"TYX"``, ``"TZYX"``.
    atol : float, optional
        Tolerance on ``|Σ_l p_l − 1|`` (default 1e-3 for float16 data, 1e-4 otherwise).
    source : str
        Name for error messages.

    Returns
    -------
    mean : float32 array, shape ``(L, *S)``
        Mean over T of the class probabilities (L = 2 for foreground input: ``1 − p``, ``p``).
    entropy : float32 array, shape ``S``
        ``−Σ_l m_l ln m_l`` of the mean ``m`` (nats; 0 ln 0 = 0), in ``[0, ln L]``.
    argmax : integer array, shape ``S``
        Class of highest mean probability (ties to the lower index).

    Raises
    ------
    ConformalError
        Non-finite values, values outside [0, 1], or class probabilities not summing to 1.
    """
    if axes not in _SAMPLES_AXES:
        raise ConformalError(f"axes must be one of {', '.join(_SAMPLES_AXES)}, got {axes!r}")
    has_classes = axes[1] == "L"
    n_t = int(samples.shape[0])
    if n_t < 1:
        raise ConformalError(
            f"{source}: needs at least one sample (T >= 1), got shape {tuple(samples.shape)}"
        )
    if atol is None:
        atol = default_atol(
            np.dtype(np.float16) if np.dtype(samples.dtype) == np.float16 else np.dtype(np.float32)
        )
    total = None
    for t in range(n_t):
        p = np.asarray(samples[t], dtype=np.float32)
        if not np.isfinite(p).all():
            raise ConformalError(f"{source}: sample {t} holds NaN or inf")
        if p.size and (float(p.min()) < 0.0 or float(p.max()) > 1.0):
            raise ConformalError(
                f"{source}: sample {t} has values in [{float(p.min()):.4g}, {float(p.max()):.4g}], "
                "expected probabilities in [0, 1]"
            )
        if has_classes:
            if p.shape[0] < 2:
                raise ConformalError(f"{source}: needs at least two classes (L >= 2), got L={p.shape[0]}")
            dev = float(np.abs(p.sum(axis=0) - 1.0).max()) if p.size else 0.0
            if dev > atol:
                raise ConformalError(
                    f"{source}: sample {t} does not sum to 1 over the L={p.shape[0]} classes "
                    f"(off by up to {dev:.3g} > atol={atol:g})"
                )
        else:
            p = np.stack([1.0 - p, p])
        total = p.astype(np.float64) if total is None else total + p
    mean = (total / n_t).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(mean > 0, -mean * np.log(np.where(mean > 0, mean, 1.0)), 0.0)
    entropy = np.maximum(terms.sum(axis=0), 0.0).astype(np.float32)
    argmax = mean.argmax(axis=0).astype(labels_storage_dtype(mean.shape[0]))
    return mean, entropy, argmax


def _sidecar_entries(path: Path) -> tuple[Any, dict[str, Any]]:
    """The samples array and its optional ``axes`` / ``spacing`` / ``label_names`` entries."""
    suffix = _suffix(path)
    if _zarr_node(path) is not None:
        arr = _open_zarr_array(path)
        attrs = dict(arr.attrs)
        return arr, {k: attrs[k] for k in ("axes", "spacing", "label_names") if k in attrs}
    if suffix == ".npy":
        return load_npy(path), {}
    members = load_npz(path)
    extras = {k: members.pop(k) for k in ("axes", "spacing", "label_names") if k in members}
    if "samples" in members:
        return members["samples"], extras
    if len(members) == 1:
        return next(iter(members.values())), extras
    raise ConformalError(
        f"{path}: a samples .npz must hold a 'samples' member or exactly one array; found {sorted(members)}"
    )


def read_samples(path: str | os.PathLike[str]) -> list[LayerData]:
    """Layers for a ``*_samples`` array (see the module docstring): mean probabilities, entropy, argmax.

    Raises
    ------
    ConformalError
        Unreadable file, unexpected shape, values that are not probabilities.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise ConformalError(f"{p}: no such file or directory")
    arr, extras = _sidecar_entries(p)
    if not (np.issubdtype(np.dtype(arr.dtype), np.floating)):
        raise ConformalError(f"{p}: samples must be floating-point probabilities, got dtype {arr.dtype}")
    axes = _infer_axes(p, arr, extras.get("axes"))
    mean, entropy, argmax = summarize_samples(arr, axes, source=str(p))
    n_labels, ndim = mean.shape[0], mean.ndim - 1
    spacing = extras.get("spacing")
    if spacing is None:
        scale = [1.0] * ndim
    else:
        scale = [float(s) for s in np.asarray(spacing, dtype=float).ravel()]
        if len(scale) != ndim or not all(math.isfinite(s) and s > 0 for s in scale):
            raise ConformalError(f"{p}: spacing {scale} must hold {ndim} positive numbers")
    names = extras.get("label_names")
    names = default_label_names(n_labels) if names is None else [str(n) for n in np.asarray(names).ravel()]
    if len(names) != n_labels:
        raise ConformalError(f"{p}: label_names has {len(names)} entries for L={n_labels} classes")
    stem = _stem(p).removesuffix("_samples") or _stem(p)
    prov = {
        "source": "samples",
        "path": str(p.resolve()),
        "axes": axes,
        "n_samples": int(arr.shape[0]),
        "label_names": names,
        "spacing": scale,
    }
    layers: list[LayerData] = []
    for k in range(1, n_labels):
        layers.append(
            (
                mean[k],
                {
                    "name": f"{stem} mean p({names[k]})",
                    "scale": scale,
                    "contrast_limits": [0.0, 1.0],
                    "colormap": "magma",
                    "blending": "additive",
                    "metadata": {PROVENANCE_KEY: {**prov, "view": f"mean probability of class {k}"}},
                },
                "image",
            )
        )
    layers.append(
        (
            entropy,
            {
                "name": f"{stem} entropy",
                "scale": scale,
                "contrast_limits": [0.0, float(np.log(n_labels))],
                "colormap": "viridis",
                "visible": False,
                "metadata": {PROVENANCE_KEY: {**prov, "view": "predictive entropy (nats)"}},
            },
            "image",
        )
    )
    layers.append(
        (
            argmax,
            {
                "name": f"{stem} argmax",
                "scale": scale,
                "features": _class_features(names),
                "opacity": 0.6,
                "metadata": {PROVENANCE_KEY: {**prov, "view": "argmax of the mean"}},
            },
            "labels",
        )
    )
    return layers
