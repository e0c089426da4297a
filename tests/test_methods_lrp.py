"""LRP: conservation (Σ relevance = target) on bias-free networks, whole image and through
sliding windows; LRP-0 = input × gradient (Captum); αβ against a hand computation; supported
and refused networks named exactly."""

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, DenseNet, SegResNet, UNet

from esegeta_monai import Explainer
from esegeta_monai.explainer import predict
from esegeta_monai.errors import MethodError
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore, MaskRegion

WINDOWS = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=3)


def bias_free_unet(res_units, act="relu", norm="batch", seed=0):
    """A 3D MONAI UNet without biases; batch norms with zero mean and shift, random scales."""
    torch.manual_seed(seed)
    net = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=res_units, act=act, norm=norm, bias=False)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def bias_free_classifier(positive_head=False):
    """2D CNN with max and adaptive average pooling; ``positive_head``: non-negative last weights."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3, bias=False),
    )
    if positive_head:
        net[-1].weight.data.abs_()
    return net.eval()


def scores(net, x, channel):
    with torch.no_grad():
        return net(x)[:, channel].reshape(len(x), -1).sum(1)


@pytest.mark.parametrize("res_units", [0, 2])
def test_epsilon_conserves_the_target_on_a_bias_free_3d_unet(res_units):
    net = bias_free_unet(res_units)
    torch.manual_seed(3)
    x = torch.rand(2, 1, 16, 16, 16)
    relevance = Explainer(net, "lrp_epsilon", ClassScore(1), epsilon=1e-9)(x)
    assert relevance.shape == x.shape
    torch.testing.assert_close(relevance.flatten(1).sum(1), scores(net, x, 1), rtol=2e-4, atol=1e-4)


def test_alpha_beta_conserves_on_positive_scores():
    """αβ (α=1, β=0) ignores biases; relevance is conserved wherever a neuron has positive
    contributions: on a ReLU UNet without residual units (whose residual convolutions have no
    activation), for targets over voxels with a positive score. (β > 0 loses β·R at neurons
    without negative contributions: checked by hand below, not conservative in general.)"""
    net = bias_free_unet(0)
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        positive = (net(x)[:, 1] > 0).float()
    relevance = Explainer(net, "lrp_alpha_beta", MaskRegion(1, mask=positive[:, None]))(x)
    target = (net(x)[:, 1] * positive).flatten(1).sum(1).detach()
    torch.testing.assert_close(relevance.flatten(1).sum(1), target, rtol=1e-4, atol=1e-4)


def test_classifier_with_pooling_conserves_under_both_rules():
    torch.manual_seed(5)
    x = torch.rand(2, 1, 16, 16)
    net = bias_free_classifier()
    eps = Explainer(net, "lrp_epsilon", ClassScore(2), epsilon=1e-9)(x)
    torch.testing.assert_close(eps.flatten(1).sum(1), scores(net, x, 2), rtol=1e-4, atol=1e-6)
    net = bias_free_classifier(positive_head=True)
    ab = Explainer(net, "lrp_alpha_beta", ClassScore(2))(x)
    torch.testing.assert_close(ab.flatten(1).sum(1), scores(net, x, 2), rtol=1e-4, atol=1e-6)


def test_epsilon_with_biases_loses_what_the_biases_absorb(classifier2d):
    torch.manual_seed(5)
    x = torch.rand(1, 1, 16, 16)
    relevance = Explainer(classifier2d, "lrp_epsilon", ClassScore(0))(x)
    assert not torch.isclose(relevance.sum(), scores(classifier2d, x, 0)[0], rtol=1e-3)


@pytest.mark.parametrize("res_units", [0, 1])
def test_lrp_zero_equals_captum_input_x_gradient(res_units):
    net = bias_free_unet(res_units)
    torch.manual_seed(6)
    x = torch.rand(2, 1, 16, 16, 16)
    ours = Explainer(net, "lrp_epsilon", ClassScore(1), epsilon=0.0)(x)
    reference = InputXGradient(lambda t: net(t)[:, 1].flatten(1).sum(1)).attribute(x.clone())
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    classifier = bias_free_classifier()
    ours = Explainer(classifier, "lrp_epsilon", ClassScore(1), epsilon=0.0)(x[:, :, 0])
    torch.testing.assert_close(ours, InputXGradient(classifier).attribute(x[:, :, 0].clone(), target=1), rtol=1e-4, atol=1e-7)


def test_through_sliding_windows_relevance_sums_to_the_global_target():
    """LRP-0 through windows: Σ relevance = the stitched target, and the map equals input ×
    gradient of the stitched prediction (the identity holds for the whole sliding-window model)."""
    net = bias_free_unet(1)
    torch.manual_seed(7)
    x = torch.rand(2, 1, 24, 20, 28)
    explainer = Explainer(net, "lrp_epsilon", ArgmaxRegion(1), epsilon=0.0, **WINDOWS)
    relevance = explainer(x)
    assert explainer.last_pass.windows_run > 2 * x.shape[0]
    y = predict(net, x, WINDOWS["roi_size"], 3, overlap=0.5, mode="gaussian")
    target = (ArgmaxRegion(1).weights(y) * y).flatten(1).sum(1)
    torch.testing.assert_close(relevance.flatten(1).sum(1), target, rtol=2e-4, atol=1e-4)
    ixg = Explainer(net, "input_x_gradient", ArgmaxRegion(1), **WINDOWS)(x)
    torch.testing.assert_close(relevance, ixg, rtol=1e-4, atol=1e-6)


def test_batch_of_two_equals_two_batches_of_one():
    """Instance statistics are per sample. LRP-ε with a tiny ε amplifies float32 rounding (which
    differs between batch sizes) at near-zero denominators: compared with ε = 0.01."""
    net = bias_free_unet(1, act="prelu", norm="instance")
    torch.manual_seed(8)
    x = torch.rand(2, 1, 16, 16, 16)
    for method, kwargs in (("lrp_epsilon", {"epsilon": 0.01}), ("lrp_alpha_beta", {})):
        explainer = Explainer(net, method, ClassScore(1), **kwargs)
        batched = explainer(x)
        torch.testing.assert_close(batched, torch.cat([explainer(x[:1]), explainer(x[1:])]), rtol=1e-4, atol=1e-5 * float(batched.abs().max()))


def test_amp_is_ignored_and_gives_the_float32_map():
    net = bias_free_unet(0)
    x = torch.rand(1, 1, 16, 16, 16)
    plain = Explainer(net, "lrp_epsilon", ClassScore(1))(x)
    torch.testing.assert_close(Explainer(net, "lrp_epsilon", ClassScore(1), amp=True)(x), plain)


def test_alpha_beta_equals_a_hand_computation():
    torch.manual_seed(9)
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 3, 3, bias=True), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(9, 2)).eval()
    x = torch.randn(1, 1, 5)
    ours = Explainer(net, "lrp_alpha_beta", ClassScore(1), alpha=2.0, beta=1.0)(x)[0, 0].numpy()
    w1, w2 = net[0].weight.detach().numpy()[:, 0], net[3].weight.detach().numpy()
    conv = np.zeros((9, 5))  # the convolution as a matrix: output (channel, position) x input position
    for c in range(3):
        for p in range(3):
            conv[3 * c + p, p : p + 3] = w1[c]
    xs = x[0, 0].numpy().astype(np.float64)
    hidden = np.maximum(conv @ xs + np.repeat(net[0].bias.detach().numpy(), 3), 0)
    top = np.zeros(2)
    top[1] = (w2 @ hidden + net[3].bias.detach().numpy())[1]

    def alpha_beta(weights, inputs, relevance, alpha=2.0, beta=1.0):
        contributions = weights * inputs[None, :]  # (out, in), biases ignored
        positive, negative = np.clip(contributions, 0, None), np.clip(contributions, None, 0)
        zp, zn = positive.sum(1, keepdims=True), negative.sum(1, keepdims=True)
        share_p = np.divide(positive, zp, out=np.zeros_like(positive), where=zp != 0)
        share_n = np.divide(negative, zn, out=np.zeros_like(negative), where=zn != 0)
        return ((alpha * share_p - beta * share_n) * relevance[:, None]).sum(0)

    expected = alpha_beta(conv, xs, alpha_beta(w2, hidden, top))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_densenet_is_supported_and_conserves():
    torch.manual_seed(10)
    net = DenseNet(2, 1, 3, init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2).eval()
    net.class_layers.out.bias.data.zero_()
    x = torch.rand(2, 1, 32, 32)
    relevance = Explainer(net, "lrp_epsilon", ClassScore(0), epsilon=1e-9)(x)
    torch.testing.assert_close(relevance.flatten(1).sum(1), scores(net, x, 0), rtol=1e-4, atol=1e-5)


class Doubler(torch.nn.Module):
    """A module whose forward is unknown to the rules (here an addition of two branches)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + self.conv(x)


REFUSED = {
    "BasicUNet": (lambda: BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), "BasicUNet"),
    "SegResNet": (lambda: SegResNet(2, 8, 1, 2), "SegResNet"),
    "custom forward": (lambda: Doubler(), "Doubler"),
    "SkipConnection mul": (lambda: torch.nn.Sequential(SkipConnection(torch.nn.Conv2d(1, 1, 3, padding=1), mode="mul"), torch.nn.Conv2d(1, 2, 1)), r"SkipConnection \(mode 'mul'\)"),
    "GELU": (lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU()), "GELU"),
    "Softmax": (lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Softmax(1)), "Softmax"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp_alpha_beta"])
def test_unsupported_networks_are_refused_naming_the_module(name, method):
    build, type_name = REFUSED[name]
    with pytest.raises(MethodError, match=rf"no relevance rule for {type_name}.*supported module types: .*Conv3d"):
        Explainer(build().eval(), method, ClassScore(1))(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("kwargs,message", [
    ({"alpha": 1.5, "beta": 0.0}, "alpha − beta must be 1"),
    ({"alpha": 2, "beta": -1}, "invalid beta"),
    ({"epsilon": -1.0}, "invalid epsilon"),
])
def test_bad_parameters_are_clear_errors(kwargs, message):
    method = "lrp_epsilon" if "epsilon" in kwargs else "lrp_alpha_beta"
    with pytest.raises(MethodError, match=message):
        Explainer(bias_free_classifier(), method, ClassScore(1), **kwargs)
