"""Layer DeepLiftShap / GradientShap, guided layer activation and layer-resolution maps:
parity with Captum (on the same draws, and in distribution), with MONAI's sliding-window
blending of the same window maps, and the geometry of maps on a layer's grid."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, LayerActivation, LayerDeepLiftShap, LayerGradCam, LayerGradientShap
from captum.attr._core.layer.layer_gradient_shap import LayerInputBaselineXGradient
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.methods.cam import upsample
from esegeta_monai.methods.shap import gradient_shap_draws
from esegeta_monai.core.targets import ClassScore, MaskRegion
from tests.test_methods_layer import CASES

WINDOWS = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=3)
EVERYWHERE = MaskRegion(1, box=[(0, 28), (0, 24), (0, 32)])  # every window takes part


class Ones(torch.nn.Module):
    """A layer whose map is constant: what a partition of unity must blend to a constant."""

    def forward(self, x):
        return torch.ones_like(x)


class Strided3d(torch.nn.Module):
    """A segmentation network of any input size whose layer ``act`` is on a grid of stride 2
    (size ``ceil(n / 2)``); ``constant=True`` makes that layer's map constant."""

    def __init__(self, constant: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.down = torch.nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.act = Ones() if constant else torch.nn.ReLU()
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(F.interpolate(self.act(self.down(x)), size=x.shape[2:], mode="trilinear"))


def sum_of_layer(network, layer, channel=None):
    """``x -> Σ layer(x)`` (one channel or all) per sample, written independently of the package."""

    def objective(x):
        captured = []
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            network(x)
        finally:
            handle.remove()
        activation = captured[-1] if channel is None else captured[-1][:, channel]
        return activation.flatten(1).sum(1)

    return objective


class Wrapped(torch.nn.Module):
    def __init__(self, network, objective):
        super().__init__()
        self.network, self.objective = network, objective

    def forward(self, x):
        return self.objective(x)


# -- layer DeepLiftShap -------------------------------------------------------------------
@pytest.mark.parametrize("multiply_by_inputs, resolution", [(True, "input"), (False, "layer")])
def test_layer_deeplift_shap_equals_captum_whole_image(classifier2d, multiply_by_inputs, resolution):
    torch.manual_seed(4)
    x, references = torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16)
    ours = Explainer(classifier2d, "layer_deeplift_shap", ClassScore(2), layer="3", baselines=references,
                     multiply_by_inputs=multiply_by_inputs, resolution=resolution)(x)
    captum = LayerDeepLiftShap(classifier2d, classifier2d[3], multiply_by_inputs=multiply_by_inputs)
    layer_map = captum.attribute(x.clone(), baselines=references, target=2).sum(1, keepdim=True)
    torch.testing.assert_close(ours, upsample(layer_map, x.shape[2:]) if resolution == "input" else layer_map, rtol=1e-5, atol=1e-7)


# -- layer GradientShap -------------------------------------------------------------------
def same_draws(x, references, n_samples, stdevs, seed):
    """Our draws, stacked draw-major: noisy inputs, references and α, each ``(n·B, ...)``."""
    draws = list(gradient_shap_draws(x.shape[0], len(references), n_samples, x.shape, stdevs, seed))
    noisy = torch.cat([x + noise for _, _, noise in draws])
    base = torch.cat([references[index] for index, _, _ in draws])
    return noisy, base, torch.cat([alpha for _, alpha, _ in draws])


def captum_terms(network, layer, noisy, base, alpha, target, monkeypatch, multiply_by_inputs=True):
    """Captum's per-draw LayerGradientShap term (LayerInputBaselineXGradient, which draws α
    with numpy) with our α imposed."""
    monkeypatch.setattr(np.random, "uniform", lambda *args, **kwargs: alpha.double().numpy())
    term = LayerInputBaselineXGradient(network, layer, multiply_by_inputs=multiply_by_inputs)
    return term.attribute(noisy, base, target=target)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_layer_gradient_shap_equals_captum_terms_on_the_same_draws(classifier2d, monkeypatch, multiply_by_inputs):
    torch.manual_seed(5)
    x, references = torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16)
    options = dict(n_samples=4, stdevs=0.1, baselines=references, seed=3, multiply_by_inputs=multiply_by_inputs)
    ours = Explainer(classifier2d, "layer_gradient_shap", ClassScore(1), layer="3", reduce="none", resolution="layer", **options)(x)
    terms = captum_terms(classifier2d, classifier2d[3], *same_draws(x, references, 4, 0.1, 3), 1, monkeypatch, multiply_by_inputs)
    reference = terms.view(4, *ours.shape).mean(0)
    assert ours.shape == (2, 8, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-9)


def test_layer_gradient_shap_draws_follow_captums_distribution(classifier2d, monkeypatch):
    """Our seeded draws and Captum's own LayerGradientShap estimate the same expectation:
    on the map's four quadrant sums, |our mean − Captum's mean| ≤ 4.5 standard errors of the
    difference (√2·sd/√n, sd from our per-draw terms; seen ≤ 2.9 over 5 Captum seeds, while
    multiply_by_inputs=False, a wrong semantics, is ~600 standard errors away)."""
    torch.manual_seed(5)
    x, references, n = torch.rand(1, 1, 16, 16), torch.rand(3, 1, 16, 16), 256
    layer = classifier2d[3]
    terms = captum_terms(classifier2d, layer, *same_draws(x, references, n, 0.1, 7), 1, monkeypatch).sum(1)
    monkeypatch.undo()
    np.random.seed(0)
    torch.manual_seed(0)
    captum = LayerGradientShap(classifier2d, layer).attribute(x, baselines=references, n_samples=n, stdevs=0.1, target=1).sum(1)

    def quadrants(maps):
        return torch.stack([maps[:, i : i + 4, j : j + 4].sum((1, 2)) for i in (0, 4) for j in (0, 4)], 1)

    ours = quadrants(terms)
    z = (ours.mean(0) - quadrants(captum)[0]).abs() / (2**0.5 * ours.std(0) / n**0.5)
    assert float(z.max()) <= 4.5, z


# -- guided layer activation --------------------------------------------------------------
@pytest.mark.parametrize("channel", [None, 5])
def test_guided_layer_activation_equals_captum_guided_backprop_of_the_layer_sum(classifier2d, channel):
    torch.manual_seed(6)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "guided_layer_activation", ClassScore(0), layer="3", channel=channel)(x)
    truncated = classifier2d[:4]  # the network up to the layer: an objective independent of hooks
    objective = (lambda y: truncated(y).flatten(1).sum(1)) if channel is None else (lambda y: truncated(y)[:, channel].flatten(1).sum(1))
    reference = GuidedBackprop(Wrapped(truncated, objective)).attribute(x.clone())
    assert float(reference.abs().max()) > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)


def test_guided_layer_activation_through_windows_equals_monai_blending_and_splits_by_batch(unet3d, volume):
    layer = unet3d.model[1].submodule[0]
    explainer = Explainer(unet3d, "guided_layer_activation", EVERYWHERE, layer="model.1.submodule.0", channel=3, **WINDOWS)
    ours = explainer(volume)
    guided = GuidedBackprop(Wrapped(unet3d, sum_of_layer(unet3d, layer, channel=3)))

    def window_map(window):
        with torch.enable_grad():
            return guided.attribute(window.clone().requires_grad_(True)).detach()

    reference = sliding_window_inference(volume, (16, 16, 16), 3, window_map, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(ours, torch.cat([explainer(volume[:1]), explainer(volume[1:])]), rtol=1e-5, atol=1e-9)


def test_guided_layer_activation_checks_the_channel(classifier2d):
    with pytest.raises(MethodError, match="channel=8 is out of range"):
        Explainer(classifier2d, "guided_layer_activation", ClassScore(0), layer="3", channel=8)(torch.rand(1, 1, 16, 16))
    with pytest.raises(MethodError, match="invalid channel"):
        Explainer(classifier2d, "guided_layer_activation", ClassScore(0), layer="3", channel=-1)


# -- layer resolution ---------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(CASES))
def test_whole_image_layer_resolution_equals_captums_raw_layer_map(classifier2d, method):
    captum_class, ours_kwargs, captum_kwargs = CASES[method]
    torch.manual_seed(6)
    x = torch.rand(2, 1, 16, 16)
    explainer = Explainer(classifier2d, method, ClassScore(1), layer="3", resolution="layer", **ours_kwargs)
    reference = captum_class(classifier2d, classifier2d[3]).attribute(x.clone(), **captum_kwargs).sum(1, keepdim=True)
    torch.testing.assert_close(explainer(x), reference, rtol=1e-4, atol=1e-6)
    assert explainer.last_scale == (2.0, 2.0)


def test_gradcam_at_layer_resolution_equals_captum_layer_gradcam(classifier2d):
    torch.manual_seed(6)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "gradcam", ClassScore(2), layer="3", resolution="layer")(x)
    reference = LayerGradCam(classifier2d, classifier2d[3]).attribute(x.clone(), target=2, relu_attributions=True)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_one_covering_window_equals_whole_image_with_any_factor():
    torch.manual_seed(2)
    x = torch.rand(1, 1, 15, 12, 10)  # the layer's grid is 8 × 6 × 5: factor 15/8 on the first axis
    net, target = Strided3d(), MaskRegion(1, box=[(2, 9), (0, 12), (3, 10)])
    whole = Explainer(net, "gradcam", target, layer="act", resolution="layer")
    covering = Explainer(net, "gradcam", target, layer="act", resolution="layer", roi_size=x.shape[2:])
    maps = whole(x)
    assert maps.shape == (1, 1, 8, 6, 5) and whole.last_scale == (15 / 8, 2.0, 2.0) and float(maps.max()) > 0
    torch.testing.assert_close(covering(x), maps)


def test_layer_resolution_through_windows_equals_monai_blending(unet3d, volume):
    """Windows along two axes, MONAI's padding along the first (28 → 32): the blend on the
    layer's grid is MONAI's blend of the same window maps (its importance map resized
    nearest-exact)."""
    windows = dict(roi_size=(32, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=4)
    explainer = Explainer(unet3d, "layer_activation", EVERYWHERE, layer="model.0", resolution="layer", **windows)
    ours = explainer(volume)
    activation = LayerActivation(unet3d, unet3d.model[0])
    reference = sliding_window_inference(volume, (32, 16, 16), 4, lambda w: activation.attribute(w).sum(1, keepdim=True),
                                         overlap=0.5, mode="gaussian")
    assert ours.shape == (2, 1, 14, 12, 16) and explainer.last_scale == (2.0, 2.0, 2.0)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_a_constant_layer_map_blends_to_a_constant():
    explainer = Explainer(Strided3d(constant=True), "layer_activation", EVERYWHERE, layer="act", reduce="mean", resolution="layer", **WINDOWS)
    maps = explainer(torch.rand(1, 1, 28, 24, 32))
    assert len(explainer.last_pass.plan.slices) == 18
    torch.testing.assert_close(maps, torch.ones(1, 1, 14, 12, 16), rtol=0, atol=1e-6)


@pytest.mark.parametrize("windows, message", [
    (dict(roi_size=(15, 16, 16), overlap=0.5), r"does not divide the window \(15, 16, 16\)"),
    (dict(roi_size=(16, 16, 16), overlap=0.3), r"factor 2 on axis 0; offsets \[0, 11, 12\]"),
])
def test_layer_resolution_refuses_windows_off_the_layer_grid(windows, message):
    explainer = Explainer(Strided3d(), "gradcam", EVERYWHERE, layer="act", resolution="layer", **windows)
    with pytest.raises(MethodError, match=message):
        explainer(torch.rand(1, 1, 28, 24, 32))


def test_metatensor_maps_at_layer_resolution_carry_their_own_affine():
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([10.0, -5.0, 2.0])
    image = MetaTensor(torch.rand(1, 1, 16, 12, 8), affine=affine)
    image.applied_operations = [{"class": "Spacing"}]
    net = Strided3d()
    coarse = Explainer(net, "gradcam", "class:1", layer="act", resolution="layer")(image)
    fine = Explainer(net, "gradcam", "class:1", layer="act")(image)
    assert coarse.shape == (1, 1, 8, 6, 4) and coarse.applied_operations == []
    torch.testing.assert_close(fine.affine, affine)
    assert fine.applied_operations == image.applied_operations
    # coarse voxel (i, j, k) sits at the centre of its 2×2×2 block of input voxels
    index = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    block = torch.stack(torch.meshgrid(*[2 * v + torch.arange(2.0, dtype=torch.float64) for v in index], indexing="ij"), -1).view(-1, 3)
    world_block = (affine[:3, :3] @ block.T).T + affine[:3, 3]
    world_coarse = coarse.affine[:3, :3] @ index + coarse.affine[:3, 3]
    torch.testing.assert_close(world_coarse, world_block.mean(0))
    torch.testing.assert_close(coarse.affine[:3, :3], affine[:3, :3] * 2)
