"""Sliding-window geometry, taken from MONAI, and the window decomposition of a target.

MONAI's sliding-window prediction is ``y = Σ_p pad_p(w_p ⊙ f(crop_p x)) / W`` with
``W = Σ_p pad_p(w_p)``. For a target with output gradient ``G``, each window's share of
the output gradient is ``w_p ⊙ crop_p(G / W)`` (DESIGN.md §2). :class:`WindowPlan` holds
the windows (``monai.data.utils.dense_patch_slices``), the importance map
(``monai.data.utils.compute_importance_map``) and ``W``, exactly as
``monai.inferers.sliding_window_inference`` builds them, so that the decomposition
reproduces MONAI's prediction to rounding.

When the window covers the input (or ``roi_size`` is None) the plan has one window and
unit weights: the whole-image case is the same code path.

Example:
    >>> from esegeta_monai.windows import plan_windows
    >>> plan = plan_windows((40, 40, 40), roi_size=(32, 32, 32), overlap=0.25)
    >>> len(plan.slices), plan.single
    (8, False)
    >>> plan_windows((40, 40, 40), roi_size=None).single
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.utils import ensure_tuple_rep, fall_back_tuple

from esegeta_monai.errors import ConfigError

try:  # MONAI's own scan-interval rule (private helper, stable since 0.x)
    from monai.inferers.utils import _get_scan_interval
except ImportError:  # pragma: no cover - fallback with the same rule

    def _get_scan_interval(image_size, roi_size, num_spatial_dims, overlap):
        return tuple(
            int(r) if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap)
        )


__all__ = ["WindowPlan", "plan_windows"]


@dataclass
class WindowPlan:
    """Windows over a (padded) image and their blending weights.

    Attributes:
        spatial_shape: spatial shape of the image.
        padded_shape: spatial shape after MONAI's padding to at least ``roi_size``.
        pad: the ``torch.nn.functional.pad`` argument that produced the padding.
        slices: one tuple of spatial slices per window, on the padded grid.
        importance: ``(1, 1, *roi)`` importance map of every window.
        padding_mode, cval: how the input is padded, as in MONAI.
    """

    spatial_shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    pad: list[int]
    slices: list[tuple[slice, ...]]
    importance: torch.Tensor
    padding_mode: str = "constant"
    cval: float = 0.0

    @property
    def single(self) -> bool:
        """True when one window covers the whole image (the whole-image case)."""
        return len(self.slices) == 1

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices that remove the padding from a padded-grid tensor."""
        starts = [self.pad[2 * (len(self.spatial_shape) - 1 - d)] for d in range(len(self.spatial_shape))]
        return tuple(slice(s, s + n) for s, n in zip(starts, self.spatial_shape))

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` (B, C, *spatial) the way ``sliding_window_inference`` does."""
        if not any(self.pad):
            return x
        if self.padding_mode == "constant":
            return F.pad(x, self.pad, mode="constant", value=self.cval)
        return F.pad(x, self.pad, mode=self.padding_mode)

    def pad_output(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-pad an output-grid tensor onto the padded grid (for output gradients)."""
        return F.pad(y, self.pad) if any(self.pad) else y

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x[(slice(None), slice(None), *self.crop)] if any(self.pad) else x

    def normaliser(self) -> torch.Tensor:
        """``W = Σ_p pad_p(w_p)``, ``(1, 1, *padded)``; built on demand (a volume is not kept)."""
        total = torch.zeros((1, 1, *self.padded_shape), device=self.importance.device)
        for window in self.slices:
            total[(slice(None), slice(None), *window)] += self.importance
        return total

    def window_weights(self, device=None) -> torch.Tensor:
        """``(1, 1, *roi)`` importance map; ones for the whole-image case."""
        return self.importance.to(device) if device is not None else self.importance


def plan_windows(
    spatial_shape: Sequence[int],
    roi_size: Sequence[int] | int | None = None,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    device: torch.device | str | None = None,
) -> WindowPlan:
    """Build the window plan ``sliding_window_inference`` would use for this image.

    ``roi_size=None`` (or non-positive entries) falls back to the image size, as in MONAI.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    ndim = len(spatial_shape)
    if isinstance(roi_size, Sequence) and len(roi_size) != ndim:
        raise ConfigError(
            f"roi_size {tuple(roi_size)} has {len(roi_size)} dimensions, the image has {ndim} spatial dimensions "
            f"{spatial_shape}; give one window size per spatial axis"
        )
    roi = fall_back_tuple(roi_size if roi_size is not None else [0] * ndim, spatial_shape)
    overlaps = ensure_tuple_rep(overlap, ndim)
    if any(not 0 <= o < 1 for o in overlaps):
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    padded = tuple(max(s, r) for s, r in zip(spatial_shape, roi))
    pad: list[int] = []
    for d in reversed(range(ndim)):  # F.pad order: last dimension first
        diff = max(roi[d] - spatial_shape[d], 0)
        pad.extend([diff // 2, diff - diff // 2])
    interval = _get_scan_interval(padded, roi, ndim, overlaps)
    slices = [tuple(s) for s in dense_patch_slices(padded, roi, interval, return_slice=True)]
    if len(slices) == 1:
        importance = torch.ones((1, 1, *roi), device=device)
    else:
        importance = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=device)[None, None]
        importance = importance.to(torch.float32)
    return WindowPlan(spatial_shape, padded, pad, slices, importance, padding_mode, cval)
