"""Region-of-interest masks given as files, brought onto the network's grid.

A mask or label file lives on the original scan's grid; the network sees the
preprocessed grid (reoriented, resampled, cropped). :func:`load_mask_like` resamples the
file onto the preprocessed image's grid through the two affines (MONAI's
``ResampleToMatch``, nearest neighbour) and keeps the non-zero voxels;
:func:`load_labels_like` keeps the labels (features for ablation by region).

A label must belong to the image: one with a geometry (NIfTI, NRRD, MHA, DICOM) may cover part
of it (a crop, with its affine moved accordingly: it is resampled, the rest is background) but
must overlap it; when the label or the image has no geometry (PNG, JPEG, BMP), the label is taken
to lie on the image file's grid, so it must have exactly the image file's width and height.
Otherwise a :class:`TargetError` says why. A NIfTI label's header is checked as an image's is
(:func:`esegeta_monai.monai.io.geometry.nifti_geometry`).

Example:
    >>> from esegeta_monai.monai.io.masks import load_mask_like  # doctest: +SKIP
    >>> mask = load_mask_like("lesion.nii.gz", data["image"])  # (*spatial) bool array  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import EnsureChannelFirst, LoadImage, ResampleToMatch

from esegeta_monai.errors import InputError, TargetError
from esegeta_monai.monai.io.geometry import nifti_geometry, same_affine

__all__ = ["load_mask_like", "load_labels_like", "load_label_values_like"]

logger = logging.getLogger(__name__)


def load_mask_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """Non-zero voxels of the mask file ``path`` on ``reference``'s grid, shape ``reference.shape[1:]``.

    Raises:
        TargetError: the file is missing or unreadable, has another number of dimensions or several
            channels, has no geometry and another size than the image file, does not overlap the
            image, or has no voxel inside it.
    """
    region = _label_like(path, reference) > 0
    if not region.any():
        raise TargetError(f"mask file {path} has no voxel inside the image once resampled to the network's grid")
    return region


def load_label_values_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """The label file's own integer values on ``reference``'s grid (nearest neighbour; 0 outside its
    extent), shape ``reference.shape[1:]`` — a ground truth for localisation metrics, whose label
    numbers name structures. Refused as :func:`load_mask_like`."""
    labels = _label_like(path, reference)
    if not (labels != 0).any():
        raise TargetError(f"label file {path} has no labelled voxel inside the image once resampled to the network's grid")
    return np.rint(labels).astype(np.int64)


def load_labels_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    """The integer labels of a label file on ``reference``'s grid (nearest neighbour), renumbered
    0 … K−1 (0 for the voxels outside the file's extent and its own 0 label), shape
    ``reference.shape[1:]`` — features for ablation by region. Refused as :func:`load_mask_like`."""
    labels = _label_like(path, reference)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _size(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


def _extent(affine: np.ndarray, shape) -> str:
    """The world bounding box (mm) of a voxel grid, for messages."""
    r = len(shape)
    a = to_affine_nd(r, np.asarray(affine, dtype=np.float64))
    corners = np.array(np.meshgrid(*[[-0.5, int(s) - 0.5] for s in shape], indexing="ij")).reshape(r, -1)
    world = a[:r, :r] @ corners + a[:r, r:]
    return " × ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(world.min(1), world.max(1))) + " mm"


def _label_like(path: str | Path, reference: MetaTensor) -> np.ndarray:
    path = Path(path)
    image_name = reference.meta.get("filename_or_obj", "the image") if isinstance(reference, MetaTensor) else "the image"
    if not path.is_file():
        raise TargetError(f"mask file {path} does not exist; give an existing mask/label file")
    try:
        geometry = nifti_geometry(path)
    except InputError as error:
        raise TargetError(f"mask file {error}") from None
    try:
        labels = EnsureChannelFirst()(LoadImage(image_only=True)(str(path)))
    except Exception as error:
        raise TargetError(f"mask file {path} cannot be read: {error}") from None
    if labels.ndim != reference.ndim:
        raise TargetError(
            f"mask file {path} has {labels.ndim - 1} spatial dimensions, the image has {reference.ndim - 1}; "
            "give a single-channel label of the same scan"
        )
    if labels.shape[0] != 1:
        raise TargetError(
            f"mask file {path} has {labels.shape[0]} channels (shape {tuple(labels.shape)}: a colour image?); a mask or "
            "label has one. Fix: save it as a single-channel (grey-level) image, e.g. with Pillow: "
            "Image.open(path).convert('L').save(new_path)"
        )
    label_shape = tuple(int(s) for s in labels.shape[1:])
    label_placed = "original_affine" in labels.meta
    image_placed = isinstance(reference, MetaTensor) and "original_affine" in reference.meta
    if not (label_placed and image_placed):
        # no geometry on one side (PNG, JPEG…): the label lies on the image file's grid, so it must have its size
        unplaced, suffix = ("the label", path.suffix) if not label_placed else (
            f"the image {image_name}", Path(str(image_name)).suffix)
        image_shape = reference.meta.get("spatial_shape") if isinstance(reference, MetaTensor) else None
        image_shape = tuple(int(s) for s in np.asarray(image_shape).reshape(-1)) if image_shape is not None else None
        if image_shape is None:
            raise TargetError(
                f"mask file {path}: {unplaced} has no geometry and the size of the file of {image_name} is unknown, so the label "
                "cannot be placed on it. Fix: give the image and its label as NIfTI with their affines"
            )
        if label_shape != image_shape:
            raise TargetError(
                f"mask file {path} is {_size(label_shape)} pixels, while {image_name} is {_size(image_shape)}; "
                f"{unplaced} has no geometry (format {suffix or '?'}), so a label must have "
                "exactly the image's width and height. Fix: give the label drawn on this image (same size)"
            )
        rank = int(labels.affine.shape[-1]) - 1
        original = reference.meta["original_affine"] if image_placed else np.eye(rank + 1)
        labels.affine = torch.as_tensor(to_affine_nd(rank, np.asarray(original, dtype=np.float64)), dtype=torch.float64)
    elif geometry is not None and not same_affine(labels.meta["original_affine"], geometry.affine):
        # MONAI's reader replaced a sform it disliked: use the file's affine, as nibabel reads it
        labels.affine = torch.as_tensor(to_affine_nd(int(labels.affine.shape[-1]) - 1, geometry.affine),
                                        dtype=torch.float64)
    if geometry is not None:
        for note in geometry.warnings:
            logger.warning("mask file %s", note)
    values = torch.as_tensor(np.rint(np.asarray(labels, dtype=np.float64))).float()
    stacked = MetaTensor(torch.cat([values, torch.ones_like(values)]), meta=labels.meta)  # labels and coverage
    template = MetaTensor(torch.zeros((1, *reference.shape[1:])), affine=reference.affine)
    resampled = np.asarray(ResampleToMatch(mode="nearest", padding_mode="zeros")(stacked, img_dst=template))
    if not (resampled[1] > 0.5).any():
        raise TargetError(
            f"mask file {path} does not overlap the image {image_name}: the label covers "
            f"{_extent(labels.affine, label_shape)}, the image (as the network sees it) "
            f"{_extent(reference.affine, tuple(reference.shape[1:]))}. Fix: give the label of this scan, with its "
            "affine (a label cropped from the scan keeps the scan's world coordinates)"
        )
    return np.rint(resampled[0]).astype(np.int64)
