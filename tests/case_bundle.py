"""A tiny bundle whose case is two files (two CT phases read under the keys ``image`` and
``venous``, concatenated as the network's 2 input channels), for the tests of cases of several
files in the GUI and in ``esegeta evaluate``."""

import json
from pathlib import Path

import torch
from monai.networks.nets import UNet

from tiny_bundle import make_tiny_bundle, write_image

KEYS = ["image", "venous"]


def make_phases_bundle(root: Path, roi=(16, 16, 16)) -> Path:
    """The tiny bundle reading ``image`` and ``venous`` (no sample: a case is needed), seeded weights."""
    make_tiny_bundle(root, roi=roi)
    for sample in (root / "sample").iterdir():
        sample.unlink()
    (root / "sample").rmdir()
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"]["in_channels"] = 2
    config["preprocessing"]["transforms"] = [
        {"_target_": "LoadImaged", "keys": KEYS}, {"_target_": "EnsureChannelFirstd", "keys": KEYS},
        {"_target_": "ConcatItemsd", "keys": KEYS, "name": "image"},
        {"_target_": "ScaleIntensityd", "keys": "image"}, {"_target_": "EnsureTyped", "keys": "image"}]
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    metadata["name"] = "phases"
    metadata["network_data_format"]["inputs"]["image"].update(num_channels=2, channel_def={"0": "arterial", "1": "venous"})
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(0)
    torch.save(UNet(**{k: v for k, v in config["network_def"].items() if k != "_target_"}).state_dict(),
               root / "models" / "model.pt")
    return root


def write_phases(folder: Path) -> tuple[Path, Path]:
    """Two phase images on one grid (non-RAS, anisotropic), different noise."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_image(folder / "arterial.nii.gz", seed=1), write_image(folder / "venous.nii.gz", seed=2)
