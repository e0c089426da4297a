"""Noise-tunnel variants and SHAP methods: equal to Captum / autograd on the same draws,
exact through windows, and complete where the method is."""

import pytest
import torch
from captum.attr import DeepLiftShap, GuidedBackprop, Saliency
from monai.inferers import sliding_window_inference

from esegeta_monai import Explainer
from esegeta_monai.methods.noise import draw_noise
from esegeta_monai.methods.shap import baseline_set, gradient_shap_draws
from esegeta_monai.core.targets import ClassScore, MaskRegion

ROI = (16, 16, 16)
WINDOWS = dict(roi_size=ROI, overlap=0.5, mode="gaussian", sw_batch_size=3)
BOX = [(3, 20), (0, 24), (8, 30)]


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def windowed_value(net, target, x):
    weights = target.weights(torch.zeros(x.shape[0], 3, *x.shape[2:]))

    def value(inputs):
        y = sliding_window_inference(inputs, ROI, 3, net, overlap=0.5, mode="gaussian")
        return (y * weights[:1]).flatten(1).sum(1)

    return value


@pytest.mark.parametrize("method, reduce", [
    ("smoothgrad_sq", lambda s: (s**2).mean(0)),
    ("vargrad", lambda s: (s**2).mean(0) - s.mean(0) ** 2),
])
def test_noise_tunnel_variants_equal_captum_saliency_on_the_same_noise(classifier2d, method, reduce):
    torch.manual_seed(2)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, method, ClassScore(1), nt_samples=5, stdevs=0.3, seed=3)(x)
    samples = torch.stack([Saliency(classifier2d).attribute(x + n, target=1) for n in draw_noise(x.shape, 0.3, 5, 3)])
    torch.testing.assert_close(ours, reduce(samples), rtol=1e-5, atol=1e-8)


def test_guided_smoothgrad_equals_captum_guided_backprop_on_the_same_noise(classifier2d):
    torch.manual_seed(2)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "guided_smoothgrad", ClassScore(0), nt_samples=3, stdevs=0.2, seed=1)(x)
    reference = torch.stack([GuidedBackprop(classifier2d).attribute(x + n, target=0) for n in draw_noise(x.shape, 0.2, 3, 1)]).mean(0)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)


def test_deeplift_shap_equals_captum_whole_image(classifier2d):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16)
    references = torch.rand(3, 1, 16, 16)
    ours = Explainer(classifier2d, "deeplift_shap", ClassScore(2), baselines=references)(x)
    reference = DeepLiftShap(classifier2d).attribute(x.clone(), baselines=references, target=2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_gradient_shap_through_windows_equals_autograd_on_the_same_draws(unet3d, volume):
    x = volume[:1]
    target = MaskRegion(1, box=BOX)
    ours = Explainer(unet3d, "gradient_shap", target, n_samples=3, stdevs=0.05, baselines=[0.0, 0.5], seed=9, **WINDOWS)(x)
    value = windowed_value(unet3d, target, x)
    references = baseline_set([0.0, 0.5], x)
    total = torch.zeros_like(x)
    for index, alpha, noise in gradient_shap_draws(1, 2, 3, x.shape, 0.05, 9):
        noisy, base = x + noise, references[index, 0]
        point = (base + alpha.view(-1, 1, 1, 1, 1) * (noisy - base)).requires_grad_(True)
        total += torch.autograd.grad(value(point).sum(), point)[0] * (noisy - base)
    assert relative_error(ours, total / 3) <= 1e-5


@pytest.mark.parametrize("method, baselines", [("deeplift", 0.0), ("deeplift_shap", [0.0, 0.3])])
def test_deeplift_is_complete_through_windows(unet3d, volume, method, baselines):
    """Σ attributions = T(x) − mean over baselines of T(b), through sliding windows (ReLU UNet)."""
    x = volume[:1]
    target = MaskRegion(1, box=BOX)
    attribution = Explainer(unet3d, method, target, baselines=baselines, **WINDOWS)(x)
    value = windowed_value(unet3d, target, x)
    with torch.no_grad():
        references = [baselines] if isinstance(baselines, float) else baselines
        expected = value(x) - torch.stack([value(torch.full_like(x, b)) for b in references]).mean(0)
    assert abs(float(attribution.sum() - expected.sum())) <= 1e-3 * abs(float(expected.sum()))
