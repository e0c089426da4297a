"""Score-CAM (Wang et al., CVPR-W 2020), N-dimensional and window-aware.

Each channel ``A_k`` of a named ``layer``'s activation, upsampled to the input (bilinear /
trilinear) and min–max normalised to [0, 1] per image, is a mask ``H_k``; its score is the
target of the masked image, ``s_k = T(x ⊙ H_k)``. The channel weights are, as in the paper,
the softmax of the scores over the channels (``weighting="softmax"``; the score of the
baseline ``T(0)`` cancels in it), or the raw increase ``s_k − T(0)`` (``"increase"``: useful
for segmentation targets summed over many voxels, whose softmax is nearly one-hot). The map
is ``ReLU(Σ_k w_k A_k)`` with the upsampled activations, as in the paper; one channel.

Through sliding windows the activation map of the whole image is the windows' upsampled
activations blended with the prediction's importance map (as the CAMs are; exact with one
window covering the image) — so the masks cover the image without window seams. The scores
are exact: ``T`` of each masked image comes from a
:class:`~esegeta_monai.core.windowed_target.WindowedTarget` (``perturbations_per_eval`` channels per
call), equal to a full sliding-window inference with the prediction's mask held fixed from
the clean image. Windows that do not reach the target are skipped, so the activation map is
zero where only such windows cover the image (a region whose input does not change ``T``).

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> Explainer(net, "score_cam", "class:1", layer="1")(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import Method, Param, one_of
from esegeta_monai.methods.cam import LAYER, NeedsLayer, find_layer, upsample
from esegeta_monai.methods.perturbation import PER_EVAL
from esegeta_monai.methods.registry import register
from esegeta_monai.methods.rise import masked
from esegeta_monai.core.windowed_target import WindowedTarget

__all__ = ["ScoreCamMethod", "layer_activation", "channel_masks"]


def layer_activation(module, layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s output during the forward ``module(x, weight)`` (no gradient; the module's
    autocast setting), in float32."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, (tuple, list)) else out))
    try:
        with torch.no_grad():
            module(x, weight)
    finally:
        handle.remove()
    if not captured:
        raise MethodError("the chosen layer was not used by the network's forward; pick another layer")
    activation = captured[-1]
    if activation.ndim != x.ndim:
        raise MethodError(f"the layer's output has shape {tuple(activation.shape)}: Score-CAM needs a spatial layer (B, C, *spatial)")
    return activation.float()


def channel_masks(activations: torch.Tensor) -> torch.Tensor:
    """Each channel of each image min–max normalised to [0, 1] (a constant channel: zeros).

    Example:
        >>> import torch
        >>> channel_masks(torch.tensor([[[[1., 3.]], [[2., 2.]]]])).tolist()
        [[[[0.0, 1.0]], [[0.0, 0.0]]]]
    """
    flat = activations.flatten(2)
    low, high = flat.amin(2), flat.amax(2)
    shape = (*activations.shape[:2], *[1] * (activations.ndim - 2))
    span = (high - low).view(shape)
    return torch.where(span > 0, (activations - low.view(shape)) / span.clamp_min(1e-12), torch.zeros_like(activations))


@register
class ScoreCamMethod(NeedsLayer, Method):
    name = "score_cam"
    family = "cam"
    library = "esegeta"
    summary = "Score-CAM: layer channels weighted by the target of the image masked by each (window-aware scores)"
    params = {"layer": LAYER, "weighting": Param("softmax", one_of("softmax", "increase"),
                                                   "channel weights: softmax of the scores (paper) or T(x ⊙ H_k) − T(0)"),
              "perturbations_per_eval": PER_EVAL}

    def run(self, window_pass, inputs, options):
        activations = self.activation_map(window_pass, inputs, find_layer(window_pass.module.network, options["layer"]))
        target = WindowedTarget(window_pass, inputs)
        scores = self.scores(target, inputs, channel_masks(activations), options["perturbations_per_eval"])
        if options["weighting"] == "softmax":
            weights = scores.softmax(1)
        else:
            weights = scores - self.scores(target, inputs, torch.zeros_like(activations[:, :1]), 1)
        window_pass.windows_run += target.forwards
        self.last_forwards = target.forwards
        shape = (*weights.shape, *[1] * (inputs.ndim - 2))
        return F.relu((weights.view(shape).float() * activations).sum(1, keepdim=True))

    @staticmethod
    def activation_map(window_pass, inputs, layer) -> torch.Tensor:
        """The layer's activation on the input grid, ``(B, K, *spatial)``: each window's
        upsampled, blended with the importance map."""
        def window_fn(module, x, weight, crops):
            return upsample(layer_activation(module, layer, x, weight), x.shape[2:])

        return window_pass.linear(inputs, window_fn, blend=True, input_grad=False)

    @staticmethod
    def scores(target, inputs, masks: torch.Tensor, per_eval: int) -> torch.Tensor:
        """``T(x ⊙ H_k)`` for each image and channel, ``(B, K)`` in float64, ``per_eval``
        channels per call."""
        batch, channels = masks.shape[:2]
        values = []
        with torch.no_grad():
            for start in range(0, channels, per_eval):
                chunk = masks[:, start : start + per_eval].transpose(0, 1)[:, :, None]  # (k, B, 1, *spatial)
                values.append(target(masked(inputs, chunk, 0.0)).view(-1, batch).double())
        return torch.cat(values).T
