"""The two bundles of the paper study (UNet MSS, UNet MSS + elastic deformation): files, network,
weights, explanation through the CLI; the deep-supervision network and the elastic augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from esegeta_monai.monai.bundle import load_bundle
from esegeta_monai.demo.networks import UNetMSS
from training.train import elastic_deform

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
NAMES = ["vessel_mss_demo", "vessel_mss_deform_demo"]


@pytest.mark.parametrize("name", NAMES)
def test_bundle_loads_and_matches_the_unet_demo(name):
    root = BUNDLES / name
    bundle = load_bundle(root)
    net = bundle.network
    assert isinstance(net, UNetMSS) and net.deep_supr_num == 2
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())  # guided backprop / deconvolution
    assert sum(p.numel() for p in net.parameters()) < 300_000
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    # same preprocessing and inferer as vessel_mra_demo: a fair comparison
    reference = load_bundle(BUNDLES / "vessel_mra_demo", build_network=False)
    assert bundle.inferer == reference.inferer
    assert [type(t).__name__ for t in bundle.preprocessing.transforms] == [type(t).__name__ for t in reference.preprocessing.transforms]
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "vessel"}
    metrics = json.loads((root / "docs" / "training_metrics.json").read_text())
    assert metrics["heldout_dice_mean"] > 0.8
    train = yaml.safe_load((root / "configs" / "train.yaml").read_text())
    assert train["training"]["deep_supervision"]
    assert bool(train["training"]["augment"].get("elastic")) == (name == "vessel_mss_deform_demo")


def test_eval_network_returns_one_full_resolution_tensor():
    net = load_bundle(BUNDLES / NAMES[0]).network.eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = net(x)
        plain = net.model(x)
    assert torch.is_tensor(out) and out.shape == (1, 2, 16, 16, 16)
    assert torch.equal(out, plain)  # eval mode is the plain UNet: the heads do not run
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 3 and all(o.shape == (1, 2, 16, 16, 16) for o in outs)


@pytest.mark.parametrize("name", NAMES)
def test_explain_cli_writes_an_aligned_map(name, tmp_path):
    from esegeta_monai.apps.cli import main

    root = BUNDLES / name
    sample = root / "sample" / "vessel_phantom_0.nii.gz"
    code = main(["explain", "--bundle", str(root), "--methods", "saliency", "--out", str(tmp_path), "--no-progress",
                 "--roi-size", "80,80,80"])  # one window: a light check
    assert code == 0
    written = nib.load(str(tmp_path / "vessel_phantom_0" / "saliency_argmax1.nii.gz"))
    reference = nib.load(str(sample))
    assert written.shape[:3] == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
    values = np.asarray(written.dataobj)
    assert np.isfinite(values).all() and values.max() > 0


def test_elastic_deform_is_seeded_and_keeps_a_binary_label():
    rng = np.random.default_rng(0)
    img = rng.random((24, 24, 24)).astype(np.float32)
    lab = (img > 0.8).astype(np.uint8)
    a = elastic_deform(img, lab, np.random.default_rng(5), prob=1.0)
    b = elastic_deform(img, lab, np.random.default_rng(5), prob=1.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8 and set(np.unique(a[1])) <= {0, 1}
    assert not np.array_equal(a[0], img)
    same = elastic_deform(img, lab, np.random.default_rng(5), prob=0.0)
    assert same[0] is img and same[1] is lab
