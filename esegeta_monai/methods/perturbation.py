"""Perturbation methods through Captum, window-aware: occlusion, feature ablation, feature
permutation and Shapley value sampling.

Captum perturbs the whole image and calls a forward function on batches of perturbed copies;
ours is a :class:`~esegeta_monai.core.windowed_target.WindowedTarget`, which re-runs only the windows
whose input a perturbation touches and reuses the clean terms of all others — the target's
change is exact (the prediction's mask held fixed from the clean image, as for the gradient
methods). ``perturbations_per_eval`` perturbed copies are evaluated per call, their changed
windows in batches of ``sw_batch_size`` (one window covering the image: all the copies of a call
in one forward): memory stays bounded by ``perturbations_per_eval`` images and one window batch.

Features (ablation, permutation, Shapley sampling, and the surrogate methods): ``features``
``"slic"`` (scikit-image SLIC supervoxels of each image: ``n_segments``, ``compactness``),
``"grid"`` (blocks of ``block`` voxels), a label tensor broadcastable to the input, or (with
``esegeta explain``) a label file such as an organ segmentation, resampled onto the network's
grid; a feature spans all channels.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    >>> Explainer(net, "feature_ablation", "argmax:1", features="grid", block=(4, 4))(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

import torch
from captum.attr import FeatureAblation, FeaturePermutation, Occlusion, ShapleyValueSampling

from esegeta_monai.errors import MethodError
from esegeta_monai.methods.base import SEED, Method, Param, non_negative_number, positive_int
from esegeta_monai.methods.registry import register
from esegeta_monai.core.windowed_target import WindowedTarget
from esegeta_monai.core.features import grid_features, supervoxels

__all__ = ["PerturbationMethod", "FeatureMethod", "feature_mask", "FEATURE_PARAMS"]


def _ints(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(positive_int(v) for v in value)


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


PER_EVAL = Param(4, positive_int, "perturbed copies evaluated per call (memory: that many images)", "a positive int")
FILL = Param(0.0, _number_or_none, "value a removed feature takes (None: the image's mean)", "a number or None")
FEATURE_PARAMS = {
    "features": Param("slic", lambda v: isinstance(v, str) or torch.is_tensor(v), "slic, grid, a label file or a label tensor",
                      "'slic', 'grid', a label file (esegeta explain) or a label tensor broadcastable to the input"),
    "n_segments": Param(100, positive_int, "SLIC: about how many supervoxels", "a positive int"),
    "compactness": Param(0.1, non_negative_number, "SLIC: compactness (higher: more regular)", "a number ≥ 0"),
    "block": Param(None, lambda v: v is None or _ints(v), "grid: block size per spatial axis (default: an eighth of each axis)",
                   "None or a list of positive ints"),
}


def feature_mask(inputs: torch.Tensor, options) -> torch.Tensor:
    """The feature labels ``(B or 1, 1, *spatial)`` asked for by ``options`` (see the module)."""
    spec = options["features"]
    if torch.is_tensor(spec):
        mask = spec.to(inputs.device).long()
        while mask.ndim < inputs.ndim:
            mask = mask[None]
        try:
            torch.broadcast_shapes(mask.shape, inputs.shape)
        except RuntimeError:
            raise MethodError(f"features of shape {tuple(spec.shape)} do not broadcast to the input {tuple(inputs.shape)}") from None
        return mask
    if isinstance(spec, str) and spec not in ("slic", "grid"):
        raise MethodError(f"features={spec!r}: a label file needs the image's geometry; `esegeta explain` resamples it onto the "
                          "network's grid, in Python load it with esegeta_monai.monai.io.masks.load_labels_like(path, image)")
    if spec == "grid":
        block = options["block"] or [max(1, s // 8) for s in inputs.shape[2:]]
        return grid_features(inputs.shape[2:], block).to(inputs.device)
    return supervoxels(inputs, options["n_segments"], options["compactness"])


def fill_value(inputs: torch.Tensor, value):
    if value is not None:
        return float(value)
    return inputs.mean(dim=tuple(range(1, inputs.ndim)), keepdim=True)


class PerturbationMethod(Method):
    """A Captum perturbation class driven by a :class:`WindowedTarget` forward function."""

    family = "perturbation"
    captum_class: type = FeatureAblation

    def run(self, window_pass, inputs, options):
        target = WindowedTarget(window_pass, inputs)
        with torch.no_grad():
            attribution = self.attribute(self.captum_class(target), inputs, options)
        window_pass.windows_run += target.forwards
        self.last_forwards = target.forwards
        return attribution.float()

    def attribute(self, captum, inputs, options):  # pragma: no cover - interface
        raise NotImplementedError


@register
class OcclusionMethod(PerturbationMethod):
    name = "occlusion"
    summary = "occlusion: the target's drop when a patch slides over the image (window-aware, exact)"
    captum_class = Occlusion
    params = {
        "sliding_window_shapes": Param(None, lambda v: v is None or _ints(v), "patch size per spatial axis (default: an eighth of each axis)",
                                       "None or a list of positive ints"),
        "strides": Param(None, lambda v: v is None or _ints(v), "patch step per spatial axis (default: the patch size)",
                         "None or a list of positive ints"),
        "fill": FILL,
        "perturbations_per_eval": PER_EVAL,
    }

    def attribute(self, captum, inputs, options):
        spatial = inputs.shape[2:]
        patch = tuple(options["sliding_window_shapes"] or [max(1, s // 8) for s in spatial])
        strides = tuple(options["strides"] or patch)
        if len(patch) != len(spatial) or len(strides) != len(spatial):
            raise MethodError(f"occlusion: sliding_window_shapes {patch} and strides {strides} need one value per spatial axis {tuple(spatial)}")
        channels = inputs.shape[1]  # Captum's shapes include the channel axis: a patch spans all channels
        return captum.attribute(inputs, sliding_window_shapes=(channels, *patch), strides=(channels, *strides),
                                baselines=fill_value(inputs, options["fill"]), perturbations_per_eval=options["perturbations_per_eval"])


class FeatureMethod(PerturbationMethod):
    """Perturbation methods over features (supervoxels, blocks or given labels)."""

    params = {**FEATURE_PARAMS, "fill": FILL, "perturbations_per_eval": PER_EVAL}

    def attribute(self, captum, inputs, options):
        return captum.attribute(inputs, feature_mask=feature_mask(inputs, options), **self.call_options(inputs, options))

    def call_options(self, inputs, options) -> dict:
        return {"baselines": fill_value(inputs, options["fill"]), "perturbations_per_eval": options["perturbations_per_eval"]}


@register
class FeatureAblationMethod(FeatureMethod):
    name = "feature_ablation"
    summary = "feature ablation: the target's drop when each supervoxel/block/label is set to fill (window-aware, exact)"
    captum_class = FeatureAblation


@register
class ShapleyValueSamplingMethod(FeatureMethod):
    name = "shapley_value_sampling"
    summary = "Shapley values of the features by sampling feature orders (seeded; window-aware)"
    captum_class = ShapleyValueSampling
    params = {**FeatureMethod.params, "n_samples": Param(25, positive_int, "feature orders sampled", "a positive int"),
              "seed": SEED}

    def call_options(self, inputs, options):
        torch.manual_seed(options["seed"])  # Captum draws its feature orders with torch.randperm
        return {**super().call_options(inputs, options), "n_samples": options["n_samples"]}


@register
class FeaturePermutationMethod(FeatureMethod):
    name = "feature_permutation"
    summary = "feature permutation: the target's change when a feature's values are shuffled across the batch (needs batch > 1)"
    captum_class = FeaturePermutation
    batch_dependent = True
    params = {**FEATURE_PARAMS, "perturbations_per_eval": PER_EVAL,
              "seed": SEED}

    def attribute(self, captum, inputs, options):
        if inputs.shape[0] < 2:
            raise MethodError("feature_permutation shuffles features across the images of a batch: give a batch of 2 or more")
        mask = feature_mask(inputs[:1], options)  # one mask for the batch: features must be shared to be permuted
        torch.manual_seed(options["seed"])
        return captum.attribute(inputs, feature_mask=mask, perturbations_per_eval=options["perturbations_per_eval"])

