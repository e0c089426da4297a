"""Layer-wise relevance propagation (LRP-ε and LRP-αβ), N-dimensional, exact through windows.

The relevance at a window's output is ``output ⊙ weight``, the window's share of the target
(what :class:`~esegeta_monai.explainer.WeightedOutput` sums); it is propagated down to the input
by the rules of :mod:`esegeta_monai.methods.relevance`, and the window relevances are summed
(not blended): LRP is linear in that initial relevance, so the total is the LRP of the global
target, and on a conservative network ``Σ relevance = target``.

Conservation, stated exactly (tested): on a network without biases (convolutions, linear
layers and norms without shifts — a norm's shift is a bias) LRP-ε with ``epsilon=0`` conserves
relevance, ``Σ R = T(x)``, to float32 rounding, through windows too; the default
``epsilon=1e-6`` loses a little to the stabiliser (a relative gap of ~1e-5 on such networks,
more for small targets, whose layer outputs are small). With biases, LRP-ε gives them their
share, so ``Σ R ≠ T(x)`` by design. After each call ``method.last_report`` holds the gap per
image, ``delta`` = Σ R − T(x) and ``delta_relative`` = |delta| / |T(x)|
(:func:`~esegeta_monai.methods.gradient.completeness`), which flows into each map's record.

Rules: affine layers (convolutions, transposed convolutions, linear, average pooling) and the
additions of residual blocks get the method's rule; ReLU/LeakyReLU/PReLU pass relevance
through; max pooling is winner-take-all; concatenations route it. Normalisation layers are
per-channel affine maps ``s·x + c`` (statistics of the forward): LRP-ε applies its rule to them
(``c`` absorbs relevance), LRP-αβ passes relevance through (biases ignored). Biases absorb
relevance under LRP-ε (``Σ R_in = Σ R_out (z − b)/(z ± ε)``); LRP-αβ ignores them, so it
conserves relevance wherever each neuron has positive contributions (β = 0).

Supported networks: ``nn.Sequential`` stacks of those layers, MONAI ``UNet`` (any
``num_res_units``; ReLU/LeakyReLU/PReLU, batch or instance norm, dropout) and ``DenseNet``
(``DenseNet121``…); anything else — ``BasicUNet``, ``SegResNet``, ``UNETR``, ``SwinUNETR``,
custom ``forward`` methods, GELU, softmax, attention — is refused before anything runs, with
the first module that has no rule and the list of supported types.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    >>> x = torch.rand(1, 1, 8, 8)
    >>> relevance = Explainer(net, "lrp_epsilon", "class:1")(x)
    >>> bool(torch.isclose(relevance.sum(), net(x)[0, 1], rtol=1e-4))
    True
"""

from __future__ import annotations

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import Method, Param, non_negative_number
from esegeta_monai.methods.gradient import completeness
from esegeta_monai.methods.registry import register
from esegeta_monai.methods.relevance import AlphaBetaRules, EpsilonRules, Rules, check_supported, propagate

__all__ = ["LrpMethod", "LrpEpsilonMethod", "LrpAlphaBetaMethod"]


class LrpMethod(Method):
    """LRP through a rule set: per window, output relevance propagated to the input; summed."""

    family = "relevance"
    dims = "1D/2D/3D"
    library = "esegeta"
    amp_safe = False
    amp_note = "the rules divide by layer outputs, which is not float16-safe"

    def rules(self, options) -> Rules:  # pragma: no cover - interface
        raise NotImplementedError

    last_report: dict | None = None

    def run(self, window_pass, inputs, options):
        self.last_report = None
        check_supported(window_pass.module.network, self.name)  # once, before any window
        rules = self.rules(options)
        total = window_pass.linear(inputs, lambda module, x, weight, crops: propagate(module, x, weight, rules, self.name, True))
        self.last_report = completeness(window_pass, inputs, total, None)  # Σ R − T(x): one forward more
        return total


@register
class LrpEpsilonMethod(LrpMethod):
    name = "lrp_epsilon"
    summary = "LRP-ε (biases absorb relevance); Σ = target on bias-free networks"
    params = {"epsilon": Param(1e-6, non_negative_number, "stabiliser added to each layer's output (sign kept)", "a number ≥ 0")}

    def rules(self, options):
        return EpsilonRules(options["epsilon"])


@register
class LrpAlphaBetaMethod(LrpMethod):
    name = "lrp_alpha_beta"
    summary = "LRP-αβ (α − β = 1; biases ignored, so conservative); default α=1, β=0"
    params = {
        "alpha": Param(1.0, non_negative_number, "weight of positive contributions", "a number ≥ 1"),
        "beta": Param(0.0, non_negative_number, "weight of negative contributions", "a number ≥ 0"),
    }

    def validate(self, options):
        resolved = super().validate(options)
        if abs(resolved["alpha"] - resolved["beta"] - 1) > 1e-9:
            raise MethodError(f"method {self.name!r}: alpha − beta must be 1 (conservation), got alpha={resolved['alpha']!r}, beta={resolved['beta']!r}")
        return resolved

    def rules(self, options):
        return AlphaBetaRules(options["alpha"], options["beta"])
