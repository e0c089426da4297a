"""Runnable copies of the shared model-zoo bundles: their configs (and ``scripts/``) copied, random
weights written where the config's checkpoint loader reads them, and synthetic input files shaped
as the bundle's metadata says, with non-identity affines.

Example (with the shared configs present)::

    case = make_zoo_case("wholeBody_ct_segmentation", tmp_path)
    main(["explain", "--bundle", str(case.bundle), *case.image_args, "--methods", "saliency"])
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from zoo import ZOO

#: world placement of the synthetic scans: oblique-free but LPS-like, anisotropic, shifted
AFFINE = np.array([[-1.6, 0.0, 0.0, 40.0], [0.0, -1.4, 0.0, 25.0], [0.0, 0.0, 2.5, -60.0], [0.0, 0.0, 0.0, 1.0]])


@dataclass
class ZooCase:
    """A runnable bundle folder and the files of one case (``key=FILE`` pairs)."""

    bundle: Path
    files: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def image_args(self) -> list[str]:
        """``--image`` arguments for the case: plain paths for a one-file case, ``key=FILE`` pairs otherwise."""
        if len(self.files) == 1:
            return ["--image", str(self.files[0][1])]
        return [arg for key, path in self.files for arg in ("--image", f"{key}={path}")]


def _scan(path: Path, shape, seed: int, affine=AFFINE) -> Path:
    """A blob in noise (CT-like range), saved as NIfTI with ``affine``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    blob = (np.sqrt((grid**2).sum(0)) < 0.45).astype(np.float32)
    image = -100 + 300 * blob + rng.normal(0, 30, shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(path))
    return path


def _random_weights(bundle: Path, config: Path, weights: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    sys.path.insert(0, str(bundle))
    try:
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), weights)


#: per bundle: the weights file its config loads, and its case's files (key, file name, shape)
CASES = {
    "wholeBody_ct_segmentation": ("model.pt", [("image", "ct.nii.gz", (40, 44, 36))]),
    "brats_mri_segmentation": ("model.pt", [("image", f"{seq}.nii.gz", (20, 24, 16)) for seq in ("t1c", "t1", "t2", "flair")]),
    "renalStructures_UNEST_segmentation": ("model.pt", [("image", "ct.nii.gz", (40, 36, 30))]),
    "pediatric_abdominal_ct_segmentation": ("dynunet_FT.pt", [("image", "ct.nii.gz", (44, 40, 24))]),
    "ventricular_short_axis_3label": ("model.pt", [("image", "cine.nii.gz", (48, 40, 6))]),
}


def make_zoo_case(name: str, dest: Path) -> ZooCase:
    """Copy bundle ``name`` from the shared model zoo into ``dest`` and make it runnable."""
    source = ZOO / name
    bundle = dest / name
    shutil.copytree(source / "configs", bundle / "configs")
    if (source / "scripts").is_dir():
        shutil.copytree(source / "scripts", bundle / "scripts")
    weights_name, files = CASES[name]
    config = next(p for p in sorted((bundle / "configs").glob("inference.*")))
    _random_weights(bundle, config, bundle / "models" / weights_name)
    case = ZooCase(bundle)
    for seed, (key, file_name, shape) in enumerate(files):
        case.files.append((key, _scan(dest / "inputs" / name / file_name, shape, seed)))
    return case
