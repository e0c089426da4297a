"""The trained demo model's maps show what it looks at: the vessels, and not by accident."""

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.stats import spearmanr

from esegeta_monai.monai.bundle import load_bundle
from esegeta_monai.apps.config import MethodSpec, RunConfig
from esegeta_monai.apps.cohort import run_explanations

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "vessel_mra_demo"
SAMPLE = DEMO / "sample" / "vessel_phantom_0.nii.gz"
LABEL = DEMO / "sample" / "vessel_phantom_0_label.nii.gz"


def saliency_map(bundle, out: Path) -> np.ndarray:
    config = RunConfig(bundle=str(DEMO), methods=[MethodSpec("saliency")], targets=["argmax:1"], out=str(out), device="cpu")
    result = run_explanations(config, bundle=bundle)
    assert result.ok, result.records
    return nib.load(result.records[0].output).get_fdata()


def test_trained_maps_concentrate_on_vessels_and_differ_from_random_weights(tmp_path):
    bundle = load_bundle(DEMO)
    trained = saliency_map(bundle, tmp_path / "trained")
    vessels = nib.load(str(LABEL)).get_fdata() > 0
    share_inside = trained[vessels].sum() / trained.sum()
    assert share_inside > 5 * vessels.mean()  # measured: ~11× the vessels' share of the volume

    torch.manual_seed(0)
    for parameter in bundle.network.parameters():
        parameter.data.normal_(0, 0.1)
    randomised = saliency_map(bundle, tmp_path / "random")
    sample = np.random.default_rng(0).choice(trained.size, 20000, replace=False)
    correlation = spearmanr(trained.ravel()[sample], randomised.ravel()[sample]).statistic
    print(f"share inside vessels {share_inside:.3f} (vessels {vessels.mean():.4f} of the volume), rank correlation {correlation:.3f}")
    assert correlation < 0.5
