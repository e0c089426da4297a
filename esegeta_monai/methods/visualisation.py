"""Visualisation methods: what a network has learned, shown by optimising an image, N-dimensional.

Four methods share one optimisation loop (:func:`optimise`): an image is rendered from
variables (:class:`PixelImage`, or :class:`FourierImage`, a decorrelated spectral
parameterisation with 1/f scaling), optionally transformed at random for robustness
(:class:`RandomTransform`: jitter, scale, small rotations), the network's objective and its
input gradient are computed through the sliding windows (:class:`WindowObjective`), and a
step rule updates the variables (Adam, or DeepDream's normalised gradient step):

- ``deepdream``: from the input image, gradient ascent on a layer's mean activation (one
  ``channel`` or all) at several ``octaves`` (coarse to fine), with jitter;
- ``feature_visualisation`` (in the spirit of Lucent): from a seeded random start, excite a
  layer ``channel`` (or one ``neuron`` position of the layer's grid) under random jitter,
  scale and rotation, with ``param="fourier"`` or ``"pixel"``;
- ``layer_visualisation`` (pytorch-cnn-visualizations style): a filter's mean activation
  from a random pixel start, with weight decay and a blur every few steps — a special case of
  ``feature_visualisation`` (``param="pixel"``, no transforms), implemented as a thin subclass;
- ``inverted_representation`` (Mahendran & Vedaldi 2014): from a seeded random start,
  reconstruct an image whose layer representation matches the input's (Euclidean distance
  normalised by the input representation's squared norm, plus α-norm and total-variation
  regularisers).

The methods are target-independent (like ``layer_activation``): the target is ignored. Through
sliding windows, the objective is *the layer objective summed over the windows of the
sliding-window prediction* (every window of every image takes part, whatever the target's
region); its input gradient is exactly the sum of the per-window gradients, which is what the
window pass adds up. The output is an image shaped like the input; the given input sets the
shape, the device and (``bounded=True``) the intensity range of the optimised image — and,
for ``deepdream`` and ``inverted_representation``, the start or the representation to match.
Random draws (start, transforms) are made once per call from ``seed`` and are the same for
every image of a batch, so an image's result does not depend on its batch.

Choose a layer before its ReLU (a convolution): a channel that a ReLU silences everywhere at
the start has no gradient. A ``neuron`` objective needs ``jitter``/``scale``/``rotate`` small
against the neuron's receptive field (else the transforms move it off the optimised voxels).

After a call, the method instance (``Explainer.method``) holds ``history``: a ``(rows, B)``
tensor of the objective that was maximised (the network term, without regularisers), one row
per step as seen by that step (under its random transform), and a last row for the returned
image; ``deepdream`` has ``steps + 1`` rows per octave, octave after octave, and
``inverted_representation``'s objective is minus the normalised representation distance.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> explainer = Explainer(net, "feature_visualisation", "class:1", layer="0", channel=2, steps=8)
    >>> explainer(torch.rand(1, 1, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
    >>> history = explainer.method.history
    >>> history.shape, bool(history[-1, 0] > history[0, 0])
    (torch.Size([9, 1]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from esegeta_monai.core.window_pass import WindowPass, amp_dtype
from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import SEED as BASE_SEED, Method, Param, is_bool, non_negative_number, one_of
from esegeta_monai.methods.cam import LAYER, NeedsLayer, find_layer, upsample
from esegeta_monai.methods.registry import register
from esegeta_monai.core.windows import WindowPlan

__all__ = [
    "AdamAscent", "FourierImage", "LayerTerm", "NormalisedAscent", "PixelImage", "RandomTransform", "RepresentationTerm",
    "WindowObjective", "capture_activation", "gaussian_transfer", "optimise", "total_variation",
    "DeepDreamMethod", "FeatureVisualisationMethod", "LayerVisualisationMethod", "InvertedRepresentationMethod",
]


def _int_at_least(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number_in(low: float, high: float, closed_high: bool = True) -> Callable[[object], bool]:
    def check(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v and (v <= high if closed_high else v < high)

    return check


def _neuron_ok(value) -> bool:
    return value is None or value == "centre" or (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(_int_at_least(0)(v) for v in value))


STEPS = Param(128, _int_at_least(0), "optimisation steps (0 returns the start)", "an int ≥ 0")
SEED = replace(BASE_SEED, help="seed of the start and of the random transforms")
CHANNEL = Param(None, lambda v: v is None or _int_at_least(0)(v), "the layer channel (filter) to excite; None: all", "None or an int ≥ 0")
NEURON = Param(None, _neuron_ok, "one position on the layer's grid (per window) instead of the channel's mean",
               "None, 'centre' or a list of ints ≥ 0, one per spatial axis")
JITTER = Param(4, _int_at_least(0), "random circular shift per axis, in voxels, at each step", "an int ≥ 0")
SCALE = Param(0.1, _number_in(0, 1, closed_high=False), "random isotropic zoom by a factor in [1 − scale, 1 + scale]", "a number in [0, 1)")
ROTATE = Param(5.0, _number_in(0, 180), "random rotation in degrees, in one coordinate plane (chosen at random in 3D)", "a number in [0, 180]")
PARAMETERISATION = Param("fourier", one_of("fourier", "pixel"), "'fourier': decorrelated 1/f spectrum; 'pixel': voxels")
BOUNDED = Param(True, is_bool, "keep the image within the input's intensity range (sigmoid)", "True or False")
WEIGHT_DECAY = Param(0.0, non_negative_number, "Adam weight decay on the image variables", "a number ≥ 0")
BLUR_EVERY = Param(0, _int_at_least(0), "blur the image variables every so many steps (0: never)", "an int ≥ 0")
BLUR_SIGMA = Param(0.5, non_negative_number, "standard deviation of that blur, in voxels", "a number ≥ 0")
_FOURIER_STD = 0.01  # spread of the random start in spectrum units (Lucent's choice)
_PIXEL_STD = 0.01


def _lr(default: float) -> Param:
    return Param(default, lambda v: _number_in(0, math.inf)(v) and v > 0, "step size", "a number > 0")


# -- the objective, per window and through the windows ------------------------------------
def capture_activation(network: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """``layer``'s output (its first tensor) during ``network(x)``, in float32.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.ReLU())
        >>> capture_activation(net, net[0], torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, (tuple, list)) else out))
    try:
        with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
            network(x)
    finally:
        handle.remove()
    if not captured:
        raise MethodError("the chosen layer was not used by the network's forward; pick another layer")
    return captured[-1].float()


class LayerTerm:
    """A window's objective: the mean activation of ``layer`` over the window's layer grid —
    one ``channel`` or all — or at one ``neuron`` position of that grid (``"centre"`` or
    one index per axis). Out-of-range channels and neurons are a :class:`MethodError`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.ReLU())
        >>> LayerTerm(net, net[1], "1", channel=2)(torch.ones(2, 1, 4, 4), {}, None).shape
        torch.Size([2])
    """

    def __init__(self, network, layer, name: str, channel: int | None = None, neuron=None, amp: bool = False):
        self.network, self.layer, self.name = network, layer, name
        self.channel, self.neuron, self.amp = channel, neuron, amp

    def __call__(self, x: torch.Tensor, crops: dict, images) -> torch.Tensor:
        activation = self.select(capture_activation(self.network, self.layer, x, self.amp))
        return activation.reshape(x.shape[0], -1).mean(1)

    def select(self, activation: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            channels = activation.shape[1] if activation.ndim >= 2 else 0
            if self.channel >= channels:
                raise MethodError(f"channel={self.channel} is out of range: layer {self.name!r} has {channels} channels "
                                  f"(output shape {tuple(activation.shape)})")
            activation = activation[:, self.channel : self.channel + 1]
        if self.neuron is None:
            return activation
        return activation[(slice(None), slice(None), *self.position(activation.shape[2:]))]

    def position(self, grid: Sequence[int]) -> tuple[int, ...]:
        position = tuple(s // 2 for s in grid) if self.neuron == "centre" else tuple(self.neuron)
        if not grid or len(position) != len(grid) or any(p >= s for p, s in zip(position, grid)):
            raise MethodError(f"neuron={self.neuron!r} is not a position on layer {self.name!r}'s grid {tuple(grid)} "
                              "(per window); give one index per spatial axis within it, or 'centre'")
        return position


class RepresentationTerm:
    """A window's objective for the inversion: ``−‖Φ(x) − Φ(x₀)‖² / N`` with ``Φ`` the layer's
    output, ``x₀`` the window of the input (crop ``"reference"``) and ``N`` the image's
    ``Σ_windows ‖Φ(x₀)‖²`` (``norms``, per image). With ``norms=None`` it is ``‖Φ(x₀)‖²``,
    the term that sums to ``N``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1))
        >>> x = torch.ones(1, 1, 4, 4)
        >>> RepresentationTerm(net, net[0], norms=torch.ones(1))(x, {"reference": x}, torch.zeros(1, dtype=torch.long)).abs().item()
        0.0
    """

    def __init__(self, network, layer, norms: torch.Tensor | None = None, amp: bool = False):
        self.network, self.layer, self.norms, self.amp = network, layer, norms, amp

    def __call__(self, x: torch.Tensor, crops: dict, images) -> torch.Tensor:
        with torch.no_grad():
            target = capture_activation(self.network, self.layer, crops["reference"], self.amp)
        if self.norms is None:
            return target.pow(2).reshape(x.shape[0], -1).sum(1)
        distance = (capture_activation(self.network, self.layer, x, self.amp) - target).pow(2).reshape(x.shape[0], -1).sum(1)
        return -distance / self.norms[images].clamp_min(1e-12)


class WindowObjective:
    """``x ↦ (J(x), ∂J/∂x)`` with ``J(x)_b = Σ_p term(crop_p x_b)``: a per-window objective
    summed over every window of the sliding-window plan, per image, and its input gradient —
    exactly ``Σ_p crop_pᵀ ∂term/∂x_p`` by the chain rule, summed by the window pass.

    Every window of every image takes part, whatever the explained target (the pass is given
    one output weight per image, as for a classifier: the weight each window receives is its
    image's index, which the objective uses to add values up per image). ``tensors`` are
    full-size tensors whose window crops the term receives.

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))
        >>> explainer = Explainer(net, "saliency", "class:1", roi_size=(8, 8), overlap=0.5)
        >>> _ = explainer(torch.rand(1, 1, 12, 12))
        >>> objective = WindowObjective(explainer.last_pass, LayerTerm(net, net[1], "1"), batch=1)
        >>> values, gradient = objective(torch.rand(1, 1, 12, 12))
        >>> values.shape, gradient.shape
        (torch.Size([1]), torch.Size([1, 1, 12, 12]))
    """

    def __init__(self, window_pass: WindowPass, term, batch: int, plan: WindowPlan | None = None,
                 tensors: dict[str, torch.Tensor] | None = None):
        self.outer, self.term, self.tensors = window_pass, term, tensors or {}
        plan = plan or window_pass.plan
        images = torch.arange(batch, dtype=torch.float32, device=plan.importance.device)[:, None]
        self.window_pass = WindowPass(window_pass.module, plan, window_pass.target, images, sw_batch_size=window_pass.sw_batch_size,
                                      deadline=window_pass.deadline, label=window_pass.label)

    def __call__(self, x: torch.Tensor, gradient: bool = True):
        values = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)

        def window_fn(module, x_win, weight, crops):
            images = weight[:, 0].long()
            with torch.set_grad_enabled(gradient):
                value = self.term(x_win, crops, images)
            values.index_add_(0, images, value.detach().float())
            if not gradient:
                return torch.zeros_like(x_win)
            return torch.autograd.grad(value.sum(), x_win)[0]

        before = self.window_pass.windows_run
        total = self.window_pass.linear(x, window_fn, window_tensors=self.tensors)
        self.outer.windows_run += self.window_pass.windows_run - before
        return values, (total if gradient else None)


# -- parameterisations of the image --------------------------------------------------------
def _frequencies(spatial: Sequence[int]) -> torch.Tensor:
    """Radial frequency (cycles per voxel) on the ``rfftn`` grid of ``spatial``."""
    axes = [torch.fft.fftfreq(n) for n in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1])]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def gaussian_transfer(spatial: Sequence[int], sigma: float) -> torch.Tensor:
    """The Fourier transfer function of a Gaussian blur of ``sigma`` voxels on the ``rfftn`` grid.

    Example:
        >>> gaussian_transfer((8, 8), 1.0).shape, float(gaussian_transfer((8, 8), 1.0)[0, 0])
        (torch.Size([8, 5]), 1.0)
    """
    return torch.exp(-2 * math.pi**2 * sigma**2 * _frequencies(spatial) ** 2)


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


class PixelImage:
    """The image is its voxels: ``render() = to_image(variables)``.

    Example:
        >>> import torch
        >>> PixelImage(torch.zeros(1, 1, 4, 4), torch.sigmoid).render().mean().item()
        0.5
    """

    def __init__(self, start: torch.Tensor, to_image: Callable[[torch.Tensor], torch.Tensor] = lambda v: v):
        self.variables = start.detach().clone().requires_grad_(True)
        self.to_image = to_image

    def render(self) -> torch.Tensor:
        return self.to_image(self.variables)

    def blur(self, sigma: float) -> None:
        """Gaussian blur of the variables (circular, through the FFT)."""
        dims, spatial = _spatial_dims(self.variables), self.variables.shape[2:]
        transfer = gaussian_transfer(spatial, sigma).to(self.variables.device)
        with torch.no_grad():
            self.variables.copy_(torch.fft.irfftn(torch.fft.rfftn(self.variables, dim=dims) * transfer, s=spatial, dim=dims))


class FourierImage:
    """A decorrelated spectral parameterisation, N-dimensional: the variables are the image's
    ``rfftn`` spectrum (real and imaginary parts), scaled by ``1 / max(|f|, 1/max(shape))``
    (normalised to unit RMS) before the inverse FFT, so that equal steps in the variables
    give the image a natural 1/f spectrum. ``render()`` is real, of ``shape``. The random
    start is drawn once (``(1, C, …)``, from ``generator``) for every image of the batch.

    Example:
        >>> import torch
        >>> image = FourierImage((2, 1, 6, 9), torch.Generator().manual_seed(0))
        >>> image.render().shape, image.render().dtype
        (torch.Size([2, 1, 6, 9]), torch.float32)
    """

    def __init__(self, shape: Sequence[int], generator: torch.Generator, to_image: Callable = lambda v: v,
                 device=None, std: float = _FOURIER_STD):
        self.spatial = tuple(int(s) for s in shape[2:])
        frequencies = _frequencies(self.spatial)
        scale = 1 / frequencies.clamp_min(1 / max(self.spatial))
        self.scale = (scale / scale.pow(2).mean().sqrt()).to(device)
        start = torch.randn((1, shape[1], *frequencies.shape, 2), generator=generator) * std
        self.variables = start.expand(shape[0], *start.shape[1:]).contiguous().to(device).requires_grad_(True)
        self.to_image = to_image

    def render(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.variables) * self.scale
        dims = tuple(range(2, 2 + len(self.spatial)))
        return self.to_image(torch.fft.irfftn(spectrum, s=self.spatial, dim=dims, norm="ortho"))

    def blur(self, sigma: float) -> None:
        """Gaussian blur of the (pre-``to_image``) image: a product in the spectrum."""
        with torch.no_grad():
            self.variables.mul_(gaussian_transfer(self.spatial, sigma).to(self.variables.device)[..., None])


def squash_to_range(inputs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ low + (high − low)·sigmoid(v)`` with each image's and channel's intensity range
    in ``inputs`` (a constant channel gets a range of width 1 around its value)."""
    low, high = inputs.amin(_spatial_dims(inputs), keepdim=True), inputs.amax(_spatial_dims(inputs), keepdim=True)
    width = torch.where(high > low, high - low, torch.ones_like(high))
    low = torch.where(high > low, low, low - 0.5)
    return lambda v: low + width * torch.sigmoid(v)


def _image_statistics(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean and standard deviation over channels and voxels (std 0 → 1)."""
    dims = tuple(range(1, inputs.ndim))
    mean, std = inputs.mean(dims, keepdim=True), inputs.std(dims, keepdim=True, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


# -- robustness transforms -----------------------------------------------------------------
class RandomTransform:
    """Random jitter (integer circular shift per axis, up to ``jitter`` voxels), isotropic zoom
    by ``1 ± scale`` and rotation by up to ``rotate`` degrees in one coordinate plane (chosen
    at random in 3D), about the image centre in voxel units; zoom and rotation resample
    (bilinear/trilinear, reflection at the borders) and need 2D or 3D images. One draw per
    call, the same for every image of the batch; the shape is kept.

    Example:
        >>> import torch
        >>> transform = RandomTransform(torch.Generator().manual_seed(0), jitter=2, scale=0.1, rotate=10)
        >>> transform(torch.rand(2, 1, 8, 10, 12)).shape
        torch.Size([2, 1, 8, 10, 12])
    """

    def __init__(self, generator: torch.Generator, jitter: int = 0, scale: float = 0.0, rotate: float = 0.0):
        self.generator, self.jitter, self.scale, self.rotate = generator, int(jitter), float(scale), float(rotate)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        ndim = image.ndim - 2
        if self.jitter:
            shifts = torch.randint(-self.jitter, self.jitter + 1, (ndim,), generator=self.generator).tolist()
            image = torch.roll(image, shifts, _spatial_dims(image))
        if self.scale or self.rotate:
            if ndim not in (2, 3):
                raise MethodError(f"scale and rotate resample 2D or 3D images, not {ndim}D; set scale=0 and rotate=0")
            image = self._resample(image, self._matrix(ndim))
        return image

    def _uniform(self, half_width: float) -> float:
        return float((2 * torch.rand((), generator=self.generator, dtype=torch.float64) - 1) * half_width)

    def _matrix(self, ndim: int) -> torch.Tensor:
        """Output-to-input voxel coordinates (about the centre): rotation / zoom factor."""
        matrix = torch.eye(ndim, dtype=torch.float64) / (1 + self._uniform(self.scale))
        if self.rotate:
            planes = [(i, j) for i in range(ndim) for j in range(i + 1, ndim)]
            i, j = planes[int(torch.randint(len(planes), (), generator=self.generator))]
            angle = math.radians(self._uniform(self.rotate))
            rotation = torch.eye(ndim, dtype=torch.float64)
            rotation[i, i] = rotation[j, j] = math.cos(angle)
            rotation[i, j], rotation[j, i] = -math.sin(angle), math.sin(angle)
            matrix = rotation @ matrix
        return matrix

    @staticmethod
    def _resample(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        sizes = torch.tensor(image.shape[2:], dtype=torch.float64)
        theta = (matrix * sizes[None, :] / sizes[:, None]).flip(0, 1)  # normalised coordinates, x (last axis) first
        theta = torch.cat([theta, torch.zeros(len(sizes), 1, dtype=torch.float64)], 1)
        theta = theta.to(image)[None].expand(image.shape[0], -1, -1)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# -- step rules and the shared loop ----------------------------------------------------------
class AdamAscent:
    """Adam maximising the objective (elementwise: each image is optimised independently)."""

    def __init__(self, variables: torch.Tensor, lr: float, weight_decay: float = 0.0):
        self.optimiser = torch.optim.Adam([variables], lr=lr, weight_decay=weight_decay, maximize=True)

    def step(self) -> None:
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)


class NormalisedAscent:
    """DeepDream's step: ``v ← v + lr · g / mean|g|``, per image, ``lr`` per image or scalar."""

    def __init__(self, variables: torch.Tensor, lr):
        self.variables, self.lr = variables, lr

    def step(self) -> None:
        gradient = self.variables.grad
        norm = gradient.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (gradient.ndim - 1))
        with torch.no_grad():
            self.variables.add_(self.lr * gradient / norm)
        self.variables.grad = None


def optimise(image, objective: Callable, steps: int, rule, transform: Callable | None = None,
             penalty: Callable | None = None, regularise: Callable[[int], None] | None = None, bar=None):
    """The loop every visualisation method shares. Each step renders ``image``, transforms it
    (``transform``), gets the objective and its input gradient from ``objective`` (through the
    windows), backpropagates ``gradient · transformed − penalty(rendered)`` to the image's
    variables, lets ``rule`` step and ``regularise(step)`` act. Returns the final rendered
    image and the history ``(steps + 1, B)``: the objective at each step, then of the result.

    Example:
        >>> import torch
        >>> image = PixelImage(torch.zeros(1, 1, 3))
        >>> objective = lambda x, gradient=True: (-(x - 1).pow(2).sum((1, 2)), -2 * (x - 1))
        >>> result, history = optimise(image, objective, 20, AdamAscent(image.variables, lr=0.1))
        >>> history.shape, bool(history[-1, 0] > history[0, 0])
        (torch.Size([21, 1]), True)
    """
    history = []
    for step in range(steps):
        rendered = image.render()
        seen = transform(rendered) if transform is not None else rendered
        value, gradient = objective(seen.detach())
        total = (seen * gradient).sum()
        if penalty is not None:
            total = total - penalty(rendered).sum()
        total.backward()
        rule.step()
        if regularise is not None:
            regularise(step)
        history.append(value.detach().float().cpu())
        if bar is not None:
            bar.update(1)
    with torch.no_grad():
        result = image.render()
    history.append(objective(result, gradient=False)[0].float().cpu())
    return result, torch.stack(history)


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mean over voxels of ``(Σ_axes (forward difference)²)^(β/2)``, per image.

    Example:
        >>> import torch
        >>> total_variation(torch.tensor([[[0.0, 1.0, 3.0]]]))
        tensor([2.5000])
    """
    spatial = x.shape[2:]
    common = tuple(slice(0, n - 1) for n in spatial)
    squares = 0
    for axis in range(len(spatial)):
        difference = torch.diff(x, dim=2 + axis)
        squares = squares + difference[(slice(None), slice(None), *common)].pow(2)
    return (squares + 1e-12).pow(beta / 2).flatten(1).mean(1)


# -- the methods -----------------------------------------------------------------------------
class VisualisationMethod(NeedsLayer, Method):
    """Base of the visualisation methods: a layer, a seed, a step count, progress over steps."""

    family = "visualisation"
    library = "esegeta"
    reads_target = False  # an empty target region is not refused: the target is ignored
    history: torch.Tensor | None = None

    def progress(self, window_pass, total: int):
        return tqdm(total=total, desc=window_pass.label or self.name, unit="step", disable=not window_pass.progress, leave=False)

    @staticmethod
    def setting(window_pass, options):
        """The network, the layer module, a seeded CPU generator and whether forwards use AMP."""
        network = window_pass.module.network
        layer = find_layer(network, options["layer"])
        return network, layer, torch.Generator(device="cpu").manual_seed(options["seed"]), window_pass.module.amp


@register
class FeatureVisualisationMethod(VisualisationMethod):
    name = "feature_visualisation"
    amp_safe = False  # measured on CPU bfloat16: AMP results correlate only 0.45–0.67 with float32 ones
    amp_note = "its random start varies by about 1 % of the range, below half-precision resolution: the optimisation diverges"
    summary = "an image (Fourier or pixel parameterisation, random transforms) that excites a layer channel or neuron; seeded"
    params = {"layer": LAYER, "channel": CHANNEL, "neuron": NEURON, "param": PARAMETERISATION, "steps": STEPS, "lr": _lr(0.05),
              "seed": SEED, "jitter": JITTER, "scale": SCALE, "rotate": ROTATE, "bounded": BOUNDED,
              "weight_decay": WEIGHT_DECAY, "blur_every": BLUR_EVERY, "blur_sigma": BLUR_SIGMA}

    def run(self, window_pass, inputs, options):
        network, layer, generator, amp = self.setting(window_pass, options)
        term = LayerTerm(network, layer, options["layer"], options["channel"], options["neuron"], amp)
        image = self.start(inputs, options, generator)
        every, sigma = options["blur_every"], options["blur_sigma"]

        def regularise(step: int) -> None:
            if every and sigma and (step + 1) % every == 0:
                image.blur(sigma)

        with self.progress(window_pass, options["steps"]) as bar:
            result, self.history = optimise(
                image, WindowObjective(window_pass, term, inputs.shape[0]), options["steps"],
                AdamAscent(image.variables, options["lr"], options["weight_decay"]),
                transform=RandomTransform(generator, options["jitter"], options["scale"], options["rotate"]),
                regularise=regularise, bar=bar)
        return result

    @staticmethod
    def start(inputs, options, generator):
        """The seeded random start, drawn once for every image of the batch."""
        to_image = squash_to_range(inputs) if options["bounded"] else (lambda v: v)
        if options["param"] == "fourier":
            return FourierImage(inputs.shape, generator, to_image, device=inputs.device)
        start = torch.randn((1, *inputs.shape[1:]), generator=generator) * _PIXEL_STD
        return PixelImage(start.expand_as(inputs).to(inputs.device), to_image)


@register
class LayerVisualisationMethod(FeatureVisualisationMethod):
    """``feature_visualisation`` with ``param="pixel"``, no transforms and no neuron: a filter's
    mean activation from a random pixel start, with weight decay and a periodic blur."""

    name = "layer_visualisation"
    summary = "a filter's mean activation maximised from a random pixel start, with weight decay and blur (CNN-visualisation style)"
    params = {"layer": LAYER, "channel": Param(0, _int_at_least(0), "the layer channel (filter) to excite", "an int ≥ 0"),
              "steps": replace(STEPS, default=64), "lr": _lr(0.1), "seed": SEED, "bounded": BOUNDED,
              "weight_decay": replace(WEIGHT_DECAY, default=1e-4),
              "blur_every": replace(BLUR_EVERY, default=4), "blur_sigma": BLUR_SIGMA}
    fixed = {"param": "pixel", "neuron": None, "jitter": 0, "scale": 0.0, "rotate": 0.0}

    def run(self, window_pass, inputs, options):
        return super().run(window_pass, inputs, {**options, **self.fixed})


@register
class DeepDreamMethod(VisualisationMethod):
    name = "deepdream"
    summary = "DeepDream: the input image pushed up a layer's mean activation (octaves, jitter, normalised steps); seeded"
    params = {"layer": LAYER, "channel": CHANNEL, "octaves": Param(3, _int_at_least(1), "number of scales, coarse to fine", "an int ≥ 1"),
              "octave_scale": Param(1.4, lambda v: _number_in(1, math.inf)(v) and v > 1, "size ratio between octaves", "a number > 1"),
              "steps": replace(STEPS, default=10, help="optimisation steps per octave"),
              "lr": _lr(0.01), "jitter": replace(JITTER, default=2), "seed": SEED}

    def run(self, window_pass, inputs, options):
        network, layer, generator, amp = self.setting(window_pass, options)
        term = LayerTerm(network, layer, options["layer"], options["channel"], None, amp)
        transform = RandomTransform(generator, options["jitter"])
        lr = options["lr"] * _image_statistics(inputs)[1]  # steps in units of each image's standard deviation
        histories, detail, result = [], None, inputs
        with self.progress(window_pass, options["steps"] * options["octaves"]) as bar:
            for shape in self.octave_shapes(inputs.shape[2:], options["octaves"], options["octave_scale"]):
                base = upsample(inputs, shape)
                detail = torch.zeros_like(base) if detail is None else upsample(detail, shape)
                image = PixelImage(base + detail)
                objective = WindowObjective(window_pass, term, inputs.shape[0], window_pass.plan.like(shape))
                result, history = optimise(image, objective, options["steps"], NormalisedAscent(image.variables, lr), transform, bar=bar)
                detail = result - base
                histories.append(history)
        self.history = torch.cat(histories)
        return result

    @staticmethod
    def octave_shapes(shape: Sequence[int], octaves: int, scale: float) -> list[tuple[int, ...]]:
        """Image shapes from the coarsest octave to the input's.

        Example:
            >>> DeepDreamMethod.octave_shapes((20, 28), 3, 1.4)
            [(10, 14), (14, 20), (20, 28)]
        """
        return [tuple(max(1, round(s / scale**k)) for s in shape) for k in reversed(range(octaves))]


@register
class InvertedRepresentationMethod(VisualisationMethod):
    name = "inverted_representation"
    summary = "Mahendran & Vedaldi: an image whose layer representation matches the input's (α-norm and TV regularised); seeded"
    params = {"layer": LAYER, "steps": replace(STEPS, default=200), "lr": _lr(0.1), "seed": SEED,
              "alpha": Param(6.0, _number_in(1, math.inf), "exponent of the α-norm regulariser", "a number ≥ 1"),
              "alpha_weight": Param(1e-5, non_negative_number, "weight of the α-norm regulariser", "a number ≥ 0"),
              "beta": Param(2.0, _number_in(1, math.inf), "exponent of the total-variation regulariser", "a number ≥ 1"),
              "tv_weight": Param(1e-2, non_negative_number, "weight of the total-variation regulariser", "a number ≥ 0")}

    def run(self, window_pass, inputs, options):
        network, layer, generator, amp = self.setting(window_pass, options)
        batch, reference = inputs.shape[0], {"reference": inputs}
        norms, _ = WindowObjective(window_pass, RepresentationTerm(network, layer, None, amp), batch, tensors=reference)(inputs, gradient=False)
        term = RepresentationTerm(network, layer, norms, amp)
        mean, std = _image_statistics(inputs)
        start = torch.randn((1, *inputs.shape[1:]), generator=generator)
        image = PixelImage(start.expand_as(inputs).to(inputs.device), lambda z: mean + std * z)

        def penalty(x: torch.Tensor) -> torch.Tensor:
            z = (x - mean) / std  # regularisers in units of the input's spread, averaged over voxels
            alpha_norm = z.abs().pow(options["alpha"]).flatten(1).mean(1)
            return options["alpha_weight"] * alpha_norm + options["tv_weight"] * total_variation(z, options["beta"])

        with self.progress(window_pass, options["steps"]) as bar:
            result, self.history = optimise(image, WindowObjective(window_pass, term, batch, tensors=reference), options["steps"],
                                            AdamAscent(image.variables, options["lr"]), penalty=penalty, bar=bar)
        return result
