"""Region-of-interest masks given as files, brought onto the network's grid.

A mask or label file lives on the original scan's grid; the network sees the
preprocessed grid (reoriented, resampled, cropped). :func:`load_mask_like` resamples the
file onto the preprocessed image's grid through the two affines (MONAI's
``ResampleToMatch``, nearest neighbour) and keeps the non-zero voxels;
:func:`load_labels_like` keeps the labels (features for ablation by region).

Example:
    >>> from esegeta_monai.monai.io.masks import load_mask_like  # doctest: +SKIP
    >>> mask = load_mask_like("lesion.nii.gz", data["image"])  # (*spatial) bool array  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, ResampleToMatch

from esegeta_monai.errors import TargetError

__all__ = ["load_mask_like", "load_labels_like"]


def load_mask_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """Non-zero voxels of the mask file ``path`` on ``reference``'s grid, shape ``reference.shape[1:]``."""
    region = _label_like(path, reference) > 0
    if not region.any():
        raise TargetError(f"mask file {path} has no voxel inside the image once resampled to the network's grid")
    return region


def load_labels_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """The integer labels of a label file on ``reference``'s grid (nearest neighbour), renumbered
    0 … K−1 (0 for the voxels outside the file's extent and its own 0 label), shape
    ``reference.shape[1:]`` — features for ablation by region."""
    labels = _label_like(path, reference)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _label_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"mask file {path} does not exist; give an existing mask/label file")
    try:
        labels = EnsureChannelFirst()(LoadImage(image_only=True)(str(path)))
    except Exception as error:
        raise TargetError(f"mask file {path} cannot be read: {error}") from None
    if labels.ndim != reference.ndim:
        raise TargetError(
            f"mask file {path} has {labels.ndim - 1} spatial dimensions, the image has {reference.ndim - 1}; "
            "give a single-channel label of the same scan"
        )
    labels = MetaTensor(torch.as_tensor(np.rint(np.asarray(labels, dtype=np.float64))).float(), meta=labels.meta)
    template = MetaTensor(torch.zeros((1, *reference.shape[1:])), affine=reference.affine)
    resampled = ResampleToMatch(mode="nearest", padding_mode="zeros")(labels, img_dst=template)
    return np.rint(np.asarray(resampled[0])).astype(np.int64)
