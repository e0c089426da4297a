"""Gradient-family methods through Captum, exact through sliding windows.

Each of these methods is linear in the output gradient, so it runs per window batch on
the module ``(net(x_win) * C_win).sum(spatial)`` — ``C_win`` being the window's share of
the target's output gradient, passed through Captum's ``additional_forward_args`` so that
Captum expands it for its steps — and the window attributions are summed into the volume
(DESIGN.md §2). Non-linear post-processing (``abs``) is applied once, to the sum.

Gauss–Legendre steps (``method="gausslegendre"``, the default of the path methods) come from
:func:`gauss_legendre`, cached per step count and lent to Captum for the length of a run
(:func:`captum_steps`): Captum's own rule (numpy's ``leggauss``) costs O(n³) — 0.5 s for 1000
steps, tens of seconds for 3000, computed twice per window batch and beyond the reach of the
time budget; this one is numpy's up to 256 steps (the same values) and Newton's iteration above
that (O(n²), checked against the budget).

Completeness is reported, not assumed: integrated gradients and DeepLift should sum to
``T(x) − T(baseline)``; after each call ``method.last_report`` holds the gap per image
(:func:`completeness`: ``delta``, Captum's convergence delta, and ``delta_relative``), which
flows into each map's record. How small it is depends on the network and, for integrated
gradients, on ``n_steps``: instance norm (MONAI ``UNet``'s default) makes the network nearly
invariant to the input's scale, so the straight path from a zero baseline is flat except at
scales far below the first quadrature node — the gap stays large whatever the step count
(35 % at 16 steps, 28 % at 128 on the README's UNet with random weights, 32³, as in Captum; with
batch norm, 7e-5: float32 rounding; tested). DeepLift is complete for ReLU networks without
instance or group norm (batch norm in eval is an affine map: gap 4e-8); with instance norm it is
not (92 %; tested). Each gap costs two forwards through the windows (``x`` and the baseline).

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import Explainer
    >>> from esegeta_monai.core.targets import MaskRegion
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    >>> target = MaskRegion(1, box=[(4, 12), (4, 12)])
    >>> attr = Explainer(net, "integrated_gradients", target, n_steps=8)(torch.rand(1, 1, 16, 16))
    >>> attr.shape
    torch.Size([1, 1, 16, 16])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)

from esegeta_monai.core.windowed_target import WindowedTarget
from esegeta_monai.methods.base import Method, Param, is_bool, one_of, positive_int
from esegeta_monai.methods.registry import register

__all__ = ["CaptumGradientMethod", "PathMethod", "gauss_legendre", "captum_steps", "completeness"]

#: up to this many steps numpy's ``leggauss`` (Captum's rule) is cheap and used as is
_NUMPY_STEPS = 256
_RULES: dict[int, tuple[list[float], list[float]]] = {}  # a few step counts: memory n floats each


def gauss_legendre(n: int, check: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Captum's Gauss–Legendre rule on [0, 1] with ``n`` steps: ``(step sizes, alphas)``, cached.

    Numpy's ``leggauss`` (what Captum calls) up to 256 steps; above, Newton's iteration on the
    Legendre polynomial from Tricomi's approximation of the nodes (O(n²): about 0.2 s for 3000
    steps, against numpy's tens of seconds; nodes within 1e-15 of numpy's, weights within 1e-8
    of numpy's and closer to the exact ones at the ends). ``check`` (a time budget) is called
    every 512 steps of the recurrence. Returns new lists.

    Example:
        >>> sizes, alphas = gauss_legendre(3)
        >>> [round(a, 4) for a in alphas], round(sum(sizes), 12)
        ([0.1127, 0.5, 0.8873], 1.0)
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"the number of steps must be positive, got {n}")
    if n not in _RULES:
        nodes, weights = np.polynomial.legendre.leggauss(n) if n <= _NUMPY_STEPS else _newton_legendre(n, check)
        if len(_RULES) >= 8:
            _RULES.pop(next(iter(_RULES)))
        _RULES[n] = ((0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist())
    sizes, alphas = _RULES[n]
    return list(sizes), list(alphas)


def _newton_legendre(n: int, check: Callable[[], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of the ``n``-point Gauss–Legendre rule on [-1, 1]."""
    k = np.arange(1, (n + 1) // 2 + 1, dtype=np.float64)  # the non-negative half, from the largest node
    x = (1 - (n - 1) / (8.0 * n**3)) * np.cos(math.pi * (4 * k - 1) / (4 * n + 2))
    for _ in range(20):
        value, derivative = _legendre(n, x, check)
        step = value / derivative
        x = x - step
        if np.abs(step).max() <= 4e-16:  # converged: the derivative at x is exact to rounding
            break
    weights = 2 / ((1 - x * x) * derivative * derivative)
    if n % 2:  # the middle node is 0
        x[-1] = 0.0
        nodes, weights = np.concatenate([-x, x[-2::-1]]), np.concatenate([weights, weights[-2::-1]])
    else:
        nodes, weights = np.concatenate([-x, x[::-1]]), np.concatenate([weights, weights[::-1]])
    return nodes, weights


def _legendre(n: int, x: np.ndarray, check: Callable[[], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """``P_n(x)`` and ``P_n'(x)`` by the three-term recurrence (|x| < 1)."""
    previous, value = np.ones_like(x), x.copy()
    for j in range(2, n + 1):
        previous, value = value, ((2 * j - 1) * x * value - (j - 1) * previous) / j
        if check is not None and j % 512 == 0:
            check()
    return value, n * (x * value - previous) / (x * x - 1)


@contextlib.contextmanager
def captum_steps(window_pass, options: dict[str, Any]) -> Iterator[None]:
    """For the length of a path method's run: its Gauss–Legendre rule computed (and cached) within
    the call's time budget, and Captum's ``gausslegendre`` steps taken from :func:`gauss_legendre`
    (the same rule, O(n²)); Captum's own rule is put back afterwards, so other uses of Captum in
    the process are not touched. A Captum without that hook keeps its own rule."""
    try:
        from captum.attr._utils import approximation_methods
    except ImportError:  # pragma: no cover - Captum moved its internals
        approximation_methods = None
    original = getattr(approximation_methods, "gauss_legendre_builders", None)
    if options.get("method") != "gausslegendre" or not callable(original):
        yield
        return
    deadline = getattr(window_pass, "deadline", None)
    check = (lambda: deadline.check(f"computing {options['n_steps']} Gauss–Legendre steps")) if deadline is not None else None
    gauss_legendre(options["n_steps"], check)

    def builders():
        return (lambda n: gauss_legendre(n)[0]), (lambda n: gauss_legendre(n)[1])

    approximation_methods.gauss_legendre_builders = builders
    try:
        yield
    finally:
        approximation_methods.gauss_legendre_builders = original


def completeness(window_pass, inputs: torch.Tensor, attribution: torch.Tensor, baselines=0.0) -> dict:
    """The completeness gap of a map that should sum to ``T(x) − T(baseline)`` (``baselines=None``:
    to ``T(x)``, as LRP), per image: ``delta`` = Σ attribution − (T(x) − T(baseline)) — Captum's
    convergence delta, with the same sign — and ``delta_relative`` = |delta| / |T(x) − T(baseline)|
    (None where that is 0). ``T`` is evaluated through the call's windows with the target's mask
    held fixed (:class:`~esegeta_monai.core.windowed_target.WindowedTarget`: one forward per
    window reaching the target, for ``x`` and for the baseline). Empty in local mode, where each
    window has its own target.

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1, bias=False))
        >>> explainer = Explainer(net, "deeplift", "class:1")
        >>> _ = explainer(torch.rand(1, 1, 8, 8))
        >>> abs(explainer.method.last_report["delta_relative"][0]) < 1e-5
        True
    """
    if window_pass.local:
        return {}
    target = WindowedTarget(window_pass, inputs)
    difference = target.clean.clone()
    if baselines is not None:
        reference = torch.broadcast_to(torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device), inputs.shape)
        difference -= target(reference.contiguous()).double()
    delta = attribution.double().flatten(1).sum(1) - difference
    relative = [abs(d) / abs(t) if t != 0 else None for d, t in zip(delta.tolist(), difference.tolist())]
    return {"delta": delta.tolist(), "delta_relative": relative}


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
        with captum_steps(window_pass, options):
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


class PathMethod(CaptumGradientMethod):
    """A method whose map should sum to ``T(x) − T(baseline)``: after each call ``last_report``
    holds its :func:`completeness` gap (None with ``multiply_by_inputs=False``, which has no
    such sum). A number as baseline is made a tensor, so that where the windows pad the image
    the baseline is padded as the image is (the path stays on the padded image's values there)."""

    last_report: dict | None = None

    def run(self, window_pass, inputs, options):
        self.last_report = None
        if isinstance(options.get("baselines"), (int, float)):
            options = {**options, "baselines": torch.tensor(float(options["baselines"]))}
        total = super().run(window_pass, inputs, options)
        if options["multiply_by_inputs"]:
            baselines = options["baselines"] if options["baselines"] is not None else 0.0
            self.last_report = completeness(window_pass, inputs, total, baselines)
        return total


@register
class IntegratedGradientsMethod(PathMethod):
    name = "integrated_gradients"
    summary = "integrated gradients from a baseline; completeness gap reported as delta (depends on n_steps and network)"
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
class DeepLiftMethod(PathMethod):
    name = "deeplift"
    summary = "DeepLift rescale rule from a baseline (complete for ReLU networks without instance/group norm; gap reported as delta)"
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
