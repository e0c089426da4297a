"""``esegeta evaluate``: every metric for every method on a bundle's images, as tables, a ranking
and figures.

For each image or case of several files (``--image KEY=FILE`` pairs, as ``esegeta explain``
takes them; loaded through the bundle's preprocessing) and method, the map of the target is
computed once, exactly through the bundle's windows; then each asked metric:

==============  ===========================================================  ==============
metric          value reported                                               better
==============  ===========================================================  ==============
infidelity      Captum's infidelity, ``normalize=True`` (scale-free;          lower
                ``n_samples`` noise draws, ``seed``)
sensitivity     Captum's sensitivity_max (``n_samples`` draws, ``seed``)      lower
deletion        AUC of the deletion curve, (T − T_fill) / (T_clean − T_fill)  lower
                (T a classifier's probability, else the target's score)
insertion       AUC of the insertion curve, normalised the same way          higher
localisation    share of positive attribution inside the dilated label /     higher
                the label's share (needs ``--label``); also rank AUC
randomisation   rank correlation of |maps| after cascading randomisation of  lower
                every layer (its curve is in the JSON and the figure)
==============  ===========================================================  ==============

Randomisation explains each randomised model with the target's region (``argmax:``, ``otsu:``)
``target_region="fixed"`` from the trained model's prediction (default: the same function of
the output at every step) or ``"recomputed"`` from each model's own
(:func:`~esegeta_monai.evaluation.randomisation.explainer_randomisation`); the choice is in
every row, in ``evaluation.json`` (``target_region``) and in the figures' titles, and each step
of the curve records the region's size and its Dice overlap with the trained model's region.

Infidelity is reported with Captum's ``normalize=True`` (the map rescaled by its best ``β``),
as the ranking compares methods whose maps have different scales; each row and ranking entry
says ``normalize``, and ``evaluation.json`` ``infidelity_normalize``. Deletion and insertion
rows say their ``normalisation`` (``probability`` or ``score``); an image whose clean and
filled values are equal has no value there (status ``undefined``, the reason in ``error``).
:func:`metric_table` (``esegeta evaluate --list-metrics``) lists each metric's direction, cost
and reference.

Outputs in ``out``: ``evaluation.csv`` (one row per image, method and metric, with the sample
count and seed), ``evaluation.json`` (the same plus curves), ``ranking.json`` (per metric, the
methods from best to worst by their mean over images) and, with matplotlib, figures
(``randomisation_<image>_<method>.png``: the map at each step and the similarity curves, as the
paper's Figure 9; ``deletion_insertion.png``). A failing method or metric is recorded and the
others go on.

Example:
    >>> from esegeta_monai.apps.evaluate import METRICS
    >>> sorted(METRICS)
    ['deletion', 'infidelity', 'insertion', 'localisation', 'randomisation', 'sensitivity']
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from esegeta_monai.apps.inputs import ImageInput
from esegeta_monai.errors import ConfigError, TargetError
from esegeta_monai.explainer import Explainer
from esegeta_monai.jobs.atomic import atomic_path, atomic_write_json, atomic_write_text
from esegeta_monai.jobs.naming import image_stem, unique_names
from esegeta_monai.jobs.plan import identity_of
from esegeta_monai.evaluation.faithfulness import deletion_insertion, localisation
from esegeta_monai.evaluation.randomisation import TARGET_REGIONS, explainer_randomisation
from esegeta_monai.evaluation.robustness import infidelity, sensitivity
from esegeta_monai.maps import error_text

__all__ = ["METRICS", "METRIC_INFO", "evaluate", "metric_table"]

logger = logging.getLogger(__name__)

#: metric → whether a lower value is better
METRICS = {"infidelity": True, "sensitivity": True, "deletion": True, "insertion": False, "localisation": False,
           "randomisation": True}

#: metric → (cost in forwards per image, as a formula of the settings; reference), for ``--list-metrics``
METRIC_INFO = {
    "infidelity": ("1 + n_samples target forwards (--samples, default 16); through windows only those a draw touches",
                   "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations; captum.metrics.infidelity"),
    "sensitivity": ("n_samples explanations (--samples, default 10), each the method's own forwards and backwards",
                    "Yeh et al. 2019; captum.metrics.sensitivity_max"),
    "deletion": ("2·steps target forwards for both curves (--steps, default 20), shared with insertion",
                 "Petsiuk et al. 2018, RISE (deletion/insertion)"),
    "insertion": ("shared with deletion (2·steps forwards for both)", "Petsiuk et al. 2018, RISE (deletion/insertion)"),
    "localisation": ("0: the map against --label", "Arras et al. 2022 (relevance mass); Zhang et al. 2018 (pointing game)"),
    "randomisation": ("L + 1 explanations, L the parameterised layers (+ 1 prediction for a region target; "
                      "+ L more with --target-region recomputed)",
                      "Adebayo et al. 2018, Sanity Checks for Saliency Maps"),
}


def metric_table() -> str:
    """Each metric with its direction, cost (forwards per image) and reference, one per line.

    Example:
        >>> metric_table().splitlines()[1].split()[:2]
        ['infidelity', 'lower']
    """
    width = max(len(m) for m in METRICS)
    lines = [f"{'metric'.ljust(width)}  better  cost (forwards per image) | reference"]
    for metric, lower in METRICS.items():
        cost, reference = METRIC_INFO.get(metric, ("?", "?"))
        lines.append(f"{metric.ljust(width)}  {'lower ' if lower else 'higher'}  {cost} | {reference}")
    return "\n".join(lines)


def evaluate(bundle, images, methods, metrics, out, target: str, labels=(), window=None, n_samples=None, seed: int = 0,
             steps: int = 20, figures: bool = True, target_region: str = "fixed") -> dict:
    """Run ``metrics`` for ``methods`` (:class:`~esegeta_monai.apps.config.MethodSpec`) on ``images``
    (paths, or :class:`~esegeta_monai.apps.inputs.ImageInput` cases of several files: a case is
    named, and its rows' ``image`` is, its first image file);
    write the tables and figures to ``out``; return ``{"rows": …, "ranking": …, "curves": …,
    "target_region": …}`` (``target_region``: of the randomisation metric, ``fixed`` or ``recomputed``)."""
    from esegeta_monai.monai.io import check_output_dir, load_for_explanation
    from esegeta_monai.monai.io.masks import load_mask_like

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if target_region not in TARGET_REGIONS:
        raise ConfigError(f"target_region must be one of {', '.join(TARGET_REGIONS)}, got {target_region!r}")
    if "localisation" in metrics and len(labels) != len(images):
        raise ConfigError(f"localisation needs one --label per --image ({len(labels)} labels for {len(images)} images)")
    out = check_output_dir(out)
    window = bundle.window.updated(**(window or {})).as_dict()
    cases = [i if isinstance(i, ImageInput) else ImageInput(str(i)) for i in images]
    names = unique_names({identity_of(c.image): image_stem(c.image) for c in cases})
    rows, curves = [], {}
    for index, case in enumerate(cases):
        image = case.image
        data = load_for_explanation(image, bundle.preprocessing, bundle.image_key, expected_channels=bundle.in_channels,
                                    expected_spatial_dims=bundle.spatial_dims, files=case.files)
        x = data[bundle.image_key][None].as_tensor()
        label = None
        if "localisation" in metrics:  # a label of another grid is refused before any map is computed
            try:
                label = load_mask_like(labels[index], data[bundle.image_key])
            except TargetError as error:
                raise TargetError(f"--label {labels[index]} for --image {image}: {error}") from None
        for spec in methods:
            explainer = Explainer(bundle.network, spec.name, target, **window, **spec.options)
            shared: dict = {}  # results two metrics share (deletion and insertion: one pair of curves)
            try:
                attribution = explainer(x)
            except Exception as error:  # one failing method never stops the others
                rows.append(_row(image, spec.label, "map", None, error=error_text(error)))
                continue
            for metric in metrics:
                start = time.monotonic()
                try:
                    value, extra, curve = _metric(metric, explainer, x, attribution, label, n_samples, seed, steps, target_region,
                                                  shared)
                    rows.append(_row(image, spec.label, metric, value, seconds=time.monotonic() - start, **extra))
                    if curve is not None:
                        curves.setdefault(metric, {})[f"{names[identity_of(image)]}:{spec.label}"] = curve
                except Exception as error:
                    logger.debug("metric failed", exc_info=True)
                    rows.append(_row(image, spec.label, metric, None, error=error_text(error)))
    ranking = _ranking(rows)
    _write(out, rows, curves, ranking, target_region)
    if figures:
        _figures(out, curves, target_region)
    return {"rows": rows, "ranking": ranking, "curves": curves, "target_region": target_region}


def _metric(metric, explainer, x, attribution, label, n_samples, seed, steps, target_region, shared=None):
    """``(value, extra columns, curve or None)`` of one metric (``shared``: results of this map's other metrics)."""
    shared = {} if shared is None else shared
    if metric == "infidelity":  # normalize: the ranking compares maps of different scales
        result = infidelity(explainer, x, attribution, n_samples=n_samples or 16, seed=seed, normalize=True)
        return result.pop("infidelity"), result, None
    if metric == "sensitivity":
        result = sensitivity(explainer, x, n_samples=n_samples or 10, seed=seed)
        return result.pop("sensitivity"), result, None
    if metric in ("deletion", "insertion"):
        if "curves" not in shared:
            shared["curves"] = deletion_insertion(explainer, x, attribution, steps=steps)
        result = shared["curves"]
        extra = {"steps": steps, "normalisation": result["normalisation"]}
        if result["flag"]:  # undefined normalisation: no value, said in the row
            extra.update(status="undefined", error=result["flag"])
        curve = {"fractions": result["fractions"], "values": result[metric], "raw": result[f"{metric}_raw"],
                 "normalisation": result["normalisation"]}
        return None if result["flag"] else result[f"{metric}_auc"], extra, curve
    if metric == "localisation":
        result = localisation(attribution[0], label)
        return result.pop("ratio"), result, None
    steps_ = explainer_randomisation(explainer, x, target_region, seed=seed)
    scores = [{k: v for k, v in s.items() if k != "map"} for s in steps_]
    extra = {"seed": seed, "layers": len(scores) - 1, "target_region": target_region}
    if scores[-1]["region_dice"] is not None:  # how far the region moved by the last step (1.0 when fixed)
        extra["region_dice"] = scores[-1]["region_dice"][0]
    return scores[-1]["spearman_abs"], extra, {"steps": scores, "slices": [_central_slice(s["map"]) for s in steps_]}


def _central_slice(volume: torch.Tensor) -> list:
    array = np.abs(np.squeeze(volume.detach().cpu().float().numpy()))
    while array.ndim > 3:  # channels (and batch) summed
        array = array.sum(0)
    if array.ndim == 3:
        array = array[:, :, array.shape[2] // 2]
    return array.tolist()


def _row(image, method, metric, value, seconds=0.0, error=None, status=None, **extra) -> dict:
    return {"image": str(image), "method": method, "metric": metric, "value": value, "seconds": round(seconds, 3),
            "status": status or ("ok" if error is None else "failed"), "error": error, **extra}


#: row settings that define a metric's number, repeated in its ranking entries
RANKING_SETTINGS = ("normalize", "normalisation")


def _ranking(rows) -> dict:
    """Per metric, the methods from best to worst by their mean value over the images."""
    ranking = {}
    for metric, lower_is_better in METRICS.items():
        values: dict[str, list[float]] = {}
        for row in rows:
            if row["metric"] == metric and row["value"] is not None and np.isfinite(row["value"]):
                values.setdefault(row["method"], []).append(float(row["value"]))
        if values:
            means = {method: float(np.mean(v)) for method, v in values.items()}
            ordered = sorted(means, key=means.get, reverse=not lower_is_better)
            ranking[metric] = [{"method": m, "mean": means[m], **_settings(rows, metric, m)} for m in ordered]
    return ranking


def _settings(rows, metric: str, method: str) -> dict:
    """The :data:`RANKING_SETTINGS` of a method's rows of ``metric`` (a list where they differ)."""
    found: dict[str, list] = {}
    for row in rows:
        if row["metric"] == metric and row["method"] == method:
            for key in RANKING_SETTINGS:
                if key in row and row[key] not in found.setdefault(key, []):
                    found[key].append(row[key])
    return {key: values[0] if len(values) == 1 else values for key, values in found.items() if values}


def _write(out: Path, rows, curves, ranking, target_region: str) -> None:
    columns = ["image", "method", "metric", "value", "status", "seconds", "n_samples", "seed", "error"]
    extra = sorted({k for row in rows for k in row} - set(columns))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns + extra)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    atomic_write_text(out / "evaluation.csv", table.getvalue())
    atomic_write_json(out / "evaluation.json", {"target_region": target_region, "infidelity_normalize": True, "rows": rows,
                                                "curves": curves})
    atomic_write_json(out / "ranking.json", ranking)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120, format="png")


def _figures(out: Path, curves, target_region: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        logger.warning("matplotlib is not installed: no figures")
        return
    for key, curve in curves.get("randomisation", {}).items():
        steps = curve["steps"]
        shown = list(range(0, len(steps), max(1, len(steps) // 7)))[:8]
        fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2.2 * (len(shown) + 1) + 2, 2.6))
        for ax, i in zip(axes, shown):
            ax.imshow(np.asarray(curve["slices"][i]).T, cmap="hot", origin="lower")
            ax.set_title(steps[i]["layer"][-18:], fontsize=6)
            ax.axis("off")
        for name in ("spearman_abs", "spearman", "ssim", "topk_overlap"):
            axes[-1].plot([s[name] for s in steps], label=name)
        axes[-1].set_xlabel("layers randomised (output → input)")
        axes[-1].legend(fontsize=6)
        fig.suptitle(f"cascading randomisation — {key} — target region {target_region}", fontsize=8)
        fig.tight_layout()
        image, method = key.rsplit(":", 1)
        _save(fig, out / f"randomisation_{image}_{method}.png")
        plt.close(fig)
    if "deletion" in curves or "insertion" in curves:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, metric in zip(axes, ("deletion", "insertion")):
            for key, curve in curves.get(metric, {}).items():
                ax.plot(curve["fractions"], curve["values"], label=key)
            ax.set_title(metric)
            ax.set_xlabel("fraction of voxels")
            ax.legend(fontsize=6)
        fig.tight_layout()
        _save(fig, out / "deletion_insertion.png")
        plt.close(fig)
