"""Random Logit (Sixt et al. 2020): how alike the map of the target and the map of a random other
class are. A map that explains *the class* changes with it; one that shows only the image (an edge
detector, a modified-backprop rule that ignores the class) stays the same.

For one image ``x`` with target class ``c``:

    random_logit = sim(Φ_c(x), Φ_c'(x)),   c' drawn uniformly from the contrast classes C'

with ``sim`` one of :func:`~esegeta_monai.evaluation.similarity.similarities` (default SSIM of the
absolute maps, each scaled to [0, 1]; ``spearman_abs`` the rank correlation of the absolute maps).
Lower is better. The contrast is the same kind of target on another class: ``class:c`` → ``class:c'``
(any other output ``c' ≠ c``); for a segmentation target (``argmax:c``, ``otsu:c``) ``c'`` is drawn
only among the classes whose region on this image — from the trained model's prediction — is
non-empty ("another class's region as the contrast"); a ``mask:`` or ``voxel:`` target keeps its
region and takes class ``c'``'s score there. Where no class qualifies the value is undefined.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    >>> net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 3))
    >>> result = random_logit(Explainer(net, "saliency", "class:0"), torch.rand(1, 1, 8, 8), seed=0)
    >>> result["target_class"], result["candidates"], result["contrast_class"] in (1, 2), 0 < result["random_logit"] < 1
    (0, [1, 2], True, True)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from esegeta_monai.errors import ConfigError, MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.similarity import similarities

__all__ = ["random_logit", "contrast_classes", "SIMILARITIES"]

#: the similarity scores a random-logit value can be (the first is the default)
SIMILARITIES = ("ssim", "spearman_abs", "spearman", "topk_overlap")


def _on_class(target, class_index: int):
    """The same target (kind, mask, box, voxel) on another class."""
    other = copy.copy(target)
    other.class_index, other.given_name = int(class_index), None
    return other


def contrast_classes(target, prediction: torch.Tensor) -> list[int]:
    """The classes ``c' ≠ c`` of ``prediction`` (``(1, K)`` or ``(1, K, *spatial)``) whose target of
    the same kind has a non-empty region on the image (every other class for a ``(1, K)`` output).

    Example:
        >>> import torch
        >>> from esegeta_monai.core.targets import ArgmaxRegion
        >>> y = torch.tensor([[[[3.0, 0.0]], [[0.0, 3.0]], [[-1.0, -1.0]]]])  # class 2 wins nowhere
        >>> contrast_classes(ArgmaxRegion(1), y)
        [0]
    """
    others = [c for c in range(prediction.shape[1]) if c != target.class_index]
    if prediction.ndim == 2:
        return others
    return [c for c in others if bool((_on_class(target, c).channel_weights(prediction) != 0).any())]


def random_logit(explainer, inputs: torch.Tensor, attribution: torch.Tensor | None = None, similarity: str = "ssim",
                 seed: int = 0) -> dict:
    """Random Logit of ``explainer``'s map on one image (``inputs`` of batch 1; ``attribution`` the
    map of its target, explained here when None): the ``similarity`` of the target's map and the
    map of a contrast class ``c'`` drawn by ``numpy.random.default_rng(seed)`` among
    :func:`contrast_classes`.

    Returns ``random_logit`` (None where no class qualifies, with ``undefined`` saying why),
    ``similarity``, every score of :func:`~esegeta_monai.evaluation.similarity.similarities`
    (``scores``), ``target_class``, ``contrast_class``, ``candidates``, ``seed``, the contrast
    map (``contrast_map``) and the size of both regions (``region_voxels``, ``contrast_region_voxels``;
    None for a classifier) — a small contrast region gives a sparse map, dissimilar for that reason
    alone. Cost: 1 prediction and 1 explanation (2 without ``attribution``)."""
    if inputs.shape[0] != 1:
        raise MethodError("random logit is computed one image at a time (batch 1); loop over the images")
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity={similarity!r}: choose from {', '.join(SIMILARITIES)}")
    target = explainer.target
    prediction = explainer.predict(inputs)  # the number of classes and their regions, from the trained model
    candidates = contrast_classes(target, prediction)
    result = {"random_logit": None, "similarity": similarity, "scores": None, "target_class": target.class_index,
              "contrast_class": None, "candidates": candidates, "seed": int(seed), "contrast_map": None}
    if not candidates:
        kind = "region on this image" if prediction.ndim > 2 and target.needs_prediction else "output"
        result["undefined"] = (f"no class other than {target.class_index} has a {kind} (the network has "
                               f"{prediction.shape[1]} output channel(s)): there is no contrast class")
        return result
    contrast = int(np.random.default_rng(seed).choice(candidates))
    if attribution is None:
        attribution = explainer(inputs, prediction=prediction)
    other = copy.copy(explainer)  # the same network, method and windows, explaining class c'
    other.target = _on_class(target, contrast)
    contrast_map = other(inputs, prediction=prediction)
    scores = similarities(attribution, contrast_map)
    result.update(random_logit=scores[similarity], scores=scores, contrast_class=contrast, contrast_map=contrast_map,
                  region_voxels=_voxels(target, prediction), contrast_region_voxels=_voxels(other.target, prediction))
    return result


def _voxels(target, prediction: torch.Tensor) -> int | None:
    """The size of ``target``'s region on the image (None for a classifier's output)."""
    return None if prediction.ndim == 2 else int((target.channel_weights(prediction) != 0).sum())


def _random_logit_metric(case, options: dict):
    result = random_logit(case.explainer, case.inputs, case.attribution, options["similarity"], seed=case.seed)
    extra = {key: result[key] for key in ("similarity", "target_class", "contrast_class", "candidates", "seed")}
    if result["random_logit"] is None:
        return MetricResult(None, extra, status="undefined", error=result["undefined"])
    extra.update(region_voxels=result["region_voxels"], contrast_region_voxels=result["contrast_region_voxels"])
    extra.update({name: value for name, value in result["scores"].items() if name != options["similarity"]})
    return MetricResult(result["random_logit"], extra)


register(Metric(
    "random_logit", "randomisation", "lower",
    "1 explanation (of the contrast class) + 1 prediction",
    "Sixt et al. 2020, When Explanations Lie; quantus.RandomLogit", _random_logit_metric, {"similarity": "ssim"},
    quantus="Same definition (the map of a uniformly drawn other class against the target's; equal given the same class "
            "and similarity). Quantus's SSIM is of the flattened maps (1D windows, signed, normalised by max), its draw "
            "np.random.seed(seed); ours is SSIM on the image grid (2D/3D) of the absolute maps scaled to [0, 1], the draw "
            "from default_rng(seed), and for a segmentation target only classes with a region on the image are drawn.",
    summary='how alike the maps of the target class and of another class are',
))
