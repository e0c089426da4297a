"""esegeta_monai: exact, window-aware interpretability for MONAI models.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import ArgmaxRegion, Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    >>> explainer = Explainer(net, "saliency", ArgmaxRegion(1), roi_size=(16, 16, 16))
    >>> explainer(torch.rand(1, 1, 24, 24, 24)).shape
    torch.Size([1, 1, 24, 24, 24])
"""

__version__ = "0.3.0"

from esegeta_monai.core.targets import ArgmaxRegion, ClassScore, MaskRegion, OtsuRegion, VoxelScore, parse_targets  # noqa: E402
from esegeta_monai.errors import EsegetaError  # noqa: E402
from esegeta_monai.explainer import Explainer, predict  # noqa: E402

__all__ = ["Explainer", "predict", "ArgmaxRegion", "ClassScore", "MaskRegion", "OtsuRegion", "VoxelScore", "parse_targets",
           "EsegetaError", "__version__"]
