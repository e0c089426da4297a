"""LIME and Kernel SHAP: exact on a linear target (Kernel SHAP recovers the per-feature
contributions, the surrogate's R² is 1), a lower score where the target is not linear,
window-aware evaluation equal to the naive one with fewer window forwards, seeded, clear errors."""

from __future__ import annotations

import logging

import pytest
import torch
from captum.attr import KernelShap, Lime
from test_methods_perturbation import WINDOWS, naive_target
from toy_models import WeightedSum

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.methods import get_method
from esegeta_monai.methods.surrogate import WeightedLeastSquares
from esegeta_monai.core.features import grid_features, supervoxels
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

FEATURES = grid_features((8, 8), (2, 4))  # 8 blocks


def per_feature(contributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each voxel gets the summed contribution of its feature."""
    total = torch.zeros_like(contributions)
    for label in mask.unique():
        inside = mask == label
        total += inside * (contributions * inside).flatten(1).sum(1).view(-1, 1, 1, 1)
    return total


class Product2d(torch.nn.Module):
    """A classifier whose logit 1 is (Σ left half)·(Σ right half): features interact."""

    def forward(self, x):
        score = x[..., :4].flatten(1).sum(1) * x[..., 4:].flatten(1).sum(1)
        return torch.stack([-score, score], 1)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_a_linear_target_is_recovered_exactly_with_a_perfect_surrogate(method):
    torch.manual_seed(0)
    weight, x = torch.randn(1, 1, 8, 8), torch.rand(2, 1, 8, 8)
    explainer = Explainer(WeightedSum(weight), method, ClassScore(1), features=FEATURES, fill=0.0, n_samples=30)
    truth = per_feature(x * weight, FEATURES)  # the Shapley values of a linear game against a zero fill
    torch.testing.assert_close(explainer(x), truth, rtol=0, atol=1e-5 * float(truth.abs().max()))
    report = explainer.method.last_report
    assert report["n_samples"] == 30 and len(report["r2"]) == 2
    assert min(report["r2"]) > 1 - 1e-9


def test_an_interacting_target_lowers_the_score_and_kernel_shap_stays_efficient(caplog):
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8)
    with caplog.at_level(logging.INFO, logger="esegeta_monai.methods.surrogate"):
        lime = Explainer(Product2d(), "lime", ClassScore(1), features=FEATURES, fill=0.0, n_samples=60)
        lime(x)
    assert lime.method.last_report["r2"][0] < 0.95  # a linear surrogate cannot fit a product
    assert "surrogate weighted R²" in caplog.text
    shap = Explainer(Product2d(), "kernel_shap", ClassScore(1), features=FEATURES, fill=0.0, n_samples=60)
    attribution = shap(x)
    values = torch.stack([attribution[FEATURES.expand_as(x) == label][0] for label in FEATURES.unique()])
    full = float(Product2d()(x)[0, 1])
    assert abs(float(values.sum()) - full) < 1e-4 * full  # efficiency: Σ φ = T(x) − T(fill), T(0) = 0
    assert shap.method.last_report["r2"][0] < 0.99


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_through_windows_equals_the_naive_computation_with_fewer_forwards(unet3d, volume, method):
    x, target = volume[:1], ArgmaxRegion(1)
    mask = supervoxels(x, 4, 1.0)  # a few large supervoxels: a sample that keeps a window's ones spares it
    assert mask.unique().numel() >= 3
    explainer = Explainer(unet3d, method, target, features=mask, fill=0.0, n_samples=24, seed=3, **WINDOWS)
    ours = explainer(x)
    # the same draws on Captum with the full sliding-window inference of every perturbed image
    captum = {"lime": Lime, "kernel_shap": KernelShap}[method](naive := naive_target(unet3d, target, x))
    captum.interpretable_model = WeightedLeastSquares(getattr(captum, "inf_weight", None))
    torch.manual_seed(3)
    reference = captum.attribute(x, baselines=0.0, feature_mask=mask, n_samples=24, perturbations_per_eval=4)
    assert float(reference.abs().max()) > 0
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4 * float(naive(x).abs().max()))
    active = len(explainer.last_pass.active_windows(1))
    naive_count = (1 + 24) * active  # every sample through every window
    assert explainer.method.last_forwards < naive_count
    print(f"{method}: {explainer.method.last_forwards} window forwards, naive {naive_count}, R² {explainer.method.last_report['r2']}")


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_seeded_and_bad_parameters_are_clear(classifier2d, method):
    x = torch.rand(1, 1, 16, 16)
    options = dict(features="grid", block=(4, 4), n_samples=20)
    first, again = (Explainer(classifier2d, method, ClassScore(1), seed=1, **options)(x) for _ in range(2))
    other = Explainer(classifier2d, method, ClassScore(1), seed=2, **options)(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    for bad in ({"n_samples": 0}, {"seed": "one"}, {"features": 3}, {"perturbations_per_eval": -1}):
        with pytest.raises(MethodError, match=f"invalid {next(iter(bad))}"):
            get_method(method).validate(bad)
