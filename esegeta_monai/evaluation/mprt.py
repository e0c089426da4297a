"""Smooth MPRT and Efficient MPRT (Hedström et al. 2023, "Sanity Checks Revisited"): two repairs
of the model-parameter randomisation test (:mod:`~esegeta_monai.evaluation.randomisation`) that
reduce the noise of a single explanation.

- :func:`smooth_mprt` — the cascading randomisation test (output → input, layer ``i`` re-initialised
  under ``seed + i``) where every map, the trained model's and each randomised model's, is the mean
  of ``n_samples`` maps of noisy copies of the image (:class:`SmoothedExplainer`): ``n_samples − 1``
  with Gaussian noise of standard deviation ``noise_std · (max x − min x)``, the last without
  noise (so ``n_samples=1`` is the plain test). The value is the rank correlation of the absolute
  smoothed maps after the last layer (lower is better); the curve holds every layer's scores.
- :func:`efficient_mprt` — the rise of the map's complexity when every layer is randomised:
  ``(H(Φ_random) − H(Φ)) / H(Φ)`` with ``H`` the discrete entropy of the map's histogram
  (``n_bins`` equal bins over its range, natural log; :func:`discrete_entropy`). A map that
  depends on the weights turns noisy (higher entropy) on a random model: higher is better; a map
  that ignores the weights scores 0 (``entropy_ratio`` ``H(Φ_random) / H(Φ)`` = 1).

Both take the target's region from the trained model's prediction (``target_region="fixed"``)
or from each randomised model's own (``"recomputed"``), as the randomisation test does.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> explainer, x = Explainer(net, "saliency", "argmax:1"), torch.rand(1, 1, 12, 12)
    >>> result = smooth_mprt(explainer, x, n_samples=3)
    >>> [step["layer"] for step in result["steps"]], result["n_samples"]
    (['original', '2', '0'], 3)
    >>> result = efficient_mprt(explainer, x)
    >>> abs(result["efficient_mprt"] - (result["entropy_ratio"] - 1)) < 1e-12, result["n_bins"], result["layers"]
    (True, 100, 2)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from esegeta_monai.errors import ConfigError, EmptyTargetError, MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.randomisation import (
    TARGET_REGIONS, _central_slice, _dice, _example, _region, explainer_randomisation, parameterised_layers,
)
from esegeta_monai.explainer import Explainer
from esegeta_monai.methods.noise import iter_noise

__all__ = ["SmoothedExplainer", "smooth_mprt", "efficient_mprt", "randomised_copy", "discrete_entropy"]


class SmoothedExplainer(Explainer):
    """``explainer`` (its network, method, target and windows) whose map of one image is the mean
    of ``n_samples`` maps: of ``n_samples − 1`` noisy copies ``x + ε``, ``ε ~ N(0, (noise_std ·
    (max x − min x))²)``, and of ``x`` itself (Quantus's SmoothMPRT). The draws come from ``seed``
    (:func:`~esegeta_monai.methods.noise.iter_noise`) and are the same at every call: every model
    is explained on the same noisy images. ``per_eval`` copies are explained at once and summed
    into a running total (memory flat in ``n_samples``); a given ``prediction`` (the region's) is
    held for every copy."""

    def __init__(self, explainer: Explainer, n_samples: int = 10, noise_std: float = 0.1, seed: int = 0, per_eval: int = 1):
        if int(n_samples) < 1 or int(per_eval) < 1 or not noise_std >= 0:
            raise MethodError(f"n_samples={n_samples}, per_eval={per_eval}, noise_std={noise_std}: give n_samples ≥ 1, "
                              "per_eval ≥ 1 and noise_std ≥ 0")
        self.__dict__.update(explainer.__dict__)  # the same explainer, smoothed
        self.n_samples, self.noise_std, self.seed, self.per_eval = int(n_samples), float(noise_std), int(seed), int(per_eval)

    def __call__(self, inputs: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        if inputs.shape[0] != 1:
            raise MethodError("a smoothed map is computed one image at a time (batch 1)")
        x = inputs.detach().float()
        std = self.noise_std * float(x.max() - x.min())
        noises = iter_noise(x.shape, 1.0, self.n_samples - 1, self.seed, x.device)
        total = None
        for start in range(0, self.n_samples, self.per_eval):
            count = min(self.per_eval, self.n_samples - start)
            batch = torch.cat([x + next(noises) * std if i < self.n_samples - 1 else x for i in range(start, start + count)])
            held = None if prediction is None else prediction.expand(count, *prediction.shape[1:])
            part = super().__call__(batch, prediction=held).sum(0, keepdim=True)
            total = part if total is None else total + part
        return total / self.n_samples


def smooth_mprt(explainer: Explainer, inputs: torch.Tensor, n_samples: int = 10, noise_std: float = 0.1,
                target_region: str = "fixed", seed: int = 0, per_eval: int = 1) -> dict:
    """Smooth MPRT of ``explainer`` on one image: :func:`~esegeta_monai.evaluation.randomisation.explainer_randomisation`
    of its :class:`SmoothedExplainer`. Returns ``smooth_mprt`` (the ``spearman_abs`` of the last
    step: every layer randomised), the ``steps`` (each layer's maps and scores, ``original``
    first), ``layers``, ``n_samples``, ``noise_std``, ``seed`` and ``target_region``.
    Cost: ``(L + 1) · n_samples`` explanations, ``L`` the parameterised layers."""
    if inputs.shape[0] != 1:
        raise MethodError("smooth MPRT is computed one image at a time (batch 1); loop over the images")
    smoothed = SmoothedExplainer(explainer, n_samples, noise_std, seed, per_eval)
    steps = explainer_randomisation(smoothed, inputs, target_region, seed=seed)
    return {"smooth_mprt": steps[-1]["spearman_abs"], "steps": steps, "layers": len(steps) - 1, "n_samples": int(n_samples),
            "noise_std": float(noise_std), "seed": int(seed), "target_region": target_region}


def randomised_copy(network: torch.nn.Module, example: torch.Tensor, seed: int = 0) -> tuple[torch.nn.Module, list[str]]:
    """A copy of ``network`` with every parameterised layer re-initialised — the model of the last
    step of :func:`~esegeta_monai.evaluation.randomisation.cascading_randomisation` (layers from the
    output down, step ``i`` under ``torch.manual_seed(seed + i)``) — and the layers, in that order."""
    layers = list(reversed(parameterised_layers(network, example)))
    model = copy.deepcopy(network)
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        for index, name in enumerate(layers, start=1):
            torch.manual_seed(seed + index)
            modules[name].reset_parameters()
    return model, layers


def discrete_entropy(values, n_bins: int = 100) -> float:
    """Shannon entropy (natural log) of the histogram of ``values`` in ``n_bins`` equal bins over
    their range (Quantus's ``discrete_entropy``).

    Example:
        >>> discrete_entropy([0.0, 1.0, 2.0, 3.0], n_bins=2) == float(np.log(2))
        True
    """
    from scipy.stats import entropy

    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    histogram, _ = np.histogram(array, bins=int(n_bins))
    return float(entropy(histogram))


def efficient_mprt(explainer: Explainer, inputs: torch.Tensor, attribution: torch.Tensor | None = None, n_bins: int = 100,
                   target_region: str = "fixed", seed: int = 0) -> dict:
    """Efficient MPRT of ``explainer`` on one image (``attribution``: the trained model's map,
    explained here when None): the relative rise of :func:`discrete_entropy` from the trained
    model's map to the map of :func:`randomised_copy`.

    Returns ``efficient_mprt`` (None where undefined, ``undefined`` saying why: a constant map,
    entropy 0, or an empty recomputed region), ``entropy_ratio``, ``entropy_original``,
    ``entropy_randomised``, ``n_bins``, ``layers``, ``seed``, ``target_region`` and, for a target
    with a region, ``region_dice`` (the randomised model's region against the trained one's).
    Cost: 1 explanation (2 without ``attribution``), + 1 prediction for a region target (+ 1 recomputed)."""
    if inputs.shape[0] != 1:
        raise MethodError("efficient MPRT is computed one image at a time (batch 1); loop over the images")
    if target_region not in TARGET_REGIONS:
        raise ConfigError(f"target_region must be one of {', '.join(TARGET_REGIONS)}, got {target_region!r}")
    target = explainer.target
    has_region = target.needs_prediction
    if has_region and explainer.local:
        raise ConfigError("efficient MPRT with a prediction-based target needs the global target (local=False)")
    trained = explainer.predict(inputs) if has_region else None
    if attribution is None:
        attribution = explainer(inputs, prediction=trained)
    model, layers = randomised_copy(explainer.network, _example(explainer, inputs), seed)
    current = copy.copy(explainer)  # the same method, target and windows on the randomised network
    current.network, current._output_shapes = model, {}
    prediction = current.predict(inputs) if has_region and target_region == "recomputed" else trained
    result = {"efficient_mprt": None, "entropy_ratio": None, "entropy_original": discrete_entropy(attribution, n_bins),
              "entropy_randomised": None, "n_bins": int(n_bins), "layers": len(layers), "seed": int(seed),
              "target_region": target_region, "region_dice": None}
    if has_region:
        result["region_dice"] = _dice(_region(target, prediction), _region(target, trained))[0]
    try:
        randomised = current(inputs, prediction=prediction)
    except EmptyTargetError:
        result["undefined"] = (f"the randomised model predicts no voxel of {target.name}'s region (target_region "
                               "recomputed): its map is empty")
        return result
    original, entropy = result["entropy_original"], discrete_entropy(randomised, n_bins)
    result["entropy_randomised"] = entropy
    if original == 0:
        result["undefined"] = "the trained model's map is constant: its entropy is 0 and the relative rise is undefined"
        return result
    result.update(efficient_mprt=(entropy - original) / original, entropy_ratio=entropy / original)
    return result


def _smooth_mprt_metric(case, options: dict):
    result = smooth_mprt(case.explainer, case.inputs, seed=case.seed, **options)
    scores = [{k: v for k, v in s.items() if k != "map"} for s in result["steps"]]
    extra = {key: result[key] for key in ("seed", "layers", "n_samples", "noise_std", "target_region")}
    if scores[-1]["region_dice"] is not None:  # how far the region moved by the last step (1.0 when fixed)
        extra["region_dice"] = scores[-1]["region_dice"][0]
    curve = {"steps": scores, "slices": [_central_slice(s["map"]) for s in result["steps"]]}
    return MetricResult(result["smooth_mprt"], extra, curve)


def _efficient_mprt_metric(case, options: dict):
    result = efficient_mprt(case.explainer, case.inputs, case.attribution, seed=case.seed, **options)
    extra = {k: v for k, v in result.items() if k not in ("efficient_mprt", "undefined")}
    if result["efficient_mprt"] is None:
        return MetricResult(None, extra, status="undefined", error=result["undefined"])
    return MetricResult(result["efficient_mprt"], extra)


_REFERENCE = "Hedström et al. 2023, Sanity Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test"
register(Metric(
    "smooth_mprt", "randomisation", "lower",
    "(L + 1)·n_samples explanations (default 10 samples), L the parameterised layers (+ 1 prediction for a region "
    "target; + L more with target_region recomputed)",
    f"{_REFERENCE}; quantus.SmoothMPRT", _smooth_mprt_metric,
    {"n_samples": 10, "noise_std": 0.1, "target_region": "fixed", "per_eval": 1},
    quantus="Same smoothing (n_samples − 1 noisy maps, noise std noise_std·(max − min), and the noiseless one) and score "
            "(Spearman of |maps| after the last layer: return_last_correlation); equal per layer given the same draws and "
            "randomised models. Quantus draws fresh noise per model from numpy's global state, compares against the given "
            "a_batch, walks layers bottom-up by default with every layer under seed + 1, and defaults to 50 samples; ours "
            "uses the same draws for every model, the smoothed original, top-down with layer i under seed + i.",
    summary='the randomisation test with each map averaged over noisy copies (slow)',
))
register(Metric(
    "efficient_mprt", "randomisation", "higher",
    "1 explanation (the fully randomised model's) + 1 prediction for a region target (+ 1 with target_region recomputed)",
    f"{_REFERENCE}; quantus.EfficientMPRT", _efficient_mprt_metric, {"n_bins": 100, "target_region": "fixed"},
    quantus="Quantus's value and defaults: (H(random) − H(original)) / H(original), H the discrete entropy of the map's "
            "histogram in 100 bins (abs=False, normalise=False, skip_layers=True); equal given the same randomised model; "
            "entropy_ratio H(random)/H(original) in the row. Its fully randomised model draws every layer under seed + 1; "
            "ours layer i under seed + i (the last step of our randomisation test).",
    summary='how much more disordered the map gets on a fully randomised network',
))
