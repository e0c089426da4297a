"""Feature masks for perturbation methods: SLIC supervoxels and blocks of a grid.

Example:
    >>> from esegeta_monai.core.features import grid_features
    >>> grid_features((2, 4), (1, 2))[0, 0].tolist()
    [[0, 0, 1, 1], [2, 2, 3, 3]]
"""

from __future__ import annotations

import numpy as np
import torch

from esegeta_monai.errors import MethodError

__all__ = ["supervoxels", "grid_features"]


def supervoxels(inputs: torch.Tensor, n_segments: int = 100, compactness: float = 0.1) -> torch.Tensor:
    """SLIC supervoxels (scikit-image) of each image, as a feature mask ``(B, 1, *spatial)``
    of integer labels from 0, shared by all channels (2D and 3D; channels as SLIC's features).

    Example:
        >>> import torch
        >>> mask = supervoxels(torch.rand(1, 1, 16, 16, 16), n_segments=8)
        >>> mask.shape, int(mask.min())
        (torch.Size([1, 1, 16, 16, 16]), 0)
    """
    from skimage.segmentation import slic

    masks = []
    for image in inputs.detach().cpu().float().numpy():
        labels = slic(np.moveaxis(image, 0, -1), n_segments=int(n_segments), compactness=float(compactness),
                      channel_axis=-1, start_label=0, enforce_connectivity=True)
        masks.append(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))  # labels 0..K-1
    return torch.as_tensor(np.stack(masks))[:, None].to(inputs.device)


def grid_features(shape, block) -> torch.Tensor:
    """A feature mask of blocks of ``block`` voxels over ``shape`` (spatial), ``(1, 1, *shape)``.

    Example:
        >>> grid_features((4, 4), (2, 2))[0, 0].tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    shape, block = tuple(int(s) for s in shape), tuple(int(b) for b in block)
    if len(block) != len(shape) or any(b < 1 for b in block):
        raise MethodError(f"feature blocks {block} do not fit the image's {len(shape)} spatial axes")
    counts = [-(-s // b) for s, b in zip(shape, block)]
    index = torch.zeros(shape, dtype=torch.long)
    for axis, (s, b) in enumerate(zip(shape, block)):
        coordinate = (torch.arange(s) // b).view(*[-1 if a == axis else 1 for a in range(len(shape))])
        index = index * counts[axis] + coordinate
    return index[None, None]
