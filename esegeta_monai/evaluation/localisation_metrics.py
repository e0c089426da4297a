"""Localisation of a map against a ground-truth label: relevance rank accuracy, relevance mass
accuracy, top-k intersection and the per-label attribution share. Model-free (no forward), N-D.

Each reads the map as one value per voxel, ``Φ = Σ_c attribution[0, c]`` (channels summed), and
the ground truth ``GT`` from an integer ``label`` on the image grid (0 = background):
``label ≠ 0`` where ``label_value`` is None, ``label == label_value`` otherwise (for a target
``argmax:c``, pass the structure ``c``). ``values`` says what is ranked or summed: ``"raw"`` (Φ),
``"positive"`` (max(Φ, 0)) or ``"abs"`` (|Φ|).

- ``relevance_rank_accuracy`` (Arras et al. 2022): with ``K = |GT|``, the fraction of the ``K``
  highest voxels inside GT;
- ``relevance_mass_accuracy`` (Arras et al. 2022): ``Σ_GT v / Σ v``;
- ``top_k_intersection`` (Theiner et al. 2021): the fraction of the ``k`` highest voxels inside
  GT (``k`` a count, or a fraction of the voxels);
- ``label_share``: for every label value present (and 0), its share of the positive and of the
  absolute attribution, its share of the voxels (chance) and the ratio of the two.

Ranks treat ties fairly: voxels tied at the ``K``-th value count in proportion (the mean over
every order of the ties), so a constant map scores the chance level ``|GT| / n``.

Example:
    >>> import numpy as np
    >>> label = np.zeros((8, 8), dtype=int); label[2:4, 2:5] = 1
    >>> attribution = (label > 0)[None, None] * 2.0
    >>> relevance_rank_accuracy(attribution, label)["relevance_rank_accuracy"]
    1.0
    >>> relevance_mass_accuracy(attribution, label)["relevance_mass_accuracy"]
    1.0
    >>> round(top_k_intersection(np.ones((1, 1, 8, 8)), label, k=10)["top_k_intersection"], 6)  # ties: chance, 6/64
    0.09375
"""

from __future__ import annotations

import numpy as np

from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register
from esegeta_monai.evaluation.complexity import Undefined, voxel_map

__all__ = ["relevance_rank_accuracy", "relevance_mass_accuracy", "top_k_intersection", "label_share", "ground_truth",
           "VALUES"]

#: what a localisation metric ranks or sums: the map, its positive part, its magnitude
VALUES = ("raw", "positive", "abs")


def _label(label, spatial_shape) -> np.ndarray:
    """``label`` as an array of the grid ``spatial_shape`` (leading axes of size 1 dropped); None is refused."""
    if label is None:
        raise MethodError("this localisation metric needs a ground-truth label on the image grid "
                          "(esegeta evaluate --label FILE, one per --image); none was given")
    label = np.asarray(label)
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if label.shape != spatial_shape:
        if label.size != int(np.prod(spatial_shape)) or label.shape[label.ndim - len(spatial_shape):] != spatial_shape:
            raise MethodError(f"the label's shape {label.shape} is not the map's grid {spatial_shape}")
        label = label.reshape(spatial_shape)
    return label


def ground_truth(label, spatial_shape, label_value=None) -> np.ndarray:
    """The boolean ground truth of ``label`` on the grid ``spatial_shape``: ``label ≠ 0``, or
    ``label == label_value``. No label is an error; an empty ground truth is :class:`Undefined`."""
    label = _label(label, spatial_shape)
    inside = label != 0 if label_value is None else label == label_value
    if not inside.any():
        present = ", ".join(_key(u) for u in np.unique(label))
        what = "no labelled voxel" if label_value is None else f"no voxel of label {label_value!r} (values present: {present})"
        raise Undefined(f"the ground truth is empty: {what}")
    return inside


def _values(attribution, label, values: str) -> np.ndarray:
    if values not in VALUES:
        raise MethodError(f"values={values!r}: choose from {', '.join(VALUES)}")
    _label(label, np.shape(label))  # None refused before the map is read
    v = voxel_map(attribution, np.ndim(label))
    return {"raw": v, "positive": np.clip(v, 0.0, None), "abs": np.abs(v)}[values]


def _top_share(v: np.ndarray, inside: np.ndarray, k: int) -> float:
    """The fraction of the ``k`` highest of ``v`` inside ``inside``; voxels tied at the ``k``-th
    value count in proportion (the mean over the orders of the ties)."""
    v, inside = v.ravel(), inside.ravel()
    threshold = np.partition(v, v.size - k)[v.size - k]
    above, tied = v > threshold, v == threshold
    from_ties = (k - np.count_nonzero(above)) * np.count_nonzero(tied & inside) / np.count_nonzero(tied)
    return float((np.count_nonzero(above & inside) + from_ties) / k)


def relevance_rank_accuracy(attribution, label, label_value=None, values: str = "raw") -> dict:
    """``RRA = |top_K(v) ∩ GT| / K`` with ``K = |GT|`` (ties at the ``K``-th value in proportion).
    Returns the value, ``k`` (= ``|GT|``), ``chance`` (``|GT| / n``, a constant map's score) and the settings.

    Example:
        >>> import numpy as np
        >>> label = np.zeros((4, 4, 4), dtype=int); label[0, 0, :2] = 3
        >>> a = np.zeros((1, 1, 4, 4, 4)); a[0, 0, 0, 0, 0] = 1.0; a[0, 0, 3, 3, 3] = 2.0
        >>> relevance_rank_accuracy(a, label, label_value=3)["relevance_rank_accuracy"]
        0.5
    """
    v = _values(attribution, label, values)
    inside = ground_truth(label, v.shape, label_value)
    k = int(np.count_nonzero(inside))
    return {"relevance_rank_accuracy": _top_share(v, inside, k), "k": k, "chance": k / inside.size,
            "label_value": label_value, "values": values}


def relevance_mass_accuracy(attribution, label, label_value=None, values: str = "positive") -> dict:
    """``RMA = Σ_GT v / Σ v`` (``v`` the ``values`` of the map). Undefined where ``Σ v ≤ 0``.
    Returns the value, ``chance`` (``|GT| / n``, a constant map's score) and the settings.

    Example:
        >>> import numpy as np
        >>> label = np.array([[0, 1], [1, 0]])
        >>> relevance_mass_accuracy(np.array([[[[1.0, 2.0], [1.0, -4.0]]]]), label)["relevance_mass_accuracy"]
        0.75
    """
    v = _values(attribution, label, values)
    inside = ground_truth(label, v.shape, label_value)
    total = float(v.sum())
    if not total > 0:
        raise Undefined(f"relevance mass accuracy is undefined: the map's total ({values}) attribution is {total:.6g} ≤ 0")
    return {"relevance_mass_accuracy": float(v[inside].sum()) / total, "chance": float(inside.mean()),
            "label_value": label_value, "values": values}


def _count(k, n: int) -> int:
    """``k`` voxels: an int ≥ 1 is a count, a float in (0, 1) a fraction of the ``n`` voxels."""
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not k > 0:
        raise MethodError(f"k={k!r}: give a number of voxels (an integer ≥ 1) or a fraction of the image (0 < k < 1)")
    if isinstance(k, (float, np.floating)) and k < 1:
        return max(1, int(round(float(k) * n)))
    if float(k) != int(k):
        raise MethodError(f"k={k!r}: a count of voxels is a whole number (or give a fraction 0 < k < 1)")
    if int(k) > n:
        raise Undefined(f"top-k intersection is undefined: k={int(k)} exceeds the image's {n} voxels")
    return int(k)


def top_k_intersection(attribution, label, k=1000, label_value=None, values: str = "raw") -> dict:
    """``TKI = |top_k(v) ∩ GT| / k`` (ties at the ``k``-th value in proportion), ``k`` an integer
    count or a fraction ``0 < k < 1`` of the ``n`` voxels (``round(k·n)``, at least 1). Returns the
    value, ``k`` (the count used), ``chance`` (``|GT| / n``; ``value / chance`` is Quantus's
    ``concept_influence``) and the settings.

    Example:
        >>> import numpy as np
        >>> label = np.zeros((10, 10), dtype=int); label[:5] = 1
        >>> a = np.arange(100.0).reshape(1, 1, 10, 10)[:, :, ::-1]  # rows 0-4 highest
        >>> top_k_intersection(a, label, k=0.6)["top_k_intersection"], top_k_intersection(a, label, k=0.6)["k"]
        (0.8333333333333334, 60)
    """
    v = _values(attribution, label, values)
    inside = ground_truth(label, v.shape, label_value)
    count = _count(k, v.size)
    return {"top_k_intersection": _top_share(v, inside, count), "k": count, "k_option": k,
            "chance": float(inside.mean()), "label_value": label_value, "values": values}


def _key(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def label_share(attribution, label, label_value=None) -> dict:
    """Per label value present (0 included): ``share`` of the positive attribution
    ``Σ_label max(Φ, 0) / Σ max(Φ, 0)``, ``abs_share`` of |Φ|, ``voxel_share`` (its share of the
    voxels, chance) and ``ratio = share / voxel_share``; shares are None where the map has no
    positive (absolute) attribution. The value ``label_share`` is the positive share of the
    ground truth (any non-zero label, or ``label_value``).

    Example:
        >>> import numpy as np
        >>> label = np.array([[0, 0, 1, 2]])
        >>> out = label_share(np.array([[[[1.0, -1.0, 2.0, 1.0]]]]), label)
        >>> out["label_share"], out["shares"]["1"]
        (0.75, {'share': 0.5, 'abs_share': 0.4, 'voxel_share': 0.25, 'ratio': 2.0})
    """
    v = _values(attribution, label, "raw")
    label = _label(label, v.shape)
    present, index = np.unique(label, return_inverse=True)
    index = index.ravel()
    positive = np.bincount(index, np.clip(v, 0.0, None).ravel(), minlength=present.size)
    magnitude = np.bincount(index, np.abs(v).ravel(), minlength=present.size)
    voxels = np.bincount(index, minlength=present.size) / index.size
    total_positive, total_magnitude = positive.sum(), magnitude.sum()
    shares = {}
    for i, value in enumerate(present):
        share = float(positive[i] / total_positive) if total_positive > 0 else None
        abs_share = float(magnitude[i] / total_magnitude) if total_magnitude > 0 else None
        shares[_key(value)] = {"share": share, "abs_share": abs_share, "voxel_share": float(voxels[i]),
                               "ratio": None if share is None else share / float(voxels[i])}
    try:
        inside = ground_truth(label, v.shape, label_value)
    except Undefined as error:
        raise Undefined(str(error), {"shares": shares}) from None
    if not total_positive > 0:
        raise Undefined("label share is undefined: the map has no positive attribution", {"shares": shares})
    value = float(np.clip(v, 0.0, None)[inside].sum() / total_positive)
    return {"label_share": value, "shares": shares, "label_value": label_value}


def _metric(function):
    """``compute(case, options)`` of a localisation function: its value, the rest in ``extra``;
    an undefined value (empty ground truth, no attribution) has status ``undefined``."""
    name = function.__name__

    def compute(case, options: dict):
        try:
            result = function(case.attribution, case.label, **options)
        except Undefined as error:
            return MetricResult(None, {**options, **error.extra}, status="undefined", error=str(error))
        return MetricResult(result.pop(name), {**options, **result})

    return compute


#: what each says, in plain words (the GUI's line)
SUMMARIES = {
    "relevance_rank_accuracy": "the share of the map's top voxels (as many as the label has) inside the label",
    "relevance_mass_accuracy": "the share of the map's positive mass inside the label",
    "top_k_intersection": "the share of the map's k top voxels inside the label",
    "label_share": "which labelled structures the map falls on: a share per label, in a table per scan and for all",
}


def _register(name, better, reference, options, quantus):
    register(Metric(name, "localisation", better, "0: the map against --label", reference, _metric(globals()[name]),
                    options, needs_label=True, quantus=quantus, summary=SUMMARIES[name]))


_register("relevance_rank_accuracy", "higher",
          "Arras et al. 2022, CLEVR-XAI: a benchmark dataset for the ground truth evaluation of neural network "
          "explanations (Information Fusion); quantus.RelevanceRankAccuracy", {"label_value": None, "values": "raw"},
          "the same fraction of the |GT| highest voxels inside GT (its defaults abs=False, normalise_by_max, which does "
          "not change ranks); ties at the |GT|-th value count in proportion here, in argsort order in Quantus.")
_register("relevance_mass_accuracy", "higher",
          "Arras et al. 2022, CLEVR-XAI; quantus.RelevanceMassAccuracy", {"label_value": None, "values": "positive"},
          "the same ratio Σ_GT/Σ, of the positive part by default where Quantus's default (abs=False) sums the raw map "
          "(values='raw'; values='abs' is its abs=True); undefined here where the total is ≤ 0.")
_register("top_k_intersection", "higher",
          "Theiner et al. 2021, Interpretable semantic photo geolocation (arXiv:2104.14995); quantus.TopKIntersection",
          {"k": 1000, "label_value": None, "values": "raw"},
          "the same fraction of the k highest voxels inside GT with Quantus's default k=1000 (abs=False); k may also be a "
          "fraction 0 < k < 1 of the image; ties count in proportion; Quantus's concept_influence is value / chance.")
_register("label_share", None, "per-label share of the positive attribution against the label's voxel share "
          "(descriptive; cf. Arras et al. 2022 relevance mass)", {"label_value": None},
          "")
