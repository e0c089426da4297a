"""Evaluating explanations: the metric catalogue and the functions behind it.

- :mod:`~esegeta_monai.evaluation.catalogue`: every metric ``esegeta evaluate`` offers, with its
  direction, cost, reference and options (:data:`METRICS`, :func:`metric_table`);
- :mod:`~esegeta_monai.evaluation.similarity`: rank correlation, SSIM and top-k overlap of two maps;
- :mod:`~esegeta_monai.evaluation.randomisation`: cascading and independent model randomisation;
- :mod:`~esegeta_monai.evaluation.robustness`: Captum's infidelity and sensitivity, through windows;
- :mod:`~esegeta_monai.evaluation.faithfulness`: deletion/insertion curves and localisation.

Importing this package registers every metric.

Example:
    >>> from esegeta_monai.evaluation import similarities
    >>> similarities([[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]])["spearman"]
    1.0
"""

from esegeta_monai.evaluation.catalogue import METRICS, Metric, MetricCase, MetricResult, metric_options, metric_table
from esegeta_monai.evaluation.faithfulness import deletion_insertion, localisation
from esegeta_monai.evaluation.randomisation import cascading_randomisation, parameterised_layers
from esegeta_monai.evaluation.robustness import infidelity, sensitivity
from esegeta_monai.evaluation.similarity import similarities

# the catalogue's other metric modules register their metrics on import
from esegeta_monai.evaluation import completeness, complexity, faithfulness_correlation, localisation_metrics  # noqa: F401,E402
from esegeta_monai.evaluation import mprt, random_logit, region_perturbation, road, stability  # noqa: F401,E402

__all__ = ["METRICS", "Metric", "MetricCase", "MetricResult", "metric_options", "metric_table", "cascading_randomisation",
           "parameterised_layers", "deletion_insertion", "localisation", "infidelity", "sensitivity", "similarities"]
