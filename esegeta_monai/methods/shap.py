"""SHAP-style gradient methods, exact through sliding windows: GradientShap and DeepLiftShap.

Both average over a set of reference images (``baselines``: a tensor ``(N, C, *spatial)``,
a list of numbers, or None for ``[0, the image's mean]``). Their random draws are made once
per sample for the *whole* image (seeded), so every window sees the same draw:

- ``gradient_shap`` (Captum's semantics): for each of ``n_samples`` draws — a baseline
  ``b``, ``α ~ U(0, 1)`` and Gaussian noise ``ε`` (``stdevs``) per image — the gradient at
  ``b + α (x + ε − b)`` times ``(x + ε − b)``; the mean over draws (expected gradients).
- ``deeplift_shap``: DeepLift against each baseline, averaged (as Captum's DeepLiftShap).

Example:
    >>> import torch
    >>> from esegeta_monai.methods.shap import baseline_set
    >>> baseline_set(None, torch.ones(2, 1, 4, 4)).shape      # zeros and each image's mean, per image
    torch.Size([2, 2, 1, 4, 4])
"""

from __future__ import annotations

import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import SEED, Method, Param, non_negative_number, positive_int
from esegeta_monai.methods.gradient import MULTIPLY_BY_INPUTS
from esegeta_monai.methods.registry import get_method, register

__all__ = ["baseline_set", "gradient_shap_draws", "gradient_shap_points", "GradientShapMethod", "DeepLiftShapMethod"]


def _baselines_ok(value) -> bool:
    return value is None or torch.is_tensor(value) or (isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


BASELINE_SET = Param(None, _baselines_ok, "reference images", "None, a list of numbers, or a tensor (N, C, *spatial)")


def baseline_set(spec, inputs: torch.Tensor) -> torch.Tensor:
    """The reference images of every input image, ``(N, B, C, *spatial)``: None → zeros and
    the image's own mean; numbers → constant images; a tensor ``(N, C, *spatial)`` (or one
    image's shape) → the same references for every image (expanded, not copied).

    Example:
        >>> import torch
        >>> references = baseline_set(None, torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]))
        >>> references.shape, references[1, :, 0, 0, 0].tolist()      # the second: each image's mean
        (torch.Size([2, 2, 1, 2, 2]), [0.0, 1.0])
    """
    if spec is None:
        means = inputs.mean(dim=tuple(range(1, inputs.ndim)), keepdim=True).expand_as(inputs)
        return torch.stack([torch.zeros_like(inputs), means])
    if isinstance(spec, (list, tuple)):
        return torch.stack([torch.full_like(inputs, float(v)) for v in spec])
    spec = spec.to(device=inputs.device, dtype=inputs.dtype)
    if spec.shape == inputs.shape[1:]:
        spec = spec[None]
    if spec.shape[1:] != inputs.shape[1:]:
        raise MethodError(f"baselines of shape {tuple(spec.shape)} do not match one input image {tuple(inputs.shape[1:])}; give (N, C, *spatial)")
    return spec[:, None].expand(len(spec), *inputs.shape)


def gradient_shap_draws(batch: int, n_baselines: int, n_samples: int, shape, stdevs: float, seed: int):
    """The draws of one ``gradient_shap`` call: ``(baseline index per image, α per image,
    noise)`` for each sample, reproducible from ``seed`` (drawn on the CPU).

    One image's draw is made per sample and repeated over the batch (the noise broadcasts:
    ``(1, *shape[1:])``), so an image's map does not depend on the batch it comes in."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for _ in range(n_samples):
        index = torch.randint(n_baselines, (1,), generator=generator).expand(batch)
        alpha = torch.rand(1, generator=generator).expand(batch)
        noise = torch.randn((1, *tuple(shape)[1:]), generator=generator) * float(stdevs)
        yield index, alpha, noise


def gradient_shap_points(inputs: torch.Tensor, options):
    """For each draw of :func:`gradient_shap_draws`: ``(b + α (x + ε − b), x + ε, b)``, full size.

    Example:
        >>> import torch
        >>> options = {"baselines": [0.0], "n_samples": 3, "stdevs": 0.0, "seed": 0}
        >>> [tuple(t.shape) for t in next(gradient_shap_points(torch.ones(2, 1, 4, 4), options))]
        [(2, 1, 4, 4), (2, 1, 4, 4), (2, 1, 4, 4)]
    """
    references = baseline_set(options["baselines"], inputs)
    images = torch.arange(inputs.shape[0], device=inputs.device)
    per_image = (-1,) + (1,) * (inputs.ndim - 1)
    draws = gradient_shap_draws(inputs.shape[0], len(references), options["n_samples"], inputs.shape, options["stdevs"], options["seed"])
    for index, alpha, noise in draws:
        noisy = inputs + noise.to(inputs.device)
        base = references[index.to(inputs.device), images]
        yield base + alpha.to(inputs.device).view(per_image) * (noisy - base), noisy, base


@register
class GradientShapMethod(Method):
    name = "gradient_shap"
    family = "gradient"
    summary = "GradientShap: expected gradients × (input − baseline) over random baselines, α and noise (seeded)"
    params = {
        "n_samples": Param(8, positive_int, "number of random draws", "a positive int"),
        "stdevs": Param(0.0, non_negative_number, "noise added to the input (input units)", "a number ≥ 0"),
        "baselines": BASELINE_SET,
        "seed": SEED,
    }

    def run(self, window_pass, inputs, options):
        saliency = get_method("saliency")
        total = torch.zeros_like(inputs, dtype=torch.float32)
        for point, noisy, base in gradient_shap_points(inputs, options):
            total += saliency.run(window_pass, point, {"abs": False}) * (noisy - base)
        return total / options["n_samples"]


@register
class DeepLiftShapMethod(Method):
    name = "deeplift_shap"
    family = "gradient"
    summary = "DeepLiftShap: DeepLift averaged over a set of baselines (complete against their mean for ReLU networks)"
    params = {"baselines": BASELINE_SET, "multiply_by_inputs": MULTIPLY_BY_INPUTS}
    amp_safe = False
    amp_note = "DeepLift's rescale rule underflows in float16"

    def run(self, window_pass, inputs, options):
        deeplift = get_method("deeplift")
        references = baseline_set(options["baselines"], inputs)
        total = torch.zeros_like(inputs, dtype=torch.float32)
        for reference in references:
            dl_options = deeplift.validate({"baselines": reference, "multiply_by_inputs": options["multiply_by_inputs"]})
            total += deeplift.run(window_pass, inputs, dl_options)
        return total / len(references)
