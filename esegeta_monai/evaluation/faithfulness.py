"""Faithfulness and localisation of a map: deletion and insertion curves, and the share of the
map inside a ground-truth label.

Deletion removes voxels in decreasing order of attribution (replaced by ``fill``: a number or
``"blur"``, a Gaussian-blurred copy of the image) and tracks the target; insertion starts from
the filled image and puts the voxels back in the same order. Their areas under the curve
(fraction removed/inserted on [0, 1], target normalised by the clean target) summarise them:
a faithful map has a *low* deletion AUC and a *high* insertion AUC. The target of every
perturbed image comes from a :class:`~esegeta_monai.core.windowed_target.WindowedTarget`, so through
sliding windows only the windows an image changes are re-run.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Conv2d(1, 2, 3, padding=1)
    >>> x = torch.rand(1, 1, 16, 16)
    >>> explainer = Explainer(net, "saliency", "argmax:1")
    >>> curves = deletion_insertion(explainer, x, explainer(x), steps=4)
    >>> sorted(curves), len(curves["deletion"])
    (['deletion', 'deletion_auc', 'fractions', 'insertion', 'insertion_auc'], 5)
"""

from __future__ import annotations

import numpy as np
import torch

from esegeta_monai.errors import MethodError
from esegeta_monai.core.windowed_target import WindowedTarget

__all__ = ["deletion_insertion", "localisation"]


def _filled(x: torch.Tensor, fill) -> torch.Tensor:
    if fill == "blur":
        from monai.transforms import GaussianSmooth

        return torch.stack([GaussianSmooth(sigma=2.0)(image) for image in x]).to(x.dtype)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(x, float(fill))
    raise MethodError(f"fill={fill!r}: give a number or 'blur'")


def deletion_insertion(explainer, inputs: torch.Tensor, attribution: torch.Tensor, steps: int = 20, fill=0.0,
                       per_eval: int = 4) -> dict:
    """Deletion and insertion curves of ``attribution`` for ``explainer``'s network, target and
    windows, on one image (``inputs`` of batch 1). Returns the fractions, both curves (target
    over the clean target) and their AUCs."""
    if inputs.shape[0] != 1:
        raise MethodError("deletion/insertion curves are computed one image at a time (batch 1)")
    if steps < 1:
        raise MethodError(f"steps={steps}: give a positive number of steps")
    with explainer.session(inputs) as (window_pass, x):
        target = WindowedTarget(window_pass, x)
        clean = float(target.clean[0])
        base = _filled(x, fill)
        scores = attribution.detach().to(x.device).float().reshape(x.shape).sum(1).flatten()  # one score per voxel
        order = torch.argsort(scores, descending=True)
        fractions = np.linspace(0.0, 1.0, steps + 1)
        counts = [int(round(f * order.numel())) for f in fractions]
        curves = {}
        for name, start, end in (("deletion", x, base), ("insertion", base, x)):
            images = []
            for count in counts:
                keep = torch.zeros(order.numel(), dtype=torch.bool, device=x.device)
                keep[order[:count]] = True
                keep = keep.view(1, 1, *x.shape[2:])
                images.append(torch.where(keep, end, start))
            values = torch.cat([target(torch.cat(images[i : i + per_eval])) for i in range(0, len(images), per_eval)])
            curves[name] = (values.double() / (clean if clean != 0 else 1.0)).tolist()
            curves[f"{name}_auc"] = float(np.trapezoid(curves[name], fractions))
    curves["fractions"] = fractions.tolist()
    return curves


def localisation(attribution: torch.Tensor, label, dilation: int = 2) -> dict:
    """How much of a map falls on a ground-truth ``label`` (``(*spatial)``, non-zero inside),
    dilated by ``dilation`` voxels: ``share_inside`` (of the positive attribution), ``label_share``
    (the dilated label's share of the image, the chance level), ``ratio`` of the two, ``rank_auc``
    (the probability that a voxel inside outranks one outside, ties halved) and ``pointing``
    (whether the maximum lies inside).

    Example:
        >>> import numpy as np
        >>> label = np.zeros((10, 10)); label[2:4, 2:4] = 1
        >>> localisation(label * 5.0, label, dilation=0)["share_inside"]
        1.0
    """
    from scipy.ndimage import binary_dilation
    from scipy.stats import rankdata

    values = attribution.detach().cpu().numpy() if hasattr(attribution, "detach") else np.asarray(attribution)
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(-1, *np.shape(label)).sum(0) if values.ndim > np.ndim(label) else values
    inside = np.asarray(label) != 0
    if dilation > 0:
        inside = binary_dilation(inside, iterations=int(dilation))
    if inside.all() or not inside.any():
        raise MethodError("the label covers all or none of the image: localisation is undefined")
    positive = np.clip(values, 0, None)
    share = float(positive[inside].sum() / positive.sum()) if positive.sum() > 0 else float("nan")
    ranks = rankdata(values.ravel())
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    rank_auc = (ranks[inside.ravel()].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)
    return {"share_inside": share, "label_share": float(inside.mean()), "ratio": share / float(inside.mean()),
            "rank_auc": float(rank_auc), "pointing": bool(inside.ravel()[int(np.argmax(values))])}
