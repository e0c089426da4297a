"""Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019), preservation variant,
N-dimensional, with gradients exact through sliding windows.

A smooth mask ``m`` of a given ``area`` (a fraction of the image) is optimised so that the
image it preserves keeps the target as high as possible:

    x' = φ(x, m) = x ⊙ m + blur(x) ⊙ (1 − m)
    minimise  −T(x') / |T(x)|  +  area_weight · mean((sort(m) − r_area)²)

``blur`` is a Gaussian of ``blur_sigma`` voxels; the second term is the paper's ranking-based
area loss (``r_area``: zeros, then a fraction ``area`` of ones, compared with the sorted mask
values), which pushes the mask towards exactly that area with values 0 or 1.

The mask is parameterised on a coarse grid (``cells`` per spatial axis, values clamped to
[0, 1] after each step, initialised at 0.5), smoothed there by a Gaussian of ``smoothing``
cells (replicate padding) and upsampled linearly (bilinear/trilinear) to the image — a
simpler smoothing than the paper's smooth-max convolution. The gradient of ``T(x')`` w.r.t.
the mask comes from the exact sliding-window engine: ``∂T/∂x'`` is the ``saliency``
(``abs=False``) of ``x'``, and autograd on ``φ`` and the upsampling chains it to the
parameters (Adam, ``lr``, ``steps``). One step costs one gradient pass through the windows.

The optimisation has no random draws (deterministic); each image has its own mask and its
own Adam state per parameter, so a batch gives the maps of its images one by one. The map is
the final mask, one channel, on the input grid.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    >>> mask = Explainer(net, "extremal_perturbation", "argmax:1", steps=3, cells=4)(torch.rand(1, 1, 16, 16))
    >>> mask.shape, bool(mask.min() >= 0), bool(mask.max() <= 1)
    (torch.Size([1, 1, 16, 16]), True, True)
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d

from esegeta_monai.methods.base import Method, Param, non_negative_number, positive_int, positive_number
from esegeta_monai.methods.cam import upsample
from esegeta_monai.methods.registry import get_method, register
from esegeta_monai.methods.rise import CELLS, per_axis
from esegeta_monai.core.windowed_target import WindowedTarget

__all__ = ["ExtremalPerturbationMethod", "gaussian_smooth", "area_loss", "area_weights", "top_share"]


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def gaussian_smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian of ``sigma`` voxels over the spatial axes, replicate padding
    (``sigma=0``: unchanged).

    Example:
        >>> import torch
        >>> gaussian_smooth(torch.ones(1, 1, 5, 5), 2.0).allclose(torch.ones(1, 1, 5, 5))
        True
    """
    if sigma <= 0:
        return volume
    kernel = gaussian_1d(float(sigma), truncated=3.0).to(volume)
    kernel = kernel / kernel.sum()  # the truncated kernel sums to 1: constants stay constant
    return separable_filtering(volume, [kernel] * (volume.ndim - 2), mode="replicate")


def area_loss(masks: torch.Tensor, area: float, tolerance: float = 1e-4) -> torch.Tensor:
    """The ranking-based area loss per image: the mean squared difference between the sorted
    mask values and a reference of ``(1 − area)·N`` zeros then ``K = area·N`` ones.

    Written without a sort, as ``(Σ m² − 2 Σ_top-K m + K) / N``: values within ``tolerance``
    of the K-th largest share its rank equally, so the gradient of near ties (a uniform mask;
    equal values spread by float32 rounding, ~1e-6) does not depend on how a sort would order
    them — nor on the batch an image comes in.

    Example:
        >>> import torch
        >>> area_loss(torch.tensor([[[1., 0., 0., 0.]]]), 0.25).tolist(), area_loss(torch.ones(1, 1, 4), 0.25).tolist()
        ([0.0], [0.75])
    """
    values = masks.flatten(1)
    count = values.shape[1]
    k = min(max(round(area * count), 0), count)
    squares = values.pow(2).sum(1)
    if k == 0:
        return squares / count
    return (squares - 2 * (top_share(values.detach(), k, tolerance) * values).sum(1) + k) / count


def top_share(values: torch.Tensor, k: int, tolerance: float) -> torch.Tensor:
    """Per row, 1 for the values above the k-th largest, and ``(k − #above) / #tied`` for
    those within ``tolerance`` of it (0 elsewhere): the top-k indicator with ties shared.

    Example:
        >>> import torch
        >>> top_share(torch.tensor([[3., 1., 1., 0.]]), 2, 1e-6).tolist()
        [[1.0, 0.5, 0.5, 0.0]]
    """
    threshold = values.kthvalue(values.shape[1] - k + 1, dim=1, keepdim=True).values
    above = values > threshold + tolerance
    tied = (values - threshold).abs() <= tolerance
    share = (k - above.sum(1, keepdim=True)) / tied.sum(1, keepdim=True)
    return above.to(values.dtype) + tied * share


def area_weights(steps: int, final: float, start: float = 0.01) -> list[float]:
    """The area loss's weight at each step: growing geometrically from ``start · final`` to
    ``final`` — the target shapes the mask first, the area constraint tightens last.

    Example:
        >>> area_weights(3, 100.0)
        [1.0, 10.0, 100.0]
    """
    if steps == 1:
        return [float(final)]
    return [float(final) * start ** (1 - t / (steps - 1)) for t in range(steps)]


@register
class ExtremalPerturbationMethod(Method):
    name = "extremal_perturbation"
    family = "perturbation"
    library = "esegeta"
    summary = "extremal perturbation: the smooth mask of a given area that best preserves the target (gradients exact through windows)"
    params = {
        "area": Param(0.1, _fraction, "fraction of the image the mask keeps", "a number in (0, 1)"),
        "steps": Param(100, positive_int, "optimisation steps (each one gradient pass through the windows)", "a positive int"),
        "lr": Param(0.05, positive_number, "Adam learning rate on the mask parameters (range [0, 1])", "a number > 0"),
        "cells": dataclasses.replace(CELLS, default=16),
        "smoothing": Param(0.5, non_negative_number, "Gaussian smoothing of the coarse mask, in cells (0: none)", "a number ≥ 0"),
        "blur_sigma": Param(5.0, non_negative_number, "Gaussian blur of the removed parts, in voxels", "a number ≥ 0"),
        "area_weight": Param(100.0, positive_number, "final weight of the area loss against the normalised target (ramped up from 1%)", "a number > 0"),
    }

    def run(self, window_pass, inputs, options):
        spatial = tuple(inputs.shape[2:])
        cells = per_axis(options["cells"], spatial, "cells")
        scale = self.target_scale(window_pass, inputs)
        blurred = gaussian_smooth(inputs, options["blur_sigma"])
        theta = torch.full((inputs.shape[0], 1, *cells), 0.5, device=inputs.device, requires_grad=True)
        optimiser = torch.optim.Adam([theta], lr=options["lr"])
        saliency = get_method("saliency")
        for weight in area_weights(options["steps"], options["area_weight"]):
            with torch.enable_grad():
                mask = self.mask(theta, spatial, options["smoothing"])
                perturbed = blurred + (inputs - blurred) * mask
                gradient = saliency.run(window_pass, perturbed.detach(), {"abs": False})  # ∂T/∂x' through the windows
                loss = -(perturbed * gradient).flatten(1).sum(1) / scale + weight * area_loss(mask, options["area"])
                optimiser.zero_grad()
                loss.sum().backward()
            optimiser.step()
            with torch.no_grad():
                theta.clamp_(0, 1)
        with torch.no_grad():
            return self.mask(theta, spatial, options["smoothing"]).clamp_(0, 1).float()  # rounding of the kernel's sum

    @staticmethod
    def mask(theta: torch.Tensor, spatial, smoothing: float) -> torch.Tensor:
        """The smooth mask on the image grid from the coarse parameters."""
        return upsample(gaussian_smooth(theta, smoothing), spatial)

    @staticmethod
    def target_scale(window_pass, inputs) -> torch.Tensor:
        """``|T(x)|`` per image (at least 1e-6), the target's normalisation."""
        target = WindowedTarget(window_pass, inputs)
        window_pass.windows_run += target.forwards
        return target.clean.abs().clamp_min(1e-6).to(torch.float32)
