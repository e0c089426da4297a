"""Writing a 2D attribution map as a 16-bit grey-scale PNG that keeps its values recoverable.

PNG has no room for floats or an affine, so a map is scaled into 0–65535 (MONAI
``PILWriter``, ``uint16``) by its largest absolute value ``m``:

- a map with no negative value: ``0 → 0`` and ``m → 65535``;
- a signed map: ``-m → 0``, ``0 → 32767.5`` (mid-grey), ``m → 65535``.

The value range ``[low, high]`` is stored in the PNG's text chunks ``esegeta_low`` and
``esegeta_high``, so that ``value = low + pixel / 65535 * (high - low)`` (to 1/65535 of the
range); :func:`read_png_map` does that. Rows and columns are laid out as MONAI's
``PILReader`` reads them, so a map of a PNG input has the input's width and height.

Example:
    >>> import os, tempfile, numpy as np
    >>> from esegeta_monai.monai.io.png import read_png_map, write_png_map
    >>> path = os.path.join(tempfile.mkdtemp(), "map.png")
    >>> values = np.linspace(-1.0, 3.0, 12, dtype=np.float32).reshape(3, 4)
    >>> write_png_map(values, path)
    >>> bool(np.abs(read_png_map(path) - values).max() < 1e-4)
    True
"""

from __future__ import annotations

import os

import numpy as np
from monai.data import PILWriter

__all__ = ["write_png_map", "read_png_map"]

_SCALE = 65535


def write_png_map(array: np.ndarray, filename: str | os.PathLike) -> None:
    """Write ``array`` (``(X, Y)`` or ``(1, X, Y)``, finite) as a 16-bit PNG with its value range."""
    from PIL.PngImagePlugin import PngInfo

    data = np.asarray(array, dtype=np.float64)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ValueError(f"a PNG holds one 2D map, got an array of shape {np.shape(array)}")
    m = float(np.abs(data).max()) or 1.0
    low = 0.0 if float(data.min()) >= 0 else -m
    scaled = (data - low) / (m - low)
    writer = PILWriter(output_dtype=np.uint16, scale=None)
    writer.set_data_array(np.rint(scaled * _SCALE), channel_dim=None)
    writer.set_metadata(None, resample=False)
    info = PngInfo()
    info.add_text("esegeta_low", repr(low))
    info.add_text("esegeta_high", repr(m))
    writer.write(str(filename), pnginfo=info, format="PNG")


def read_png_map(filename: str | os.PathLike) -> np.ndarray:
    """The ``(X, Y)`` float map of a PNG written by :func:`write_png_map` (MONAI's axis order)."""
    from PIL import Image

    with Image.open(filename) as image:
        pixels = np.asarray(image, dtype=np.float64).T
        low, high = float(image.text["esegeta_low"]), float(image.text["esegeta_high"])
    return (low + pixels / _SCALE * (high - low)).astype(np.float32)
