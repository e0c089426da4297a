"""Excitation backprop and its contrastive variant against a hand computation (numpy) and their
probability mass through sliding windows; linear_approx against Captum. TorchRay's maps of both
(and of linear_approx): tests/test_torchray_parity.py."""

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation

from esegeta_monai import Explainer
from esegeta_monai.explainer import predict
from esegeta_monai.errors import MethodError
from esegeta_monai.methods.cam import upsample
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

WINDOWS = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=3)


@pytest.fixture
def net1d():
    """Conv1d(1→3, k=3) → ReLU → Flatten → Linear(9→2): small enough to compute by hand."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(9, 2)).eval()


def dense(net):
    """The network as numpy matrices: the convolution unrolled (9×5), its bias, the linear layer."""
    w1 = net[0].weight.detach().double().numpy()[:, 0]
    conv = np.zeros((9, 5))
    for c in range(3):
        for p in range(3):
            conv[3 * c + p, p : p + 3] = w1[c]
    return conv, np.repeat(net[0].bias.detach().double().numpy(), 3), net[3].weight.detach().double().numpy()


def eb(weights, inputs, signal):
    """``P_in = x ⊙ W⁺ᵀ (P / W⁺x)`` (0 where W⁺x = 0)."""
    positive = np.clip(weights, 0, None)
    z = positive @ inputs
    return inputs * (positive.T @ np.divide(signal, z, out=np.zeros_like(z), where=z != 0))


def test_excitation_backprop_equals_a_hand_computation(net1d):
    x = torch.rand(1, 1, 5) + 0.1
    conv, bias, w2 = dense(net1d)
    xs = x[0, 0].double().numpy()
    hidden = np.maximum(conv @ xs + bias, 0)
    top = np.array([0.0, 1.0])
    expected = eb(conv, xs, eb(w2, hidden, top))
    ours = Explainer(net1d, "excitation_backprop", ClassScore(1))(x)
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert abs(expected.sum() - 1) < 1e-9  # a probability distribution over the input


def test_contrastive_excitation_backprop_equals_a_hand_computation(net1d):
    x = torch.rand(1, 1, 5) + 0.1
    conv, bias, w2 = dense(net1d)
    xs = x[0, 0].double().numpy()
    pre = conv @ xs + bias
    hidden = np.maximum(pre, 0)
    top = np.array([0.0, 1.0])
    difference = eb(w2, hidden, top) - eb(-w2, hidden, top)  # at the contrast layer (ReLU output)
    expected = np.clip(eb(conv, xs, difference * (pre > 0)), 0, None)  # ReLU: its gradient
    ours = Explainer(net1d, "contrastive_excitation_backprop", ClassScore(1), contrast_layer="1")(x)
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert (expected > 0).any() and (expected == 0).any()


def test_excitation_mass_is_conserved_through_sliding_windows(unet3d, volume):
    """EB ignores biases and its rules conserve the signal: Σ map = Σ of the target's weights."""
    volume = volume[:, :, :24, :20, :28]
    explainer = Explainer(unet3d, "excitation_backprop", ArgmaxRegion(1), **WINDOWS)
    maps = explainer(volume)
    assert explainer.last_pass.windows_run > 2 * volume.shape[0]
    region = ArgmaxRegion(1).weights(predict(unet3d, volume, WINDOWS["roi_size"], 3, overlap=0.5, mode="gaussian"))
    torch.testing.assert_close(maps.flatten(1).sum(1), region.flatten(1).sum(1), rtol=1e-4, atol=1e-3)
    covering = Explainer(unet3d, "excitation_backprop", ArgmaxRegion(1), roi_size=volume.shape[2:])(volume)
    torch.testing.assert_close(covering, Explainer(unet3d, "excitation_backprop", ArgmaxRegion(1))(volume))


def test_layer_maps_are_blended_and_batch_of_two_equals_two_of_one():
    """On a UNet without residual units (weighted layers see non-negative inputs, as EB assumes;
    the un-activated residual branches of MONAI's ResidualUnit make W⁺x ≈ 0 possible)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    unet3d = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=0, act="relu", norm="batch").eval()
    torch.manual_seed(2)
    x = torch.rand(2, 1, 16, 16, 16)
    for method, kwargs in (("excitation_backprop", {}), ("excitation_backprop", {"layer": "model.1.submodule.0"}),
                           ("contrastive_excitation_backprop", {"layer": "model.0", "contrast_layer": "model.1"})):
        explainer = Explainer(unet3d, method, ClassScore(1), **kwargs)
        batched = explainer(x)
        assert batched.shape == (2, 1, 16, 16, 16) and float(batched.abs().sum()) > 0 and torch.isfinite(batched).all()
        separate = torch.cat([explainer(x[:1]), explainer(x[1:])])
        torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-6 * float(batched.abs().max()))


def test_linear_approx_equals_captum_gradient_x_activation_summed(classifier2d):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "linear_approx", ClassScore(1), layer="3")(x)
    layer_map = LayerGradientXActivation(classifier2d, classifier2d[3]).attribute(x.clone(), target=1)
    torch.testing.assert_close(ours, upsample(layer_map.sum(1, keepdim=True), x.shape[2:]), rtol=1e-4, atol=1e-7)


def test_clear_errors(unet3d, classifier2d):
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(MethodError, match="needs contrast_layer"):
        Explainer(classifier2d, "contrastive_excitation_backprop", ClassScore(1))
    with pytest.raises(MethodError, match="does not lie below contrast_layer"):
        Explainer(classifier2d, "contrastive_excitation_backprop", ClassScore(1), layer="4", contrast_layer="1")(x)
    with pytest.raises(MethodError, match="must be a convolution or linear layer"):
        Explainer(classifier2d, "contrastive_excitation_backprop", ClassScore(1), contrast_layer="4", classifier_layer="5")(x)
    with pytest.raises(MethodError, match="no relevance rule for GELU"):
        Explainer(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU()), "excitation_backprop", ClassScore(1))(x)
    with pytest.raises(MethodError, match="close matches"):
        Explainer(unet3d, "excitation_backprop", ClassScore(1), layer="model.1.submodule.O")(torch.rand(1, 1, 16, 16, 16))
