"""Synthetic 2D grey-scale images with or without a lesion, for the ``lesion_cls_2d_demo`` bundle.

An image is a textured "tissue" background (a mean level, smooth noise at a fine and a coarse
scale, a smooth multiplicative bias field and white noise). A lesion, when there is one, is a
blob brighter or darker than the tissue: an ellipse of random size, elongation, angle and
position whose outline is perturbed by a few low angular harmonics, with a soft edge and its
own faint texture. Class 1 ("lesion") images have one, class 0 ("absent") images none. The
mask marks the pixels whose centre lies inside the outline. The rendering and the NIfTI
files are shared with the 3D volumes (:mod:`training.lesions`, :mod:`training.lesions3d`).

Arrays are indexed ``(x, y)`` as MONAI loads images (its ``PILReader`` transposes PNG rows and
columns); :func:`write_lesion_sample` writes the same array as PNG and NIfTI so that both
load identically.

Example:
    >>> from training.lesions2d import make_lesion_image
    >>> image, mask = make_lesion_image((64, 64), seed=1, lesion=True)
    >>> image.shape, image.dtype, mask.dtype, bool(mask.any())
    ((64, 64), dtype('float32'), dtype('uint8'), True)
    >>> image, mask = make_lesion_image((64, 64), seed=1, lesion=False)
    >>> bool(mask.any())
    False
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from training.lesions import check_options, mask_path_for, render_lesion_image, write_nifti_pair
from training.synthetic import rng_range

__all__ = ["LESION_DEFAULTS", "make_lesion_image", "write_lesion_sample", "mask_path_for"]

#: Default generator options (any can be overridden as a keyword argument). Lengths are in
#: pixels of a 64-pixel image and scale with the image size.
LESION_DEFAULTS: dict = {
    "tissue_intensity": 0.5,  # mean background level
    "texture_amplitude": 0.06,  # std of the smooth background texture
    "texture_sigma": (1.5, 5.0),  # fine and coarse texture scales (pixels)
    "bias_amplitude": 0.15,  # log-amplitude of the multiplicative bias field
    "noise_sigma": 0.02,  # std of the white noise
    "radius": (4.0, 8.0),  # lesion semi-major axis (pixels)
    "elongation": (1.0, 1.8),  # semi-major / semi-minor axis
    "irregularity": 0.15,  # max amplitude of each angular harmonic (2, 3, 4) of the outline
    "contrast": (0.18, 0.32),  # |lesion - tissue| at the lesion centre
    "bright_probability": 0.5,  # share of lesions brighter than the tissue (the others darker)
    "edge_width": 1.0,  # pixels, width of the soft edge
    "lesion_texture": 0.3,  # texture inside the lesion, relative to the contrast
    "margin": 0.12,  # lesion centres stay this fraction of the size away from the borders
}


def _lesion_signed_distance(shape, rng: np.random.Generator, opts: dict, scale: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to a random irregular ellipse."""
    a = rng_range(rng, opts["radius"]) * scale
    b = a / rng_range(rng, opts["elongation"])
    angle = rng.uniform(0.0, math.pi)
    margin = float(opts["margin"]) * np.asarray(shape, dtype=float)
    reach = margin + a
    centre = [rng.uniform(r, n - 1 - r) if n - 1 - r > r else (n - 1) / 2 for n, r in zip(shape, reach)]
    harmonics = [(k, rng.uniform(0.0, float(opts["irregularity"])), rng.uniform(0.0, 2 * math.pi)) for k in (2, 3, 4)]
    x, y = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    dx, dy = x - centre[0], y - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    theta = np.arctan2(v / b, u / a)
    outline = 1.0 + sum(amp * np.cos(k * theta + phase) for k, amp, phase in harmonics)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return (rho - outline) * b  # distance along the minor axis: a lower bound of the true one


def make_lesion_image(shape: Sequence[int] = (64, 64), seed: int = 0, lesion: bool | None = None, **options):
    """One synthetic grey-scale image and its lesion mask.

    Args:
        shape: array shape ``(X, Y)``.
        seed: seed of the generator; the same seed and options give the same image.
        lesion: ``True``/``False`` to draw an image with/without a lesion; ``None`` decides
            with a fair coin from the seed.
        options: overrides of :data:`LESION_DEFAULTS` (e.g. ``contrast=0.2``, ``radius=(4, 6)``).

    Returns:
        ``(image, mask)``: ``image`` float32 (tissue about 0.5), ``mask`` uint8, 1 inside the
        lesion (all 0 without one).

    Example:
        >>> a, _ = make_lesion_image((32, 32), seed=4)
        >>> b, _ = make_lesion_image((32, 32), seed=4)
        >>> bool((a == b).all())
        True
    """
    opts = check_options(options, LESION_DEFAULTS)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"shape must have 2 dimensions, got {shape}")
    rng = np.random.default_rng(seed)
    if lesion is None:
        lesion = bool(rng.random() < 0.5)
    return render_lesion_image(shape, rng, opts, min(shape) / 64.0, _lesion_signed_distance, lesion)


def write_lesion_sample(path: str | os.PathLike, shape: Sequence[int] = (64, 64), seed: int = 0,
                        lesion: bool | None = None, affine=None, **options) -> tuple[str, str]:
    """Write an image and its mask (``<name>_mask.<ext>``) as 8-bit PNG or NIfTI.

    PNG files hold the image scaled to 0–255 (``uint8``), transposed so that MONAI's
    ``PILReader`` gives back the ``(x, y)`` array; NIfTI files hold it as float32 with
    ``affine`` (default: identity), sform and qform codes 1. Returns ``(image_path, mask_path)``.

    Example:
        >>> import os, tempfile
        >>> from monai.transforms import LoadImage
        >>> folder = tempfile.mkdtemp()
        >>> png, _ = write_lesion_sample(os.path.join(folder, "a.png"), seed=3, lesion=True)
        >>> nii, _ = write_lesion_sample(os.path.join(folder, "a.nii.gz"), seed=3, lesion=True)
        >>> a, b = LoadImage(image_only=True)(png), LoadImage(image_only=True)(nii)
        >>> tuple(a.shape), bool(abs(a / 255.0 - b).max() < 0.003)
        ((64, 64), True)
    """
    image, mask = make_lesion_image(shape, seed=seed, lesion=lesion, **options)
    path = str(path)
    if not path.endswith(".png"):
        return write_nifti_pair(path, image, mask, affine)
    from PIL import Image

    mask_path = mask_path_for(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.rint(image * 255.0).astype(np.uint8).T).save(path)
    Image.fromarray((mask * 255).astype(np.uint8).T).save(mask_path)
    return path, mask_path
