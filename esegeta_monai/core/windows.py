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
    >>> from esegeta_monai.core.windows import plan_windows
    >>> plan = plan_windows((40, 40, 40), roi_size=(32, 32, 32), overlap=0.25)
    >>> len(plan.slices), plan.single
    (8, False)
    >>> plan_windows((40, 40, 40), roi_size=None).single
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.utils import ensure_tuple_rep, fall_back_tuple

from esegeta_monai.errors import ConfigError, MethodError

try:  # MONAI's own scan-interval rule (private helper, stable since 0.x)
    from monai.inferers.utils import _get_scan_interval
except ImportError:  # pragma: no cover - fallback with the same rule

    def _get_scan_interval(image_size, roi_size, num_spatial_dims, overlap):
        return tuple(
            int(r) if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap)
        )


__all__ = ["WindowPlan", "WindowSettings", "plan_windows", "inferer_settings", "layer_grid", "layer_affine", "WINDOW_SETTINGS"]

#: the sliding-window settings an inferer carries, as ``SlidingWindowInferer`` names them
WINDOW_SETTINGS = ("roi_size", "overlap", "mode", "sw_batch_size", "sigma_scale", "padding_mode", "cval")
BLEND_MODES = ("gaussian", "constant")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class WindowSettings:
    """The sliding-window settings of a prediction, as ``monai.inferers.SlidingWindowInferer``
    names them; ``roi_size=None`` is the whole image in one window.

    Example:
        >>> from monai.inferers import SlidingWindowInferer
        >>> window = WindowSettings.from_inferer(SlidingWindowInferer((64, 64, 64), overlap=0.5))
        >>> window.roi_size, window.overlap, window.updated(overlap=0.25, mode=None).overlap
        ((64, 64, 64), 0.5, 0.25)
    """

    roi_size: tuple[int, ...] | None = None
    overlap: float | tuple[float, ...] = 0.25
    mode: str = "gaussian"
    sw_batch_size: int = 1
    sigma_scale: float | tuple[float, ...] = 0.125
    padding_mode: str = "constant"
    cval: float = 0.0

    def __post_init__(self):
        for key in WINDOW_SETTINGS:  # plain values: tuples, strings for enums
            object.__setattr__(self, key, _plain(getattr(self, key)))
        self.check()

    def check(self, source: str = "window") -> None:
        """Raise :class:`~esegeta_monai.errors.ConfigError` naming the first invalid setting."""
        roi = self.roi_size
        if roi is not None and not (isinstance(roi, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in roi)):
            raise ConfigError(f"{source}.roi_size must be a list of integers such as [64, 64, 64], got {roi!r}")
        overlaps = self.overlap if isinstance(self.overlap, tuple) else (self.overlap,)
        if not all(isinstance(o, (int, float)) and not isinstance(o, bool) and 0 <= o < 1 for o in overlaps):
            raise ConfigError(f"{source}.overlap must be a number in [0, 1), got {self.overlap!r}")
        if self.mode not in BLEND_MODES:
            raise ConfigError(f"{source}.mode must be one of {', '.join(BLEND_MODES)}, got {self.mode!r}")
        if not (isinstance(self.sw_batch_size, int) and not isinstance(self.sw_batch_size, bool) and self.sw_batch_size >= 1):
            raise ConfigError(f"{source}.sw_batch_size must be an integer ≥ 1, got {self.sw_batch_size!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(f"{source}.padding_mode must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}")

    @classmethod
    def from_mapping(cls, mapping: dict | None, source: str = "window") -> WindowSettings:
        """Settings from a mapping of some of :data:`WINDOW_SETTINGS` (``None`` values: default)."""
        mapping = dict(mapping or {})
        unknown = sorted(set(mapping) - set(WINDOW_SETTINGS))
        if unknown:
            raise ConfigError(f"{source}: unknown window setting(s) {unknown}; allowed: {', '.join(WINDOW_SETTINGS)}")
        settings = cls(roi_size=mapping.pop("roi_size", None))
        try:
            return settings.updated(**mapping)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def from_inferer(cls, inferer, spatial_dims: int | None = None) -> WindowSettings:
        """The settings of a MONAI inferer (:func:`inferer_settings`); any inferer without a
        ``roi_size`` (``SimpleInferer``, ``None``) means the whole image."""
        return cls.from_mapping(inferer_settings(inferer, spatial_dims), "inferer")

    def updated(self, **overrides) -> WindowSettings:
        """A copy with the given settings replaced (``None`` values are ignored)."""
        unknown = sorted(set(overrides) - set(WINDOW_SETTINGS))
        if unknown:
            raise ConfigError(f"unknown window setting(s) {unknown}; allowed: {', '.join(WINDOW_SETTINGS)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict:
        """Every setting, as the keyword arguments of ``Explainer`` and ``SlidingWindowInferer``."""
        return {key: getattr(self, key) for key in WINDOW_SETTINGS}


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
    #: the roi_size, overlap, mode and sigma_scale the plan was made with (for :meth:`like`)
    settings: dict = field(default_factory=dict)

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

    def like(self, spatial_shape: Sequence[int]) -> WindowPlan:
        """The plan of the same windows (size, overlap, mode, padding) over an image of another shape.

        Example:
            >>> plan = plan_windows((40, 40), roi_size=(16, 16), overlap=0.5)
            >>> smaller = plan.like((24, 24))
            >>> [(int(s.start), int(s.stop)) for s in smaller.slices[1]], len(smaller.slices)
            ([(0, 16), (8, 24)], 4)
        """
        if tuple(int(s) for s in spatial_shape) == tuple(self.spatial_shape):
            return self
        if not self.settings:
            raise ValueError("this plan was not made by plan_windows: it cannot be repeated on another shape")
        return plan_windows(spatial_shape, padding_mode=self.padding_mode, cval=self.cval, device=self.importance.device,
                            **self.settings)

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
    settings = {"roi_size": roi, "overlap": overlaps, "mode": mode, "sigma_scale": sigma_scale}
    return WindowPlan(spatial_shape, padded, pad, slices, importance, padding_mode, cval, settings)


def inferer_settings(inferer, spatial_dims: int | None = None) -> dict:
    """The window settings of a MONAI inferer, as plain Python values.

    A ``SlidingWindowInferer`` (anything with ``roi_size``) gives its ``roi_size`` (an int
    repeated over ``spatial_dims``), ``overlap``, ``mode``, ``sw_batch_size``,
    ``sigma_scale``, ``padding_mode`` and ``cval``; any other inferer (``SimpleInferer``,
    ``None``) means the whole image at once: ``{"roi_size": None}``.

    Example:
        >>> from monai.inferers import SimpleInferer, SlidingWindowInferer
        >>> inferer_settings(SlidingWindowInferer(64, overlap=0.5), spatial_dims=3)["roi_size"]
        (64, 64, 64)
        >>> inferer_settings(SimpleInferer())
        {'roi_size': None}
    """
    if inferer is None or not hasattr(inferer, "roi_size"):
        return {"roi_size": None}
    settings = {key: _plain(getattr(inferer, key)) for key in WINDOW_SETTINGS if hasattr(inferer, key)}
    roi = settings.get("roi_size")
    if isinstance(roi, int):
        if not spatial_dims:
            raise ConfigError(f"the inferer's roi_size is one number ({roi}); say how many spatial dimensions the image has")
        settings["roi_size"] = (roi,) * spatial_dims
    elif roi is not None:
        if not isinstance(roi, tuple):
            raise ConfigError(f"the inferer's roi_size is {roi!r}; give a list of window sizes, e.g. [96, 96, 96]")
        settings["roi_size"] = tuple(int(r) for r in roi)
    return settings


def _plain(value):
    """Tensors and sequences to tuples, string enums (``BlendMode``…) to their value."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(getattr(value, "value", None), str):
        return value.value
    return value


def layer_grid(plan: WindowPlan, map_shape: Sequence[int]) -> tuple[WindowPlan, tuple[float, ...]]:
    """The window plan on a layer's grid, where each window's map has ``map_shape``, and the
    factor per axis (input voxels per layer voxel).

    One window covering the unpadded image: the map is the whole map and the factor is
    ``input size / map size`` (any value). Otherwise each factor ``window size / map size``
    must be an integer dividing every window offset and the padding (else :class:`MethodError`);
    window ``p`` then covers the layer-grid voxels ``offset_p / f`` to ``(offset_p + roi) / f``
    and its importance map is ``w_p`` resized to ``map_shape`` with ``nearest-exact`` — as
    ``monai.inferers.sliding_window_inference`` blends a predictor whose output is on a
    coarser grid, so the result equals MONAI's for the same window maps (and the blend stays
    a partition of unity).

    Example:
        >>> grid, factor = layer_grid(plan_windows((24, 32), (16, 16), overlap=0.5), (8, 4))
        >>> grid.padded_shape, factor, grid.slices[1]
        ((12, 8), (2.0, 4.0), (slice(0, 8, None), slice(2, 6, None)))
    """
    roi, map_shape = tuple(plan.importance.shape[2:]), tuple(int(m) for m in map_shape)
    ndim = len(roi)
    if plan.single and not any(plan.pad):
        whole = [tuple(slice(0, m) for m in map_shape)]
        ones = torch.ones((1, 1, *map_shape), device=plan.importance.device)
        return WindowPlan(map_shape, map_shape, [0] * 2 * ndim, whole, ones), tuple(r / m for r, m in zip(roi, map_shape))
    factor = _layer_factors(plan, roi, map_shape)
    pad = [p // factor[ndim - 1 - i // 2] for i, p in enumerate(plan.pad)]
    slices = [tuple(slice(int(s.start) // f, int(s.stop) // f) for s, f in zip(window, factor)) for window in plan.slices]
    grid = WindowPlan(
        tuple(n // f for n, f in zip(plan.spatial_shape, factor)), tuple(n // f for n, f in zip(plan.padded_shape, factor)),
        pad, slices, F.interpolate(plan.importance, size=map_shape, mode="nearest-exact"), plan.padding_mode, plan.cval,
    )
    return grid, tuple(float(f) for f in factor)


def _layer_factors(plan: WindowPlan, roi: tuple[int, ...], map_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Integer factors per axis, checked against the window offsets and the padding."""
    hint = "choose roi_size/overlap accordingly or use resolution='input'"
    if len(map_shape) != len(roi) or any(m < 1 or r % m for r, m in zip(roi, map_shape)):
        raise MethodError(f"the layer's map {map_shape} does not divide the window {roi} by an integer factor per axis; "
                          f"layer-resolution maps through sliding windows need one ({hint})")
    factor = tuple(r // m for r, m in zip(roi, map_shape))
    ndim = len(roi)
    for d, f in enumerate(factor):
        offsets = sorted({int(window[d].start) for window in plan.slices})
        pads = plan.pad[2 * (ndim - 1 - d) : 2 * (ndim - d)]
        bad = [o for o in offsets + pads if o % f]
        if bad:
            raise MethodError(f"layer-resolution maps through sliding windows need window offsets and padding divisible by "
                              f"the layer's factor {f} on axis {d}; offsets {offsets}, padding {pads} ({hint})")
    return factor


def layer_affine(affine: torch.Tensor, scale: Sequence[float]) -> torch.Tensor:
    """The affine of a map on a layer's grid, from the input's ``affine`` (``(4, 4)`` or
    batched ``(B, 4, 4)``; any ``(N+1, N+1)``) and the factor per axis: voxel ``i`` of the
    layer grid is the centre of its block, input voxel ``f·i + (f − 1)/2`` (the convention
    of ``align_corners=False`` interpolation), so spacing is multiplied by ``f`` and the
    origin moves to the centre of the first block.

    Example:
        >>> import torch
        >>> layer_affine(torch.diag(torch.tensor([2.0, 3.0, 1.0])), (4.0, 2.0))
        tensor([[8.0000, 0.0000, 3.0000],
                [0.0000, 6.0000, 1.5000],
                [0.0000, 0.0000, 1.0000]])
    """
    affine = torch.as_tensor(affine)
    ndim = len(scale)
    step = torch.eye(ndim + 1, dtype=affine.dtype, device=affine.device)
    for d, f in enumerate(scale):
        step[d, d] = f
        step[d, ndim] = (f - 1) / 2
    return affine @ step
