"""The naive reference through sliding windows: ``T(x')`` of perturbed images, each through
MONAI's full ``sliding_window_inference``, the target's region fixed from the clean image — what a
window-aware metric (re-running only the windows a perturbation touches) must equal.

Example (in a test)::

    forward = naive_target(unet3d, ArgmaxRegion(1), x, roi_size=(16, 16, 16))
    values = forward(torch.cat([x, x * 0.5]))  # T of each row, shape (2,)
"""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference


def naive_target(net, target, x, roi_size=(16, 16, 16), overlap=0.5, mode="gaussian", sw_batch_size=4):
    """A forward function: ``T`` of each row of a batch of perturbed copies of ``x`` (row ``r`` a
    copy of image ``r % B``), each through the full sliding-window inference, ``target``'s weights
    fixed from ``x``'s prediction."""

    def infer(batch):
        with torch.no_grad():
            return sliding_window_inference(batch, roi_size, sw_batch_size, net, overlap=overlap, mode=mode)

    weights = target.weights(infer(x))

    def forward(batch):
        repeat = batch.shape[0] // x.shape[0]
        return (infer(batch) * weights.repeat(repeat, *[1] * (weights.ndim - 1))).flatten(1).sum(1)

    return forward
