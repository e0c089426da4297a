"""Random Logit, Smooth MPRT and Efficient MPRT (issue 15): each against its definition computed
naively, through sliding windows against autograd through MONAI's full ``sliding_window_inference``,
and against Quantus 0.6.0 (RandomLogit, SmoothMPRT, EfficientMPRT) with the settings aligned."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from scipy.stats import spearmanr

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion, MaskRegion
from esegeta_monai.evaluation import METRICS, MetricCase, cascading_randomisation, metric_options, parameterised_layers
from esegeta_monai.evaluation.mprt import discrete_entropy, efficient_mprt, randomised_copy, smooth_mprt
from esegeta_monai.evaluation.random_logit import random_logit
from esegeta_monai.evaluation.randomisation import explainer_randomisation
from esegeta_monai.evaluation.similarity import ssim
from esegeta_monai.methods import Method
from esegeta_monai.methods.noise import iter_noise
from quantus_helpers import require_quantus

ROI = (16, 16, 16)
WINDOWS = dict(roi_size=ROI, overlap=0.5, mode="gaussian", sw_batch_size=4)


class ImageGradient(Method):
    """A 'method' that ignores the network and the class: the image's gradient magnitude (test only)."""

    name = "test_image_gradient"
    family = "test"
    params = {}

    def run(self, window_pass, inputs, options):
        return torch.stack(torch.gradient(inputs, dim=tuple(range(2, inputs.ndim)))).pow(2).sum(0).sqrt()


def compute(name, explainer, x, attribution=None, seed=0, **options):
    """The metric as ``esegeta evaluate`` calls it: a MetricCase without a label, the options resolved."""
    case = MetricCase(explainer, x, explainer(x) if attribution is None else attribution, None, seed)
    return METRICS[name].compute(case, metric_options(name, options))


def thirds_classifier():
    """``(1, 1, 16, 16) → (1, 3)``: class ``c`` a positive weighting of columns ``[6c, 6c + 6)`` only."""
    weights = torch.zeros(3, 16, 16)
    for c in range(3):
        weights[c, :, 6 * c : 6 * c + 6] = 0.5 + torch.rand(16, min(6, 16 - 6 * c), generator=torch.Generator().manual_seed(c))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3, bias=False)).eval()
    net[1].weight.data = weights.reshape(3, 256)
    return net, weights


def regions_net(channels=4):
    """A 1×1 conv ``x ↦ (x, 1 − x, 0.6, −5)``: on an image in [0, 1] class 0 wins where x > 0.6, class 1
    where x < 0.4, class 2 (a constant map) in between, class 3 nowhere."""
    net = torch.nn.Conv2d(1, channels, 1).eval()
    net.weight.data = torch.tensor([1.0, -1.0, 0.0, 0.0])[:channels].view(channels, 1, 1, 1)
    net.bias.data = torch.tensor([0.0, 1.0, 0.6, -5.0])[:channels]
    return net


# -- random logit ---------------------------------------------------------------------------------------------
def test_random_logit_of_classes_on_different_columns_is_low_and_an_edge_detector_scores_one():
    net, weights = thirds_classifier()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    explainer = Explainer(net, "saliency", "class:1")
    drawn = []
    for seed in range(30):
        result = random_logit(explainer, x, seed=seed)
        contrast = result["contrast_class"]
        drawn.append(contrast)
        assert result["candidates"] == [0, 2] and contrast == [0, 2][np.random.default_rng(seed).choice(2)]
        # saliency of a linear class score is |W_c|: the value is the SSIM of the two weight images
        assert result["random_logit"] == pytest.approx(ssim(weights[1], weights[contrast]), abs=1e-12)
        assert result["random_logit"] < 0.1 and result["scores"]["spearman_abs"] < 0
    assert 8 <= drawn.count(0) <= 22  # uniform over the two other classes
    edges = compute("random_logit", Explainer(net, ImageGradient(), "class:1"), x)
    assert edges.value == pytest.approx(1.0) and edges.extra["spearman_abs"] == pytest.approx(1.0)


def test_random_logit_draws_the_contrast_only_among_classes_with_a_region_on_the_image():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    net = regions_net()
    argmax = [random_logit(Explainer(net, "saliency", "argmax:1"), x, seed=s) for s in range(20)]
    assert {r["contrast_class"] for r in argmax} == {0, 2} and all(r["candidates"] == [0, 2] for r in argmax)  # 3 wins nowhere
    assert random_logit(Explainer(net, "saliency", "otsu:1"), x)["candidates"] == [0]  # classes 2, 3 are constant maps
    masked = random_logit(Explainer(net, "saliency", MaskRegion(1, box=[(2, 9), (3, 12)])), x, seed=1)
    assert masked["candidates"] == [0, 2, 3]  # a mask keeps its region: every other class's score there
    assert masked["contrast_map"][..., 9:, :].abs().max() == 0  # and the contrast map is of that region
    assert masked["region_voxels"] == masked["contrast_region_voxels"] == 7 * 9
    contrast = argmax[0]["contrast_class"]
    assert argmax[0]["contrast_region_voxels"] == int(((x > 0.6) if contrast == 0 else (x >= 0.4) & (x <= 0.6)).sum())
    bright = 0.8 + 0.1 * x  # only class 0 has a region
    undefined = compute("random_logit", Explainer(net, "saliency", "argmax:0"), bright)
    assert undefined.value is None and undefined.status == "undefined" and "no class other than 0" in undefined.error
    single = compute("random_logit", Explainer(regions_net(1), "saliency", "argmax:0"), bright)
    assert single.status == "undefined" and "1 output channel" in single.error


def naive_saliency(net, target, x, prediction):
    """|∂T/∂x| by autograd through MONAI's full sliding_window_inference, the region from ``prediction``."""
    weights = target.weights(prediction)
    x = x.clone().requires_grad_(True)
    y = sliding_window_inference(x, ROI, 4, net, overlap=0.5, mode="gaussian")
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    return grad.abs()


def naive_prediction(net, x):
    with torch.no_grad():
        return sliding_window_inference(x, ROI, 4, net, overlap=0.5, mode="gaussian")


def test_random_logit_through_windows_equals_autograd_through_sliding_window_inference(unet3d, volume):
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", "argmax:1", **WINDOWS)
    result = random_logit(explainer, x, seed=5)
    assert explainer.last_pass.windows_run > 2  # really through windows
    prediction = naive_prediction(unet3d, x)
    labels = prediction.argmax(1)
    assert result["candidates"] == [c for c in (0, 2) if bool((labels == c).any())]
    original = naive_saliency(unet3d, ArgmaxRegion(1), x, prediction)
    contrast = naive_saliency(unet3d, ArgmaxRegion(result["contrast_class"]), x, prediction)
    torch.testing.assert_close(result["contrast_map"], contrast, rtol=1e-4, atol=1e-6 * float(contrast.abs().max()))
    assert result["random_logit"] == pytest.approx(ssim(original, contrast), rel=1e-4)


# -- smooth MPRT ----------------------------------------------------------------------------------------------
def small_2d(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1)).eval()


def test_smooth_mprt_with_one_sample_is_the_randomisation_test():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for target, region in (("argmax:1", "fixed"), ("argmax:1", "recomputed"), ("class:1", "fixed")):
        explainer = Explainer(small_2d(), "saliency", target, abs=False)
        plain = explainer_randomisation(explainer, x, region, seed=4)
        for noise_std in (0.0, 0.3):  # one sample is the noiseless one, whatever the noise
            smooth = smooth_mprt(explainer, x, n_samples=1, noise_std=noise_std, target_region=region, seed=4)
            assert smooth["smooth_mprt"] == plain[-1]["spearman_abs"]
            for ours, reference in zip(smooth["steps"], plain, strict=True):
                assert torch.equal(ours["map"], reference["map"]) and ours["region_dice"] == reference["region_dice"]


def test_smooth_mprt_is_the_rank_correlation_of_maps_averaged_over_noisy_copies(monkeypatch):
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    net, n, noise_std, seed = small_2d(), 5, 0.2, 7
    explainer = Explainer(net, "saliency", "argmax:2", abs=False)
    trained = explainer.predict(x)

    def smoothed(model):  # the definition, one noisy copy at a time: noise_std × (max − min), the last copy clean
        std = noise_std * float(x.max() - x.min())
        copies = [x + noise * std for noise in iter_noise(x.shape, 1.0, n - 1, seed)] + [x]
        return sum(Explainer(model, "saliency", "argmax:2", abs=False)(c, prediction=trained) for c in copies) / n

    original, randomised = smoothed(net), smoothed(randomised_copy(net, x, seed)[0])
    expected = spearmanr(original.abs().ravel(), randomised.abs().ravel()).statistic
    batches, call = [], Explainer.__call__
    monkeypatch.setattr(Explainer, "__call__", lambda self, inputs, **kw: batches.append(len(inputs)) or call(self, inputs, **kw))
    results = [compute("smooth_mprt", explainer, x, seed=seed, n_samples=n, noise_std=noise_std, per_eval=p) for p in (1, 3)]
    assert batches == [1] + [1] * 5 * 3 + [1] + [3, 2] * 3  # each map, then at most per_eval noisy copies at a time
    for result in results:  # per_eval changes the batching, not the draws
        assert result.value == pytest.approx(expected, abs=1e-6)
        assert [s["layer"] for s in result.curve["steps"]] == ["original", "2", "0"]
        assert result.extra == {"seed": seed, "layers": 2, "n_samples": n, "noise_std": noise_std, "target_region": "fixed",
                                "region_dice": 1.0}
    steps = smooth_mprt(explainer, x, n_samples=n, noise_std=noise_std, seed=seed)["steps"]
    torch.testing.assert_close(steps[0]["map"], original, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1]["map"], randomised, rtol=1e-5, atol=1e-7)


def test_smooth_mprt_through_windows_equals_autograd_through_sliding_window_inference(volume):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1)).eval()
    x, n, noise_std, seed = volume[:1], 2, 0.1, 3
    explainer = Explainer(net, "saliency", "argmax:1", **WINDOWS)
    ours = smooth_mprt(explainer, x, n_samples=n, noise_std=noise_std, seed=seed)
    prediction = naive_prediction(net, x)  # the region fixed from the trained model's prediction

    def naive(model):
        std = noise_std * float(x.max() - x.min())
        copies = [x + noise * std for noise in iter_noise(x.shape, 1.0, n - 1, seed)] + [x]
        return sum(naive_saliency(model, ArgmaxRegion(1), c, prediction) for c in copies) / n

    reference = cascading_randomisation(net, naive, torch.zeros(1, 1, *ROI), seed)
    for step, expected in zip(ours["steps"], reference, strict=True):
        torch.testing.assert_close(step["map"], expected["map"], rtol=1e-4, atol=1e-6 * float(expected["map"].abs().max()))
        assert step["spearman_abs"] == pytest.approx(expected["spearman_abs"], abs=1e-4)


# -- efficient MPRT -------------------------------------------------------------------------------------------
def entropy_of_histogram(values, n_bins):
    counts, _ = np.histogram(np.asarray(values), bins=n_bins)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_efficient_mprt_is_the_relative_rise_of_the_maps_histogram_entropy():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    net, seed = small_2d(1), 2
    explainer = Explainer(net, "saliency", "argmax:0", abs=False)
    states = []
    cascading_randomisation(net, lambda m: states.append(copy.deepcopy(m.state_dict())) or explainer(x), x, seed)
    model, layers = randomised_copy(net, x, seed)
    assert layers == ["2", "0"] and all(torch.equal(v, states[-1][k]) for k, v in model.state_dict().items())  # the last step's model
    original = explainer(x)
    randomised = Explainer(model, "saliency", "argmax:0", abs=False)(x, prediction=explainer.predict(x))
    for n_bins in (100, 7):
        h0, h1 = entropy_of_histogram(original, n_bins), entropy_of_histogram(randomised, n_bins)
        result = compute("efficient_mprt", explainer, x, original, seed=seed, n_bins=n_bins)
        assert result.value == pytest.approx((h1 - h0) / h0, rel=1e-9) and result.extra["entropy_ratio"] == pytest.approx(h1 / h0, rel=1e-9)
        assert result.extra["entropy_original"] == pytest.approx(h0) == discrete_entropy(original, n_bins)
    assert efficient_mprt(explainer, x, n_bins=7, seed=seed)["efficient_mprt"] == pytest.approx(result.value, rel=1e-9)  # explains it itself


def test_efficient_mprt_of_a_method_ignoring_the_weights_is_zero_and_a_constant_map_is_undefined():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    edges = compute("efficient_mprt", Explainer(small_2d(), ImageGradient(), "argmax:1"), x)
    assert edges.value == 0.0 and edges.extra["entropy_ratio"] == 1.0
    constant = compute("efficient_mprt", Explainer(small_2d(), ImageGradient(), "class:1"), torch.ones(1, 1, 16, 16))
    assert constant.value is None and constant.status == "undefined" and "entropy is 0" in constant.error


def test_efficient_mprt_through_windows_equals_autograd_through_sliding_window_inference(unet3d, volume):
    x, seed = volume[:1], 1
    explainer = Explainer(unet3d, "saliency", "argmax:2", **WINDOWS)
    ours = efficient_mprt(explainer, x, seed=seed)
    prediction = naive_prediction(unet3d, x)
    model = randomised_copy(unet3d, torch.zeros(1, 1, *ROI), seed)[0]
    original = naive_saliency(unet3d, ArgmaxRegion(2), x, prediction)
    randomised = naive_saliency(model, ArgmaxRegion(2), x, prediction)
    # float32 rounding can move a voxel across a bin edge: a few voxels of 21504 change H by ~1e-4
    assert ours["entropy_original"] == pytest.approx(discrete_entropy(original), abs=1e-3)
    assert ours["entropy_randomised"] == pytest.approx(discrete_entropy(randomised), abs=1e-3)
    assert ours["layers"] == len(parameterised_layers(unet3d, torch.zeros(1, 1, *ROI))) and ours["region_dice"] == 1.0


# -- Quantus parity (2D) --------------------------------------------------------------------------------------
def quantus_explain(**settings):
    """Quantus's ``explain_func``: our Explainer, one image and class at a time."""

    def explain(model, inputs, targets, **kwargs):
        maps = [Explainer(model, "saliency", f"class:{int(t)}", **settings)(torch.as_tensor(np.asarray(x)[None], dtype=torch.float32))
                for x, t in zip(inputs, targets)]
        return torch.cat(maps).numpy()

    return explain


def our_randomised_models(monkeypatch, our_seed, example):
    """Align the models: Quantus's layer generator yields the models of our cascading randomisation
    (layers from the output down, layer i re-initialised under seed + i) instead of its own (registration
    order, bottom-up by default for SmoothMPRT/EfficientMPRT, every layer under seed + 1)."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    def generator(self, order="top_down", seed=42):  # noqa: ARG001 (ours, not its, order and seed)
        model = copy.deepcopy(self.model)
        modules = dict(model.named_modules())
        for index, name in enumerate(reversed(parameterised_layers(self.model, example)), start=1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(our_seed + index)
                modules[name].reset_parameters()
            yield name, model

    monkeypatch.setattr(PyTorchModel, "get_random_layer_generator", generator)


def test_random_logit_equals_quantus_random_logit(classifier2d):
    quantus = require_quantus()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    y = classifier2d(x).argmax(1).numpy()
    for i in range(3):
        explainer = Explainer(classifier2d, "saliency", f"class:{y[i]}")
        ours = random_logit(explainer, x[i : i + 1], seed=11)
        others = [c for c in range(3) if c != y[i]]
        # the same draw: Quantus picks others[randint(0, K − 1)] after np.random.seed(seed); take a seed where that is our class
        q_seed = next(s for s in itertools.count() if others[np.random.RandomState(s).randint(0, 2, 1)[0]] == ours["contrast_class"])
        attribution = explainer(x[i : i + 1]).numpy()
        common = dict(model=classifier2d, x_batch=x[i : i + 1].numpy(), y_batch=y[i : i + 1], a_batch=attribution,
                      explain_func=quantus_explain(), device="cpu")
        # Quantus's defaults changed: normalise=False, abs=False (our SSIM takes |maps| scaled to [0, 1] itself), and
        # similarity_func our SSIM on the image grid (Quantus's flattens the maps: a 1D SSIM)
        grid_ssim = lambda a, b, batched=True, **_: [ssim(p.reshape(16, 16), q.reshape(16, 16)) for p, q in zip(a, b)]  # noqa: E731
        theirs = quantus.RandomLogit(num_classes=3, seed=q_seed, similarity_func=grid_ssim, abs=False, normalise=False,
                                     disable_warnings=True, display_progressbar=False)(**common)
        assert theirs[0] == pytest.approx(ours["random_logit"], abs=1e-12)
        # with Quantus's own similarity (1D SSIM of the flattened maps) it compares the same contrast map as ours
        flat = quantus.RandomLogit(num_classes=3, seed=q_seed, abs=False, normalise=False, disable_warnings=True,
                                   display_progressbar=False)(**common)
        expected = quantus.functions.similarity_func.ssim(attribution.ravel(), ours["contrast_map"].numpy().ravel())
        assert flat[0] == pytest.approx(expected, abs=1e-12)


def test_smooth_mprt_equals_quantus_smooth_mprt(classifier2d, monkeypatch):
    quantus = require_quantus()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    y = classifier2d(x).argmax(1).numpy()
    n, noise_std, seed = 4, 0.2, 5
    ours = [smooth_mprt(Explainer(classifier2d, "saliency", f"class:{y[i]}", abs=False), x[i : i + 1], n_samples=n,
                        noise_std=noise_std, seed=seed) for i in range(2)]
    our_randomised_models(monkeypatch, seed, x[:1])
    # the same noise: Quantus draws np.random.randn(B, C, H, W) for each noisy copy of each model; we use the same
    # n − 1 draws (from the seed) for every model and every image — its randn returns them in turn
    draws = [noise.numpy()[0] for noise in iter_noise(x[:1].shape, 1.0, n - 1, seed)]
    calls = itertools.count()
    monkeypatch.setattr(np.random, "randn", lambda *shape: np.broadcast_to(draws[next(calls) % (n - 1)], shape).astype(np.float64))
    # SmoothMPRT explains through quantus.explain (not explain_func): both are our Explainer
    monkeypatch.setattr(quantus, "explain", lambda model, inputs, targets, **kwargs: quantus_explain(abs=False)(model, inputs, targets))
    # a_batch: our smoothed map of the trained model (Quantus compares every layer's map against a_batch);
    # normalise=False (its second-moment normalisation scales each map: ranks unchanged), abs=True (its default: |maps|)
    a_batch = torch.cat([o["steps"][0]["map"] for o in ours]).numpy()
    theirs = quantus.SmoothMPRT(nr_samples=n, noise_magnitude=noise_std, abs=True, normalise=False, disable_warnings=True,
                                display_progressbar=False)(model=classifier2d, x_batch=x.numpy(), y_batch=y, a_batch=a_batch,
                                                           explain_func=quantus_explain(abs=False), device="cpu")
    assert next(calls) == 4 * (n - 1)  # the trained model and 3 layers, n − 1 noisy copies each
    assert list(theirs) == ["original", *[s["layer"] for s in ours[0]["steps"][1:]]]
    for index, (layer, scores) in enumerate(theirs.items()):
        assert scores == pytest.approx([o["steps"][index]["spearman_abs"] for o in ours], abs=1e-6)
    assert [float(v) for v in list(theirs.values())[-1]] == pytest.approx([o["smooth_mprt"] for o in ours], abs=1e-6)


def test_efficient_mprt_equals_quantus_efficient_mprt(classifier2d, monkeypatch):
    quantus = require_quantus()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(8))
    y = classifier2d(x).argmax(1).numpy()
    seed = 9
    ours = [efficient_mprt(Explainer(classifier2d, "saliency", f"class:{y[i]}", abs=False), x[i : i + 1], seed=seed)
            for i in range(3)]
    our_randomised_models(monkeypatch, seed, x[:1])
    # Quantus's defaults kept: discrete entropy in 100 bins (find_n_bins without a rule), abs=False, normalise=False,
    # skip_layers=True (the trained and the fully randomised model only); compute_extra_scores for the ratio
    metric = quantus.EfficientMPRT(compute_extra_scores=True, disable_warnings=True, display_progressbar=False)
    a_batch = quantus_explain(abs=False)(classifier2d, x.numpy(), y)
    theirs = metric(model=classifier2d, x_batch=x.numpy(), y_batch=y, a_batch=a_batch, explain_func=quantus_explain(abs=False),
                    device="cpu")
    assert theirs == pytest.approx([o["efficient_mprt"] for o in ours], rel=1e-9)
    assert metric.scores_extra["scores_fraction_explanation"] == pytest.approx([o["entropy_ratio"] for o in ours], rel=1e-9)
