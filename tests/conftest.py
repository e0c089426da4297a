"""Shared fixtures: small random MONAI networks and volumes, seeded."""

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(int(os.environ.get("ESEGETA_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))  # 1 on a shared machine


@pytest.fixture
def unet3d():
    """A small random 3D UNet with ReLU (DeepLift/guided backprop need nn.ReLU)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, act="relu", norm="batch").eval()


@pytest.fixture
def volume():
    torch.manual_seed(1)
    return torch.rand(2, 1, 28, 24, 32)


@pytest.fixture
def classifier2d():
    """A small random 2D CNN classifier with nn.ReLU modules, 3 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()
