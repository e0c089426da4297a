"""Networks of the demo bundles.

:class:`UNetMSS` is MONAI's :class:`~monai.networks.nets.UNet` with multi-scale deep supervision
(the "UNet MSS" of DS6 and of the TorchEsegeta paper): a 1x1x1 convolution head on the output
of each inner decoder level gives class logits at 1/2, 1/4, ... of the input resolution,
upsampled (trilinear) to the input grid. In training mode the forward returns the list
``[full-resolution output, head 1, head 2, ...]`` (for :class:`monai.losses.DeepSupervisionLoss`);
in eval mode it returns exactly what the plain ``UNet`` returns (one tensor, the heads are not
run), so a trained ``UNetMSS`` is explained like any ``UNet`` and its backbone is the same
network as the ``vessel_mra_demo`` bundle's.

Example:
    >>> import torch
    >>> net = UNetMSS(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
    ...               num_res_units=1, act="relu", deep_supr_num=1)
    >>> x = torch.rand(2, 1, 16, 16, 16)
    >>> [tuple(o.shape) for o in net.train()(x)]
    [(2, 2, 16, 16, 16), (2, 2, 16, 16, 16)]
    >>> tuple(net.eval()(x).shape)
    (2, 2, 16, 16, 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet

__all__ = ["UNetMSS"]


class UNetMSS(UNet):
    """MONAI ``UNet`` plus deep-supervision heads on ``deep_supr_num`` inner decoder levels.

    Args:
        deep_supr_num: number of auxiliary outputs (1 .. len(strides) - 1), from the level
            just below the top (1/2 resolution) downwards.
        upsample_mode: interpolation of the auxiliary logits to the input grid (default: linear,
            bilinear or trilinear by the number of spatial dimensions).
        All other arguments are those of :class:`monai.networks.nets.UNet`; ``SkipConnection``
        must concatenate (the ``UNet`` default).
    """

    def __init__(self, *args, deep_supr_num: int = 2, upsample_mode: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        levels = self._levels()
        if not 1 <= int(deep_supr_num) <= len(levels) - 1:
            raise ValueError(f"deep_supr_num={deep_supr_num}: give 1 .. {len(levels) - 1} for strides {self.strides}")
        self.deep_supr_num = int(deep_supr_num)
        self.upsample_mode = upsample_mode or {1: "linear", 2: "bilinear", 3: "trilinear"}[self.dimensions]
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[self.dimensions]
        # level i (1-based) decoder output has channels[i - 1] channels (the UNet's up layer of that level)
        self.heads = torch.nn.ModuleList(
            conv(self.channels[i - 1], self.out_channels, kernel_size=1) for i in range(1, self.deep_supr_num + 1))

    def _levels(self) -> list[torch.nn.Sequential]:
        """The nested ``Sequential(down, SkipConnection(...), up)`` of each level, top first."""
        levels, block = [], self.model
        while isinstance(block, torch.nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
            levels.append(block)
            block = block[1].submodule
        return levels

    def _run(self, level: int, x: torch.Tensor, levels, decoded: list) -> torch.Tensor:
        down, skip, up = levels[level]
        d = down(x)
        inner = self._run(level + 1, d, levels, decoded) if level + 1 < len(levels) else skip.submodule(d)
        if skip.mode != "cat":
            raise NotImplementedError(f"UNetMSS needs concatenating skip connections, not {skip.mode!r}")
        u = up(torch.cat([d, inner], dim=skip.dim))
        decoded.append(u)  # deepest level first
        return u

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.model(x)
        levels = self._levels()
        decoded: list[torch.Tensor] = []
        out = self._run(0, x, levels, decoded)
        decoded = decoded[::-1]  # top level (the output) first
        outputs = [out]
        for i, head in enumerate(self.heads, start=1):
            outputs.append(F.interpolate(head(decoded[i]), size=out.shape[2:], mode=self.upsample_mode, align_corners=False))
        return outputs
