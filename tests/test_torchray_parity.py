"""TorchRay (PyPI ``torchray`` 1.0.0.2, CC BY-NC 4.0: optional, the ``torchray`` extra) as a
reference for each of its attribution methods, in 2D.

Gradient, guided backprop, deconvnet, Grad-CAM, linear approximation, excitation backprop and
its contrastive variant must equal TorchRay's maps (float32 rounding), on a classifier and, for
the backpropagation methods, through sliding windows (TorchRay applied to a module that runs
MONAI's ``sliding_window_inference``, the target's mask held fixed). RISE must equal TorchRay's
estimator when both get the same masks, and the two mask generators must agree in distribution;
extremal perturbation (ours is a simplified variant) must find the same planted region as
TorchRay's.

TorchRay's ``excitation_backprop`` module imports ``torchvision.models.resnet`` for its ResNet
patch only (unused here); torchvision built for another torch does not import, so a stub
stands in while TorchRay imports. Without the package the tests skip, and fail where
``ESEGETA_REQUIRE_TORCHRAY=1`` (CI: ``.ci/run``); a TorchRay module that does not import on
this torch skips its tests with the import error.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore
from esegeta_monai.methods.rise import rise_masks

MODULES = ("gradient", "guided_backprop", "deconvnet", "grad_cam", "linear_approx", "excitation_backprop", "rise", "extremal_perturbation")
WINDOWS = dict(roi_size=(16, 16), overlap=0.5, mode="gaussian", sw_batch_size=2)


def _import_torchray() -> dict:
    """TorchRay's attribution modules by name (or the reason one did not import)."""
    try:
        importlib.import_module("torchray")
    except ImportError as error:
        reason = f"TorchRay is not installed ({error}): pip install --no-deps torchray==1.0.0.2 (CC BY-NC 4.0)"
        if os.environ.get("ESEGETA_REQUIRE_TORCHRAY") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        try:
            importlib.import_module("torchvision.models.resnet")
        except Exception:  # absent, or built for another torch: a stub for excitation_backprop's import
            stub = types.ModuleType("torchvision.models.resnet")
            stub.ResNet = stub.Bottleneck = stub.BasicBlock = type("Unused", (), {})
            for name, module in (("torchvision", types.ModuleType("torchvision")),
                                 ("torchvision.models", types.ModuleType("torchvision.models")), ("torchvision.models.resnet", stub)):
                patch.setitem(sys.modules, name, module)
        modules = {}
        for name in MODULES:
            try:
                modules[name] = importlib.import_module(f"torchray.attribution.{name}")
            except Exception as error:  # noqa: BLE001 - the reason is the skip message
                modules[name] = f"torchray.attribution.{name} does not import on torch {torch.__version__}: {type(error).__name__}: {error}"
    return modules


@pytest.fixture(scope="module")
def torchray():
    """``torchray(name)``: the module, or a skip that says why it did not import."""
    modules = _import_torchray()

    def get(name):
        if isinstance(modules[name], str):
            pytest.skip(modules[name])
        return modules[name]

    return get


def identity(tensor):
    """TorchRay's ``gradient_to_saliency`` that keeps the raw (signed, per-channel) gradient."""
    return tensor.grad.clone()


def assert_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float32 rounding: relative 1e-5, or 1e-6 of the map's largest value (the order
    of the sums differs, e.g. images one at a time against a batch)."""
    theirs = theirs.detach()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))


@pytest.fixture
def classifier():
    """Conv → ReLU → max-pool → conv → ReLU → average-pool → linear, 3 input channels, 3 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    ).eval()


@pytest.fixture
def image():
    torch.manual_seed(3)
    return torch.rand(2, 3, 16, 16)


def test_gradient_equals_torchray(torchray, classifier, image):
    """TorchRay's map is max_c |∂T/∂x_c|; ours keeps the channels (``abs`` or signed)."""
    gradient = torchray("gradient").gradient
    ours = Explainer(classifier, "saliency", ClassScore(2))(image)
    assert_equal(ours.amax(1, keepdim=True), gradient(classifier, image.clone(), 2))
    signed = Explainer(classifier, "saliency", ClassScore(2), abs=False)(image)
    assert_equal(signed, gradient(classifier, image.clone(), 2, gradient_to_saliency=identity))
    assert (signed < 0).any()


@pytest.mark.parametrize("ours, module, function", [("guided_backprop", "guided_backprop", "guided_backprop"),
                                                    ("deconvolution", "deconvnet", "deconvnet")])
def test_relu_rule_methods_equal_torchray(torchray, classifier, image, ours, module, function):
    """TorchRay patches ``torch.relu`` with its ReLU rule; Captum hooks ``nn.ReLU``: the same map."""
    theirs = getattr(torchray(module), function)
    mine = Explainer(classifier, ours, ClassScore(1))(image)
    assert_equal(mine, theirs(classifier, image.clone(), 1, gradient_to_saliency=identity))
    assert_equal(mine.abs().amax(1, keepdim=True), theirs(classifier, image.clone(), 1))
    plain = Explainer(classifier, "saliency", ClassScore(1), abs=False)(image)
    assert float((mine - plain).abs().max()) > 1e-3 * float(plain.abs().max())  # the rule changed the map


@pytest.mark.parametrize("layer", ["0", "1", "2", "3", "4"])
def test_gradcam_and_linear_approx_equal_torchray(torchray, classifier, image, layer):
    """On the input grid (TorchRay's ``resize=True``, bilinear) and on the layer's (``resize=False``)."""
    grad_cam, linear_approx = torchray("grad_cam").grad_cam, torchray("linear_approx").linear_approx
    for resolution, resize in (("input", True), ("layer", False)):
        ours = Explainer(classifier, "gradcam", ClassScore(2), layer=layer, resolution=resolution)(image)
        theirs = grad_cam(classifier, image.clone(), 2, saliency_layer=layer, resize=resize)
        assert_equal(ours, theirs)
        ours = Explainer(classifier, "linear_approx", ClassScore(2), layer=layer, resolution=resolution)(image)
        theirs = linear_approx(classifier, image.clone(), 2, saliency_layer=layer, resize=resize)
        assert_equal(ours, theirs)
        assert float(theirs.detach().abs().max()) > 0


def test_excitation_backprop_equals_torchray(torchray, classifier, image):
    """At the input (TorchRay sums the channels) and at every layer; the contrastive variant for
    each pair of a layer below a contrast layer."""
    excitation = torchray("excitation_backprop")
    ours = Explainer(classifier, "excitation_backprop", ClassScore(2))(image)
    assert_equal(ours.sum(1, keepdim=True), excitation.excitation_backprop(classifier, image.clone(), 2))
    for layer in ("0", "1", "2", "3", "4"):
        ours = Explainer(classifier, "excitation_backprop", ClassScore(2), layer=layer)(image)
        theirs = excitation.excitation_backprop(classifier, image.clone(), 2, saliency_layer=layer, resize=True)
        assert_equal(ours, theirs)
    for layer, contrast in (("0", "3"), ("1", "4"), ("2", "4"), ("3", "4"), ("3", "5")):
        ours = Explainer(classifier, "contrastive_excitation_backprop", ClassScore(2), layer=layer, contrast_layer=contrast)(image)
        theirs = excitation.contrastive_excitation_backprop(classifier, image.clone(), 2, saliency_layer=layer, contrast_layer=contrast, resize=True)
        assert_equal(ours, theirs)
        assert float(theirs.max()) > 0 and float(theirs.min()) == 0  # clamped at 0, not empty


class Stitched(torch.nn.Module):
    """The network through MONAI's ``sliding_window_inference``, as one module for TorchRay."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return sliding_window_inference(x, WINDOWS["roi_size"], WINDOWS["sw_batch_size"], self.network, overlap=0.5, mode="gaussian")


def region_weights(network, x):
    """``ArgmaxRegion(1)``'s mask from the stitched prediction: TorchRay's tensor target."""
    with torch.no_grad():
        return ArgmaxRegion(1).weights(Stitched(network)(x))


@pytest.mark.parametrize("ours, options, module, function", [("saliency", {"abs": False}, "gradient", "gradient"),
                                                             ("guided_backprop", {}, "guided_backprop", "guided_backprop"),
                                                             ("deconvolution", {}, "deconvnet", "deconvnet")])
def test_segmentation_through_windows_equals_torchray(torchray, ours, options, module, function):
    """A 2D MONAI UNet on an image larger than the window: our exact window engine equals TorchRay
    applied to the whole sliding-window inference."""
    torch.manual_seed(0)
    network = UNet(2, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, act="relu", norm="batch").eval()
    torch.manual_seed(1)
    x = torch.rand(2, 1, 24, 20)
    weights = region_weights(network, x)
    assert 0 < float(weights[:, 1].mean()) < 1  # a region, not the whole image
    explainer = Explainer(network, ours, ArgmaxRegion(1), **WINDOWS, **options)
    mine = explainer(x)
    assert explainer.last_pass.windows_run > 2 * x.shape[0]
    theirs = getattr(torchray(module), function)(Stitched(network), x.clone(), weights, gradient_to_saliency=identity)
    assert_equal(mine, theirs)


def test_segmentation_excitation_backprop_equals_torchray(torchray):
    """Through windows at the input, and on the whole image at a layer and contrastive, on a plain
    convolutional network: TorchRay's EB patches convolution, linear, average-pool and batch-norm
    functions only, so on MONAI's UNet (transposed convolutions, skip concatenations) its map is
    not EB (it does not keep the target's mass) and no reference."""
    excitation = torchray("excitation_backprop")
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AvgPool2d(3, 1, 1), torch.nn.Conv2d(6, 3, 1)).eval()
    torch.manual_seed(1)
    x = torch.rand(2, 1, 24, 20)
    weights = region_weights(network, x)
    ours = Explainer(network, "excitation_backprop", ArgmaxRegion(1), **WINDOWS)(x)
    theirs = excitation.excitation_backprop(Stitched(network), x.clone(), weights, gradient_to_saliency=identity)
    assert_equal(ours, theirs)
    torch.testing.assert_close(theirs.flatten(1).sum(1), weights.flatten(1).sum(1))  # EB keeps the target's mass
    small = x[..., :16, :16]
    with torch.no_grad():
        weights = ArgmaxRegion(1).weights(network(small))
    ours = Explainer(network, "excitation_backprop", ArgmaxRegion(1), layer="1")(small)
    assert_equal(ours, excitation.excitation_backprop(network, small.clone(), weights, saliency_layer="1", resize=True))
    ours = Explainer(network, "contrastive_excitation_backprop", ArgmaxRegion(1), layer="1", contrast_layer="3")(small)
    theirs = excitation.contrastive_excitation_backprop(network, small.clone(), weights, saliency_layer="1", contrast_layer="3", resize=True)
    assert_equal(ours, theirs)


def test_rise_equals_torchray_with_the_same_masks(torchray, classifier, image):
    """Given TorchRay our masks (``filter_masks``): TorchRay scores ``sigmoid(logit)`` of
    ``x ⊙ m`` and divides by ``N``; ours, with the sigmoid in the network, ``fill=0``, divides by
    ``N·p`` (the paper's normalisation)."""
    rise = torchray("rise").rise_class
    count, cells, p, seed = 40, 4, 0.5, 7
    masks = rise_masks(image.shape[2:], count, (cells, cells), p, torch.Generator().manual_seed(seed))
    scored = torch.nn.Sequential(classifier, torch.nn.Sigmoid())
    ours = Explainer(scored, "rise", ClassScore(2), n_masks=count, cells=cells, p=p, fill=0.0, seed=seed, perturbations_per_eval=16)(image)
    theirs = rise(classifier, image, target=[2, 2], num_masks=count, num_cells=cells, filter_masks=masks, batch_size=16, p=p)
    assert_equal(ours * p, theirs)


class Recorder(torch.nn.Module):
    """Keeps what it is given (on an image of ones: RISE's masks) and scores 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 1)


def autocorrelation(masks: torch.Tensor, lags: int) -> torch.Tensor:
    """The masks' normalised autocorrelation at lags ``0..lags-1`` along each spatial axis."""
    centred = masks - masks.mean()
    rows = [[(centred.narrow(axis, 0, centred.shape[axis] - k) * centred.narrow(axis, k, centred.shape[axis] - k)).mean()
             for axis in (2, 3)] for k in range(lags)]
    return torch.tensor(rows) / centred.pow(2).mean()


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_rise_masks_agree_with_torchray_in_distribution(torchray, p):
    """1000 masks of 32×32 from each generator: the same keep probability per pixel and the same
    spatial autocorrelation — for the same cell length. TorchRay stretches ``num_cells`` cells
    over ``size + size/num_cells`` pixels (5-pixel cells for 8 on 32); our ``cells`` are
    ``ceil(size/cells)`` pixels each (``cells=7``: 5 pixels, ``cells=8``: 4, which differs)."""
    rise = torchray("rise").rise
    recorder = Recorder()
    rise(recorder, torch.ones(1, 1, 32, 32), num_masks=1000, num_cells=8, p=p, batch_size=500, seed=0)
    theirs = torch.cat(recorder.seen[1:])  # the first call is the clean image
    assert theirs.shape == (1000, 1, 32, 32)
    ours = rise_masks((32, 32), 1000, (7, 7), p, torch.Generator().manual_seed(0))
    for masks in (theirs, ours):
        assert float((masks.mean(0) - p).abs().max()) < 0.06 and abs(float(masks.mean()) - p) < 0.01
    assert abs(float(ours.var() / theirs.var()) - 1) < 0.05
    reference = autocorrelation(theirs, 16)
    assert float((autocorrelation(ours, 16) - reference).abs().max()) < 0.05
    finer = rise_masks((32, 32), 1000, (8, 8), p, torch.Generator().manual_seed(0))
    assert float((autocorrelation(finer, 16) - reference).abs().max()) > 0.1  # the test tells cell lengths apart


class Planted(torch.nn.Module):
    """Class 0: the high-frequency energy (squared Laplacian) of the image inside a planted
    8×8 region, scaled to 1 on the clean image; class 1: 0."""

    def __init__(self, region, scale=1.0):
        super().__init__()
        self.laplacian = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.laplacian.weight.copy_(torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]).view(1, 1, 3, 3))
        self.register_buffer("region", region)
        self.scale = scale

    def forward(self, x):
        energy = (self.laplacian(x) ** 2 * self.region).flatten(1).sum(1, keepdim=True) / self.scale
        return torch.cat([energy, torch.zeros_like(energy)], 1)


def top(mask: torch.Tensor, k: int) -> torch.Tensor:
    flat = mask.flatten()
    return torch.zeros_like(flat).index_fill_(0, flat.topk(k).indices, 1.0).view_as(mask)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / ((a + b) > 0).sum())


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # TorchRay's mask generator
def test_extremal_perturbation_finds_the_planted_region_as_torchray(torchray):
    """Ours (coarse Gaussian-smoothed mask, Adam, blur of 5 voxels) is a simpler variant than
    TorchRay's (smooth-max mask generator, blur pyramid, SGD): the same game, not the same
    optimiser. With the area of the planted region, both masks' top pixels cover it, and the
    two masks correlate."""
    extremal = torchray("extremal_perturbation").extremal_perturbation
    region = torch.zeros(1, 1, 32, 32)
    region[..., 6:14, 18:26] = 1
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        network = Planted(region, float(Planted(region)(x)[0, 0])).eval()
    area, k = float(region.mean()), int(region.sum())
    ours = Explainer(network, "extremal_perturbation", ClassScore(0), area=area, steps=60, cells=16)(x)
    theirs, _ = extremal(network, x, 0, areas=[area], max_iter=120, step=2, sigma=3, jitter=False)
    assert iou(top(ours, k), region) > 0.6 and iou(top(theirs, k), region) > 0.6
    assert iou(top(ours, k), top(theirs, k)) > 0.6
    a, b = ours.flatten() - ours.mean(), theirs.flatten() - theirs.mean()
    assert float((a * b).sum() / (a.norm() * b.norm())) > 0.9
