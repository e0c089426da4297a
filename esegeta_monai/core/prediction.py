"""The no-grad sliding-window prediction, as MONAI computes it.

Example:
    >>> import torch
    >>> from esegeta_monai.core.prediction import predict
    >>> predict(torch.nn.Conv3d(1, 2, 1), torch.rand(1, 1, 8, 8, 8), roi_size=(4, 4, 4)).shape
    torch.Size([1, 2, 8, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from esegeta_monai.core.window_pass import amp_dtype, first_output
from esegeta_monai.core.windows import plan_windows

__all__ = ["predict"]


def predict(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    amp: bool = False,
) -> torch.Tensor:
    """No-grad prediction with MONAI's ``sliding_window_inference`` (or one whole-image
    forward when the window covers the input), in float32, autocast when ``amp``.
    """
    x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs

    def predictor(window):
        with torch.autocast(window.device.type, dtype=amp_dtype(window.device), enabled=amp):
            return first_output(network(window)).float()

    with torch.no_grad():
        plan = plan_windows(x.shape[2:], roi_size, overlap, mode, sigma_scale, padding_mode, cval, device=x.device)
        if plan.single and not any(plan.pad):
            return predictor(x)
        return sliding_window_inference(
            x, plan.importance.shape[2:], sw_batch_size, predictor, overlap=overlap, mode=mode,
            sigma_scale=sigma_scale, padding_mode=padding_mode, cval=cval,
        )

