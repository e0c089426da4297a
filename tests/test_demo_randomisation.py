"""Model-randomisation sanity check (Adebayo et al. 2018) for every registered method, on the
trained demo bundle: the map of the trained network must differ from the map of the same
network with re-initialised weights. A method that ignored the weights (an edge detector)
would keep a rank correlation near 1.

Measured on this 64³ crop (one window, argmax:1): |Spearman| ≤ 0.43 for every gradient, CAM,
layer and relevance method, signed and of absolute values (layer methods at the deepest encoder
block are the highest); 0.52–0.66 for the coarse perturbation maps (16³ patches, 24 supervoxels)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from esegeta_monai import Explainer
from esegeta_monai.monai.bundle import load_bundle
from esegeta_monai.monai.io import load_for_explanation
from esegeta_monai.methods import available_methods, get_method

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "vessel_mra_demo"
LAYER = "model.1.submodule.1.submodule.0"  # the deepest encoder block (32 channels at 1/4 resolution)
CONTRAST = "model.1.submodule.1.submodule.1"  # the bottleneck skip connection above it
CHEAP = {"n_steps": 8, "nt_samples": 4, "n_samples": 4, "n_segments": 24, "steps": 2, "n_masks": 64, "center": True}
#: visualisation methods whose output is an image meant to resemble the input, whatever the weights
EXCLUDED = {
    "deepdream": "starts from the input image and changes it a little: both maps keep the image's ranks (Spearman 0.999)",
    "inverted_representation": "reconstructs the input from either network's layer, from the same seeded noise: alike by design",
}


def options_for(method: str) -> dict:
    params = get_method(method).params
    options = {k: v for k, v in CHEAP.items() if k in params}
    if "layer" in params:
        options["layer"] = LAYER
    if "contrast_layer" in params:
        options.update(layer=None, contrast_layer=CONTRAST)
    if "sliding_window_shapes" in params:
        options.update(sliding_window_shapes=[16] * 3)
    if method == "kernel_shap":  # a regression over ≤ 24 supervoxels: more samples than features
        options.update(n_samples=32)
    return options


@pytest.fixture(scope="module")
def demo():
    """The trained network, a re-initialised copy, and a 64³ crop of the preprocessed sample."""
    bundle = load_bundle(DEMO)
    x = load_for_explanation(bundle.samples[0], bundle.preprocessing)["image"][None].as_tensor()[:, :, 16:80, 16:80, :64]
    randomised = copy.deepcopy(bundle.network)
    torch.manual_seed(0)
    for module in randomised.modules():
        if module is not randomised and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return bundle.network, randomised, x


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.skip(reason=EXCLUDED[m])) if m in EXCLUDED else m
                                    for m in available_methods() if not get_method(m).batch_dependent])
def test_maps_of_the_trained_network_differ_from_randomised_weights(demo, method):
    trained, randomised, x = demo
    maps = [Explainer(net, method, "argmax:1", roi_size=(64, 64, 64), **options_for(method))(x).sum(1).flatten().numpy()
            for net in (trained, randomised)]
    voxels = np.random.default_rng(0).choice(maps[0].size, 20000, replace=False)
    a, b = maps[0][voxels], maps[1][voxels]
    signed, absolute = spearmanr(a, b).statistic, spearmanr(np.abs(a), np.abs(b)).statistic
    assert np.isfinite(signed) and np.isfinite(absolute), f"{method}: a constant map"
    # Perturbation maps stay partly input-driven under any weights: removing a bright patch changes any
    # network's output, removing a dark one (already ≈ fill) changes nothing; measured 0.52–0.66 there.
    limit = 0.8 if get_method(method).family == "perturbation" else 0.6
    assert abs(signed) < limit and abs(absolute) < limit, f"{method}: rank correlation {signed:.2f} (|·| {absolute:.2f})"
