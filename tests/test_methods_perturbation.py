"""Perturbation methods: window-aware evaluation equals the naive computation (every perturbed
image through the full sliding-window inference), with the minimum number of window forwards;
on a linear network they recover the known contributions."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation, Occlusion, ShapleyValueSampling

import window_reference
from toy_models import WeightedSum

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.methods import get_method
from esegeta_monai.core.features import grid_features
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore, MaskRegion

ROI = (16, 16, 16)
WINDOWS = dict(roi_size=ROI, overlap=0.5, mode="gaussian", sw_batch_size=4)


def naive_target(net, target, x):
    """T(x') through MONAI's full sliding_window_inference for every x', mask fixed from x."""
    return window_reference.naive_target(net, target, x, ROI, overlap=0.5, mode="gaussian", sw_batch_size=4)


TARGETS = {"argmax": ArgmaxRegion(1), "mask": MaskRegion(2, box=[(2, 14), (4, 20), (6, 18)])}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_occlusion_through_windows_equals_the_naive_computation_with_minimal_forwards(unet3d, volume, target):
    x = volume[:1]
    explainer = Explainer(unet3d, "occlusion", TARGETS[target], sliding_window_shapes=(6, 6, 6), strides=(5, 5, 5), fill=0.0, **WINDOWS)
    ours = explainer(x)
    reference = Occlusion(naive_target(unet3d, TARGETS[target], x)).attribute(
        x, sliding_window_shapes=(1, 6, 6, 6), strides=(1, 5, 5, 5), baselines=0.0, perturbations_per_eval=4)
    value = float(naive_target(unet3d, TARGETS[target], x)(x).abs().max())
    assert float(reference.abs().amax()) > 0
    # equal within 1e-5 of the target's value: the naive float32 sums of T(x') − T(x) lose more
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * value)
    # forwards: the clean pass, plus one per (patch, window whose input the patch touches)
    plan, pass_ = explainer.last_pass.plan, explainer.last_pass
    active = pass_.active_windows(1)
    touched = 0
    for starts in _patch_starts(x.shape[2:], (6, 6, 6), (5, 5, 5)):
        touched += sum(all(s.start < p + 6 and p < s.stop for s, p in zip(window, starts)) for _, window in active)
    assert pass_.windows_run == len(active) + touched
    assert len(plan.slices) * (1 + len(list(_patch_starts(x.shape[2:], (6, 6, 6), (5, 5, 5))))) > 2 * pass_.windows_run


def _patch_starts(shape, patch, strides):
    """Captum's patch positions: k·stride for k = 0 … ceil((size − patch) / stride), the last one
    cut at the border."""
    import itertools
    import math

    return itertools.product(*[range(0, math.ceil((s - p) / st) * st + 1, st) for s, p, st in zip(shape, patch, strides)])


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_feature_ablation_through_windows_equals_the_naive_computation(unet3d, volume, target):
    x = volume
    mask = grid_features(x.shape[2:], (7, 8, 8))
    ours = Explainer(unet3d, "feature_ablation", TARGETS[target], features=mask, fill=0.5, perturbations_per_eval=3, **WINDOWS)(x)
    naive = naive_target(unet3d, TARGETS[target], x)
    reference = FeatureAblation(naive).attribute(x, feature_mask=mask, baselines=0.5)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * float(naive(x).abs().max()))


def test_linear_model_contributions_are_recovered():
    torch.manual_seed(0)
    weight = torch.randn(1, 1, 8, 8)
    net, x = WeightedSum(weight), torch.rand(2, 1, 8, 8)
    mask = grid_features((8, 8), (2, 4))
    truth = x * weight  # per-voxel contribution against a zero fill
    per_feature = torch.zeros_like(truth)
    for label in mask.unique():
        inside = mask == label
        per_feature += inside * (truth * inside).flatten(1).sum(1).view(-1, 1, 1, 1)
    for method in ("feature_ablation", "shapley_value_sampling"):
        ours = Explainer(net, method, ClassScore(1), features=mask, fill=0.0, n_samples=3)(x) if method != "feature_ablation" \
            else Explainer(net, method, ClassScore(1), features=mask, fill=0.0)(x)
        torch.testing.assert_close(ours, per_feature, rtol=1e-5, atol=1e-6)
    # occlusion of single voxels is the analytic map w ⊙ x
    occlusion = Explainer(net, "occlusion", ClassScore(1), sliding_window_shapes=(1, 1), fill=0.0)(x)
    torch.testing.assert_close(occlusion, truth, rtol=1e-5, atol=1e-6)


def test_shapley_sampling_equals_captum_with_the_same_seed(classifier2d):
    x = torch.rand(1, 1, 16, 16)
    mask = grid_features((16, 16), (4, 8))
    ours = Explainer(classifier2d, "shapley_value_sampling", ClassScore(2), features=mask, n_samples=3, seed=5)(x)
    torch.manual_seed(5)
    reference = ShapleyValueSampling(classifier2d).attribute(x, target=2, feature_mask=mask, baselines=0.0, n_samples=3,
                                                             perturbations_per_eval=4)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_slic_supervoxels_and_permutation(unet3d, volume):
    ablation = Explainer(unet3d, "feature_ablation", ArgmaxRegion(1), features="slic", n_segments=12, **WINDOWS)(volume)
    assert ablation.shape == volume.shape and torch.isfinite(ablation).all()
    # each supervoxel gets one value (constant over its voxels)
    from esegeta_monai.core.features import supervoxels

    labels = supervoxels(volume[:1], 12, 0.1)[0, 0]
    first = ablation[0, 0][labels == 0]
    assert torch.allclose(first, first[0].expand_as(first))
    permuted = Explainer(unet3d, "feature_permutation", ArgmaxRegion(1), features="grid", block=(14, 12, 16), **WINDOWS)(volume)
    assert permuted.shape == volume.shape and permuted.abs().amax() > 0
    with pytest.raises(MethodError, match="batch of 2"):
        Explainer(unet3d, "feature_permutation", ArgmaxRegion(1), **WINDOWS)(volume[:1])


def test_bad_parameters_are_clear(unet3d, volume):
    with pytest.raises(MethodError, match="sliding_window_shapes"):
        get_method("occlusion").validate({"sliding_window_shapes": [0, 2, 2]})
    with pytest.raises(MethodError, match="one value per spatial axis"):
        Explainer(unet3d, "occlusion", ArgmaxRegion(1), sliding_window_shapes=(4, 4), **WINDOWS)(volume[:1])
    with pytest.raises(MethodError, match="do not broadcast"):
        Explainer(unet3d, "feature_ablation", ArgmaxRegion(1), features=torch.zeros(3, 3), **WINDOWS)(volume[:1])


def test_perturbation_methods_stop_at_the_timeout(unet3d, volume):
    from esegeta_monai.errors import MethodTimeout

    with pytest.raises(MethodTimeout, match="time budget"):
        Explainer(unet3d, "occlusion", ArgmaxRegion(1), sliding_window_shapes=(2, 2, 2), timeout=1e-3, **WINDOWS)(volume[:1])


def test_the_surrogate_score_reaches_the_manifest(tmp_path):
    import json

    from esegeta_monai.apps.cli import main
    from tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    config = tmp_path / "run.yaml"
    config.write_text(f"bundle: {bundle}\nmethods:\n  - lime: {{features: grid, block: [8, 8, 8], n_samples: 16}}\n"
                      f"targets: [argmax:1]\nout: {tmp_path / 'out'}\n")
    assert main(["explain", "--config", str(config), "-q"]) == 0
    (record,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["records"]
    assert record["report"]["n_samples"] == 16 and len(record["report"]["r2"]) == 1 and record["report"]["r2"][0] <= 1
