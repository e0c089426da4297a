"""Cascading randomisation with the target's region fixed from the trained model or recomputed from
each randomised model (issue 14): the fixed region is the trained model's, the score the randomised
model's; the recomputed region follows each model's prediction; the choice is in every output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.errors import ConfigError
from esegeta_monai.evaluation.randomisation import explainer_randomisation


@pytest.fixture
def net_and_image():
    """A 2D net whose class-1 region is small (its last bias favours class 0): re-initialising
    the last layer makes the argmax region jump."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1)).eval()
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        logits = net(x)
        gap = (logits[:, 1] - logits[:, 0]).flatten()
        net[2].bias[1] -= float(gap.quantile(0.9))  # class 1 wins on ~10 % of the pixels
    return net, x


def randomised_copies(net, seed):
    """The cascade's networks, rebuilt as cascading_randomisation makes them (layer '2' then '0')."""
    model = copy.deepcopy(net)
    models = []
    for index, name in enumerate(["2", "0"], start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            dict(model.named_modules())[name].reset_parameters()
        models.append(copy.deepcopy(model))
    return models


def region_of(model, x):
    with torch.no_grad():
        logits = model(x)
    return (logits[:, 1] > logits[:, 0]).float()[:, None]


def gradient_map(model, x, region):
    """|∂/∂x Σ_region logit₁| by plain autograd."""
    probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(probe)[:, 1:2] * region).sum(), probe)
    return grad.abs()


def test_fixed_region_is_the_trained_models_and_the_score_the_randomised_models(net_and_image):
    net, x = net_and_image
    trained_region = region_of(net, x)
    steps = explainer_randomisation(Explainer(net, "saliency", "argmax:1"), x, "fixed", seed=3)
    assert [s["layer"] for s in steps] == ["original", "2", "0"]
    assert all(s["target_region"] == "fixed" for s in steps)
    assert all(s["region_voxels"] == [int(trained_region.sum())] and s["region_dice"] == [1.0] for s in steps)
    for step, model in zip(steps[1:], randomised_copies(net, 3)):
        # the randomised model's own region differs, yet the map is the randomised model's gradient in the trained region
        assert not torch.equal(region_of(model, x), trained_region)
        torch.testing.assert_close(step["map"], gradient_map(model, x, trained_region), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[0]["map"], gradient_map(net, x, trained_region), rtol=1e-5, atol=1e-7)


def test_recomputed_region_follows_each_randomised_model(net_and_image):
    net, x = net_and_image
    steps = explainer_randomisation(Explainer(net, "saliency", "argmax:1"), x, "recomputed", seed=1)
    assert all(s["target_region"] == "recomputed" for s in steps) and steps[0]["region_dice"] == [1.0]
    for step, model in zip(steps[1:], randomised_copies(net, 1)):
        region = region_of(model, x)
        assert step["region_voxels"] == [int(region.sum())]
        torch.testing.assert_close(step["map"], gradient_map(model, x, region), rtol=1e-5, atol=1e-7)
    # the region jumps from ~10 % of the pixels to all of them (measured: 58 → 576, Dice 0.18) ...
    assert steps[0]["region_voxels"][0] < 0.15 * x[0, 0].numel() < 0.5 * steps[1]["region_voxels"][0]
    assert steps[1]["region_dice"][0] < 0.5
    # ... and that, not the weights' influence on the map, drives the correlation down (measured 0.09 against 0.84)
    fixed = explainer_randomisation(Explainer(net, "saliency", "argmax:1"), x, "fixed", seed=1)
    assert steps[1]["spearman_abs"] < 0.3 < 0.6 < fixed[1]["spearman_abs"]


def test_an_empty_recomputed_region_gives_a_zero_map_and_no_correlation(net_and_image):
    net, x = net_and_image
    steps = explainer_randomisation(Explainer(net, "saliency", "argmax:1"), x, "recomputed", seed=0)
    assert steps[1]["region_voxels"] == [0] and steps[1]["region_dice"] == [0.0]  # this randomised model predicts no class 1
    assert not torch.any(steps[1]["map"]) and np.isnan(steps[1]["spearman_abs"])


def test_class_targets_have_no_region_and_both_variants_agree():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(1, 1, 10, 10)
    runs = [explainer_randomisation(Explainer(net, "saliency", "class:2"), x, region, seed=1) for region in ("fixed", "recomputed")]
    assert all(s["region_voxels"] is None and s["region_dice"] is None for s in runs[0])
    assert [s["spearman_abs"] for s in runs[0]] == [s["spearman_abs"] for s in runs[1]]


def test_bad_target_region_and_local_mode_are_refused(net_and_image):
    net, x = net_and_image
    with pytest.raises(ConfigError, match="fixed, recomputed"):
        explainer_randomisation(Explainer(net, "saliency", "argmax:1"), x, "moving")
    with pytest.raises(ConfigError, match="local"):
        explainer_randomisation(Explainer(net, "saliency", "argmax:1", roi_size=(12, 12), local=True), x, "fixed")


@pytest.mark.parametrize("region", ["fixed", "recomputed"])
def test_evaluate_records_the_target_region_everywhere(tmp_path, region):
    from tiny_bundle import make_tiny_bundle

    from esegeta_monai.apps.cli import main

    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "eval"
    code = main(["evaluate", "--bundle", str(bundle), "--methods", "saliency", "--metrics", "randomisation",
                 "--target", "argmax:1", "--target-region", region, "--out", str(out), "-q"])
    assert code == 0
    record = json.loads((out / "evaluation.json").read_text())
    assert record["target_region"] == region
    (row,) = record["rows"]
    assert row["status"] == "ok" and row["target_region"] == region and 0 <= row["region_dice"] <= 1
    steps = next(iter(record["curves"]["randomisation"].values()))["steps"]
    assert all(s["target_region"] == region for s in steps)
    dice = np.array([s["region_dice"][0] for s in steps])
    assert np.all(dice == 1.0) if region == "fixed" else dice[0] == 1.0
    assert "target_region" in (out / "evaluation.csv").read_text().splitlines()[0]
    assert (out / "randomisation_blob_saliency.png").is_file()
