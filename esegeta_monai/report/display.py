"""Volumes in display orientation: a scan, map or label file read, turned to RAS and cut into planes.

:func:`load_volume` reads a file (NIfTI with nibabel; NRRD, MetaImage, PNG and other formats with
SimpleITK) and reorients its array to RAS with ``nibabel.orientations``; a map or label volume on the
scan's grid is turned the same way with :meth:`Volume.same_grid` (a map written for a PNG input has
no geometry of its own, so the scan's decides). :func:`plane_image` and :func:`plane_projection` cut
a display-oriented array into a 2D panel in radiological convention:

==========  ===========================  ================================
plane       columns (left → right)       rows (top → bottom)
==========  ===========================  ================================
axial       patient's Right → Left       Anterior → Posterior
coronal     Right → Left                 Superior → Inferior
sagittal    Anterior → Posterior         Superior → Inferior
image (2D)  as axial (a PNG: as stored)  as axial (a PNG: as stored)
==========  ===========================  ================================

:func:`plane_pixel` gives the panel pixel ``(row, col)`` of a display voxel, :func:`plane_spacing`
the panel's pixel size in mm (rows, columns) and :func:`plane_letters` the orientation letters on the
left, right, top and bottom edges.

Example:
    >>> import os, tempfile, numpy as np, nibabel as nib
    >>> path = os.path.join(tempfile.mkdtemp(), "scan.nii.gz")
    >>> lps = np.diag([-0.8, -0.8, 1.2, 1.0])                      # stored L, P, S
    >>> nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), lps), path)
    >>> scan = load_volume(path)
    >>> scan.axcodes, scan.data.shape, scan.spacing
    (('L', 'P', 'S'), (6, 5, 4), (0.8, 0.8, 1.2))
    >>> scan.to_display((0, 0, 3)), scan.to_source((5, 4, 3))     # stored voxel (0,0,3) is the most R, A
    ((5, 4, 3), (0, 0, 3))
    >>> plane_image(scan.data, "coronal", scan.to_display((0, 0, 3))).shape   # rows = S→I, cols = R→L
    (4, 6)
    >>> plane_pixel("coronal", scan.to_display((0, 0, 3)), scan.data.shape)   # top-left corner
    (0, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations

from esegeta_monai.errors import InputError

__all__ = [
    "PLANES", "IMAGE_PLANE", "Volume", "load_volume", "plane_image", "plane_projection", "plane_pixel",
    "plane_spacing", "plane_letters",
]

#: the three orthogonal planes of a 3D volume, each named by the RAS axis it is perpendicular to
PLANES = ("axial", "coronal", "sagittal")
#: the one plane of a 2D image
IMAGE_PLANE = "image"
_NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_POSITIVE = "RAS"
_NEGATIVE = "LPI"
#: formats that store pixels without a position in the body (orientation letters would be invented)
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr")
# SimpleITK's world is LPS; NIfTI's and this module's is RAS
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """An image in display orientation.

    Attributes:
        data: the array reoriented to RAS (``(X, Y, Z)`` or, for 2D images, ``(X, Y)``): index ``i``
            increases towards the patient's Right, ``j`` Anterior, ``k`` Superior.
        spacing: voxel size in mm along each axis of ``data``.
        transform: the nibabel orientation (``ornt``) that turns the stored array into ``data``.
        source_shape: the stored array's shape (the file's own index space).
        affine: the stored array's voxel-to-RAS-world affine (4×4).
        axcodes: the stored array's axis codes, e.g. ``('L', 'P', 'S')``.
        orientation_known: ``False`` for pictures (PNG, JPEG...) that hold no position in the body.
        path: the file read.
        world_axes: the RAS world axis (0 = R, 1 = A, 2 = S) each axis of ``data`` runs along: ``(0, 1, 2)``
            in 3D; a 2D image's two (``(0, 1)`` for an axial one).
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    transform: np.ndarray
    source_shape: tuple[int, ...]
    affine: np.ndarray
    axcodes: tuple[str, ...]
    orientation_known: bool
    path: str
    world_axes: tuple[int, ...] = (0, 1, 2)

    @property
    def ndim(self) -> int:
        """2 for an image, 3 for a volume."""
        return self.data.ndim

    @property
    def planes(self) -> tuple[str, ...]:
        """The planes a figure of this volume draws: :data:`PLANES`, or ``("image",)`` in 2D."""
        return PLANES if self.ndim == 3 else (IMAGE_PLANE,)

    def to_display(self, index: Sequence[int]) -> tuple[int, ...]:
        """The ``data`` index of the stored array's voxel ``index``."""
        out = [0] * self.ndim
        for axis, (target, flip) in enumerate(self.transform):
            value = int(index[axis])
            out[int(target)] = value if flip > 0 else self.source_shape[axis] - 1 - value
        return tuple(out)

    def to_source(self, index: Sequence[int]) -> tuple[int, ...]:
        """The stored array's index of the ``data`` voxel ``index`` (inverse of :meth:`to_display`)."""
        out = [0] * self.ndim
        for axis, (target, flip) in enumerate(self.transform):
            value = int(index[int(target)])
            out[axis] = value if flip > 0 else self.source_shape[axis] - 1 - value
        return tuple(out)

    def same_grid(self, path: str | Path, what: str = "map") -> np.ndarray:
        """The array of ``path`` (a map or label volume on this volume's grid) in display orientation.

        Raises:
            InputError: when its shape is not the stored shape of this volume.
        """
        array = _read_array(Path(path))[0]
        if array.ndim == self.ndim + 1 and array.shape[0] == 1:  # a channel-first single map
            array = array[0]
        if tuple(array.shape) != self.source_shape:
            raise InputError(f"{path}: {what} of shape {tuple(array.shape)} is not on the grid of the scan "
                             f"{self.path} (shape {self.source_shape}); give the {what} written for this scan")
        return orientations.apply_orientation(array, self.transform)


def load_volume(path: str | Path) -> Volume:
    """Read a scan (3D ``(X, Y, Z)`` or 2D ``(X, Y)``) and reorient it to RAS for display.

    NIfTI is read with nibabel, other formats with SimpleITK (their LPS geometry converted to RAS; a
    picture is laid out as MONAI reads it, ``(width, height)``, colour averaged to grey).

    Raises:
        InputError: a missing or unreadable file, or one that is neither 2D nor 3D.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    array, affine = _read_array(path)
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: an array of shape {array.shape}; a figure needs a 2D or 3D image")
    spatial = affine[:, [*range(array.ndim), 3]]  # the world direction of each array axis (4 × (n+1))
    ornt = orientations.io_orientation(spatial)
    if np.isnan(ornt).any():
        raise InputError(f"{path}: its affine gives no direction to some axis: {affine.tolist()}")
    world_axes = (0, 1, 2)
    if array.ndim == 2:  # a 2D image lies in the plane of the two world axes it maps to, in their order
        world_axes = tuple(sorted(int(axis) for axis in ornt[:, 0]))
        ornt = np.array([[float(world_axes.index(int(a))), flip] for a, flip in ornt])
        target = np.array([[0, 1.0], [1, 1.0]])
    else:
        target = orientations.axcodes2ornt("RAS")
    transform = orientations.ornt_transform(ornt, target)
    zooms = np.sqrt((affine[:3, : array.ndim] ** 2).sum(axis=0))
    spacing = [0.0] * array.ndim
    for axis, (destination, _) in enumerate(transform):
        spacing[int(destination)] = round(float(zooms[axis]), 6)
    world = orientations.io_orientation(spatial)
    codes = tuple(_POSITIVE[int(a)] if f > 0 else _NEGATIVE[int(a)] for a, f in world)
    return Volume(
        data=orientations.apply_orientation(array, transform), spacing=tuple(spacing), transform=transform,
        source_shape=tuple(array.shape), affine=affine, axcodes=codes,
        orientation_known=not _is_picture(path), path=str(path), world_axes=world_axes,
    )


def plane_image(data: np.ndarray, plane: str, point: Sequence[int]) -> np.ndarray:
    """The 2D panel of display-oriented ``data`` in ``plane`` through the display voxel ``point``."""
    if plane == IMAGE_PLANE:
        return _lay_out(data)
    return _lay_out(np.take(data, int(point[_NORMAL_AXIS[plane]]), axis=_NORMAL_AXIS[plane]))


def plane_projection(data: np.ndarray, plane: str) -> np.ndarray:
    """The maximum-intensity projection of ``data`` across ``plane`` (NaN ignored), laid out as its panel."""
    return _lay_out(np.nanmax(data, axis=_NORMAL_AXIS[plane]))


def plane_pixel(plane: str, point: Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
    """The ``(row, col)`` of the display voxel ``point`` in the panel of ``plane`` (``shape``: the
    display array's)."""
    column_axis, row_axis = _in_plane_axes(plane)
    return shape[row_axis] - 1 - int(point[row_axis]), shape[column_axis] - 1 - int(point[column_axis])


def plane_spacing(plane: str, spacing: Sequence[float]) -> tuple[float, float]:
    """The panel's pixel size in mm: ``(row height, column width)``."""
    column_axis, row_axis = _in_plane_axes(plane)
    return float(spacing[row_axis]), float(spacing[column_axis])


def plane_letters(plane: str, world_axes: Sequence[int] = (0, 1, 2)) -> tuple[str, str, str, str]:
    """Orientation letters of the panel's left, right, top and bottom edges (``world_axes``: the
    volume's :attr:`Volume.world_axes`)."""
    column_axis, row_axis = (int(world_axes[axis]) for axis in _in_plane_axes(plane))
    return _POSITIVE[column_axis], _NEGATIVE[column_axis], _POSITIVE[row_axis], _NEGATIVE[row_axis]


def _in_plane_axes(plane: str) -> tuple[int, int]:
    """(column axis, row axis) of a plane in the display array."""
    if plane == IMAGE_PLANE:
        return 0, 1
    if plane not in _NORMAL_AXIS:
        raise ValueError(f"unknown plane {plane!r}; one of {PLANES + (IMAGE_PLANE,)}")
    first, second = (axis for axis in range(3) if axis != _NORMAL_AXIS[plane])
    return first, second


def _lay_out(section: np.ndarray) -> np.ndarray:
    """A 2D section ``[a, b]`` (RAS-increasing) as rows = ``b`` from + to −, columns = ``a`` from + to −."""
    return np.ascontiguousarray(section[::-1, ::-1].T)


def _is_picture(path: Path) -> bool:
    return path.name.lower().endswith(_PICTURE_SUFFIXES)


def _read_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The stored array (``(X, Y[, Z])``) and its RAS affine."""
    try:
        if path.name.lower().endswith(_NIFTI_SUFFIXES):
            import nibabel as nib

            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
            return np.squeeze(array, axis=tuple(range(3, array.ndim))) if array.ndim > 3 else array, image.affine
        if _is_picture(path) and (values := _esegeta_png_map(path)) is not None:
            return values, _picture_affine(values.ndim)
        return _read_simpleitk(path)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure is an unreadable input
        raise InputError(f"{path}: cannot be read as an image ({type(error).__name__}: {error})") from error


def _read_simpleitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array[..., :3].mean(axis=-1)
    array = array.T
    ndim = image.GetDimension()
    lps = np.eye(4)
    lps[:ndim, :ndim] = np.asarray(image.GetDirection(), float).reshape(ndim, ndim) * np.asarray(image.GetSpacing())
    lps[:ndim, 3] = image.GetOrigin()
    return array, _LPS_TO_RAS @ lps


def _picture_affine(ndim: int) -> np.ndarray:
    """The affine SimpleITK gives a picture (identity in LPS), so a map of it is laid out as the picture."""
    return _LPS_TO_RAS if ndim == 2 else np.eye(4)


def _esegeta_png_map(path: Path) -> np.ndarray | None:
    """A 2D map written by :func:`esegeta_monai.monai.io.png.write_png_map` (its value range in the PNG's
    text), or ``None`` for any other picture."""
    from PIL import Image

    with Image.open(path) as image:
        if "esegeta_low" not in getattr(image, "text", {}):
            return None
    from esegeta_monai.monai.io.png import read_png_map

    return read_png_map(path)
