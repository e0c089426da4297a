"""Every registered method, one by one: 3D and 2D segmentation through sliding windows with a
batch of two (equal to two batches of one), a 2D classifier on whole images, and AMP, and a 3D
classifier (MONAI's DenseNet, as in ``bundles/lesion_cls_3d_demo``) on whole volumes.

A new method is covered here as soon as it is registered; ``OPTIONS`` only makes the slow
ones cheap and names layers of the test networks.
"""

from __future__ import annotations

import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.methods import available_methods, get_method
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

CHEAP = {"n_steps": 4, "nt_samples": 2, "n_samples": 2, "n_segments": 6, "n_masks": 4, "steps": 2, "octaves": 2}  # steps, octaves: also the visualisation methods
# a ResidualUnit of the UNets (2D or 3D); the 2D classifier's second conv; the DenseNet's first dense block
LAYERS = {"3d": "model.1.submodule.0", "2d-seg": "model.1.submodule.0", "2d": "3", "3d-cls": "features.denseblock1"}
CONTRAST = {"3d": "model.1.submodule.1", "2d-seg": "model.1.submodule.1", "2d": "3", "3d-cls": "features.transition1"}
BELOW_CONTRAST = {"2d": "0", "3d-cls": "features.conv0"}  # contrastive excitation's layer for the classifiers
SPATIAL = {"3d": 3, "2d-seg": 2, "2d": 2, "3d-cls": 3}


def options_for(method: str, dims: str) -> dict:
    """Cheap, valid keywords of ``method`` for the test network of ``dims``."""
    params = get_method(method).params
    options = {k: v for k, v in CHEAP.items() if k in params}
    if "layer" in params:
        options["layer"] = LAYERS[dims]
    if "sliding_window_shapes" in params:  # occlusion: a few large patches
        options.update(sliding_window_shapes=[8] * SPATIAL[dims], strides=[8] * SPATIAL[dims])
    if "contrast_layer" in params:
        options["contrast_layer"] = CONTRAST[dims]
        options["layer"] = BELOW_CONTRAST.get(dims)
    return options


def unet2d():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(2, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, act="relu", norm="batch").eval()


@pytest.mark.parametrize("spatial", [3, 2])
@pytest.mark.parametrize("method", available_methods())
def test_segmentation_through_windows_batch_of_two_equals_two_of_one(unet3d, method, spatial):
    torch.manual_seed(2)
    net, x = (unet3d, torch.rand(2, 1, 20, 18, 22)) if spatial == 3 else (unet2d(), torch.rand(2, 1, 36, 40))
    settings = dict(roi_size=(16,) * spatial, overlap=0.5, mode="gaussian", sw_batch_size=3, **options_for(method, "3d" if spatial == 3 else "2d-seg"))
    explainer = Explainer(net, method, ArgmaxRegion(1), **settings)
    batch = explainer(x)
    assert batch.shape[0] == 2 and batch.shape[2:] == x.shape[2:] and torch.isfinite(batch).all()
    assert batch.abs().amax() > 0, f"{method}: an all-zero map"
    if get_method(method).batch_dependent:  # e.g. feature permutation: its map depends on the batch by definition
        return
    singles = torch.cat([explainer(x[:1]), explainer(x[1:])])
    scale = float(batch.abs().amax())
    if get_method(method).family == "relevance":
        # relevance rules divide by layer outputs, which amplifies the rounding of batch-size-dependent
        # convolution kernels where they nearly cancel (mixed-sign ResidualUnit outputs): a handful of
        # voxels may differ by up to 1 % of the map's maximum; a batch that mixes images changes many more
        close = torch.isclose(batch, singles, rtol=1e-4, atol=1e-4 * scale)
        assert (~close).float().mean() <= 1e-3, f"{method}: {int((~close).sum())} voxels differ"
        torch.testing.assert_close(batch, singles, rtol=0, atol=1e-2 * scale)
        return
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("method", available_methods())
def test_2d_classifier_whole_image_and_amp(classifier2d, method):
    torch.manual_seed(3)
    x = torch.rand(2, 1, 16, 16)
    options = options_for(method, "2d")
    full = Explainer(classifier2d, method, ClassScore(1), **options)(x)
    assert full.shape[0] == 2 and full.shape[2:] == x.shape[2:] and torch.isfinite(full).all()
    mixed = Explainer(classifier2d, method, ClassScore(1), amp=True, **options)(x)
    assert torch.isfinite(mixed).all()
    if not get_method(method).amp_safe:  # amp is ignored for it: the float32 map
        torch.testing.assert_close(mixed, full)
        return
    # bfloat16 forwards on the CPU (float16 on CUDA): close to the float32 map, not equal
    a, b = full.flatten().double(), mixed.flatten().double()
    if a.std() > 0:
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9, f"{method}: the AMP map departs from float32"


def test_every_method_refuses_an_unknown_keyword():
    for method in available_methods():
        with pytest.raises(Exception, match="no keyword 'no_such_option'"):
            get_method(method).validate({"no_such_option": 1})


def densenet3d():
    """A tiny random 3D DenseNet classifier (ReLU modules, batch norm, 3 classes): 16³ → 4³ → 2³."""
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    return DenseNet(3, 1, 3, init_features=4, growth_rate=4, block_config=(1, 1), bn_size=2, act="relu").eval()


@pytest.mark.parametrize("method", available_methods())
def test_3d_classifier_whole_volume_batch_independent(method):
    torch.manual_seed(4)
    x = torch.rand(2, 1, 16, 16, 16)
    explainer = Explainer(densenet3d(), method, ClassScore(1), **options_for(method, "3d-cls"))
    batch = explainer(x)
    assert batch.shape[0] == 2 and batch.shape[2:] == x.shape[2:] and torch.isfinite(batch).all()
    assert batch.abs().amax() > 0, f"{method}: an all-zero map"
    if get_method(method).batch_dependent:
        return
    # the second volume alone gives its map in the batch (rounding of batch-size-dependent kernels aside)
    torch.testing.assert_close(batch[1:], explainer(x[1:]), rtol=1e-4, atol=1e-5 * float(batch.abs().amax()))
