"""Infidelity and sensitivity (Yeh et al. 2019) with Captum's definitions, through sliding windows.

- :func:`infidelity`: ``E_I[(Iᵀ Φ(x) − (T(x) − T(x − I)))²]`` over random perturbations ``I``
  (Gaussian noise of ``noise_std``, inside an optional ``roi`` box), computed by Captum's
  ``captum.metrics.infidelity`` with a :class:`~esegeta_monai.core.windowed_target.WindowedTarget` as the
  forward function — only the windows a perturbation touches are re-run, and at most
  ``per_eval`` perturbed images are held at once. With ``normalize=True`` (Captum's option) the
  map is first rescaled by the ``β`` that minimises the expectation, so the value no longer
  depends on the map's scale — what a ranking across methods of different scales needs.
- :func:`sensitivity`: ``max_‖δ‖∞≤r ‖Φ(x + δ) − Φ(x)‖ / ‖Φ(x)‖`` estimated over random ``δ``
  (Captum's ``sensitivity_max`` and its uniform L∞ perturbation of ``radius``), each
  explanation computed exactly through the windows by the same
  :class:`~esegeta_monai.explainer.Explainer`.

Both are seeded (``torch.manual_seed(seed)`` before Captum draws) and return the sample count
and the seed with the value. Defaults: 16 perturbations for infidelity, 10 for sensitivity.

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 3, padding=1), "saliency", "argmax:1", abs=False)
    >>> x = torch.rand(1, 1, 12, 12)
    >>> result = infidelity(explainer, x, explainer(x), n_samples=4)
    >>> sorted(result)
    ['infidelity', 'n_samples', 'noise_std', 'normalize', 'roi', 'seed']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max
from captum.metrics._core.sensitivity import default_perturb_func

from esegeta_monai.errors import MethodError
from esegeta_monai.core.windowed_target import WindowedTarget
from esegeta_monai.evaluation.catalogue import Metric, MetricResult, register

__all__ = ["infidelity", "sensitivity", "noise_perturbation"]


def noise_perturbation(noise_std: float, roi: Sequence[tuple[int, int]] | None = None):
    """Captum's perturbation function: Gaussian noise ``I`` (zero outside the ``roi`` box, a
    ``(start, stop)`` per spatial axis), returning ``(I, x − I)``."""

    def perturb(inputs: torch.Tensor):
        noise = torch.randn_like(inputs) * float(noise_std)
        if roi is not None:
            keep = torch.zeros_like(inputs, dtype=torch.bool)
            keep[(slice(None), slice(None), *[slice(int(a), int(b)) for a, b in roi])] = True
            noise = noise * keep
        return noise, inputs - noise

    return perturb


def _check_one_image(inputs: torch.Tensor, what: str) -> None:
    if inputs.shape[0] != 1:
        raise MethodError(f"{what} is computed one image at a time (batch 1); loop over the images")


def infidelity(explainer, inputs: torch.Tensor, attribution: torch.Tensor, n_samples: int = 16, noise_std: float = 0.1,
               roi: Sequence[tuple[int, int]] | None = None, per_eval: int = 4, seed: int = 0, normalize: bool = False) -> dict:
    """Captum's infidelity of ``attribution`` for ``explainer``'s target, through its windows
    (``normalize``: Captum's scale-free variant, recorded with the value)."""
    _check_one_image(inputs, "infidelity")
    if roi is not None and len(roi) != inputs.ndim - 2:
        raise MethodError(f"roi {roi} needs one (start, stop) per spatial axis of {tuple(inputs.shape[2:])}")
    with explainer.session(inputs) as (window_pass, x):
        target = WindowedTarget(window_pass, x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value = captum_infidelity(target, noise_perturbation(noise_std, roi), x, attribution.to(x.device).float(),
                                      n_perturb_samples=int(n_samples), max_examples_per_batch=int(per_eval), normalize=normalize)
    return {"infidelity": float(value[0]), "n_samples": int(n_samples), "noise_std": float(noise_std),
            "roi": [list(r) for r in roi] if roi is not None else None, "seed": int(seed), "normalize": bool(normalize)}


def sensitivity(explainer, inputs: torch.Tensor, n_samples: int = 10, radius: float = 0.02, per_eval: int = 1,
                seed: int = 0) -> dict:
    """Captum's ``sensitivity_max`` of ``explainer`` (each perturbed explanation exact through windows)."""
    _check_one_image(inputs, "sensitivity")

    def explain(perturbed) -> torch.Tensor:
        # Captum passes a tuple and expects one back: a bare tensor would be iterated over its batch rows, and
        # with per_eval > 1 each draw's difference broadcast into per_eval copies (the value √per_eval too large)
        return (explainer(perturbed[0] if isinstance(perturbed, tuple) else perturbed),)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        value = sensitivity_max(explain, inputs, perturb_func=default_perturb_func, perturb_radius=float(radius),
                                n_perturb_samples=int(n_samples), max_examples_per_batch=int(per_eval))
    return {"sensitivity": float(value[0]), "n_samples": int(n_samples), "radius": float(radius), "seed": int(seed)}


def _infidelity_metric(case, options: dict):
    result = infidelity(case.explainer, case.inputs, case.attribution, seed=case.seed, **options)
    return MetricResult(result.pop("infidelity"), result)


def _sensitivity_metric(case, options: dict):
    result = sensitivity(case.explainer, case.inputs, seed=case.seed, **options)
    return MetricResult(result.pop("sensitivity"), result)


register(Metric(
    "infidelity", "faithfulness", "lower",
    "1 + n_samples target forwards (default 16); through windows only those a draw touches",
    "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations; captum.metrics.infidelity; quantus.Infidelity",
    _infidelity_metric, {"n_samples": 16, "noise_std": 0.1, "normalize": True, "per_eval": 4},
    quantus="Captum's definition (Gaussian noise I, squared error of Iᵀ·Φ against T(x) − T(x − I)); normalize=True "
            "rescales the map by its best β (scale-free, for rankings). Quantus's default replaces cumulative 4×4 patches "
            "by the image minimum and does not rescale.",
    summary="how well the map predicts the target's change under small random noise",
))
register(Metric(
    "sensitivity", "robustness", "lower",
    "n_samples explanations (default 10), each the method's own forwards and backwards",
    "Yeh et al. 2019; captum.metrics.sensitivity_max; quantus.MaxSensitivity",
    _sensitivity_metric, {"n_samples": 10, "radius": 0.02, "per_eval": 1},
    quantus="max over draws of ‖Φ(x+δ) − Φ(x)‖₂ / ‖Φ(x)‖₂ with δ uniform in [−radius, radius] (Captum); Quantus's "
            "MaxSensitivity has the same ratio of Frobenius norms, with 200 draws of δ uniform in [−0.2, 0.2] "
            "by default (radius=0.2, n_samples=200 give its setting).",
    summary='the largest change of the map under small noise (max over draws)',
))
