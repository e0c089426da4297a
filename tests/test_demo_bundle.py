"""The vessel_mra_demo bundle: phantom generator, shipped weights, trained-model quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.phantoms import label_path_for, make_vessel_phantom, write_sample

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "vessel_mra_demo"
INFERENCE = BUNDLE / "configs" / "inference.yaml"
WEIGHTS = BUNDLE / "models" / "model.pt"
SAMPLE = BUNDLE / "sample" / "vessel_phantom_0.nii.gz"


def _parser():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    return parser


def test_phantom_is_deterministic_and_seed_dependent():
    a_img, a_lab = make_vessel_phantom((48, 48, 40), seed=7)
    b_img, b_lab = make_vessel_phantom((48, 48, 40), seed=7)
    c_img, c_lab = make_vessel_phantom((48, 48, 40), seed=8)
    assert a_img.shape == a_lab.shape == (48, 48, 40)
    assert a_img.dtype == np.float32 and a_lab.dtype == np.uint8
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)
    assert set(np.unique(a_lab)) <= {0, 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_label_marks_bright_voxels(seed):
    img, lab = make_vessel_phantom((64, 64, 48), seed=seed)
    frac = lab.mean()
    assert 0.001 < frac < 0.1  # vessels present but sparse
    inside, outside = img[lab == 1].mean(), img[lab == 0].mean()
    assert inside > 2.5 * outside
    assert img.min() >= 0  # Rician magnitude


def test_phantom_spacing_keeps_physical_size():
    # the same seed on a grid twice as fine: about 8x as many vessel voxels, same vessels
    _, coarse = make_vessel_phantom((40, 40, 40), seed=3, noise_sigma=0.0)
    _, fine = make_vessel_phantom((79, 79, 79), seed=3, spacing=(0.5, 0.5, 0.5), noise_sigma=0.0)
    ratio = fine.sum() / max(coarse.sum(), 1)
    assert 5.5 < ratio < 10.5


def test_write_sample_roundtrip(tmp_path):
    import nibabel as nib

    aff = np.diag([-0.8, -0.8, 1.2, 1.0])
    img_p, lab_p = write_sample(str(tmp_path / "p.nii.gz"), (32, 32, 24), seed=4, affine=aff)
    assert lab_p == label_path_for(img_p) == str(tmp_path / "p_label.nii.gz")
    img, lab = nib.load(img_p), nib.load(lab_p)
    assert img.shape == lab.shape == (32, 32, 24)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.8, 1.2), rtol=1e-6)


def test_bundle_files_and_sample_geometry():
    import nibabel as nib

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["license"] == "Apache-2.0"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "vessel"}
    img = nib.load(str(SAMPLE))
    lab = nib.load(label_path_for(str(SAMPLE)))
    assert img.shape == lab.shape
    np.testing.assert_allclose(img.affine, lab.affine)
    # not RAS and not 1 mm: the bundle's Orientationd and Spacingd have work to do
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")
    assert not np.allclose(img.header.get_zooms()[:3], 1.0)
    assert np.asarray(lab.dataobj).sum() > 0
    assert SAMPLE.stat().st_size < 2_500_000


def test_shipped_weights_load_into_network_def():
    parser = _parser()
    net = parser.get_parsed_content("network_def")
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus, "the demo network must use nn.ReLU (DeepLift, guided backprop)"
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) < 1_000_000


def test_trained_model_segments_heldout_phantom():
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from training.train import intensity_transform

    parser = _parser()
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    net.eval()
    inferer = dict(parser["inferer"])
    inferer.pop("_target_")

    image, label = make_vessel_phantom((64, 64, 64), seed=424242)  # a seed never trained on
    x = torch.as_tensor(np.asarray(intensity_transform(parser)(image[None])), dtype=torch.float32)[None]
    with torch.no_grad():
        logits = sliding_window_inference(x, predictor=net, **{**inferer, "roi_size": [48, 48, 48]})
    pred = logits.argmax(1, keepdim=True)
    metric = DiceMetric(include_background=False)
    metric(y_pred=one_hot(pred, 2), y=one_hot(torch.as_tensor(label, dtype=torch.long)[None, None], 2))
    dice = float(metric.aggregate().item())
    assert dice >= 0.7, dice
