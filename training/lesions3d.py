"""Synthetic 3D grey-scale volumes with or without a lesion, for the ``lesion_cls_3d_demo`` bundle.

The 3D counterpart of :mod:`training.lesions2d`, rendered by the same code
(:func:`training.lesions.render_lesion_image`): a textured tissue background with a bias field
and noise, and, for class 1, one blob brighter or darker than the tissue. The blob is an
ellipsoid of random size, two elongations, orientation (a uniformly random rotation) and
position, whose surface is perturbed by three zonal harmonics (orders 2, 3, 4 around random
axes); its edge is soft and it has its own faint texture. The mask marks the voxels whose
centre lies inside the surface. Arrays are indexed ``(x, y, z)``, as MONAI loads NIfTI.

Example:
    >>> from training.lesions3d import make_lesion_volume
    >>> image, mask = make_lesion_volume((32, 32, 32), seed=1, lesion=True)
    >>> image.shape, image.dtype, mask.dtype, bool(mask.any())
    ((32, 32, 32), dtype('float32'), dtype('uint8'), True)
    >>> bool(make_lesion_volume((32, 32, 32), seed=1, lesion=False)[1].any())
    False
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from training.lesions import check_options, render_lesion_image, write_nifti_pair
from training.lesions2d import LESION_DEFAULTS
from training.synthetic import rng_range

__all__ = ["LESION3D_DEFAULTS", "make_lesion_volume", "write_lesion_volume"]

#: Default generator options: those of :data:`training.lesions2d.LESION_DEFAULTS` with lengths
#: in voxels of a 32-voxel volume (they scale with the volume size).
LESION3D_DEFAULTS: dict = {
    **LESION_DEFAULTS,
    "texture_sigma": (1.0, 3.0),  # fine and coarse texture scales (voxels)
    "radius": (3.5, 5.5),  # lesion semi-major axis (voxels)
    "contrast": (0.22, 0.35),  # |lesion - tissue| at the lesion centre
    "edge_width": 0.8,  # voxels, width of the soft edge
}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3 × 3 rotation (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _lesion_signed_distance(shape, rng: np.random.Generator, opts: dict, scale: float) -> np.ndarray:
    """Approximate signed distance (voxels, negative inside) to a random irregular ellipsoid."""
    a = rng_range(rng, opts["radius"]) * scale
    axes = np.array([a, a / rng_range(rng, opts["elongation"]), a / rng_range(rng, opts["elongation"])])
    rotation = _random_rotation(rng)
    margin = float(opts["margin"]) * np.asarray(shape, dtype=float)
    reach = margin + a
    centre = [rng.uniform(r, n - 1 - r) if n - 1 - r > r else (n - 1) / 2 for n, r in zip(shape, reach)]
    harmonics = []
    for k in (2, 3, 4):
        axis = rng.standard_normal(3)
        harmonics.append((k, axis / np.linalg.norm(axis), rng.uniform(0.0, float(opts["irregularity"])),
                          rng.uniform(0.0, 2 * math.pi)))
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    local = ((grid - np.asarray(centre)) @ rotation) / axes  # the ellipsoid's frame, unit sphere
    rho = np.linalg.norm(local, axis=-1)
    direction = local / np.maximum(rho, 1e-9)[..., None]
    outline = 1.0 + sum(amp * np.cos(k * np.arccos(np.clip(direction @ axis, -1.0, 1.0)) + phase)
                        for k, axis, amp, phase in harmonics)
    return (rho - outline) * axes.min()  # distance along the shortest axis: a lower bound of the true one


def make_lesion_volume(shape: Sequence[int] = (32, 32, 32), seed: int = 0, lesion: bool | None = None, **options):
    """One synthetic grey-scale volume and its lesion mask.

    Args:
        shape: array shape ``(X, Y, Z)``.
        seed: seed of the generator; the same seed and options give the same volume.
        lesion: ``True``/``False`` to draw a volume with/without a lesion; ``None`` decides
            with a fair coin from the seed.
        options: overrides of :data:`LESION3D_DEFAULTS` (e.g. ``contrast=0.2``, ``radius=(3, 4)``).

    Returns:
        ``(image, mask)``: ``image`` float32 (tissue about 0.5), ``mask`` uint8, 1 inside the
        lesion (all 0 without one).

    Example:
        >>> a, _ = make_lesion_volume((16, 16, 16), seed=4)
        >>> b, _ = make_lesion_volume((16, 16, 16), seed=4)
        >>> bool((a == b).all())
        True
    """
    opts = check_options(options, LESION3D_DEFAULTS)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, got {shape}")
    rng = np.random.default_rng(seed)
    if lesion is None:
        lesion = bool(rng.random() < 0.5)
    return render_lesion_image(shape, rng, opts, min(shape) / 32.0, _lesion_signed_distance, lesion)


def write_lesion_volume(path: str | os.PathLike, shape: Sequence[int] = (32, 32, 32), seed: int = 0,
                        lesion: bool | None = None, affine=None, **options) -> tuple[str, str]:
    """Write a volume (float32) and its mask (uint8, ``<name>_mask.nii[.gz]``) as NIfTI with ``affine``
    (default: identity). Returns ``(image_path, mask_path)``.

    Example:
        >>> import os, tempfile
        >>> from monai.transforms import LoadImage
        >>> path = os.path.join(tempfile.mkdtemp(), "a.nii.gz")
        >>> image_path, mask_path = write_lesion_volume(path, (16, 16, 16), seed=3, lesion=True)
        >>> tuple(LoadImage(image_only=True)(image_path).shape), mask_path.endswith("a_mask.nii.gz")
        ((16, 16, 16), True)
    """
    image, mask = make_lesion_volume(shape, seed=seed, lesion=lesion, **options)
    return write_nifti_pair(str(path), image, mask, affine)
