"""Complexity of a map: sparseness (the Gini index of |Φ|) and complexity (the entropy of |Φ|'s
distribution over voxels). Model-free: no forward, any number of spatial dimensions.

Both read the map as one value per voxel, ``Φ = Σ_c attribution[0, c]`` (channels summed, then
the absolute value), over all ``n`` voxels of the image:

- ``sparseness`` (Chalasani et al. 2020): the Gini index of the sorted ``a_(1) ≤ … ≤ a_(n)``,
  ``G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i))`` — 0 for a uniform map, ``1 − 1/n`` for a map
  on one voxel; higher is sparser (better);
- ``complexity`` (Bhatt et al. 2020): the Shannon entropy (nats) of ``p = |Φ| / Σ|Φ|``,
  ``H = −Σ_{p_i > 0} p_i log p_i`` — ``log n`` for a uniform map, 0 for one voxel; lower is
  simpler (better).

Both are scale-free; an all-zero map has neither (status ``undefined``).

Example:
    >>> import torch
    >>> one = torch.zeros(1, 1, 4, 4); one[0, 0, 1, 2] = -3.0
    >>> sparseness(one)["sparseness"], complexity(one)["complexity"]
    (0.9375, 0.0)
    >>> round(complexity(torch.ones(1, 2, 4, 4))["complexity"], 6) == round(float(np.log(16)), 6)
    True
"""

from __future__ import annotations

import numpy as np

from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register

__all__ = ["sparseness", "complexity", "voxel_map", "Undefined"]


class Undefined(MethodError):
    """A metric has no value on this map (its catalogue row: status ``undefined``, the reason in
    ``error``); ``extra``: what could still be computed, for the row."""

    def __init__(self, message: str, extra: dict | None = None):
        super().__init__(message)
        self.extra = extra or {}


def voxel_map(attribution, spatial_ndim: int | None = None) -> np.ndarray:
    """The map as one float64 value per voxel: ``attribution`` (tensor or array, ``(1, C', *spatial)``)
    summed over every leading axis but the last ``spatial_ndim`` (default: all but the first two)."""
    values = attribution.detach().cpu().double().numpy() if hasattr(attribution, "detach") else np.asarray(attribution)
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise MethodError("the map has non-finite values (NaN or inf)")
    if spatial_ndim is None:
        if values.ndim < 3 or values.shape[0] != 1:
            raise MethodError(f"a map of one image is (1, C', *spatial); got shape {tuple(values.shape)}")
        spatial_ndim = values.ndim - 2
    if values.ndim < spatial_ndim:
        raise MethodError(f"a map of shape {tuple(values.shape)} has fewer than {spatial_ndim} spatial axes")
    return values.reshape(-1, *values.shape[values.ndim - spatial_ndim:]).sum(0)


def _magnitudes(attribution, name: str) -> np.ndarray:
    a = np.abs(voxel_map(attribution)).ravel()
    if not a.sum() > 0:
        raise Undefined(f"{name} is undefined for an all-zero map (Σ|Φ| = 0)")
    return a


def sparseness(attribution) -> dict:
    """The Gini index of the map's magnitudes ``a = |Σ_c Φ_c|`` over its ``n`` voxels:
    ``G = Σ_i (2i − n − 1) a_(i) / (n Σ a)`` (``a_(i)`` sorted ascending, ``i = 1 … n``).
    Returns ``{"sparseness": G, "n_voxels": n}``; an all-zero map raises :class:`MethodError`.

    Example:
        >>> import torch
        >>> sparseness(torch.ones(1, 1, 3, 3, 3))["sparseness"]
        0.0
    """
    a = np.sort(_magnitudes(attribution, "sparseness"))
    n = a.size
    gini = float(np.dot(2.0 * np.arange(1, n + 1) - n - 1, a) / (n * a.sum()))
    return {"sparseness": gini, "n_voxels": int(n)}


def complexity(attribution) -> dict:
    """The entropy (nats) of the map's magnitude distribution ``p = |Σ_c Φ_c| / Σ|Σ_c Φ_c|`` over
    its ``n`` voxels: ``H = −Σ_{p_i > 0} p_i log p_i`` (0 ≤ H ≤ log n). Returns
    ``{"complexity": H, "n_voxels": n, "max_entropy": log n}``; an all-zero map raises :class:`MethodError`.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 2, 2); x[0, 0, 0] = 1.0  # two voxels of equal magnitude
        >>> round(complexity(x)["complexity"], 6) == round(float(np.log(2)), 6)
        True
    """
    a = _magnitudes(attribution, "complexity")
    p = a[a > 0] / a.sum()
    return {"complexity": float(-(p * np.log(p)).sum()) + 0.0, "n_voxels": int(a.size), "max_entropy": float(np.log(a.size))}


def _metric(function):
    name = function.__name__

    def compute(case, options: dict):
        try:
            result = function(case.attribution)
        except Undefined as error:
            n_voxels = int(np.prod(case.attribution.shape[2:]))
            return MetricResult(None, {"n_voxels": n_voxels}, status="undefined", error=str(error))
        return MetricResult(result.pop(name), result)

    return compute


register(Metric(
    "sparseness", "complexity", "higher", "0: the map alone",
    "Chalasani et al. 2020, Concise explanations of neural networks using adversarial training; quantus.Sparseness",
    _metric(sparseness), {},
    quantus="the same Gini index of |Φ| (its defaults abs=True; its normalise_by_max does not change a Gini index); "
            "Quantus adds 1e-7 to every normalised value, which scales the index by Σa/(Σa + n·1e-7), and flattens "
            "the channels of a multi-channel map where we sum them per voxel first.",
    summary='how concentrated the map is (Gini index)',
))
register(Metric(
    "complexity", "complexity", "lower", "0: the map alone",
    "Bhatt et al. 2020, Evaluating and aggregating feature-based model explanations; quantus.Complexity",
    _metric(complexity), {},
    quantus="the same entropy of |Φ|/Σ|Φ| (its defaults abs=True; normalise_by_max cancels in the ratio); Quantus "
            "takes log(p + 1e-12) where we sum over p > 0 (its value is ours − m·1e-12 to first order, m voxels with "
            "p > 0), and flattens the channels of a multi-channel map where we sum them per voxel first.",
    summary='how spread out the map is (entropy)',
))
