"""Regions of an image for region-wise metrics (region perturbation, IROF, faithfulness
correlation over supervoxels): a grid of patches, or SLIC supervoxels (scikit-image), in 2D and 3D.

Both return an integer label array over the spatial grid, labels ``0 … K−1`` each naming one
region, every voxel in exactly one region.

Example:
    >>> import numpy as np
    >>> labels = patch_regions((5, 4), 2)
    >>> labels.shape, int(labels.max()) + 1, labels[4, 3]
    ((5, 4), 6, np.int64(5))
    >>> image = np.zeros((1, 12, 12)); image[0, :, 6:] = 1.0
    >>> labels = supervoxels(image, n_segments=4, compactness=0.1)
    >>> bool(labels[0, 0] != labels[0, 11])  # the edge separates supervoxels
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from esegeta_monai.errors import MethodError

__all__ = ["patch_regions", "supervoxels", "region_sums"]


def patch_regions(spatial_shape: Sequence[int], patch_size: int | Sequence[int]) -> np.ndarray:
    """A grid of patches of ``patch_size`` voxels per axis (the last patch of an axis holds the
    remainder), labelled in C order."""
    shape = tuple(int(s) for s in spatial_shape)
    size = [int(patch_size)] * len(shape) if np.isscalar(patch_size) else [int(p) for p in patch_size]
    if len(size) != len(shape) or min(size) < 1:
        raise MethodError(f"patch_size {patch_size} needs one positive size per spatial axis of {shape}")
    index = [np.arange(s) // p for s, p in zip(shape, size)]
    counts = [int(i[-1]) + 1 for i in index]
    grids = np.meshgrid(*index, indexing="ij")
    return np.ravel_multi_index(grids, counts).astype(np.int64)


def supervoxels(image, n_segments: int = 100, compactness: float = 10.0) -> np.ndarray:
    """SLIC supervoxels (:func:`skimage.segmentation.slic`) of ``image`` ``(C, *spatial)`` (channels
    as SLIC's features; 2D or 3D), relabelled ``0 … K−1``. Deterministic for a given image."""
    from skimage.segmentation import slic

    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim not in (3, 4):
        raise MethodError(f"supervoxels need an image (C, *spatial) in 2D or 3D, got shape {array.shape}")
    if array.shape[0] == 1:
        labels = slic(array[0], n_segments=int(n_segments), compactness=float(compactness), channel_axis=None, start_label=0)
    else:
        labels = slic(array, n_segments=int(n_segments), compactness=float(compactness), channel_axis=0, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def region_sums(values, labels: np.ndarray) -> np.ndarray:
    """The sum of ``values`` (``(*spatial)``, or ``(C, *spatial)`` summed over channels) in each region.

    Example:
        >>> region_sums(np.arange(4.0).reshape(2, 2), np.array([[0, 1], [1, 1]])).tolist()
        [0.0, 6.0]
    """
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == labels.ndim + 1:
        array = array.sum(0)
    if array.shape != labels.shape:
        raise MethodError(f"values {array.shape} and regions {labels.shape} are not on one grid")
    return np.bincount(labels.ravel(), weights=array.ravel(), minlength=int(labels.max()) + 1)
