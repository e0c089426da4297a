"""What a prediction says, as the report shows it: the volume of each class of a label map, or a
classifier's scores, probabilities and chosen class.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((4, 4, 4), np.uint8); labels[:2, :2, :2] = 1
    >>> summary = segmentation_summary(labels, np.diag([2.0, 2.0, 2.0, 1.0]), {1: "vessel"})
    >>> summary["classes"]["1"]
    {'name': 'vessel', 'voxels': 8, 'volume_ml': 0.064}
    >>> classification_summary([0.0, 2.0], {1: "lesion"})["predicted"]
    1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["segmentation_summary", "classification_summary"]


def segmentation_summary(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str] | None = None,
                         classes: int | None = None) -> dict:
    """Voxels and physical size of every class of a label map with this ``affine`` (mm): volume in
    ml for 3D maps, area in mm² for 2D ones; classes ``0 .. classes-1`` all listed (absent ones 0)."""
    names = names or {}
    labels = np.asarray(labels)
    dims = labels.ndim
    voxel = float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:dims, :dims])))
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=classes or 0)
    result = {}
    for index, count in enumerate(counts):
        size = {"volume_ml": round(int(count) * voxel / 1000.0, 6)} if dims == 3 else {"area_mm2": round(int(count) * voxel, 4)}
        result[str(index)] = {"name": names.get(index, f"class {index}"), "voxels": int(count), **size}
    return {"kind": "segmentation", "classes": result}


def classification_summary(scores: Sequence[float], names: Mapping[int, str] | None = None) -> dict:
    """A classifier's scores (logits), its probabilities (softmax; sigmoid for one output) and
    the predicted class."""
    names = names or {}
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 1:
        probabilities = 1.0 / (1.0 + np.exp(-values))
        predicted = int(probabilities[0] > 0.5)
    else:
        shifted = np.exp(values - values.max())
        probabilities = shifted / shifted.sum()
        predicted = int(values.argmax())
    return {"kind": "classification", "scores": {str(i): round(float(v), 6) for i, v in enumerate(values)},
            "probabilities": {str(i): round(float(p), 6) for i, p in enumerate(probabilities)}, "predicted": predicted,
            "names": {str(i): names.get(i, f"class {i}") for i in range(max(values.size, 2))}}
