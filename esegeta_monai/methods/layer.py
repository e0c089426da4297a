"""Layer attribution through Captum, at a named layer, N-dimensional.

Each method attributes the target to a layer's activations (Captum's ``Layer*`` classes);
the layer map is reduced over its channels (``reduce``: ``sum``, ``mean``, or ``none`` to keep
every channel), upsampled to the input grid (bilinear/trilinear) and, through sliding windows,
blended with the prediction's importance map like the CAMs (DESIGN.md §2: a documented
approximation; exact for one window covering the image).

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> Explainer(net, "layer_conductance", "class:1", layer="0", n_steps=4)(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

import torch
from captum.attr import (
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientXActivation,
)

from esegeta_monai.methods.base import Method, Param, is_bool, one_of, positive_int
from esegeta_monai.methods.cam import LAYER, _NeedsLayer, find_layer, upsample
from esegeta_monai.methods.gradient import BASELINES, INTERNAL_BATCH, MULTIPLY_BY_INPUTS
from esegeta_monai.methods.registry import register

__all__ = ["CaptumLayerMethod", "reduce_channels"]

REDUCE = Param("sum", one_of("sum", "mean", "none"), "how the layer's channels become the map")
N_STEPS = Param(50, positive_int, "number of integration steps", "a positive int")


def reduce_channels(layer_map: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, C_layer, ...)`` → ``(B, 1, ...)`` by sum or mean, or unchanged for ``none``."""
    if how == "none":
        return layer_map
    return layer_map.sum(1, keepdim=True) if how == "sum" else layer_map.mean(1, keepdim=True)


class CaptumLayerMethod(_NeedsLayer, Method):
    """A Captum layer-attribution class applied per window, reduced, upsampled and blended."""

    family = "layer"
    captum_class: type = LayerActivation
    init_params: tuple[str, ...] = ()
    window_tensors: tuple[str, ...] = ()
    params = {"layer": LAYER, "reduce": REDUCE}

    def run(self, window_pass, inputs, options):
        layer = find_layer(window_pass.module.network, options["layer"])  # once, and before any window
        tensors = {k: options[k] for k in self.window_tensors if torch.is_tensor(options.get(k))}
        return window_pass.linear(inputs, lambda module, x, weight, crops: self.window_map(module, layer, x, weight, options, crops),
                                  window_tensors=tensors, blend=True)

    def window_map(self, module, layer, x, weight, options, crops):
        init = {k: options[k] for k in self.init_params}
        call = {k: v for k, v in options.items() if k not in (*self.init_params, "layer", "reduce")}
        call.update(crops)
        attribution = self.captum_class(module, layer, **init).attribute(x, additional_forward_args=(weight,), **call)
        attribution = attribution[0] if isinstance(attribution, (tuple, list)) else attribution
        if attribution.ndim != x.ndim:
            raise ValueError(f"layer {options['layer']!r} gives maps of shape {tuple(attribution.shape)}; pick a spatial layer (B, C, *spatial)")
        return upsample(reduce_channels(attribution.float(), options["reduce"]), x.shape[2:])


@register
class LayerActivationMethod(CaptumLayerMethod):
    name = "layer_activation"
    summary = "the layer's activations (what it responds to; target-independent)"
    captum_class = LayerActivation


@register
class LayerConductanceMethod(CaptumLayerMethod):
    name = "layer_conductance"
    summary = "layer conductance (integrated gradients flowing through the layer)"
    captum_class = LayerConductance
    params = {**CaptumLayerMethod.params, "n_steps": N_STEPS, "baselines": BASELINES, "internal_batch_size": INTERNAL_BATCH,
              "method": Param("gausslegendre", one_of("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"))}
    window_tensors = ("baselines",)


@register
class InternalInfluenceMethod(CaptumLayerMethod):
    name = "internal_influence"
    summary = "internal influence (layer gradients integrated along the input path)"
    captum_class = InternalInfluence
    params = LayerConductanceMethod.params
    window_tensors = ("baselines",)


@register
class LayerGradientXActivationMethod(CaptumLayerMethod):
    name = "layer_gradient_x_activation"
    summary = "layer gradient × activation"
    captum_class = LayerGradientXActivation
    params = {**CaptumLayerMethod.params, "multiply_by_inputs": MULTIPLY_BY_INPUTS}
    init_params = ("multiply_by_inputs",)


@register
class LayerDeepLiftMethod(CaptumLayerMethod):
    name = "layer_deeplift"
    summary = "DeepLift attributed to a layer's activations"
    captum_class = LayerDeepLift
    params = {**CaptumLayerMethod.params, "baselines": BASELINES, "multiply_by_inputs": MULTIPLY_BY_INPUTS}
    init_params = ("multiply_by_inputs",)
    window_tensors = ("baselines",)
    amp_safe = False
    amp_note = "DeepLift's rescale rule underflows in float16"


@register
class LayerGradCamMethod(CaptumLayerMethod):
    name = "layer_gradcam"
    summary = "Captum's LayerGradCam (per-channel mean gradient × activation, summed; relu_attributions optional)"
    captum_class = LayerGradCam
    params = {"layer": LAYER, "relu_attributions": Param(False, is_bool, expects="True or False")}

    def window_map(self, module, layer, x, weight, options, crops):
        return super().window_map(module, layer, x, weight, {**options, "reduce": "none"}, crops)  # already one channel
