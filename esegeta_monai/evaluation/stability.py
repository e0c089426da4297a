"""Stability of a map under small input noise: average sensitivity, relative input and relative
output stability, exact through sliding windows.

Every metric here perturbs the image with ``n_samples`` draws ``δ_k`` uniform in
``[−radius, radius]`` per voxel (:func:`uniform_draws`: Captum's ``default_perturb_func`` after
``torch.manual_seed(seed)``, from a private generator) and explains each ``x'_k = x + δ_k`` with
the same :class:`~esegeta_monai.explainer.Explainer` (exact through its windows), one draw at a
time — memory flat in the number of draws. With ``Φ`` the map, ``x`` the image, ``h`` the
network's full output (``explainer.predict``: the logits of a classifier, the logit map of a
segmentation network through MONAI's sliding-window inference) and, as in Quantus,
``ã = a + ε·[a = 0]`` (zeros replaced by ``ε = eps_min``) and ``‖·‖`` the L2 norm of the flattened array:

- :func:`avg_sensitivity` (Yeh et al. 2019): ``mean_k ‖Φ(x'_k) − Φ(x)‖ / ‖Φ(x)‖``; the ``max``
  over the same draws is Captum's ``sensitivity_max`` (the catalogue's ``sensitivity``);
- :func:`relative_input_stability` (Agarwal et al. 2022):
  ``max_k ‖(Φ(x) − Φ(x'_k)) / Φ̃(x)‖ / D̃_k`` with ``D_k = ‖(x − x'_k) / x̃‖``;
- :func:`relative_output_stability`: the same numerator over ``D_k = ‖h(x) − h(x'_k)‖``.

``D̃ = D + ε·[D = 0]``. For a classifier, draws that change the predicted class (argmax of
``h``) are dropped from the relative stabilities (the paper's constraint; ``drop_changed``);
a segmentation output has no single class, so no draw is dropped. The draws, explanations and
predictions of one map are computed once and shared by the three metrics (``MetricCase.shared``,
keyed by ``n_samples``, ``radius`` and the seed).

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 3, padding=1), "saliency", "class:1", abs=False)
    >>> x = torch.rand(1, 1, 12, 12)
    >>> result = avg_sensitivity(explainer, x, explainer(x), n_samples=3)
    >>> sorted(result)
    ['avg_sensitivity', 'max', 'n_samples', 'radius', 'ratios', 'seed', 'std']
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register

__all__ = ["avg_sensitivity", "relative_input_stability", "relative_output_stability", "uniform_draws", "StabilityDraws"]


def uniform_draws(inputs: torch.Tensor, n_samples: int, radius: float, seed: int) -> Iterator[torch.Tensor]:
    """The perturbed images ``x + δ_k``, ``δ_k`` uniform in ``[−radius, radius]`` (float32, drawn on
    the CPU from a ``torch.Generator`` seeded by ``seed``, one image at a time): the draws of
    Captum's ``sensitivity_max`` with its ``default_perturb_func`` after ``torch.manual_seed(seed)``,
    global random state untouched.

    Example:
        >>> import torch
        >>> draws = list(uniform_draws(torch.zeros(1, 1, 4, 4), 2, 0.1, seed=0))
        >>> len(draws), bool(draws[0].abs().max() <= 0.1), torch.equal(draws[0], draws[1])
        (2, True, False)
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for _ in range(int(n_samples)):
        noise = torch.empty(tuple(inputs.shape), dtype=torch.float32).uniform_(-float(radius), float(radius), generator=generator)
        yield inputs + noise.to(inputs.device)


def _eps_floor(values: torch.Tensor, eps: float) -> torch.Tensor:
    """``a + ε·[a = 0]``: Quantus's guard against division by zero."""
    return torch.where(values == 0, torch.full_like(values, eps), values)


def _norm(values: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(values.flatten()))


class StabilityDraws:
    """Per-draw quantities of one map under :func:`uniform_draws`, computed on first use, one
    draw at a time, and cached (a metric case holds one per draw setting, shared by the metrics).

    Args:
        explainer: the :class:`~esegeta_monai.explainer.Explainer` that made ``attribution``.
        inputs: the image ``(1, C, *spatial)``.
        attribution: its map ``Φ(x)``.
        n_samples, radius, seed: the draws.

    ``maps(eps)`` returns, per draw, ``difference`` ``‖Φ(x') − Φ(x)‖``, ``relative_map``
    ``‖(Φ(x) − Φ(x')) / Φ̃(x)‖`` and ``relative_input`` ``‖(x − x') / x̃‖`` (float64 arrays);
    ``outputs()`` returns ``output`` ``‖h(x) − h(x')‖`` and ``changed`` (a classifier's predicted
    class changed; all False for a segmentation output) and ``classifier``; ``is_classifier()``
    costs one prediction of the clean image.
    """

    def __init__(self, explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_samples: int, radius: float, seed: int):
        if inputs.shape[0] != 1:
            raise MethodError("stability metrics are computed one image at a time (batch 1); loop over the images")
        if int(n_samples) < 1 or not float(radius) > 0:
            raise MethodError(f"n_samples={n_samples}, radius={radius}: give at least one draw and a positive radius")
        inputs = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs  # a MetaTensor: its data
        self.explainer, self.inputs = explainer, inputs.detach().float()
        self.device = getattr(explainer, "device", None) or self.inputs.device  # where the maps are compared
        attribution = attribution.as_tensor() if hasattr(attribution, "as_tensor") else torch.as_tensor(attribution)
        self.attribution = attribution.detach().double()
        self.n_samples, self.radius, self.seed = int(n_samples), float(radius), int(seed)
        self.map_norm = _norm(self.attribution)
        # shares of exact zeros, where the ε rule divides by eps_min and dominates the relative stabilities
        self.map_zero_share = float((self.attribution == 0).double().mean())
        self.input_zero_share = float((self.inputs == 0).double().mean())
        self._maps: dict[float, dict] = {}
        self._outputs: dict | None = None
        self._clean_output: torch.Tensor | None = None

    def draws(self) -> Iterator[torch.Tensor]:
        return uniform_draws(self.inputs, self.n_samples, self.radius, self.seed)

    def maps(self, eps: float | None = None) -> dict:
        """The map quantities per draw (``n_samples`` explanations, once per ``eps``; ``eps`` None:
        any cached entry, for the quantities that do not depend on it)."""
        if eps is None:
            if self._maps:
                return next(iter(self._maps.values()))
            eps = 1e-6
        eps = float(eps)
        if eps not in self._maps:
            clean, image = self.attribution.to(self.device), self.inputs.to(self.device, torch.float64)
            clean_floor, input_floor = _eps_floor(clean, eps), _eps_floor(image, eps)
            rows = []
            for perturbed in self.draws():
                explained = torch.as_tensor(self.explainer(perturbed)).detach().to(clean.device, torch.float64).reshape(clean.shape)
                change = clean - explained
                input_change = (image - perturbed.to(self.device, torch.float64)) / input_floor
                rows.append((_norm(change), _norm(change / clean_floor), _norm(input_change)))
                del explained, change, input_change
            difference, relative_map, relative_input = (np.array(column, dtype=np.float64) for column in zip(*rows))
            self._maps[eps] = {"difference": difference, "relative_map": relative_map, "relative_input": relative_input}
        return self._maps[eps]

    def clean_output(self) -> torch.Tensor:
        if self._clean_output is None:
            self._clean_output = self.explainer.predict(self.inputs).double()
        return self._clean_output

    def is_classifier(self) -> bool:
        return self.clean_output().ndim == 2

    def outputs(self) -> dict:
        """The output quantities per draw (``n_samples`` predictions, once)."""
        if self._outputs is None:
            clean = self.clean_output()
            classifier = clean.ndim == 2
            output, changed = [], []
            for perturbed in self.draws():
                predicted = self.explainer.predict(perturbed).double()
                output.append(_norm(clean - predicted))
                changed.append(bool(classifier and not torch.equal(clean.argmax(1), predicted.argmax(1))))
                del predicted
            self._outputs = {"output": np.array(output, dtype=np.float64), "changed": np.array(changed), "classifier": classifier}
        return self._outputs


def _draws_of(case, options: dict) -> StabilityDraws:
    """The case's :class:`StabilityDraws` for these options (shared by the stability metrics of one map)."""
    key = ("stability", int(options["n_samples"]), float(options["radius"]), int(case.seed))
    if key not in case.shared:
        case.shared[key] = StabilityDraws(case.explainer, case.inputs, case.attribution, *key[1:])
    return case.shared[key]


def _draws(explainer, inputs, attribution, n_samples, radius, seed, draws: StabilityDraws | None) -> StabilityDraws:
    return draws if draws is not None else StabilityDraws(explainer, inputs, attribution, n_samples, radius, seed)


def avg_sensitivity(explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_samples: int = 10, radius: float = 0.02,
                    seed: int = 0, draws: StabilityDraws | None = None) -> dict:
    """Average sensitivity ``mean_k ‖Φ(x + δ_k) − Φ(x)‖₂ / ‖Φ(x)‖₂`` over ``n_samples`` draws
    ``δ_k`` uniform in ``[−radius, radius]`` (:func:`uniform_draws`), with ``Φ(x)`` = ``attribution``.

    Returns ``avg_sensitivity`` (NaN for an all-zero map), its ``std`` and ``max`` over the same
    draws (the max is Captum's ``sensitivity_max``, the catalogue's ``sensitivity``, for the same
    seed and ``Φ(x)``), ``n_samples``, ``radius`` and ``seed``. ``draws``: a shared
    :class:`StabilityDraws` (then the other arguments but ``explainer`` are its own).

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> explainer = Explainer(torch.nn.Conv2d(1, 1, 1), "saliency", "class:0", abs=False)
        >>> x = torch.rand(1, 1, 6, 6)
        >>> avg_sensitivity(explainer, x, explainer(x), n_samples=2)["avg_sensitivity"]  # a linear net: a constant map
        0.0
    """
    draws = _draws(explainer, inputs, attribution, n_samples, radius, seed, draws)
    ratios = draws.maps()["difference"] / draws.map_norm if draws.map_norm > 0 else np.full(draws.n_samples, np.nan)
    return {"avg_sensitivity": float(ratios.mean()), "std": float(ratios.std()), "max": float(ratios.max()),
            "n_samples": draws.n_samples, "radius": draws.radius, "seed": draws.seed, "ratios": ratios}


def _relative(kind: str, draws: StabilityDraws, eps_min: float, drop_changed: bool) -> dict:
    """The max over draws of ``relative_map / D̃`` (``D`` from the input or the output), the
    classifier's changed draws dropped where ``drop_changed``."""
    relative_map = draws.maps(eps_min)["relative_map"]
    if kind == "input":
        denominator = draws.maps(eps_min)["relative_input"]
    else:
        denominator = draws.outputs()["output"]
    ratios = relative_map / (denominator + (denominator == 0) * float(eps_min))
    checked = drop_changed and (kind == "output" or draws.is_classifier())  # a segmentation output: none changes
    changed = draws.outputs()["changed"] if checked else np.zeros(draws.n_samples, bool)
    kept = ratios[~changed]
    value = float(kept.max()) if kept.size else float("nan")
    zeros = {"map_zero_share": draws.map_zero_share}
    if kind == "input":
        zeros["input_zero_share"] = draws.input_zero_share
    return {"value": value, "n_samples": draws.n_samples, "n_used": int(kept.size), "radius": draws.radius, "seed": draws.seed,
            "eps_min": float(eps_min), "drop_changed": bool(drop_changed), **zeros, "ratios": ratios, "changed": changed}


def relative_input_stability(explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_samples: int = 10, radius: float = 0.02,
                             seed: int = 0, eps_min: float = 1e-6, drop_changed: bool = True,
                             draws: StabilityDraws | None = None) -> dict:
    """Relative input stability ``max_k ‖(Φ(x) − Φ(x'_k)) / Φ̃(x)‖₂ / D̃_k`` with
    ``D_k = ‖(x − x'_k) / x̃‖₂``, ``ã = a + ε·[a = 0]``, ``D̃ = D + ε·[D = 0]`` (``ε = eps_min``),
    over ``n_samples`` draws ``x'_k = x + δ_k`` (:func:`uniform_draws`). For a classifier, draws
    that change the predicted class are left out where ``drop_changed`` (one forward per draw);
    a segmentation output drops none.

    Returns ``relative_input_stability`` (NaN where every draw was dropped), ``n_used`` (draws
    kept), ``ratios`` and ``changed`` per draw (arrays), the settings, and ``map_zero_share`` and
    ``input_zero_share``: the shares of exact zeros in ``Φ(x)`` and ``x`` — each such voxel is
    divided by ``eps_min``, so where either is non-zero the value is dominated by those voxels
    (a map that is zero outside its target's reach; a zero background).

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> _ = torch.manual_seed(0)
        >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 3, padding=1), "saliency", "argmax:1", abs=False)
        >>> x = torch.rand(1, 1, 12, 12)
        >>> result = relative_input_stability(explainer, x, explainer(x), n_samples=3)
        >>> result["n_used"], result["relative_input_stability"] >= 0
        (3, True)
    """
    draws = _draws(explainer, inputs, attribution, n_samples, radius, seed, draws)
    result = _relative("input", draws, eps_min, drop_changed)
    return {"relative_input_stability": result.pop("value"), **result}


def relative_output_stability(explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_samples: int = 10, radius: float = 0.02,
                              seed: int = 0, eps_min: float = 1e-6, drop_changed: bool = True,
                              draws: StabilityDraws | None = None) -> dict:
    """Relative output stability ``max_k ‖(Φ(x) − Φ(x'_k)) / Φ̃(x)‖₂ / D̃_k`` with
    ``D_k = ‖h(x) − h(x'_k)‖₂``, ``h`` the network's full output through the windows
    (``explainer.predict``: a classifier's logits, a segmentation network's logit map), the rest as
    :func:`relative_input_stability` (``map_zero_share`` included). Costs ``n_samples`` explanations
    and ``n_samples + 1`` predictions.

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> _ = torch.manual_seed(0)
        >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 3, padding=1), "saliency", "argmax:1", abs=False)
        >>> x = torch.rand(1, 1, 12, 12)
        >>> relative_output_stability(explainer, x, explainer(x), n_samples=3)["n_used"]
        3
    """
    draws = _draws(explainer, inputs, attribution, n_samples, radius, seed, draws)
    result = _relative("output", draws, eps_min, drop_changed)
    return {"relative_output_stability": result.pop("value"), **result}


def _result(name: str, result: dict, undefined: str) -> MetricResult:
    value = result.pop(name)
    curve = {"ratios": result.pop("ratios").tolist()}
    if "changed" in result:
        curve["changed"] = result.pop("changed").tolist()
    if not np.isfinite(value):
        return MetricResult(None, result, curve, status="undefined", error=undefined)
    return MetricResult(value, result, curve)


def _avg_sensitivity_metric(case, options: dict) -> MetricResult:
    result = avg_sensitivity(case.explainer, case.inputs, case.attribution, draws=_draws_of(case, options))
    return _result("avg_sensitivity", result, "the map is all zeros: a relative change is undefined")


def _relative_metric(name: str, function):
    def compute(case, options: dict) -> MetricResult:
        result = function(case.explainer, case.inputs, case.attribution, eps_min=options["eps_min"],
                          drop_changed=options["drop_changed"], draws=_draws_of(case, options))
        return _result(name, result, "every draw changed the predicted class (drop_changed=True)")

    return compute


_DRAWS = "δ uniform in [−radius, radius] per voxel, Captum's perturbation"
_QUANTUS_RELATIVE = ("Quantus's default noise is uniform in [0.02, 0.2] (a positive shift) with 200 draws, and its "
                     "return_nan_when_prediction_changes=True makes the whole value NaN when any draw changes the class "
                     "(np.max over NaN); we drop those draws (the paper's constraint) and draw δ in [−radius, radius].")

register(Metric(
    "avg_sensitivity", "robustness", "lower",
    "n_samples explanations (default 10); the same draws and explanations serve relative_input/output_stability",
    "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations; quantus.AvgSensitivity",
    _avg_sensitivity_metric, {"n_samples": 10, "radius": 0.02},
    quantus=f"mean over draws of ‖Φ(x+δ) − Φ(x)‖₂ / ‖Φ(x)‖₂, {_DRAWS} (the max of the same draws is `sensitivity`); "
            "Quantus's AvgSensitivity has the same ratio with 200 draws in [−0.2, 0.2] (radius=0.2, n_samples=200).",
    summary="how much the map changes under small noise (mean over draws)",
))
register(Metric(
    "relative_input_stability", "robustness", "lower",
    "n_samples explanations (default 10); with drop_changed + 1 prediction, and for a classifier + n_samples forwards "
    "(class-change check); draws and explanations shared with avg_sensitivity and relative_output_stability",
    "Agarwal et al. 2022, Rethinking Stability for Attribution-based Explanations; quantus.RelativeInputStability",
    _relative_metric("relative_input_stability", relative_input_stability),
    {"n_samples": 10, "radius": 0.02, "eps_min": 1e-6, "drop_changed": True},
    quantus="Quantus's objective exactly (element-wise division with zeros replaced by eps_min, L2 of the flattened "
            f"arrays, max over draws), {_DRAWS}. " + _QUANTUS_RELATIVE,
    summary="the largest relative change of the map per relative change of the image, under small noise",
))
register(Metric(
    "relative_output_stability", "robustness", "lower",
    "n_samples explanations (default 10) + n_samples + 1 sliding-window predictions; shared with relative_input_stability",
    "Agarwal et al. 2022, Rethinking Stability for Attribution-based Explanations; quantus.RelativeOutputStability",
    _relative_metric("relative_output_stability", relative_output_stability),
    {"n_samples": 10, "radius": 0.02, "eps_min": 1e-6, "drop_changed": True},
    quantus="Quantus's objective with h the network's full output: a classifier's logits as Quantus, a segmentation "
            f"network's logit map through the windows (Quantus has no segmentation), {_DRAWS}. " + _QUANTUS_RELATIVE,
    summary="the largest relative change of the map per change of the network's output, under small noise",
))
