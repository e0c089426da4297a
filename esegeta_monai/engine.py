"""The attribution engine: one method, one target, exact through MONAI sliding windows.

:class:`Explainer` is the public entry point. For a batch ``x`` it

1. plans the windows as ``sliding_window_inference`` would (:mod:`esegeta_monai.windows`);
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
    >>> from esegeta_monai.targets import ArgmaxRegion
    >>> net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0)
    >>> explainer = Explainer(net, "saliency", ArgmaxRegion(1), roi_size=(16, 16, 16), overlap=0.5, abs=False)
    >>> explainer(torch.rand(2, 1, 20, 24, 24)).shape
    torch.Size([2, 1, 20, 24, 24])
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from esegeta_monai.errors import InputError, MethodError, MethodTimeout, TargetError
from esegeta_monai.methods import Method, get_method
from esegeta_monai.targets import Target, parse_targets
from esegeta_monai.windows import WindowPlan, layer_affine, layer_grid, plan_windows

__all__ = ["Explainer", "WindowPass", "first_output", "frozen_eval", "layer_affine", "layer_grid", "predict", "with_meta_of"]

logger = logging.getLogger(__name__)


def first_output(output):
    """The first tensor of a network output (tensor, tuple/list or dict, e.g. deep supervision)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, dict):
        return first_output(next(iter(output.values())))
    if isinstance(output, (list, tuple)) and output:
        return first_output(output[0])
    raise TypeError(f"network returned {type(output).__name__}, expected a tensor")


@contextlib.contextmanager
def frozen_eval(network: torch.nn.Module):
    """Eval mode and ``requires_grad=False`` on every parameter, restored on exit."""
    was_training = network.training
    flags = [(p, p.requires_grad) for p in network.parameters()]
    network.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield network
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        network.train(was_training)


def amp_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, bfloat16 elsewhere (CPU autocast supports bfloat16)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


class WeightedOutput(torch.nn.Module):
    """``x, C -> Σ_spatial net(x)[:, c] ⊙ C``: one scalar per window, what Captum attributes.

    ``C`` holds the weights of the target's class channel ``c`` only (the other channels'
    weights are zero). The forward runs under autocast when ``amp`` is set; the product is
    taken in float32.
    """

    def __init__(self, network: torch.nn.Module, channel: int, amp: bool = False):
        super().__init__()
        self.network = network
        self.channel = int(channel)
        self.amp = amp

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=self.amp):
            output = first_output(self.network(x))
        return (output[:, self.channel : self.channel + 1].float() * weight).flatten(1).sum(1)


WindowFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, dict], torch.Tensor]


class WindowPass:
    """Runs a linear window function over every window of one batch and sums the results.

    ``linear(inputs, window_fn)`` calls ``window_fn(module, x_win, weight_win, crops)``
    for each batch of windows, where ``module(x_win, weight_win)`` is the window's share
    of the target and ``crops`` holds the window crops of full-size tensors (baselines).
    It returns the summed attribution on the unpadded input grid.

    Blended window results may lie on a coarser grid than the window (a layer's own grid,
    ``resolution="layer"``): they are then blended on that grid (:func:`layer_grid`), and
    ``scale`` records the factor per axis (input voxels per map voxel; ones when the results
    are on the input grid, None before any window ran).
    """

    def __init__(
        self,
        module: WeightedOutput,
        plan: WindowPlan,
        target: Target,
        output_weights: torch.Tensor | None,
        sw_batch_size: int = 1,
        local: bool = False,
        progress: bool = False,
        deadline: float | None = None,
        label: str = "",
    ):
        self.module = module
        self.plan = plan
        self.target = target
        self.output_weights = output_weights  # class channel of G / W on the padded grid, (B, 1, ...)
        self.sw_batch_size = max(int(sw_batch_size), 1)
        self.local = local
        self.progress = progress
        self.deadline = deadline
        self.label = label
        self.windows_run = 0
        self.scale: tuple[float, ...] | None = None
        self._active: dict[int, list] = {}  # batch size -> windows reaching the target

    def active_windows(self, batch: int) -> list[tuple[int, tuple[slice, ...]]]:
        """The (sample, window) pairs whose share of the target is not zero; computed once per
        call, though noise-tunnel and SHAP methods run several passes."""
        if batch not in self._active:
            pairs = [(b, window) for b in range(batch) for window in self.plan.slices]
            if self.output_weights is not None and self.output_weights.ndim != 2:
                # one transfer of the support to the CPU, not one device sync per window
                support = (self.output_weights[:, 0] != 0).cpu().numpy()
                pairs = [(b, w) for b, w in pairs if support[(b, *w)].any()]
            self._active[batch] = pairs
        return self._active[batch]

    def _groups(self, pairs):
        size = len(pairs) if self.plan.single else self.sw_batch_size
        for start in range(0, len(pairs), size):
            yield pairs[start : start + size]

    def check_deadline(self, done: int, total: int) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise MethodTimeout(f"{self.label}: time budget exceeded after {done}/{total} window batches")

    def linear(self, inputs: torch.Tensor, window_fn: WindowFn, window_tensors: dict[str, torch.Tensor] | None = None,
               blend: bool = False):
        """Sum ``window_fn``'s window results into the volume (``blend=True``: weight each by
        the importance map and divide by ``W``, as the prediction is blended — for maps that
        are not linear in the output gradient, such as CAMs; such maps may be on a layer's
        coarser grid). Returns the unpadded result."""
        plan = grid = self.plan
        blend = blend or self.local
        padded = plan.pad_input(inputs)
        full = {k: plan.pad_input(_expand_like(v, inputs)) for k, v in (window_tensors or {}).items()}
        total = None
        pairs = self.active_windows(inputs.shape[0])
        groups = list(self._groups(pairs))
        window_importance = plan.window_weights(padded.device)
        bar = tqdm(total=len(pairs), desc=self.label or "windows", unit="win", disable=not self.progress, leave=False)
        try:
            for done, group in enumerate(groups):
                self.check_deadline(done, len(groups))
                x_win = _gather(padded, group).requires_grad_(True)
                crops = {k: _gather(v, group) for k, v in full.items()}
                weight = self.window_weights_of(x_win, group, window_importance)
                attribution = window_fn(self.module, x_win, weight, crops).float()
                if total is None:
                    grid, on_grid = self._result_grid(attribution, x_win, blend)
                    importance = grid.window_weights(padded.device)
                    total = torch.zeros((padded.shape[0], attribution.shape[1], *grid.padded_shape), dtype=torch.float32, device=padded.device)
                if blend:
                    attribution = attribution * importance
                for (b, window), value in zip(group, attribution):
                    total[(slice(b, b + 1), slice(None), *on_grid[_starts(window)])] += value
                self.windows_run += len(group)
                bar.update(len(group))
        finally:
            bar.close()
        if total is None:  # no window reaches the target
            total = torch.zeros(padded.shape, dtype=torch.float32, device=padded.device)
        if blend:
            return grid.unpad(total.div_(grid.normaliser()))
        return self._unpad(total, inputs)

    def _result_grid(self, attribution, x_win, blend: bool):
        """The plan on the grid of the window results, and each window's slices on it by the
        window's start; sets ``scale``."""
        plan, ndim = self.plan, x_win.ndim - 2
        if tuple(attribution.shape[2:]) == tuple(x_win.shape[2:]):
            self.scale = (1.0,) * ndim
            grid = plan
        elif not blend or attribution.ndim != x_win.ndim:
            raise MethodError(f"{self.label}: a window result of shape {tuple(attribution.shape)} does not match its window "
                              f"{tuple(x_win.shape)}; only blended maps may be on a layer's grid")
        else:
            grid, self.scale = layer_grid(plan, attribution.shape[2:])
        return grid, {_starts(w): g for w, g in zip(plan.slices, grid.slices)}

    def window_weights_of(self, x_win, group, importance):
        """The target's output weights of a batch of (image, window) pairs: their share of the
        output gradient (importance-weighted), or in local mode from their own output."""
        if not self.local:
            if self.output_weights.ndim == 2:  # classification: (B, 1)
                return self.output_weights[[b for b, _ in group]]
            return _gather(self.output_weights, group) * importance  # ones for a single window
        # local: each window against its own output (TorchEsegeta's patch behaviour)
        if self.target.needs_prediction:
            with torch.no_grad():
                return self.target.channel_weights(first_output(self.module.network(x_win)).float())
        return _gather(self.output_weights, group)

    def _unpad(self, total: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if not any(plan.pad):
            return total
        if plan.padding_mode == "constant":
            return plan.unpad(total)
        # adjoint of a reflect/replicate/circular pad: gradient of the pad itself
        with torch.enable_grad():
            probe = torch.zeros_like(inputs, dtype=torch.float32, requires_grad=True)
            (adjoint,) = torch.autograd.grad(plan.pad_input(probe), probe, grad_outputs=total)
        return adjoint


def _starts(window: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(int(s.start) for s in window)


def _gather(volume: torch.Tensor, group) -> torch.Tensor:
    return torch.cat([volume[(slice(b, b + 1), slice(None), *window)] for b, window in group])


def _expand_like(value: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    value = value.to(device=inputs.device, dtype=inputs.dtype)
    try:
        return torch.broadcast_to(value, inputs.shape)
    except RuntimeError:
        raise InputError(f"a tensor argument of shape {tuple(value.shape)} does not broadcast to the input {tuple(inputs.shape)}") from None


def predict(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    amp: bool = False,
) -> torch.Tensor:
    """No-grad prediction with MONAI's ``sliding_window_inference`` (or one whole-image
    forward when the window covers the input), in float32, autocast when ``amp``.

    Example:
        >>> import torch
        >>> from esegeta_monai.engine import predict
        >>> predict(torch.nn.Conv3d(1, 2, 1), torch.rand(1, 1, 8, 8, 8), roi_size=(4, 4, 4)).shape
        torch.Size([1, 2, 8, 8, 8])
    """
    x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs

    def predictor(window):
        with torch.autocast(window.device.type, dtype=amp_dtype(window.device), enabled=amp):
            return first_output(network(window)).float()

    with torch.no_grad():
        plan = plan_windows(x.shape[2:], roi_size, overlap, mode, sigma_scale, padding_mode, cval, device=x.device)
        if plan.single and not any(plan.pad):
            return predictor(x)
        return sliding_window_inference(
            x, plan.importance.shape[2:], sw_batch_size, predictor, overlap=overlap, mode=mode,
            sigma_scale=sigma_scale, padding_mode=padding_mode, cval=cval,
        )


class Explainer:
    """Explain ``network``'s ``target`` with ``method``, exactly through sliding windows.

    Args:
        network: a PyTorch module ``(B, C, *spatial) -> (B, K, *spatial)`` (segmentation)
            or ``(B, K)`` (classification).
        method: a registered method name (``esegeta methods``) or a :class:`Method`.
        target: a :class:`~esegeta_monai.targets.Target` or a spec such as ``"argmax:1"``.
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
        (:class:`~esegeta_monai.perturbation.WindowedTarget`)."""
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


def with_meta_of(attribution: torch.Tensor, inputs: MetaTensor, scale: Sequence[float] | None = None) -> MetaTensor:
    """``attribution`` as a MetaTensor carrying the meta (batched or not) and the
    ``applied_operations`` of ``inputs``; a layer-grid map (``scale`` not ones) gets
    :func:`layer_affine` and no ``applied_operations`` (the preprocessing's inverses do not
    apply to its grid)."""
    out = MetaTensor(attribution.as_tensor() if isinstance(attribution, MetaTensor) else attribution)
    out.copy_meta_from(inputs, copy_attr=True)
    if scale is not None and any(f != 1 for f in scale):
        out.applied_operations = []
        out.affine = layer_affine(inputs.affine, scale)
    return out


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
