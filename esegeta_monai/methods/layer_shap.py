"""SHAP methods at a layer: Captum's ``LayerDeepLiftShap`` and ``LayerGradientShap``.

Both average over reference images (``baselines``, as ``deeplift_shap``/``gradient_shap``:
None → ``[0, mean of the input]``, a list of numbers, or a tensor ``(N, C, *spatial)``).
Every reference and every random draw is a full-size image, drawn once per image for the whole
volume (:func:`~esegeta_monai.methods.shap.gradient_shap_draws`, seeded) and cropped per
window, so every window sees the same draw. The layer maps are reduced over channels,
brought to ``resolution`` and blended through windows like the other layer methods.

- ``layer_deeplift_shap``: Layer DeepLift against each reference, averaged (Captum's
  ``LayerDeepLiftShap``, which also takes the plain mean over its baselines).
- ``layer_gradient_shap``: for each of ``n_samples`` draws (reference ``b``, ``α ~ U(0, 1)``,
  noise ``ε``), the gradient at the layer at ``b + α (x + ε − b)`` times
  ``layer(x + ε) − layer(b)`` (``multiply_by_inputs=False``: the gradient alone), averaged.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> Explainer(net, "layer_gradient_shap", "class:1", layer="0", n_samples=2)(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

from functools import partial

import torch
from captum.attr import LayerActivation

from esegeta_monai.methods.base import Method
from esegeta_monai.methods.cam import LAYER, RESOLUTION, NeedsLayer, find_layer, layer_activation_and_gradient
from esegeta_monai.methods.gradient import MULTIPLY_BY_INPUTS
from esegeta_monai.methods.layer import REDUCE, LayerDeepLiftMethod, layer_map
from esegeta_monai.methods.registry import get_method, register
from esegeta_monai.methods.shap import BASELINE_SET, GradientShapMethod, baseline_set, gradient_shap_points

__all__ = ["LayerDeepLiftShapMethod", "LayerGradientShapMethod"]


@register
class LayerDeepLiftShapMethod(NeedsLayer, Method):
    name = "layer_deeplift_shap"
    family = "layer"
    summary = "Layer DeepLift averaged over a set of baselines (Captum's LayerDeepLiftShap)"
    params = {**LayerDeepLiftMethod.params, "baselines": BASELINE_SET}
    amp_safe = False
    amp_note = LayerDeepLiftMethod.amp_note

    def run(self, window_pass, inputs, options):
        layer_deeplift = get_method("layer_deeplift")
        references = baseline_set(options["baselines"], inputs)
        total = None
        for reference in references:
            maps = layer_deeplift.run(window_pass, inputs, {**options, "baselines": reference})
            total = maps if total is None else total.add_(maps)
        return total.div_(len(references))


@register
class LayerGradientShapMethod(NeedsLayer, Method):
    name = "layer_gradient_shap"
    family = "layer"
    library = "esegeta (Captum semantics)"
    summary = "Layer GradientShap: layer gradient at random points × (layer(x+ε) − layer(b)), averaged over seeded draws"
    params = {"layer": LAYER, "reduce": REDUCE, "resolution": RESOLUTION, **GradientShapMethod.params, "multiply_by_inputs": MULTIPLY_BY_INPUTS}

    def run(self, window_pass, inputs, options):
        layer = find_layer(window_pass.module.network, options["layer"])
        window_fn = partial(self.window_map, layer=layer, options=options)
        total = None
        for point, noisy, base in gradient_shap_points(inputs, options):
            maps = window_pass.linear(point, window_fn, window_tensors={"noisy": noisy, "base": base}, blend=True, input_grad=False)
            total = maps if total is None else total.add_(maps)
        return total.div_(options["n_samples"])

    @staticmethod
    def window_map(module, x, weight, crops, layer, options):
        """The window's layer map for one draw: ``x`` is the random point, ``crops`` hold
        the noisy input and the reference."""
        _, gradient = layer_activation_and_gradient(module, layer, x, weight)
        if options["multiply_by_inputs"]:
            pair = torch.cat([crops["noisy"], crops["base"]])
            activation = LayerActivation(module, layer).attribute(pair, additional_forward_args=(torch.cat([weight, weight]),))
            gradient = gradient * (activation[: len(x)] - activation[len(x) :]).float()
        return layer_map(gradient, x, options)
