"""The exact window decomposition against autograd, Captum parity, axioms and errors."""

import pytest
import torch
from captum.attr import (
    DeepLift,
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from esegeta_monai import Explainer
from esegeta_monai.errors import InputError, MethodError, MethodTimeout, TargetError
from esegeta_monai.methods.noise import draw_noise
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore, MaskRegion, OtsuRegion, VoxelScore

ROI = (16, 16, 16)
WINDOWS = dict(roi_size=ROI, overlap=0.5, mode="gaussian", sw_batch_size=3)


def stitched_target(net, target, weights):
    """T(x) through MONAI's sliding_window_inference with the target's mask held fixed."""

    def value(x):
        y = sliding_window_inference(x, ROI, 3, net, overlap=0.5, mode="gaussian")
        return (y * weights.repeat(x.shape[0] // weights.shape[0], *[1] * (weights.ndim - 1))).flatten(1).sum(1)

    return value


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


TARGETS = {
    "argmax": lambda: ArgmaxRegion(1),
    "otsu": lambda: OtsuRegion(2),
    "mask": lambda: MaskRegion(1, box=[(3, 20), (0, 24), (8, 30)]),
}


@pytest.mark.parametrize("target_name", sorted(TARGETS))
def test_signed_saliency_equals_autograd_through_sliding_window(unet3d, volume, target_name):
    target = TARGETS[target_name]()
    explainer = Explainer(unet3d, "saliency", target, abs=False, **WINDOWS)
    ours = explainer(volume)
    weights = target.weights(explainer.predict(volume))
    x = volume.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(stitched_target(unet3d, target, weights)(x).sum(), x)
    assert explainer.last_pass.windows_run > 2 * volume.shape[0]  # really through windows
    assert relative_error(ours, reference) <= 1e-5


@pytest.mark.parametrize("target_name", sorted(TARGETS))
def test_integrated_gradients_equal_captum_through_sliding_window(unet3d, volume, target_name):
    target = TARGETS[target_name]()
    x = volume[:1]
    explainer = Explainer(unet3d, "integrated_gradients", target, n_steps=6, **WINDOWS)
    ours = explainer(x)
    weights = target.weights(explainer.predict(x))
    reference = IntegratedGradients(stitched_target(unet3d, target, weights)).attribute(x, n_steps=6)
    assert relative_error(ours, reference) <= 1e-5


def test_integrated_gradients_complete(unet3d, volume):
    """Σ attributions = T(x) − T(baseline) within 1% at 64 steps, through windows."""
    target = ArgmaxRegion(1)
    x = volume[:1]
    explainer = Explainer(unet3d, "integrated_gradients", target, n_steps=64, **WINDOWS)
    attribution = explainer(x)
    weights = target.weights(explainer.predict(x))
    difference = target(explainer.predict(x), weights) - target(explainer.predict(torch.zeros_like(x)), weights)
    assert abs(float(attribution.sum() - difference.sum())) <= 0.01 * abs(float(difference.sum()))


def test_otsu_region_has_nonzero_gradient(unet3d, volume):
    attribution = Explainer(unet3d, "saliency", OtsuRegion(1), **WINDOWS)(volume)
    assert float(attribution.abs().sum()) > 0


def test_windows_outside_the_target_are_skipped(unet3d, volume):
    explainer = Explainer(unet3d, "saliency", VoxelScore(1, (2, 2, 2)), abs=False, **WINDOWS)
    attribution = explainer(volume[:1])
    total = len(explainer.last_pass.plan.slices)
    assert 1 <= explainer.last_pass.windows_run < total
    # the gradient of a corner voxel reaches only the receptive field near that corner
    assert float(attribution[..., 20:, 20:, 20:].abs().sum()) == 0.0
    x = volume[:1].clone().requires_grad_(True)
    y = sliding_window_inference(x, ROI, 3, unet3d, overlap=0.5, mode="gaussian")
    (reference,) = torch.autograd.grad(y[0, 1, 2, 2, 2], x)
    assert relative_error(attribution, reference) <= 1e-5


CAPTUM = {
    "saliency": (Saliency, {}, {"abs": True}),
    "input_x_gradient": (InputXGradient, {}, {}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 12}, {"n_steps": 12}),
    "guided_backprop": (GuidedBackprop, {}, {}),
    "deconvolution": (Deconvolution, {}, {}),
    "deeplift": (DeepLift, {}, {}),
}


@pytest.mark.parametrize("method", sorted(CAPTUM))
def test_whole_image_equals_captum_called_directly(classifier2d, method):
    captum_class, ours_kwargs, captum_kwargs = CAPTUM[method]
    torch.manual_seed(3)
    x = torch.rand(3, 1, 20, 20)
    ours = Explainer(classifier2d, method, ClassScore(2), **ours_kwargs)(x)
    reference = captum_class(classifier2d).attribute(x.clone(), target=2, **captum_kwargs)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_whole_image_segmentation_is_the_same_path_as_one_window(unet3d, volume):
    """roi_size=None and a window covering the input give the same map."""
    target = ArgmaxRegion(1)
    whole = Explainer(unet3d, "saliency", target)(volume)
    covering = Explainer(unet3d, "saliency", target, roi_size=volume.shape[2:], overlap=0.5)(volume)
    torch.testing.assert_close(whole, covering)


def test_smoothgrad_equals_captum_saliency_over_the_same_noise(classifier2d):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "smoothgrad", ClassScore(0), nt_samples=4, stdevs=0.2, seed=7)(x)
    noises = draw_noise(x.shape, 0.2, 4, 7)
    reference = torch.stack([Saliency(classifier2d).attribute(x + n, target=0) for n in noises]).mean(0)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_smoothgrad_through_windows_equals_autograd_on_the_same_noise(unet3d, volume):
    x = volume[:1]
    target = MaskRegion(1, box=[(3, 20), (0, 24), (8, 30)])
    ours = Explainer(unet3d, "smoothgrad", target, nt_samples=2, stdevs=0.1, seed=1, abs=False, **WINDOWS)(x)
    weights = target.weights(torch.zeros(1, 3, *x.shape[2:]))
    value = stitched_target(unet3d, target, weights)
    grads = []
    for noise in draw_noise(x.shape, 0.1, 2, 1):
        noisy = (x + noise).requires_grad_(True)
        grads.append(torch.autograd.grad(value(noisy).sum(), noisy)[0])
    assert relative_error(ours, torch.stack(grads).mean(0)) <= 1e-5


def test_batch_of_two_equals_two_batches_of_one(unet3d, volume):
    explainer = Explainer(unet3d, "input_x_gradient", ArgmaxRegion(2), **WINDOWS)
    both = explainer(volume)
    one_by_one = torch.cat([explainer(volume[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, one_by_one, rtol=1e-5, atol=1e-7)


def test_parameters_frozen_then_restored_and_works_under_no_grad(unet3d, volume):
    unet3d.train()
    flags = [p.requires_grad for p in unet3d.parameters()]
    with torch.no_grad():
        attribution = Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(volume[:1])
    assert float(attribution.abs().sum()) > 0
    assert unet3d.training and [p.requires_grad for p in unet3d.parameters()] == flags
    assert all(p.grad is None for p in unet3d.parameters())


def test_metatensor_meta_is_kept(unet3d, volume):
    affine = torch.diag(torch.tensor([0.8, -0.9, 1.5, 1.0], dtype=torch.float64))
    x = MetaTensor(volume[:1], affine=affine, meta={"filename_or_obj": "scan.nii.gz"})
    attribution = Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(x)
    assert isinstance(attribution, MetaTensor)
    assert torch.equal(attribution.affine, x.affine)
    assert attribution.meta["filename_or_obj"] == "scan.nii.gz"


def test_local_mode_blends_each_windows_own_gradient(unet3d, volume):
    """local=True: each window's gradient of its own argmax region, blended with the importance map."""
    from esegeta_monai.core.windows import plan_windows

    x = volume[:1]
    local = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, local=True, **WINDOWS)(x)
    plan = plan_windows(x.shape[2:], ROI, overlap=0.5, mode="gaussian")
    blended = torch.zeros_like(x)
    for window in plan.slices:
        crop = x[(slice(None), slice(None), *window)].clone().requires_grad_(True)
        output = unet3d(crop)
        mask = ArgmaxRegion(1).weights(output.detach())
        (gradient,) = torch.autograd.grad((output * mask).sum(), crop)
        blended[(slice(None), slice(None), *window)] += plan.importance * gradient
    reference = blended / plan.normaliser()
    assert relative_error(local, reference) <= 1e-5
    exact = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, **WINDOWS)(x)
    assert relative_error(local, exact) > 1e-3  # and it is not the exact global gradient


def test_amp_is_close_to_float32(unet3d, volume):
    exact = Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(volume[:1])
    mixed = Explainer(unet3d, "saliency", ArgmaxRegion(1), amp=True, **WINDOWS)(volume[:1])
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    correlation = torch.corrcoef(torch.stack([exact.flatten(), mixed.flatten()]))[0, 1]
    assert correlation > 0.9


def test_timeout_stops_within_a_window_batch(unet3d, volume):
    explainer = Explainer(unet3d, "integrated_gradients", ArgmaxRegion(1), n_steps=4, timeout=1e-9, **WINDOWS)
    with pytest.raises(MethodTimeout, match="window batches"):
        explainer(volume)
    assert explainer.last_pass is None or explainer.last_pass.windows_run <= 3


def test_changes_when_weights_are_randomised(unet3d, volume):
    before = Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(volume[:1])
    torch.manual_seed(99)
    for parameter in unet3d.parameters():
        parameter.data.normal_()
    after = Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(volume[:1])
    assert relative_error(after, before) > 0.1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "salincy"}, MethodError, "did you mean 'saliency'"),
        ({"method": "saliency", "n_steps": 3}, MethodError, "no keyword 'n_steps'"),
        ({"method": "integrated_gradients", "n_steps": 0}, MethodError, "invalid n_steps=0"),
        ({"method": "saliency", "target": "argmx:1"}, TargetError, "did you mean 'argmax'"),
        ({"method": "saliency", "target": "argmax:x"}, TargetError, "integers"),
    ],
)
def test_bad_method_or_target_is_a_clear_error(unet3d, kwargs, error, message):
    kwargs = {"target": ArgmaxRegion(1), **kwargs}
    method, target = kwargs.pop("method"), kwargs.pop("target")  # positional-only (a method may have a `method` keyword)
    with pytest.raises(error, match=message):
        Explainer(unet3d, method, target, **kwargs)


def test_bad_inputs_are_clear_errors(unet3d, volume):
    explainer = Explainer(unet3d, "saliency", ArgmaxRegion(5))
    with pytest.raises(TargetError, match="class 5 does not exist"):
        explainer(volume[:1])
    broken = volume[:1].clone()
    broken[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(InputError, match="1 NaN/Inf"):
        Explainer(unet3d, "saliency", ArgmaxRegion(1))(broken)
    with pytest.raises(InputError, match="at least one spatial axis"):
        Explainer(unet3d, "saliency", ArgmaxRegion(1))(torch.rand(3, 4))


def test_mask_shapes_broadcast(unet3d, volume):
    spatial = volume.shape[2:]
    mask = torch.zeros(spatial)
    mask[5:10, 5:10, 5:10] = 1
    maps = [
        Explainer(unet3d, "saliency", MaskRegion(1, m))(volume)
        for m in (mask, mask[None], mask[None, None].repeat(2, 1, 1, 1, 1), mask.numpy())
    ]
    for other in maps[1:]:
        torch.testing.assert_close(maps[0], other)
    with pytest.raises(TargetError, match="not broadcastable"):
        Explainer(unet3d, "saliency", MaskRegion(1, torch.zeros(3, 3, 3)))(volume)


def test_amp_deeplift_stays_finite_and_equals_float32(unet3d, volume):
    """DeepLift ignores amp (its rescale rule underflows in half precision)."""
    target = MaskRegion(1, box=[(3, 20), (0, 24), (8, 30)])  # no prediction: amp cannot change the mask
    exact = Explainer(unet3d, "deeplift", target, **WINDOWS)(volume[:1])
    mixed = Explainer(unet3d, "deeplift", target, amp=True, **WINDOWS)(volume[:1])
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed, exact)


def test_non_finite_maps_are_refused(unet3d, volume, monkeypatch):
    from esegeta_monai.methods.gradient import SaliencyMethod

    monkeypatch.setattr(SaliencyMethod, "finalize", lambda self, total, options: total * float("nan"))
    with pytest.raises(FloatingPointError, match="NaN/Inf attribution"):
        Explainer(unet3d, "saliency", ArgmaxRegion(1), **WINDOWS)(volume[:1])


@pytest.mark.parametrize("padding_mode", ["constant", "replicate"])
def test_window_larger_than_the_image_is_padded_as_monai_does(unet3d, padding_mode):
    """An image smaller than the window: MONAI pads it; our gradient goes through that pad."""
    torch.manual_seed(5)
    x = torch.rand(1, 1, 12, 16, 16)
    target = ArgmaxRegion(1)
    explainer = Explainer(unet3d, "saliency", target, roi_size=(16, 16, 16), padding_mode=padding_mode, abs=False)
    ours = explainer(x)
    prediction = sliding_window_inference(x, (16, 16, 16), 1, unet3d, padding_mode=padding_mode)
    torch.testing.assert_close(explainer.predict(x), prediction)
    weights = target.weights(prediction)
    probe = x.clone().requires_grad_(True)
    y = sliding_window_inference(probe, (16, 16, 16), 1, unet3d, padding_mode=padding_mode)
    (reference,) = torch.autograd.grad((y * weights).sum(), probe)
    assert relative_error(ours, reference) <= 1e-5


class _Stitched(torch.nn.Module):
    """``x ↦ T(x)`` through ``sliding_window_inference``, as one module, so that Captum's
    ReLU-hook methods see the network inside it."""

    def __init__(self, net, target, weights):
        super().__init__()
        self.net = net
        self.value = stitched_target(net, target, weights)

    def forward(self, x):
        return self.value(x)[:, None]


@pytest.mark.parametrize("method, captum_class", [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)])
def test_relu_rule_methods_through_windows_equal_captum_through_the_stitched_prediction(unet3d, volume, method, captum_class):
    """The window sum is exact for the hook methods too: Captum on the whole stitched target
    (its ReLU hooks acting inside every window of sliding_window_inference) gives the same map."""
    x = volume[:1]
    target = MaskRegion(1, box=[(3, 20), (0, 24), (8, 30)])
    ours = Explainer(unet3d, method, target, **WINDOWS)(x)
    weights = target.weights(torch.zeros(1, 3, *x.shape[2:]))
    reference = captum_class(_Stitched(unet3d, target, weights)).attribute(x.clone(), target=0)
    assert relative_error(ours, reference) <= 1e-5
