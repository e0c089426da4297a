"""Visualisation methods (deepdream, feature/layer visualisation, inverted representation):
the objective rises, results are seeded, the inversion matches the representation, 2D/3D and
batches, the Fourier parameterisation, parameter errors, and the exact gradient through
sliding windows (checked against autograd through MONAI's own ``sliding_window_inference``)."""

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from scipy.stats import spearmanr

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.methods import visualisation
from esegeta_monai.methods.visualisation import FourierImage, LayerTerm, WindowObjective

METHODS = ["feature_visualisation", "layer_visualisation", "deepdream", "inverted_representation"]
WINDOWS = dict(roi_size=(16, 16, 16), overlap=0.5, sw_batch_size=3)
UNET_LAYER = "model.1.submodule.0"


def conv2d():
    """A small 2D fully-convolutional network; layer "2" (a convolution, before its ReLU) has 6 channels."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1, stride=2),
                               torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1)).eval()


def activation_of(network, layer, x):
    """``layer``'s output during ``network(x)``, written independently of the package."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        network(x)
    finally:
        handle.remove()
    return captured[-1]


def explain(network, method, x, **options):
    explainer = Explainer(network, method, "class:1", **options)
    return explainer(x), explainer.method.history


# -- the objective rises ----------------------------------------------------------------------
@pytest.mark.parametrize("method, options", [
    ("feature_visualisation", dict(param="fourier", channel=2, lr=0.05)),
    ("feature_visualisation", dict(param="pixel", channel=2, lr=0.05)),
    ("feature_visualisation", dict(param="fourier", neuron="centre", channel=4, lr=0.05, jitter=0, scale=0, rotate=0)),
    ("layer_visualisation", dict(channel=2)),
    ("deepdream", dict(channel=2, octaves=1)),
])
def test_objective_increases(method, options):
    torch.manual_seed(1)
    result, history = explain(conv2d(), method, torch.rand(2, 1, 24, 24), layer="2", steps=24, **options)
    assert history.shape == (25, 2)
    assert (history[-1] > history[0] + 0.05 * history[0].abs()).all(), f"{method}: {history[0].tolist()} → {history[-1].tolist()}"
    rising = [spearmanr(np.arange(len(history)), history[:, b].numpy()).statistic for b in range(2)]
    assert min(rising) > 0.6, f"{method}: history not mostly increasing (rank correlation with step {rising})"
    # the recorded last row is the objective of the returned image, recomputed here independently
    net = conv2d()
    expected = activation_of(net, net[2], result)[:, options["channel"]]
    expected = expected[:, 6, 6] if "neuron" in options else expected.flatten(1).mean(1)
    torch.testing.assert_close(history[-1], expected, rtol=1e-5, atol=1e-6)


# -- seeds --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_seed_makes_results_deterministic_and_different_seeds_differ(method):
    torch.manual_seed(2)
    x, net = torch.rand(1, 1, 16, 16), conv2d()
    first, _ = explain(net, method, x, layer="2", steps=3, seed=5)
    again, _ = explain(net, method, x, layer="2", steps=3, seed=5)
    other, _ = explain(net, method, x, layer="2", steps=3, seed=6)
    assert torch.equal(first, again)
    assert (first - other).abs().amax() > 1e-4 * first.abs().amax()


# -- inverted representation --------------------------------------------------------------------
def test_inverted_representation_matches_the_representation():
    """The normalised representation distance falls below half that of the seeded random start
    (computed here with our own hook on the returned images; steps=0 returns the start)."""
    torch.manual_seed(3)
    net, x = conv2d(), torch.rand(2, 1, 24, 24)
    target = activation_of(net, net[2], x).detach()

    def distance(image):
        return ((activation_of(net, net[2], image) - target).pow(2).flatten(1).sum(1) / target.pow(2).flatten(1).sum(1)).detach()

    start, start_history = explain(net, "inverted_representation", x, layer="2", steps=0)
    result, history = explain(net, "inverted_representation", x, layer="2", steps=60)
    initial, final = distance(start), distance(result)
    assert (initial > 0.1).all() and (final < 0.5 * initial).all(), f"{initial.tolist()} → {final.tolist()}"
    torch.testing.assert_close(-start_history[0], initial, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(-history[-1], final, rtol=1e-4, atol=1e-7)


# -- shapes, dimensions, batches ------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_3d_through_windows_batch_of_two_equals_two_of_one(unet3d, method):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 20, 14, 22)  # one axis smaller than the window: padded windows
    octaves = {"octaves": 2} if method == "deepdream" else {}  # a coarser octave: fewer windows, padded
    explainer = Explainer(unet3d, method, "argmax:1", layer=UNET_LAYER, steps=2, **octaves, **WINDOWS)
    batch = explainer(x)
    assert batch.shape == x.shape and torch.isfinite(batch).all()
    assert explainer.method.history.shape[1] == 2
    singles = torch.cat([explainer(x[:1]), explainer(x[1:])])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-6 * float(batch.abs().amax()))


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_2d_pixel_and_fourier_stay_in_the_input_range(param):
    torch.manual_seed(5)
    x = torch.rand(2, 1, 17, 20) * torch.tensor([1.0, 50.0]).view(2, 1, 1, 1)
    result, history = explain(conv2d(), "feature_visualisation", x, layer="2", channel=1, param=param, steps=6)
    assert result.shape == x.shape and torch.isfinite(result).all()
    low, high = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (result.flatten(1).amin(1) >= low).all() and (result.flatten(1).amax(1) <= high).all()
    assert result.flatten(1).std(1).gt(0).all() and (history[-1] > history[0]).all()


@pytest.mark.parametrize("shape", [(2, 1, 33, 48), (1, 2, 12, 17, 14)])
def test_fourier_image_is_real_of_the_right_shape_with_a_1_over_f_spectrum(shape):
    """Power ∝ 1/f² (amplitude 1/f): the log-log slope of the rendered start's power spectrum is
    about −2 (a pixel-parameterised white start would give 0)."""
    image = FourierImage(shape, torch.Generator().manual_seed(0)).render().detach()
    assert image.shape == shape and not image.is_complex() and image.dtype == torch.float32
    assert torch.equal(image[0], image[-1])  # one draw for every image of the batch
    dims = tuple(range(2, len(shape)))
    power = torch.fft.fftn(image[0], dim=tuple(d - 1 for d in dims)).abs().pow(2).mean(0)
    grids = torch.meshgrid(*[torch.fft.fftfreq(n) for n in shape[2:]], indexing="ij")
    frequency = torch.sqrt(sum(g * g for g in grids))
    keep = frequency > 0
    slope = np.polyfit(frequency[keep].log().numpy(), power[keep].log().numpy(), 1)[0]
    assert -2.6 < slope < -1.4, slope


def test_layer_visualisation_is_pixel_feature_visualisation_without_transforms():
    torch.manual_seed(6)
    x, net = torch.rand(1, 1, 16, 16), conv2d()
    options = dict(layer="2", channel=3, steps=5, lr=0.1, seed=2, weight_decay=1e-3, blur_every=2, blur_sigma=0.7)
    layer, _ = explain(net, "layer_visualisation", x, **options)
    feature, _ = explain(net, "feature_visualisation", x, param="pixel", jitter=0, scale=0, rotate=0, **options)
    torch.testing.assert_close(layer, feature, rtol=0, atol=0)


# -- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method, options, message", [
    ("feature_visualisation", dict(layer="nope"), "no layer 'nope'"),
    ("feature_visualisation", dict(layer="2", channel=6), "channel=6 is out of range: layer '2' has 6 channels"),
    ("layer_visualisation", dict(layer="2", channel=9), "channel=9 is out of range"),
    ("deepdream", dict(layer="2", channel=7), "channel=7 is out of range"),
    ("feature_visualisation", dict(layer="2", neuron=(0, 8)), r"neuron=\(0, 8\) is not a position on layer '2'"),
    ("feature_visualisation", dict(layer="2", neuron=(1,)), r"neuron=\(1,\)"),
    ("feature_visualisation", dict(layer="2", steps=-1), "invalid steps=-1"),
    ("deepdream", dict(layer="2", octave_scale=1.0), "invalid octave_scale=1.0"),
    ("inverted_representation", dict(layer="2", lr=0), "invalid lr=0"),
    ("inverted_representation", dict(), "needs layer="),
])
def test_bad_parameters_are_method_errors_naming_them(method, options, message):
    with pytest.raises(MethodError, match=message):
        Explainer(conv2d(), method, "class:1", steps=options.pop("steps", 1), **options)(torch.rand(1, 1, 16, 16))


def test_progress_counts_steps(monkeypatch):
    bars = []

    class Recorder:
        def __init__(self, total, disable, **_):
            self.total, self.disable, self.n = total, disable, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    monkeypatch.setattr(visualisation, "tqdm", Recorder)
    Explainer(conv2d(), "deepdream", "class:1", layer="2", steps=3, octaves=2, progress=True)(torch.rand(1, 1, 16, 16))
    assert [(bar.total, bar.n, bar.disable) for bar in bars] == [(6, 6, False)]


# -- exact through sliding windows --------------------------------------------------------------
def summed_window_objective(network, layer, x, channel):
    """Σ over MONAI's sliding windows of the window's mean channel activation, with autograd
    through ``sliding_window_inference`` (which crops and pads the input itself)."""
    values = []

    def predictor(window):
        values.append(activation_of(network, layer, window)[:, channel].flatten(1).mean(1).sum())
        return torch.zeros_like(window)  # the prediction is not needed

    sliding_window_inference(x, WINDOWS["roi_size"], WINDOWS["sw_batch_size"], predictor, overlap=WINDOWS["overlap"])
    return torch.stack(values).sum()


def reference_gradient(network, layer, x, channel):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(summed_window_objective(network, layer, x, channel), x)[0]


def test_window_objective_gradient_equals_autograd_through_monai_windows(unet3d):
    torch.manual_seed(7)
    x, layer = torch.rand(2, 1, 20, 14, 22), unet3d.get_submodule(UNET_LAYER)
    explainer = Explainer(unet3d, "deepdream", "argmax:1", layer=UNET_LAYER, steps=0, octaves=1, **WINDOWS)
    explainer(x)
    with torch.enable_grad():
        values, gradient = WindowObjective(explainer.last_pass, LayerTerm(unet3d, layer, UNET_LAYER, channel=3), batch=2)(x)
        reference = reference_gradient(unet3d, layer, x, channel=3)
        total = summed_window_objective(unet3d, layer, x, channel=3)
    assert len(explainer.last_pass.plan.slices) > 1
    torch.testing.assert_close(gradient, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().amax()))
    torch.testing.assert_close(values.sum(), total.detach(), rtol=1e-5, atol=0)


def test_one_deepdream_step_through_windows_equals_the_manual_step(unet3d):
    """x₁ = x₀ + lr · std(x₀) · g / mean|g|, g the autograd gradient of the summed window objective."""
    torch.manual_seed(8)
    x, layer, lr = torch.rand(2, 1, 20, 14, 22), unet3d.get_submodule(UNET_LAYER), 0.3
    dreamed = Explainer(unet3d, "deepdream", "argmax:1", layer=UNET_LAYER, channel=3, steps=1, octaves=1, jitter=0, lr=lr, **WINDOWS)(x)
    with torch.enable_grad():
        g = reference_gradient(unet3d, layer, x, channel=3)
    std = x.flatten(1).std(1, unbiased=False).view(2, 1, 1, 1, 1)
    expected = x + lr * std * g / g.abs().flatten(1).mean(1).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(dreamed, expected, rtol=1e-5, atol=1e-5 * float(lr * std.max()))
