"""Localisation (relevance rank/mass accuracy, top-k intersection, per-label share) and complexity
(sparseness, complexity) metrics: hand-computed cases, naive references, 3D, refusals, and parity
with Quantus 0.6.0 in 2D."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation import METRICS, MetricCase
from esegeta_monai.evaluation.complexity import complexity, sparseness
from esegeta_monai.evaluation.localisation_metrics import (label_share, relevance_mass_accuracy,
                                                           relevance_rank_accuracy, top_k_intersection)
from quantus_helpers import require_quantus

LOCALISATION = ("relevance_rank_accuracy", "relevance_mass_accuracy", "top_k_intersection", "label_share")


def _case(attribution, label=None):
    """The case of a map alone (these metrics run no forward), float64 so that references agree to rounding."""
    return MetricCase(None, None, torch.as_tensor(np.ascontiguousarray(attribution), dtype=torch.float64), label, 0)


def _compute(name, attribution, label=None, **options):
    return METRICS[name].compute(_case(attribution, label), {**METRICS[name].options, **options})


# --- complexity ---------------------------------------------------------------------------------

def _naive_gini(a):
    """Gini index as the mean absolute difference over all pairs: Σ_i Σ_j |a_i − a_j| / (2 n² mean)."""
    a = np.abs(np.asarray(a, dtype=np.float64).ravel())
    return sum(abs(x - y) for x in a for y in a) / (2 * a.size ** 2 * a.mean())


def test_sparseness_and_complexity_known_values_3d():
    n = 4 * 5 * 6
    uniform = torch.full((1, 1, 4, 5, 6), -0.3)
    assert sparseness(uniform)["sparseness"] == pytest.approx(0.0, abs=1e-12)
    assert complexity(uniform)["complexity"] == pytest.approx(np.log(n), rel=1e-12)
    one = torch.zeros(1, 2, 4, 5, 6)
    one[0, 1, 2, 3, 4] = 7.0
    assert sparseness(one)["sparseness"] == pytest.approx(1 - 1 / n, rel=1e-12)
    assert complexity(one)["complexity"] == 0.0
    # a map on m voxels of equal magnitude: entropy log m, Gini 1 − m/n
    few = torch.zeros(1, 1, 4, 5, 6)
    few.view(-1)[[3, 50, 77, 100, 119]] = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    assert complexity(few)["complexity"] == pytest.approx(np.log(5), rel=1e-12)
    assert sparseness(few)["sparseness"] == pytest.approx(1 - 5 / n, rel=1e-12)


def test_sparseness_matches_pairwise_gini_and_sums_channels():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 2, 3, 4))
    summed = a.sum(1)  # channels summed per voxel, then |·|
    assert sparseness(a)["sparseness"] == pytest.approx(_naive_gini(summed), rel=1e-12)
    p = np.abs(summed).ravel() / np.abs(summed).sum()
    assert complexity(a)["complexity"] == pytest.approx(-sum(q * np.log(q) for q in p), rel=1e-12)
    # channels that cancel leave no map: both undefined, said in the row
    cancel = np.concatenate([a[:, :1], -a[:, :1]], 1)
    for name in ("sparseness", "complexity"):
        result = _compute(name, cancel)
        assert result.value is None and result.status == "undefined" and "all-zero" in result.error


# --- localisation: hand-computed cases ----------------------------------------------------------

def test_map_equal_to_label_scores_one_in_3d():
    label = np.zeros((6, 7, 8), dtype=np.int64)
    label[1:3, 2:5, 3:7] = 2
    label[4, 0:2, 0:2] = 5
    attribution = (label != 0)[None, None] * 1.5
    for name in ("relevance_rank_accuracy", "relevance_mass_accuracy"):
        assert _compute(name, attribution, label).value == 1.0
    assert _compute("top_k_intersection", attribution, label, k=20).value == 1.0
    # the structure 5 only: 4 of its voxels; the map on both structures ties all 28 → 4/28 of the top 4
    only = _compute("relevance_rank_accuracy", attribution, label, label_value=5)
    assert only.value == pytest.approx(4 / 28) and only.extra["k"] == 4
    assert _compute("relevance_mass_accuracy", attribution, label, label_value=5).value == pytest.approx(4 / 28)


def test_constant_map_scores_chance_and_ties_share_in_proportion():
    label = np.zeros((10, 10), dtype=int)
    label[:3, :4] = 1
    constant = np.full((1, 1, 10, 10), 0.2)
    for name in ("relevance_rank_accuracy", "relevance_mass_accuracy"):
        result = _compute(name, constant, label)
        assert result.value == pytest.approx(0.12) and result.extra["chance"] == pytest.approx(0.12)
    assert _compute("top_k_intersection", constant, label, k=0.5).value == pytest.approx(0.12)


def _all_orders_top_share(values, inside, k):
    """The mean over every order of the voxels (a stable sort breaks ties by that order) of the
    fraction of the k highest inside — the definition of our tie rule, by enumeration."""
    shares = []
    for order in itertools.permutations(range(values.size)):
        order = np.array(order)
        top = order[np.argsort(-values[order], kind="stable")[:k]]
        shares.append(inside[top].mean())
    return float(np.mean(shares))


def test_ranks_with_ties_equal_the_mean_over_all_orders():
    values = np.array([3.0, 1.0, 1.0, 1.0, 0.5, 1.0, -2.0])
    label = np.array([0, 1, 0, 1, 1, 0, 0])
    inside = label != 0
    a = values[None, None, None]  # (1, 1, 1, 7)
    label2 = label[None]
    rra = relevance_rank_accuracy(a, label2)
    assert rra["k"] == 3
    assert rra["relevance_rank_accuracy"] == pytest.approx(_all_orders_top_share(values, inside, 3), rel=1e-12)
    for k in (1, 2, 4, 5, 7):
        expected = _all_orders_top_share(values, inside, k)
        assert top_k_intersection(a, label2, k=k)["top_k_intersection"] == pytest.approx(expected, rel=1e-12)
    # |Φ| ranks −2 second
    expected = _all_orders_top_share(np.abs(values), inside, 3)
    assert relevance_rank_accuracy(a, label2, values="abs")["relevance_rank_accuracy"] == pytest.approx(expected, rel=1e-12)


def test_relevance_mass_values_and_top_k_fraction():
    label = np.array([[1, 1, 0, 0, 0]])
    a = np.array([[[[2.0, -1.0, 1.0, -3.0, 1.0]]]])
    rma = {v: relevance_mass_accuracy(a, label, values=v)["relevance_mass_accuracy"] for v in ("positive", "abs")}
    assert rma == {"positive": pytest.approx(2 / 4), "abs": pytest.approx(3 / 8)}
    undefined = _compute("relevance_mass_accuracy", a, label, values="raw")  # Σ Φ = 0
    assert undefined.value is None and undefined.status == "undefined" and "≤ 0" in undefined.error
    # k as a fraction of the image: round(0.4 · 5) = 2 voxels: voxel 0 (2.0, inside) and one of the
    # tied voxels 2 and 4 (1.0, both outside) → 1/2
    result = top_k_intersection(a, label, k=0.4)
    assert result["k"] == 2 and result["top_k_intersection"] == 0.5
    assert _compute("top_k_intersection", a, label, k=6).status == "undefined"  # more than the 5 voxels
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(MethodError, match="k="):
            top_k_intersection(a, label, k=bad)
    with pytest.raises(MethodError, match="values="):
        relevance_mass_accuracy(a, label, values="signed")


def test_label_share_three_structures():
    label = np.zeros((4, 5), dtype=np.int64)
    label[0, :] = 1      # 5 voxels
    label[1:3, :2] = 2   # 4 voxels
    label[3, 4] = 7      # 1 voxel; background 10 voxels
    a = np.zeros((1, 1, 4, 5))
    a[0, 0, 0, 0] = 3.0          # structure 1: positive 3, |·| 3 + 1
    a[0, 0, 0, 1] = -1.0
    a[0, 0, 1, 0] = 2.0          # structure 2: positive 2
    a[0, 0, 3, 4] = 4.0          # structure 7: positive 4
    a[0, 0, 2, 3] = 1.0          # background: positive 1, |·| 1 + 2
    a[0, 0, 3, 0] = -2.0
    result = _compute("label_share", a, label)
    shares = result.extra["shares"]
    assert set(shares) == {"0", "1", "2", "7"}
    expected = {"0": (1, 3, 10), "1": (3, 4, 5), "2": (2, 2, 4), "7": (4, 4, 1)}  # positive, |·|, voxels
    for key, (positive, magnitude, voxels) in expected.items():
        assert shares[key] == pytest.approx({"share": positive / 10, "abs_share": magnitude / 13,
                                             "voxel_share": voxels / 20, "ratio": (positive / 10) / (voxels / 20)})
    assert result.value == pytest.approx(0.9) and METRICS["label_share"].better is None
    assert _compute("label_share", a, label, label_value=7).value == pytest.approx(0.4)
    absent = _compute("label_share", a, label, label_value=3)
    assert absent.value is None and absent.status == "undefined" and "values present: 0, 1, 2, 7" in absent.error
    assert absent.extra["shares"] == shares  # the table is still there
    assert label_share(a, label)["shares"] == shares  # the function behind the metric
    nothing = _compute("label_share", -np.abs(a), label)  # no positive attribution: abs shares only
    assert nothing.status == "undefined" and nothing.extra["shares"]["1"]["share"] is None
    assert nothing.extra["shares"]["1"]["abs_share"] == pytest.approx(4 / 13)


@pytest.mark.parametrize("name", LOCALISATION)
def test_localisation_refuses_without_label_and_on_another_grid(name):
    a = np.ones((1, 1, 6, 6))
    with pytest.raises(MethodError, match="needs a ground-truth label"):
        _compute(name, a, None)
    with pytest.raises(MethodError, match="not the map's grid"):
        _compute(name, a, np.ones((5, 6), dtype=int))
    empty = _compute(name, a, np.zeros((6, 6), dtype=int))
    assert empty.value is None and empty.status == "undefined" and "ground truth is empty" in empty.error
    assert METRICS[name].needs_label and METRICS[name].family == "localisation"


def test_metrics_on_the_case_evaluate_builds_3d(unet3d, volume):
    """A map of a 3D UNet and an integer label as ``evaluate`` loads it (these metrics run no
    forward, so the map's windows do not matter: one whole-image window keeps the test fast)."""
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", "argmax:1")
    attribution = explainer(x)
    label = np.zeros(x.shape[2:], dtype=np.int64)
    label[4:12, 6:14, 8:20] = 1
    label[16:24, 2:10, 4:12] = 2
    case = MetricCase(explainer, x, attribution, label, 0)
    values = {}
    for name in ("sparseness", "complexity", *LOCALISATION):
        result = METRICS[name].compute(case, dict(METRICS[name].options))
        assert result.status is None, (name, result.error)
        values[name] = result.value
    magnitudes = attribution.detach().double().sum(1).abs().numpy().ravel()
    assert 0 < values["sparseness"] < 1 and 0 < values["complexity"] <= np.log(magnitudes.size)
    inside = (label != 0).ravel()
    assert values["relevance_rank_accuracy"] == pytest.approx(
        inside[np.argsort(-attribution.detach().double().sum(1).numpy().ravel())[: inside.sum()]].mean())
    positive = np.clip(attribution.detach().double().sum(1).numpy().ravel(), 0, None)
    assert values["relevance_mass_accuracy"] == pytest.approx(positive[inside].sum() / positive.sum())
    assert values["label_share"] == pytest.approx(values["relevance_mass_accuracy"])


# --- Quantus parity (2D) -------------------------------------------------------------------------

def _quantus_inputs(seed=0, size=32):
    """A batch of 3 maps (1 channel, no ties) with masks; the model is never called by these metrics."""
    rng = np.random.default_rng(seed)
    x = rng.random((3, 1, size, size))
    a = rng.normal(size=(3, 1, size, size)) + 0.3  # positive total: every ratio defined
    s = np.zeros((3, 1, size, size))
    s[0, 0, 4:14, 6:20] = 1
    s[1, 0, 20:30, 2:9] = 1
    s[2, 0, 10:26, 10:26] = 1
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, 2))
    return model, x, np.zeros(3, dtype=int), a, s


def _quantus(metric, model, x, y, a, s=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a.copy(), s_batch=s, device="cpu"), dtype=np.float64)


def _ours(name, a, s, **options):
    return np.array([_compute(name, a[i : i + 1], s[i, 0].astype(np.int64), **options).value for i in range(len(a))])


def test_localisation_matches_quantus_2d():
    quantus = require_quantus()
    model, x, y, a, s = _quantus_inputs()
    common = dict(disable_warnings=True, display_progressbar=False)
    # Quantus's defaults abs=False, normalise=True (normalise_by_max: a positive scale of the whole
    # batch) change neither ranks nor the mass ratio, so they are kept; abs=True is our values="abs".
    for abs_ in (False, True):
        values = "abs" if abs_ else "raw"
        rra = _quantus(quantus.RelevanceRankAccuracy(abs=abs_, **common), model, x, y, a, s)
        np.testing.assert_allclose(_ours("relevance_rank_accuracy", a, s, values=values), rra, rtol=1e-12)
        rma = _quantus(quantus.RelevanceMassAccuracy(abs=abs_, **common), model, x, y, a, s)
        np.testing.assert_allclose(_ours("relevance_mass_accuracy", a, s, values=values), rma, rtol=1e-10)
        for k in (1000, 37):  # 1000: Quantus's default (it needs k < 32·32)
            tki = _quantus(quantus.TopKIntersection(k=k, abs=abs_, **common), model, x, y, a, s)
            np.testing.assert_allclose(_ours("top_k_intersection", a, s, k=k, values=values), tki, rtol=1e-12)
    # our default values="positive" has no Quantus flag: Quantus on the clipped map is the same ratio
    rma = _quantus(quantus.RelevanceMassAccuracy(**common), model, x, y, np.clip(a, 0, None), s)
    np.testing.assert_allclose(_ours("relevance_mass_accuracy", a, s), rma, rtol=1e-10)
    # concept_influence is our value / chance
    tki = _quantus(quantus.TopKIntersection(k=100, concept_influence=True, **common), model, x, y, a, s)
    ours = [_compute("top_k_intersection", a[i : i + 1], s[i, 0].astype(int), k=100) for i in range(3)]
    np.testing.assert_allclose([r.value / r.extra["chance"] for r in ours], tki, rtol=1e-12)


def test_complexity_matches_quantus_2d():
    quantus = require_quantus()
    model, x, y, a, s = _quantus_inputs(seed=1)
    a[2] = 0.0
    a[2, 0, 3, 5] = -2.0  # a one-voxel map: Gini 1 − 1/n
    common = dict(disable_warnings=True, display_progressbar=False)
    # Quantus's abs=True default kept (the definition is of |Φ|); normalise=False so that its
    # epsilons act on the map as given (both metrics are otherwise scale-free).
    gini = _quantus(quantus.Sparseness(normalise=False, **common), model, x, y, a)
    ours = _ours("sparseness", a, s)
    # Quantus adds 1e-7 to every |Φ|: the numerator Σ(2i − n − 1)(a + ε) is unchanged and the
    # denominator grows to n(Σa + nε), so its index is ours · Σa / (Σa + nε), exactly
    n, total = a[0].size, np.abs(a).reshape(3, -1).sum(1)
    np.testing.assert_allclose(ours * total / (total + n * 1e-7), gini, rtol=1e-9)
    assert ours[2] == pytest.approx(1 - 1 / n, rel=1e-12)
    entropy = _quantus(quantus.Complexity(normalise=False, **common), model, x, y, a)
    # Quantus takes −Σ p log(p + 1e-12) over every voxel: −Σ_{p>0} p log p − Σ_{p>0} p·log(1 + 1e-12/p),
    # i.e. ours − m·1e-12 to first order (m voxels with p > 0)
    ours, m = _ours("complexity", a, s), np.count_nonzero(a.reshape(3, -1), 1)
    np.testing.assert_allclose(ours - m * 1e-12, entropy, rtol=0, atol=1e-13)
    # and with its default normalise=True (by the batch's max |Φ|) the same
    entropy = _quantus(quantus.Complexity(**common), model, x, y, a)
    np.testing.assert_allclose(ours - m * 1e-12, entropy, rtol=0, atol=1e-13)
