"""Class activation maps: Grad-CAM, Grad-CAM++ and guided Grad-CAM, N-dimensional.

A CAM lives inside the network: it weights a layer's activation channels by (functions of)
the target's gradient at that layer, ``cam = ReLU(Σ_k α_k A_k)``, and upsamples the map to
the input (linear interpolation: bilinear in 2D, trilinear in 3D, ``align_corners=False``,
as ``monai.visualize``). The layer is chosen by its module name (``esegeta layers`` lists them).

Through sliding windows the gradient at each window's layer activation is exact (each window
gets its share of the global target's output gradient), but the map itself is per window:
the window maps are blended with the same importance map as the prediction,
``Σ_p w_p ⊙ cam_p / W``. That blending is an approximation (a CAM is not additive over
windows); with one window covering the image it is the plain whole-image CAM.

``resolution="layer"`` keeps the map on the layer's own grid (not upsampled); through
sliding windows it is blended on that grid (:func:`esegeta_monai.explainer.layer_grid`: the
window offsets must be multiples of the layer's factor), and the Explainer reports the factor
per axis (``last_scale``) and, for MetaTensor inputs, the map's own affine.

Differences from ``monai.visualize.GradCAMpp``: the ``exp(score)`` factor of Grad-CAM++ is
left out (a positive factor per image; it overflows for segmentation scores summed over
many voxels). Maps are not min–max normalised (``normalize=True`` does it per image).
Against ``monai.visualize.GradCAM`` (tested): the raw ``gradcam`` map equals MONAI's with
identity post-processing, and ``normalize=True`` equals ``1 −`` MONAI's default output — MONAI's
default normaliser maps (min, max) to (1, 0), so its most attributed voxels come out darkest.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> cam = Explainer(net, "gradcam", "class:1", layer="0")(torch.rand(1, 1, 8, 8))
    >>> cam.shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import Method, Param, is_bool, one_of
from esegeta_monai.methods.registry import get_method, register

__all__ = ["CamMethod", "GradCamMethod", "GradCamPlusPlusMethod", "GuidedGradCamMethod", "find_layer", "upsample", "to_resolution"]

LAYER = Param(None, lambda v: isinstance(v, str) and bool(v), "module name of the layer (see `esegeta layers`)", "a module name")
RESOLUTION = Param("input", one_of("input", "layer"), "'input': upsampled to the input grid; 'layer': the layer's own grid")
NORMALIZE = Param(False, is_bool, "min–max normalise each image's map to [0, 1]", "True or False")


class NeedsLayer:
    """Validation shared by the CAMs: ``layer`` is required."""

    def validate(self, options):
        resolved = super().validate(options)  # type: ignore[misc]
        if resolved["layer"] is None:
            raise MethodError(f"method {self.name!r} needs layer='<module name>' (command line: --layer NAME); "  # type: ignore[attr-defined]
                              "`esegeta layers --bundle DIR` lists the network's layers")
        return resolved


def find_layer(network: torch.nn.Module, name: str | None) -> torch.nn.Module:
    """The sub-module called ``name``; an unknown name lists close matches."""
    if name is None:
        raise MethodError("a CAM needs layer='<module name>'; `esegeta layers --bundle DIR` lists the network's layers")
    if name:
        try:
            return network.get_submodule(name)  # a path walk, not a walk of the whole network
        except AttributeError:
            pass
    modules = dict(network.named_modules())
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise MethodError(f"the network has no layer {name!r}{hint} (`esegeta layers --bundle DIR` lists them)")
    return modules[name]


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Linear interpolation to ``size`` (bilinear/trilinear), ``align_corners=False``."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)


def to_resolution(maps: torch.Tensor, size, resolution: str) -> torch.Tensor:
    """``maps`` upsampled to ``size`` for ``resolution="input"``, unchanged for ``"layer"``.

    Example:
        >>> import torch
        >>> to_resolution(torch.ones(1, 1, 4, 4), (8, 8), "input").shape, to_resolution(torch.ones(1, 1, 4, 4), (8, 8), "layer").shape
        (torch.Size([1, 1, 8, 8]), torch.Size([1, 1, 4, 4]))
    """
    return upsample(maps, size) if resolution == "input" else maps


def layer_activation_and_gradient(module, layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor):
    """Forward ``module(x, weight)`` capturing ``layer``'s output ``A``; return ``A`` and ``∂T/∂A``.

    The graph starts at the layer: ``A`` is made a leaf that requires grad (the network goes on
    with a copy of it, so in-place operations after the layer are safe), so nothing below the
    layer is recorded and ``x`` need not require grad.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(2, 1, 1))
        >>> a, g = layer_activation_and_gradient(lambda x, w: net(x).sum((1, 2, 3)), net[0], torch.ones(1, 1, 2, 2), None)
        >>> a.shape == g.shape == (1, 2, 2, 2)
        True
    """
    captured = {}

    def hook(_module, _inputs, output):
        first = output[0] if isinstance(output, (tuple, list)) else output
        if not torch.is_tensor(first):
            return None
        captured["activation"] = leaf = first.detach().requires_grad_(True)
        copy = leaf.clone()
        if isinstance(output, (tuple, list)):
            return type(output)([copy, *output[1:]])
        return copy

    handle = layer.register_forward_hook(hook)
    try:
        value = module(x, weight)
    finally:
        handle.remove()
    if "activation" not in captured:
        raise MethodError("the chosen layer was not used by the network's forward; pick another layer")
    activation = captured["activation"]
    gradient = None
    if value.requires_grad:
        (gradient,) = torch.autograd.grad(value.sum(), activation, allow_unused=True)
    if gradient is None:
        raise MethodError("the target does not depend on the chosen layer's output; pick a layer on the path to the network's output")
    return activation.detach().float(), gradient.float()


class CamMethod(NeedsLayer, Method):
    """Base of the CAMs: subclasses only say how channel weights come from ``A`` and ``∂T/∂A``."""

    family = "cam"
    library = "esegeta (MONAI/Captum semantics)"
    params = {"layer": LAYER, "normalize": NORMALIZE, "resolution": RESOLUTION}

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def cam(self, module, layer, x, weight, options) -> torch.Tensor:
        activation, gradient = layer_activation_and_gradient(module, layer, x, weight)
        if activation.ndim != x.ndim:
            raise MethodError(f"layer {options['layer']!r} has output shape {tuple(activation.shape)}: a CAM needs a spatial layer (B, C, *spatial)")
        weights = self.channel_weights(activation, gradient)
        return to_resolution(F.relu((weights * activation).sum(1, keepdim=True)), x.shape[2:], options.get("resolution", "input"))

    def run(self, window_pass, inputs, options):
        layer = find_layer(window_pass.module.network, options["layer"])  # once, and before any window
        maps = window_pass.linear(inputs, lambda module, x, weight, crops: self.cam(module, layer, x, weight, options), blend=True,
                                  input_grad=False)
        return _normalize(maps) if options["normalize"] else maps


def _normalize(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - low.view(shape)) / (high - low).clamp_min(1e-12).view(shape)


@register
class GradCamMethod(CamMethod):
    name = "gradcam"
    summary = "Grad-CAM at a named layer (channel weight: mean gradient), upsampled (trilinear in 3D)"

    def channel_weights(self, activation, gradient):
        return gradient.flatten(2).mean(2).view(*gradient.shape[:2], *[1] * (gradient.ndim - 2))


@register
class GradCamPlusPlusMethod(CamMethod):
    name = "gradcam_pp"
    summary = "Grad-CAM++ at a named layer (as monai.visualize.GradCAMpp, without its exp(score) factor)"

    def channel_weights(self, activation, gradient):
        b, c, *spatial = gradient.shape
        ones = [1] * len(spatial)
        alpha_numerator = gradient.pow(2)
        alpha_denominator = 2 * alpha_numerator + (activation * gradient.pow(3)).view(b, c, -1).sum(-1).view(b, c, *ones)
        alpha_denominator = torch.where(alpha_denominator != 0.0, alpha_denominator, torch.ones_like(alpha_denominator))
        alpha = alpha_numerator / (alpha_denominator + 1e-7)
        return (alpha * F.relu(gradient)).view(b, c, -1).sum(-1).view(b, c, *ones)


@register
class GuidedGradCamMethod(NeedsLayer, Method):
    name = "guided_gradcam"
    family = "cam"
    library = "esegeta (Captum semantics)"
    summary = "guided Grad-CAM: guided backpropagation (exact) × the Grad-CAM map (needs nn.ReLU modules)"
    params = {"layer": LAYER}

    def run(self, window_pass, inputs, options):
        cam = get_method("gradcam").run(window_pass, inputs, {"layer": options["layer"], "normalize": False, "resolution": "input"})
        return get_method("guided_backprop").run(window_pass, inputs, {}) * cam
