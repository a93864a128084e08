"""The structure restriction of the label-wise accuracy ("counted labels") in every label-wise method.

With ``structure=c`` (``labels=[c]`` in the core functions) the label-wise accuracy is the recall of
structure c; with ``structure=None`` every result must stay what it was, bit for bit. The first is
checked against brute-force recalls, the second against golden values computed on main before the
restriction existed, on integer-built data (tests/_structure_data.py) so the values do not depend on
the platform.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from _structure_data import WITHOUT_3, dyadic_dataset

from napari_conformal.core.methods.base import make_method, method_class
from napari_conformal.core.metrics.accuracy import labelwise_accuracy, labelwise_accuracy_torch
from napari_conformal.core.scores.membership import MembershipCurve, accuracy_in
from napari_conformal.errors import CalibrationError, ConformalError, ParameterError

LABELWISE = ("aps", "raps", "lac", "sacp", "consign")
SEARCH = {
    "ratio": 1.2,
    "lhs_points": 24,
    "lhs_per_block": 8,
    "starts": 3,
    "adam_steps": 3,
    "sweeps": 1,
    "descents": 1,
}


@pytest.fixture(scope="module")
def data():
    return dyadic_dataset()


def _recall(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    """Brute force: the fraction of the pixels of structure c that ``pred`` labels c."""
    inside = truth == c
    return float(np.count_nonzero(pred[inside] == c)) / float(np.count_nonzero(inside))


# -- the accuracy itself -----------------------------------------------------------------------------


def test_counted_accuracy_is_the_recall_of_the_structure(data) -> None:
    _, _, labels = data
    rng = np.random.default_rng(0)
    for i in range(6):
        truth = labels[i]
        pred = np.where(
            rng.random((5, *truth.shape)) < 0.7, truth[None], rng.integers(0, 4, size=(5, *truth.shape))
        )
        for c in np.unique(truth).tolist():
            want = np.array([_recall(p, truth, c) for p in pred])
            got = labelwise_accuracy(pred, truth, 4, labels=[c])
            assert np.array_equal(got, want)  # one division: exact
            got_torch = labelwise_accuracy_torch(
                torch.from_numpy(pred), torch.from_numpy(truth), 4, labels=[c]
            )
            assert np.array_equal(got_torch.numpy(), want)
        # counting every label is the unrestricted accuracy, bit for bit
        assert np.array_equal(
            labelwise_accuracy(pred, truth, 4, labels=[0, 1, 2, 3]), labelwise_accuracy(pred, truth, 4)
        )
        # two counted labels: the mean of their recalls
        present = [c for c in (1, 2) if (truth == c).any()]
        two = labelwise_accuracy(pred, truth, 4, labels=[1, 2])
        np.testing.assert_allclose(
            two, np.mean([[_recall(p, truth, c) for c in present] for p in pred], axis=1)
        )


def test_absent_structure_is_an_error_naming_it(data) -> None:
    _, _, labels = data
    truth = labels[WITHOUT_3[0]]
    with pytest.raises(ConformalError, match="no pixel of structure 3"):
        labelwise_accuracy(truth, truth, 4, labels=[3])
    with pytest.raises(ConformalError, match="no pixel of structure 3"):
        labelwise_accuracy_torch(torch.from_numpy(truth), torch.from_numpy(truth), 4, labels=[3])
    with pytest.raises(ConformalError, match="counted label 4 is not a label"):
        labelwise_accuracy(truth, truth, 4, labels=[4])


# -- pixel-wise sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aps", "lac", "raps", "sacp"])
def test_membership_curve_of_a_structure_is_its_recall_inside_the_set(data, name) -> None:
    _, samples, labels = data
    method = make_method(name)
    for i in (0, 3, 7):
        prepared = method.prepare(None, samples[i])
        truth = labels[i]
        true_scores = np.take_along_axis(prepared.scores, truth[None], axis=0)[0]
        for c in (1, 2, 3):
            curve = MembershipCurve.from_prepared(prepared, truth, labels=[c])
            own = true_scores[truth == c]
            assert np.array_equal(curve.lambdas, np.unique(own))  # breakpoints: the structure's scores only
            assert curve.accuracies[-1] == 1.0
            grid = np.r_[
                0.0, curve.lambdas, (curve.lambdas[:-1] + curve.lambdas[1:]) / 2, curve.lambdas[-1] + 0.1
            ]
            for lam in grid:
                brute = float(np.count_nonzero(own <= lam)) / float(own.size)
                assert curve.accuracy(lam) == brute
                assert accuracy_in(prepared, truth, lam, labels=[c]) == brute
            # the method's own curve with structure=c is this curve
            restricted = make_method(name, structure=c)
            assert np.array_equal(restricted.curve(prepared, truth).accuracies, curve.accuracies)


def test_pixelwise_structure_refuses_an_image_without_it(data) -> None:
    _, samples, labels = data
    method = make_method("aps", structure=3)
    prepared = method.prepare(None, samples[WITHOUT_3[0]])
    with pytest.raises(CalibrationError, match="no pixel of structure 3"):
        method.curve(prepared, labels[WITHOUT_3[0]])
    with pytest.raises(CalibrationError, match="no pixel of structure 3"):
        method.evaluate(prepared, labels[WITHOUT_3[0]], 0.5, alpha=0.2, nu=0.8)


def test_calibrate_names_the_image_and_the_structure(data) -> None:
    from napari_conformal.api import calibrate

    images, samples, labels = data
    for name, extra in (
        ("lac", {}),
        ("consign", {"k": 2, "lambda_max": 5.0, "search": SEARCH, "device": "cpu"}),
    ):
        with pytest.raises(CalibrationError, match=rf"image {WITHOUT_3[0]}: .*no pixel of structure 3"):
            calibrate(
                method=name,
                alpha=0.2,
                nu=0.8,
                images=images,
                samples=samples,
                labels=labels,
                structure=3,
                **extra,
            )


def test_evaluate_names_the_test_image_without_the_structure(data) -> None:
    from napari_conformal.api import calibrate, evaluate

    images, samples, labels = data
    arrays = {"images": images, "samples": samples, "labels": labels}
    cal = [i for i in range(10) if i not in WITHOUT_3]
    calib = calibrate(method="aps", alpha=0.2, nu=0.8, cal_indices=cal, structure=3, **arrays)
    assert "of structure 3 correctly" in calib.guarantee()
    with pytest.raises(CalibrationError, match=rf"image {WITHOUT_3[1]}: .*no pixel of structure 3"):
        evaluate(arrays, calib, test_indices=[WITHOUT_3[1]], n_samples=())
    rows = evaluate(arrays, calib, test_indices=[10, 11], n_samples=())["per_image"]
    aps = make_method("aps")
    for row in rows:  # accuracy_in is the recall of structure 3 inside the set
        scores = aps.prepare(None, samples[row["index"]]).scores[3][labels[row["index"]] == 3]
        assert row["accuracy_in"] == np.count_nonzero(scores <= calib.lambda_hat) / scores.size


def test_structure_must_be_a_label_of_the_data(data) -> None:
    from napari_conformal.api import calibrate

    images, samples, labels = data
    for name in LABELWISE:
        with pytest.raises(ParameterError, match="structure=4 is not a class of this data"):
            calibrate(
                method=name, alpha=0.2, nu=0.8, images=images, samples=samples, labels=labels, structure=4
            )
        with pytest.raises(ParameterError, match="structure must be >= 0"):
            make_method(name, structure=-1)


def test_every_method_names_its_structure_option() -> None:
    for name in ("crc", "rwcp", "consema"):
        assert method_class(name).structure_option == "fg_class"
        assert make_method(name, fg_class=2).target_structure == 2
    for name in LABELWISE:
        assert method_class(name).structure_option == "structure"
        assert make_method(name).target_structure is None
        assert make_method(name, structure=2).target_structure == 2


def test_guarantees_name_the_structure() -> None:
    assert "of the structure" in make_method("crc").guarantee(0.1)
    assert "misses at most 10 % of structure 2 " in make_method("crc", fg_class=2).guarantee(0.1)
    assert "at least 90 % of structure 3." in make_method("consema", fg_class=3).guarantee(0.1)
    for name in LABELWISE:
        plain = make_method(name).guarantee(0.1, 0.9)
        assert "averaged over the structures present" in plain
        one = make_method(name, structure=2).guarantee(0.1, 0.9)
        assert one.startswith(
            "With probability ≥ 90 %, one of these segmentations labels more than 90 % of structure 2 "
        )


# -- CONSIGN ---------------------------------------------------------------------------------------------


def _basis_accuracy(basis, c: np.ndarray, truth: np.ndarray, labels) -> float:
    """Label-wise accuracy of argmax(μ + Σ_k c_k u_k) computed naively in float64."""
    mu = basis.mean.numpy().astype(np.float64).reshape(basis.n_labels, -1)
    u = basis.directions.numpy().astype(np.float64).reshape(basis.k, basis.n_labels, -1)
    scores = mu + sum(float(c[k]) * u[k] for k in range(basis.k))
    return labelwise_accuracy(
        scores.argmax(axis=0).reshape(truth.shape), truth, basis.n_labels, labels=labels
    )


@pytest.fixture(scope="module")
def bases(data):
    from napari_conformal.core.consign.basis import compute_bases

    return compute_bases(data[1][:8], 3)


def test_restricted_batch_counts_only_the_structure(data, bases) -> None:
    from napari_conformal.core.consign.box import make_box
    from napari_conformal.core.consign.intervals import flip_lambda
    from napari_conformal.core.consign.restricted import build_restricted_batch

    labels = data[2][:8]
    box = make_box(list(bases), 0.1)
    counted = torch.tensor([False, False, True, False])  # structure 2
    truths, frees, centres = [], [], []
    for i, b in enumerate(bases):
        centre, _ = flip_lambda(b, box[i])
        truths.append(torch.from_numpy(labels[i].reshape(-1)))
        frees.append(
            torch.ones(labels[i].size, dtype=torch.bool)
        )  # every pixel free: the weights are all there is
        centres.append(centre)
    batch = build_restricted_batch(list(bases), truths, frees, centres, counted)
    # the weights of the structure's pixels sum to 1, the others' are 0 (not 1/n_l of an uncounted label)
    assert torch.allclose(batch.weight.sum(dim=1), torch.ones(len(bases), dtype=torch.float64))
    assert torch.equal(batch.weight[batch.truth != 2], torch.zeros_like(batch.weight[batch.truth != 2]))
    assert torch.equal(batch._exact_weight(), batch.weight)
    rng = np.random.default_rng(1)
    lo, hi = box.bounds(0.6)
    c = lo[:, None, :] + torch.from_numpy(rng.random((len(bases), 5, 3))) * (hi - lo)[:, None, :]
    hard, soft, _ = batch.evaluate(c, 1e-9, gradient=False)
    for i, b in enumerate(bases):
        for s in range(5):
            assert hard[i, s].item() == pytest.approx(
                _basis_accuracy(b, c[i, s].numpy(), labels[i], [2]), abs=1e-12
            )
    assert torch.allclose(soft, hard, atol=1e-6)  # the surrogate sees the structure only, too


def test_search_of_a_structure_records_its_recall(data, bases) -> None:
    from napari_conformal.core.consign.box import make_box
    from napari_conformal.core.consign.search import CoverageSearch, SearchConfig

    labels = data[2][:8]
    box = make_box(list(bases), 0.1)
    config = SearchConfig(lambda_max=2.0, nu_max=0.95, **SEARCH)
    search = CoverageSearch(list(bases), list(labels), box, config, labels=[1])
    search.run()
    for i, curve in enumerate(search.curves().curves):
        assert curve.lambdas.size > 0
        for acc, coef in zip(curve.accuracies, curve.coefficients, strict=True):
            assert acc == pytest.approx(_basis_accuracy(bases[i], coef, labels[i], [1]), abs=1e-12)
    # counting every label is the unrestricted search, bit for bit
    every = CoverageSearch(list(bases), list(labels), box, config, labels=[0, 1, 2, 3])
    plain = CoverageSearch(list(bases), list(labels), box, config)
    every.run()
    plain.run()
    for a, b in zip(every.curves().curves, plain.curves().curves, strict=True):
        assert np.array_equal(a.lambdas, b.lambdas) and np.array_equal(a.accuracies, b.accuracies)
        assert np.array_equal(a.coefficients, b.coefficients)


def test_search_refuses_an_image_without_the_structure(data) -> None:
    from napari_conformal.core.consign.basis import compute_bases
    from napari_conformal.core.consign.box import make_box
    from napari_conformal.core.consign.search import CoverageSearch

    samples, labels = data[1], data[2]
    chosen = [0, WITHOUT_3[0]]
    bs = compute_bases(samples[chosen], 2)
    with pytest.raises(CalibrationError, match="ground truth of image 1 has no pixel of structure 3"):
        CoverageSearch(bs, list(labels[chosen]), make_box(bs, 0.1), labels=[3])


# -- structure=None: bit for bit what it was -----------------------------------------------------------


def _digest(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=8).hexdigest()


def _arrays_digest(arrays) -> str:
    d = hashlib.blake2b(digest_size=8)
    for a in arrays:
        d.update(np.ascontiguousarray(np.asarray(a, dtype="<f8")).tobytes())
    return d.hexdigest()


#: digests of the fingerprints below, computed on main (f2e386a) before the structure option existed
GOLDEN = {
    "numpy": "bcd413646271cc26",
    "torch": "bcd413646271cc26",
    "aps": "a4a7eabeb215a507",
    "aps-rand": "4a013347b7974b59",
    "raps": "b8047db4a0d96a2f",
    "lac": "866980a20e2b3462",
}


def _fingerprints(data) -> dict:
    _, samples, labels = data
    pred = np.random.default_rng(1).integers(0, 4, size=(6, *labels.shape[1:]))
    out = {
        "numpy": [float(v).hex() for v in labelwise_accuracy(pred, labels[0])],
        "torch": [
            float(v).hex()
            for v in labelwise_accuracy_torch(torch.from_numpy(pred), torch.from_numpy(labels[0])).tolist()
        ],
    }
    keep = ("covered", "accuracy_in", "mean_set_size", "chao1", "chao1_classical", "sec")
    for name, opts in (("aps", {}), ("aps", {"randomized": True, "seed": 3}), ("raps", {}), ("lac", {})):
        m = make_method(name, **opts)
        prepared = [m.prepare(None, s) for s in samples]
        curves = [m.curve(p, y) for p, y in zip(prepared, labels, strict=True)]
        lam = m.lambda_hat(curves[:12], alpha=0.2, nu=0.9)
        ev = [
            m.evaluate(prepared[i], labels[i], lam, alpha=0.2, nu=0.9, n_samples=(5, 20), seed=i)
            for i in (12, 13)
        ]
        out[name + ("-rand" if opts else "")] = {
            "curves": _arrays_digest([c.lambdas for c in curves] + [c.accuracies for c in curves]),
            "accuracy_in": [
                float(accuracy_in(p, y, lam_)).hex()
                for p, y in zip(prepared[:3], labels[:3], strict=True)
                for lam_ in (0.1, 0.5)
            ],
            "lambda_hat": float(lam).hex(),
            "evaluate": [{k: e[k] for k in keep} for e in ev],
        }
    return out


def test_without_a_structure_results_are_bit_identical_to_before(data) -> None:
    got = {key: _digest(value) for key, value in _fingerprints(data).items()}
    assert got == GOLDEN
