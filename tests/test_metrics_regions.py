"""Region perturbation and IROF: their definitions on a network whose answer is known (a box sum),
the window-aware curves equal to every perturbed image through MONAI's full sliding-window
inference (with only the windows each step changes re-run), and Quantus 0.6.0 parity in 2D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import window_reference
from quantus_helpers import require_quantus
from toy_models import WeightedSum

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion
from esegeta_monai.evaluation import METRICS, MetricCase, metric_options
from esegeta_monai.evaluation.region_perturbation import irof, region_perturbation
from esegeta_monai.evaluation.regions import patch_regions, region_sums, supervoxels

WINDOWS = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=4)


def _box_case():
    torch.manual_seed(0)
    weight = torch.zeros(1, 1, 16, 16)
    weight[..., 4:12, 8:16] = 0.05  # small enough that the class probability is not saturated
    x = torch.rand(1, 1, 16, 16) + 0.5
    maps = {"ideal": weight * x, "random": torch.rand(1, 1, 16, 16), "inverted": -weight * x}
    return WeightedSum(weight), weight, x, maps


def _bright_box_case():
    """A bright box on a dark background, the logit the box's sum (weight small: p unsaturated)."""
    torch.manual_seed(0)
    box = torch.zeros(1, 1, 16, 16)
    box[..., 4:12, 8:16] = 1.0
    x = 0.1 + 0.9 * box + 0.05 * torch.rand(1, 1, 16, 16)
    weight = 0.02 * box
    maps = {"ideal": weight * x, "random": torch.rand(1, 1, 16, 16), "inverted": -weight * x}
    return WeightedSum(weight), weight, x, maps


def _cumulative(x, base, labels, sequence):
    """x_1 … x_L: the regions of ``sequence`` replaced by ``base`` one after the other (numpy)."""
    images, current = [], x.copy()
    for region in sequence:
        current = np.where(labels == region, base, current)
        images.append(current)
    return images


@pytest.mark.parametrize("regions", ["patches", "supervoxels"])
def test_region_perturbation_is_the_aopc_of_the_box_sum_and_ranks_the_ideal_map_first(regions):
    net, weight, x, maps = _box_case()
    explainer = Explainer(net, "saliency", "class:1")
    labels = patch_regions((16, 16), 4) if regions == "patches" else supervoxels(x[0], n_segments=12)
    w, xs = weight.numpy()[0, 0], x.numpy()[0, 0]
    values = {}
    for name, a in maps.items():
        result = region_perturbation(explainer, x, a, steps=6, regions=regions, patch_size=4, n_segments=12,
                                     normalisation="score", per_eval=4)
        # the definition, naively: the regions by summed map, MoRF; T = Σ w ⊙ x_k; fill = min(x)
        order = np.argsort(-np.bincount(labels.ravel(), weights=a.numpy()[0, 0].ravel()), kind="stable")[:6]
        curve = [float((w * xs).sum())] + [float((w * image).sum()) for image in _cumulative(xs, xs.min(), labels, order)]
        filled = float((w * xs.min()).sum())
        aopc = np.mean([curve[0] - t for t in curve])  # 1/(L+1) Σ_{k=0..L} (T_0 − T_k)
        np.testing.assert_allclose(result["curve"], curve, rtol=1e-5)
        assert result["filled"] == pytest.approx(filled, rel=1e-5)
        assert result["aopc_raw"] == pytest.approx(aopc, rel=1e-5)
        assert result["aopc"] == pytest.approx(aopc / (curve[0] - filled), rel=1e-5)
        assert (result["steps"], result["n_regions"], result["normalisation"]) == (6, int(labels.max()) + 1, "score")
        values[name] = result["aopc"]
    assert values["ideal"] > values["random"] > values["inverted"]
    if regions == "patches":
        # the box is 2 × 2 patches: the ideal map's first four steps remove exactly it (T_4 = T_fill)
        ideal = region_perturbation(explainer, x, maps["ideal"], steps=4, patch_size=4, normalisation="score")
        assert all(a > b for a, b in zip(ideal["curve"], ideal["curve"][1:]))
        assert ideal["curve"][-1] == pytest.approx(ideal["filled"], rel=1e-5)
        assert ideal["curve_normalised"][-1] == pytest.approx(0, abs=1e-5)
        # LERF: the least relevant first, lower is better
        lerf = {n: region_perturbation(explainer, x, a, steps=6, patch_size=4, order="lerf")["aopc"] for n, a in maps.items()}
        assert lerf["ideal"] < lerf["random"]


def test_region_perturbation_normalisation_keeps_the_direction_of_a_negative_target():
    net, _, x, maps = _box_case()
    explainer = Explainer(net, "saliency", "class:0")  # T = −Σ_box x: removing the box raises T
    results = {n: region_perturbation(explainer, x, a, steps=6, patch_size=4, normalisation="score") for n, a in maps.items()}
    assert results["ideal"]["aopc_raw"] < results["random"]["aopc_raw"] < 0  # the raw AOPC turns over
    assert results["ideal"]["aopc"] > results["random"]["aopc"] > 0  # normalised by T_0 − T_fill < 0 it does not
    assert results["ideal"]["curve_normalised"][0] == 1.0


def test_irof_is_the_area_over_the_probability_ratio_and_quantus_aoc_follows():
    net, weight, x, maps = _bright_box_case()
    explainer = Explainer(net, "saliency", "class:1")
    w, xs = weight.double().numpy()[0, 0], x.double().numpy()[0, 0]
    results = {}
    for name, a in maps.items():
        result = irof(explainer, x, a, n_segments=12)
        labels = supervoxels(x[0], 12)
        means = region_sums(a[0], labels) / np.bincount(labels.ravel())
        order = np.argsort(-means, kind="stable")
        images = [xs] + _cumulative(xs, xs.mean(), labels, order)  # fill: the image's mean (one channel)
        p = np.array([1.0 / (1.0 + np.exp(-2.0 * (w * image).sum())) for image in images])  # softmax([−s, s])[1]
        r = p / p[0]
        k = len(order)
        assert result["n_supervoxels"] == k == int(labels.max()) + 1 and result["normalisation"] == "probability"
        np.testing.assert_allclose(result["curve"], r, rtol=1e-5)
        assert result["irof"] == pytest.approx(1.0 - np.trapezoid(r, np.arange(k + 1) / k), rel=1e-5)
        assert result["aoc_quantus"] == pytest.approx(k - np.trapezoid(r[1:], dx=1.0), rel=1e-5)
        results[name] = result["irof"]
    assert results["ideal"] > results["random"] > results["inverted"]
    # a score target: normalised from 1 (clean) to 0 (every supervoxel removed)
    score = irof(explainer, x, maps["ideal"], n_segments=12, normalisation="score")["curve"]
    assert score[0] == 1.0 and score[-1] == 0.0


def test_region_metrics_through_windows_equal_the_full_sliding_window_inference(unet3d, volume):
    x = volume[:1, :, :24, :24, :24]  # 2 × 2 × 2 windows of 16³
    target = ArgmaxRegion(1)
    explainer = Explainer(unet3d, "saliency", "argmax:1", **WINDOWS)
    naive = window_reference.naive_target(unet3d, target, x, **{k: v for k, v in WINDOWS.items()})
    a = torch.randn(1, 1, *x.shape[2:], generator=torch.Generator().manual_seed(5))
    xs = x.numpy()
    scale = float(naive(x).abs().max())

    # region perturbation over 8³ patches, uniform noise fill (seeded), 4 steps in batches of 3
    result = region_perturbation(explainer, x, a, steps=4, patch_size=8, fill="uniform", seed=3, per_eval=3)
    labels = patch_regions(x.shape[2:], 8)
    order = np.argsort(-region_sums(a[0], labels), kind="stable")[:4]
    noise = np.random.default_rng(3).uniform(xs.min(), xs.max(), size=xs.shape).astype(np.float32)
    images = torch.as_tensor(np.concatenate([xs] + _cumulative(xs, noise, labels, order) + [noise]))
    reference = naive(images).double().numpy()
    np.testing.assert_allclose(result["curve"], reference[:-1], rtol=0, atol=1e-5 * scale)
    assert result["filled"] == pytest.approx(float(reference[-1]), abs=1e-5 * scale)

    # window forwards: the clean pass, one per (step, window its patch touches), the filled image's pass
    with explainer.session(x) as (window_pass, _):
        plan, active = window_pass.plan, [w for _, w in window_pass.active_windows(1)]
    touched = 0
    for region in order:
        mask = plan.pad_input(torch.as_tensor(labels == region, dtype=torch.float32)[None, None])[0, 0] > 0
        touched += sum(bool(mask[w].any()) for w in active)
    assert result["window_forwards"] == 2 * len(active) + touched
    assert touched < len(order) * len(active) / 2  # the steps re-run under half the windows of a full pass each

    # IROF over 3D supervoxels: every supervoxel removed, fill the image's mean
    result = irof(explainer, x, a, n_segments=4, per_eval=3)
    labels = supervoxels(x[0], 4)
    order = np.argsort(-region_sums(a[0], labels) / np.bincount(labels.ravel()), kind="stable")
    images = torch.as_tensor(np.concatenate([xs] + _cumulative(xs, xs.mean(), labels, order)))
    np.testing.assert_allclose(result["raw"], naive(images).double().numpy(), rtol=0, atol=1e-5 * scale)
    assert result["normalisation"] == "score" and result["curve"][-1] == 0.0


def _classifier(channels: int):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus(order):
    quantus = require_quantus()
    net, generator = _classifier(3), torch.Generator().manual_seed(1)
    x, a = torch.rand(1, 3, 32, 32, generator=generator), torch.randn(1, 1, 32, 32, generator=generator)
    ours = region_perturbation(Explainer(net, "saliency", "class:1"), x, a, steps=10, patch_size=4, order=order)
    # Alignment: Quantus's defaults kept — perturb_baseline="black" (the image's minimum over all
    # channels: our fill="min"), softmax=True (our normalisation="auto" on a class: target of a
    # classifier); normalise=False, abs=False leave the map as given (normalise_by_max would not
    # change the ranking). 32 = 8 patches of 4, so Quantus pads nothing (where it pads, it
    # centres the grid; ours keeps the remainder in the last patch). A random map has no ties.
    metric = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=10, normalise=False, abs=False,
                                        disable_warnings=True, display_progressbar=False)
    curve = np.array(metric(model=net, x_batch=x.numpy(), y_batch=np.array([1]), a_batch=a.numpy(), device="cpu")[0])
    # Quantus's curve is p_0 − p_k for k = 1 … L; ours T_k with T_0 = p_0: equal to float32 rounding
    assert ours["normalisation"] == "probability" and len(curve) == ours["steps"] == 10
    np.testing.assert_allclose(ours["clean"] - np.array(ours["curve"][1:]), curve, rtol=0, atol=1e-6)
    # our AOPC is the mean of that curve with the k = 0 term (zero): Σ / (L + 1)
    assert ours["aopc_raw"] == pytest.approx(curve.sum() / 11, abs=1e-6)


def test_irof_matches_quantus_on_the_same_supervoxels():
    quantus = require_quantus()
    from quantus.helpers.utils import get_superpixel_segments

    net, generator = _classifier(1), torch.Generator().manual_seed(2)
    x, a = torch.rand(1, 1, 32, 32, generator=generator), torch.randn(1, 1, 32, 32, generator=generator)
    ours = irof(Explainer(net, "saliency", "class:1"), x, a)
    # the same segmentation: Quantus runs skimage's slic with its defaults (n_segments=100,
    # compactness=10) on the channel-last image; ours (the same defaults) on the channel-first one
    segments = get_superpixel_segments(np.moveaxis(x.numpy()[0], 0, -1).astype("double"), "slic")
    np.testing.assert_array_equal(supervoxels(x[0]), segments)
    # Alignment: Quantus's default perturb_baseline="mean" is the mean of the current, already
    # perturbed batch (all images and channels; it drifts as segments are filled): we pass it the
    # clean image's mean as an array instead (our fill="mean"). return_aggregate=False gives the
    # per-image value; normalise=False, abs=False leave the map as given; softmax=True (its
    # default) is our "auto" probability. Quantus 0.6.0's IROF refuses images of more than one
    # channel (its mask (B, 1, H, W) against the image (B, C, H, W)), so the parity is on one.
    baseline = np.full(tuple(x.shape), float(x.mean()))
    metric = quantus.IROF(perturb_baseline=baseline, return_aggregate=False, normalise=False, abs=False,
                          disable_warnings=True, display_progressbar=False)
    value = metric(model=net, x_batch=x.numpy(), y_batch=np.array([1]), a_batch=a.numpy(), device="cpu")[0]
    assert ours["n_supervoxels"] == int(segments.max()) + 1
    assert ours["aoc_quantus"] == pytest.approx(value, rel=1e-5)
    # ours is the same curve, with its clean point r_0 = 1, on the fraction removed: (AOC − (1 + r_1)/2) / K
    k = ours["n_supervoxels"]
    assert ours["irof"] == pytest.approx((value - (1 + ours["curve"][1]) / 2) / k, rel=1e-4)


def test_region_metrics_compute_on_an_evaluate_case_and_flag_a_constant_target():
    net, _, x, maps = _box_case()
    explainer = Explainer(net, "saliency", "class:1")
    case = MetricCase(explainer, x, maps["ideal"], label=None, seed=7)
    options = metric_options("region_perturbation", {"steps": 4, "patch_size": 4, "fill": "uniform"})
    result = METRICS["region_perturbation"].compute(case, options)
    assert result.value > 0 and result.status is None and len(result.curve["values"]) == 5
    settings = tuple(result.extra[k] for k in ("seed", "steps", "fill", "normalisation"))
    assert settings == (7, 4, "uniform", "probability")
    result = METRICS["irof"].compute(case, metric_options("irof", {"n_segments": 8}))
    assert result.value > 0 and result.extra["n_segments"] == 8 and result.curve["values"][0] == 1.0
    # a network that ignores the image: T_0 = T_fill, the normalisation is undefined
    constant = Explainer(WeightedSum(torch.zeros(1, 1, 16, 16)), "saliency", "class:1")
    case = MetricCase(constant, x, maps["ideal"], seed=0)
    for name, options in (("region_perturbation", {"steps": 16, "patch_size": 4}),
                          ("irof", {"n_segments": 8, "normalisation": "score"})):
        result = METRICS[name].compute(case, metric_options(name, options))
        assert result.value is None and result.status == "undefined" and "undefined" in result.error
    # IROF's probability ratio p_k / p_0 stays defined: the probability never drops, IROF = 0
    assert METRICS["irof"].compute(case, metric_options("irof", {"n_segments": 8})).value == 0.0
