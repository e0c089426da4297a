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
afterwards); gradients are enabled even when called under ``torch.no_grad()``. A target whose
region is empty on an image (no voxel predicted as the class, an all-zero mask) is refused
with :class:`~esegeta_monai.errors.EmptyTargetError` before the method runs: its map would be
all zeros (the visualisation methods, which ignore the target, still run).

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import Explainer
    >>> from esegeta_monai.core.targets import ArgmaxRegion
    >>> _ = torch.manual_seed(0)
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

from esegeta_monai.core.finite import all_finite
from esegeta_monai.core.prediction import predict
from esegeta_monai.core.targets import Target, parse_targets
from esegeta_monai.core.window_pass import Deadline, WeightedOutput, WindowPass, first_output, frozen_eval, with_meta_of
from esegeta_monai.core.windows import WindowPlan, plan_windows
from esegeta_monai.errors import EmptyTargetError, InputError, TargetError
from esegeta_monai.methods import Method, get_method

__all__ = ["Explainer", "predict"]

logger = logging.getLogger(__name__)


def _move(network: torch.nn.Module, device: torch.device | None) -> None:
    """``network.to(device)``, skipped when its first parameter (else buffer) is already there:
    the call walks every module, a cost per explanation that a peer does not pay."""
    if device is None:
        return
    device = torch.device(device)
    first = next(network.parameters(), None)
    first = first if first is not None else next(network.buffers(), None)
    if first is not None and (first.device == device or (device.index is None and first.device.type == device.type)):
        return
    network.to(device)


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
        timeout: seconds for a call, counted from its start (the prediction pass included when
            the explainer computes it); the call stops at the first forward of the network (or
            window batch) past it — within one forward and its backward, whatever the method's
            internal batching — and raises :class:`~esegeta_monai.errors.MethodTimeout`.
        method_kwargs: the method's own keywords (e.g. ``abs=False``, ``n_steps=16``). ``network``,
            ``method`` and ``target`` are positional-only, so a method keyword of the same name
            reaches the method: ``Explainer(net, "integrated_gradients", t, method="riemann_trapezoid")``.

    Calling the explainer on ``x`` returns attributions shaped like ``x`` (one channel for
    CAMs); a MetaTensor input gives a MetaTensor with the same meta. ``prediction=`` reuses a
    sliding-window prediction computed elsewhere (e.g. by a bundle's evaluator).

    ``last_region_voxels`` holds, after each call, the size of the target's region per image
    (voxels with a non-zero output weight: the region of an argmax/Otsu/mask target, 1 for a
    voxel), or None where there is none to count: a classifier output ``(B, K)``, or local mode
    with a prediction-based target (each window then has its own region). A region of 0 voxels
    on any image of the batch raises :class:`~esegeta_monai.errors.EmptyTargetError`, naming
    the images — unless the method ignores the target (``method.reads_target`` False: the
    visualisation methods).

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
        /,
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
        self.last_region_voxels: list[int] | None = None
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
        (:class:`~esegeta_monai.core.windowed_target.WindowedTarget`).

        With a ``timeout`` the budget starts here and every forward of the network checks it
        (a forward pre-hook, removed on exit). Raises
        :class:`~esegeta_monai.errors.EmptyTargetError` when the target's region is empty on
        an image and the method reads the target (sets ``last_region_voxels`` first)."""
        self.last_region_voxels = None
        x = self._check_inputs(inputs)
        label = f"{self.method.name} {self.target.name}"
        deadline = Deadline(self.timeout, label) if self.timeout else None
        _move(self.network, self.device)
        watch = deadline.watching(self.network) if deadline is not None else contextlib.nullcontext()
        with frozen_eval(self.network), torch.enable_grad(), watch:
            plan = self._plan(x)
            weights = None if self.local and self.target.needs_prediction else self._output_weights(x, plan, prediction)
            yield WindowPass(
                WeightedOutput(self.network, self.target.class_index, self.amp and self.method.amp_safe, deadline, self.target),
                plan,
                self.target,
                weights,
                sw_batch_size=self.sw_batch_size,
                local=self.local,
                progress=self.progress,
                deadline=deadline,
                label=label,
            ), x

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The no-grad sliding-window prediction (MONAI's ``sliding_window_inference``)."""
        x = self._check_inputs(inputs)
        _move(self.network, self.device)
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
        if not all_finite(x):
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
        """Shape of the stitched output as far as a target that reads no prediction needs it.

        A spatial target (mask, box, voxel) costs no forward: its output lies on the input's grid
        and only its class channel is weighted, so ``(B, class + 1, *spatial)`` stands for it;
        every forward's output is then checked against the target
        (:func:`~esegeta_monai.core.window_pass.check_window_output`). A class score, which may
        be a classifier's or summed over a segmentation, learns it from :meth:`_probed_shape`."""
        if self.target.spatial:
            return (x.shape[0], self.target.class_index + 1, *x.shape[2:])
        return self._probed_shape(x, plan)

    def _probed_shape(self, x: torch.Tensor, plan: WindowPlan) -> tuple[int, ...]:
        """Shape of the stitched output from one window's forward of one image (cached per input
        and window size)."""
        key = (tuple(x.shape[2:]), tuple(plan.importance.shape[2:]))
        if key not in self._output_shapes:
            with torch.no_grad():
                window = plan.pad_input(x[:1])[(slice(None), slice(None), *plan.slices[0])]
                self._output_shapes[key] = tuple(first_output(self.network(window)).shape[1:])
        channels_and_space = self._output_shapes[key]
        if len(channels_and_space) == 1:
            return (x.shape[0], channels_and_space[0])
        return (x.shape[0], channels_and_space[0], *x.shape[2:])

    def _vector_output_shape(self, x: torch.Tensor, plan: WindowPlan) -> tuple[int, int] | None:
        """The output shape ``(B, K)`` if the network is a classifier, else None (also when
        one window's forward fails)."""
        try:
            shape = self._probed_shape(x, plan)
        except Exception:
            return None
        return shape if len(shape) == 2 else None

    def _output_weights(self, x: torch.Tensor, plan: WindowPlan, prediction: torch.Tensor | None) -> torch.Tensor:
        """The target's output gradient divided by MONAI's normaliser, on the padded grid."""
        if self.target.needs_prediction:
            if prediction is None:
                with torch.no_grad():
                    try:
                        prediction = self._predict(x, plan)
                    except Exception:  # a classifier through windows fails in MONAI's stitching: say what is wrong
                        shape = self._vector_output_shape(x, plan)
                        if shape is not None:
                            _check_output_grid(torch.zeros((), device=x.device).expand(shape), x, plan, self.target)
                        raise
            prediction = (prediction.as_tensor() if isinstance(prediction, MetaTensor) else prediction).to(x.device)
            output = prediction
        else:  # only the shape matters (a given prediction's, else _output_shape's); an expanded zero costs no memory
            shape = tuple(prediction.shape) if prediction is not None else self._output_shape(x, plan)
            output = torch.zeros((), device=x.device).expand(shape)
        _check_output_grid(output, x, plan, self.target)
        weights = self.target.channel_weights(output)
        if output.ndim == 2:  # a classifier's class score: no region
            return weights
        self.last_region_voxels = (weights != 0).flatten(1).sum(1).tolist()  # one sync, no forward
        if 0 in self.last_region_voxels and self.method.reads_target:  # visualisation ignores the target
            raise _empty_region(self.target, self.last_region_voxels)
        if plan.single or self.local:  # local mode weights each window by its own output
            return plan.pad_output(weights)
        return plan.pad_output(weights).div_(plan.normaliser())  # channel_weights gave a fresh tensor


def _check_output_grid(output: torch.Tensor, x: torch.Tensor, plan: WindowPlan, target: Target) -> None:
    if output.shape[0] != x.shape[0]:
        raise TargetError(f"{target.name}: prediction has batch {output.shape[0]}, inputs have {x.shape[0]}")
    if output.ndim == 2:
        target.check_output(output)  # a spatial target on a classifier: say so first
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


def _empty_region(target: Target, voxels: list[int]) -> EmptyTargetError:
    """The error for a target whose region has 0 voxels on some images of the batch."""
    empty = [index for index, count in enumerate(voxels) if count == 0]
    where = others = ""
    if len(voxels) > 1:
        images = f"image {empty[0]}" if len(empty) == 1 else "images " + ", ".join(map(str, empty))
        where = f" on {images} of the batch of {len(voxels)}"
        if len(empty) < len(voxels):
            others = " (or explain the other images of the batch without it)"
    return EmptyTargetError(
        f"{target.name}: the target region is empty (0 voxels){where}: {target.empty_reason}; its map would be all "
        f"zeros and say nothing. Choose another class, an `otsu:` target, or a `mask:` region{others}."
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

