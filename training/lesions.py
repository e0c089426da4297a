"""What the synthetic lesion images (2D) and volumes (3D) share: the rendering and the files.

An image is a textured "tissue" background (a mean level, smooth noise at a fine and a coarse
scale, a smooth multiplicative bias field and white noise). A lesion, when there is one, is a
blob brighter or darker than the tissue, given by a signed distance to its outline (negative
inside), with a soft edge and a faint texture of its own. The outline is the dimension-specific
part: an irregular ellipse (:mod:`training.lesions2d`) or ellipsoid (:mod:`training.lesions3d`).

- :func:`render_lesion_image`: the image and its mask from a signed-distance function;
- :func:`mask_path_for`: the mask file beside an image file;
- :func:`write_nifti_pair`: an image and its mask as float32/uint8 NIfTI with one affine.

Example:
    >>> import numpy as np
    >>> def disc(shape, rng, opts, scale):  # a fixed disc of radius 5 in the middle
    ...     x, y = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    ...     return np.hypot(x, y) - 5.0
    >>> opts = {"tissue_intensity": 0.5, "texture_amplitude": 0.0, "texture_sigma": (1.0,), "bias_amplitude": 0.0,
    ...         "noise_sigma": 0.0, "contrast": 0.3, "bright_probability": 1.0, "edge_width": 1.0, "lesion_texture": 0.0}
    >>> image, mask = render_lesion_image((32, 32), np.random.default_rng(0), opts, 0.5, disc, lesion=True)
    >>> int(mask.sum()), round(float(image.max()), 4), float(image.min())
    (80, 0.8, 0.5)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from training.synthetic import bias_field, rng_range, smooth_noise

__all__ = ["check_options", "render_lesion_image", "mask_path_for", "write_nifti_pair"]


def check_options(options: dict, defaults: dict) -> dict:
    """``defaults`` updated with ``options``; unknown keys raise :class:`ValueError`."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown lesion options: {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **options}


def render_lesion_image(shape: Sequence[int], rng: np.random.Generator, opts: dict, scale: float,
                        signed_distance: Callable, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tissue, then (if ``lesion``) the blob ``signed_distance(shape, rng, opts, scale) <= 0``, then
    the bias field and the noise; ``scale`` multiplies the texture scales (voxels). Returns
    ``(image, mask)``: float32 clipped to [0, 1], uint8."""
    tissue = np.full(shape, float(opts["tissue_intensity"]), dtype=np.float32)
    for sigma in opts["texture_sigma"]:
        tissue += (float(opts["texture_amplitude"]) / math.sqrt(2.0)) * smooth_noise(shape, sigma * scale, rng)
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion:
        sdf = signed_distance(shape, rng, opts, scale)
        mask = (sdf <= 0).astype(np.uint8)
        inside = np.clip(0.5 - sdf / float(opts["edge_width"]), 0.0, 1.0).astype(np.float32)
        sign = 1.0 if rng.random() < float(opts["bright_probability"]) else -1.0
        contrast = sign * rng_range(rng, opts["contrast"])
        texture = 1.0 + float(opts["lesion_texture"]) * smooth_noise(shape, 1.0 * scale, rng)
        tissue = tissue + inside * np.float32(contrast) * texture.astype(np.float32)
    image = tissue * bias_field(shape, float(opts["bias_amplitude"]), rng)
    image = image + rng.standard_normal(shape, dtype=np.float32) * float(opts["noise_sigma"])
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def mask_path_for(image_path: str | os.PathLike) -> str:
    """``.../name.png`` → ``.../name_mask.png`` (also ``.nii.gz``, ``.nii``).

    Example:
        >>> mask_path_for("sample/lesion_0.nii.gz")
        'sample/lesion_0_mask.nii.gz'
    """
    path = str(image_path)
    for ext in (".nii.gz", ".nii", ".png"):
        if path.endswith(ext):
            return path[: -len(ext)] + "_mask" + ext
    raise ValueError(f"{path}: expected a .png, .nii or .nii.gz file name")


def write_nifti_pair(path: str, image: np.ndarray, mask: np.ndarray, affine=None) -> tuple[str, str]:
    """``image`` (float32) at ``path`` and ``mask`` (uint8) at :func:`mask_path_for` ``(path)``, both with
    ``affine`` (default: identity), sform and qform codes 1. Returns ``(image_path, mask_path)``."""
    import nibabel as nib

    mask_path = mask_path_for(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    for data, p in ((image, path), (mask, mask_path)):
        nii = nib.Nifti1Image(data, affine)
        nii.set_qform(affine, code=1)
        nii.set_sform(affine, code=1)
        nib.save(nii, p)
    return path, mask_path
