"""Region-of-interest masks given as files, brought onto the network's grid.

A mask or label file lives on the original scan's grid; the network sees the
preprocessed grid (reoriented, resampled, cropped). :func:`load_mask_like` resamples the
file onto the preprocessed image's grid through the two affines (MONAI's
``ResampleToMatch``, nearest neighbour) and keeps the non-zero voxels.

Example:
    >>> from esegeta_monai.io.masks import load_mask_like  # doctest: +SKIP
    >>> mask = load_mask_like("lesion.nii.gz", data["image"])  # (*spatial) bool array  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, ResampleToMatch

from esegeta_monai.errors import TargetError

__all__ = ["load_mask_like"]


def load_mask_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """Non-zero voxels of the mask file ``path`` on ``reference``'s grid, shape ``reference.shape[1:]``."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"mask file {path} does not exist; give an existing mask/label file")
    try:
        mask = EnsureChannelFirst()(LoadImage(image_only=True)(str(path)))
    except Exception as error:
        raise TargetError(f"mask file {path} cannot be read: {error}") from None
    if mask.ndim != reference.ndim:
        raise TargetError(
            f"mask file {path} has {mask.ndim - 1} spatial dimensions, the image has {reference.ndim - 1}; "
            "give a single-channel label of the same scan"
        )
    mask = MetaTensor((torch.as_tensor(np.asarray(mask)) != 0).float(), meta=mask.meta)
    template = MetaTensor(torch.zeros((1, *reference.shape[1:])), affine=reference.affine)
    resampled = ResampleToMatch(mode="nearest", padding_mode="zeros")(mask, img_dst=template)
    region = np.asarray(resampled[0]) > 0.5
    if not region.any():
        raise TargetError(f"mask file {path} has no voxel inside the image once resampled to the network's grid")
    return region
