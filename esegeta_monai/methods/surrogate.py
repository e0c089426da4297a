"""Surrogate methods over features: LIME (Ribeiro et al. 2016) and Kernel SHAP (Lundberg &
Lee 2017), through Captum's ``Lime`` and ``KernelShap``, window-aware.

Features are supervoxels (SLIC, 2D and 3D), blocks or given labels, as for feature ablation
(``features``, ``n_segments``, ``compactness``, ``block``). Captum draws ``n_samples``
coalitions (binary vectors over the features; removed features take ``fill``), evaluates the
target on the perturbed images and fits a linear surrogate; its coefficients are the
features' attributions. The target comes from a
:class:`~esegeta_monai.core.windowed_target.WindowedTarget`: a coalition that leaves some windows'
input unchanged re-runs only the others, and the value is exactly that of a full
sliding-window inference (the prediction's mask held fixed from the clean image).

The surrogate is fitted by weighted least squares in closed form (:class:`WeightedLeastSquares`,
float64; scikit-learn is not needed): LIME weights samples by Captum's exponential kernel of
the cosine distance to the image (Captum's default Lasso is replaced by plain least squares),
Kernel SHAP by the Shapley kernel (samples drawn from it, the empty and full coalitions with
a weight of 10⁶, so the coefficients sum to ``T(x) − T(fill)``). On a target linear in the
features the fit is exact and Kernel SHAP gives the exact Shapley values.

**Surrogate score**: the weighted R² of the fit on its own samples, per image (for Kernel
SHAP over the sampled coalitions, the two end points being constraints), is logged at INFO
and kept in ``method.last_report = {"r2": [...], "n_samples": n}`` (``Explainer.method``).
A low R² says the linear surrogate does not explain the target's response to the features.

Captum fits one image per call: images are explained one after the other, each with draws
seeded by ``seed`` (the same for every image of a batch, so a map does not depend on its
batch; the global torch generator is restored afterwards).

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    >>> explainer = Explainer(net, "kernel_shap", "argmax:1", features="grid", block=(4, 4), n_samples=40)
    >>> explainer(torch.rand(1, 1, 8, 8)).shape, explainer.method.last_report["n_samples"]
    (torch.Size([1, 1, 8, 8]), 40)
"""

from __future__ import annotations

import logging

import torch
from captum._utils.models.model import Model
from captum.attr import KernelShap, Lime

from esegeta_monai.methods.base import SEED, Method, Param, positive_int
from esegeta_monai.methods.perturbation import FEATURE_PARAMS, FILL, PER_EVAL, fill_value, feature_mask
from esegeta_monai.methods.registry import register
from esegeta_monai.core.windowed_target import WindowedTarget

__all__ = ["WeightedLeastSquares", "SurrogateMethod", "LimeMethod", "KernelShapMethod", "weighted_r2"]

logger = logging.getLogger(__name__)


def weighted_r2(y: torch.Tensor, fitted: torch.Tensor, weights: torch.Tensor) -> float:
    """``1 − Σ w (y − ŷ)² / Σ w (y − ȳ_w)²``; 1 for a constant ``y`` fitted exactly, NaN for
    a constant ``y`` that is not (or no weight).

    Example:
        >>> import torch
        >>> weighted_r2(torch.tensor([1., 2., 3.]), torch.tensor([1., 2., 4.]), torch.ones(3))
        0.5
    """
    if float(weights.sum()) <= 0:
        return float("nan")
    mean = (weights * y).sum() / weights.sum()
    residual, total = float((weights * (y - fitted) ** 2).sum()), float((weights * (y - mean) ** 2).sum())
    if total <= 1e-12 * max(float((weights * y * y).sum()), 1e-300):
        return 1.0 if residual <= 1e-12 * max(float((weights * y * y).sum()), 1e-300) else float("nan")
    return 1.0 - residual / total


class WeightedLeastSquares(Model):
    """A linear model with intercept, fitted by weighted least squares in float64 (minimum
    norm where the samples do not determine it), for Captum's ``Lime``/``KernelShap``.

    ``fit`` also computes the weighted R² on the samples (``r2``), leaving out of the score
    the samples weighted ``constraint_weight`` or more (Kernel SHAP's end points).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> x = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.]])
        >>> model = WeightedLeastSquares()
        >>> model.fit(DataLoader(TensorDataset(x, x @ torch.tensor([2., -1.]) + 3, torch.ones(4)), batch_size=4))
        >>> model.representation().tolist(), model.r2
        ([[2.0, -1.0]], 1.0)
    """

    def __init__(self, constraint_weight: float | None = None):
        self.constraint_weight = constraint_weight
        self.coefficients = self.intercept = None
        self.r2 = float("nan")
        self.n_samples = 0

    def fit(self, train_data, **kwargs):
        x, y, w = (torch.cat(parts) for parts in zip(*train_data))
        x, y, w = x.double().cpu().flatten(1), y.double().cpu().flatten(), w.double().cpu().flatten()
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        root = w.clamp_min(0).sqrt()[:, None]
        solution = torch.linalg.lstsq(design * root, y[:, None] * root, driver="gelsd").solution[:, 0]
        self.coefficients, self.intercept = solution[:-1], solution[-1]
        scored = w < self.constraint_weight if self.constraint_weight is not None else torch.ones_like(w, dtype=torch.bool)
        self.r2 = weighted_r2(y[scored], (design @ solution)[scored], w[scored])
        self.n_samples = len(y)

    def representation(self) -> torch.Tensor:
        return self.coefficients[None].float()

    def __call__(self, x):
        return x.double().cpu() @ self.coefficients + self.intercept


class SurrogateMethod(Method):
    """A Captum surrogate (Lime, KernelShap) per image, with a window-aware forward function
    and a closed-form weighted least-squares surrogate whose R² is reported."""

    family = "perturbation"
    params = {**FEATURE_PARAMS, "fill": FILL, "n_samples": Param(200, positive_int, "coalitions sampled per image", "a positive int"),
              "perturbations_per_eval": PER_EVAL, "seed": SEED}
    captum_class: type = Lime

    def __init__(self):
        self.last_report: dict | None = None  #: per image R² of the last call, and its n_samples

    def explainer(self, forward) -> tuple[Lime, WeightedLeastSquares]:
        """Captum's explainer of ``forward`` with our surrogate in place of its default (which
        needs scikit-learn); samples weighted Captum's ``inf_weight`` (Kernel SHAP's end points)
        are constraints, left out of the score."""
        captum = self.captum_class(forward)
        captum.interpretable_model = surrogate = WeightedLeastSquares(getattr(captum, "inf_weight", None))
        return captum, surrogate

    def run(self, window_pass, inputs, options):
        target = WindowedTarget(window_pass, inputs)
        masks, fill = feature_mask(inputs, options), fill_value(inputs, options["fill"])
        maps, scores = [], []
        for b in range(inputs.shape[0]):
            attribution, score = self.attribute_image(target.of_image(b), inputs[b : b + 1], _of_image(fill, b), _of_image(masks, b), options)
            maps.append(attribution)
            scores.append(score)
        window_pass.windows_run += target.forwards
        self.last_forwards = target.forwards
        self.last_report = {"r2": scores, "n_samples": options["n_samples"]}
        logger.info("%s: surrogate weighted R² %s over %d samples", self.name, ", ".join(f"{r:.3f}" for r in scores), options["n_samples"])
        return torch.cat(maps).float()

    def attribute_image(self, forward, image, fill, mask, options) -> tuple[torch.Tensor, float]:
        """One image's map and its surrogate's R², with draws seeded by ``seed``."""
        captum, surrogate = self.explainer(forward)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(options["seed"])  # Captum draws with the global torch generator (on the CPU)
            attribution = captum.attribute(image, baselines=fill, feature_mask=mask, n_samples=options["n_samples"],
                                           perturbations_per_eval=options["perturbations_per_eval"])
        return attribution, surrogate.r2


def _of_image(value, b: int):
    """Image ``b``'s row of a per-image tensor (a number or a tensor shared by the batch as is)."""
    return value[b : b + 1] if torch.is_tensor(value) and value.shape[0] > 1 else value


@register
class LimeMethod(SurrogateMethod):
    name = "lime"
    summary = "LIME over supervoxels/blocks/labels: weighted linear surrogate (seeded; window-aware; R² reported)"
    captum_class = Lime


@register
class KernelShapMethod(SurrogateMethod):
    name = "kernel_shap"
    summary = "Kernel SHAP over supervoxels/blocks/labels: Shapley values by a Shapley-kernel regression (seeded; window-aware)"
    captum_class = KernelShap

    def attribute_image(self, forward, image, fill, mask, options):
        if bool(mask.max() > mask.min()):
            return super().attribute_image(forward, image, fill, mask, options)
        # a single feature (Captum's sampler needs two): its Shapley value is T(x) − T(fill), exactly
        with torch.no_grad():
            values = forward(torch.cat([image, torch.zeros_like(image) + fill]))
        return (values[0] - values[1]).expand_as(image).clone(), 1.0
