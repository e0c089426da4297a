"""Synthetic TOF-MRA-like vessel phantoms.

A phantom is a few vessel *trees* (roots entering through the faces of the volume that branch
recursively, with curved random-walk centrelines and radii that taper along each branch and
shrink at every branching, about 0.8-3.5 mm) drawn bright on a dim, textured background, with
a smooth multiplicative bias field and Rician noise, like a time-of-flight MR angiogram.

Everything is generated in millimetres on the voxel grid given by ``spacing``, so a phantom
made at 0.8 x 0.8 x 1.2 mm and resampled to 1 mm looks like one made at 1 mm.  The label is
the set of voxels whose centre lies inside a tube (a union of spheres swept along the
centrelines).

Example:
    >>> from training.phantoms import make_vessel_phantom
    >>> image, label = make_vessel_phantom((48, 48, 32), seed=1)
    >>> image.shape, image.dtype, label.dtype
    ((48, 48, 32), dtype('float32'), dtype('uint8'))
    >>> bool(image[label == 1].mean() > 2 * image[label == 0].mean())
    True
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from training.synthetic import bias_field as _bias_field
from training.synthetic import rng_range as _rng_range
from training.synthetic import smooth_noise as _smooth_noise

__all__ = ["DEFAULTS", "make_vessel_phantom", "vessel_centrelines", "write_sample", "label_path_for"]

#: Default generator options (all can be overridden as keyword arguments).
DEFAULTS: dict = {
    "spacing": (1.0, 1.0, 1.0),  # mm per voxel along each array axis
    "n_roots": (3, 5),  # number of trees: an int or an inclusive (low, high) range
    "root_radius": (2.2, 3.5),  # mm
    "min_radius": 0.8,  # mm; branches stop below it
    "max_depth": 4,  # branching generations below a root
    "branch_rate": 0.05,  # expected side branches per mm of centreline
    "child_ratio": (0.5, 0.8),  # child radius / parent radius at the branching point
    "branch_angle": (25.0, 75.0),  # degrees between parent and child directions
    "taper_mm": (70.0, 160.0),  # radius decays as exp(-length / taper_mm)
    "tortuosity": 0.05,  # typical curvature of the centrelines (rad/mm)
    "curvature_length": 12.0,  # mm over which the curvature stays correlated
    "step": 0.4,  # mm between centreline samples
    "max_branches": 80,
    "vessel_intensity": (0.75, 1.0),  # relative signal of a root vessel
    "tissue_intensity": 0.18,  # mean background signal
    "texture_amplitude": 0.05,  # std of the smooth background texture
    "texture_sigma_mm": (1.5, 5.0),  # fine and coarse texture scales
    "bias_amplitude": 0.25,  # log-amplitude of the multiplicative bias field
    "noise_sigma": 0.04,  # std of the complex Gaussian noise (Rician magnitude)
    "rician": True,
    "edge_width": 0.8,  # mm, width of the partial-volume ramp across the vessel wall
    "scale": 1000.0,  # final intensity scale (MR-like units)
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _rotate_away(d: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at ``angle`` radians from ``d``, around a random perpendicular axis."""
    u = rng.normal(size=3)
    perp = _unit(u - np.dot(u, d) * d)
    return _unit(math.cos(angle) * d + math.sin(angle) * perp)


def vessel_centrelines(extent_mm: Sequence[float], rng: np.random.Generator, opts: dict):
    """Sample vessel-tree centrelines inside a box ``[0, extent_mm]``.

    Returns ``(points, radii, brightness)``: ``(N, 3)`` centreline positions in mm, and the
    ``(N,)`` tube radius (mm) and relative signal at each point.
    """
    extent = np.asarray(extent_mm, dtype=float)
    step = float(opts["step"])
    r_min = float(opts["min_radius"])
    pts: list = []
    rad: list = []
    bri: list = []
    # stack of branches to grow: (start, direction, radius, brightness, depth)
    stack = []
    for _ in range(_rng_range(rng, opts["n_roots"], integer=True)):
        axis = int(rng.integers(3))
        side = int(rng.integers(2))
        start = rng.uniform(0.2, 0.8, size=3) * extent
        start[axis] = 0.0 if side == 0 else extent[axis]
        inward = np.zeros(3)
        inward[axis] = 1.0 if side == 0 else -1.0
        d = _rotate_away(inward, math.radians(rng.uniform(0.0, 35.0)), rng)
        stack.append((start, d, _rng_range(rng, opts["root_radius"]), _rng_range(rng, opts["vessel_intensity"]), 0))
    n_branches = 0
    while stack and n_branches < int(opts["max_branches"]):
        pos, d, r0, b, depth = stack.pop()
        n_branches += 1
        pos = np.array(pos, dtype=float)
        taper = _rng_range(rng, opts["taper_mm"])
        # turning rate (rad/mm): an Ornstein-Uhlenbeck process, smooth curves, not jagged ones
        a = math.exp(-step / float(opts["curvature_length"]))
        sqrt_1ma2 = math.sqrt(1.0 - a * a)
        omega = float(opts["tortuosity"]) * rng.normal(size=3)
        length = 0.0
        max_len = 2.5 * float(extent.max())
        while True:
            r = r0 * math.exp(-length / taper)
            margin = r + 2.0
            if r < r_min or length > max_len or np.any(pos < -margin) or np.any(pos > extent + margin):
                break
            pts.append(pos.copy())
            rad.append(r)
            bri.append(b)
            if depth < int(opts["max_depth"]) and rng.random() < float(opts["branch_rate"]) * step:
                ratio = _rng_range(rng, opts["child_ratio"])
                if r * ratio >= r_min:
                    angle = math.radians(_rng_range(rng, opts["branch_angle"]))
                    child_d = _rotate_away(d, angle, rng)
                    stack.append((pos.copy(), child_d, r * ratio, b * rng.uniform(0.9, 1.0), depth + 1))
                    # the parent thins a little at a branching and bends away from its child
                    r0 *= rng.uniform(0.9, 1.0)
                    d = _unit(d - 0.15 * child_d)
            omega = a * omega + sqrt_1ma2 * float(opts["tortuosity"]) * rng.normal(size=3)
            d = _unit(d + step * (omega - np.dot(omega, d) * d))
            pos = pos + step * d
            length += step
    if not pts:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    return np.asarray(pts), np.asarray(rad), np.asarray(bri)


def _splat_tubes(shape, spacing, points, radii, brightness, margin: float):
    """Signed distance (mm) to the union of spheres, and the signal of the nearest sphere."""
    sdf = np.full(shape, margin, dtype=np.float32)
    sig = np.zeros(shape, dtype=np.float32)
    coords = [np.arange(n, dtype=np.float32) * float(s) for n, s in zip(shape, spacing)]
    sp = [float(s) for s in spacing]
    for (cx, cy, cz), r, b in zip(points.tolist(), radii.tolist(), brightness.tolist()):
        reach = r + margin
        lo, hi = [], []
        for c, s, n in zip((cx, cy, cz), sp, shape):
            lo.append(max(int(math.floor((c - reach) / s)), 0))
            hi.append(min(int(math.ceil((c + reach) / s)) + 1, n))
        if lo[0] >= hi[0] or lo[1] >= hi[1] or lo[2] >= hi[2]:
            continue
        dx = (coords[0][lo[0] : hi[0]] - cx) ** 2
        dy = (coords[1][lo[1] : hi[1]] - cy) ** 2
        dz = (coords[2][lo[2] : hi[2]] - cz) ** 2
        dist = np.sqrt(dx[:, None, None] + dy[None, :, None] + dz[None, None, :]) - r
        win = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        closer = dist < sdf[win]
        sdf[win] = np.where(closer, dist, sdf[win])
        sig[win] = np.where(closer, b * (0.6 + 0.4 * min(1.0, r / 2.5)), sig[win])
    return sdf, sig


def make_vessel_phantom(shape: Sequence[int] = (96, 96, 64), seed: int = 0, **options):
    """One synthetic TOF-MRA-like volume and its vessel label.

    Args:
        shape: array shape ``(X, Y, Z)``.
        seed: seed of the generator; the same seed and options give the same phantom.
        options: overrides of :data:`DEFAULTS` (for example ``spacing=(0.8, 0.8, 1.2)``,
            ``noise_sigma=0.06``, ``n_roots=3``).

    Returns:
        ``(image, label)``: ``image`` float32 in MR-like units (tissue ~ 180, vessels ~ 500-1300),
        ``label`` uint8, 1 for voxels whose centre is inside a vessel.

    Example:
        >>> img, lab = make_vessel_phantom((32, 32, 32), seed=3)
        >>> img2, lab2 = make_vessel_phantom((32, 32, 32), seed=3)
        >>> bool((img == img2).all() and (lab == lab2).all())
        True
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown phantom options: {sorted(unknown)}")
    opts = {**DEFAULTS, **options}
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, got {shape}")
    spacing = np.broadcast_to(np.asarray(opts["spacing"], dtype=float), (3,))
    rng = np.random.default_rng(seed)

    extent = (np.asarray(shape) - 1) * spacing
    points, radii, bright = vessel_centrelines(extent, rng, opts)
    edge = float(opts["edge_width"])
    sdf, vessel_signal = _splat_tubes(shape, spacing, points, radii, bright, margin=edge + 0.5)
    label = (sdf <= 0).astype(np.uint8)
    # partial-volume ramp across the wall: 1 inside, 0 outside, 0.5 on the surface
    frac = np.clip(0.5 - sdf / edge, 0.0, 1.0)

    tissue = np.full(shape, float(opts["tissue_intensity"]), dtype=np.float32)
    amp = float(opts["texture_amplitude"])
    if amp > 0:
        for sig_mm in opts["texture_sigma_mm"]:
            tissue += (amp / math.sqrt(2.0)) * _smooth_noise(shape, tuple(sig_mm / spacing), rng)
        tissue = np.clip(tissue, 0.02, None)
    signal = tissue * (1.0 - frac) + vessel_signal * frac
    signal *= _bias_field(shape, float(opts["bias_amplitude"]), rng)

    sigma = float(opts["noise_sigma"])
    if sigma > 0:
        n1 = rng.standard_normal(shape, dtype=np.float32) * sigma
        if opts["rician"]:
            n2 = rng.standard_normal(shape, dtype=np.float32) * sigma
            signal = np.sqrt((signal + n1) ** 2 + n2**2)
        else:
            signal = signal + n1
    image = (signal * float(opts["scale"])).astype(np.float32)
    return image, label


def label_path_for(image_path: str) -> str:
    """``.../name.nii.gz`` -> ``.../name_label.nii.gz``."""
    for ext in (".nii.gz", ".nii"):
        if image_path.endswith(ext):
            return image_path[: -len(ext)] + "_label" + ext
    return image_path + "_label.nii.gz"


def write_sample(path: str, shape: Sequence[int] = (96, 96, 64), seed: int = 0, affine=None, **options):
    """Write a phantom as a NIfTI image (int16) and its label (``<name>_label.nii.gz``).

    The voxel spacing is read from ``affine`` (column norms) and passed to the generator, so the
    vessels have the same size in millimetres whatever the grid.  ``affine`` defaults to the
    identity (RAS, 1 mm).  Returns ``(image_path, label_path)``.

    Example:
        >>> import os, tempfile, numpy as np, nibabel as nib
        >>> d = tempfile.mkdtemp()
        >>> aff = np.diag([-0.8, -0.8, 1.2, 1.0])
        >>> img_p, lab_p = write_sample(os.path.join(d, "p.nii.gz"), (32, 32, 24), seed=5, affine=aff)
        >>> nib.load(img_p).shape, nib.aff2axcodes(nib.load(lab_p).affine)
        ((32, 32, 24), ('L', 'P', 'S'))
    """
    import nibabel as nib

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    options.setdefault("spacing", spacing)
    image, label = make_vessel_phantom(shape, seed=seed, **options)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    label_path = label_path_for(path)
    img = np.clip(np.rint(image), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    for data, p in ((img, path), (label, label_path)):
        nii = nib.Nifti1Image(data, affine)
        nii.set_qform(affine, code=1)
        nii.set_sform(affine, code=1)
        nii.header.set_xyzt_units("mm")
        nib.save(nii, p)
    return path, label_path
