"""Faithfulness and localisation of a map: deletion and insertion curves, and the share of the
map inside a ground-truth label.

Deletion removes voxels in decreasing order of attribution (replaced by ``fill``: a number or
``"blur"``, a Gaussian-blurred copy of the image) and tracks the target; insertion starts from
the filled image and puts the voxels back in the same order. Each point is normalised as
``(T − T_fill) / (T_clean − T_fill)`` — 1 at the clean image, 0 at the filled one, whatever the
sign of ``T`` — with ``T`` the class probability where the target allows (``normalisation``
``"auto"``: a ``class:`` target of a classifier; softmax, sigmoid for one output) and the target's
score otherwise. Their areas under the curve (fraction removed/inserted on [0, 1]) summarise
them: a faithful map has a *low* deletion AUC and a *high* insertion AUC. Where
``T_clean = T_fill`` the normalisation is undefined: curves and AUCs are NaN and ``flag`` says
so (the raw values stay in ``deletion_raw``/``insertion_raw``). The target of every perturbed
image comes from a :class:`~esegeta_monai.core.windowed_target.WindowedTarget`, so through
sliding windows only the windows an image changes are re-run: ``2·steps`` forwards for both curves.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Conv2d(1, 2, 3, padding=1)
    >>> x = torch.rand(1, 1, 16, 16)
    >>> explainer = Explainer(net, "saliency", "argmax:1")
    >>> curves = deletion_insertion(explainer, x, explainer(x), steps=4)
    >>> len(curves["deletion"]), curves["deletion"][0], curves["deletion"][-1], curves["normalisation"], curves["flag"]
    (5, 1.0, 0.0, 'score', None)
"""

from __future__ import annotations

import numpy as np
import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.core.windowed_target import WindowedTarget
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register

__all__ = ["deletion_insertion", "localisation", "NORMALISATIONS"]

#: what deletion/insertion curves normalise: ``auto`` (default) is ``probability`` where the target allows, else ``score``
NORMALISATIONS = ("auto", "probability", "score")


def _filled(x: torch.Tensor, fill) -> torch.Tensor:
    if fill == "blur":
        from monai.transforms import GaussianSmooth

        return torch.stack([GaussianSmooth(sigma=2.0)(image) for image in x]).to(x.dtype)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(x, float(fill))
    raise MethodError(f"fill={fill!r}: give a number or 'blur'")


def deletion_insertion(explainer, inputs: torch.Tensor, attribution: torch.Tensor, steps: int = 20, fill=0.0,
                       per_eval: int = 4, normalisation: str = "auto") -> dict:
    """Deletion and insertion curves of ``attribution`` for ``explainer``'s network, target and
    windows, on one image (``inputs`` of batch 1). Returns the ``fractions``, both curves
    normalised as ``(T − T_fill) / (T_clean − T_fill)`` and their AUCs, the raw ``T`` values
    (``deletion_raw``, ``insertion_raw``, ``clean``, ``filled``), the ``normalisation`` used
    (``probability`` or ``score``) and ``flag`` (None, or why the normalisation is undefined)."""
    if inputs.shape[0] != 1:
        raise MethodError("deletion/insertion curves are computed one image at a time (batch 1)")
    if steps < 1:
        raise MethodError(f"steps={steps}: give a positive number of steps")
    if normalisation not in NORMALISATIONS:
        raise MethodError(f"normalisation={normalisation!r}: choose from {', '.join(NORMALISATIONS)}")
    with explainer.session(inputs) as (window_pass, x):
        score, clean, normalisation = _scorer(explainer, window_pass, x, normalisation)
        base = _filled(x, fill)
        scores = attribution.detach().to(x.device).float().reshape(x.shape).sum(1).flatten()  # one score per voxel
        order = torch.argsort(scores, descending=True)
        fractions = np.linspace(0.0, 1.0, steps + 1)
        counts = [int(round(f * order.numel())) for f in fractions]

        def image(start, end, count):
            keep = torch.zeros(order.numel(), dtype=torch.bool, device=x.device)
            keep[order[:count]] = True
            return torch.where(keep.view(1, 1, *x.shape[2:]), end, start)

        # the filled image and the inner points of both curves; the clean image is T_clean
        images = [base] + [image(x, base, c) for c in counts[1:-1]] + [image(base, x, c) for c in counts[1:-1]]
        values = torch.cat([score(torch.cat(images[i : i + per_eval])) for i in range(0, len(images), per_eval)]).double()
        filled = float(values[0])
        inner = values[1:].tolist()
        raw = {"deletion": [clean, *inner[: steps - 1], filled], "insertion": [filled, *inner[steps - 1 :], clean]}
    span = clean - filled
    flag = None
    if abs(span) <= 1e-6 * max(abs(clean), abs(filled)) or span == 0:
        flag = (f"undefined normalisation: the {normalisation} of the clean image ({clean:.6g}) equals the filled "
                f"image's ({filled:.6g}); the curves and AUCs are NaN (raw values in deletion_raw/insertion_raw)")
    curves = {"fractions": fractions.tolist(), "normalisation": normalisation, "clean": clean, "filled": filled, "flag": flag}
    for name in ("deletion", "insertion"):
        curves[f"{name}_raw"] = raw[name]
        curves[name] = [float("nan") if flag else (v - filled) / span + 0.0 for v in raw[name]]  # + 0.0: no -0.0
        curves[f"{name}_auc"] = float("nan") if flag else float(np.trapezoid(curves[name], fractions))
    return curves


class _Probability:
    """The target class's probability of perturbed copies: softmax over a classifier's outputs
    (sigmoid for one output), one forward per copy."""

    def __init__(self, explainer):
        self.explainer, self.index = explainer, explainer.target.class_index

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.explainer.predict(images).double()
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, 1)[:, self.index]


def _scorer(explainer, window_pass, x: torch.Tensor, normalisation: str):
    """``(T of perturbed copies, T_clean, "probability" | "score")``."""
    classifier = window_pass.output_weights is not None and window_pass.output_weights.ndim == 2  # a class: target's (B, K)
    if normalisation == "probability" and not classifier:
        raise MethodError("normalisation='probability' needs a class: target of a classifier (output (B, K)); "
                          "use 'score' (or 'auto')")
    if normalisation != "score" and classifier:
        probability = _Probability(explainer)
        return probability, float(probability(x)[0]), "probability"
    target = WindowedTarget(window_pass, x)
    return target, float(target.clean[0].float()), "score"  # float32, as the target's other values


def localisation(attribution: torch.Tensor, label, dilation: int = 2) -> dict:
    """How much of a map falls on a ground-truth ``label`` (``(*spatial)``, non-zero inside),
    dilated by ``dilation`` voxels: ``share_inside`` (of the positive attribution), ``label_share``
    (the dilated label's share of the image, the chance level), ``ratio`` of the two, ``rank_auc``
    (the probability that a voxel inside outranks one outside, ties halved) and ``pointing``
    (whether the maximum lies inside).

    Example:
        >>> import numpy as np
        >>> label = np.zeros((10, 10)); label[2:4, 2:4] = 1
        >>> localisation(label * 5.0, label, dilation=0)["share_inside"]
        1.0
    """
    from scipy.ndimage import binary_dilation
    from scipy.stats import rankdata

    values = attribution.detach().cpu().numpy() if hasattr(attribution, "detach") else np.asarray(attribution)
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(-1, *np.shape(label)).sum(0) if values.ndim > np.ndim(label) else values
    inside = np.asarray(label) != 0
    if dilation > 0:
        inside = binary_dilation(inside, iterations=int(dilation))
    if inside.all() or not inside.any():
        raise MethodError("the label covers all or none of the image: localisation is undefined")
    positive = np.clip(values, 0, None)
    share = float(positive[inside].sum() / positive.sum()) if positive.sum() > 0 else float("nan")
    ranks = rankdata(values.ravel())
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    rank_auc = (ranks[inside.ravel()].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)
    return {"share_inside": share, "label_share": float(inside.mean()), "ratio": share / float(inside.mean()),
            "rank_auc": float(rank_auc), "pointing": bool(inside.ravel()[int(np.argmax(values))])}


def _curves_metric(name: str):
    """Deletion or insertion from the pair of curves both share (computed once per map and settings)."""

    def compute(case, options: dict):
        key = ("deletion_insertion", tuple(sorted(options.items())))
        if key not in case.shared:
            case.shared[key] = deletion_insertion(case.explainer, case.inputs, case.attribution, **options)
        result = case.shared[key]
        curve = {"fractions": result["fractions"], "values": result[name], "raw": result[f"{name}_raw"],
                 "normalisation": result["normalisation"]}
        extra = {"steps": options["steps"], "normalisation": result["normalisation"], "fill": options["fill"]}
        if result["flag"]:  # undefined normalisation: no value, said in the row
            return MetricResult(None, extra, curve, status="undefined", error=result["flag"])
        return MetricResult(result[f"{name}_auc"], extra, curve)

    return compute


_CURVE_OPTIONS = {"steps": 20, "fill": 0.0, "normalisation": "auto", "per_eval": 4}
register(Metric(
    "deletion", "faithfulness", "lower", "2·steps target forwards for both curves (default 20 steps), shared with insertion",
    "Petsiuk et al. 2018, RISE (deletion/insertion); quantus.PixelFlipping", _curves_metric("deletion"), dict(_CURVE_OPTIONS),
    quantus="our raw curve equals PixelFlipping's with features_in_step = N/steps, its perturb_baseline = our fill (its "
            "'black' is the image minimum) and softmax=True for a classifier (normalisation probability), bar the clean "
            "point; our value is the area under the normalised curve (T − T_fill)/(T_clean − T_fill) on [0, 1], its "
            "optional AUC the raw curve with unit spacing.",
    summary='how fast the prediction falls when the most attributed voxels are removed first',
))
register(Metric(
    "insertion", "faithfulness", "higher", "shared with deletion (2·steps forwards for both)",
    "Petsiuk et al. 2018, RISE (deletion/insertion)", _curves_metric("insertion"), dict(_CURVE_OPTIONS),
    quantus="Quantus has no insertion; PixelFlipping run from the filled image with a perturb_func that puts the clean "
            "voxels back gives our raw curve (tested).",
    summary='how fast it comes back when they are put back first',
))


def _localisation_metric(case, options: dict):
    result = localisation(case.attribution[0], case.label, **options)
    return MetricResult(result.pop("ratio"), {**result, **options})


register(Metric(
    "localisation", "localisation", "higher", "0: the map against --label",
    "Arras et al. 2022 (relevance mass); Zhang et al. 2018 (pointing game); quantus.AttributionLocalisation",
    _localisation_metric, {"dilation": 2}, needs_label=True,
    quantus="share_inside equals AttributionLocalisation(positive_attributions=True, abs=False, normalise=False) "
            "(dilation 0); our value divides it by the label's share (Kohlbrenner et al. 2020), where Quantus's "
            "weighted=True multiplies by a size taken from the batch axis; pointing equals PointingGame bar ties at the maximum.",
    summary="the share of the map inside a label, over the label's share of the image",
))
