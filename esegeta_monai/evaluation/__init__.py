"""Evaluating explanations: randomisation, infidelity and sensitivity, faithfulness, localisation.

- :mod:`~esegeta_monai.evaluation.similarity`: rank correlation, SSIM and top-k overlap of two maps;
- :mod:`~esegeta_monai.evaluation.randomisation`: cascading and independent model randomisation;
- :mod:`~esegeta_monai.evaluation.robustness`: Captum's infidelity and sensitivity, through windows;
- :mod:`~esegeta_monai.evaluation.faithfulness`: deletion/insertion curves and localisation.

Example:
    >>> from esegeta_monai.evaluation import similarities
    >>> similarities([[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]])["spearman"]
    1.0
"""

from esegeta_monai.evaluation.faithfulness import deletion_insertion, localisation
from esegeta_monai.evaluation.randomisation import cascading_randomisation, parameterised_layers
from esegeta_monai.evaluation.robustness import infidelity, sensitivity
from esegeta_monai.evaluation.similarity import similarities

__all__ = ["cascading_randomisation", "parameterised_layers", "deletion_insertion", "localisation", "infidelity", "sensitivity",
           "similarities"]
