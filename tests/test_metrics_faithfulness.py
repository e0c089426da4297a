"""Faithfulness correlation, ROAD and completeness: each against its definition (a known answer
or a naive loop), through sliding windows against MONAI's full sliding-window inference of every
perturbed image, and against Quantus 0.6.0 in 2D with the settings aligned (written per test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quantus_helpers import require_quantus
from window_reference import naive_target

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore
from esegeta_monai.evaluation import METRICS, MetricCase
from esegeta_monai.evaluation import faithfulness_correlation as correlation_module
from esegeta_monai.evaluation import road as road_module
from esegeta_monai.evaluation.completeness import completeness
from esegeta_monai.evaluation.faithfulness_correlation import draw_subsets, faithfulness_correlation
from esegeta_monai.evaluation.regions import patch_regions
from esegeta_monai.evaluation.road import noisy_linear_imputation, road

WINDOWS = {"roi_size": (16, 16, 16), "overlap": 0.5, "mode": "gaussian"}


class NaiveWindowedTarget:
    """Stands in for WindowedTarget: ``T`` of every perturbed image through MONAI's full
    ``sliding_window_inference`` (the target's region fixed from the clean image)."""

    net, target = None, None

    def __init__(self, window_pass, x):
        self.forward = naive_target(self.net, self.target, x, **WINDOWS)
        self.clean = self.forward(x).double()
        self.forwards = 0

    def __call__(self, images):
        return self.forward(images)


@pytest.fixture
def naive(monkeypatch, unet3d):
    """Replace the windowed target of the three metrics by the naive one (unet3d, argmax:1)."""
    NaiveWindowedTarget.net, NaiveWindowedTarget.target = unet3d, ArgmaxRegion(1)

    def install():
        for module in (correlation_module, road_module):
            monkeypatch.setattr(module, "WindowedTarget", NaiveWindowedTarget)
        import esegeta_monai.methods.gradient as gradient

        monkeypatch.setattr(gradient, "WindowedTarget", NaiveWindowedTarget)

    return install


def _linear_classifier(size=16):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, 2)).eval()


# -- faithfulness correlation ---------------------------------------------------------------------

def test_faithfulness_correlation_is_one_for_input_times_gradient_of_a_linear_model():
    # T = w·x + b: removing S (baseline 0) drops T by Σ_S w_i x_i, exactly the map's sum over S
    net = _linear_classifier()
    x = torch.rand(1, 1, 16, 16) + 0.5
    explainer = Explainer(net, "input_x_gradient", "class:1")
    for subsets in ("voxels", "patches", "supervoxels"):
        result = faithfulness_correlation(explainer, x, explainer(x), n_samples=12, subsets=subsets, subset_size=3,
                                          patch_size=4, n_segments=16, compactness=1.0)
        assert result["faithfulness_correlation"] == pytest.approx(1.0, abs=1e-5), subsets
    shuffled = explainer(x).flatten()[torch.randperm(256)].view(1, 1, 16, 16)
    shuffled_value = faithfulness_correlation(explainer, x, shuffled, n_samples=12, subset_size=3, patch_size=4)
    assert shuffled_value["faithfulness_correlation"] < 0.9


def test_faithfulness_correlation_equals_a_naive_loop_over_the_draws(classifier2d):
    torch.manual_seed(2)
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(classifier2d, "saliency", "class:2", abs=False)
    phi = explainer(x)
    ours = faithfulness_correlation(explainer, x, phi, n_samples=10, subset_size=3, patch_size=(4, 8), baseline="mean", seed=5)
    labels = patch_regions((16, 16), (4, 8))
    sums, drops = [], []
    with torch.no_grad():
        clean = float(classifier2d(x)[0, 2])
        for draw in draw_subsets(int(labels.max()) + 1, 3, 10, seed=5):
            mask = torch.as_tensor(np.isin(labels, draw))
            sums.append(float(phi[0, 0][mask].double().sum()))
            drops.append(clean - float(classifier2d(torch.where(mask, x.mean(), x))[0, 2]))
    assert ours["faithfulness_correlation"] == pytest.approx(np.corrcoef(sums, drops)[0, 1], rel=1e-4)
    assert ours["n_samples"] == 10 and ours["seed"] == 5 and ours["n_regions"] == 8 and ours["baseline"] == "mean"


def test_faithfulness_correlation_through_windows_equals_full_sliding_window_inference(unet3d, volume, naive):
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, **WINDOWS)
    phi = explainer(x)
    options = {"n_samples": 8, "subset_size": 2, "patch_size": 8, "seed": 3}
    windowed = faithfulness_correlation(explainer, x, phi, **options)
    naive()
    reference = faithfulness_correlation(explainer, x, phi, **options)
    assert windowed["faithfulness_correlation"] == pytest.approx(reference["faithfulness_correlation"], rel=1e-4, abs=1e-5)
    assert windowed["mean_drop"] == pytest.approx(reference["mean_drop"], rel=1e-3)
    assert windowed["forwards"] < 27 * (1 + 8)  # 27 windows: a draw of two 8³ patches re-runs only those it overlaps


def test_faithfulness_correlation_equals_quantus_with_its_defaults_and_the_same_draws(classifier2d, monkeypatch):
    quantus = require_quantus()
    torch.manual_seed(3)
    x = torch.rand(1, 1, 32, 32)
    explainer = Explainer(classifier2d, "saliency", ClassScore(1), abs=False)
    phi = explainer(x)
    ours = faithfulness_correlation(explainer, x, phi, n_samples=100, subsets="voxels", subset_size=224, baseline="black", seed=7)
    # Alignment: Quantus's defaults nr_runs=100, subset_size=224, perturb_baseline="black" (the image minimum) and its
    # logits (softmax=False); normalise=False, abs=False leave the map as is (Pearson ignores normalise_by_max anyway).
    # Quantus draws each subset by np.random.choice(n_features, 224, replace=False) from numpy's global state: it is
    # fed our draws (default_rng(seed), draw_subsets) in the same order. One channel: Quantus's feature = our voxel.
    draws = iter(draw_subsets(32 * 32, 224, 100, seed=7))

    def choice(n, size, replace=True):
        assert (n, size, replace) == (1024, 224, False)
        return next(draws)

    monkeypatch.setattr(np.random, "choice", choice)
    metric = quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, perturb_baseline="black", normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True, display_progressbar=False)
    reference = metric(model=classifier2d, x_batch=x.numpy(), y_batch=np.array([1]), a_batch=phi.numpy(), device="cpu")
    assert next(draws, None) is None  # every draw used
    assert ours["faithfulness_correlation"] == pytest.approx(reference[0], rel=1e-4, abs=1e-5)
    assert abs(ours["faithfulness_correlation"]) > 0.05  # not a trivial agreement at 0


# -- ROAD ---------------------------------------------------------------------------------------

def test_noisy_linear_imputation_equals_quantus_and_keeps_a_linear_ramp():
    quantus = require_quantus()
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    rng = np.random.default_rng(0)
    image = rng.random((2, 13, 17)).astype(np.float32)
    removed = rng.permutation(13 * 17)[:150]
    reference = quantus_imputation(image, removed, noise=0.0)  # spsolve of Quantus's system (8 neighbours, 1/6 and 1/12)
    ours, _, info = noisy_linear_imputation(torch.as_tensor(image), removed, noise=0.0, tol=1e-10)
    assert quantus is not None and info["residual"] <= 1e-10
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)
    # the weighted mean of the neighbours of a linear function is its value: interior removals recover it exactly (3D: 6 faces)
    grid = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij"))
    ramp = torch.as_tensor(0.5 * grid[0] - 2.0 * grid[1] + 0.25 * grid[2] + 1.0)[None]
    interior = np.flatnonzero(np.pad(np.ones((14, 14, 14), bool), 1).ravel() & (rng.random(4096) < 0.8))
    imputed, clean, _ = noisy_linear_imputation(ramp, interior, noise=0.0, tol=1e-12)
    torch.testing.assert_close(imputed, ramp, rtol=0, atol=1e-9)
    # the noise: N(0, noise²) on the removed voxels only, drawn from the generator given
    noisy, clean, _ = noisy_linear_imputation(ramp, interior, noise=0.5, rng=np.random.default_rng(1), tol=1e-12)
    residual = (noisy - clean).flatten()
    removed_mask = torch.zeros(4096, dtype=torch.bool)
    removed_mask[interior] = True
    assert torch.all(residual[~removed_mask] == 0) and abs(float(residual[removed_mask].std()) - 0.5) < 0.05
    draw = 0.5 * np.random.default_rng(1).standard_normal((1, interior.size))
    np.testing.assert_allclose(residual.numpy()[interior], draw[0], atol=1e-9)


class BoxSum(torch.nn.Module):
    """Class 1 scores the sum of the image inside a box (class 0 its negative): the ideal map is the box."""

    def __init__(self, box, offset=8.0):
        super().__init__()
        self.box, self.offset = box, offset

    def forward(self, x):
        inside = x[(slice(None), slice(None), *self.box)].flatten(1).sum(1)
        return torch.stack([-inside + self.offset, inside], 1)


def test_road_follows_its_definition_and_ranks_ideal_random_and_inverted_maps():
    box = (slice(3, 9), slice(4, 10))
    net = BoxSum(box)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16) + 0.5
    ideal = torch.zeros_like(x)
    ideal[(slice(None), slice(None), *box)] = x[(slice(None), slice(None), *box)]
    explainer = Explainer(net, "saliency", ClassScore(1))
    percentages = (10, 30, 60)
    result = road(explainer, x, ideal, percentages=percentages, normalisation="score", seed=4, tol=1e-10)
    # the naive loop: remove int(N·p/100) voxels in the map's order, impute (noise from default_rng(seed) in order), T = logit;
    # the end point: the image of its mean
    rng = np.random.default_rng(4)
    order = np.argsort(-ideal.flatten().numpy(), kind="stable")
    raw, kept = [float(net(x)[0, 1])], [bool(net(x).argmax(1) == 1)]
    for p in percentages:
        imputed, _, _ = noisy_linear_imputation(x[0], order[: int(256 * p / 100)], 0.01, rng, tol=1e-10)
        raw.append(float(net(imputed[None])[0, 1]))
        kept.append(bool(net(imputed[None]).argmax(1) == 1))
    raw.append(float(net(torch.full_like(x, float(x.mean())))[0, 1]))
    kept.append(bool(net(torch.full_like(x, float(x.mean()))).argmax(1) == 1))
    np.testing.assert_allclose(result["raw"], raw, rtol=1e-5)
    curve = [(v - raw[-1]) / (raw[0] - raw[-1]) for v in raw]
    np.testing.assert_allclose(result["curve"], curve, rtol=1e-5, atol=1e-7)
    assert result["road"] == pytest.approx(np.trapezoid(curve, [0, 0.1, 0.3, 0.6, 1.0]), rel=1e-5)
    assert result["kept"] == kept and result["percentages"] == [10.0, 30.0, 60.0] and result["seed"] == 4
    values = {name: road(explainer, x, m, percentages=percentages, normalisation="score")["road"]
              for name, m in (("ideal", ideal), ("random", torch.rand_like(x)), ("inverted", -ideal))}
    assert values["ideal"] < values["random"] < values["inverted"]
    lerf = road(explainer, x, ideal, percentages=percentages, order="lerf", normalisation="score")["road"]
    assert lerf > values["ideal"] and METRICS["road"].direction({"order": "lerf"}) == "higher"


def test_road_flags_an_undefined_normalisation():
    explainer = Explainer(BoxSum((slice(0, 2), slice(0, 2))), "saliency", ClassScore(1))
    x = torch.ones(1, 1, 8, 8)
    attribution = torch.zeros_like(x)
    attribution[..., 4:, 4:] = 1.0
    # a constant image: its end point (the image of its channel means) is the image itself, T_clean = T_end
    result = METRICS["road"].compute(MetricCase(explainer, x, attribution), {**METRICS["road"].options, "noise": 0.0,
                                                                                "percentages": [10, 20]})
    assert result.value is None and result.status == "undefined" and "undefined normalisation" in result.error


def test_road_through_windows_equals_full_sliding_window_inference(unet3d, volume, naive):
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, **WINDOWS)
    phi = explainer(x)
    windowed = road(explainer, x, phi, percentages=(5, 40), seed=2)
    naive()
    reference = road(explainer, x, phi, percentages=(5, 40), seed=2)
    np.testing.assert_allclose(windowed["raw"], reference["raw"], rtol=1e-4)
    assert windowed["road"] == pytest.approx(reference["road"], rel=1e-3) and windowed["kept"] is None


def test_road_kept_class_curve_equals_quantus_with_the_same_noise(monkeypatch):
    quantus = require_quantus()
    # a bright box on a dark background, class 1 while the box's sum exceeds 12: imputing the box from the dark
    # background flips the class as MoRF removes it (a random CNN keeps its class at every percentage)
    box = (slice(8, 14), slice(9, 15))
    classifier = BoxSum(box, offset=24.0).eval()
    torch.manual_seed(5)
    x = 0.1 * torch.rand(1, 1, 24, 24)
    x[(slice(None), slice(None), *box)] += 1.0
    label = 1
    explainer = Explainer(classifier, "input_x_gradient", ClassScore(label))
    phi = explainer(x) + 1e-3 * torch.rand_like(x)  # no ties: Quantus's argsort (quicksort) and ours (stable) agree
    percentages = list(range(1, 100, 2))  # Quantus's default
    ours = road(explainer, x, phi, percentages=percentages, noise=0.01, seed=9, tol=1e-10)
    # Alignment: Quantus's ROAD with its defaults (percentages 1, 3, …, 99; noise=0.01; noisy_linear_imputation);
    # normalise=False, abs=False (its normalise_by_max would not change the order either). It draws the noise by
    # np.random.randn(C, k) for each percentage in turn: it is fed our draws (default_rng(seed).standard_normal in the
    # same order). Its y_batch is the explained class; it returns 1 where the argmax is still that class.
    rng = np.random.default_rng(9)
    noise = iter([rng.standard_normal((1, int(24 * 24 * p / 100))) for p in percentages])

    def randn(*shape):
        draw = next(noise)
        assert draw.size == int(np.prod(shape))  # (k,): with one channel Quantus's solution is 1-D
        return draw.reshape(shape)

    monkeypatch.setattr(np.random, "randn", randn)
    seen = []

    class Recording(torch.nn.Module):  # the images Quantus feeds its model
        def forward(self, images):
            seen.append(images.clone())
            return classifier(images)

    metric = quantus.ROAD(percentages=percentages, noise=0.01, normalise=False, abs=False, disable_warnings=True,
                          display_progressbar=False)
    reference = metric(model=Recording().eval(), x_batch=x.numpy(), y_batch=np.array([label]), a_batch=phi.numpy(), device="cpu")
    assert next(noise, None) is None
    assert ours["kept"][1:-1] == [bool(reference[p]) for p in percentages]
    assert 0 < sum(ours["kept"][1:-1]) < len(percentages)  # the class flips: not a trivial agreement
    # the perturbed images agree to the solver's tolerance (the first: 1 % removed, the first noise draw)
    order = np.argsort(-phi.flatten().numpy(), kind="stable")
    first, _, _ = noisy_linear_imputation(x[0], order[: int(576 * 1 / 100)], 0.01, np.random.default_rng(9), tol=1e-10)
    torch.testing.assert_close(first[None], seen[0], rtol=0, atol=1e-6)
    # and our curve (T = the class probability, normalisation "auto") on Quantus's images, to float32 rounding
    probabilities = torch.softmax(classifier(torch.cat(seen)).double(), 1)[:, label]
    np.testing.assert_allclose(ours["raw"][1:-1], probabilities.detach().numpy(), rtol=1e-4, atol=1e-6)


# -- completeness ---------------------------------------------------------------------------------

def test_completeness_holds_for_ig_and_deeplift_and_fails_for_saliency():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(1, 1, 16, 16)
    gaps = {}
    for method, options in (("integrated_gradients", {"n_steps": 128}), ("deeplift", {}), ("saliency", {"abs": False})):
        explainer = Explainer(net, method, "class:1", **options)
        gaps[method] = completeness(explainer, x, explainer(x))
    with torch.no_grad():
        difference = float(net(x)[0, 1] - net(torch.zeros_like(x))[0, 1])
    ig = gaps["integrated_gradients"]
    assert ig["difference"] == pytest.approx(difference, rel=1e-5) and ig["baseline"] == 0.0
    assert ig["gap"] == pytest.approx(abs(ig["attribution_sum"] - difference), rel=1e-4, abs=1e-7)
    assert ig["completeness"] < 1e-2 and ig["complete"] and gaps["deeplift"]["completeness"] < 1e-4
    assert gaps["saliency"]["completeness"] > 0.3 and not gaps["saliency"]["complete"]
    linear = Explainer(_linear_classifier(), "integrated_gradients", "class:0", n_steps=4)  # linear: exact at any steps
    assert completeness(linear, x + 0.5, linear(x + 0.5))["completeness"] < 1e-5


def test_completeness_through_windows_equals_full_sliding_window_inference(unet3d, volume, naive):
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, **WINDOWS)
    phi = explainer(x)
    windowed = completeness(explainer, x, phi, baseline="mean")
    naive()
    reference = completeness(explainer, x, phi, baseline="mean")
    assert windowed["difference"] == pytest.approx(reference["difference"], rel=1e-4)
    assert windowed["completeness"] == pytest.approx(reference["completeness"], rel=1e-4)


def test_completeness_equals_quantus_difference_and_its_exact_equality(classifier2d):
    quantus = require_quantus()
    torch.manual_seed(6)
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(classifier2d, "integrated_gradients", ClassScore(1), n_steps=32)
    phi = explainer(x)
    # Alignment: perturb_baseline="black" (Quantus's default: the whole image replaced by its minimum) = our
    # baseline="black"; logits (softmax=False); normalise=False, abs=False. Quantus returns Σ Φ == T(x) − T(baseline)
    # as an exact float32 equality; its difference is read through output_func (identity by default).
    differences = []

    def record(difference):
        differences.append(float(difference[0]))
        return difference

    def quantus_completeness(a):
        metric = quantus.Completeness(perturb_baseline="black", normalise=False, abs=False, output_func=record,
                                      disable_warnings=True, display_progressbar=False)
        return metric(model=classifier2d, x_batch=x.numpy(), y_batch=np.array([1]), a_batch=a, device="cpu")[0]

    ours = completeness(explainer, x, phi, baseline="black", tolerance=0.0)
    assert not quantus_completeness(phi.numpy()) and not ours["complete"]  # IG with 32 steps: a small gap, not 0
    assert ours["difference"] == pytest.approx(differences[0], rel=1e-5)
    # a map that sums to Quantus's difference exactly: Quantus says True; ours gap is float32 rounding of the difference
    exact = np.zeros((1, 1, 16, 16), dtype=np.float32)
    exact[0, 0, 0, 0] = differences[0]
    assert quantus_completeness(exact)
    matched = completeness(explainer, x, torch.as_tensor(exact), baseline="black", tolerance=1e-6)
    assert matched["complete"] and matched["gap"] <= 1e-6 * abs(differences[0])


def test_the_three_metrics_run_on_the_case_evaluate_builds(classifier2d):
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(classifier2d, "integrated_gradients", "class:1", n_steps=8)
    case = MetricCase(explainer, x, explainer(x), label=np.zeros((16, 16), dtype=np.int64), seed=3)
    small = {"faithfulness_correlation": {"n_samples": 6, "patch_size": 4}, "road": {"percentages": [20, 50]}, "completeness": {}}
    for name, options in small.items():
        result = METRICS[name].compute(case, {**METRICS[name].options, **options})
        assert result.status is None and np.isfinite(result.value), name
    assert result.extra["baseline"] == 0.0 and isinstance(result.extra["complete"], bool)
