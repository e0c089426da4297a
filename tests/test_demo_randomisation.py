"""Model-randomisation sanity check (Adebayo et al. 2018) for every registered method, on the
trained demo bundle: the map of the trained network must differ from the map of the same
network with re-initialised weights. A method that ignored the weights (an edge detector)
would keep a rank correlation near 1.

Measured on this 64³ crop (one window, argmax:1): |Spearman| ≤ 0.43 for every method, signed
and of absolute values (layer methods at the deepest encoder block are the highest)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from esegeta_monai import Explainer
from esegeta_monai.bundle import load_bundle
from esegeta_monai.io import load_for_explanation
from esegeta_monai.methods import available_methods, get_method

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "vessel_mra_demo"
LAYER = "model.1.submodule.1.submodule.0"  # the deepest encoder block (32 channels at 1/4 resolution)
CONTRAST = "model.1.submodule.1.submodule.1"  # the bottleneck skip connection above it
CHEAP = {"n_steps": 8, "nt_samples": 4, "n_samples": 4}


def options_for(method: str) -> dict:
    params = get_method(method).params
    options = {k: v for k, v in CHEAP.items() if k in params}
    if "layer" in params:
        options["layer"] = LAYER
    if "contrast_layer" in params:
        options.update(layer=None, contrast_layer=CONTRAST)
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


@pytest.mark.parametrize("method", available_methods())
def test_maps_of_the_trained_network_differ_from_randomised_weights(demo, method):
    trained, randomised, x = demo
    maps = [Explainer(net, method, "argmax:1", roi_size=(64, 64, 64), **options_for(method))(x).sum(1).flatten().numpy()
            for net in (trained, randomised)]
    voxels = np.random.default_rng(0).choice(maps[0].size, 20000, replace=False)
    a, b = maps[0][voxels], maps[1][voxels]
    signed, absolute = spearmanr(a, b).statistic, spearmanr(np.abs(a), np.abs(b)).statistic
    assert np.isfinite(signed) and np.isfinite(absolute), f"{method}: a constant map"
    assert abs(signed) < 0.6 and abs(absolute) < 0.6, f"{method}: rank correlation {signed:.2f} (|·| {absolute:.2f})"
