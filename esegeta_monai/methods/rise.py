"""RISE (Petsiuk, Das & Saenko, BMVC 2018), N-dimensional and window-aware.

``n_masks`` random binary masks are drawn on a coarse grid (``cells`` per spatial axis, each
cell kept with probability ``p``), upsampled linearly (bilinear in 2D, trilinear in 3D) to
``cells + 1`` cells of ``ceil(size / cells)`` voxels and cropped at a random shift below one
cell. The paper's (and TorchRay's) cells are ``(cells + 1) / cells`` times longer — ``cells``
cells stretched over ``size + size / cells`` — so ``cells=c`` here matches their ``c + 1`` in cell
length (mask statistics compared in ``tests/test_torchray_parity.py``). The map is the masks
weighted by the target of the masked images,

    S = Σ_i T(x ⊙ m_i + fill ⊙ (1 − m_i)) · m_i / (n_masks · p),

one channel (a mask spans every input channel). ``center=True`` subtracts the mean score,
``Σ_i (T_i − T̄) m_i / (n_masks · p)``: as ``n_masks`` grows this is the same map less the
constant ``T̄``, but with few masks it removes the imprint of ``Σ_i m_i`` (noise that is the
same for any network) — a variance reduction, not in the paper. ``T`` is evaluated by a
:class:`~esegeta_monai.core.windowed_target.WindowedTarget` (``perturbations_per_eval`` masks per
call, their windows in batches of ``sw_batch_size``): the target of each masked image is
exactly the one of a full sliding-window inference, with the prediction's mask held fixed
from the clean image. The draws come from a CPU generator seeded with ``seed``, mask after
mask (the same masks whatever ``perturbations_per_eval``), and are the same for every image
of a batch, so a map does not depend on its batch.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    >>> Explainer(net, "rise", "argmax:1", n_masks=8, cells=4)(torch.rand(1, 1, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import SEED, Method, Param, is_bool, positive_int
from esegeta_monai.methods.cam import upsample
from esegeta_monai.methods.perturbation import FILL, PER_EVAL, fill_value
from esegeta_monai.methods.registry import register
from esegeta_monai.core.windowed_target import WindowedTarget

__all__ = ["RiseMethod", "rise_masks", "masked", "per_axis", "CELLS"]


def _cells_spec(value) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(positive_int(v) for v in value)
    return positive_int(value)


CELLS = Param(8, _cells_spec, "coarse mask grid: cells per spatial axis (an int for every axis, or one per axis)",
              "a positive int or a list of positive ints")


def per_axis(value, spatial: tuple[int, ...], name: str) -> tuple[int, ...]:
    """An int (or a list of one int per axis) as one value per spatial axis."""
    values = (int(value),) * len(spatial) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != len(spatial):
        raise MethodError(f"{name}={list(values)} needs one value per spatial axis of the image {tuple(spatial)}")
    return values


def rise_masks(spatial, count: int, cells, p: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` RISE masks ``(count, 1, *spatial)`` in [0, 1], drawn mask after mask from
    ``generator`` (a coarse binary grid, then one shift per axis).

    Example:
        >>> import torch
        >>> masks = rise_masks((10, 12), 3, (2, 3), 0.5, torch.Generator().manual_seed(0))
        >>> masks.shape, bool(masks.min() >= 0), bool(masks.max() <= 1)
        (torch.Size([3, 1, 10, 12]), True, True)
    """
    spatial, cells = tuple(spatial), tuple(cells)
    cell = [math.ceil(s / c) for s, c in zip(spatial, cells)]
    masks = []
    for _ in range(count):
        grid = (torch.rand((1, 1, *[c + 1 for c in cells]), generator=generator) < p).float()
        shifts = [int(torch.randint(0, k, (1,), generator=generator)) for k in cell]
        smooth = upsample(grid, [(c + 1) * k for c, k in zip(cells, cell)])
        masks.append(smooth[(0, slice(None), *[slice(t, t + s) for t, s in zip(shifts, spatial)])])
    return torch.stack(masks)


def masked(inputs: torch.Tensor, masks: torch.Tensor, fill) -> torch.Tensor:
    """Perturbed copies ``x ⊙ m + fill ⊙ (1 − m)`` of every image for every mask, Captum's
    order (row ``r``: mask ``r // B`` on image ``r % B``). ``masks`` is ``(N, 1, *spatial)``
    (the same for every image) or ``(N, B, 1, *spatial)`` (one per image); ``fill`` a number
    or one value per image ``(B, 1, ...)``."""
    masks = masks.to(inputs)
    if masks.ndim == inputs.ndim:
        masks = masks[:, None]  # one mask for every image
    fill = fill[None] if torch.is_tensor(fill) else fill
    return (inputs[None] * masks + fill * (1 - masks)).flatten(0, 1)


def _check_probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


@register
class RiseMethod(Method):
    name = "rise"
    family = "perturbation"
    library = "esegeta"
    summary = "RISE: random smooth masks weighted by the target of the masked image (seeded; window-aware)"
    params = {
        "n_masks": Param(500, positive_int, "number of random masks", "a positive int"),
        "cells": CELLS,
        "p": Param(0.5, _check_probability, "probability that a cell is kept", "a number in (0, 1]"),
        "fill": FILL,
        "center": Param(False, is_bool, "subtract the mean score (variance reduction; the map less a constant)", "True or False"),
        "perturbations_per_eval": PER_EVAL,
        "seed": SEED,
    }

    def run(self, window_pass, inputs, options):
        spatial = tuple(inputs.shape[2:])
        cells = per_axis(options["cells"], spatial, "cells")
        target = WindowedTarget(window_pass, inputs)
        fill = fill_value(inputs, options["fill"])
        weighted = torch.zeros((inputs.shape[0], 1, *spatial), dtype=torch.float64, device=inputs.device)
        mask_sum, score_sum = torch.zeros_like(weighted[:1]), 0.0
        with torch.no_grad():
            for masks in self.mask_batches(spatial, cells, options):
                masks = masks.to(inputs.device)
                values = target(masked(inputs, masks, fill)).view(masks.shape[0], inputs.shape[0]).double()
                weighted += torch.einsum("nb,n...->b...", values, masks[:, 0].double())[:, None]
                mask_sum += masks.double().sum(0, keepdim=True)
                score_sum = score_sum + values.sum(0)
        window_pass.windows_run += target.forwards
        self.last_forwards = target.forwards
        if options["center"]:  # Σ (T_i − T̄) m_i = Σ T_i m_i − T̄ Σ m_i
            weighted -= (score_sum / options["n_masks"]).view(-1, *[1] * (weighted.ndim - 1)) * mask_sum
        return (weighted / (options["n_masks"] * options["p"])).float()

    @staticmethod
    def mask_batches(spatial, cells, options) -> Iterator[torch.Tensor]:
        """The masks of one call in batches of ``perturbations_per_eval`` (memory: one batch)."""
        generator = torch.Generator(device="cpu").manual_seed(int(options["seed"]))
        left = options["n_masks"]
        while left > 0:
            count = min(left, options["perturbations_per_eval"])
            yield rise_masks(spatial, count, cells, options["p"], generator)
            left -= count
