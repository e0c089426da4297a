"""MONAI's ``SliceInferer`` as a sliding window: a 2D network applied slice by slice to a volume.

``SliceInferer(roi_size=(H, W), spatial_dim=d)`` runs a 2D sliding-window inference on every
slice of a 3D volume along spatial axis ``d`` and stacks the slice predictions. That is a 3D
sliding window of shape ``roi_size`` with 1 inserted at ``d``, over :class:`SliceNetwork` — the 2D
network lifted to volumes by moving the slice axis into the batch: every 3D window is one slice's
2D window, and its importance map is the 2D one (a one-voxel axis contributes a constant that
cancels in ``w_p / W``). So the window decomposition of DESIGN.md §2, and with it every
method, is exact through slices just as through windows.

Example:
    >>> import torch
    >>> from monai.inferers import SliceInferer
    >>> from monai.networks.nets import UNet
    >>> net = UNet(2, 1, 3, (4, 8), (2,), num_res_units=0).eval()
    >>> volume = torch.rand(1, 1, 20, 24, 5)
    >>> window = slice_window_settings(SliceInferer(roi_size=(16, 16), spatial_dim=2, overlap=0.5))
    >>> window["roi_size"]
    (16, 16, 1)
    >>> from esegeta_monai.core.prediction import predict
    >>> ours = predict(SliceNetwork(net, spatial_dim=2), volume, **window)
    >>> theirs = SliceInferer(roi_size=(16, 16), spatial_dim=2, overlap=0.5)(volume, net)
    >>> bool(torch.allclose(ours, theirs, atol=1e-6))
    True
"""

from __future__ import annotations

from typing import Any

import torch

from esegeta_monai.core.windows import WINDOW_SETTINGS, _plain

__all__ = ["SliceNetwork", "slice_window_settings", "is_slice_inferer"]


def is_slice_inferer(inferer: Any) -> bool:
    """Whether ``inferer`` is MONAI's ``SliceInferer`` (or a subclass)."""
    from monai.inferers import SliceInferer

    return isinstance(inferer, SliceInferer)


class SliceNetwork(torch.nn.Module):
    """A 2D network applied to every slice of a volume along ``spatial_dim`` (0, 1 or 2).

    ``(B, C, X, Y, Z) -> (B, K, X, Y, Z)``; the 2D network is ``self.network``, so its layers are
    named ``network.<name>`` (for CAMs and layer methods).
    """

    def __init__(self, network: torch.nn.Module, spatial_dim: int):
        super().__init__()
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2 (the slice axis of a volume), got {spatial_dim}")
        self.network = network
        self.spatial_dim = spatial_dim

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.ndim != 5:
            raise ValueError(f"SliceNetwork takes volumes (B, C, X, Y, Z), got shape {tuple(volume.shape)}")
        axis = 2 + self.spatial_dim
        moved = volume.movedim(axis, 1)  # (B, S, C, a, b)
        batch, slices = moved.shape[:2]
        out = self.network(moved.reshape(batch * slices, *moved.shape[2:]))
        out = out.reshape(batch, slices, *out.shape[1:])
        return out.movedim(1, axis)


def _insert(value, spatial_dim: int, fill):
    return tuple(value[:spatial_dim]) + (fill,) + tuple(value[spatial_dim:])


def slice_window_settings(inferer: Any) -> dict:
    """The 3D window settings equivalent to a ``SliceInferer`` (its 2D ``roi_size`` with 1 at
    ``spatial_dim``; per-axis ``overlap``/``sigma_scale`` with 0 and 0.125 there)."""
    settings = {key: _plain(getattr(inferer, key)) for key in WINDOW_SETTINGS if hasattr(inferer, key)}
    dim = int(inferer.spatial_dim)
    roi = settings["roi_size"]
    roi = (int(roi),) * 2 if isinstance(roi, int) else tuple(int(r) for r in roi)
    if len(roi) != 2:
        raise ValueError(f"a SliceInferer's roi_size is 2D, got {roi}")
    settings["roi_size"] = _insert(roi, dim, 1)
    for key, fill in (("overlap", 0.0), ("sigma_scale", 0.125)):
        value = settings.get(key)
        if isinstance(value, tuple):
            settings[key] = _insert(value, dim, fill)
    return settings
