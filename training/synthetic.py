"""Random fields shared by the synthetic demo data generators (2D lesions, 3D vessels).

- :func:`rng_range`: a fixed value or a uniform draw from an inclusive ``(low, high)`` range;
- :func:`smooth_noise`: Gaussian-smoothed white noise with unit standard deviation (texture);
- :func:`bias_field`: a smooth multiplicative field ``exp(amplitude * p)``, ``p`` a random
  quadratic polynomial of the coordinates (an MR-like intensity inhomogeneity).

All draw from a caller's :class:`numpy.random.Generator`, so a seed fixes the result.

Example:
    >>> import numpy as np
    >>> from training.synthetic import bias_field, smooth_noise
    >>> rng = np.random.default_rng(0)
    >>> texture = smooth_noise((32, 32), 3.0, rng)
    >>> round(float(texture.std()), 3), texture.dtype
    (1.0, dtype('float32'))
    >>> field = bias_field((32, 32), 0.2, rng)
    >>> bool(np.exp(-0.2) - 1e-6 <= field.min() and field.max() <= np.exp(0.2) + 1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["rng_range", "smooth_noise", "bias_field"]


def rng_range(rng: np.random.Generator, value, integer: bool = False):
    """``value`` itself, or a uniform draw in ``[low, high]`` when it is a ``(low, high)`` pair.

    Example:
        >>> rng_range(np.random.default_rng(0), (3, 3), integer=True), rng_range(None, 0.5)
        (3, 0.5)
    """
    if isinstance(value, (tuple, list)):
        lo, hi = value
        return int(rng.integers(lo, hi + 1)) if integer else float(rng.uniform(lo, hi))
    return int(value) if integer else float(value)


def smooth_noise(shape: Sequence[int], sigma_vox, rng: np.random.Generator) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma_vox`` voxels (periodic), scaled to unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def bias_field(shape: Sequence[int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field ``exp(amplitude * p(x))``, ``p`` a random quadratic, max|p| = 1.

    ``p`` combines the linear terms, the squares and the cross products of the coordinates
    (each in ``[-1, 1]``), in this order, with standard normal coefficients; it works in any
    number of dimensions.
    """
    ndim = len(shape)
    axes = []
    for d, n in enumerate(shape):
        index = [None] * ndim
        index[d] = slice(None)
        axes.append(np.linspace(-1.0, 1.0, n, dtype=np.float32)[tuple(index)])
    squares = [a * a for a in axes]
    crosses = [axes[i] * axes[j] for i in range(ndim) for j in range(i + 1, ndim)]
    terms = [*axes, *squares, *crosses]
    c = rng.normal(size=len(terms))
    poly = sum(float(ci) * t for ci, t in zip(c, terms))
    poly = np.broadcast_to(poly, shape)
    poly = poly - poly.mean()
    poly = poly / max(float(np.abs(poly).max()), 1e-6)
    return np.exp(amplitude * poly).astype(np.float32)
