"""Model-parameter randomisation (Adebayo et al. 2018): cascading from the output towards the
input, and one layer at a time (independent).

:func:`cascading_randomisation` deep-copies the network (the original is never modified),
re-initialises its parameterised layers one step at a time in reverse forward order —
``reset_parameters()`` under ``torch.manual_seed(seed + step)``, so the run is deterministic —
re-runs an explanation after each step and scores its similarity to the original map
(:func:`~esegeta_monai.evaluation.similarity.similarities`). A sound method's similarity drops
as layers are randomised; one that ignores the weights (an edge detector) stays near 1.

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

import torch

from esegeta_monai.core.window_pass import first_output
from esegeta_monai.evaluation.similarity import similarities

__all__ = ["parameterised_layers", "cascading_randomisation"]


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
        One dict per step — ``step``, ``layer`` (``original`` first), ``map`` (a CPU tensor) and
        the similarity scores to the original map.
    """
    original = explain(network).detach().cpu()
    steps = [{"step": 0, "layer": "original", "map": original, **similarities(original, original, fraction)}]
    layers = list(reversed(parameterised_layers(network, example)))
    model = copy.deepcopy(network)
    for index, name in enumerate(layers, start=1):
        if independent:
            model = copy.deepcopy(network)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            dict(model.named_modules())[name].reset_parameters()
        current = explain(model).detach().cpu()
        steps.append({"step": index, "layer": name, "map": current, **similarities(original, current, fraction)})
    return steps
