"""``esegeta evaluate --bundle A --bundle B …``: the same methods and metrics on the same images for
several models, as the paper's Tables 1–2 (methods × models, per metric) with confidence intervals,
per-image paired comparisons between models and a statement of which differences are significant.

Each bundle is evaluated by :func:`~esegeta_monai.apps.evaluate.evaluate` into ``out/<model>/`` (its own
tables and figures). Then, per metric and method:

- a **cell** per model: ``n`` images with a value, mean, sd and a percentile bootstrap confidence interval
  of the mean (:func:`~esegeta_monai.evaluation.statistics.bootstrap_ci`);
- a **pair** per two models: the per-image differences (first − second, images where both have a value)
  with the two-sided Wilcoxon signed-rank test, the bootstrap interval of the mean difference, the
  rank-biserial correlation and d_z (:func:`~esegeta_monai.evaluation.statistics.paired_comparison`);
  Holm's correction over **every** pair test of the run (all metrics × methods × model pairs: one family).

Outputs in ``out``: ``comparison.json`` (cells, pairs, the statement, the settings and seeds),
``comparison.csv`` (one row per pair), ``cells.csv`` (one row per cell), ``comparison.md`` (the tables
and the statistical methods in words) and ``comparison_<metric>.png`` (models × methods, means with
their intervals and each image's value).

Example:
    >>> from esegeta_monai.apps.compare import model_names
    >>> model_names(["/b/unet", "/c/unet", "/b/segresnet"])
    ['unet__b', 'unet__c', 'segresnet']
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path

import numpy as np

from esegeta_monai.apps.evaluate import evaluate
from esegeta_monai.evaluation.catalogue import lower_is_better
from esegeta_monai.errors import ConfigError
from esegeta_monai.evaluation.statistics import bootstrap_ci, holm, paired_comparison
from esegeta_monai.jobs.atomic import atomic_path, atomic_write_json, atomic_write_text
from esegeta_monai.jobs.naming import unique_names

__all__ = ["compare", "model_names", "summarise"]

TEST_DESCRIPTION = (
    "Two-sided Wilcoxon signed-rank test of the per-image differences (scipy.stats.wilcoxon): zero differences "
    "dropped (Wilcoxon's convention), tied |differences| given average ranks; exact null distribution with at most "
    "50 pairs and neither ties nor zeros, exact sign-flip permutation test with ties or zeros and at most 13 pairs, "
    "else the normal approximation with continuity correction (the `test` column names which)."
)


def model_names(roots) -> list[str]:
    """A unique, file-name-safe name per bundle folder (its folder name; equal names told apart)."""
    identities = [str(Path(r)) for r in roots]
    if len(set(identities)) < len(identities):
        raise ConfigError(f"a bundle is given twice: {identities}")
    names = unique_names({i: Path(i).name for i in identities})
    return [names[i] for i in identities]


def compare(bundles, images, methods, metrics, out, targets, alpha: float = 0.05, n_boot: int = 10_000,
            confidence: float = 0.95, figures: bool = True, seed: int = 0, **options) -> dict:
    """Evaluate every bundle of ``bundles`` (loaded :class:`~esegeta_monai.monai.bundle.Bundle`) on the same
    ``images`` with ``methods`` and ``metrics`` (``targets``: one per bundle); ``options`` go to
    :func:`~esegeta_monai.apps.evaluate.evaluate` (``labels``, ``window``, ``n_samples``, ``steps``,
    ``target_region``); ``seed`` seeds both the metrics and the bootstrap. Write the comparison to ``out``
    and return it (:func:`summarise`'s dictionary plus ``models`` and ``evaluations``)."""
    if len(bundles) < 2:
        raise ConfigError("a comparison needs at least two bundles")
    if len(targets) != len(bundles):
        raise ConfigError(f"{len(targets)} targets for {len(bundles)} bundles")
    out = Path(out)
    names = model_names([b.root for b in bundles])
    evaluations = {}
    for name, bundle, target in zip(names, bundles, targets):
        evaluations[name] = evaluate(bundle, images, methods, metrics, out / name, target=target, seed=seed,
                                     figures=figures, **options)
    result = summarise({n: e["rows"] for n, e in evaluations.items()}, alpha=alpha, n_boot=n_boot,
                       confidence=confidence, seed=seed)
    result["models"] = [{"name": n, "bundle": str(b.root), "target": t} for n, b, t in zip(names, bundles, targets)]
    result["images"] = [str(getattr(i, "image", i)) for i in images]  # a case of several files: its first
    result["settings"].update({"metric_seed": seed, "n_samples": options.get("n_samples"), "steps": options.get("steps"),
                               "target_region": options.get("target_region", "fixed"),
                               "metric_options": next(iter(evaluations.values()))["options"]})
    _write(out, result)
    if figures:
        _figures(out, result)
    result["evaluations"] = evaluations
    return result


def _values(rows_by_model) -> dict:
    """metric → method → model → image → value (finite values of rows that succeeded)."""
    values: dict = {}
    for model, rows in rows_by_model.items():
        for row in rows:
            if row["metric"] != "map" and lower_is_better(row["metric"], rows) is not None:  # descriptive metrics are not compared
                value = row["value"] if row["status"] == "ok" and row["value"] is not None else math.nan
                values.setdefault(row["metric"], {}).setdefault(row["method"], {}).setdefault(model, {})[row["image"]] = float(value)
    return values


def summarise(rows_by_model, alpha: float = 0.05, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Cells, pairwise comparisons with Holm-adjusted p-values and the statement, from each model's
    :func:`~esegeta_monai.apps.evaluate.evaluate` rows (model name → rows). Pairs are matched by image.

    >>> rows = lambda vs: [{"image": f"i{k}", "method": "saliency", "metric": "deletion", "value": v, "status": "ok"}
    ...                    for k, v in enumerate(vs)]
    >>> s = summarise({"a": rows([1, 2, 3, 4, 5, 6]), "b": rows([2, 4, 5, 7, 8, 9])}, n_boot=1000)
    >>> p = s["pairs"][0]
    >>> p["models"], round(p["mean_difference"], 4), p["p"], p["p_holm"], p["better"], p["significant"]
    (['a', 'b'], -2.3333, 0.03125, 0.03125, 'a', True)
    """
    values = _values(rows_by_model)
    models = list(rows_by_model)
    every_row = [row for rows in rows_by_model.values() for row in rows]
    lower = {metric: lower_is_better(metric, every_row) for metric in values}
    cells, pairs = [], []
    for metric, by_method in values.items():
        for method, by_model in by_method.items():
            for model in models:
                v = np.array([x for x in by_model.get(model, {}).values() if np.isfinite(x)])
                low, high = bootstrap_ci(v, n_boot=n_boot, confidence=confidence, seed=seed)
                cells.append({"metric": metric, "method": method, "model": model, "n": int(v.size),
                              "n_missing": len(by_model.get(model, {})) - int(v.size),
                              "mean": float(v.mean()) if v.size else math.nan,
                              "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan, "ci_low": low, "ci_high": high,
                              "values": dict(by_model.get(model, {}))})
            for first, second in itertools.combinations(models, 2):
                a, b = by_model.get(first, {}), by_model.get(second, {})
                shared = [i for i in a if i in b]
                comparison = paired_comparison([a[i] for i in shared], [b[i] for i in shared], n_boot=n_boot,
                                               confidence=confidence, seed=seed)
                pairs.append({"metric": metric, "method": method, "models": [first, second],
                              "lower_is_better": lower[metric], **comparison})
    tested = [p for p in pairs if p["p"] is not None]
    for p, adjusted in zip(tested, holm([p["p"] for p in tested]) if tested else []):
        p["p_holm"] = adjusted
        p["significant"] = adjusted <= alpha
    for p in pairs:
        p.setdefault("p_holm", None)
        p.setdefault("significant", False)
        diff = p["mean_difference"]
        p["better"] = None if not np.isfinite(diff) or diff == 0 else p["models"][(diff < 0) != p["lower_is_better"]]
    settings = {"alpha": alpha, "confidence": confidence, "n_boot": n_boot, "bootstrap_seed": seed,
                "bootstrap": "percentile bootstrap of the mean (numpy.random.default_rng(seed), resampling images)",
                "test": TEST_DESCRIPTION, "sided": "two-sided",
                "correction": "Holm (step-down), over every pair test of this comparison (all metrics x methods x "
                              f"model pairs with a non-zero difference: m = {len(tested)})",
                "difference": "first model minus second model, per image, images where both have a value"}
    return {"cells": cells, "pairs": pairs, "settings": settings, "statement": _statement(pairs, len(tested), alpha)}


def _statement(pairs, m: int, alpha: float) -> list[str]:
    """Plain sentences: which differences are significant after Holm, and why none could be if so."""
    significant = [p for p in pairs if p["significant"]]
    lines = [f"{len(significant)} of {m} paired differences are significant at alpha = {alpha} after Holm's "
             f"correction over all {m} tests (two-sided Wilcoxon signed-rank)."]
    for p in significant:
        a, b = p["models"]
        worse = b if p["better"] == a else a
        lines.append(f"{p['metric']}, {p['method']}: {p['better']} is better than {worse} (mean difference {a} - {b} = "
                     f"{p['mean_difference']:.4g}, {p['confidence']:.0%} CI [{p['ci_low']:.4g}, {p['ci_high']:.4g}], "
                     f"n = {p['n']}, p = {p['p']:.3g}, Holm p = {p['p_holm']:.3g}, r_rb = {p['rank_biserial']:.2f}).")
    hopeless = [p for p in pairs if p["p"] is not None and p["min_attainable_p"] * m > alpha]
    if hopeless:  # Holm's first step compares the smallest p with alpha / m
        fewest = min(p["n_nonzero"] for p in hopeless)
        lines.append(f"{len(hopeless)} of the tests cannot reach significance whatever the data: with n non-zero "
                     f"differences the smallest two-sided p is 2 / 2^n ({fewest} the fewest here: "
                     f"{2 / 2**fewest:.3g}), above alpha / m = {alpha / m:.3g}; 'not significant' there says nothing "
                     "about the size of the difference.")
    if pairs and min(p["n"] for p in pairs) < 25:  # measured in tests/test_compare.py
        lines.append(f"With {min(p['n'] for p in pairs)} images the percentile bootstrap intervals are narrower than "
                     "stated: for normal data a nominal 95% interval covered the true mean 76% of the time with 3 "
                     "images, 86% with 5, 89% with 10 and 92% with 25; read them as descriptive.")
    untested = [p for p in pairs if p["p"] is None]
    if untested:
        lines.append(f"{len(untested)} pairs have no non-zero difference (or no shared image) and are not tested.")
    return lines


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}g}"


def _lower(result, metric: str) -> bool:
    """Whether lower is better for ``metric`` in this comparison (as its pairs recorded it)."""
    return next((p["lower_is_better"] for p in result["pairs"] if p["metric"] == metric), lower_is_better(metric))


def _markdown(result) -> str:
    s, models = result["settings"], [m["name"] for m in result["models"]]
    described = ", ".join(f"`{m['name']}` ({m['bundle']}, target `{m['target']}`)" for m in result["models"])
    lines = ["# Model comparison", "", f"Models: {described}.",
             f"Images ({len(result['images'])}): {', '.join(Path(i).name for i in result['images'])}.", ""]
    for metric in dict.fromkeys(c["metric"] for c in result["cells"]):
        better = "lower" if _lower(result, metric) else "higher"
        lines += [f"## {metric} ({better} is better)", "",
                  f"Mean [{s['confidence']:.0%} bootstrap CI] (n images) per method and model.", "",
                  "| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for method in dict.fromkeys(c["method"] for c in result["cells"] if c["metric"] == metric):
            cells = {c["model"]: c for c in result["cells"] if c["metric"] == metric and c["method"] == method}
            lines.append(f"| {method} | " + " | ".join(
                f"{_fmt(c['mean'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] ({c['n']})" for c in (cells[m] for m in models)) + " |")
        lines.append("")
    lines += ["## Paired comparisons", "",
              "| metric | method | A − B | n | mean diff [CI] | median diff | W | test | p | p (Holm) | r_rb | d_z | better | significant |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in result["pairs"]:
        lines.append(f"| {p['metric']} | {p['method']} | {p['models'][0]} − {p['models'][1]} | {p['n']} | "
                     f"{_fmt(p['mean_difference'])} [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}] | {_fmt(p['median_difference'])} | "
                     f"{_fmt(p['statistic'])} | {p['test']} | {_fmt(p['p'], 3)} | {_fmt(p['p_holm'], 3)} | "
                     f"{_fmt(p['rank_biserial'], 2)} | {_fmt(p['d_z'], 2)} | {p['better'] or '—'} | {'yes' if p['significant'] else 'no'} |")
    lines += ["", "## Statement", "", *result["statement"], "", "## Methods", "",
              f"- Test: {s['test']} W is min(R+, R−).", f"- Sides: {s['sided']}; alpha = {s['alpha']}.",
              f"- Multiple comparisons: {s['correction']}.",
              f"- Intervals: {s['bootstrap']}, {s['n_boot']} resamples, seed {s['bootstrap_seed']}; cells: of the mean, "
              "pairs: of the mean difference.",
              "- Effect sizes: r_rb, the matched-pairs rank-biserial correlation (R+ − R−) / (R+ + R−), zeros dropped; "
              "d_z, the mean difference over the sd of the differences (ddof 1).",
              f"- Differences: {s['difference']}; n counts those pairs, a failed or non-finite value drops its image.",
              f"- Metrics: seed {s['metric_seed']} (noise draws, randomisation), samples {s['n_samples'] or 'default'}, "
              f"deletion/insertion steps {s['steps']}, randomisation target region {s['target_region']}.", ""]
    return "\n".join(lines)


def _finite(value):
    """``value`` with every non-finite float as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write(out: Path, result) -> None:
    atomic_write_json(out / "comparison.json", _finite(result))
    for name, records, columns in (
        ("comparison.csv", result["pairs"], ["metric", "method", "model_a", "model_b", "n", "n_dropped", "mean_a", "mean_b",
                                             "mean_difference", "ci_low", "ci_high", "median_difference", "statistic", "test",
                                             "n_nonzero", "p", "p_holm", "min_attainable_p", "significant", "better",
                                             "rank_biserial", "d_z", "lower_is_better"]),
        ("cells.csv", result["cells"], ["metric", "method", "model", "n", "n_missing", "mean", "sd", "ci_low", "ci_high"]),
    ):
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            if "models" in record:
                record = {**record, "model_a": record["models"][0], "model_b": record["models"][1]}
            writer.writerow(record)
        atomic_write_text(out / name, table.getvalue())
    atomic_write_text(out / "comparison.md", _markdown(result))


def _figures(out: Path, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["name"] for m in result["models"]]
    for metric in dict.fromkeys(c["metric"] for c in result["cells"]):
        methods = list(dict.fromkeys(c["method"] for c in result["cells"] if c["metric"] == metric))
        fig, ax = plt.subplots(figsize=(max(5.0, 2.4 + 1.6 * len(methods) * max(1, len(models) / 3)), 3.6))
        width = 0.8 / len(models)
        for k, model in enumerate(models):
            cells = {c["method"]: c for c in result["cells"] if c["metric"] == metric and c["model"] == model}
            x = np.arange(len(methods)) - 0.4 + width * (k + 0.5)
            mean = np.array([cells[m]["mean"] for m in methods])
            error = np.array([[mean[i] - cells[m]["ci_low"], cells[m]["ci_high"] - mean[i]] for i, m in enumerate(methods)]).T
            ax.errorbar(x, mean, yerr=error, fmt="o", capsize=3, color=f"C{k}", label=f"{model}")
            for i, method in enumerate(methods):
                per_image = [v for v in cells[method]["values"].values() if np.isfinite(v)]
                ax.scatter([x[i] + width * 0.25] * len(per_image), per_image, s=8, color=f"C{k}", alpha=0.35, linewidths=0)
        n = sorted({c["n"] for c in result["cells"] if c["metric"] == metric})
        ax.set_xticks(range(len(methods)), methods, fontsize=8)
        ax.set_ylabel(metric)
        better = "lower" if _lower(result, metric) else "higher"
        ax.set_title(f"{metric} ({better} is better)\nmean with {result['settings']['confidence']:.0%} bootstrap CI; "
                     f"dots: images (n = {', '.join(map(str, n))})", fontsize=8)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        with atomic_path(out / f"comparison_{metric}.png") as temporary:
            fig.savefig(temporary, dpi=120, format="png")
        plt.close(fig)
