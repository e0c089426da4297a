"""The metric catalogue: every metric ``esegeta evaluate`` offers, with its direction, cost,
reference, options and how our definition relates to Quantus's.

A :class:`Metric` computes one number (and optional extra columns and a curve) for one map of
one image: its ``compute(case, options)`` takes a :class:`MetricCase` (the explainer with its
network, method, target and windows; the image; the map; the ground-truth label; the seed; a
``shared`` dict for results two metrics share) and the metric's options (its defaults updated
by the user's), and returns a :class:`MetricResult`. Metrics register themselves in
:data:`METRICS` by :func:`register`, from the module that defines them.

Example:
    >>> from esegeta_monai.evaluation.catalogue import METRICS, metric_options
    >>> METRICS["deletion"].better, METRICS["deletion"].family
    ('lower', 'faithfulness')
    >>> metric_options("deletion", {"steps": 8})["steps"]
    8
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from esegeta_monai.errors import ConfigError

__all__ = ["Metric", "MetricCase", "MetricResult", "METRICS", "FAMILIES", "register", "metric_options", "metric_table",
           "lower_is_better"]

#: the families, in the order the table lists them
FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiom")


@dataclass
class MetricCase:
    """What a metric sees of one map.

    Attributes:
        explainer: the :class:`~esegeta_monai.explainer.Explainer` that made the map (network,
            method, target, windows); perturbed targets go through its windows
            (:class:`~esegeta_monai.core.windowed_target.WindowedTarget`).
        inputs: the image, ``(1, C, *spatial)``.
        attribution: the map, ``(1, C', *spatial)``.
        label: the ground-truth label on the image grid (``(*spatial)``, integer labels, 0
            outside), or None where none was given.
        seed: the run's seed; every random draw of a metric derives from it.
        shared: results of this map's other metrics (e.g. deletion and insertion share one pair of curves).
    """

    explainer: object
    inputs: torch.Tensor
    attribution: torch.Tensor
    label: np.ndarray | None = None
    seed: int = 0
    shared: dict = field(default_factory=dict)


@dataclass
class MetricResult:
    """One metric's value for one map: ``value`` (None where undefined, with ``status`` and
    ``error`` saying why), ``extra`` columns (sample count, seed, settings), an optional ``curve``
    for the JSON and the figures."""

    value: float | None
    extra: dict = field(default_factory=dict)
    curve: dict | None = None
    status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Metric:
    """A metric of the catalogue.

    Attributes:
        name: its name on the command line.
        family: one of :data:`FAMILIES`.
        better: ``"lower"``, ``"higher"``, or None for a descriptive value that is not ranked.
        cost: forwards (or explanations) per image, as a formula of the options.
        reference: the paper, and the Quantus class it matches where there is one.
        compute: ``compute(case, options) -> MetricResult``.
        options: the options and their defaults; the user's options must be among them.
        needs_label: whether it needs a ground-truth ``--label``.
        quantus: how the definition relates to Quantus's (empty where Quantus has no counterpart).
        summary: what it says, in plain words (the GUI's line; defaults to nothing).
        flipped_by: options under which the direction flips, e.g. ``{"order": "lerf"}`` (least
            relevant first: a faithful map keeps the target *high*).
    """

    name: str
    family: str
    better: str | None
    cost: str
    reference: str
    compute: Callable[[MetricCase, dict], MetricResult]
    options: dict = field(default_factory=dict)
    needs_label: bool = False
    quantus: str = ""
    summary: str = ""
    flipped_by: dict = field(default_factory=dict)

    def direction(self, options: dict | None = None) -> str | None:
        """``better`` under ``options`` (flipped where :attr:`flipped_by` says so)."""
        flipped = any((options or {}).get(key) == value for key, value in self.flipped_by.items())
        return {"lower": "higher", "higher": "lower"}.get(self.better) if flipped else self.better

    def describe(self) -> dict:
        """Everything but ``compute``, as JSON-ready values (the GUI's ``/api/metrics``)."""
        return {"name": self.name, "family": self.family, "better": self.better, "cost": self.cost, "reference": self.reference,
                "options": dict(self.options), "needs_label": self.needs_label, "quantus": self.quantus, "summary": self.summary,
                "flipped_by": dict(self.flipped_by)}


#: name → :class:`Metric`, in registration order
METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (a name registered twice is an error)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    if metric.family not in FAMILIES or metric.better not in ("lower", "higher", None):
        raise ValueError(f"metric {metric.name!r}: family {metric.family!r} or better {metric.better!r} is not known")
    METRICS[metric.name] = metric
    return metric


def lower_is_better(name: str, rows=()) -> bool | None:
    """True, False, or None for a descriptive metric: the ``better`` its ``rows`` record (the
    direction under the options they ran with), else the catalogue's default."""
    recorded = [row["better"] for row in rows if row.get("metric") == name and "better" in row]
    better = recorded[0] if recorded else METRICS[name].better
    return None if better is None else better == "lower"


def metric_options(name: str, given: dict | None = None) -> dict:
    """The options of metric ``name``: its defaults updated by ``given``; an option it does not
    have is refused, naming those it has."""
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(METRICS)} (esegeta evaluate --list-metrics)")
    defaults = METRICS[name].options
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        have = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise ConfigError(f"metric {name!r} has no option {', '.join(unknown)}; its options: {have}")
    return {**defaults, **(given or {})}


def metric_table(verbose: bool = False) -> str:
    """Each metric with its family, direction, cost (forwards per image) and reference, one per
    line (``verbose``: then, indented, its options with their defaults and how it relates to Quantus).

    Example:
        >>> from esegeta_monai.evaluation import metric_table
        >>> metric_table().splitlines()[1].split()[:3]
        ['deletion', 'faithfulness', 'lower']
    """
    width = max(len(m) for m in METRICS)
    lines = [f"{'metric'.ljust(width)}  {'family'.ljust(13)}  better  cost (forwards per image) | reference"]
    for family in FAMILIES:
        for metric in (m for m in METRICS.values() if m.family == family):
            better = metric.better or "-"
            lines.append(f"{metric.name.ljust(width)}  {family.ljust(13)}  {better.ljust(6)}  {metric.cost} | {metric.reference}")
            if verbose:
                options = ", ".join(f"{k}={v!r}" for k, v in metric.options.items()) or "none"
                lines.append(f"    options: {options}" + ("; needs --label" if metric.needs_label else ""))
                if metric.quantus:
                    lines.append(f"    Quantus: {metric.quantus}")
    return "\n".join(lines)
