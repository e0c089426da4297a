"""The public Explainer: one method, one target, exact through MONAI sliding windows.

:class:`Explainer` is the public entry point. For a batch ``x`` it

1. plans the windows as ``sliding_window_inference`` would (:mod:`esegeta_monai.core.windows`);
2. computes the target's output gradient ``G`` — from a no-grad sliding-window prediction
   when the target reads the prediction (argmax, Otsu), from the output shape otherwise;
3. lets the method drive a :class:`WindowPass`, which runs each window batch with the
   window's share ``w_p ⊙ crop_p(G / W)`` of that gradient and sums the window results
   into the volume, skipping windows whose share is zero;
4. applies the method's non-linear post-processing once, to the sum.

Parameters are frozen and the network is put in eval mode during the call (both restored
afterwards); gradients are enabled even when called under ``torch.no_grad()``.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import Explainer
    >>> from esegeta_monai.core.targets import ArgmaxRegion
    >>> net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0)
    >>> explainer = Explainer(net, "saliency", ArgmaxRegion(1), roi_size=(16, 16, 16), overlap=0.5, abs=False)
    >>> explainer(torch.rand(2, 1, 20, 24, 24)).shape
    torch.Size([2, 1, 20, 24, 24])
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor

from esegeta_monai.core.prediction import predict
from esegeta_monai.core.targets import Target, parse_targets
from esegeta_monai.core.window_pass import WeightedOutput, WindowPass, first_output, frozen_eval, with_meta_of
from esegeta_monai.core.windows import WindowPlan, plan_windows
from esegeta_monai.errors import InputError, TargetError
from esegeta_monai.methods import Method, get_method

__all__ = ["Explainer", "predict"]

logger = logging.getLogger(__name__)


class Explainer:
    """Explain ``network``'s ``target`` with ``method``, exactly through sliding windows.

    Args:
        network: a PyTorch module ``(B, C, *spatial) -> (B, K, *spatial)`` (segmentation)
            or ``(B, K)`` (classification).
        method: a registered method name (``esegeta methods``) or a :class:`Method`.
        target: a :class:`~esegeta_monai.core.targets.Target` or a spec such as ``"argmax:1"``.
        roi_size, overlap, mode, sigma_scale, padding_mode, cval, sw_batch_size: the
            sliding-window settings, as in ``monai.inferers.SlidingWindowInferer``;
            ``roi_size=None`` explains the whole image in one window.
        amp: autocast forwards (float16 on CUDA, bfloat16 on CPU); attributions are
            accumulated in float32.
        device: where to compute (default: the network's device).
        local: explain each window against its own output and blend the window maps
            with the importance map (the original TorchEsegeta behaviour; not exact).
        progress: show a tqdm bar over windows.
        timeout: seconds; the method stops within one window batch past it and raises
            :class:`~esegeta_monai.errors.MethodTimeout`.
        method_kwargs: the method's own keywords (e.g. ``abs=False``, ``n_steps=16``).

    Calling the explainer on ``x`` returns attributions shaped like ``x`` (one channel for
    CAMs); a MetaTensor input gives a MetaTensor with the same meta. ``prediction=`` reuses a
    sliding-window prediction computed elsewhere (e.g. by a bundle's evaluator).

    Layer-resolution maps (``resolution="layer"``) are on the layer's grid: ``last_scale``
    holds the factor per axis (input voxels per map voxel; ones for input-resolution maps),
    and for a MetaTensor input the map's affine is :func:`layer_affine` of the input's (its
    voxels placed in world space), with no ``applied_operations`` — it cannot be inverted
    through the preprocessing transforms, but written with its own affine it overlays the
    input in world coordinates.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        method: str | Method,
        target: Target | str,
        roi_size: Sequence[int] | int | None = None,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "gaussian",
        sw_batch_size: int = 1,
        amp: bool = False,
        device: torch.device | str | None = None,
        local: bool = False,
        progress: bool = False,
        timeout: float | None = None,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        **method_kwargs: Any,
    ):
        self.network = network
        self.method = get_method(method) if isinstance(method, str) else method
        self.options = self.method.validate(method_kwargs)
        self.target = _single_target(target)
        self.roi_size = roi_size
        self.overlap = overlap
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.padding_mode = padding_mode
        self.cval = cval
        self.sw_batch_size = int(sw_batch_size)
        self.amp = bool(amp)
        self.device = torch.device(device) if device is not None else _module_device(network)
        self.local = bool(local)
        self.progress = progress
        self.timeout = timeout
        self.last_pass: WindowPass | None = None
        self.last_scale: tuple[float, ...] | None = None
        self._output_shapes: dict[tuple, tuple[int, ...]] = {}
        if self.amp and not self.method.amp_safe:
            logger.info("%s runs its forwards in float32: %s", self.method.name, self.method.amp_note)
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be ≥ 1, got {sw_batch_size}")

    # -- public -------------------------------------------------------------------------
    def __call__(self, inputs: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        start = time.monotonic()
        with self.session(inputs, prediction) as (window_pass, x):
            attribution = self.method.run(window_pass, x, self.options).detach().float()
        self.last_pass = window_pass
        self.last_scale = window_pass.scale or (1.0,) * (x.ndim - 2)
        if not bool(torch.isfinite(attribution.amax()) & torch.isfinite(attribution.amin())):  # no volume-sized temporary
            bad = int((~torch.isfinite(attribution)).sum())
            hint = " (try without amp)" if self.amp else ""
            raise FloatingPointError(f"{self.method.name} {self.target.name}: {bad} NaN/Inf attribution values{hint}; nothing written")
        logger.debug("%s %s: %d windows in %.2fs", self.method.name, self.target.name, window_pass.windows_run, time.monotonic() - start)
        if isinstance(inputs, MetaTensor):
            return with_meta_of(attribution, inputs, self.last_scale)
        return attribution

    @contextlib.contextmanager
    def session(self, inputs: torch.Tensor, prediction: torch.Tensor | None = None):
        """The :class:`WindowPass` of ``inputs`` and the checked input tensor, with the network
        in eval mode, parameters frozen and gradients enabled (restored on exit) — what a method
        runs in; also what evaluation needs to compute the target of perturbed inputs
        (:class:`~esegeta_monai.core.windowed_target.WindowedTarget`)."""
        x = self._check_inputs(inputs)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        self.network.to(self.device)
        with frozen_eval(self.network), torch.enable_grad():
            plan = self._plan(x)
            weights = None if self.local and self.target.needs_prediction else self._output_weights(x, plan, prediction)
            yield WindowPass(
                WeightedOutput(self.network, self.target.class_index, self.amp and self.method.amp_safe),
                plan,
                self.target,
                weights,
                sw_batch_size=self.sw_batch_size,
                local=self.local,
                progress=self.progress,
                deadline=deadline,
                label=f"{self.method.name} {self.target.name}",
            ), x

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The no-grad sliding-window prediction (MONAI's ``sliding_window_inference``)."""
        x = self._check_inputs(inputs)
        self.network.to(self.device)
        with frozen_eval(self.network), torch.no_grad():
            return self._predict(x, self._plan(x))

    # -- steps --------------------------------------------------------------------------
    def _check_inputs(self, inputs) -> torch.Tensor:
        if not torch.is_tensor(inputs):
            raise InputError(f"inputs must be a torch tensor (B, C, *spatial), got {type(inputs).__name__}")
        if inputs.ndim < 3:
            raise InputError(f"inputs must be (B, C, *spatial) with at least one spatial axis, got shape {tuple(inputs.shape)}")
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.detach().to(device=self.device, dtype=torch.float32)
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"inputs contain {bad} NaN/Inf values; clean the image (or load it with nan_policy='zero')")
        return x

    def _plan(self, x: torch.Tensor) -> WindowPlan:
        return plan_windows(
            x.shape[2:], self.roi_size, self.overlap, self.mode, self.sigma_scale, self.padding_mode, self.cval, device=x.device
        )

    def _predict(self, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        return predict(
            self.network, x, plan.importance.shape[2:] if not plan.single else self.roi_size, self.sw_batch_size,
            overlap=self.overlap, mode=self.mode, sigma_scale=self.sigma_scale,
            padding_mode=self.padding_mode, cval=self.cval, amp=self.amp,
        )

    def _output_shape(self, x: torch.Tensor, plan: WindowPlan) -> tuple[int, ...]:
        """Shape of the stitched output, from one window's forward (cached)."""
        key = (tuple(x.shape[2:]), tuple(plan.importance.shape[2:]))
        if key not in self._output_shapes:
            with torch.no_grad():
                window = plan.pad_input(x[:1])[(slice(None), slice(None), *plan.slices[0])]
                self._output_shapes[key] = tuple(first_output(self.network(window)).shape[1:])
        channels_and_space = self._output_shapes[key]
        if len(channels_and_space) == 1:
            return (x.shape[0], channels_and_space[0])
        return (x.shape[0], channels_and_space[0], *x.shape[2:])

    def _output_weights(self, x: torch.Tensor, plan: WindowPlan, prediction: torch.Tensor | None) -> torch.Tensor:
        """The target's output gradient divided by MONAI's normaliser, on the padded grid."""
        if self.target.needs_prediction:
            if prediction is None:
                with torch.no_grad():
                    prediction = self._predict(x, plan)
            prediction = (prediction.as_tensor() if isinstance(prediction, MetaTensor) else prediction).to(x.device)
            output = prediction
        else:  # only the shape matters (from a given prediction, else one window's forward); an expanded zero costs no memory
            shape = tuple(prediction.shape) if prediction is not None else self._output_shape(x, plan)
            output = torch.zeros((), device=x.device).expand(shape)
        _check_output_grid(output, x, plan, self.target)
        weights = self.target.channel_weights(output)
        if output.ndim == 2:
            return weights
        if plan.single or self.local:  # local mode weights each window by its own output
            return plan.pad_output(weights)
        return plan.pad_output(weights).div_(plan.normaliser())  # channel_weights gave a fresh tensor


def _check_output_grid(output: torch.Tensor, x: torch.Tensor, plan: WindowPlan, target: Target) -> None:
    if output.shape[0] != x.shape[0]:
        raise TargetError(f"{target.name}: prediction has batch {output.shape[0]}, inputs have {x.shape[0]}")
    if output.ndim == 2:
        if not plan.single:
            raise TargetError(
                f"{target.name}: the network returns one vector per image (a classifier); explain it "
                "with roi_size=None (whole image), not through sliding windows"
            )
        return
    if tuple(output.shape[2:]) != tuple(x.shape[2:]):
        raise TargetError(
            f"{target.name}: output spatial shape {tuple(output.shape[2:])} differs from the input's "
            f"{tuple(x.shape[2:])}; networks that change resolution are not supported yet"
        )


def _single_target(target) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        targets = parse_targets(target)
        if len(targets) != 1:
            raise TargetError(f"target {target!r} names {len(targets)} classes; an Explainer explains one — loop over parse_targets()")
        return targets[0]
    raise TargetError(f"target must be a Target or a spec like 'argmax:1', got {type(target).__name__}")


def _module_device(network: torch.nn.Module) -> torch.device:
    for parameter in network.parameters():
        return parameter.device
    return torch.device("cpu")

