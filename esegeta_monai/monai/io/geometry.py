"""Where an input file lies in space, checked before anything is computed on it.

A NIfTI header holds two orientations, the sform (``srow_x/y/z``, ``sform_code``) and the qform
(``quatern_b/c/d``, ``qoffset_x/y/z``, ``pixdim``, ``qform_code``). Readers do not agree on which
one to use when they are broken or disagree (measured with nibabel 5, MONAI 1.6, SimpleITK 2):

==================================  =====================  ==========================  ==================
header                              nibabel ``.affine``    MONAI ``NibabelReader``     ITK / 3D Slicer
==================================  =====================  ==========================  ==================
sform all zero (code 1), qform ok   the zero sform         the qform (silently)        the qform
NaN in the sform, qform ok          the NaN sform          the qform (silently)        NaN directions
sheared sform, qform ok             the sheared sform      the qform (silently)        the qform (warns)
sheared sform, qform_code 0         the sheared sform      the uncoded qform fields    refuses the file
rigid sform ≠ qform (both codes)    the sform              the sform                   the sform
==================================  =====================  ==========================  ==================

This package follows nibabel (the reference of the NIfTI format in Python, and what MONAI's
reader means to return): :func:`nifti_geometry` refuses a header whose chosen affine is not
finite or is singular (the message names the fields and the fix), and returns nibabel's affine
with human-readable warnings when the sform and qform disagree; the loader then puts that affine
on the loaded image (MONAI's silent replacement undone) and attaches the warnings to it.
:func:`expected_geometry` gives the affine and shape a written map must have.

Example:
    >>> import os, tempfile, numpy as np, nibabel as nib
    >>> path = os.path.join(tempfile.mkdtemp(), "scan.nii")
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), path)
    >>> geometry = nifti_geometry(path)
    >>> geometry.source, geometry.warnings, np.diag(geometry.affine).tolist()
    ('sform', [], [2.0, 2.0, 3.0, 1.0])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esegeta_monai.errors import InputError

__all__ = [
    "NIFTI_SUFFIXES", "AFFINE_ATOL", "AFFINE_RTOL", "NiftiGeometry", "nifti_geometry", "affine_problem",
    "same_affine", "is_nifti", "is_sheared", "expected_geometry",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: tolerance of affine comparisons: ``|a - b| <= AFFINE_ATOL + AFFINE_RTOL * |b|`` (mm; a float32 header
#: holds a 1000 mm origin to about 6e-5 mm)
AFFINE_ATOL = 1e-4
AFFINE_RTOL = 1e-6
_SHEAR_TOL = 1e-3  # |cos| between two axes of a rigid (rotation + zoom) affine
#: sform and qform closer than this share of the smallest voxel size are the same (a float32 quaternion
#: rarely reproduces an oblique sform to better than 1e-4)
_NOTICEABLE = 0.01
_SFORM_ROWS = ("srow_x", "srow_y", "srow_z")


@dataclass
class NiftiGeometry:
    """nibabel's reading of a NIfTI header: ``affine`` (4×4, the one nibabel's ``.affine`` gives),
    its ``source`` (``"sform"``, ``"qform"`` or ``"pixdim"``), the header's ``qform`` and codes, the
    ``shape`` of the data, and ``warnings`` (strings) about a disagreement of sform and qform."""

    affine: np.ndarray
    source: str
    sform_code: int
    qform_code: int
    qform: np.ndarray | None
    shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)

    #: the largest distance (mm) between where the sform and the valid coded qform put the grid's
    #: corners when the sform is used and they differ noticeably, else 0
    qform_distance: float = 0.0

    @property
    def qform_differs(self) -> bool:
        """Whether a valid coded qform disagrees noticeably with the sform used (ITK may read it)."""
        return self.qform_distance > 0


def is_nifti(path: Any) -> bool:
    """Whether ``path`` names an existing NIfTI file (by its suffix)."""
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return False
    return p.name.lower().endswith(NIFTI_SUFFIXES) and p.is_file()


def same_affine(a: Any, b: Any) -> bool:
    """Whether two affines (of any size, embedded in 4×4) are equal within the tolerance."""
    from monai.data.utils import to_affine_nd

    a4 = to_affine_nd(3, np.asarray(a, dtype=np.float64))
    b4 = to_affine_nd(3, np.asarray(b, dtype=np.float64))
    return bool(np.isfinite(a4).all() and np.isfinite(b4).all()
                and np.allclose(a4, b4, rtol=AFFINE_RTOL, atol=AFFINE_ATOL))


def affine_problem(affine: Any, rows: tuple[str, ...] | None = None) -> str | None:
    """What makes ``affine`` unusable as a voxel-to-world map (``None`` if nothing): not finite, all
    zero, or singular. ``rows`` names its rows in the message (e.g. ``srow_x``…).

    Example:
        >>> affine_problem(np.diag([1.0, 1.0, 0.0, 1.0]))
        'is singular (its voxel axes span 2 dimension(s), not 3)'
    """
    m = np.asarray(affine, dtype=np.float64)
    r = m.shape[0] - 1
    linear = m[:r, :r]
    if not np.isfinite(m).all():
        bad = [rows[i] if rows and i < len(rows) else f"row {i}" for i in range(r) if not np.isfinite(m[i]).all()]
        return f"has non-finite values (NaN/Inf) in {', '.join(bad)}"
    if not linear.any():
        return "is all zero"
    singular = np.linalg.svd(linear, compute_uv=False)
    rank = int((singular > 1e-6 * singular.max()).sum())
    if rank < r:
        return f"is singular (its voxel axes span {rank} dimension(s), not {r})"
    return None


def is_sheared(affine: Any) -> bool:
    """Whether the voxel axes of ``affine`` are not orthogonal (a shear: not a rotation with zooms)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    if (norms == 0).any():
        return False
    cosines = (linear.T @ linear) / np.outer(norms, norms)
    return bool(np.abs(cosines - np.eye(3)).max() > _SHEAR_TOL)


def _distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where ``a`` and ``b`` put the corners of the voxel grid."""
    extent = [max(int(s) - 1, 0) for s in (tuple(shape) + (1, 1, 1))[:3]]
    corners = np.array(np.meshgrid(*[[0, e] for e in extent], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.linalg.norm((a - b)[:3] @ corners, axis=0).max())


def _qform_problem(header) -> tuple[np.ndarray | None, str | None]:
    raw = {k: header[k] for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")}
    bad = [k for k, v in raw.items() if not np.isfinite(float(v))]
    pixdim = np.asarray(header["pixdim"][:4], dtype=np.float64)
    bad += [f"pixdim[{i}]" for i in range(4) if not np.isfinite(pixdim[i])]
    if bad:
        return None, f"has non-finite values (NaN/Inf) in {', '.join(bad)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qform = np.asarray(header.get_qform(), dtype=np.float64)
    except Exception as error:  # nibabel's HeaderDataError: negative pixdim, qfac not ±1
        return None, f"cannot be read ({error})"
    return qform, affine_problem(qform)


def nifti_geometry(path: str | os.PathLike) -> NiftiGeometry | None:
    """nibabel's geometry of the NIfTI file ``path``, checked; ``None`` if ``path`` is not a NIfTI file
    nibabel can open (the image reader then reports it).

    Raises:
        InputError: the affine nibabel uses is not finite, all zero or singular; the message names
            the header fields at fault, says whether the other orientation is valid, and how to fix it.
    """
    if not is_nifti(path):
        return None
    import nibabel as nib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = nib.load(os.fspath(path))
            header = image.header
            affine = np.asarray(image.affine, dtype=np.float64)
    except Exception:
        return None
    if "sform_code" not in header:  # Analyze or another format nibabel opens: no sform/qform to check
        return None
    scode, qcode = int(header["sform_code"]), int(header["qform_code"])
    sform = np.asarray(header.get_sform(), dtype=np.float64)
    sform_problem = affine_problem(sform, _SFORM_ROWS)
    qform, qform_problem = _qform_problem(header)
    source = "sform" if scode > 0 else "qform" if qcode > 0 else "pixdim"
    shape = tuple(int(s) for s in image.shape)

    def state(name: str, code: int, problem: str | None) -> str:
        if problem:
            return f"{name} {problem}" + (f" (and {name}_code is 0)" if code == 0 else "")
        return f"{name} is valid" + (f" ({name}_code {code})" if code else f" but {name}_code is 0")

    chosen_problem = {"sform": sform_problem, "qform": qform_problem}.get(source) or affine_problem(affine)
    if chosen_problem:
        if source == "sform":
            what = f"sform {sform_problem or chosen_problem} while sform_code is {scode}; {state('qform', qcode, qform_problem)}"
            fix = ("fix the header or set sform_code 0 (then the qform is used; with nibabel: "
                   "img.header['sform_code'] = 0)" if not qform_problem and qcode > 0 else
                   "write a valid sform (with nibabel: img.set_sform(affine, code=1)) or qform")
        elif source == "qform":
            what = f"sform_code is 0 and qform {qform_problem or chosen_problem}; {state('sform', scode, sform_problem)}"
            fix = ("fix the qform or set sform_code 1 (then the sform is used)" if not sform_problem else
                   "write a valid qform (with nibabel: img.set_qform(affine, code=1)) or sform")
        else:
            what = f"sform_code and qform_code are 0 and the voxel sizes (pixdim) give an affine that {chosen_problem}"
            fix = "write the scanner geometry in the header (with nibabel: img.set_sform(affine, code=1))"
        raise InputError(
            f"{path}: the NIfTI header gives no usable position in space: {what}. nibabel reads the {source} "
            f"here, while MONAI's reader and ITK/3D Slicer may silently read something else, so no map of this "
            f"file could be aligned with it. Fix: {fix}, then check the scan in a viewer"
        )

    notes: list[str] = []
    distance = 0.0
    if source == "sform" and qcode > 0 and qform is not None and not qform_problem and not same_affine(sform, qform):
        distance = _distance(sform, qform, shape)
        voxel = float(np.linalg.norm(sform[:3, :3], axis=0).min())
        if distance <= _NOTICEABLE * voxel and not is_sheared(sform):
            distance = 0.0
        elif distance == 0.0:  # a sheared sform on a grid of one voxel: they still disagree
            distance = float(np.finfo(np.float32).tiny)
    if distance > 0:
        note = (f"{path}: the header's sform and qform disagree (sform_code {scode}, qform_code {qcode}): they place "
                f"the scan up to {distance:.3g} mm apart; the sform is used, as nibabel reads it")
        if is_sheared(sform):
            note += ("; the sform has a shear, which ITK and 3D Slicer do not accept (they place the scan by its "
                     "qform instead): the map is written with the input's sform and qform, so each viewer overlays "
                     "it on the scan as it shows the scan")
        notes.append(note)
    elif source == "sform" and is_sheared(sform):
        notes.append(f"{path}: the header's sform has a shear and there is no valid qform (qform_code {qcode}); "
                     "the sform is used, as nibabel reads it, but ITK and 3D Slicer cannot place this scan")
    return NiftiGeometry(affine=affine, source=source, sform_code=scode, qform_code=qcode,
                         qform=None if qform_problem else qform, shape=shape, warnings=notes, qform_distance=distance)


def expected_geometry(meta: Mapping) -> tuple[np.ndarray | None, tuple[int, ...] | None, str, NiftiGeometry | None]:
    """The affine and spatial shape a map written for the image of ``meta`` must have, where they
    come from (for messages), and the file's :class:`NiftiGeometry` for NIfTI inputs.

    For a NIfTI input: the file's affine as nibabel reads it and the file's shape (its first
    ``len(spatial_shape)`` axes); otherwise the reader's ``original_affine`` and ``spatial_shape``.
    """
    shape = meta.get("spatial_shape")
    shape = None if shape is None else tuple(int(s) for s in np.asarray(shape).reshape(-1))
    name = meta.get("filename_or_obj")
    if isinstance(name, (str, os.PathLike)) and is_nifti(name):
        try:
            geometry = nifti_geometry(name)
        except InputError as error:
            return np.full((4, 4), np.nan), shape, f"the input file's affine (unusable: {error})", None
        if geometry is not None:
            if shape is not None:  # the file's own shape (a reader may have reoriented the array)
                shape = tuple(geometry.shape[: len(shape)])
            return geometry.affine, shape, f"the input file's affine as nibabel reads it ({name})", geometry
    original = meta.get("original_affine")
    if original is None:
        return None, shape, "", None
    return np.asarray(original, dtype=np.float64), shape, "the input's original affine (as its reader gave it)", None
