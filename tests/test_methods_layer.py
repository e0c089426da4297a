"""Layer attribution: equal to Captum's Layer* classes on whole images (after the documented
channel reduction and upsampling), and blended through sliding windows."""

import pytest
import torch
from captum.attr import (
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientXActivation,
)

from esegeta_monai import Explainer
from esegeta_monai.methods.cam import upsample
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

CASES = {
    "layer_activation": (LayerActivation, {}, {}),
    "layer_conductance": (LayerConductance, {"n_steps": 8}, {"n_steps": 8, "target": 1}),
    "internal_influence": (InternalInfluence, {"n_steps": 8}, {"n_steps": 8, "target": 1}),
    "layer_gradient_x_activation": (LayerGradientXActivation, {}, {"target": 1}),
    "layer_deeplift": (LayerDeepLift, {}, {"target": 1}),
    "layer_gradcam": (LayerGradCam, {}, {"target": 1}),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_whole_image_equals_captum_reduced_and_upsampled(classifier2d, method):
    captum_class, ours_kwargs, captum_kwargs = CASES[method]
    torch.manual_seed(6)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, method, ClassScore(1), layer="3", **ours_kwargs)(x)
    layer_map = captum_class(classifier2d, classifier2d[3]).attribute(x.clone(), **captum_kwargs)
    reference = upsample(layer_map.sum(1, keepdim=True), x.shape[2:])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_layer_maps_per_channel_and_through_windows(unet3d, volume):
    windows = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=3)
    layer = "model.1.submodule.0"
    per_channel = Explainer(unet3d, "layer_gradient_x_activation", ArgmaxRegion(1), layer=layer, reduce="none", **windows)(volume)
    summed = Explainer(unet3d, "layer_gradient_x_activation", ArgmaxRegion(1), layer=layer, **windows)(volume)
    assert per_channel.shape == (2, 8, *volume.shape[2:]) and summed.shape == (2, 1, *volume.shape[2:])
    torch.testing.assert_close(per_channel.sum(1, keepdim=True), summed, rtol=1e-4, atol=1e-6)
    whole = Explainer(unet3d, "layer_conductance", ArgmaxRegion(1), layer=layer, n_steps=4)(volume)
    covering = Explainer(unet3d, "layer_conductance", ArgmaxRegion(1), layer=layer, n_steps=4, roi_size=volume.shape[2:])(volume)
    torch.testing.assert_close(whole, covering)
