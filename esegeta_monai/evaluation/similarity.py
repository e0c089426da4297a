"""How alike two attribution maps are: rank correlation (signed and of absolute values), SSIM
(scikit-image, 2D and 3D) and top-k overlap — the scores of the randomisation tests. Each
score compares the maps of one image; :func:`similarities` with ``batch=True`` scores each image
of a batch on its own (a list per score), never one correlation pooled over the batch.

Example:
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((8, 8, 8))
    >>> s = similarities(a, a)
    >>> round(s["spearman"], 6), round(s["ssim"], 6), s["topk_overlap"]
    (1.0, 1.0, 1.0)
"""

from __future__ import annotations

import numpy as np

from esegeta_monai.errors import InputError

__all__ = ["similarities", "spearman", "ssim", "topk_overlap"]

#: voxels sampled for the rank correlations of large volumes (seeded; exact below this size)
MAX_RANK_VOXELS = 200_000


def _flat(a) -> np.ndarray:
    array = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return np.asarray(array, dtype=np.float64)


def spearman(a, b, absolute: bool = False) -> float:
    """Spearman rank correlation of two maps (of their absolute values with ``absolute``);
    NaN when a map is constant."""
    from scipy.stats import spearmanr

    x, y = _flat(a).ravel(), _flat(b).ravel()
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if x.size > MAX_RANK_VOXELS:
        keep = np.random.default_rng(0).choice(x.size, MAX_RANK_VOXELS, replace=False)
        x, y = x[keep], y[keep]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def ssim(a, b) -> float:
    """Structural similarity of the absolute maps, each scaled to [0, 1] (the paper's practice),
    on the spatial axes (leading batch/channel axes squeezed or summed, 2D or 3D); NaN for
    images thinner than 3 voxels."""
    from skimage.metrics import structural_similarity

    x, y = (np.abs(np.squeeze(_flat(m))) for m in (a, b))
    x, y = (m.reshape(-1, *m.shape[-3:]).sum(0) if m.ndim > 3 else m for m in (x, y))
    if x.shape != y.shape or min(x.shape) < 3:
        return float("nan")
    x, y = (m / m.max() if m.max() > 0 else m for m in (x, y))
    window = min(7, *[s if s % 2 else s - 1 for s in x.shape])
    return float(structural_similarity(x, y, data_range=1.0, win_size=window))


def topk_overlap(a, b, fraction: float = 0.05) -> float:
    """Intersection over union of the ``fraction`` of voxels with the largest absolute values."""
    x, y = np.abs(_flat(a)).ravel(), np.abs(_flat(b)).ravel()
    k = max(1, int(round(fraction * x.size)))
    top_x, top_y = set(np.argpartition(-x, k - 1)[:k].tolist()), set(np.argpartition(-y, k - 1)[:k].tolist())
    return len(top_x & top_y) / len(top_x | top_y)


def similarities(a, b, fraction: float = 0.05, batch: bool = False) -> dict:
    """Every score at once: ``spearman``, ``spearman_abs``, ``ssim``, ``topk_overlap`` of one
    image's maps; with ``batch`` the first axis indexes images and each score is a list with
    one value per image.

    Example:
        >>> import numpy as np
        >>> a = np.random.default_rng(0).random((2, 1, 6, 6))
        >>> similarities(a, a[::-1], batch=True)["topk_overlap"] == [topk_overlap(a[0], a[1]), topk_overlap(a[1], a[0])]
        True
    """
    if batch:
        x, y = _flat(a), _flat(b)
        if x.shape != y.shape:
            raise InputError(f"maps of shapes {x.shape} and {y.shape}: give two batches of the same shape")
        scores = [similarities(i, j, fraction) for i, j in zip(x, y)]
        return {name: [s[name] for s in scores] for name in ("spearman", "spearman_abs", "ssim", "topk_overlap")}
    return {"spearman": spearman(a, b), "spearman_abs": spearman(a, b, absolute=True), "ssim": ssim(a, b),
            "topk_overlap": topk_overlap(a, b, fraction)}
