"""RISE, extremal perturbation and Score-CAM: they find the region a synthetic classifier reads,
equal direct (naive / by-hand) computations, are seeded, and refuse bad keywords clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods_perturbation import WINDOWS, naive_target

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.methods import get_method
from esegeta_monai.methods.extremal import gaussian_smooth
from esegeta_monai.methods.rise import rise_masks
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

SIZE = 32
REGION = torch.zeros(1, 1, SIZE, SIZE)
REGION[..., 6:14, 18:26] = 1  # what the classifier reads: 1/16 of the image


class RegionClassifier(torch.nn.Module):
    """Logit 1 is the mean intensity inside REGION (logit 0 its negative)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("region", REGION)

    def forward(self, x):
        score = (x * self.region).flatten(1).sum(1) / self.region.sum()
        return torch.stack([-score, score], 1)


def images(batch: int = 1) -> torch.Tensor:
    """A bright square in the region and an equally bright distractor outside it, on noise."""
    torch.manual_seed(0)
    x = 0.1 * torch.rand(batch, 1, SIZE, SIZE)
    x[..., 6:14, 18:26] += 1
    x[..., 20:28, 4:12] += 1
    return x


def top_share(maps: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of the region-sized set of highest voxels that lies in REGION."""
    k = int(REGION.sum())
    return REGION.flatten()[maps.flatten(1).topk(k, 1).indices].mean(1)


AREA = float(REGION.mean())


def test_rise_highlights_the_region_the_classifier_reads():
    rise = Explainer(RegionClassifier(), "rise", ClassScore(1), n_masks=400, cells=4, perturbations_per_eval=50)(images())
    assert rise.shape == (1, 1, SIZE, SIZE)
    assert float(top_share(rise)) > 0.8  # against 1/16 by chance
    shifted = rise - rise.min()
    ratio = float((shifted * REGION).sum() / REGION.sum() / ((shifted * (1 - REGION)).sum() / (1 - REGION).sum()))
    assert ratio > 2, ratio


def test_extremal_mask_keeps_the_region_at_the_requested_area():
    x = images(2)
    explainer = Explainer(RegionClassifier(), "extremal_perturbation", ClassScore(1), area=AREA, steps=60)
    masks = explainer(x)
    assert masks.shape == (2, 1, SIZE, SIZE) and 0 <= float(masks.min()) and float(masks.max()) <= 1
    inside = (masks * REGION).flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert float(inside.min()) > 0.6  # of the mask's mass, against 1/16 for a mask blind to the region
    assert abs(float(masks.mean()) - AREA) < 0.015
    # deterministic, and each image of a batch gets the mask it gets alone
    torch.testing.assert_close(explainer(x[1:]), masks[1:], rtol=0, atol=1e-5)
    # the preserved image keeps the class score; the same mask moved onto the distractor does not
    net, blurred = RegionClassifier(), gaussian_smooth(x, 5.0)
    kept = net(blurred + (x - blurred) * masks)[:, 1] / net(x)[:, 1]
    moved = net(blurred + (x - blurred) * torch.roll(masks, (14, -14), (2, 3)))[:, 1] / net(x)[:, 1]
    assert float(kept.min()) > float(moved.max()) + 0.2, (kept, moved)


def test_rise_through_windows_equals_the_naive_computation(unet3d, volume):
    x, target = volume[:1], ArgmaxRegion(1)
    explainer = Explainer(unet3d, "rise", target, n_masks=6, cells=4, p=0.5, fill=0.2, seed=7, perturbations_per_eval=4, **WINDOWS)
    ours = explainer(x)
    masks = rise_masks(x.shape[2:], 6, (4, 4, 4), 0.5, torch.Generator().manual_seed(7))
    naive = naive_target(unet3d, target, x)
    scores = naive(x * masks + 0.2 * (1 - masks))  # each masked image through MONAI's full sliding-window inference
    reference = (scores.view(-1, 1, 1, 1, 1) * masks).sum(0, keepdim=True) / (6 * 0.5)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    # same seed, same map; another seed, another map
    torch.testing.assert_close(explainer(x), ours, rtol=0, atol=0)
    other = Explainer(unet3d, "rise", target, n_masks=6, cells=4, seed=8, **WINDOWS)(x)
    assert not torch.allclose(other, ours)


def score_cam_by_hand(net, layer, x, cls, weighting):
    """Score-CAM on the whole image, written out: masks, scores and weights from the network."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        net(x)
    handle.remove()
    activations = F.interpolate(captured[0], size=x.shape[2:], mode="bilinear", align_corners=False)
    maps = []
    for b in range(x.shape[0]):
        scores = []
        for k in range(activations.shape[1]):
            a = activations[b, k]
            mask = (a - a.min()) / (a.max() - a.min())
            with torch.no_grad():
                scores.append(float(net(x[b : b + 1] * mask)[0, cls]))
        scores = torch.tensor(scores)
        if weighting == "softmax":
            weights = scores.softmax(0)
        else:
            weights = scores - float(net(torch.zeros_like(x[:1]))[0, cls])
        maps.append(F.relu((weights.view(-1, 1, 1) * activations[b]).sum(0, keepdim=True)))
    return torch.stack(maps)


@pytest.mark.parametrize("weighting", ["softmax", "increase"])
def test_score_cam_equals_the_computation_by_hand(classifier2d, weighting):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "score_cam", ClassScore(2), layer="3", weighting=weighting, perturbations_per_eval=3)(x)
    reference = score_cam_by_hand(classifier2d, classifier2d[3], x, 2, weighting)
    assert float(reference.max()) > 0
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


def test_score_cam_through_windows_on_a_3d_unet(unet3d, volume):
    explainer = Explainer(unet3d, "score_cam", ArgmaxRegion(1), layer="model.1.submodule.0", weighting="increase", **WINDOWS)
    cam = explainer(volume[:1])
    assert cam.shape == (1, 1, *volume.shape[2:]) and float(cam.min()) >= 0 and float(cam.max()) > 0
    # the scores are exact through the windows: one clean pass, then every window per masked image and the zero image
    active = len(explainer.last_pass.active_windows(1))
    assert explainer.method.last_forwards == active * (1 + 8 + 1)  # 8 channels at that layer


def test_bad_parameters_are_clear(classifier2d):
    for method, bad in [("rise", {"p": 0}), ("rise", {"p": 1.5}), ("rise", {"cells": [4, 0]}), ("rise", {"n_masks": 0}),
                        ("extremal_perturbation", {"area": 1.0}), ("extremal_perturbation", {"steps": 0}),
                        ("extremal_perturbation", {"lr": 0}), ("score_cam", {"weighting": "max"})]:
        with pytest.raises(MethodError, match=f"invalid {next(iter(bad))}"):
            get_method(method).validate(bad)
    with pytest.raises(MethodError, match="one value per spatial axis"):
        Explainer(classifier2d, "rise", ClassScore(1), cells=[4, 4, 4], n_masks=2)(torch.rand(1, 1, 16, 16))
    with pytest.raises(MethodError, match="needs layer"):
        Explainer(classifier2d, "score_cam", ClassScore(1))
