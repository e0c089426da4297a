"""Noise-tunnel methods (SmoothGrad and its variants), exact through sliding windows.

Captum's ``NoiseTunnel`` adds noise to whatever tensor it is given; applied per window,
overlapping windows would see different noise at the same voxel. Here the noise is drawn
once per sample for the *whole* image (seeded ``torch.Generator``), the inner method runs
exactly through the windows on each noisy image, and the samples are aggregated as Captum
does: ``smoothgrad`` (mean), ``smoothgrad_sq`` (mean of squares), ``vargrad`` (variance).
The target's mask stays the one computed from the un-noised image.

Example:
    >>> import torch
    >>> from esegeta_monai.methods.noise import draw_noise
    >>> draw_noise((1, 1, 4, 4), stdevs=0.1, nt_samples=3, seed=0)[0].shape
    torch.Size([1, 1, 4, 4])
"""

from __future__ import annotations

import torch

from esegeta_monai.methods.base import SEED, Method, Param, non_negative_number, one_of, positive_int
from esegeta_monai.methods.registry import get_method, register

__all__ = ["NoiseTunnelMethod", "SmoothGradMethod", "SmoothGradSqMethod", "VarGradMethod", "GuidedSmoothGradMethod",
           "draw_noise", "iter_noise"]


def iter_noise(shape, stdevs: float, nt_samples: int, seed: int, device=None, dtype=torch.float32):
    """The ``nt_samples`` noise tensors of one call, one at a time (memory: one image),
    reproducible from ``seed`` (drawn on the CPU, so identical on every device).

    One image's noise ``(1, *shape[1:])`` is drawn per sample and broadcast over the batch:
    every image of a batch sees the same draws, so an image's map does not depend on the
    batch it comes in."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for _ in range(nt_samples):
        noise = torch.randn((1, *tuple(shape)[1:]), generator=generator, dtype=torch.float32) * float(stdevs)
        yield noise.to(device=device, dtype=dtype)


def draw_noise(shape, stdevs: float, nt_samples: int, seed: int, device=None, dtype=torch.float32):
    """All noise tensors of one call as a list (for tests and inspection)."""
    return list(iter_noise(shape, stdevs, nt_samples, seed, device, dtype))


class NoiseTunnelMethod(Method):
    """Aggregate an inner method's attributions over noisy copies of the input."""

    family = "gradient"
    inner: str = "saliency"
    default_type: str = "smoothgrad"

    @property
    def params(self):  # type: ignore[override]
        inner = get_method(self.inner)
        return {
            "nt_samples": Param(8, positive_int, "number of noisy samples", "a positive int"),
            "stdevs": Param(0.15, non_negative_number, "standard deviation of the Gaussian noise (input units)", "a number ≥ 0"),
            "nt_type": Param(self.default_type, one_of("smoothgrad", "smoothgrad_sq", "vargrad")),
            "seed": SEED,
            **inner.params,
        }

    def run(self, window_pass, inputs, options):
        inner = get_method(self.inner)
        inner_options = {k: v for k, v in options.items() if k in inner.params}
        noises = iter_noise(inputs.shape, options["stdevs"], options["nt_samples"], options["seed"], inputs.device)
        total = total_sq = None
        for noise in noises:
            sample = inner.run(window_pass, inputs + noise, inner_options).float()
            total = sample if total is None else total + sample
            total_sq = sample * sample if total_sq is None else total_sq + sample * sample
        count = options["nt_samples"]
        if options["nt_type"] == "smoothgrad":
            return total / count
        if options["nt_type"] == "smoothgrad_sq":
            return total_sq / count
        return total_sq / count - (total / count) ** 2


@register
class SmoothGradMethod(NoiseTunnelMethod):
    name = "smoothgrad"
    summary = "SmoothGrad: saliency averaged over noisy copies (seeded; nt_type smoothgrad|smoothgrad_sq|vargrad)"
    inner = "saliency"


@register
class SmoothGradSqMethod(NoiseTunnelMethod):
    name = "smoothgrad_sq"
    summary = "SmoothGrad-squared: mean of squared saliency over noisy copies (seeded)"
    inner = "saliency"
    default_type = "smoothgrad_sq"


@register
class VarGradMethod(NoiseTunnelMethod):
    name = "vargrad"
    summary = "VarGrad: variance of saliency over noisy copies (seeded)"
    inner = "saliency"
    default_type = "vargrad"


@register
class GuidedSmoothGradMethod(NoiseTunnelMethod):
    name = "guided_smoothgrad"
    summary = "SmoothGrad over guided backpropagation (needs nn.ReLU modules; seeded)"
    inner = "guided_backprop"

