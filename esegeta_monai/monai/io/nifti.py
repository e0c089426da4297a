"""Writing attribution maps on the grid of the input file (NIfTI; NRRD or, for 2D, PNG on request).

An attribution is computed on the preprocessed image (reoriented, resampled, cropped…). To
overlay it on the original scan in 3D Slicer it must go back to the file's grid: the image's
``applied_operations`` are inverted with :class:`monai.transforms.Invertd` (the bundle's own
preprocessing, linear interpolation), then written by :class:`monai.data.NibabelWriter` as
float32 with the input's affine (sform and qform codes 1, which ITK and Slicer read). NRRD is
that NIfTI converted by SimpleITK (the same geometry); PNG holds a 2D map scaled to 16 bits with
its value range (:mod:`esegeta_monai.monai.io.png`).

A map is never written on another geometry than the input's: before writing, its affine and
shape are compared with the input file's (for NIfTI, the affine as nibabel reads it and the
file's shape; for other formats, the reader's original affine and spatial shape), and after
writing the file is read back and compared again; a difference beyond 1e-4 mm raises an
``OutputError`` and leaves nothing behind. A one-channel map keeps every axis of the input,
single-slice ones included (``(96, 96, 1)`` stays 3D). When a NIfTI input's sform and qform
disagree, the map gets both (the sform as its affine, the input's qform as its qform), so that
nibabel and ITK/3D Slicer each place it exactly where they place the scan.

Writing is atomic (:mod:`esegeta_monai.jobs.atomic`): the file is written under a temporary name
in the output folder and moved to its final name, so an interrupted run never leaves a
half-written map behind. ``publish=`` hands that last move to the caller (the cohort runner moves
the file and appends its record to the journal in one step).

Example:
    >>> import numpy as np, nibabel as nib, tempfile, os
    >>> from esegeta_monai.monai.io import load_for_explanation, save_attribution
    >>> folder = tempfile.mkdtemp()
    >>> scan = os.path.join(folder, "scan.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.random.rand(8, 9, 10).astype(np.float32), np.diag([2, 2, 3, 1])), scan)
    >>> data = load_for_explanation(scan)
    >>> out = save_attribution(data["image"] ** 2, data, None, os.path.join(folder, "map.nii.gz"))
    >>> nib.load(out).shape
    (8, 9, 10)
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.data.utils import orientation_ras_lps, to_affine_nd
from monai.transforms import Invertd, SpatialResample
from monai.transforms.inverse import InvertibleTransform

from esegeta_monai.errors import EsegetaError, InputError, OutputError
from esegeta_monai.jobs.atomic import Publish, atomic_path, temporary_path
from esegeta_monai.maps import CHANNEL_REDUCTIONS, check_channel_reduce, reduce_channels
from esegeta_monai.monai.io.geometry import expected_geometry, is_sheared, same_affine
from esegeta_monai.monai.io.png import write_png_map

__all__ = ["save_attribution", "LabelMap", "prediction_labels", "write_label_map", "write_map", "check_output_dir", "CHANNEL_REDUCTIONS", "WRITER_FORMATS"]

logger = logging.getLogger(__name__)

#: Output formats and their accepted file suffixes.
WRITER_FORMATS = {"nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",), "png": (".png",)}

_ATTR_KEY = "__esegeta_attribution__"
_AFFINE_ATOL = 1e-4


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (with its parents) if needed and check that files can be written in it.

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the folder cannot be created (e.g. a parent is a file) or is not writable.
    """
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"{folder}: cannot create the output folder ({type(e).__name__}: {e.strerror or e}). "
            "Fix: choose another output folder (--out) that you can write to"
        ) from e
    if not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder. Fix: choose another output folder (--out)")
    probe = folder / f".esegeta-write-test-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as e:
        raise OutputError(
            f"{folder}: the output folder is not writable ({type(e).__name__}: {e.strerror or e}). "
            "Fix: choose another output folder (--out) or fix its permissions"
        ) from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder


def _suffix_of(path: Path, writer_format: str) -> str:
    if writer_format not in WRITER_FORMATS:
        raise OutputError(
            f"writer_format={writer_format!r} is not supported; choose one of {tuple(WRITER_FORMATS)}"
        )
    name = path.name.lower()
    for suffix in WRITER_FORMATS[writer_format]:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise OutputError(
        f"{path}: a {writer_format} file name must end with one of {WRITER_FORMATS[writer_format]}. "
        f"Fix: rename the output, e.g. {path.name.split('.')[0] or 'map'}{WRITER_FORMATS[writer_format][0]}"
    )


def _reduce_channels(att: torch.Tensor, channel_reduce: str) -> torch.Tensor:
    """``(C, *spatial)`` reduced over its channels (:func:`esegeta_monai.maps.reduce_channels`)."""
    return reduce_channels(att, channel_reduce, channel_dim=0)


def _as_float_tensor(attribution: Any) -> torch.Tensor:
    if isinstance(attribution, MetaTensor):
        attribution = attribution.as_tensor()
    att = torch.as_tensor(np.asarray(attribution) if not isinstance(attribution, torch.Tensor) else attribution)
    return att.detach().to(device="cpu", dtype=torch.float32)


def _invert(att: MetaTensor, data: Mapping, preprocessing: Any, image_key: str) -> MetaTensor:
    """Map ``att`` (on the preprocessed grid) back to the file's grid with the bundle's preprocessing."""
    img = data[image_key]
    ops = list(getattr(img, "applied_operations", []) or [])
    if preprocessing is None or not ops:
        return att
    if not isinstance(preprocessing, InvertibleTransform):
        logger.warning(
            "the preprocessing (%s) is not invertible: the map is resampled to the input grid from its affine",
            type(preprocessing).__name__,
        )
        return att
    inverter = Invertd(
        keys=_ATTR_KEY, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True
    )
    out = inverter({image_key: img, _ATTR_KEY: att})[_ATTR_KEY]
    if not isinstance(out, MetaTensor):  # pragma: no cover - Invertd returns MetaTensors with to_tensor=True
        out = MetaTensor(torch.as_tensor(out), meta=att.meta)
    return out


def _to_original_grid(inv: MetaTensor, meta: Mapping) -> MetaTensor:
    """Resample with MONAI when the inversion did not land exactly on the file's grid.

    This happens when the preprocessing contains spatial transforms that are not invertible; a
    complete inversion leaves nothing to do here.
    """
    original_affine = meta.get("original_affine")
    spatial_shape = meta.get("spatial_shape")
    if original_affine is None or spatial_shape is None:
        return inv
    target_affine = torch.as_tensor(np.asarray(original_affine), dtype=torch.float64)
    target_shape = tuple(int(s) for s in np.asarray(spatial_shape).reshape(-1))
    if len(target_shape) != inv.ndim - 1:
        return inv
    same_shape = tuple(inv.shape[1:]) == target_shape
    same_affine = inv.affine.shape == target_affine.shape and torch.allclose(
        inv.affine.to(torch.float64), target_affine, atol=_AFFINE_ATOL, rtol=0
    )
    if same_shape and same_affine:
        return inv
    logger.warning(
        "the inverted map is not on the input grid (shape %s vs %s): resampling it with MONAI SpatialResample",
        tuple(inv.shape[1:]),
        target_shape,
    )
    resampler = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float64)
    out = resampler(inv, dst_affine=target_affine, spatial_size=target_shape)
    return out if isinstance(out, MetaTensor) else MetaTensor(out, affine=target_affine)


def _write_nifti(array: torch.Tensor, affine: torch.Tensor, filename: Path, qform: np.ndarray | None = None,
                 dtype: type = np.float32) -> None:
    """Write ``(C, *spatial)`` as float32 NIfTI with ``affine`` (sform code 1; qform code 1, from
    ``qform`` when given, else from ``affine``).

    A one-channel map has exactly the map's spatial shape, single-slice axes included ((X, Y, 1)
    stays 3D); several channels go last: ``(X, Y, Z, C)``, or ``(X, Y, 1, C)`` for 2D maps.
    """
    spatial = array.ndim - 1
    shape = tuple(int(s) for s in array.shape[1:])
    if spatial < 3:  # NIfTI is 3D: 2D maps get a singleton third axis and a 4x4 affine
        array = array.reshape(*array.shape, *([1] * (3 - spatial)))
    affine4 = to_affine_nd(3, np.asarray(affine, dtype=np.float64))
    writer = NibabelWriter(output_dtype=dtype)
    # reshaped after set_metadata: MONAI's resampling check fails on 2D-shaped channel-last arrays
    writer.set_data_array(array.numpy(), channel_dim=0, squeeze_end_dims=False)  # channels last: (X, Y, Z, C)
    writer.set_metadata({"affine": affine4, "original_affine": affine4}, resample=False)
    data = np.asarray(writer.data_obj)
    if array.shape[0] == 1:
        data = data.reshape(shape)  # the channel (and a 2D map's added axis) only: never a spatial axis of size 1
    writer.data_obj = data
    writer.write(str(filename), verbose=False)  # sform and qform from affine4, codes 1 (ITK and 3D Slicer read them)
    if qform is not None:  # the input's own qform (it disagrees with its sform): rewritten in the header
        written = nib.load(str(filename))
        image = nib.Nifti1Image(np.asarray(written.dataobj), affine4, written.header)
        image.set_sform(affine4, code=1)
        image.set_qform(to_affine_nd(3, np.asarray(qform, dtype=np.float64)), code=1)
        nib.save(image, str(filename))


def _describe_affine(affine: np.ndarray) -> str:
    return np.array2string(np.asarray(affine, dtype=np.float64)[:3], precision=4, suppress_small=True,
                           separator=", ").replace("\n", "")


def _geometry_error(out_path: Path, affine, shape, expected_affine, expected_shape, source: str, what: str) -> OutputError | None:
    """An :class:`OutputError` if ``affine``/``shape`` (of the map, ``what``) are not the expected
    ones, else ``None``."""
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        return OutputError(
            f"{out_path}: {what} has the spatial shape {tuple(shape)}, the input {tuple(expected_shape)}: the map would "
            "not lie on the input's grid, so it was not written. Fix: pass the data dict returned by "
            "load_for_explanation together with the same preprocessing"
        )
    if expected_affine is not None and not same_affine(affine, expected_affine):
        return OutputError(
            f"{out_path}: {what} has the affine {_describe_affine(to_affine_nd(3, np.asarray(affine, np.float64)))}, which "
            f"differs from {source} {_describe_affine(to_affine_nd(3, np.asarray(expected_affine, np.float64)))}: the "
            "map would not be aligned with the input, so it was not written. Fix: if the input file changed since "
            "it was loaded, run again; otherwise load the image with load_for_explanation and pass the same "
            "preprocessing to save_attribution"
        )
    return None


def _verify_written(path: Path, writer_format: str, channels: int, expected_affine, expected_shape, source: str,
                    out_path: Path) -> None:
    """Read back the geometry of the file just written and raise :class:`OutputError` if it is not
    the expected one (a writer that loses or changes the geometry never publishes a map)."""
    spatial = len(expected_shape) if expected_shape is not None else None
    if writer_format == "nifti":
        written = nib.load(str(path))
        shape, affine = tuple(int(s) for s in written.shape), np.asarray(written.affine, dtype=np.float64)
        if spatial is not None and channels == 1 and len(shape) != spatial:
            shape = shape + (-1,)  # a lost or added axis is a shape error
    elif writer_format == "nrrd":
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        lps = np.eye(dim + 1)
        lps[:dim, :dim] = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim) @ np.diag(reader.GetSpacing())
        lps[:dim, dim] = reader.GetOrigin()
        affine, shape = orientation_ras_lps(lps), tuple(int(s) for s in reader.GetSize())
        rank = min(dim, spatial or dim)
        affine = to_affine_nd(rank, affine)
        expected_affine = None if expected_affine is None else to_affine_nd(rank, np.asarray(expected_affine, np.float64))
    else:  # PNG: no geometry, its width and height only
        from PIL import Image

        with Image.open(path) as image:
            shape, affine, expected_affine = tuple(image.size), None, None
    if spatial is not None:
        shape = shape[:spatial] if len(shape) >= spatial else shape
    error = _geometry_error(out_path, affine, shape, expected_affine, expected_shape, source, "the written map")
    if error is not None:
        if writer_format == "nrrd" and expected_affine is not None and is_sheared(to_affine_nd(3, expected_affine)):
            raise OutputError(f"{error} (NRRD is written through SimpleITK, which holds only rotations and voxel "
                              "sizes, no shear: write this map as NIfTI, --format nifti)")
        raise error


def save_attribution(
    attribution: torch.Tensor | np.ndarray,
    data: Mapping,
    preprocessing: Callable | None,
    out_path: str | os.PathLike,
    image_key: str = "image",
    channel_reduce: str = "sum",
    writer_format: str = "nifti",
    publish: Publish | None = None,
) -> Path:
    """Write an attribution map aligned with the input file, undoing the preprocessing.

    Args:
        attribution: the map on the preprocessed grid, ``(C, *spatial)`` (a leading batch
            dimension of size 1 is accepted); same spatial shape as ``data[image_key]``.
        data: the dict returned by :func:`esegeta_monai.monai.io.load_for_explanation`;
            ``data[image_key]`` carries the meta and ``applied_operations`` used for inversion.
        preprocessing: the transform that produced ``data`` (the bundle's Compose), inverted with
            :class:`monai.transforms.Invertd` (``nearest_interp=False``). ``None``: nothing to invert.
        out_path: the exact file to write (``.nii.gz``/``.nii`` for NIfTI, ``.nrrd`` for NRRD,
            ``.png`` for PNG). Its folder is created if needed.
        image_key: the key of the image in ``data``.
        channel_reduce: ``"sum"`` (default) or ``"mean"`` over channels (one map), or ``"none"``
            (one volume per channel, written as a 4D file).
        writer_format: ``"nifti"`` (MONAI ``NibabelWriter``: float32, sform/qform code 1) or
            ``"nrrd"`` (the NIfTI converted by SimpleITK, same geometry) or, for 2D maps with one
            channel, ``"png"`` (16-bit grey levels, value range in text chunks, no geometry:
            :func:`esegeta_monai.monai.io.png.write_png_map`).
        publish: ``publish(temporary, out_path)`` moves the finished file into place (default
            ``os.replace``).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``data`` lacks the image, or the attribution does not match its shape.
        OutputError: the folder cannot be written, writing failed (no partial file is left),
            PNG was asked for a 3D or multi-channel map, or the map's affine or shape (before
            writing, or as read back from the written file) differs from the input file's
            (:func:`esegeta_monai.monai.io.geometry.expected_geometry`).
    """
    out_path = Path(out_path).expanduser()
    _suffix_of(out_path, writer_format)  # a wrong suffix fails before any work
    try:
        check_channel_reduce(channel_reduce)
    except EsegetaError as error:
        raise InputError(str(error)) from None
    if image_key not in data:
        raise InputError(
            f"data has no key {image_key!r} (keys: {sorted(map(str, data))}); pass the image_key used "
            "when loading the image"
        )
    img = data[image_key]
    if not isinstance(img, MetaTensor):
        raise InputError(
            f"data[{image_key!r}] is a {type(img).__name__}, not a MetaTensor: its affine is unknown. "
            "Load the image with esegeta_monai.monai.io.load_for_explanation"
        )
    att = _as_float_tensor(attribution)
    if att.ndim == img.ndim + 1 and att.shape[0] == 1:
        att = att[0]
    if att.ndim == img.ndim - 1:
        att = att[None]
    if isinstance(attribution, MetaTensor) and tuple(att.shape[1:]) != tuple(img.shape[1:]) and not attribution.applied_operations:
        # a map on a coarser grid of its own (resolution="layer"): its affine already places it in
        # the scanner's space; the preprocessing's inverses do not apply to that grid
        return write_map(_reduce_channels(att, channel_reduce), attribution.affine, out_path, writer_format, publish)
    if tuple(att.shape[1:]) != tuple(img.shape[1:]):
        raise InputError(
            f"attribution of shape {tuple(att.shape)} does not match the preprocessed image "
            f"{tuple(img.shape)} ({img.meta.get('filename_or_obj', image_key)}): it must be (C, *spatial) "
            "on the preprocessed grid"
        )
    array, affine, qform, expected = _on_input_grid(_reduce_channels(att, channel_reduce), img, data, preprocessing,
                                                    image_key, out_path, "the map")
    return write_map(array, affine, out_path, writer_format, publish, qform=qform, expected=expected)


def _on_input_grid(att: torch.Tensor, img: MetaTensor, data: Mapping, preprocessing: Any, image_key: str, out_path: Path,
                   what: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None, tuple]:
    """``att`` ``(C, *spatial)`` on the preprocessed grid, inverted onto the input file's grid and
    checked to lie exactly there: ``(array, affine, qform or None, expected geometry)``."""
    att = MetaTensor(att, meta=copy.deepcopy(dict(img.meta)))
    try:
        inv = _invert(att, data, preprocessing, image_key)
        inv = _to_original_grid(inv, img.meta)
    except Exception as e:
        source = img.meta.get("filename_or_obj", image_key)
        raise InputError(
            f"{source}: cannot map {what} back onto the input grid ({type(e).__name__}: {e}). Fix: pass "
            "the data dict returned by load_for_explanation together with the same preprocessing"
        ) from e
    array = inv.as_tensor().detach().to("cpu", torch.float32)
    affine = inv.affine.detach().to("cpu", torch.float64)

    # the map must lie exactly where the input file lies: checked before writing, and read back after
    expected_affine, expected_shape, source, geometry = expected_geometry(img.meta)
    error = _geometry_error(out_path, affine.numpy(), tuple(array.shape[1:]), expected_affine, expected_shape, source, what)
    if error is not None:
        raise error
    qform = None
    if expected_affine is not None:
        affine = torch.as_tensor(expected_affine, dtype=torch.float64)  # the file's own affine, bit for bit
        if geometry is not None and geometry.qform_differs:
            qform = geometry.qform  # the input's qform too, so that ITK/Slicer place the map as they place the scan
    return array, affine, qform, (expected_affine, expected_shape, source)


@dataclass
class LabelMap:
    """A prediction's label map on the input file's grid, ready to write (:func:`prediction_labels`)."""

    labels: torch.Tensor  #: ``(*spatial)`` int64, the most probable class of each voxel
    affine: torch.Tensor  #: the input file's affine (RAS, mm)
    qform: np.ndarray | None
    expected: tuple  #: the geometry the written file must have


def prediction_labels(prediction: torch.Tensor, data: Mapping, preprocessing: Callable | None,
                      image_key: str = "image") -> LabelMap:
    """The label map of a segmentation network's class scores ``prediction`` ``(C, *spatial)``
    on the preprocessed grid (a leading batch dimension of 1 is accepted), on the input file's grid.

    The scores become probabilities (softmax over C > 1 channels, sigmoid for one), are inverted
    onto the file's grid like a map (so resampling interpolates probabilities, not labels), and
    each voxel gets its most probable class (one channel: probability > 0.5 is 1).
    """
    img = data.get(image_key)
    if not isinstance(img, MetaTensor):
        raise InputError(f"data[{image_key!r}] is not a MetaTensor: load the image with load_for_explanation")
    scores = _as_float_tensor(prediction)
    if scores.ndim == img.ndim + 1 and scores.shape[0] == 1:
        scores = scores[0]
    if tuple(scores.shape[1:]) != tuple(img.shape[1:]):
        raise InputError(f"prediction of shape {tuple(scores.shape)} is not on the preprocessed grid {tuple(img.shape)}")
    probabilities = torch.softmax(scores, 0) if scores.shape[0] > 1 else torch.sigmoid(scores)
    array, affine, qform, expected = _on_input_grid(probabilities, img, data, preprocessing, image_key,
                                                    Path(str(img.meta.get("filename_or_obj", image_key))), "the prediction")
    labels = array.argmax(0) if array.shape[0] > 1 else (array[0] > 0.5).long()
    return LabelMap(labels, affine, qform, expected)


def write_label_map(label_map: LabelMap, out_path: str | os.PathLike, writer_format: str = "nifti",
                    publish: Publish | None = None) -> Path:
    """Write a :class:`LabelMap` as uint8 NIfTI or NRRD, atomically, its geometry read back and checked.

    Example:
        >>> import tempfile, torch, nibabel
        >>> from monai.data import MetaTensor
        >>> image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.eye(4))
        >>> scores = torch.zeros(2, 4, 4, 4); scores[1, 1, 2, 3] = 5.0
        >>> label_map = prediction_labels(scores, {"image": image}, None)
        >>> path = write_label_map(label_map, tempfile.mkdtemp() + "/prediction.nii.gz")
        >>> int(label_map.labels.sum()), nibabel.load(str(path)).get_data_dtype()
        (1, dtype('uint8'))
    """
    if writer_format == "png":
        raise OutputError(f"{out_path}: label maps are written as NIfTI or NRRD (the PNG writer keeps no geometry)")
    return write_map(label_map.labels[None].to(torch.float32), label_map.affine, out_path, writer_format, publish,
                     qform=label_map.qform, expected=label_map.expected, dtype=np.uint8)


def write_map(array: torch.Tensor, affine: torch.Tensor, out_path: str | os.PathLike, writer_format: str = "nifti",
              publish: Publish | None = None, *, qform: np.ndarray | None = None,
              expected: tuple | None = None, dtype: type = np.float32) -> Path:
    """Write ``array`` ``(C, *spatial)`` with ``affine`` (RAS, 4×4) as NIfTI, NRRD or PNG (2D,
    one channel), atomically: a temporary file renamed into place, nothing left on failure.

    ``qform``: a NIfTI qform other than ``affine`` (the input's, when its sform and qform disagree).
    ``dtype``: the voxel type of NIfTI/NRRD files (float32; ``np.uint8`` for label maps).
    ``expected``: ``(affine, spatial shape, description)`` the written file must have; it is read
    back before it is published, and an :class:`OutputError` is raised (nothing left) if not.

    Example:
        >>> import tempfile, torch, nibabel
        >>> path = write_map(torch.ones(1, 4, 4, 4), torch.eye(4), tempfile.mkdtemp() + "/map.nii.gz")
        >>> nibabel.load(str(path)).shape
        (4, 4, 4)
    """
    out_path = Path(out_path).expanduser()
    suffix = _suffix_of(out_path, writer_format)
    array = torch.as_tensor(array).detach().to("cpu", torch.float32)
    affine = torch.as_tensor(affine).detach().to("cpu", torch.float64)
    if writer_format == "png" and (array.ndim != 3 or array.shape[0] != 1):
        raise OutputError(
            f"{out_path}: PNG holds one 2D map, this one has shape {tuple(array.shape)} (channels first). "
            "Fix: write it as NIfTI or NRRD (--format nifti|nrrd), or reduce the channels (channel_reduce='sum')"
        )
    check_output_dir(out_path.parent)
    try:
        with atomic_path(out_path, suffix, publish) as temporary:
            if writer_format == "png":
                write_png_map(array.numpy(), temporary)
            elif writer_format == "nifti":
                _write_nifti(array, affine, temporary, qform, dtype)
            else:  # NRRD: the NIfTI, converted by SimpleITK (the same geometry)
                import SimpleITK as sitk

                nifti = temporary_path(out_path, ".nii.gz")
                try:
                    _write_nifti(array, affine, nifti, dtype=dtype)
                    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(temporary), True)
                finally:
                    nifti.unlink(missing_ok=True)
            if expected is not None:
                _verify_written(temporary, writer_format, int(array.shape[0]), *expected, out_path)
    except EsegetaError:
        raise
    except Exception as e:
        raise OutputError(
            f"{out_path}: writing the map failed ({type(e).__name__}: {e}); no file was left behind. "
            "Fix: check the free space and permissions of the folder, or choose another output (--out)"
        ) from e
    return out_path
