"""``esegeta evaluate``: every metric for every method on a bundle's images, as tables, a ranking
and figures.

For each image or case of several files (``--image KEY=FILE`` pairs, as ``esegeta explain``
takes them; loaded through the bundle's preprocessing) and method, the map of the target is
computed once, exactly through the bundle's windows; then each asked metric of the catalogue
(:mod:`esegeta_monai.evaluation.catalogue`, ``docs/metrics.md``): faithfulness (deletion,
insertion, infidelity, region perturbation, IROF, faithfulness correlation, ROAD), robustness
(sensitivity, average sensitivity, relative input/output stability), localisation against a
``--label`` (localisation, relevance rank/mass accuracy, top-k intersection, per-label share),
complexity (sparseness, complexity), randomisation (cascading, smooth and efficient MPRT, random
logit) and axioms (completeness).

Randomisation explains each randomised model with the target's region (``argmax:``, ``otsu:``)
``target_region="fixed"`` from the trained model's prediction (default: the same function of
the output at every step) or ``"recomputed"`` from each model's own
(:func:`~esegeta_monai.evaluation.randomisation.explainer_randomisation`); the choice is in
every row, in ``evaluation.json`` (``target_region``) and in the figures' titles, and each step
of the curve records the region's size and its Dice overlap with the trained model's region.

The metrics come from the catalogue (:mod:`esegeta_monai.evaluation.catalogue`; ``esegeta
evaluate --list-metrics`` prints each with its family, direction, cost and reference). Each has
options with defaults (``options``: metric → its options; ``n_samples``, ``steps`` and
``target_region`` set the option of that name of every asked metric that has one) and every
row records the options that define its number. A metric that needs a ground truth
(localisation family) takes the ``--label`` of its image; a metric whose value is undefined on
an image (e.g. deletion where the clean and filled targets are equal) has no value there
(status ``undefined``, the reason in ``error``). Descriptive metrics (``better`` None) are
reported and not ranked.

Outputs in ``out``: ``evaluation.csv`` (one row per image, method and metric, with its options,
sample count, seed and direction ``better``), ``evaluation.json`` (the same plus curves and each
metric's ``options``), ``ranking.json`` (per ranked metric, the methods from best to worst by
their mean over images), ``label_shares.csv`` and ``label_shares_cohort.csv`` (with
``label_share``: per image, method and structure; per method and structure over the images)
and, with matplotlib, figures (``randomisation_<image>_<method>.png`` and
``smooth_mprt_<image>_<method>.png``: the map at each step and the similarity curves, as the
paper's Figure 9; ``deletion_insertion.png``; ``curves.png``: the other curve metrics). A failing
method or metric is recorded and the others go on.

Example:
    >>> from esegeta_monai.apps.evaluate import METRICS
    >>> {"deletion", "infidelity", "insertion", "localisation", "randomisation", "sensitivity"} <= set(METRICS)
    True
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
from esegeta_monai.evaluation import METRICS, MetricCase, metric_options, metric_table
from esegeta_monai.evaluation.catalogue import lower_is_better
from esegeta_monai.evaluation.randomisation import TARGET_REGIONS
from esegeta_monai.maps import error_text

__all__ = ["METRICS", "evaluate", "metric_table", "resolve_options", "label_share_tables"]

logger = logging.getLogger(__name__)

#: command-line settings that set the option of the same name of every metric that has one
SHARED_OPTIONS = ("n_samples", "steps", "target_region")


def resolve_options(metrics, options: dict | None = None, **shared) -> dict:
    """Each metric's options: its defaults, then ``shared`` settings (:data:`SHARED_OPTIONS`, None
    for unset) where it has an option of that name, then ``options[metric]``; unknown metrics
    or options are refused.

    Example:
        >>> resolve_options(["deletion", "infidelity"], {"infidelity": {"noise_std": 0.2}}, steps=8)["deletion"]["steps"]
        8
    """
    unknown = [m for m in metrics if m not in METRICS]
    unknown += [m for m in (options or {}) if m not in metrics]
    if unknown:
        raise ConfigError(f"unknown or unasked metric(s) {unknown}; choose from {', '.join(METRICS)} (--list-metrics)")
    resolved = {}
    for metric in metrics:
        given = {k: v for k, v in shared.items() if v is not None and k in METRICS[metric].options}
        resolved[metric] = metric_options(metric, {**given, **(options or {}).get(metric, {})})
    return resolved


def evaluate(bundle, images, methods, metrics, out, target: str, labels=(), window=None, n_samples=None, seed: int = 0,
             steps: int | None = None, figures: bool = True, target_region: str = "fixed", options: dict | None = None) -> dict:
    """Run ``metrics`` for ``methods`` (:class:`~esegeta_monai.apps.config.MethodSpec`) on ``images``
    (paths, or :class:`~esegeta_monai.apps.inputs.ImageInput` cases of several files: a case is
    named, and its rows' ``image`` is, its first image file);
    write the tables and figures to ``out``; return ``{"rows": …, "ranking": …, "curves": …,
    "target_region": …, "options": …}`` (``target_region``: of the randomisation metrics, ``fixed`` or
    ``recomputed``; ``options``: each metric's options as used)."""
    from esegeta_monai.monai.io import check_output_dir, load_for_explanation
    from esegeta_monai.monai.io.masks import load_label_values_like

    if target_region not in TARGET_REGIONS:
        raise ConfigError(f"target_region must be one of {', '.join(TARGET_REGIONS)}, got {target_region!r}")
    resolved = resolve_options(metrics, options, n_samples=n_samples, steps=steps, target_region=target_region)
    needs_label = [m for m in metrics if METRICS[m].needs_label]
    if needs_label and len(labels) != len(images):
        raise ConfigError(f"{', '.join(needs_label)} need(s) one --label per --image ({len(labels)} labels for {len(images)} images)")
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
        if needs_label:  # a label of another grid is refused before any map is computed
            try:
                label = load_label_values_like(labels[index], data[bundle.image_key])
            except TargetError as error:
                raise TargetError(f"--label {labels[index]} for --image {image}: {error}") from None
        for spec in methods:
            explainer = Explainer(bundle.network, spec.name, target, **window, **spec.options)
            try:
                attribution = explainer(x)
            except Exception as error:  # one failing method never stops the others
                rows.append(_row(image, spec.label, "map", None, error=error_text(error)))
                continue
            case_ = MetricCase(explainer, x, attribution, label, seed)  # its shared dict: results two metrics share
            for metric in metrics:
                start = time.monotonic()
                try:
                    result = METRICS[metric].compute(case_, dict(resolved[metric]))
                    rows.append(_row(image, spec.label, metric, result.value, seconds=time.monotonic() - start,
                                     error=result.error, status=result.status, better=METRICS[metric].direction(resolved[metric]),
                                     **{**resolved[metric], **result.extra}))
                    if result.curve is not None:
                        curves.setdefault(metric, {})[f"{names[identity_of(image)]}:{spec.label}"] = result.curve
                except Exception as error:
                    logger.debug("metric failed", exc_info=True)
                    rows.append(_row(image, spec.label, metric, None, error=error_text(error)))
    ranking = _ranking(rows)
    _write(out, rows, curves, ranking, target_region, resolved)
    if figures:
        _figures(out, curves, target_region)
    return {"rows": rows, "ranking": ranking, "curves": curves, "target_region": target_region, "options": resolved}


def _row(image, method, metric, value, seconds=0.0, error=None, status=None, **extra) -> dict:
    return {"image": str(image), "method": method, "metric": metric, "value": value, "seconds": round(seconds, 3),
            "status": status or ("ok" if error is None else "failed"), "error": error, **extra}


#: row settings that define a metric's number, repeated in its ranking entries
RANKING_SETTINGS = ("better", "normalize", "normalisation", "target_region")


def _ranking(rows) -> dict:
    """Per metric, the methods from best to worst by their mean value over the images."""
    ranking = {}
    for metric in METRICS:
        lower = lower_is_better(metric, rows)
        if lower is None:  # descriptive: reported, not ranked
            continue
        values: dict[str, list[float]] = {}
        for row in rows:
            if row["metric"] == metric and row["value"] is not None and np.isfinite(row["value"]):
                values.setdefault(row["method"], []).append(float(row["value"]))
        if values:
            means = {method: float(np.mean(v)) for method, v in values.items()}
            ordered = sorted(means, key=means.get, reverse=not lower)
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


def _write(out: Path, rows, curves, ranking, target_region: str, options: dict) -> None:
    columns = ["image", "method", "metric", "value", "status", "seconds", "n_samples", "seed", "error"]
    extra = sorted({k for row in rows for k in row} - set(columns))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns + extra)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    atomic_write_text(out / "evaluation.csv", table.getvalue())
    normalize = options.get("infidelity", {}).get("normalize")
    atomic_write_json(out / "evaluation.json", {"target_region": target_region, "infidelity_normalize": normalize, "options": options,
                                                "rows": rows, "curves": curves})
    atomic_write_json(out / "ranking.json", ranking)
    shares = label_share_tables(rows)
    if shares is not None:
        atomic_write_text(out / "label_shares.csv", shares[0])
        atomic_write_text(out / "label_shares_cohort.csv", shares[1])


def label_share_tables(rows) -> tuple[str, str] | None:
    """The ``label_share`` rows as two CSV tables: per image, method and structure (its share of
    the positive and of the absolute attribution, its share of the voxels, their ratio); and per
    method and structure over the cohort (means over the images, with their count). None
    without such rows.

    Example:
        >>> rows = [{"image": f"i{k}.nii.gz", "method": "saliency", "metric": "label_share", "status": "ok",
        ...          "shares": {"0": {"share": 0.2 + k / 10, "abs_share": 0.3, "voxel_share": 0.9, "ratio": 0.3},
        ...                     "1": {"share": 0.8 - k / 10, "abs_share": 0.7, "voxel_share": 0.1, "ratio": 7.0}}}
        ...         for k in range(2)]
        >>> print(label_share_tables(rows)[1].splitlines()[1])
        saliency,0,2,0.25,0.3,0.9,0.3
    """
    found = [r for r in rows if r.get("metric") == "label_share" and r.get("status") == "ok" and r.get("shares")]
    if not found:
        return None
    fields = ("share", "abs_share", "voxel_share", "ratio")
    per_image = io.StringIO(newline="")
    writer = csv.writer(per_image, lineterminator="\n")
    writer.writerow(["image", "method", "label", *fields])
    cohort: dict[tuple[str, str], list[dict]] = {}
    for row in found:
        for label, values in row["shares"].items():
            writer.writerow([row["image"], row["method"], label, *[values.get(f) for f in fields]])
            cohort.setdefault((row["method"], label), []).append(values)
    summary = io.StringIO(newline="")
    writer = csv.writer(summary, lineterminator="\n")
    writer.writerow(["method", "label", "images", *[f"mean_{f}" for f in fields]])
    for (method, label), values in cohort.items():
        means = [float(np.nanmean([v.get(f, np.nan) for v in values])) for f in fields]
        writer.writerow([method, label, len(values), *[round(m, 6) for m in means]])
    return per_image.getvalue(), summary.getvalue()


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
    layered = {(metric, key): curve for metric, by_key in curves.items() for key, curve in by_key.items()
               if isinstance(curve.get("steps"), list) and curve.get("slices")}  # randomisation: maps per layer
    for (metric, key), curve in layered.items():
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
        fig.suptitle(f"{metric} — {key} — target region {target_region}", fontsize=8)
        fig.tight_layout()
        image, method = key.rsplit(":", 1)
        _save(fig, out / f"{metric}_{image}_{method}.png")
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
    _curve_figure(plt, out, {m: c for m, c in curves.items() if m not in ("deletion", "insertion")})


#: the x axis of a curve: its key in the curve dict, and the axis label
CURVE_AXES = (("fractions", "fraction removed (of the voxels or regions)"), ("percentages", "percent of the voxels removed"),
              ("steps", "regions perturbed"))


def _curve_figure(plt, out: Path, curves: dict) -> None:
    """``curves.png``: a panel per curve metric (values against their x axis, one line per image and
    method); layered curves (randomisation) have their own figures."""
    panels = {}
    for metric, by_key in curves.items():
        for key, curve in by_key.items():
            axis = next(((x, label) for x, label in CURVE_AXES if isinstance(curve.get(x), list)
                         and len(curve[x]) == len(curve.get("values") or []) and not isinstance(curve[x][0], dict)), None)
            if axis is not None:
                panels.setdefault(metric, (axis[1], {}))[1][key] = (curve[axis[0]], curve["values"])
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (metric, (label, lines)) in zip(axes[0], panels.items()):
        for key, (x, y) in lines.items():
            ax.plot(x, y, label=key)
        ax.set_title(metric)
        ax.set_xlabel(label)
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, out / "curves.png")
    plt.close(fig)
