"""A SimpleITK-backed MONAI image reader: MHA/MHD, NRRD and DICOM series without ``itk``.

MONAI's own readers cover NIfTI (``NibabelReader``) and PNG/JPEG (``PILReader``). MetaImage
(``.mha``/``.mhd``), NRRD and DICOM need ``itk``, ``pynrrd`` or ``pydicom``, which are often
missing; SimpleITK is a dependency of esegeta_monai. :class:`SimpleITKReader` reads these files
exactly as MONAI's ``ITKReader`` would (array indexed ``(x, y, z)``, affine converted from
ITK's LPS to MONAI's RAS, ``original_affine``/``spatial_shape``/``original_channel_dim`` in the
meta), so everything downstream (``Orientationd``, ``Spacingd``, inversion, writing) behaves
the same.

:func:`register_simpleitk_reader` adds it to MONAI's default readers as the *last* resort:
every ``LoadImage``/``LoadImaged`` built afterwards falls back to it only for files that no
installed MONAI reader claims (``itk``, ``pynrrd`` and ``pydicom`` keep priority when
installed). Importing :mod:`esegeta_monai.monai.io` calls it; :func:`add_reader_to` does the same
for loaders that were built before (a bundle's preprocessing).

Example:
    >>> import os, tempfile, numpy as np, SimpleITK as sitk
    >>> from monai.transforms import LoadImage
    >>> from esegeta_monai.monai.io.readers import register_simpleitk_reader
    >>> register_simpleitk_reader()
    >>> image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))  # (z, y, x) -> size (6, 5, 4)
    >>> image.SetSpacing((0.8, 0.8, 1.2)); image.SetOrigin((10.0, 20.0, 30.0))
    >>> path = os.path.join(tempfile.mkdtemp(), "scan.mha"); sitk.WriteImage(image, path)
    >>> loaded = LoadImage(image_only=True)(path)
    >>> tuple(loaded.shape), loaded.affine[:3, 3].tolist()   # (x, y, z); origin LPS -> RAS
    ((6, 5, 4), [-10.0, -20.0, 30.0])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.transforms import Compose, LoadImage, LoadImaged
from monai.transforms.io.array import SUPPORTED_READERS
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SimpleITKReader", "register_simpleitk_reader", "add_reader_to", "SIMPLEITK_SUFFIXES"]

#: File suffixes the reader claims (besides folders, read as DICOM series).
SIMPLEITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".dicom", ".ima")
_KEY = "simpleitkreader"


class SimpleITKReader(ImageReader):
    """Read MetaImage, NRRD, DICOM files and DICOM series (a folder) with SimpleITK.

    Args:
        channel_dim: the channel dimension of the returned array (``None``: none for scalar
            images, the last one for vector images), stored as ``original_channel_dim``.
        series_name: the DICOM series UID to read when a folder holds several (default: the first).
        affine_lps_to_ras: convert the affine from ITK's LPS to RAS (default, as NIfTI and
            MONAI's ``NibabelReader`` use).
    """

    def __init__(self, channel_dim: int | None = None, series_name: str = "", affine_lps_to_ras: bool = True):
        super().__init__()
        self.channel_dim = channel_dim
        self.series_name = series_name
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """``True`` for folders (DICOM series) and files ending in :data:`SIMPLEITK_SUFFIXES`."""
        return all(Path(f).is_dir() or str(f).lower().endswith(SIMPLEITK_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs) -> Any:
        """SimpleITK image(s) of the file(s) or DICOM folder(s) ``data``."""
        import SimpleITK as sitk

        images = []
        for name in map(str, ensure_tuple(data)):
            if Path(name).is_dir():
                series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(name)
                if not series:
                    raise FileNotFoundError(f"{name}: no DICOM series in this folder")
                if len(series) > 1 and not self.series_name:
                    warnings.warn(f"{name} holds {len(series)} DICOM series; reading the first, {series[0]}", stacklevel=2)
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(name, self.series_name or series[0]))
                images.append(reader.Execute())
            else:
                images.append(sitk.ReadImage(name))
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` as MONAI's ``ITKReader`` returns them; several images are stacked first."""
        arrays, compatible = [], {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # a sitk.Image is iterable
            array = self._array(image)
            meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_")}
            meta["spacing"] = np.asarray(image.GetSpacing())
            meta[MetaKeys.ORIGINAL_AFFINE] = self._affine(image)
            meta[MetaKeys.AFFINE] = meta[MetaKeys.ORIGINAL_AFFINE].copy()
            meta[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = (
                (float("nan") if image.GetNumberOfComponentsPerPixel() == 1 else -1)
                if self.channel_dim is None else self.channel_dim
            )
            arrays.append(array)
            _copy_compatible_dict(meta, compatible)
        return _stack_images(arrays, compatible), compatible

    def _affine(self, image) -> np.ndarray:
        ndim = image.GetDimension()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
        affine = np.eye(ndim + 1)
        affine[:ndim, :ndim] = direction @ np.diag(image.GetSpacing())
        affine[:ndim, -1] = image.GetOrigin()
        return orientation_ras_lps(affine) if self.affine_lps_to_ras else affine

    @staticmethod
    def _array(image) -> np.ndarray:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
        if image.GetNumberOfComponentsPerPixel() == 1:
            return array.T
        return np.moveaxis(array.T, 0, -1)  # (x, y, z, c)


def register_simpleitk_reader() -> None:
    """Make :class:`SimpleITKReader` MONAI's last-resort default reader (idempotent).

    It goes first in ``monai.transforms.io.array.SUPPORTED_READERS``, so ``LoadImage``,
    which tries its readers from the last registered to the first, tries it last.
    """
    if _KEY in SUPPORTED_READERS:
        return
    others = dict(SUPPORTED_READERS)
    SUPPORTED_READERS.clear()
    SUPPORTED_READERS[_KEY] = SimpleITKReader
    SUPPORTED_READERS.update(others)


def _loaders(transform: Any):
    if isinstance(transform, LoadImaged):
        yield transform._loader
    elif isinstance(transform, LoadImage):
        yield transform
    elif isinstance(transform, Compose):
        for t in transform.transforms:
            yield from _loaders(t)


def add_reader_to(transform: Any) -> Any:
    """Give every ``LoadImage(d)`` in ``transform`` (a Compose, nested or not) the SimpleITK
    fallback reader, if it lacks one; returns ``transform``.

    Example:
        >>> from monai.transforms import LoadImaged
        >>> loader = add_reader_to(LoadImaged("image"))
        >>> any(isinstance(r, SimpleITKReader) for r in loader._loader.readers)
        True
    """
    for loader in _loaders(transform):
        if not any(isinstance(r, SimpleITKReader) for r in loader.readers):
            loader.readers.insert(0, SimpleITKReader())
    return transform
