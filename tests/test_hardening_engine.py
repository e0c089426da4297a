"""Hardening of the engine (issue 13): empty target regions are refused, no empty window batch,
spatial targets refuse a classifier, and time budgets that hold for every method.

The budget test runs each registered method on a workload that would take at least 20 s
without a budget — argued, not run: the network forwards of the workload (and the images in
them) are counted on two small versions of it and extrapolated (they grow linearly with the
workload's knob), and multiplied by the time of one image's forward, a lower bound of what
each costs — and checks that with ``timeout=1.0`` it stops within the budget, one forward
and a second, leaves no hook behind, and that the next call (no budget) works.

``python tests/test_hardening_engine.py`` measures what the budget's hook costs on the
vessel_mra_demo bundle's sample (saliency with ``timeout=None`` against ``timeout=1e9``).
"""

from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore, MaskRegion, OtsuRegion, VoxelScore
from esegeta_monai.core.window_pass import Deadline, WeightedOutput, WindowPass
from esegeta_monai.core.windowed_target import WindowedTarget
from esegeta_monai.core.windows import plan_windows
from esegeta_monai.errors import EmptyTargetError, MethodTimeout, TargetError
from esegeta_monai.methods import available_methods, get_method
from esegeta_monai.methods.gradient import captum_steps, gauss_legendre
from test_methods_all import options_for

CHOOSE = "Choose another class, an `otsu:` target, or a `mask:` region"


def constant_net() -> torch.nn.Module:
    """A 1×1 convolution whose output is constant: class 0 everywhere (logits 1, 0, 0)."""
    net = torch.nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    return net.eval()


class Counter:
    """Counts the forwards of a network and the images in them (a forward pre-hook)."""

    def __init__(self, network: torch.nn.Module):
        self.calls = self.images = 0
        self.handle = network.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.images += int(args[0].shape[0])

    def remove(self):
        self.handle.remove()


# -- 1. empty target regions ----------------------------------------------------------------
def test_an_empty_argmax_region_is_refused_before_the_method_runs(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the method ran")

    monkeypatch.setattr(type(get_method("integrated_gradients")), "run", never)
    x = torch.rand(1, 1, 16, 16)
    for settings in ({}, {"roi_size": (8, 8), "overlap": 0.5}):  # one window (crashed before), several
        explainer = Explainer(constant_net(), "integrated_gradients", ArgmaxRegion(1), n_steps=8, **settings)
        with pytest.raises(EmptyTargetError, match=r"argmax1: the target region is empty \(0 voxels\)") as error:
            explainer(x)
        assert CHOOSE in str(error.value)
        assert "predicted as class 1" in str(error.value) and "batch" not in str(error.value)
        assert isinstance(error.value, TargetError) and explainer.last_region_voxels == [0]


def test_an_empty_region_on_one_image_of_a_batch_names_it():
    masks = torch.ones(3, 1, 16, 16)
    masks[1] = 0
    explainer = Explainer(constant_net(), "saliency", MaskRegion(1, masks))
    with pytest.raises(EmptyTargetError, match="on image 1 of the batch of 3") as error:
        explainer(torch.rand(3, 1, 16, 16))
    assert "mask is zero" in str(error.value) and "other images" in str(error.value)
    assert explainer.last_region_voxels == [256, 0, 256]
    masks[2] = 0
    with pytest.raises(EmptyTargetError, match="on images 1, 2 of the batch of 3"):
        explainer.target.mask = masks
        explainer(torch.rand(3, 1, 16, 16))


@pytest.mark.parametrize("target", [OtsuRegion(1), MaskRegion(1, torch.zeros(16, 16)), MaskRegion(1, box=[(20, 30), (0, 4)])],
                         ids=["otsu-constant", "mask-zero", "box-outside"])
def test_empty_otsu_mask_and_box_regions_are_refused(target):
    explainer = Explainer(constant_net(), "saliency", target, roi_size=(8, 8), overlap=0.25)
    with pytest.raises(EmptyTargetError, match=r"0 voxels.*" + re.escape(CHOOSE)):
        explainer(torch.rand(2, 1, 16, 16))
    assert explainer.last_region_voxels == [0, 0]


def test_methods_that_ignore_the_target_still_run_on_an_empty_region():
    explainer = Explainer(torch.nn.Sequential(constant_net()), "deepdream", ArgmaxRegion(1), layer="0", steps=1, octaves=1)
    assert not get_method("deepdream").reads_target and get_method("layer_activation").reads_target
    assert explainer(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8) and explainer.last_region_voxels == [0]


def test_region_sizes_are_reported_on_every_call(classifier2d):
    net = constant_net()
    with torch.no_grad():  # logits x, 0.5, -1: class 1 where x < 0.5
        net.weight[0] = 1.0
        net.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    explainer = Explainer(net, "saliency", ArgmaxRegion(1))
    explainer(x)
    with torch.no_grad():
        expected = (net(x).argmax(1) == 1).flatten(1).sum(1).tolist()
    assert explainer.last_region_voxels == expected and min(expected) > 0
    voxel = Explainer(net, "saliency", VoxelScore(1, (3, 4)), roi_size=(8, 8))
    voxel(x)
    assert voxel.last_region_voxels == [1, 1]
    classifier = Explainer(classifier2d, "saliency", ClassScore(1))
    classifier(x)
    assert classifier.last_region_voxels is None  # a classifier's score has no region


# -- 2. no window batch of size 0 -----------------------------------------------------------
@pytest.mark.parametrize("roi_size", [None, (8, 8)], ids=["one-window", "windows"])
def test_a_window_pass_with_no_window_reaching_the_target_runs_nothing(roi_size):
    net = constant_net()
    x = torch.rand(2, 1, 16, 16)
    plan = plan_windows(x.shape[2:], roi_size, 0.5)
    window_pass = WindowPass(WeightedOutput(net, 1), plan, ArgmaxRegion(1), torch.zeros(2, 1, *plan.padded_shape))
    attribution = get_method("saliency").run(window_pass, x, {"abs": True})
    assert attribution.shape == x.shape and not attribution.any() and window_pass.windows_run == 0
    target = WindowedTarget(window_pass, x)
    assert not target.clean.any() and target.forwards == 0
    assert not target(torch.rand(4, 1, 16, 16)).any() and not target.of_image(1)(torch.rand(3, 1, 16, 16)).any()
    assert target.forwards == 0


# -- 3. spatial targets on a classifier -----------------------------------------------------
@pytest.mark.parametrize("spec", ["argmax:1", "otsu:1", "voxel:1:3,3", "mask"])
@pytest.mark.parametrize("roi_size", [None, (8, 8)], ids=["whole", "windows"])
def test_spatial_targets_refuse_a_classifier_output(classifier2d, spec, roi_size):
    target = MaskRegion(1, torch.ones(16, 16)) if spec == "mask" else spec
    with pytest.raises(TargetError, match=r"a classifier has no spatial output.*class:C \(e\.g\. class:1\)"):
        Explainer(classifier2d, "saliency", target, roi_size=roi_size)(torch.rand(2, 1, 16, 16))


def test_targets_refuse_a_classifier_output_directly():
    output = torch.zeros(2, 3)
    for target in (ArgmaxRegion(1), OtsuRegion(1), MaskRegion(1, box=[(0, 2)]), VoxelScore(1, (0,))):
        with pytest.raises(TargetError, match="a classifier has no spatial output"):
            target.weights(output)
    assert ClassScore(1).weights(output)[:, 1].eq(1).all()


# -- 4. time budgets ------------------------------------------------------------------------
def test_the_gauss_legendre_rule_is_captums_and_cheap():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for n in (1, 7, 50, 256):  # numpy's own rule: the same values as Captum's always gave
        nodes, weights = np.polynomial.legendre.leggauss(n)
        assert gauss_legendre(n) == ((0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist())
    for n in (257, 400):  # Newton's: within rounding of numpy's nodes, summing to 1
        nodes, weights = np.polynomial.legendre.leggauss(n)
        sizes, alphas = gauss_legendre(n)
        np.testing.assert_allclose(alphas, 0.5 * (1 + nodes), rtol=0, atol=1e-14)
        np.testing.assert_allclose(sizes, 0.5 * weights, rtol=1e-7)
        assert abs(sum(sizes) - 1) < 1e-12
    start = time.perf_counter()
    original = approximation_parameters("gausslegendre")[1]
    with captum_steps(None, {"method": "gausslegendre", "n_steps": 3000}):  # lent to Captum during a run only
        sizes_of, alphas_of = approximation_parameters("gausslegendre")  # what Captum's IG, conductance, influence call
        assert alphas_of(3000) == gauss_legendre(3000)[1] and sizes_of(3000) == gauss_legendre(3000)[0]
    assert time.perf_counter() - start < 5  # numpy's leggauss: ~25 s for 3000 steps
    assert approximation_parameters("gausslegendre")[1](5) == original(5)  # Captum's own rule is back
    with pytest.raises(MethodTimeout, match="time budget"):
        gauss_legendre(4321, Deadline(0.0, "rule").check)


def test_the_budget_hook_is_removed_and_the_network_left_as_it_was(classifier2d):
    x = torch.rand(1, 1, 16, 16)
    classifier2d.train()
    grads = [p.requires_grad for p in classifier2d.parameters()]
    Explainer(classifier2d, "saliency", "class:1", timeout=60)(x)
    with pytest.raises(MethodTimeout, match=r"time budget of 1e-09 s exceeded after \d+\.\d\d s \(at a network forward"):
        Explainer(classifier2d, "integrated_gradients", "class:1", timeout=1e-9)(x)
    assert_untouched(classifier2d, training=True, grads=grads)


def test_a_budget_checks_the_forwards_of_its_own_thread_only():
    net, outputs = torch.nn.Linear(2, 2), []
    with Deadline(0.0, "spent").watching(net):
        other = threading.Thread(target=lambda: outputs.append(net(torch.ones(1, 2))))  # another call's forwards
        other.start()
        other.join()
        with pytest.raises(MethodTimeout, match="spent: time budget of 0 s"):
            net(torch.ones(1, 2))
    assert len(outputs) == 1 and not net._forward_pre_hooks


def assert_untouched(network: torch.nn.Module, training: bool, grads: list[bool], inplace: dict | None = None):
    """No hook on any module, nor a global one; mode, requires_grad and in-place flags as they were."""
    from torch.nn.modules import module as torch_module

    for name, module in network.named_modules():
        kinds = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks")
        hooks = {attr: getattr(module, attr) for attr in kinds if getattr(module, attr, None)}
        assert not hooks, f"module {name!r} keeps hooks {hooks}"
        assert module.training == training, f"module {name!r}: training={module.training}"
    for attr in ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
        assert not getattr(torch_module, attr, None), f"a global {attr} is left"
    assert [p.requires_grad for p in network.parameters()] == grads
    if inplace is not None:
        assert {n: m.inplace for n, m in network.named_modules() if hasattr(m, "inplace")} == inplace


GRID = 192  # classifier images: one forward of one image ≈ 9 ms on one core
STRIP = (48, 48)  # segmentation windows along a strip 48 voxels high: s windows for a strip 24 (s + 1) long


def labels(count: int) -> torch.Tensor:
    """``count`` features, interleaved over the classifier's image."""
    return (torch.arange(GRID * GRID) % count).view(1, 1, GRID, GRID)


def flat_references(count: int) -> torch.Tensor:
    """``count`` zero reference images, expanded (no memory)."""
    return torch.zeros(1, 1, GRID, GRID).expand(count, 1, GRID, GRID)


def image(batch: int = 1):
    return (batch, 1, GRID, GRID)


def strip(s: int):
    return (1, 1, STRIP[0], STRIP[1] // 2 * (s + 1))


#: method → (network, heavy scale S, s → (input shape, keywords)): the work grows linearly with s;
#: "classifier": a whole-image classifier (one window: no check between window batches can stop it),
#: "segmenter": a UNet through many windows (the methods that run one forward per window batch)
HEAVY = {
    "integrated_gradients": ("classifier", 500, lambda s: (image(), {"n_steps": 8 * s})),  # Gauss–Legendre, 4000 steps
    "internal_influence": ("classifier", 500, lambda s: (image(), {"n_steps": 8 * s})),
    "layer_conductance": ("classifier", 500, lambda s: (image(), {"n_steps": 8 * s})),
    "smoothgrad": ("classifier", 4000, lambda s: (image(), {"nt_samples": s})),
    "smoothgrad_sq": ("classifier", 4000, lambda s: (image(), {"nt_samples": s})),
    "vargrad": ("classifier", 4000, lambda s: (image(), {"nt_samples": s})),
    "guided_smoothgrad": ("classifier", 4000, lambda s: (image(), {"nt_samples": s})),
    "gradient_shap": ("classifier", 4000, lambda s: (image(), {"n_samples": s})),
    "layer_gradient_shap": ("classifier", 1500, lambda s: (image(), {"n_samples": s})),
    "deeplift_shap": ("classifier", 2000, lambda s: (image(), {"baselines": flat_references(s)})),
    "layer_deeplift_shap": ("classifier", 2000, lambda s: (image(), {"baselines": flat_references(s)})),
    "feature_ablation": ("classifier", 4000, lambda s: (image(), {"features": labels(s), "perturbations_per_eval": 1})),
    "feature_permutation": ("classifier", 2000, lambda s: (image(2), {"features": labels(s), "perturbations_per_eval": 1})),
    "shapley_value_sampling": ("classifier", 400, lambda s: (image(), {"features": labels(10), "n_samples": s,
                                                                       "perturbations_per_eval": 1})),
    "lime": ("classifier", 4000, lambda s: (image(), {"features": labels(10), "n_samples": 2 * s})),
    "kernel_shap": ("classifier", 4000, lambda s: (image(), {"features": labels(10), "n_samples": 2 * s})),
    "occlusion": ("classifier", 96, lambda s: ((1, 1, 2 * s, GRID), {"sliding_window_shapes": [2, 2], "strides": [2, 2],
                                                                      "perturbations_per_eval": 1})),
    "rise": ("classifier", 4000, lambda s: (image(), {"n_masks": s, "perturbations_per_eval": 1})),
    "extremal_perturbation": ("classifier", 4000, lambda s: (image(), {"steps": s})),
    "deepdream": ("classifier", 4000, lambda s: (image(), {"steps": s, "octaves": 1})),
    "feature_visualisation": ("classifier", 4000, lambda s: (image(), {"steps": s})),
    "layer_visualisation": ("classifier", 4000, lambda s: (image(), {"steps": s})),
    "inverted_representation": ("classifier", 2000, lambda s: (image(), {"steps": s})),
    **{method: ("segmenter", 9000, lambda s: (strip(s), {})) for method in (
        "saliency", "input_x_gradient", "guided_backprop", "deconvolution", "deeplift", "gradcam", "gradcam_pp",
        "guided_gradcam", "layer_activation", "layer_gradcam", "layer_gradient_x_activation", "linear_approx",
        "layer_deeplift", "guided_layer_activation", "lrp_epsilon", "lrp_alpha_beta", "excitation_backprop",
        "contrastive_excitation_backprop")},
    # its activation map is the layer's channels over the whole strip: the output layer's 3, not 64
    "score_cam": ("segmenter", 9000, lambda s: (strip(s), {"layer": "model.2"})),
}
SETTINGS = {"classifier": {}, "segmenter": {"roi_size": STRIP, "overlap": 0.5, "sw_batch_size": 2}}
KIND = {"classifier": "2d", "segmenter": "2d-seg"}  # the layer names of options_for
_NETWORKS: dict[str, tuple[torch.nn.Module, float]] = {}


def network(kind: str) -> tuple[torch.nn.Module, float]:
    """The test network of ``kind`` (nn.ReLU modules; the layer names of tests/test_methods_all.py)
    and a lower bound of one image's forward, in seconds: the fastest of several, per image at
    batch 1, 2, 4 or 8 — the forwards of a method cost at least that much per image."""
    if kind not in _NETWORKS:
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        if kind == "classifier":
            net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                      torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                      torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
            shape = image()[1:]
        else:
            net = UNet(2, 1, 3, (32, 64, 128), (2, 2), num_res_units=1, act="relu", norm="batch").eval()
            shape = (1, *STRIP)
        times = []
        with torch.no_grad():
            for batch in (1, 2, 4, 8):
                x = torch.rand(batch, *shape)
                for _ in range(5):
                    start = time.perf_counter()
                    net(x)
                    times.append((time.perf_counter() - start) / batch)
        _NETWORKS[kind] = (net, min(times))
    return _NETWORKS[kind]


def test_every_method_has_a_heavy_workload():
    assert sorted(HEAVY) == sorted(available_methods()), "give each registered method a heavy workload in HEAVY"


@pytest.mark.parametrize("method", sorted(HEAVY))
def test_a_one_second_budget_holds_for_every_method(method):
    kind, heavy, workload = HEAVY[method]
    net, per_image = network(kind)
    grads = [p.requires_grad for p in net.parameters()]
    inplace = {n: m.inplace for n, m in net.named_modules() if hasattr(m, "inplace")}

    def explainer(s: int, **extra) -> tuple[Explainer, torch.Tensor]:
        shape, keywords = workload(s)
        options = {**options_for(method, KIND[kind]), **keywords}
        torch.manual_seed(1)
        return Explainer(net, method, ClassScore(1), **SETTINGS[kind], **options, **extra), torch.rand(*shape)

    def images_of(s: int) -> int:
        """Run the workload of scale ``s`` with no budget: it works; the images it forwarded."""
        small, x_small = explainer(s)
        counter = Counter(net)
        try:
            attribution = small(x_small)
        finally:
            counter.remove()
        assert torch.isfinite(attribution).all() and attribution.shape[0] == x_small.shape[0]
        return counter.images

    # how heavy: the images forwarded grow linearly with the scale; each costs at least per_image
    one, two = images_of(1), images_of(2)
    assert two > one, f"{method}: the workload does not grow with its scale"
    heavy = max(heavy, math.ceil(1 + (30 / per_image - one) / (two - one)))  # at least 30 s on a faster machine too
    extrapolated = one + (two - one) * (heavy - 1)
    assert extrapolated * per_image >= 20, f"{method}: {extrapolated} images × {per_image * 1e3:.2f} ms is not heavy"

    heavy_explainer, x = explainer(heavy, timeout=1.0)
    longest, started = [0.0], []  # the longest forward of the call: "one forward" past the budget

    def ended(module, args, output):
        longest[0] = max(longest[0], time.perf_counter() - started[-1])

    handles = [net.register_forward_pre_hook(lambda module, args: started.append(time.perf_counter())),
               net.register_forward_hook(ended)]
    start = time.perf_counter()
    try:
        with pytest.raises(MethodTimeout, match=r"time budget of 1 s exceeded after \d+\.\d\d s"):
            heavy_explainer(x)
    finally:
        elapsed = time.perf_counter() - start
        for handle in handles:
            handle.remove()
    assert started, f"{method}: no forward ran"
    assert elapsed <= 1.0 + longest[0] + 1.0, f"{method}: stopped after {elapsed:.2f} s (longest forward {longest[0]:.3f} s)"
    assert_untouched(net, training=False, grads=grads, inplace=inplace)
    assert images_of(1) == one  # the next call, with no budget, works
    assert_untouched(net, training=False, grads=grads, inplace=inplace)
