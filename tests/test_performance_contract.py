"""Performance contract (issue 16): what the engine must not do, counted rather than timed.

- CAM and layer methods record the graph from the hooked layer, not from the input: no
  forward of the network sees an input that requires grad, fewer bytes are saved for
  backward than with the input-graph variant, and the map is the same.
- Whole-volume perturbation evaluates ``perturbations_per_eval`` copies per forward.
- A target that does not read the prediction (mask, box, voxel, class score) costs no
  extra forward to learn the output's shape.
- On CPU a batch goes through the network ``sw_batch_size`` images at a time (its working
  set is that of one image at the default), with the same maps as the whole batch at once.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ClassScore, MaskRegion, VoxelScore
from esegeta_monai.errors import TargetError


class Calls:
    """Records the batch size and ``requires_grad`` of the input of every forward of ``network``."""

    def __init__(self, network: torch.nn.Module):
        self.batches: list[int] = []
        self.input_grad: list[bool] = []
        self.handle = network.register_forward_pre_hook(self.hook)

    def hook(self, _module, args):
        self.batches.append(int(args[0].shape[0]))
        self.input_grad.append(bool(args[0].requires_grad))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the block."""

    def __init__(self):
        self.total = 0

    def pack(self, tensor):
        self.total += tensor.numel() * tensor.element_size()
        return tensor

    def __enter__(self):
        self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)


def segmenter():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 1)).eval()


def input_graph_gradcam(network, layer, x, class_index):
    """Grad-CAM the old way: the input requires grad, so the whole forward is recorded."""
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    x = x.clone().requires_grad_(True)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    try:
        score = network(x)[:, class_index].sum()
        (gradient,) = torch.autograd.grad(score, captured["a"])
    finally:
        handle.remove()
        for parameter in network.parameters():
            parameter.requires_grad_(True)
    weights = gradient.mean((2, 3), keepdim=True)
    cam = F.relu((weights * captured["a"]).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).detach()


# -- 1. CAM and layer methods: the graph starts at the layer ---------------------------------
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "layer_gradcam", "layer_gradient_x_activation", "layer_activation",
                                    "layer_gradient_shap", "score_cam"])
@pytest.mark.parametrize("roi_size", [None, (8, 8)], ids=["whole", "windows"])
def test_cam_and_layer_methods_never_make_the_input_require_grad(classifier2d, method, roi_size):
    network = segmenter() if roi_size else classifier2d  # a classifier has no windows
    target = MaskRegion(1, box=[(2, 12), (3, 14)]) if roi_size else ClassScore(1)
    options = {"n_samples": 2} if method == "layer_gradient_shap" else {}
    torch.manual_seed(3)
    x = torch.rand(2, 1, 16, 16)
    with Calls(network) as calls:
        attribution = Explainer(network, method, target, layer="3" if roi_size is None else "2", roi_size=roi_size, **options)(x)
    assert calls.batches and not any(calls.input_grad)
    assert torch.isfinite(attribution).all() and attribution.abs().sum() > 0


def test_gradcam_saves_less_for_backward_and_gives_the_input_graph_map(classifier2d):
    torch.manual_seed(4)
    x = torch.rand(3, 1, 16, 16)
    with SavedBytes() as old:
        reference = input_graph_gradcam(classifier2d, classifier2d[3], x, 2)
    explainer = Explainer(classifier2d, "gradcam", ClassScore(2), layer="3")
    with SavedBytes() as ours:
        cam = explainer(x)
    torch.testing.assert_close(cam, reference, rtol=1e-5, atol=1e-7)
    assert 0 < ours.total < 0.5 * old.total, (ours.total, old.total)  # nothing saved below the layer
    assert x.grad is None


def test_an_in_place_activation_after_the_layer_leaves_the_map_unchanged():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 2, 1)).eval()
    plain = torch.nn.Sequential(network[0], torch.nn.ReLU(), network[2]).eval()  # same weights, no in-place
    x = torch.rand(1, 1, 8, 8)
    reference = input_graph_gradcam(plain, plain[0], x, 1)
    torch.testing.assert_close(Explainer(network, "gradcam", ClassScore(1), layer="0")(x), reference, rtol=1e-5, atol=1e-7)


# -- 2. whole-volume perturbation: perturbations_per_eval copies per forward -----------------
@pytest.mark.parametrize("batch", [1, 2])
def test_whole_volume_occlusion_runs_ceil_n_over_per_eval_forwards(batch):
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.rand(batch, 1, 12, 12, 12)
    target = MaskRegion(1, box=[(0, 12), (2, 10), (0, 12)])
    patches, per_eval = 8, 3  # patches of 6³ on 12³
    settings = dict(sliding_window_shapes=(6, 6, 6), fill=0.0)
    with Calls(network) as calls:
        batched = Explainer(network, "occlusion", target, perturbations_per_eval=per_eval, **settings)(x)
    perturbed = calls.batches[1:]  # after the clean forward
    assert calls.batches[0] == batch and len(perturbed) == math.ceil(patches / per_eval)
    assert perturbed == [per_eval * batch] * (patches // per_eval) + [(patches % per_eval) * batch]
    one_by_one = Explainer(network, "occlusion", target, perturbations_per_eval=1, **settings)(x)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


# -- 3. no forward to learn the output's shape -----------------------------------------------
@pytest.mark.parametrize("target", [MaskRegion(1, box=[(0, 16), (4, 12)]), VoxelScore(2, (5, 6))], ids=["mask", "voxel"])
@pytest.mark.parametrize("roi_size", [None, (8, 8)], ids=["whole", "windows"])
def test_a_target_that_reads_no_prediction_costs_no_extra_forward(target, roi_size):
    network = segmenter()
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(network, "saliency", target, roi_size=roi_size, overlap=0.5)
    with Calls(network) as calls:
        explainer(x)
    assert len(calls.batches) == explainer.last_pass.windows_run  # one forward per window that reaches the target


def test_a_class_score_learns_the_output_shape_from_one_image_once(classifier2d):
    """A class score may be a classifier's or summed over a segmentation: one image's forward
    tells which, once per explainer and input size."""
    x = torch.rand(3, 1, 16, 16)
    explainer = Explainer(classifier2d, "saliency", ClassScore(1))
    with Calls(classifier2d) as calls:
        explainer(x)
        first = list(calls.batches)
        explainer(x)
    assert sum(first) == 1 + 3 and sum(calls.batches) == 2 * 3 + 1 and explainer.last_region_voxels is None


def test_the_output_is_still_checked_at_the_first_forward(classifier2d):
    network = segmenter()
    for roi_size in (None, (8, 8)):
        with pytest.raises(TargetError, match="class 5 does not exist"):
            Explainer(network, "saliency", MaskRegion(5, box=[(0, 4), (0, 4)]), roi_size=roi_size)(torch.rand(1, 1, 16, 16))
        with pytest.raises(TargetError, match="a classifier has no spatial output"):
            Explainer(classifier2d, "gradcam", VoxelScore(1, (2, 2)), layer="3", roi_size=roi_size)(torch.rand(1, 1, 16, 16))
    shrinking = torch.nn.Conv2d(1, 2, 3).eval()  # output 14², input 16²
    with pytest.raises(TargetError, match="differs from the input's"):
        Explainer(shrinking, "saliency", MaskRegion(1, box=[(0, 4), (0, 4)]))(torch.rand(1, 1, 16, 16))


# -- 4. batches on the CPU: sw_batch_size images at a time -----------------------------------
@pytest.mark.parametrize("method, options", [("saliency", {}), ("integrated_gradients", {"n_steps": 4}), ("gradcam", {"layer": "3"})])
def test_on_the_cpu_a_batch_goes_through_the_network_sw_batch_size_images_at_a_time(classifier2d, method, options):
    torch.manual_seed(5)
    x = torch.rand(4, 1, 16, 16)
    explainer = Explainer(classifier2d, method, ClassScore(1), **options)
    explainer(x[:1])  # learns the output's shape (a class score): not counted below
    with Calls(classifier2d) as calls:
        batched = explainer(x)
    steps = options.get("n_steps", 1)
    assert max(calls.batches) == steps and sum(calls.batches) % 4 == 0  # one image (with its integration steps) per forward
    one_by_one = torch.cat([explainer(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-7)
    pairs = Explainer(classifier2d, method, ClassScore(1), sw_batch_size=2, **options)
    pairs(x[:1])
    with Calls(classifier2d) as calls:
        torch.testing.assert_close(pairs(x), one_by_one, rtol=1e-5, atol=1e-7)
    assert max(calls.batches) == 2 * steps
