"""What every score starts from: the mean over an image's T samples.

* :func:`mean_probabilities` — the mean softmax X̄ over all labels, the input of the pixel-wise scores;
* :func:`foreground_probability` — the mean probability S⁽⁰⁾ of one class, the map that CRC, RW-CP and
  Consema threshold or dilate (one-vs-rest for multi-class data).
"""

from __future__ import annotations

import numpy as np

from napari_conformal.core.validation import check_fg_class, check_samples

__all__ = ["foreground_probability", "mean_probabilities"]


def _checked(samples: np.ndarray, stored_dtype, validated: bool, spatial_shape) -> np.ndarray:
    """The samples as an array: every value checked, or (``validated``) only the layout."""
    if not validated:
        return check_samples(samples, stored_dtype=stored_dtype, spatial_shape=spatial_shape)
    arr = np.asarray(samples)
    if arr.ndim not in (4, 5) or arr.shape[1] < 2 or not np.issubdtype(arr.dtype, np.floating):
        return check_samples(samples, stored_dtype=stored_dtype, spatial_shape=spatial_shape)  # its message
    if spatial_shape is not None and arr.shape[2:] != tuple(spatial_shape):
        return check_samples(samples, stored_dtype=stored_dtype, spatial_shape=spatial_shape)
    return arr


def mean_probabilities(
    samples: np.ndarray, image: np.ndarray | None = None, *, stored_dtype=None, validated: bool = False
) -> np.ndarray:
    """Validate T softmax samples and return their mean X̄ in float64.

    Parameters
    ----------
    samples : ndarray, shape (T, L, *S)
        Softmax samples, S = (Y, X) or (Z, Y, X); in [0, 1], each (t, pixel) summing to 1 over the
        L labels within the tolerance of the dtype they were stored in.
    image : ndarray, shape S, optional
        The image; only its shape is checked.
    stored_dtype : dtype, optional
        How the samples were stored (default: their own dtype); sets the sum tolerance.
    validated : bool
        The values were already checked (:func:`napari_conformal.io.dataset.read_image`): only shapes
        are checked here.

    Returns
    -------
    ndarray of float64, shape (L, *S)
        ``X̄``, clipped to [0, 1].

    Raises
    ------
    StoreValidationError
        See :func:`napari_conformal.core.validation.check_samples`; or an ``image`` whose shape is not S.
    """
    arr = _checked(samples, stored_dtype, validated, None if image is None else tuple(np.shape(image)))
    total = np.zeros(arr.shape[1:], dtype=np.float64)
    for t_index in range(arr.shape[0]):  # one sample at a time: float64 temporaries of one (L, *S) only
        total += arr[t_index].astype(np.float64)
    return np.clip(total / arr.shape[0], 0.0, 1.0)


def foreground_probability(
    samples: np.ndarray, fg_class: int = 1, *, stored_dtype=None, validated: bool = False
) -> np.ndarray:
    """Mean probability ``S⁽⁰⁾`` of class ``fg_class`` over the samples.

    Parameters
    ----------
    samples : ndarray, shape (T, L, *S)
        T softmax samples over L labels (float16/32/64), validated as in :func:`mean_probabilities`.
    fg_class : int
        Label treated as foreground (1 ≤ fg_class < L; everything else is background).
    stored_dtype : dtype, optional
        How the samples were stored (sets the sum tolerance).
    validated : bool
        The values were already checked: only shapes are checked here.

    Returns
    -------
    ndarray of float64, shape S
        ``mean_t samples[t, fg_class]``, clipped to [0, 1].
    """
    arr = _checked(samples, stored_dtype, validated, None)
    fg = check_fg_class(fg_class, arr.shape[1])
    return np.clip(arr[:, fg].astype(np.float64).mean(axis=0), 0.0, 1.0)
