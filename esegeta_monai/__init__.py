"""esegeta_monai: exact, window-aware interpretability for MONAI models.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai import Explainer
    >>> from esegeta_monai.targets import ArgmaxRegion
    >>> net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    >>> explainer = Explainer(net, "saliency", ArgmaxRegion(1), roi_size=(16, 16, 16))
    >>> explainer(torch.rand(1, 1, 24, 24, 24)).shape
    torch.Size([1, 1, 24, 24, 24])
"""

from esegeta_monai.engine import Explainer
from esegeta_monai.errors import EsegetaError

__all__ = ["Explainer", "EsegetaError", "__version__"]
__version__ = "0.1.0"
