"""The window pass: a linear window function run over every window of a batch and summed.

A sliding-window prediction is ``y = Σ_p pad_p(w_p ⊙ f(crop_p x)) / W``. For a target with output
gradient ``G`` each window's share of it is ``w_p ⊙ crop_p(G / W)`` (DESIGN.md §2). A method hands
:class:`WindowPass` a function of one window batch (``window_fn``) and gets the window results
summed into the volume — exact for every method that is linear in the output gradient. Also here:
the time budget of a call (:class:`Deadline`) and the helpers every layer above shares
(:func:`first_output`, :func:`frozen_eval`, :func:`amp_dtype`, :func:`with_meta_of`).

Example:
    >>> import torch
    >>> from esegeta_monai.core.window_pass import first_output
    >>> first_output((torch.ones(1), torch.zeros(2))).shape
    torch.Size([1])
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from esegeta_monai.core.targets import Target
from esegeta_monai.core.windows import WindowPlan, layer_affine, layer_grid
from esegeta_monai.errors import InputError, MethodError, MethodTimeout, TargetError

__all__ = ["WindowPass", "WeightedOutput", "check_window_output", "Deadline", "first_output", "frozen_eval", "amp_dtype", "with_meta_of"]


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
    """Eval mode and ``requires_grad=False`` on every parameter, restored on exit: exactly the
    modules that were training and the parameters that required grad get their flag back (a
    network already in eval mode, as a bundle's is, costs no walk through ``eval()``/``train()``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
        >>> net[0].eval()  # a module the user keeps in eval mode inside a training network
        Linear(in_features=2, out_features=2, bias=True)
        >>> with frozen_eval(net):
        ...     net.training, net[1].training, net[0].weight.requires_grad
        (False, False, False)
        >>> net.training, net[0].training, net[1].training, net[0].weight.requires_grad
        (True, False, True, True)
    """
    modules = list(network.modules())  # one walk (the network's own parameters() would be a second)
    training = [m for m in modules if m.training]
    trainable = [p for m in modules for p in m._parameters.values() if p is not None and p.requires_grad]
    if training:
        network.eval()
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield network
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        for module in training:
            module.training = True


def amp_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, bfloat16 elsewhere (CPU autocast supports bfloat16)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


class Deadline:
    """A time budget of ``seconds`` from now: :meth:`check` raises
    :class:`~esegeta_monai.errors.MethodTimeout` once it is spent, saying how long the call ran.

    It is checked between window batches (:meth:`WindowPass.check_deadline`) and, while
    :meth:`watching` a network, before every forward of it (a forward pre-hook): every method
    calls the network's forward, so a call stops within one forward (and its backward) of
    its budget whatever its internal batching (steps, samples, masks, perturbations).

    Example:
        >>> import torch
        >>> deadline = Deadline(0.0, "saliency argmax1")
        >>> net = torch.nn.Linear(2, 2)
        >>> with deadline.watching(net):  # doctest: +ELLIPSIS
        ...     net(torch.ones(1, 2))
        Traceback (most recent call last):
        ...
        esegeta_monai.errors.MethodTimeout: saliency argmax1: time budget of 0 s exceeded after 0.00 s (at a network forward, ...)
        >>> len(net._forward_pre_hooks)  # the hook is gone
        0
    """

    def __init__(self, seconds: float, label: str = ""):
        self.seconds = float(seconds)
        self.label = label
        self.start = time.monotonic()
        self.at = self.start + self.seconds
        #: where the call is, for the message of a timeout at a forward (set by the window pass)
        self.stage = "before the window batches"

    def check(self, where: str | None = None) -> None:
        """Raise :class:`~esegeta_monai.errors.MethodTimeout` if the budget is spent (``where``:
        what the message says the call was doing; default: at a forward, at :attr:`stage`)."""
        now = time.monotonic()
        if now >= self.at:
            where = where or f"at a network forward, {self.stage}"
            spent = now - self.start
            raise MethodTimeout(f"{self.label}: time budget of {self.seconds:g} s exceeded after {spent:.2f} s ({where})")

    @contextlib.contextmanager
    def watching(self, network: torch.nn.Module):
        """While active, every forward of ``network`` first checks the budget (a forward
        pre-hook, removed on exit, also on error; the network is left as it was). Only forwards
        in the calling thread are checked: another thread explaining with the same network keeps
        its own budget. A TorchScript module runs no Python hooks: it is checked at the forwards
        of :class:`WeightedOutput` (the Captum-driven methods) and between window batches only."""
        owner = threading.get_ident()

        def hook(_module, _args):
            if threading.get_ident() == owner:
                self.check()

        try:
            handle = network.register_forward_pre_hook(hook)
        except (RuntimeError, AttributeError, TypeError):  # pragma: no cover - modules that refuse hooks
            handle = None
        try:
            yield self
        finally:
            if handle is not None:
                handle.remove()


class WeightedOutput(torch.nn.Module):
    """``x, C -> Σ_spatial net(x)[:, c] ⊙ C``: one scalar per window, what Captum attributes.

    ``C`` holds the weights of the target's class channel ``c`` only (the other channels'
    weights are zero); a ``C`` of shape ``(B, 1)`` weights every voxel of a spatial output
    alike (a class score explained on the whole image). The forward runs under autocast when
    ``amp`` is set; the product is taken in float32. A ``deadline`` is checked before each
    forward (for networks that run no Python hooks, see :meth:`Deadline.watching`); with a
    ``target`` every output is checked against it (:func:`check_window_output`), so a target
    that reads no prediction needs no forward of its own to learn the output's shape.
    """

    def __init__(self, network: torch.nn.Module, channel: int, amp: bool = False, deadline: Deadline | None = None,
                 target: Target | None = None):
        super().__init__()
        self.network = network
        self.channel = int(channel)
        self.amp = amp
        self.deadline = deadline
        self.target = target

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.deadline is not None:
            self.deadline.check()
        with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=self.amp):
            output = first_output(self.network(x))
        if self.target is not None:
            check_window_output(self.target, output, x)
        scores = output[:, self.channel : self.channel + 1].float()
        if weight.ndim < scores.ndim:  # (B, 1): the same weight for every voxel
            weight = weight.view(*weight.shape, *[1] * (scores.ndim - weight.ndim))
        return (scores * weight).flatten(1).sum(1)


def check_window_output(target: Target, output: torch.Tensor, x: torch.Tensor) -> None:
    """Raise :class:`~esegeta_monai.errors.TargetError` if the network's ``output`` for the
    window batch ``x`` does not suit ``target`` (a class it lacks, a spatial target on a
    classifier) or is not on the window's grid.

    Example:
        >>> import torch
        >>> from esegeta_monai.core.targets import ClassScore
        >>> check_window_output(ClassScore(1), torch.zeros(2, 3), torch.zeros(2, 1, 8, 8))  # a classifier: fine
    """
    target.check_output(output)
    if output.ndim > 2 and tuple(output.shape[2:]) != tuple(x.shape[2:]):
        raise TargetError(f"{target.name}: output spatial shape {tuple(output.shape[2:])} differs from the input's "
                          f"{tuple(x.shape[2:])}; networks that change resolution are not supported yet")


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

    ``deadline`` (a :class:`Deadline`, or a ``time.monotonic()`` instant) is checked before
    each window batch; the caller may also have it watch the network's forwards.
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
        deadline: Deadline | float | None = None,
        label: str = "",
    ):
        self.module = module
        self.plan = plan
        self.target = target
        self.output_weights = output_weights  # class channel of G / W on the padded grid, (B, 1, ...)
        self.sw_batch_size = max(int(sw_batch_size), 1)
        self.local = local
        self.progress = progress
        if deadline is not None and not isinstance(deadline, Deadline):  # a time.monotonic() instant
            deadline = Deadline(float(deadline) - time.monotonic(), label)
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

    def _groups(self, pairs, device: torch.device):
        """Window batches of ``sw_batch_size`` pairs; none when no pair reaches the target (never
        an empty batch). With one window covering the image, all images at once on an
        accelerator — but on the CPU ``sw_batch_size`` at a time (one by default): there a batch
        gains little speed and costs memory in proportion, so its working set stays that of
        ``sw_batch_size`` images."""
        size = max(len(pairs), 1) if self.plan.single and device.type != "cpu" else self.sw_batch_size
        for start in range(0, len(pairs), size):
            yield pairs[start : start + size]

    def check_deadline(self, done: int, total: int) -> None:
        """Before window batch ``done`` (of ``total``): raise
        :class:`~esegeta_monai.errors.MethodTimeout` if the budget is spent."""
        if self.deadline is not None:
            self.deadline.check(f"{done}/{total} window batches done")
            self.deadline.stage = f"{done}/{total} window batches done"

    def linear(self, inputs: torch.Tensor, window_fn: WindowFn, window_tensors: dict[str, torch.Tensor] | None = None,
               blend: bool = False, input_grad: bool = True):
        """Sum ``window_fn``'s window results into the volume (``blend=True``: weight each by
        the importance map and divide by ``W``, as the prediction is blended — for maps that
        are not linear in the output gradient, such as CAMs; such maps may be on a layer's
        coarser grid). ``input_grad``: whether the window crops require grad — only methods
        that differentiate with respect to the input need it; a layer or CAM method starts its
        graph at the layer, so the forward below it is not recorded. Returns the unpadded result."""
        plan = grid = self.plan
        blend = blend or self.local
        padded = plan.pad_input(inputs)
        full = {k: plan.pad_input(_expand_like(v, inputs)) for k, v in (window_tensors or {}).items()}
        total = None
        pairs = self.active_windows(inputs.shape[0])
        groups = list(self._groups(pairs, padded.device))
        window_importance = plan.window_weights(padded.device)
        bar = tqdm(total=len(pairs), desc=self.label or "windows", unit="win", disable=not self.progress, leave=False)
        try:
            for done, group in enumerate(groups):
                self.check_deadline(done, len(groups))
                x_win = _gather(padded, group).requires_grad_(input_grad)
                crops = {k: _gather(v, group) for k, v in full.items()}
                weight = self.window_weights_of(x_win, group, window_importance)
                attribution = window_fn(self.module, x_win, weight, crops).float()
                if total is None:
                    grid, on_grid = self._result_grid(attribution, x_win, blend)
                    importance = grid.window_weights(padded.device)
                    total = torch.zeros((padded.shape[0], attribution.shape[1], *grid.padded_shape), dtype=torch.float32, device=padded.device)
                if blend and not plan.single:  # one window: w / W = 1 wherever the map is kept
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
            return grid.unpad(total if plan.single else total.div_(grid.normaliser()))
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

