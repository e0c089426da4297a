"""A tiny MONAI bundle written into a temporary folder, for end-to-end tests.

Its sample image is LPS-oriented with anisotropic spacing, so the bundle's
``Orientationd``/``Spacingd`` really resample, and the written maps must be brought back.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.networks.nets import UNet

NETWORK_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "act": "relu",
    "norm": "batch",
}

SAMPLE_AFFINE = np.array(
    [[-1.3, 0.0, 0.0, 20.0], [0.0, -0.9, 0.0, 15.0], [0.0, 0.0, 1.7, -10.0], [0.0, 0.0, 0.0, 1.0]]
)


def write_image(path: Path, shape=(18, 26, 14), seed=0, affine=SAMPLE_AFFINE, channels=None) -> Path:
    """A blob phantom (bright sphere in noise) as NIfTI with a non-RAS, anisotropic affine."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    image = (np.sqrt((grid**2).sum(0)) < 0.5).astype(np.float32) * 100 + rng.normal(0, 10, shape).astype(np.float32)
    if channels:
        image = np.stack([image] * channels, axis=-1)
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return path


def make_tiny_bundle(root: Path, roi=(16, 16, 16)) -> Path:
    """Write configs/inference.json, configs/metadata.json, models/model.pt and sample/."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "sample").mkdir()
    config = {
        "bundle_root": ".",
        "image_key": "image",
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
                {"_target_": "ScaleIntensityd", "keys": "@image_key"},
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 2, "overlap": 0.5, "mode": "gaussian"},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    metadata = {
        "name": "tiny",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [16, 16, 16]}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "channel_def": {"0": "background", "1": "blob"}}},
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(0)
    args = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    torch.save(UNet(**args).state_dict(), root / "models" / "model.pt")
    write_image(root / "sample" / "blob.nii.gz")
    return root
