"""Loading an image for explanation, through a bundle's own preprocessing.

The image comes back as MONAI would feed it to the network: a ``MetaTensor`` ``(C, *spatial)``
that carries its ``meta`` (affine, original affine, file name) and ``applied_operations`` (the
invertible transforms applied), so that an attribution computed on it can be mapped back onto the
file's grid by :func:`esegeta_monai.monai.io.nifti.save_attribution`.

Example:
    >>> import numpy as np, nibabel as nib, tempfile, os
    >>> from esegeta_monai.monai.io import load_for_explanation
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "scan.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.ones((8, 9, 10), np.float32), np.eye(4)), path)
    >>> data = load_for_explanation(path, expected_channels=1, expected_spatial_dims=3)
    >>> tuple(data["image"].shape)
    (1, 8, 9, 10)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from esegeta_monai.errors import InputError
from esegeta_monai.monai.io.geometry import NiftiGeometry, affine_problem, nifti_geometry, same_affine
from esegeta_monai.monai.io.readers import add_reader_to

__all__ = ["load_for_explanation", "case_data", "loader_keys", "default_preprocessing", "loading_prefix_length", "NAN_POLICIES", "WARNINGS_KEY"]

logger = logging.getLogger(__name__)

#: Accepted values of ``nan_policy``: ``"error"`` refuses images with NaN/Inf voxels, ``"zero"``
#: replaces them by 0 (with a warning).
NAN_POLICIES = ("error", "zero")

#: the key of ``data[image_key].meta`` that holds the warnings about the input (a list of strings,
#: e.g. a NIfTI sform that disagrees with its qform), for the job's record
WARNINGS_KEY = "esegeta_warnings"

_LOADERS = (LoadImaged, EnsureChannelFirstd)


def default_preprocessing(image_key: str = "image") -> Compose:
    """The preprocessing used when a bundle gives none: ``LoadImaged`` + ``EnsureChannelFirstd``.

    Nothing in it changes the grid, so an attribution computed on its output is already aligned
    with the file.
    """
    return Compose([LoadImaged(keys=image_key, image_only=True), EnsureChannelFirstd(keys=image_key)])


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps reader errors in ``RuntimeError``)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _describe(exc: BaseException) -> str:
    root = _root_cause(exc)
    text = str(root).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def loading_prefix_length(preprocessing: Any) -> int:
    """Number of leading transforms of a Compose that only read the file (LoadImaged, EnsureChannelFirstd).

    ``preprocessing(data, start=n)`` then applies the rest of it to an image already in memory.

    Example:
        >>> from monai.transforms import ScaleIntensityd
        >>> loading_prefix_length(Compose([*default_preprocessing().transforms, ScaleIntensityd("image")]))
        2
    """
    transforms = getattr(preprocessing, "transforms", None)
    if not isinstance(preprocessing, Compose) or not transforms:
        return 0
    n = 0
    for t in transforms:
        if isinstance(t, _LOADERS):
            n += 1
        else:
            break
    return n


def _channel_first_after(loaders) -> bool:
    """Whether these loading transforms already put the channel first (an ``EnsureChannelFirstd``,
    or ``LoadImaged(ensure_channel_first=True)``): only then can the shape be checked before the
    rest of the preprocessing — the model's input shape is checked after all of it."""
    return any(isinstance(t, EnsureChannelFirstd) or getattr(getattr(t, "_loader", None), "ensure_channel_first", False)
               for t in loaders)


def _check_image(
    img: Any, path: Path, stage: str, expected_channels: int | None, expected_spatial_dims: int | None
) -> None:
    if not isinstance(img, torch.Tensor):
        raise InputError(
            f"{path}: the preprocessing returned {type(img).__name__} for the image, not a tensor; "
            "make sure the bundle's preprocessing loads the image (LoadImaged) and returns a tensor"
        )
    shape = tuple(img.shape)
    on_disk = ""
    if isinstance(img, MetaTensor):
        sp = img.meta.get("spatial_shape")
        if sp is not None:
            on_disk = f" (file spatial shape {tuple(int(s) for s in torch.as_tensor(sp).tolist())})"
    spatial = len(shape) - 1
    if (expected_spatial_dims is not None and expected_channels and expected_channels > 1
            and spatial == expected_spatial_dims - 1 and stage.startswith("after preprocessing")):
        raise InputError(
            f"{path}: after the preprocessing the image has shape {shape}{on_disk}: one {expected_spatial_dims}D volume "
            f"without a channel axis, and the model takes {expected_channels} channels that its preprocessing stacks "
            f"from {expected_channels} files (LoadImaged of a list). Fix: give the case's {expected_channels} files in "
            "the model's channel order, each as --image image=FILE (e.g. --image image=t1c.nii.gz --image "
            "image=t1.nii.gz …), or a datalist entry whose \"image\" is the list of files")
    if expected_spatial_dims is not None and spatial != expected_spatial_dims:
        raise InputError(
            f"{path}: {stage} the image has shape {shape}{on_disk}, i.e. {spatial} spatial dimension(s) "
            f"after the channel; the model expects {expected_spatial_dims}. Fix: give a "
            f"{expected_spatial_dims}D image (for a series, extract one volume, e.g. with nibabel's "
            "`image.slicer`), or use a model made for this dimensionality"
        )
    if expected_channels is not None and shape[0] != expected_channels:
        hint = _channel_hint(shape[0], spatial, expected_channels)
        raise InputError(
            f"{path}: {stage} the image has {shape[0]} channel(s) (shape {shape}{on_disk}); the model "
            f"expects {expected_channels}. Fix: {hint}"
        )


def _channel_hint(channels: int, spatial: int, expected: int) -> str:
    """How to give the model the number of channels it expects, for an image read with ``channels``."""
    if spatial == 2 and channels in (3, 4) and expected in (1, 3):
        colour = "RGB" if channels == 3 else "RGBA"
        if expected == 1:
            return (f"this is a colour ({colour}) 2D image, read as {channels} channels: convert it to grey levels "
                    "(e.g. with Pillow: Image.open(path).convert('L').save(new_path)), or use a bundle whose "
                    "network expects 3 channels (colour images)")
        return ("this is an RGBA 2D image, read as 4 channels (colour and transparency): drop the alpha channel "
                "(e.g. with Pillow: Image.open(path).convert('RGB').save(new_path))")
    if spatial == 2 and channels == 1 and expected == 3:
        return ("this is a grey-level 2D image; the network expects a colour (RGB) image: convert it (e.g. with "
                "Pillow: Image.open(path).convert('RGB').save(new_path)), or use a bundle made for grey images")
    if channels > expected:
        return ("a 4D file (e.g. a time series or several modalities in the last axis) is read as channels: "
                f"extract the {expected}-channel volume the model was trained on")
    return f"stack the {expected} input channels (modalities) into one file along the last axis"


def _align_with_file(img: Any, geometry: NiftiGeometry | None, path: Path, notes: list[str], can_fix: bool) -> None:
    """Check the loaded image's affine against the file's (nibabel's) and make it the file's.

    MONAI's ``NibabelReader`` silently replaces a sform whose voxel sizes differ from ``pixdim`` (a
    sheared sform, or one that disagrees with the qform) by the qform or by ``pixdim`` alone: the
    loaded image then lies elsewhere than the file says. Right after loading (``can_fix``), the
    file's affine is put back; after a whole preprocessing, the image is refused.
    """
    if not isinstance(img, MetaTensor):
        return
    original = img.meta.get("original_affine")
    if original is None:
        return
    if geometry is None:
        problem = affine_problem(np.asarray(original, dtype=np.float64))
        if problem:
            raise InputError(
                f"{path}: the reader gives this image an affine (voxel-to-world matrix) that {problem}, so no map "
                "of it could be aligned with it. Fix: repair the file's geometry (origin, spacing, direction) "
                "and check the scan in a viewer"
            )
        return
    if same_affine(original, geometry.affine):
        return
    if not can_fix or not same_affine(img.affine, original):
        raise InputError(
            f"{path}: the preprocessing's reader places the scan with an affine that differs from the file's "
            f"header as nibabel reads it (its {geometry.source}; MONAI's NibabelReader replaces a sform whose voxel "
            "sizes differ from pixdim). A map would be misaligned. Fix: make the sform and qform of the header "
            "agree, or start the preprocessing with LoadImaged + EnsureChannelFirstd (then the file's affine is used)"
        )
    from monai.data.utils import to_affine_nd

    rank = int(img.affine.shape[-1]) - 1
    affine = to_affine_nd(rank, geometry.affine)
    img.affine = torch.as_tensor(affine, dtype=torch.float64)
    img.meta["original_affine"] = affine
    if not notes:
        notes.append(f"{path}: MONAI's reader replaced the header's sform by another affine (its voxel sizes differ "
                     "from pixdim); the sform is used, as nibabel reads it")


def _handle_nonfinite(img: torch.Tensor, path: Path, nan_policy: str, stage: str, notes: list[str] | None = None) -> None:
    finite = torch.isfinite(img)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    n_nan = int(torch.isnan(img).sum())
    n_inf = bad - n_nan
    if nan_policy == "zero":
        logger.warning("%s: replacing %d NaN and %d Inf voxel(s) by 0 (nan_policy='zero')", path, n_nan, n_inf)
        if notes is not None:
            notes.append(f"{path}: {n_nan} NaN and {n_inf} Inf voxel(s) replaced by 0 (nan_policy='zero')")
        with torch.no_grad():
            img.masked_fill_(~finite, 0)  # in place: keeps the MetaTensor's meta and applied_operations
        return
    raise InputError(
        f"{path}: {stage} {bad} voxel(s) are not finite ({n_nan} NaN, {n_inf} Inf) out of {img.numel()}. "
        "Fix: clean the image, or pass nan_policy='zero' (--nan-policy zero) to replace them by 0"
    )


def loader_keys(preprocessing: Any) -> tuple[list[str], list[str]]:
    """The keys the preprocessing's ``LoadImaged`` transforms read: (required, optional)."""
    required, optional = [], []
    for t in getattr(preprocessing, "transforms", None) or []:
        if isinstance(t, LoadImaged):
            bucket = optional if getattr(t, "allow_missing_keys", False) else required
            bucket.extend(str(k) for k in t.keys if str(k) not in required + optional)
    return required, optional


def case_data(files: Sequence[tuple[str, str]], preprocessing: Any, image_key: str, name: str) -> dict:
    """The data dict of a case of several files (``(key, file)`` pairs; a key given several times
    is a list, which ``LoadImaged`` stacks as channels), checked against the keys the
    preprocessing reads and, for stacked files, against each other's grid."""
    grouped: dict[str, list[str]] = {}
    for key, file in files:
        grouped.setdefault(key, []).append(str(Path(file).expanduser()))
    required, optional = loader_keys(preprocessing)
    reads = required + optional
    if reads:
        unknown = [k for k in grouped if k not in reads]
        missing = [k for k in required if k not in grouped]
        if unknown or missing:
            problem = (f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not read by it" if unknown
                       else f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
            raise InputError(
                f"{name}: the bundle's preprocessing reads the keys {', '.join(reads)} (LoadImaged), and of this case's "
                f"keys ({', '.join(grouped)}) {problem}. Fix: give one --image KEY=FILE per file, with these keys "
                f"(repeat a key to stack files as channels, e.g. --image {reads[0]}=t1.nii.gz --image {reads[0]}=t2.nii.gz)")
    for key, paths in grouped.items():
        for path in paths:
            if not Path(path).exists():
                raise InputError(f"{path}: no such file (key {key!r} of the case {name}). Fix: check the path")
        if len(paths) > 1:
            _check_same_grid(paths, key)
    if image_key not in grouped:
        raise InputError(f"{name}: the case has no {image_key!r} file, the key the bundle explains. Fix: give --image {image_key}=FILE")
    return {key: paths if len(paths) > 1 else paths[0] for key, paths in grouped.items()}


def _check_same_grid(paths: Sequence[str], key: str) -> None:
    """Files stacked as channels lie on the first file's grid (MONAI keeps its affine): refuse
    files whose shape or affine differ, whose maps would be misaligned."""
    import nibabel as nib

    first = None
    for path in paths:
        geometry = nifti_geometry(Path(path))
        if geometry is None:
            return  # not NIfTI: MONAI's reader checks the shapes when it stacks them
        shape = tuple(nib.load(path).shape[:3])
        if first is None:
            first = (path, shape, geometry.affine)
        elif shape != first[1] or not same_affine(geometry.affine, first[2]):
            raise InputError(
                f"{path}: stacked with {first[0]} as channels of {key!r}, but it lies on another grid (shape {shape} vs "
                f"{first[1]}, or another affine); the stacked image would take the first file's grid and the maps would "
                "be misaligned with this one. Fix: resample the files of a case onto one grid first (e.g. with 3D "
                "Slicer's Resample Scalar/Vector/DWI Volume, or SimpleITK)")


def load_for_explanation(
    path: str | os.PathLike,
    preprocessing: Callable[[Mapping], Any] | None = None,
    image_key: str = "image",
    expected_channels: int | None = None,
    expected_spatial_dims: int | None = None,
    nan_policy: str = "error",
    files: Sequence[tuple[str, str]] = (),
) -> dict:
    """Read an image file and apply a bundle's preprocessing to it, checking it on the way.

    Args:
        path: the image file or DICOM series folder: NIfTI, PNG, MHA/MHD, NRRD, DICOM (whatever the
            preprocessing's ``LoadImaged`` reads, with :class:`~esegeta_monai.monai.io.readers.SimpleITKReader`
            added as its last resort).
        preprocessing: a callable applied to ``{image_key: str(path)}``, usually the bundle's
            ``preprocessing`` Compose. ``None`` uses :func:`default_preprocessing`
            (``LoadImaged`` + ``EnsureChannelFirstd``: the image stays on the file's grid).
        image_key: the key of the image in the data dict.
        expected_channels: the number of input channels of the model, checked after loading
            (``None``: not checked).
        expected_spatial_dims: 2 or 3, checked after loading (``None``: not checked).
        nan_policy: what to do with NaN or Inf voxels of the loaded image: ``"error"`` (default)
            refuses the image with an :class:`InputError` giving the count; ``"zero"`` replaces them
            by 0 before the rest of the preprocessing, with a logged warning. A preprocessing
            that itself produces non-finite values is always an error.
        files: a case of several files, as ``(key, file)`` pairs (:func:`case_data`); ``path`` is
            then its first ``image_key`` file, whose grid the maps are written on.

    Returns:
        The data dict after the preprocessing. ``data[image_key]`` is a ``MetaTensor``
        ``(C, *spatial)`` with ``meta`` and ``applied_operations``, ready for inversion by
        :func:`esegeta_monai.monai.io.save_attribution`. Its ``meta["esegeta_warnings"]``
        (:data:`WARNINGS_KEY`) lists what the record of a map should say about the input (e.g. a
        NIfTI sform and qform that disagree: the sform is used, as nibabel reads it; NaN voxels
        replaced); an empty list when there is nothing to say.

    Raises:
        InputError: missing file, unreadable or corrupt file, a NIfTI header whose geometry is not
            usable (a non-finite, all-zero or singular sform or qform, checked before anything is
            computed; :mod:`esegeta_monai.monai.io.geometry`), wrong number of spatial dimensions
            or channels, non-finite voxels (each message names the file and the fix).
    """
    if nan_policy not in NAN_POLICIES:
        raise InputError(f"nan_policy={nan_policy!r} is not supported; choose one of {NAN_POLICIES}")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file. Fix: check the path (it is resolved from {Path.cwd()})")
    geometry = nifti_geometry(path)  # a broken NIfTI header is refused before any reading or computation
    notes: list[str] = list(geometry.warnings) if geometry is not None else []
    if preprocessing is None:
        preprocessing = default_preprocessing(image_key)
    add_reader_to(preprocessing)  # MHA, NRRD, DICOM through SimpleITK when no other reader takes them

    n_load = loading_prefix_length(preprocessing)
    if files:
        data: Any = case_data(files, preprocessing, image_key, str(path))
    else:
        required = [k for k in loader_keys(preprocessing)[0] if k != image_key]
        if required:
            raise InputError(
                f"{path}: the bundle's preprocessing reads a case of several files, under the keys "
                f"{', '.join([image_key, *required])} (LoadImaged). Fix: give each file as --image KEY=FILE "
                f"(e.g. --image {image_key}={path.name} --image {required[0]}=OTHER_FILE), or a datalist with these keys")
        data = {image_key: str(path)}
    if n_load:
        # stage 1: read the file only, so that reader failures and shape problems are reported as such
        try:
            data = preprocessing(data, end=n_load)
        except Exception as e:
            if isinstance(_root_cause(e), KeyError):
                raise InputError(
                    f"{path}: the preprocessing does not read the key {image_key!r} ({_describe(e)}). Fix: pass "
                    "the image key the bundle's preprocessing uses (bundle.image_key / --image-key)"
                ) from e
            raise InputError(
                f"{path}: cannot read the image ({_describe(e)}). The file may be truncated, corrupt or "
                "in a format the preprocessing's reader does not handle. Fix: re-export or re-download "
                "the file, and check that it opens in another viewer (e.g. 3D Slicer)"
            ) from e
        img = data.get(image_key) if isinstance(data, Mapping) else None
        if not isinstance(img, torch.Tensor):
            _check_image(img, path, "after loading,", None, None)
        _align_with_file(img, geometry, path, notes, can_fix=True)
        _handle_nonfinite(img, path, nan_policy, "after loading,", notes)
        try:
            if n_load < len(preprocessing.transforms):
                data = preprocessing(data, start=n_load)
        except InputError:
            raise
        except Exception as e:
            if _channel_first_after(preprocessing.transforms[:n_load]):  # the shape, if wrong, says more than the failure
                _check_image(img, path, "after loading,", expected_channels, expected_spatial_dims)
            raise InputError(
                f"{path}: the preprocessing failed on this image ({_describe(e)}). "
                "Fix: check that the image is of the kind the bundle expects (modality, dimensions, "
                "channels)"
            ) from e
    else:
        try:
            data = preprocessing(data)
        except Exception as e:
            raise InputError(
                f"{path}: cannot read or preprocess the image ({_describe(e)}). Fix: check that the file "
                "is complete and opens in another viewer, and that it is of the kind the bundle expects"
            ) from e
        if isinstance(data, Mapping) and isinstance(data.get(image_key), torch.Tensor):
            _handle_nonfinite(data[image_key], path, nan_policy, "after preprocessing,", notes)

    if isinstance(data, (list, tuple)):
        raise InputError(
            f"{path}: the preprocessing returned {len(data)} samples (a random crop or patch sampler?); "
            "explanation needs the whole image. Fix: use the bundle's inference preprocessing, not the "
            "training one"
        )
    if not isinstance(data, Mapping) or image_key not in data:
        raise InputError(
            f"{path}: the preprocessing did not return a dict with key {image_key!r}. Fix: pass the "
            "bundle's image key (image_key / --image-key)"
        )
    img = data[image_key]
    _check_image(img, path, "after preprocessing,", expected_channels, expected_spatial_dims)
    if not isinstance(img, MetaTensor):
        raise InputError(
            f"{path}: the preprocessing returned a plain {type(img).__name__}, without the metadata "
            "needed to align the maps with the file. Fix: keep MetaTensors in the preprocessing "
            "(EnsureTyped with track_meta=True, no ToNumpyd)"
        )
    if not bool(torch.isfinite(img).all()):
        bad = int((~torch.isfinite(img)).sum())
        raise InputError(
            f"{path}: the preprocessing produced {bad} non-finite voxel(s) (NaN/Inf) from a finite image. "
            "Fix: check the intensity transforms of the preprocessing (e.g. a normalisation of a "
            "constant image)"
        )
    if not n_load:
        _align_with_file(img, geometry, path, notes, can_fix=False)
    for note in notes:
        logger.warning("%s", note)
    img.meta[WARNINGS_KEY] = notes
    return dict(data)
