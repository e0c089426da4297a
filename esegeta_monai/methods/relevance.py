"""Relevance propagation through a network's backward pass, shared by LRP and excitation backprop.

For the duration of one forward/backward, :class:`Propagation` attaches a forward hook to every
layer that has a rule: the hook replaces the layer's output by the same values whose backward
is the rule (the "gradient trick"), so that ``torch.autograd.grad`` of the output with the
initial relevance yields the propagated relevance at the input (or at any layer). A rule set
(:class:`Rules`) says how relevance crosses each kind of layer:

- *affine* layers — ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``, ``AvgPool*``,
  ``AdaptiveAvgPool*`` — and the element-wise *additions* of residual blocks (an affine map
  with unit weights, no bias) get the method's rule;
- *normalisation* layers — ``BatchNorm*`` (running statistics) and ``InstanceNorm*`` — are
  per-channel affine maps ``z = s·x + c`` with the statistics frozen at the forward pass;
- *activations* — ``ReLU``, ``LeakyReLU``, ``PReLU`` — pass relevance through unchanged or
  as the gradient does, as the rule set says;
- *routing* layers — ``MaxPool*``/``AdaptiveMaxPool*`` (winner-take-all), ``Flatten``,
  ``Dropout*`` (eval), ``Identity``, concatenations — keep their gradient, which routes
  relevance without changing it.

Every module of the network must be one of these, or a container whose forward is known
(``nn.Sequential``, MONAI ``UNet``, ``Convolution``, ``ADN``, ``ResidualUnit`` (addition),
``SkipConnection`` (``cat`` or ``add``), ``DenseNet``/``DenseNet121`` and its dense layers):
:func:`check_supported` refuses any other module by name before anything runs, so that no
operation escapes its rule silently.

Example:
    >>> import torch
    >>> from esegeta_monai.methods.relevance import Propagation, EpsilonRules
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.ReLU(), torch.nn.Linear(2, 1, bias=False))
    >>> x = torch.rand(1, 3, requires_grad=True)
    >>> with Propagation(net, EpsilonRules(1e-9)):
    ...     y = net(x)
    ...     (relevance,) = torch.autograd.grad(y, x, y.detach())
    >>> torch.allclose(relevance.sum(), y.sum())
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.networks.blocks import ADN, Convolution, ResidualUnit
from monai.networks.layers.simplelayers import Flatten as MonaiFlatten
from monai.networks.layers.simplelayers import Reshape as MonaiReshape
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from monai.networks.nets.densenet import DenseNet, _DenseLayer
from torch import nn
from torch.func import functional_call

from esegeta_monai.core.window_pass import first_output
from esegeta_monai.errors import MethodError

__all__ = [
    "Affine", "AlphaBetaRules", "EpsilonRules", "ExcitationRules", "Propagation", "Rules",
    "captured_output", "check_supported", "output_seed", "propagate", "redistribute", "supported_types",
]

AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
          nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
ROUTING = (nn.Identity, nn.Flatten, nn.Unflatten, MonaiFlatten, MonaiReshape, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
           nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
           nn.AdaptiveMaxPool3d)
#: containers whose forward only chains, concatenates or reshapes their children
CONTAINERS = (nn.Sequential, Convolution, ADN, UNet, DenseNet, _DenseLayer)
#: containers whose output is the sum of these operands ("input": the container's input)
ADDITIONS: dict[type, Callable[[nn.Module], tuple[str, ...]]] = {
    ResidualUnit: lambda module: ("conv", "residual"),
    SkipConnection: lambda module: ("input", "submodule"),
}


def supported_types() -> list[str]:
    """Names of the module types the relevance rules cover (containers included)."""
    types = (*AFFINE, *NORMS, *ACTIVATIONS, *ROUTING, *CONTAINERS, *ADDITIONS)
    return sorted({t.__name__ for t in types})


def _kind(module: nn.Module) -> str | None:
    """``affine``, ``norm``, ``activation``, ``routing``, ``addition`` or None (no rule)."""
    kind = type(module)
    if kind in AFFINE:
        return "affine"
    if kind in NORMS:
        return "norm"
    if kind in ACTIVATIONS:
        return "activation"
    if kind in ROUTING or kind in CONTAINERS:
        return "routing"
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        return "routing"
    if kind is SkipConnection:
        return {"cat": "routing", "add": "addition"}.get(module.mode)
    if kind is ResidualUnit:
        return "addition"
    return None


def check_supported(network: nn.Module, method: str) -> None:
    """Raise :class:`MethodError` naming the first module without a rule."""
    for name, module in network.named_modules():
        kind = _kind(module)
        if kind is None:
            mode = f" (mode {module.mode!r})" if isinstance(module, SkipConnection) else ""
            raise MethodError(
                f"{method}: no relevance rule for {type(module).__name__}{mode} (module {name or '<network>'!r}); "
                f"supported module types: {', '.join(supported_types())}"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is None:
            raise MethodError(f"{method}: BatchNorm {name!r} has no running statistics (track_running_stats=False); not supported")


# -- the arithmetic of the rules --------------------------------------------------------------

def _divide(numerator: torch.Tensor, denominator: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """``numerator / (denominator ± epsilon)`` (sign of the denominator), 0 where that is 0."""
    if epsilon:
        denominator = denominator + epsilon * torch.where(denominator >= 0, 1.0, -1.0).to(denominator.dtype)
    zero = denominator == 0
    return torch.where(zero, 0.0, numerator / torch.where(zero, 1.0, denominator))


def redistribute(fn: Callable, inputs: Sequence[torch.Tensor], relevance: torch.Tensor, epsilon: float = 0.0):
    """Split ``relevance`` over the inputs of the affine map ``z = fn(*inputs)`` in proportion
    to their contributions: ``R_k = x_k ⊙ ∂z/∂x_kᵀ (R / (z ± ε))``, one tensor per input."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        z = fn(*leaves)
        shares = _divide(relevance, z.detach(), epsilon)
        grads = torch.autograd.grad(z, leaves, shares, allow_unused=True)
    return tuple(x.detach() * g if g is not None else torch.zeros_like(x) for x, g in zip(inputs, grads))


@dataclass(frozen=True)
class Affine:
    """An affine map as evaluated (``full``, with its bias) and its positive- and
    negative-weight linear parts without bias (``negative`` None: no negative weights)."""

    full: Callable
    positive: Callable
    negative: Callable | None


def _sum(*xs):
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


ADDITION = Affine(_sum, _sum, None)


class Rules:
    """How relevance crosses affine layers and additions, norms and activations."""

    #: activations pass relevance unchanged (LRP); False: their ordinary gradient (TorchRay's EB)
    activation_pass_through = True

    def affine(self, module: nn.Module | None, layer: Affine, inputs, relevance) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def norm(self, layer: Affine, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """Default: relevance passes through the per-channel affine map unchanged."""
        return relevance


class EpsilonRules(Rules):
    """LRP-ε: contributions over the stabilised output, biases included (they absorb relevance)."""

    def __init__(self, epsilon: float):
        self.epsilon = float(epsilon)

    def affine(self, module, layer, inputs, relevance):
        return redistribute(layer.full, inputs, relevance, self.epsilon)

    def norm(self, layer, x, relevance):
        return redistribute(layer.full, [x], relevance, self.epsilon)[0]


class AlphaBetaRules(Rules):
    """LRP-αβ on weighted layers: ``α·(positive share) − β·(negative share)``, biases ignored, so
    a layer conserves relevance wherever it has both kinds of contribution (β = 0: positive
    ones). Pooling and additions (no negative weights) split relevance in proportion to the
    contributions, which conserves it whatever α."""

    def __init__(self, alpha: float, beta: float):
        self.alpha, self.beta = float(alpha), float(beta)

    def affine(self, module, layer, inputs, relevance):
        if layer.negative is None:  # pooling, additions: unit or non-negative weights, no bias
            return redistribute(layer.full, inputs, relevance)
        positives = [x.clamp(min=0) for x in inputs]
        negatives = [x.clamp(max=0) for x in inputs]
        if not any(bool(x.any()) for x in negatives):  # after a ReLU: no x⁻ terms to compute
            negatives = None
        excited = _share(layer.positive, layer.negative, positives, negatives, relevance)
        if not self.beta:
            return tuple(self.alpha * r for r in excited)
        inhibited = _share(layer.negative, layer.positive, positives, negatives, relevance)
        return tuple(self.alpha * r - self.beta * q for r, q in zip(excited, inhibited))


def _share(first: Callable, second: Callable, positives, negatives, relevance) -> tuple[torch.Tensor, ...]:
    """Relevance split over one sign class of contributions, ``first(x⁺) + second(x⁻)``."""
    if negatives is None:
        return redistribute(first, positives, relevance)
    n = len(positives)
    both = redistribute(lambda *xs: first(*xs[:n]) + second(*xs[n:]), positives + negatives, relevance)
    return tuple(both[k] + both[n + k] for k in range(n))


class ExcitationRules(Rules):
    """Excitation backprop (Zhang et al. 2016): ``P_in = x ⊙ W⁺ᵀ (P / W⁺x)``, biases ignored;
    layers in ``negated`` use ``(−W)⁺`` (contrastive EB's dual classifier)."""

    activation_pass_through = False

    def __init__(self):
        self.negated: set[nn.Module] = set()

    def affine(self, module, layer, inputs, relevance):
        positive = layer.positive
        if module in self.negated:  # (−W)⁺ = −W⁻ (a weighted layer: the classifier)
            positive = lambda *xs: -layer.negative(*xs)  # noqa: E731
        return redistribute(positive, inputs, relevance)

    @contextlib.contextmanager
    def negating(self, module: nn.Module):
        self.negated.add(module)
        try:
            yield
        finally:
            self.negated.discard(module)


# -- attaching the rules ----------------------------------------------------------------------

class _Relay(torch.autograd.Function):
    """Forward: the layer's own output values; backward: the rule's relevance for each input."""

    @staticmethod
    def forward(ctx, backward, output, *inputs):
        ctx.rule = backward
        ctx.save_for_backward(*inputs)
        return output.clone()

    @staticmethod
    def backward(ctx, relevance):
        return (None, None, *ctx.rule(ctx.saved_tensors, relevance))


def _with_weight(module: nn.Module, weight: torch.Tensor) -> Callable:
    params = {"weight": weight}
    if getattr(module, "bias", None) is not None:
        params["bias"] = torch.zeros_like(module.bias)
    return lambda x: functional_call(module, params, (x,))


def _layer_affine(module: nn.Module) -> Affine:
    weight = getattr(module, "weight", None)
    if weight is None:  # pooling: non-negative weights, no bias
        return Affine(module.forward, module.forward, None)
    return Affine(module.forward, _with_weight(module, weight.clamp(min=0)), _with_weight(module, weight.clamp(max=0)))


def _norm_affine(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> Affine:
    """``z = s·x + c`` with the statistics of this forward (running ones when used)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if module.running_var is None or module.training:  # InstanceNorm on its own statistics (networks run in eval mode)
        variance = x.detach().var(dim=tuple(range(2, x.ndim)), unbiased=False, keepdim=True)
    else:
        variance = module.running_var.view(shape)
    scale = (variance + module.eps).rsqrt()
    if module.weight is not None:
        scale = scale * module.weight.view(shape)
    shift = output.detach() - scale * x.detach()
    return Affine(lambda t: t * scale + shift, lambda t: t * scale, None)


class Propagation:
    """Context manager: while active, ``network``'s backward propagates relevance by ``rules``.

    Layers called while the context is *suspended* (inside a rule) run unhooked. In-place
    activations are switched off for the duration. ``capture(module)`` records a module's
    output (after its rule), for maps at a layer.
    """

    def __init__(self, network: nn.Module, rules: Rules, method: str = "relevance propagation"):
        self.network = network
        self.rules = rules
        self.method = method
        self.captured: dict[nn.Module, torch.Tensor] = {}
        self._handles: list = []
        self._inplace: list[nn.Module] = []
        self._suspended = 0

    def __enter__(self):
        check_supported(self.network, self.method)
        modules = list(self.network.modules())
        try:
            for module in modules:
                hook = self._hook_for(module)
                if hook is not None:
                    self._handles.append(module.register_forward_hook(hook))
            for module in modules:  # after the rules: records outputs as the rules replaced them
                self._handles.append(module.register_forward_hook(self._record))
                if getattr(module, "inplace", False):
                    module.inplace = False
                    self._inplace.append(module)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        for module in self._inplace:
            module.inplace = True
        self._handles, self._inplace = [], []
        self.captured.clear()
        return False

    @contextlib.contextmanager
    def _suspend(self):
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def _record(self, module, args, output):
        if not self._suspended:
            self.captured[module] = output

    def _hook_for(self, module: nn.Module):
        kind = _kind(module)
        if kind == "affine":
            return self._affine_hook
        if kind == "norm":
            return self._norm_hook
        if kind == "activation" and self.rules.activation_pass_through:
            return self._pass_hook
        if kind == "addition":
            return self._addition_hook
        return None

    def _relay(self, rule: Callable, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        def backward(saved, relevance):
            with self._suspend():
                return rule(saved, relevance)

        return _Relay.apply(backward, output.detach(), *inputs)

    def _affine_hook(self, module, args, output):
        if self._suspended:
            return None
        layer = _layer_affine(module)
        return self._relay(lambda saved, r: self.rules.affine(module, layer, saved, r), output, args[0])

    def _norm_hook(self, module, args, output):
        if self._suspended:
            return None
        layer = _norm_affine(module, args[0], output)
        return self._relay(lambda saved, r: (self.rules.norm(layer, saved[0], r),), output, args[0])

    def _pass_hook(self, module, args, output):
        if self._suspended:
            return None
        return self._relay(lambda saved, r: (r,), output, args[0])

    def _addition_hook(self, module, args, output):
        if self._suspended:
            return None
        names = ADDITIONS[type(module)](module)
        operands = [args[0] if name == "input" else self.captured[getattr(module, name)] for name in names]
        return self._relay(lambda saved, r: self.rules.affine(None, ADDITION, saved, r), output, *operands)


def output_seed(output: torch.Tensor, channel: int, weight: torch.Tensor, times_output: bool) -> torch.Tensor:
    """The initial signal at the network output: the window's weights on the target channel
    (excitation backprop), times the output itself (LRP: the window's share of the target)."""
    seed = torch.zeros_like(output)
    share = weight.to(output.dtype)
    if times_output:
        share = share * output[:, channel : channel + 1].detach()
    seed[:, channel : channel + 1] = share
    return seed


def captured_output(propagation: Propagation, layer: nn.Module, name: str) -> torch.Tensor:
    """The output of ``layer`` in the last forward (as its rule replaced it)."""
    output = propagation.captured.get(layer)
    if not torch.is_tensor(output) or not output.requires_grad:
        raise MethodError(f"layer {name!r} was not used by the forward or does not depend on the input; pick another layer")
    return output


def propagate(module, x: torch.Tensor, weight: torch.Tensor, rules: Rules, method: str, times_output: bool,
              layer: nn.Module | None = None, layer_name: str = "") -> torch.Tensor:
    """One window batch: the signal propagated from the output seed (:func:`output_seed`) down
    to the input ``x``, or to the output of ``layer``. ``module`` is the engine's
    :class:`~esegeta_monai.explainer.WeightedOutput` (network and target channel)."""
    with Propagation(module.network, rules, method) as propagation:
        output = first_output(module.network(x))
        seed = output_seed(output, module.channel, weight, times_output)
        at = x if layer is None else captured_output(propagation, layer, layer_name)
        (signal,) = torch.autograd.grad(output, at, seed)
    return signal
