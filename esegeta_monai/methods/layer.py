"""Layer attribution through Captum, at a named layer, N-dimensional.

Each method attributes the target to a layer's activations (Captum's ``Layer*`` classes);
the layer map is reduced over its channels (``reduce``: ``sum``, ``mean``, or ``none`` to keep
every channel), upsampled to the input grid (bilinear/trilinear; ``resolution="layer"`` keeps
the layer's own grid) and, through sliding windows, blended with the prediction's importance
map like the CAMs (DESIGN.md §2: a documented approximation; exact for one window covering
the image).

``guided_layer_activation`` (from the CNN-visualisation collection used by TorchEsegeta)
backpropagates the sum of a layer's activation — one channel (``channel``) or all — to the
input with guided backpropagation: an input-resolution map of what excites that layer. Like
``layer_activation`` it does not depend on the target; through windows each window's map is
computed for its own objective and the maps are blended with the importance map.

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
    GuidedBackprop,
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientXActivation,
)

from esegeta_monai.core.window_pass import amp_dtype
from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import Method, Param, is_bool, non_negative_number, one_of, positive_int
from esegeta_monai.methods.cam import LAYER, RESOLUTION, NeedsLayer, find_layer, to_resolution
from esegeta_monai.methods.gradient import BASELINES, INTERNAL_BATCH, MULTIPLY_BY_INPUTS, captum_steps
from esegeta_monai.methods.registry import register

__all__ = ["CaptumLayerMethod", "LayerObjective", "layer_map", "reduce_channels"]

REDUCE = Param("sum", one_of("sum", "mean", "none"), "how the layer's channels become the map")
N_STEPS = Param(50, positive_int, "number of integration steps", "a positive int")


def reduce_channels(layer_map: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, C_layer, ...)`` → ``(B, 1, ...)`` by sum or mean, or unchanged for ``none``."""
    if how == "none":
        return layer_map
    return layer_map.sum(1, keepdim=True) if how == "sum" else layer_map.mean(1, keepdim=True)


def layer_map(attribution, x: torch.Tensor, options) -> torch.Tensor:
    """A window's layer attribution (Captum's output) reduced over channels (``reduce``) and
    brought to ``resolution``; a non-spatial layer is a :class:`MethodError`.

    Example:
        >>> import torch
        >>> layer_map(torch.ones(1, 4, 2, 2), torch.ones(1, 1, 4, 4), {"reduce": "sum", "resolution": "layer"})
        tensor([[[[4., 4.],
                  [4., 4.]]]])
    """
    attribution = attribution[0] if isinstance(attribution, (tuple, list)) else attribution
    if attribution.ndim != x.ndim:
        raise MethodError(f"layer {options.get('layer')!r} gives maps of shape {tuple(attribution.shape)}; pick a spatial layer (B, C, *spatial)")
    return to_resolution(reduce_channels(attribution.float(), options["reduce"]), x.shape[2:], options.get("resolution", "input"))


class CaptumLayerMethod(NeedsLayer, Method):
    """A Captum layer-attribution class applied per window, reduced, upsampled and blended."""

    family = "layer"
    captum_class: type = LayerActivation
    init_params: tuple[str, ...] = ()
    window_tensors: tuple[str, ...] = ()
    params = {"layer": LAYER, "reduce": REDUCE, "resolution": RESOLUTION}
    #: whether the window crops must require grad (Captum's DeepLift hooks every non-linearity,
    #: those below the layer too); the others start their graph at the layer
    input_grad = False

    def run(self, window_pass, inputs, options):
        layer = find_layer(window_pass.module.network, options["layer"])  # once, and before any window
        tensors = {k: options[k] for k in self.window_tensors if torch.is_tensor(options.get(k))}
        with captum_steps(window_pass, options):  # the path methods' Gauss–Legendre rule, within the time budget
            return window_pass.linear(inputs, lambda module, x, weight, crops: self.window_map(module, layer, x, weight, options, crops),
                                      window_tensors=tensors, blend=True, input_grad=self.input_grad)

    def window_map(self, module, layer, x, weight, options, crops):
        init = {k: options[k] for k in self.init_params}
        call = {k: v for k, v in options.items() if k not in (*self.init_params, "layer", "reduce", "resolution")}
        call.update(crops)
        attribution = self.captum_class(module, layer, **init).attribute(x, additional_forward_args=(weight,), **call)
        return layer_map(attribution, x, options)


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
    input_grad = True
    amp_safe = False
    amp_note = "DeepLift's rescale rule underflows in float16"


@register
class LayerGradCamMethod(CaptumLayerMethod):
    name = "layer_gradcam"
    summary = "Captum's LayerGradCam (per-channel mean gradient × activation, summed; relu_attributions optional)"
    captum_class = LayerGradCam
    params = {"layer": LAYER, "resolution": RESOLUTION, "relu_attributions": Param(False, is_bool, expects="True or False")}

    def window_map(self, module, layer, x, weight, options, crops):
        return super().window_map(module, layer, x, weight, {**options, "reduce": "none"}, crops)  # already one channel


class LayerObjective(torch.nn.Module):
    """``x -> Σ`` of a layer's activation per sample — one channel, or all when ``channel`` is
    None: the objective ``guided_layer_activation`` backpropagates.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.ReLU())
        >>> LayerObjective(net, net[0], channel=2)(torch.ones(2, 1, 4, 4)).shape
        torch.Size([2])
    """

    def __init__(self, network: torch.nn.Module, layer: torch.nn.Module, channel: int | None = None, amp: bool = False):
        super().__init__()
        self.network, self.layer, self.channel, self.amp = network, layer, channel, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, (tuple, list)) else out))
        try:
            with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=self.amp):
                self.network(x)
        finally:
            handle.remove()
        if not captured:
            raise MethodError("the chosen layer was not used by the network's forward; pick another layer")
        activation = captured[-1]
        if self.channel is not None:
            if activation.ndim < 2 or self.channel >= activation.shape[1]:
                raise MethodError(f"channel={self.channel} is out of range for the layer's output of shape {tuple(activation.shape)}")
            activation = activation[:, self.channel]
        return activation.float().flatten(1).sum(1)


@register
class GuidedLayerActivationMethod(NeedsLayer, Method):
    name = "guided_layer_activation"
    family = "layer"
    library = "esegeta (Captum GuidedBackprop)"
    summary = "guided backpropagation of a layer's summed activation (one channel or all) to the input; target-independent"
    params = {"layer": LAYER, "channel": Param(None, lambda v: v is None or (non_negative_number(v) and isinstance(v, int)),
                                                 "the layer channel (filter) whose activation is explained; None: all", "None or an int ≥ 0")}

    def run(self, window_pass, inputs, options):
        layer = find_layer(window_pass.module.network, options["layer"])

        def window_fn(module, x, weight, crops):
            return GuidedBackprop(LayerObjective(module.network, layer, options["channel"], module.amp)).attribute(x)

        return window_pass.linear(inputs, window_fn, blend=True)
