"""Pixel-wise conformal sets (APS, RAPS, LAC) with CONSIGN's relaxed ν-membership, as methods.

The baselines of the CONSIGN paper (docs/algorithms.md#pixel-wise-sets): every label of every pixel
gets a nonconformity score from the mean softmax X̄ (:mod:`napari_conformal.core.scores`), the set
at λ keeps the labels scoring ≤ λ, and a ground truth is covered when the best member of the set
reaches label-wise accuracy > ν. Calibration is the order statistic of the exact per-image λ_i(ν).

The ``structure`` option (every label-wise method has it, CONSIGN too) counts one label only: the
accuracy is then the recall of that structure, and the guarantee is about it
(docs/algorithms.md#per-structure-guarantees).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from napari_conformal.core.methods.base import ConformalMethod, Option, register
from napari_conformal.core.methods.threshold import percent
from napari_conformal.core.metrics.accuracy import AccuracyCurve
from napari_conformal.core.scores.aps import DEFAULT_REG_WEIGHT, aps_scores, default_k_reg
from napari_conformal.core.scores.lac import lac_scores
from napari_conformal.core.scores.membership import MembershipCurve, accuracy_in, calibrate_lambda
from napari_conformal.core.scores.probabilities import mean_probabilities
from napari_conformal.core.scores.sets import (
    PixelwiseScores,
    _as_prepared,
    sample_members,
    set_masks,
    set_size_map,
)
from napari_conformal.core.validation import check_alpha, check_fg_class, check_lambda, check_nu
from napari_conformal.errors import CalibrationError

__all__ = ["APS", "LAC", "RAPS", "STRUCTURE", "PixelwiseMethod", "check_structure_present", "membership_guarantee"]

#: the structure option of every label-wise method (pixel-wise sets, SACP, CONSIGN)
STRUCTURE = Option(
    "structure",
    "int",
    None,
    "count only this label in the label-wise accuracy (its recall: a guarantee about one structure); "
    "unset: every label present",
    minimum=0,
    optional=True,
)


def _content_seed(probs: np.ndarray) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(probs).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ------------------------------------------------------------------------------------ prepared image


class PixelwiseMethod(ConformalMethod[PixelwiseScores, MembershipCurve, np.ndarray]):
    """Shared machinery of the pixel-wise methods; subclasses define :meth:`scores`.

    A ground truth is covered at (λ, ν) when the best member of the set at λ reaches label-wise
    accuracy > ν; λ̂(α, ν) is the ⌈(n+1)(1−α)⌉-th smallest exact per-image λ_i(ν), and every α and ν
    is a re-reduction of the same curves.
    """

    uses_nu: ClassVar[bool] = True
    samples_members: ClassVar[bool] = True
    lambda_name: ClassVar[str] = "score threshold λ"
    lambda_unit: ClassVar[str] = "conformity score: a label is in a pixel's set when its score is ≤ λ"
    layers: ClassVar[tuple[str, ...]] = ("set_size", "members")
    options: ClassVar[tuple[Option, ...]] = (STRUCTURE,)
    structure_option: ClassVar[str | None] = "structure"
    structure: int | None

    @property
    def counted(self) -> tuple[int, ...] | None:
        """The counted labels of the accuracy: ``(structure,)``, or None for every label present."""
        return None if self.structure is None else (int(self.structure),)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """Raw per-label nonconformity scores, shape (L, *S), from X̄ (L, *S)."""
        raise NotImplementedError

    # -- the steps -------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray | None, samples: np.ndarray, **kwargs: Any) -> PixelwiseScores:
        """Validate the samples, average them and score every label (``stored_dtype=`` sets the sum tolerance)."""
        probs = mean_probabilities(
            samples, image, stored_dtype=kwargs.get("stored_dtype"), validated=kwargs.get("validated", False)
        )
        return PixelwiseScores.from_scores(self.scores(probs))

    def curve(
        self, prepared: PixelwiseScores, label: np.ndarray, *, alpha: float | None = None, nu: float | None = None
    ) -> MembershipCurve:
        """The image's :class:`~napari_conformal.core.scores.membership.MembershipCurve` (over ``structure``).

        Raises
        ------
        CalibrationError
            ``structure`` is set and the ground truth has no pixel of it.
        """
        return MembershipCurve.from_prepared(prepared, label, labels=self.counted)

    def lambda_hat(self, curves: Sequence[MembershipCurve], *, alpha: float, nu: float | None = None) -> float:
        """Algorithm 3, exact (:func:`~napari_conformal.core.scores.membership.calibrate_lambda`)."""
        return calibrate_lambda(curves, alpha, check_nu(nu))

    def predict(
        self, prepared: PixelwiseScores, lambda_hat: float, *, alpha: float | None = None, nu: float | None = None
    ) -> np.ndarray:
        """The set at λ̂ as boolean masks, shape (L, *S)."""
        return set_masks(prepared, lambda_hat)

    def realised(self, curve: MembershipCurve, lambda_hat: float, *, alpha: float | None = None, nu: float | None = None) -> float:
        """1.0 when the ground truth is a member at accuracy rate ν, else 0.0."""
        return float(curve.accuracy(lambda_hat) > check_nu(nu))

    def set_size_map(self, prepared: PixelwiseScores, lambda_hat: float) -> np.ndarray:
        """Per-pixel set size, shape S."""
        return set_size_map(prepared, lambda_hat)

    def sample_members(
        self,
        prepared: PixelwiseScores,
        lambda_hat: float,
        n: int,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """n uniform members of the set, shape (n, *S)."""
        return sample_members(prepared, lambda_hat, n, rng)

    def _stream_seed(self, seed: int) -> int:
        # a stream of its own per method: the same seed never couples two methods' draws
        tag = zlib.crc32(self.name.encode())
        return int(np.random.SeedSequence([int(seed), tag]).generate_state(1, dtype=np.uint64)[0])

    def evaluate(
        self,
        prepared: PixelwiseScores,
        label: np.ndarray,
        lambda_hat: float,
        *,
        alpha: float | None = None,
        nu: float | None = None,
        spacing: Sequence[float] | None = None,
        n_samples: Sequence[int] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        """Per-image metrics of the set at λ̂.

        Returns
        -------
        dict
            ``covered`` (0/1, ``acc_in > ν``), ``accuracy_in``, ``mean_set_size``,
            ``log10_volume``; with ``n_samples`` also ``chao1`` (bias-corrected),
            ``chao1_classical``, ``sec`` (0/1 per N), ``correlation`` (full mean)
            and ``correlation_offdiag``, each a dict keyed by ``str(N)``.
            ``spacing`` is unused (no distance metric applies). With ``structure`` set, the
            accuracies (``accuracy_in``, SEC's) count that label only.

        Raises
        ------
        CalibrationError
            ``structure`` is set and the ground truth has no pixel of it.
        """
        prepared = _as_prepared(prepared)
        nu = check_nu(nu)
        lam = check_lambda(lambda_hat)
        acc = accuracy_in(prepared, label, lam, labels=self.counted)
        sizes = set_size_map(prepared, lam)
        out: dict[str, Any] = {
            "covered": int(acc > nu),
            "accuracy_in": acc,
            "mean_set_size": float(sizes.mean()),
            "log10_volume": float(np.log10(sizes).sum()),
        }
        if len(n_samples):
            from napari_conformal.core.metrics.diversity import diversity_curves

            curves = diversity_curves(
                lambda n, rng: sample_members(prepared, lam, n, rng),
                np.asarray(label),
                nu,
                n_samples,
                self._stream_seed(seed),
                n_labels=prepared.n_labels,
                labels=self.counted,
            )
            for key, per_n in curves.items():
                out[key] = {str(n): float(v) for n, v in per_n.items()}
        return out

    # -- what callers need to know -------------------------------------------------------------

    def guarantee(self, alpha: float, nu: float | None = None) -> str:
        """e.g. "With probability ≥ 90 %, one of these segmentations has a label-wise accuracy above 90 %…"."""
        return membership_guarantee(alpha, nu, self.structure)

    def check_data(self, *, n_labels: int, n_samples: int, ndim: int) -> None:
        """``structure``, when set, must be a label of the data."""
        if self.structure is not None:
            check_fg_class(self.structure, n_labels, name="structure")

    def check_truth(self, label: np.ndarray) -> None:
        """With ``structure`` set, a ground truth must contain it (:func:`check_structure_present`)."""
        check_structure_present(self.structure, label)

    def lambda_note(self, lambda_hat: float, *, alpha: float, nu: float | None = None) -> str | None:
        """At λ̂ = 0 every pixel keeps only its most likely label: the model's own segmentation."""
        if float(lambda_hat) == 0.0:
            return "at this α the set is the model's own segmentation"
        return None

    def lambda_limit(self) -> float | None:
        """Scores lie in [0, 1] (RAPS overrides: its penalty is unbounded)."""
        return 1.0

    def encode_curve(self, curve: MembershipCurve) -> dict[str, Any]:
        """``{"lambdas": array, "accuracies": array}``."""
        return curve.encode()

    def decode_curve(self, doc: Mapping[str, Any]) -> MembershipCurve:
        """The inverse of :meth:`encode_curve`: strictly increasing λ ≥ 0, non-decreasing accuracies ending at 1."""
        lam, acc = AccuracyCurve.decode_arrays(doc, complete=True)
        return MembershipCurve(lambdas=lam, accuracies=acc)


def check_structure_present(structure: int | None, label: np.ndarray) -> None:
    """Refuse a ground truth without a pixel of ``structure`` (nothing to check when it is None).

    Raises
    ------
    CalibrationError
        The label-wise accuracy restricted to the structure is undefined on it.
    """
    if structure is not None and not np.any(np.asarray(label) == structure):
        raise CalibrationError(
            f"the ground truth has no pixel of structure {structure}: its label-wise accuracy restricted to it "
            "is undefined; leave the image out of this structure's images"
        )


def membership_guarantee(alpha: float, nu: float | None, structure: int | None = None) -> str:
    """The guarantee of a set with ν-membership (pixel-wise sets and CONSIGN) in words.

    With ``structure`` (the accuracy counts that label only) the sentence is about it: "… one of
    these segmentations labels more than 90 % of structure 2 correctly."
    """
    a, v = check_alpha(alpha), check_nu(nu)
    if structure is not None:
        return (
            f"With probability ≥ {percent(1 - a)}, one of these segmentations labels more than {percent(v)} "
            f"of structure {int(structure)} correctly (its recall of that label is above {percent(v)})."
        )
    return (
        f"With probability ≥ {percent(1 - a)}, one of these segmentations has a label-wise accuracy above "
        f"{percent(v)}: averaged over the structures present, it labels more than {percent(v)} of each "
        "one correctly."
    )


@register("aps")
class APS(PixelwiseMethod):
    """Pixel-wise APS (eq. 12 without regularisation), optionally randomised.

    Options: ``randomized`` adds ``u·π_(r(l))`` with one ``u ~ U(0, 1)`` per pixel (Romano et al.),
    drawn from ``seed`` combined with a hash of X̄ (each image its own draw, the same in a serial and
    a distributed run).
    """

    title: ClassVar[str] = "Pixel-wise APS"
    colour: ClassVar[str] = "#2ca02c"
    options: ClassVar[tuple[Option, ...]] = (
        Option("randomized", "bool", False, "randomised APS scores (one uniform draw per pixel)", label="randomised"),
        Option("seed", "int", 0, "seed of the randomised scores", minimum=0, flag="score-seed"),
        STRUCTURE,
    )
    randomized: bool
    seed: int

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """APS scores; with ``randomized``, one seeded ``u`` per pixel."""
        u = None
        if self.randomized:
            rng = np.random.default_rng([self.seed, _content_seed(probs)])
            u = rng.random(probs.shape[1:])
        return aps_scores(probs, u=u)


@register("raps")
class RAPS(PixelwiseMethod):
    """Pixel-wise RAPS (eq. 12), its penalty kept at calibration and test time.

    Options: ``reg_weight`` λ_reg (0.05, config ``theta``); ``k_reg`` the rank offset (unset: ⌊L/2⌋
    of each image's L).
    """

    title: ClassVar[str] = "Pixel-wise RAPS"
    colour: ClassVar[str] = "#9467bd"
    options: ClassVar[tuple[Option, ...]] = (
        Option("reg_weight", "float", DEFAULT_REG_WEIGHT, "RAPS penalty λ_reg per rank beyond k_reg", label="λ_reg", minimum=0.0),
        Option("k_reg", "int", None, "RAPS rank offset (unset: ⌊L/2⌋)", label="k_reg", minimum=0, optional=True),
        STRUCTURE,
    )
    reg_weight: float
    k_reg: int | None

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """RAPS scores with ``k_reg`` defaulting to ⌊L/2⌋."""
        k_reg = default_k_reg(probs.shape[0]) if self.k_reg is None else self.k_reg
        return aps_scores(probs, reg_weight=self.reg_weight, k_reg=k_reg)

    def lambda_limit(self) -> float | None:
        """Unbounded: the penalty grows with the rank."""
        return None


@register("lac")
class LAC(PixelwiseMethod):
    """Pixel-wise LAC, ``s_l = 1 − X̄_l``, with the most probable label always in the set."""

    title: ClassVar[str] = "Pixel-wise LAC"
    colour: ClassVar[str] = "#8c564b"

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """LAC scores."""
        return lac_scores(probs)

    def full_set_lambda(self) -> float:
        """λ = 1: ``s_l = 1 − X̄_l ≤ 1`` (X̄ is clipped to [0, 1]): every label of every pixel is in the set."""
        return 1.0
