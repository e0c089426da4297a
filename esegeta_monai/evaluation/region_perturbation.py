"""Region perturbation (Samek et al. 2017) and IROF (Rieger & Hansen 2020): faithfulness curves
over regions — a grid of patches or SLIC supervoxels, 2D and 3D — instead of single voxels.

- :func:`region_perturbation`: regions ordered by their summed attribution (``order`` ``morf``:
  most relevant first; ``lerf``: least) are replaced one after the other by a ``fill``, for
  ``steps`` regions, giving ``T_0 = T_clean, T_1, …, T_L``. Its value is the AOPC
  ``1/(L+1) Σ_{k=0..L} (T_0 − T_k)`` divided by ``T_0 − T_fill`` (``T_fill``: every region filled),
  so that it keeps its direction whatever the sign of ``T`` (higher is better for ``morf``, lower
  for ``lerf``); undefined (flagged) where ``T_0 = T_fill``.
- :func:`irof`: SLIC supervoxels ordered by their mean attribution, removed one after the other
  (``fill`` ``"mean"``: the clean image's mean per channel) until none is left; the curve
  ``r_k`` is the class probability relative to the clean one (``p_k / p_0``) for a classifier, the
  normalised score ``(T_k − T_K)/(T_0 − T_K)`` otherwise, over the fraction ``k/K`` of supervoxels
  removed; IROF is the area over it, ``1 − ∫ r`` (higher is better).

``T`` is the class probability where the target allows (``normalisation`` ``"auto"``, as for
deletion) and the target's score otherwise. Forwards: region perturbation needs ``steps`` target
evaluations (+1 for ``T_fill`` unless the steps cover every region), IROF one per supervoxel
(``K ≈ n_segments``); deletion needs ``2·steps`` and per-voxel deletion (Quantus's PixelFlipping)
one per voxel. Through sliding windows each step changes one region, so it re-runs only the
windows that region touches, against the window terms of the step before — exact, since ``T`` is
the sum of the window terms; deletion's scattered voxels touch nearly every window at every step.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 3, padding=1), "saliency", "argmax:1")
    >>> x = torch.rand(1, 1, 16, 16)
    >>> result = region_perturbation(explainer, x, explainer(x), steps=4, patch_size=4)
    >>> len(result["curve"]), result["n_regions"], result["normalisation"], result["flag"]
    (5, 16, 'score', None)
    >>> round(irof(explainer, x, explainer(x), n_segments=8)["curve"][0], 6)
    1.0
"""

from __future__ import annotations

import numpy as np
import torch

from esegeta_monai.core.windowed_target import SteppedTarget, WindowedTarget
from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.faithfulness import NORMALISATIONS, _scorer
from esegeta_monai.evaluation.regions import patch_regions, region_sums, supervoxels

__all__ = ["region_perturbation", "irof", "FILLS"]

#: the fills of a removed region (or a number): the image's minimum over all channels (Quantus's
#: "black"), its mean per channel, uniform noise in [min, max] per voxel (Samek et al.), seeded
FILLS = ("min", "mean", "uniform")


def _fill_image(x: torch.Tensor, fill, seed: int) -> torch.Tensor:
    if fill == "min":
        return torch.full_like(x, float(x.min()))
    if fill == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone()
    if fill == "uniform":
        noise = np.random.default_rng(seed).uniform(float(x.min()), float(x.max()), size=tuple(x.shape))
        return torch.as_tensor(noise, dtype=x.dtype, device=x.device)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(x, float(fill))
    raise MethodError(f"fill={fill!r}: give a number or one of {', '.join(FILLS)}")


def _curve(explainer, inputs, regions_of, order: str, steps: int | None, fill, normalisation: str, per_eval: int,
           seed: int) -> dict:
    """The shared loop: the regions ``regions_of(x)`` gives (labels on the grid, a score per
    region) ranked by score (``order``), filled cumulatively for ``steps`` regions (all with
    None); ``T`` of the clean image, of each step and of the fully filled image (``T_fill``)."""
    if inputs.shape[0] != 1:
        raise MethodError("region metrics are computed one image at a time (batch 1)")
    if normalisation not in NORMALISATIONS:
        raise MethodError(f"normalisation={normalisation!r}: choose from {', '.join(NORMALISATIONS)}")
    if order not in ("morf", "lerf") or int(per_eval) < 1:
        raise MethodError(f"order={order!r}, per_eval={per_eval!r}: order is 'morf' or 'lerf', per_eval ≥ 1")
    with explainer.session(inputs) as (window_pass, x):
        labels, scores = regions_of(x)
        ranking = np.argsort(-scores if order == "morf" else scores, kind="stable")
        sequence = ranking[: len(ranking) if steps is None else max(0, int(steps))]
        if len(sequence) == 0:
            raise MethodError(f"steps={steps}: give a positive number of regions to perturb")
        score, clean, kind = _scorer(explainer, window_pass, x, normalisation)
        windowed = isinstance(score, WindowedTarget)
        step = SteppedTarget(score) if windowed else score
        clean = float(score.clean[0]) if windowed else clean
        base = _fill_image(x, fill, seed)
        grid = torch.as_tensor(labels, device=x.device)
        values, current = [], x
        for start in range(0, len(sequence), int(per_eval)):
            images = []
            for region in sequence[start : start + int(per_eval)]:
                current = torch.where(grid == int(region), base, current)
                images.append(current)
            values.extend(step(torch.cat(images)).tolist())
        if len(sequence) == len(ranking):
            filled = values[-1]
        else:
            filled = step.once(base) if windowed else float(score(base)[0])
        forwards = score.forwards if windowed else None
    return {"clean": clean, "values": values, "filled": filled, "normalisation": kind, "n_regions": int(len(ranking)),
            "window_forwards": forwards}


def _undefined(clean: float, filled: float, what: str) -> str | None:
    span = clean - filled
    if span == 0 or abs(span) <= 1e-6 * max(abs(clean), abs(filled)):
        return (f"undefined normalisation: {what} of the clean image ({clean:.6g}) equals the filled image's "
                f"({filled:.6g})")
    return None


def region_perturbation(explainer, inputs: torch.Tensor, attribution: torch.Tensor, steps: int = 100,
                        regions: str = "patches", patch_size=8, n_segments: int = 100, compactness: float = 10.0,
                        order: str = "morf", fill="min", normalisation: str = "auto", per_eval: int = 4,
                        seed: int = 0) -> dict:
    """Region perturbation of ``attribution`` for ``explainer``'s network, target and windows on
    one image: ``regions`` ``"patches"`` (of ``patch_size`` voxels per axis,
    :func:`~esegeta_monai.evaluation.regions.patch_regions`) or ``"supervoxels"`` (SLIC of the
    image, ``n_segments``, ``compactness``), ranked by summed attribution (``order``), the first
    ``steps`` filled cumulatively by ``fill`` (a number or one of :data:`FILLS`; ``"uniform"``
    draws from ``seed``), ``per_eval`` images per evaluation.

    Returns ``aopc`` (normalised by ``T_0 − T_fill``; NaN where ``flag`` says it is undefined),
    ``aopc_raw`` ``1/(L+1) Σ_k (T_0 − T_k)``, ``curve`` ``[T_0, …, T_L]`` and ``curve_normalised``
    ``(T_k − T_fill)/(T_0 − T_fill)``, ``clean``, ``filled``, ``normalisation``, ``steps`` (``L``,
    at most the number of regions), ``n_regions``, the settings and ``window_forwards`` (None for
    a classifier's probability, which runs whole forwards)."""
    if regions not in ("patches", "supervoxels"):
        raise MethodError(f"regions={regions!r}: choose 'patches' or 'supervoxels'")
    spatial = tuple(inputs.shape[2:])
    map_ = attribution.detach().float().reshape(attribution.shape[0], -1, *spatial)[0]

    def regions_of(x):
        labels = patch_regions(spatial, patch_size) if regions == "patches" else supervoxels(x[0], n_segments, compactness)
        return labels, region_sums(map_, labels)

    result = _curve(explainer, inputs, regions_of, order, steps, fill, normalisation, per_eval, seed)
    clean, filled, values = result["clean"], result["filled"], result["values"]
    curve = [clean, *values]
    flag = _undefined(clean, filled, f"the {result['normalisation']}")
    span = clean - filled
    raw = float(np.mean([clean - v for v in curve]))
    settings = {"regions": regions, **({"patch_size": patch_size} if regions == "patches" else
                                       {"n_segments": int(n_segments), "compactness": float(compactness)}),
                "order": order, "fill": fill, **({"seed": int(seed)} if fill == "uniform" else {})}
    return {"aopc": float("nan") if flag else raw / span, "aopc_raw": raw, "curve": curve,
            "curve_normalised": [float("nan") if flag else (v - filled) / span + 0.0 for v in curve],
            "clean": clean, "filled": filled, "normalisation": result["normalisation"], "flag": flag,
            "steps": len(values), "n_regions": result["n_regions"], **settings, "window_forwards": result["window_forwards"]}


def irof(explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_segments: int = 100, compactness: float = 10.0,
         fill="mean", normalisation: str = "auto", per_eval: int = 4, seed: int = 0) -> dict:
    """IROF of ``attribution``: SLIC supervoxels of the image (``n_segments``, ``compactness``;
    :func:`~esegeta_monai.evaluation.regions.supervoxels`) ranked by mean attribution, all removed
    one after the other (``fill``, default the image's mean per channel).

    Returns ``irof`` ``1 − trapezoid(r, k/K)`` (NaN where ``flag`` says the curve is undefined),
    ``curve`` ``r_0 … r_K`` with ``fractions``, the raw values ``raw`` (``T_0 … T_K``), ``aoc_quantus``
    (Quantus's per-image value ``K − Σ`` trapezoids of ``r_1 … r_K`` at spacing 1), ``n_supervoxels``
    (``K``, those SLIC made), ``normalisation``, the settings and ``window_forwards``."""
    spatial = tuple(inputs.shape[2:])
    map_ = attribution.detach().float().reshape(attribution.shape[0], -1, *spatial)[0]

    def regions_of(x):
        labels = supervoxels(x[0], n_segments, compactness)
        return labels, region_sums(map_, labels) / np.bincount(labels.ravel())

    result = _curve(explainer, inputs, regions_of, "morf", None, fill, normalisation, per_eval, seed)
    clean, values, kind = result["clean"], result["values"], result["normalisation"]
    raw = [clean, *values]
    if kind == "probability":
        flag = None if clean > 0 else f"undefined ratio: the clean image's probability is {clean:.6g}"
        curve = [float("nan") if flag else v / clean for v in raw]
    else:
        flag = _undefined(clean, values[-1], "the score")
        curve = [float("nan") if flag else (v - values[-1]) / (clean - values[-1]) + 0.0 for v in raw]
    count = len(values)
    fractions = np.arange(count + 1) / count
    value = float("nan") if flag else 1.0 - float(np.trapezoid(curve, fractions))
    quantus = float("nan") if flag else count - float(np.trapezoid(curve[1:], dx=1.0))
    return {"irof": value, "aoc_quantus": quantus, "curve": curve, "fractions": fractions.tolist(), "raw": raw,
            "normalisation": kind, "flag": flag, "n_supervoxels": count, "n_segments": int(n_segments),
            "compactness": float(compactness), "fill": fill,
            **({"seed": int(seed)} if fill == "uniform" else {}), "window_forwards": result["window_forwards"]}


def _region_metric(case, options: dict):
    result = region_perturbation(case.explainer, case.inputs, case.attribution, seed=case.seed, **options)
    curve = {"steps": list(range(len(result["curve"]))), "values": result["curve_normalised"], "raw": result["curve"],
             "normalisation": result["normalisation"]}
    extra = {k: v for k, v in result.items() if k not in ("aopc", "curve", "curve_normalised", "flag")}
    if result["flag"]:
        return MetricResult(None, extra, curve, status="undefined", error=result["flag"])
    return MetricResult(result["aopc"], extra, curve)


def _irof_metric(case, options: dict):
    result = irof(case.explainer, case.inputs, case.attribution, seed=case.seed, **options)
    curve = {"fractions": result["fractions"], "values": result["curve"], "raw": result["raw"],
             "normalisation": result["normalisation"]}
    extra = {k: v for k, v in result.items() if k not in ("irof", "curve", "fractions", "raw", "flag")}
    if result["flag"]:
        return MetricResult(None, extra, curve, status="undefined", error=result["flag"])
    return MetricResult(result["irof"], extra, curve)


register(Metric(
    "region_perturbation", "faithfulness", "higher",
    "steps + 1 target forwards (default 100; none for T_fill when the steps cover every region); "
    "through windows each step re-runs only the windows its region touches",
    "Samek et al. 2017, Evaluating the visualization of what a deep neural network has learned (AOPC); "
    "quantus.RegionPerturbation",
    _region_metric,
    {"steps": 100, "regions": "patches", "patch_size": 8, "n_segments": 100, "compactness": 10.0, "order": "morf",
     "fill": "min", "normalisation": "auto", "per_eval": 4},
    quantus="the same 2D patches (C order; ours also 3D and supervoxels, and keep the remainder in the last patch "
            "where Quantus pads centred), ranking, cumulative fill (its default 'black' = our 'min') and curve T_0 − T_k "
            "(its softmax = our 'auto' for a classifier); Quantus returns the curve, we report its AOPC (mean over "
            "k = 0 … L) divided by T_0 − T_fill (raw in aopc_raw). With order='lerf' lower is better.",
    summary="how fast the prediction falls as the most attributed patches are filled, one after another",
    flipped_by={"order": "lerf"},
))
register(Metric(
    "irof", "faithfulness", "higher",
    "K target forwards, K = supervoxels SLIC makes (≈ n_segments, default 100); "
    "through windows each re-runs only the windows its supervoxel touches",
    "Rieger & Hansen 2020, IROF: a low resource evaluation metric for explanation methods; quantus.IROF",
    _irof_metric, {"n_segments": 100, "compactness": 10.0, "fill": "mean", "normalisation": "auto", "per_eval": 4},
    quantus="the same SLIC (skimage defaults), ranking by mean attribution and ratio p_k/p_0; Quantus's 'mean' fill is "
            "the mean of the current, already perturbed batch (all channels, drifting as segments are filled) where "
            "ours is the clean image's mean per channel, and its value K − Σ trapezoids(r_1 … r_K) grows with K where "
            "ours is the area over r_0 … r_K on [0, 1] (Quantus's is in the row as aoc_quantus). Quantus 0.6.0's IROF "
            "takes one-channel 2D images only; for a score target ours normalises (T_k − T_K)/(T_0 − T_K).",
    summary="how fast the prediction falls as supervoxels are removed in order of their mean attribution",
))
