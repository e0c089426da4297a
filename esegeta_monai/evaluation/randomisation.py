"""Model-parameter randomisation (Adebayo et al. 2018): cascading from the output towards the
input, and one layer at a time (independent).

:func:`cascading_randomisation` deep-copies the network (the original is never modified),
re-initialises its parameterised layers one step at a time in reverse forward order —
``reset_parameters()`` under ``torch.manual_seed(seed + step)``, so the run is deterministic —
re-runs an explanation after each step and scores its similarity to the original map
(:func:`~esegeta_monai.evaluation.similarity.similarities`), image by image: each step holds the
scores per image (``per_image``) and their mean over the images (the image's own score for a
batch of one) — never one correlation pooled over a batch. A sound method's similarity drops
as layers are randomised; one that ignores the weights (an edge detector) stays near 1.

:func:`explainer_randomisation` runs it for an :class:`~esegeta_monai.explainer.Explainer` and
says what is explained at each step. A target that reads the prediction (``argmax:``, ``otsu:``)
has a region, and ``target_region`` chooses where it comes from:

- ``"fixed"`` (default): the trained model's prediction, held for every randomised model — the
  same function of the output is explained at every step, as Adebayo et al. compare the same
  class; the score is still the randomised model's output in that region;
- ``"recomputed"``: each randomised model's own prediction. The region then changes with the
  weights (on the vessel demo, ``argmax:1`` grows from 1.2 % to 56 % of the voxels after the
  first layer), and that change, not the weights' influence on the map, drives the similarity
  down: saliency's rank correlation falls to ~0.1 there, while with the region fixed
  |saliency| and |guided backprop| keep 0.85–0.91 with every layer re-initialised.

A high fixed-region correlation means the map depends only weakly on the upper layers'
weights — Adebayo et al.'s finding for saliency-like maps of ReLU networks, whose structure
comes largely from the input and the lower layers (guided backprop: almost only from them) —
not that the randomisation test is passed. Each step records the region's size
(``region_voxels``, per image) and its Dice overlap with the trained model's region
(``region_dice``), so a reader sees how much of a drop the region explains.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> x = torch.rand(1, 1, 12, 12)
    >>> steps = cascading_randomisation(net, lambda model: Explainer(model, "saliency", "class:1")(x), x)
    >>> [step["layer"] for step in steps]
    ['original', '2', '0']
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from esegeta_monai.core.window_pass import first_output
from esegeta_monai.errors import ConfigError, EmptyTargetError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.similarity import similarities

if TYPE_CHECKING:  # pragma: no cover
    from esegeta_monai.explainer import Explainer

__all__ = ["parameterised_layers", "cascading_randomisation", "explainer_randomisation", "TARGET_REGIONS"]

#: where the target's region comes from in a randomisation run (the first is the default)
TARGET_REGIONS = ("fixed", "recomputed")


def parameterised_layers(network: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules with their own parameters and a ``reset_parameters``, in the order a
    forward of ``example`` runs them (module order where a module is not called)."""
    candidates = {name: m for name, m in network.named_modules()
                  if name and hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: order.append(name) if name not in order else None)
               for name, m in candidates.items()]
    try:
        with torch.no_grad():
            was_training = network.training
            network.eval()
            first_output(network(example))
            network.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return order + [name for name in candidates if name not in order]


def cascading_randomisation(
    network: torch.nn.Module,
    explain: Callable[[torch.nn.Module], torch.Tensor],
    example: torch.Tensor,
    seed: int = 0,
    independent: bool = False,
    fraction: float = 0.05,
) -> list[dict]:
    """Re-initialise the layers from the output towards the input and score each step's map.

    Args:
        network: the trained network (left untouched).
        explain: ``model → map``, e.g. ``lambda m: Explainer(m, "saliency", "argmax:1", **windows)(x)``.
        example: an input the network takes as it is (e.g. one window of zeros), to find the
            layers' forward order.
        seed: step ``i`` re-initialises under ``torch.manual_seed(seed + i)``.
        independent: randomise only the step's layer (on a fresh copy) instead of cascading.
        fraction: the top-k share of :func:`~esegeta_monai.evaluation.similarity.topk_overlap`.

    Returns:
        One dict per step — ``step``, ``layer`` (``original`` first), ``map`` (a CPU tensor), the
        similarity scores to the original map per image (``per_image``: score → one value per
        image) and each score's mean over the images.
    """
    original = explain(network).detach().cpu()
    steps = [{"step": 0, "layer": "original", "map": original, **_scores(original, original, fraction)}]
    layers = list(reversed(parameterised_layers(network, example)))
    model = copy.deepcopy(network)
    for index, name in enumerate(layers, start=1):
        if independent:
            model = copy.deepcopy(network)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            dict(model.named_modules())[name].reset_parameters()
        current = explain(model).detach().cpu()
        steps.append({"step": index, "layer": name, "map": current, **_scores(original, current, fraction)})
    return steps


def _scores(original: torch.Tensor, current: torch.Tensor, fraction: float) -> dict:
    """The similarity scores of each image (``per_image``) and their means (NaN if one is)."""
    per_image = similarities(original, current, fraction, batch=True)
    return {**{name: float(np.mean(values)) for name, values in per_image.items()}, "per_image": per_image}


def explainer_randomisation(
    explainer: Explainer,
    inputs: torch.Tensor,
    target_region: str = "fixed",
    seed: int = 0,
    independent: bool = False,
    fraction: float = 0.05,
) -> list[dict]:
    """:func:`cascading_randomisation` of ``explainer`` (its network, method, target and windows)
    on ``inputs``, with the target's region ``"fixed"`` from the trained model's prediction or
    ``"recomputed"`` from each randomised model's (see the module's docstring).

    Each step also holds ``target_region``, ``region_voxels`` (the region's size per image) and
    ``region_dice`` (its Dice overlap with the trained model's region per image; 1.0 when fixed);
    both None for a target without a region (``class:``; then the two variants are the same).
    Where a recomputed region is empty (the randomised model predicts no voxel of the class) the
    step's map is all zeros and its rank correlations are not a number.

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        >>> steps = explainer_randomisation(Explainer(net, "saliency", "argmax:1"), torch.rand(1, 1, 12, 12))
        >>> [(s["layer"], s["target_region"], s["region_dice"]) for s in steps]
        [('original', 'fixed', [1.0]), ('2', 'fixed', [1.0]), ('0', 'fixed', [1.0])]
    """
    if target_region not in TARGET_REGIONS:
        raise ConfigError(f"target_region must be one of {', '.join(TARGET_REGIONS)}, got {target_region!r}")
    target = explainer.target
    has_region = target.needs_prediction
    if has_region and explainer.local:
        raise ConfigError("randomisation with a prediction-based target needs the global target (local=False): "
                          "in local mode each window takes its region from its own output")
    trained = explainer.predict(inputs) if has_region else None
    trained_region = _region(target, trained) if has_region else None
    regions: list[dict] = []

    def explain(model: torch.nn.Module) -> torch.Tensor:
        current = copy.copy(explainer)  # the same method, target and windows on another network
        current.network, current._output_shapes = model, {}
        prediction = trained if target_region == "fixed" or model is explainer.network else None
        if has_region and prediction is None:
            prediction = current.predict(inputs)
        region = _region(target, prediction) if has_region else None
        regions.append({"region_voxels": None if region is None else region.flatten(1).sum(1).tolist(),
                        "region_dice": None if region is None else _dice(region, trained_region)})
        try:
            return current(inputs, prediction=prediction)
        except EmptyTargetError:  # a randomised model predicts no voxel of the class: nothing is explained
            if model is explainer.network:
                raise
            return torch.zeros_like(inputs, dtype=torch.float32)

    steps = cascading_randomisation(explainer.network, explain, _example(explainer, inputs), seed, independent, fraction)
    for step, region in zip(steps, regions):
        step.update(target_region=target_region, **region)
    return steps


def _region(target, prediction: torch.Tensor) -> torch.Tensor:
    """The target's region (voxels with a non-zero weight) of ``prediction``, ``(B, *spatial)`` bool."""
    return target.channel_weights(prediction)[:, 0] != 0


def _dice(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    total = a.sum(1) + b.sum(1)
    return [1.0 if t == 0 else float(v) for v, t in zip((2 * (a * b).sum(1) / total.clamp_min(1)).tolist(), total.tolist())]


def _example(explainer: Explainer, inputs: torch.Tensor) -> torch.Tensor:
    """One window of zeros (the whole first image without windows): what the network takes as it is."""
    roi = explainer.roi_size
    if roi is None:
        return torch.zeros_like(inputs[:1])
    roi = [int(roi)] * (inputs.ndim - 2) if isinstance(roi, int) else [int(r) if r and r > 0 else s for r, s in zip(roi, inputs.shape[2:])]
    return torch.zeros((1, inputs.shape[1], *roi), dtype=inputs.dtype, device=inputs.device)


def _central_slice(volume: torch.Tensor) -> list:
    """The absolute map's central slice (channels summed), for the randomisation figure."""
    array = np.abs(np.squeeze(volume.detach().cpu().float().numpy()))
    while array.ndim > 3:  # channels (and batch) summed
        array = array.sum(0)
    if array.ndim == 3:
        array = array[:, :, array.shape[2] // 2]
    return array.tolist()


def _randomisation_metric(case, options: dict):
    steps = explainer_randomisation(case.explainer, case.inputs, options["target_region"], seed=case.seed)
    scores = [{k: v for k, v in s.items() if k != "map"} for s in steps]
    extra = {"seed": case.seed, "layers": len(scores) - 1, "target_region": options["target_region"]}
    if scores[-1]["region_dice"] is not None:  # how far the region moved by the last step (1.0 when fixed)
        extra["region_dice"] = scores[-1]["region_dice"][0]
    return MetricResult(scores[-1]["spearman_abs"], extra, {"steps": scores, "slices": [_central_slice(s["map"]) for s in steps]})


register(Metric(
    "randomisation", "randomisation", "lower",
    "L + 1 explanations, L the parameterised layers (+ 1 prediction for a region target; + L more with target_region recomputed)",
    "Adebayo et al. 2018, Sanity Checks for Saliency Maps; quantus.MPRT", _randomisation_metric, {"target_region": "fixed"},
    quantus="Spearman of |maps| after cascading randomisation from the output down; each layer re-initialised by its "
            "reset_parameters() under seed + step. Quantus's MPRT draws each layer with seed + 1 and walks layers in "
            "registration order (top-down by default).",
    summary="how much the map changes when the network's weights are randomised, layer after layer (slow)",
))
