"""Completeness (Sundararajan et al. 2017): a map should sum to the target's change from a
baseline, ``Σ Φ = T(x) − T(baseline)`` — exact for integrated gradients in the limit of many
steps, for DeepLift and (with ``T(baseline)`` = 0) for LRP's conservation; saliency and CAMs
have no reason to satisfy it. The value is the relative gap

    |Σ Φ − (T(x) − T(baseline))| / |T(x) − T(baseline)|     (lower is better)

with the absolute ``gap``, ``attribution_sum``, ``difference`` and ``complete`` (the relative
gap at most ``tolerance``; Quantus's Completeness is the exact equality, ``tolerance=0``) in
the row. ``T`` goes through the explainer's windows with the target's region fixed from the
clean image (:func:`esegeta_monai.methods.gradient.completeness`: one forward per window for
the baseline). Undefined where ``T(x) = T(baseline)``.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1))
    >>> x = torch.rand(1, 1, 8, 8)
    >>> explainer = Explainer(net, "deeplift", "class:1")
    >>> completeness(explainer, x, explainer(x))["completeness"] < 1e-4
    True
"""

from __future__ import annotations

import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.faithfulness_correlation import baseline_value
from esegeta_monai.methods.gradient import completeness as completeness_gap

__all__ = ["completeness"]


def completeness(explainer, inputs: torch.Tensor, attribution: torch.Tensor, baseline=0.0, tolerance: float = 0.01) -> dict:
    """The completeness gap of ``attribution`` for ``explainer``'s network, target and windows,
    on one image (batch 1), against a constant ``baseline`` image (a number, or ``"black"``:
    the image's minimum, Quantus's default; ``"white"``, ``"mean"``). Returns ``completeness``
    (the relative gap; None where ``difference`` is 0), ``gap``, ``attribution_sum``,
    ``difference`` (``T(x) − T(baseline)``), ``complete``, ``baseline`` and ``tolerance``."""
    if inputs.shape[0] != 1:
        raise MethodError("completeness is computed one image at a time (batch 1)")
    with explainer.session(inputs) as (window_pass, x):
        if window_pass.local:
            raise MethodError("completeness needs the global target; local=True (per-window targets) is not supported")
        value = baseline_value(x, baseline)
        phi = attribution.detach().to(x.device)
        report = completeness_gap(window_pass, x, phi.reshape(1, -1), value)
    total = float(phi.double().sum())
    delta = report["delta"][0]  # Σ Φ − (T(x) − T(baseline)), Captum's convergence delta
    relative = report["delta_relative"][0]
    return {"completeness": relative, "gap": abs(delta), "attribution_sum": total, "difference": total - delta,
            "complete": relative is not None and relative <= tolerance, "baseline": baseline, "tolerance": float(tolerance)}


def _completeness_metric(case, options: dict):
    result = completeness(case.explainer, case.inputs, case.attribution, **options)
    value = result.pop("completeness")
    if value is None:
        return MetricResult(None, result, status="undefined",
                            error="undefined: the target of the image equals the baseline's (T(x) − T(baseline) = 0)")
    return MetricResult(value, result)


register(Metric(
    "completeness", "axiom", "lower", "1 target forward of the baseline image (through windows: every window)",
    "Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks; quantus.Completeness",
    _completeness_metric, {"baseline": 0.0, "tolerance": 0.01},
    quantus="Quantus returns the exact float equality Σ Φ == T(x) − T(baseline) (a bool, almost always False) "
            "with the image minimum ('black') as baseline; ours reports the relative gap and complete = "
            "(relative gap ≤ tolerance), with baseline 0 by default (baseline='black', tolerance=0 give Quantus's).",
    summary="whether the map sums to the prediction's change from a baseline image (an axiom of IG, DeepLift)",
))
