"""CAMs equal monai.visualize / Captum on whole images, and run through sliding windows."""

import pytest
import torch
from captum.attr import GuidedGradCam
from monai.visualize import GradCAM, GradCAMpp

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore

IDENTITY = lambda maps: maps  # noqa: E731  (MONAI's post-processing turned off: raw maps)


@pytest.fixture
def classifier3d():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3),
    ).eval()


def test_gradcam_equals_monai_on_a_3d_segmentation_network(unet3d, volume):
    layer = "model.1.submodule.0"
    ours = Explainer(unet3d, "gradcam", ClassScore(1), layer=layer)(volume)
    reference = GradCAM(unet3d, target_layers=layer, postprocessing=IDENTITY)(volume, class_idx=1)
    assert ours.shape == (2, 1, *volume.shape[2:])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_gradcam_pp_equals_monai_after_normalisation_on_a_3d_classifier(classifier3d):
    torch.manual_seed(1)
    x = torch.rand(1, 1, 12, 12, 12)
    ours = Explainer(classifier3d, "gradcam_pp", ClassScore(2), layer="2")(x)
    reference = GradCAMpp(classifier3d, target_layers="2", postprocessing=IDENTITY)(x, class_idx=2)
    torch.testing.assert_close(ours / ours.max(), reference / reference.max(), rtol=1e-4, atol=1e-6)


def test_guided_gradcam_equals_captum_with_bilinear_upsampling(classifier2d):
    torch.manual_seed(2)
    x = torch.rand(2, 1, 16, 16)
    ours = Explainer(classifier2d, "guided_gradcam", ClassScore(0), layer="3")(x)
    reference = GuidedGradCam(classifier2d, classifier2d[3]).attribute(x.clone(), target=0, interpolate_mode="bilinear")
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_gradcam_through_windows_is_blended_and_whole_window_equals_whole_image(unet3d, volume):
    windows = dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=3)
    blended = Explainer(unet3d, "gradcam", ArgmaxRegion(1), layer="model.1.submodule.0", normalize=True, **windows)(volume)
    assert blended.shape == (2, 1, *volume.shape[2:]) and torch.isfinite(blended).all()
    assert float(blended.min()) == 0.0 and abs(float(blended.amax((1, 2, 3, 4)).min()) - 1.0) < 1e-6
    whole = Explainer(unet3d, "gradcam", ArgmaxRegion(1), layer="model.1.submodule.0")(volume)
    covering = Explainer(unet3d, "gradcam", ArgmaxRegion(1), layer="model.1.submodule.0", roi_size=volume.shape[2:])(volume)
    torch.testing.assert_close(whole, covering)


def test_unknown_or_missing_layer_is_a_clear_error(unet3d, volume):
    with pytest.raises(MethodError, match=r"close matches:.*model\.1\.submodule\.0"):
        Explainer(unet3d, "gradcam", ArgmaxRegion(1), layer="model.1.submodule.O")(volume)
    with pytest.raises(MethodError, match="needs layer="):
        Explainer(unet3d, "gradcam", ArgmaxRegion(1))(volume)
