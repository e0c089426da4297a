"""Excitation backprop, its contrastive variant (Zhang et al. 2016) and TorchRay's linear
approximation, N-dimensional, with TorchRay's semantics (``torchray.attribution``).

Excitation backprop (EB) propagates a top-down signal ``P`` — the target's output gradient,
i.e. each window's weight map on the target channel — by the probabilistic winner-take-all
rule ``P_in = x ⊙ W⁺ᵀ (P / W⁺x)`` on convolutions, transposed convolutions, linear layers and
average pooling (biases ignored); additions of residual blocks split ``P`` in proportion to
their operands; normalisation layers pass it through; activations, max pooling and
concatenations keep their gradient (the rules of :mod:`esegeta_monai.methods.relevance`, which
also lists the supported networks). The map is ``P`` at the input (one channel per input
channel; TorchRay sums them) or, with ``layer``, ``P`` at that layer's output summed over
channels, upsampled to the input (bilinear/trilinear) and blended through windows like the CAMs.

Contrastive EB propagates, once with the classifier layer's weights negated (the "dual"
target) and once as is, down to ``contrast_layer``; their difference is propagated further
down to the map's layer and clamped at zero (at a layer: per window before upsampling, as
TorchRay; at the input: once the windows are summed).

EB is linear in ``P``: at the input the window maps add up exactly to the global target's.
For region targets the weights are non-negative, as EB assumes; negative weights (targets whose
gradient changes sign) are propagated linearly, giving negative "probabilities" there.
Differences from TorchRay: transposed convolutions (not patched by TorchRay) get the EB rule;
instance norms pass ``P`` through like batch norms; the default classifier layer is the last
convolution, transposed convolution or linear layer in module order.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> Explainer(net, "excitation_backprop", "class:1")(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
    >>> Explainer(net, "contrastive_excitation_backprop", "class:1", layer="1", contrast_layer="3")(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from esegeta_monai.core.window_pass import first_output
from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import Method, Param
from esegeta_monai.methods.cam import find_layer, upsample
from esegeta_monai.methods.layer import LayerGradientXActivationMethod
from esegeta_monai.methods.registry import register
from esegeta_monai.methods.relevance import (
    ExcitationRules,
    Propagation,
    captured_output,
    check_supported,
    output_seed,
    propagate,
)

__all__ = ["ContrastiveExcitationBackpropMethod", "ExcitationBackpropMethod", "LinearApproxMethod", "classifier_layer"]


def _name(value) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


OPTIONAL_LAYER = Param(None, _name, "module name of the map's layer; None: the input", "None or a module name")
CLASSIFIERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def classifier_layer(network: nn.Module, name: str | None) -> nn.Module:
    """The named layer, or the last convolution/linear layer in module order."""
    if name is not None:
        module = find_layer(network, name)
        if not isinstance(module, CLASSIFIERS):
            raise MethodError(f"classifier_layer {name!r} is a {type(module).__name__}; it must be a convolution or linear layer")
        return module
    candidates = [m for m in network.modules() if isinstance(m, CLASSIFIERS)]
    if not candidates:
        raise MethodError("the network has no convolution or linear layer to contrast")
    return candidates[-1]


def _layer_map(signal: torch.Tensor, x: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Summed over channels, clamped at 0 if asked (before upsampling, as TorchRay), upsampled."""
    if signal.ndim != x.ndim:
        raise MethodError(f"the map's layer has output shape {tuple(signal.shape)}; pick a spatial layer (B, C, *spatial)")
    summed = signal.sum(1, keepdim=True).float()
    return upsample(summed.clamp(min=0) if clamp else summed, x.shape[2:])


class _Excitation(Method):
    """Shared driver: ``window_signal`` per window; at the input summed (then clamped at 0 if
    ``clamp``), at a layer reduced, clamped and upsampled per window, then blended."""

    family = "relevance"
    dims = "1D/2D/3D"
    library = "esegeta (TorchRay semantics)"
    amp_safe = False
    amp_note = "the rules divide by layer outputs, which is not float16-safe"
    clamp = False

    def run(self, window_pass, inputs, options):
        network = window_pass.module.network
        check_supported(network, self.name)  # once, before any window
        layers = self.layers(network, options)

        def window_fn(module, x, weight, crops):
            signal = self.window_signal(module, x, weight, layers, options)
            return signal if layers["layer"] is None else _layer_map(signal, x, self.clamp)

        total = window_pass.linear(inputs, window_fn, blend=layers["layer"] is not None)
        return total.clamp_(min=0) if self.clamp else total  # a no-op on blended clamped maps

    def layers(self, network, options) -> dict:
        layer = options["layer"]
        return {"layer": find_layer(network, layer) if layer is not None else None}


@register
class ExcitationBackpropMethod(_Excitation):
    name = "excitation_backprop"
    summary = "excitation backprop (Zhang et al. 2016, TorchRay semantics); at the input or a named layer"
    params = {"layer": OPTIONAL_LAYER}

    def window_signal(self, module, x, weight, layers, options):
        return propagate(module, x, weight, ExcitationRules(), self.name, False, layers["layer"], options["layer"] or "")


@register
class ContrastiveExcitationBackpropMethod(_Excitation):
    name = "contrastive_excitation_backprop"
    clamp = True
    summary = "contrastive EB: EB minus EB of the dual target (classifier weights negated), clamped at 0"
    params = {
        "layer": OPTIONAL_LAYER,
        "contrast_layer": Param(None, _name, "module name where the dual target's signal is subtracted", "a module name"),
        "classifier_layer": Param(None, _name, "layer whose weights are negated; None: the last conv/linear layer",
                                  "None or a module name"),
    }

    def validate(self, options):
        resolved = super().validate(options)
        if resolved["contrast_layer"] is None:
            raise MethodError(f"method {self.name!r} needs contrast_layer='<module name>' (a layer above `layer`, below the classifier)")
        return resolved

    def layers(self, network, options):
        return {**super().layers(network, options), "contrast": find_layer(network, options["contrast_layer"]),
                "classifier": classifier_layer(network, options["classifier_layer"])}

    def window_signal(self, module, x, weight, layers, options):
        rules = ExcitationRules()
        with Propagation(module.network, rules, self.name) as propagation:
            output = first_output(module.network(x))
            seed = output_seed(output, module.channel, weight, False)
            contrast = captured_output(propagation, layers["contrast"], options["contrast_layer"])
            (positive,) = torch.autograd.grad(output, contrast, seed, retain_graph=True)
            with rules.negating(layers["classifier"]):
                (dual,) = torch.autograd.grad(output, contrast, seed, retain_graph=True)
            below = x if layers["layer"] is None else captured_output(propagation, layers["layer"], options["layer"])
            (signal,) = torch.autograd.grad(contrast, below, positive - dual, allow_unused=True)
        if signal is None:
            raise MethodError(f"layer {options['layer']!r} does not lie below contrast_layer {options['contrast_layer']!r}")
        return signal


@register
class LinearApproxMethod(LayerGradientXActivationMethod):
    """TorchRay's ``linear_approx`` is gradient × activation at a layer, summed over channels:
    Captum's layer gradient × activation with ``reduce="sum"``."""

    name = "linear_approx"
    summary = "TorchRay's linear approximation: gradient × activation at a layer, summed over channels"
    params = {k: v for k, v in LayerGradientXActivationMethod.params.items() if k not in ("reduce", "multiply_by_inputs")}

    def window_map(self, module, layer, x, weight, options, crops):
        return super().window_map(module, layer, x, weight, {**options, "reduce": "sum", "multiply_by_inputs": True}, crops)
