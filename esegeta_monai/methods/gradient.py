"""Gradient-family methods through Captum, exact through sliding windows.

Each of these methods is linear in the output gradient, so it runs per window batch on
the module ``(net(x_win) * C_win).sum(spatial)`` — ``C_win`` being the window's share of
the target's output gradient, passed through Captum's ``additional_forward_args`` so that
Captum expands it for its steps — and the window attributions are summed into the volume
(DESIGN.md §2). Non-linear post-processing (``abs``) is applied once, to the sum.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import Explainer
    >>> from esegeta_monai.core.targets import MaskRegion
    >>> net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    >>> target = MaskRegion(1, box=[(4, 12), (4, 12)])
    >>> attr = Explainer(net, "integrated_gradients", target, n_steps=8)(torch.rand(1, 1, 16, 16))
    >>> attr.shape
    torch.Size([1, 1, 16, 16])
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import (
    DeepLift,
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)

from esegeta_monai.methods.base import Method, Param, is_bool, one_of, positive_int
from esegeta_monai.methods.registry import register

__all__ = ["CaptumGradientMethod"]


def _baseline_ok(value) -> bool:
    return value is None or isinstance(value, (int, float)) or torch.is_tensor(value)


BASELINES = Param(None, _baseline_ok, "reference input: None (zeros), a number, or a tensor shaped like the input",
                  "None, a number, or a tensor shaped like the input")
MULTIPLY_BY_INPUTS = Param(True, is_bool, "multiply by (input − baseline)", "True or False")
#: windows × steps per forward of the path methods: bounded memory by default (None: Captum's
#: all-at-once, n_steps × sw_batch_size windows per forward — 7 GB for IG with 50 steps on the demo)
INTERNAL_BATCH = Param(8, lambda v: v is None or positive_int(v), "Captum internal_batch_size (windows × steps per forward)",
                       "None or a positive int")


class CaptumGradientMethod(Method):
    """A Captum attribution class applied per window batch and summed.

    Subclasses set ``captum_class``, ``params``, which of them go to the Captum
    constructor (``init_params``), which are full-size tensors to crop per window
    (``window_tensors``) and which are applied after summation (``post_params``).
    """

    family = "gradient"
    captum_class: type = Saliency
    init_params: tuple[str, ...] = ()
    window_tensors: tuple[str, ...] = ()
    post_params: tuple[str, ...] = ()

    def run(self, window_pass, inputs, options):
        total = window_pass.linear(inputs, lambda module, x, weight, crops: self.attribute_window(module, x, weight, options, crops),
                                   window_tensors={k: options[k] for k in self.window_tensors if torch.is_tensor(options.get(k))})
        return self.finalize(total, options)

    def attribute_window(self, module, x, weight, options: dict[str, Any], crops: dict[str, torch.Tensor]):
        init = {k: options[k] for k in self.init_params}
        call = {k: v for k, v in options.items() if k not in self.init_params and k not in self.post_params}
        call.update(crops)
        return self.captum_class(module, **init).attribute(x, additional_forward_args=(weight,), **self.call_kwargs(call))

    def call_kwargs(self, call: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for Captum's ``attribute`` (hook for renames)."""
        return call

    def finalize(self, total: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return total


@register
class SaliencyMethod(CaptumGradientMethod):
    name = "saliency"
    summary = "vanilla backpropagation: |∂T/∂x| (abs=False keeps the sign)"
    captum_class = Saliency
    params = {"abs": Param(True, is_bool, "absolute value of the summed gradient", "True or False")}
    post_params = ("abs",)

    def call_kwargs(self, call):
        return {**call, "abs": False}  # abs is not linear: applied once to the sum

    def finalize(self, total, options):
        return total.abs_() if options["abs"] else total  # total is the engine's own buffer


@register
class InputXGradientMethod(CaptumGradientMethod):
    name = "input_x_gradient"
    summary = "input × gradient (gradient times image)"
    captum_class = InputXGradient
    params = {}


@register
class IntegratedGradientsMethod(CaptumGradientMethod):
    name = "integrated_gradients"
    summary = "integrated gradients from a baseline (complete: Σ = T(x) − T(baseline))"
    captum_class = IntegratedGradients
    params = {
        "n_steps": Param(50, positive_int, "number of integration steps", "a positive int"),
        "method": Param("gausslegendre", one_of("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")),
        "baselines": BASELINES,
        "internal_batch_size": INTERNAL_BATCH,
        "multiply_by_inputs": MULTIPLY_BY_INPUTS,
    }
    init_params = ("multiply_by_inputs",)
    window_tensors = ("baselines",)


@register
class GuidedBackpropMethod(CaptumGradientMethod):
    name = "guided_backprop"
    summary = "guided backpropagation (needs nn.ReLU modules)"
    captum_class = GuidedBackprop
    params = {}


@register
class DeconvolutionMethod(CaptumGradientMethod):
    name = "deconvolution"
    summary = "deconvolution (Zeiler & Fergus; needs nn.ReLU modules)"
    captum_class = Deconvolution
    params = {}


@register
class DeepLiftMethod(CaptumGradientMethod):
    name = "deeplift"
    summary = "DeepLift rescale rule from a baseline (complete for ReLU networks)"
    captum_class = DeepLift
    params = {
        "baselines": BASELINES,
        "multiply_by_inputs": MULTIPLY_BY_INPUTS,
        "eps": Param(1e-10, lambda v: isinstance(v, float) and v > 0, "rescale-rule epsilon", "a positive float"),
    }
    init_params = ("multiply_by_inputs", "eps")
    window_tensors = ("baselines",)
    amp_safe = False
    amp_note = "the rescale rule divides by input differences that underflow in float16 (NaN maps seen on CUDA)"
