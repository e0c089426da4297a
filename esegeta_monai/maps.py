"""Many methods × many targets on one batch: the step shared by the runner, the transforms
and the Ignite handler.

:func:`compute_maps` computes the sliding-window prediction once (only if a target reads it,
and only if none was given), then runs every (target, method) pair with its own
:class:`~esegeta_monai.engine.Explainer` and yields one :class:`MapResult` per pair. A pair
that fails or times out yields a result with its error and the others go on.

Example:
    >>> import torch
    >>> from esegeta_monai.config import MethodSpec
    >>> from esegeta_monai.maps import compute_maps
    >>> from esegeta_monai.targets import parse_targets
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
    >>> results = compute_maps(net, torch.rand(1, 1, 12, 12, 12), [MethodSpec("saliency")],
    ...                        parse_targets("argmax:1"), {"roi_size": (8, 8, 8)})
    >>> [(r.method, r.target, r.status, tuple(r.attribution.shape)) for r in results]
    [('saliency', 'argmax1', 'ok', (1, 1, 12, 12, 12))]
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from esegeta_monai.config import MethodSpec
from esegeta_monai.engine import Explainer, predict
from esegeta_monai.errors import EsegetaError, MethodTimeout
from esegeta_monai.targets import Target
from esegeta_monai.windows import WINDOW_SETTINGS

__all__ = ["MapResult", "compute_maps", "error_text", "window_only"]

logger = logging.getLogger(__name__)


@dataclass
class MapResult:
    """The outcome of one (method, target) pair on one batch."""

    method: str  #: the method's output label (``as:`` name, else the method name)
    target: str  #: the target's name, e.g. ``argmax1``
    status: str  #: ``ok``, ``failed`` or ``timeout``
    seconds: float
    attribution: torch.Tensor | None = None  #: ``(B, C, *spatial)`` on the input's grid, when ok
    error: str | None = None
    report: dict | None = None  #: what the method reports besides the map (e.g. a surrogate's R²)


def error_text(error: BaseException) -> str:
    """Our errors say what to do already; others get their type name in front."""
    if isinstance(error, EsegetaError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def window_only(settings: dict[str, Any]) -> dict[str, Any]:
    """The sliding-window keys of ``settings`` with a value (enum values as strings)."""
    window = {k: v for k, v in settings.items() if k in WINDOW_SETTINGS and v is not None}
    for key in ("mode", "padding_mode"):
        if key in window:
            window[key] = str(getattr(window[key], "value", window[key]))
    return window


def compute_maps(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    methods: Sequence[MethodSpec],
    targets: Sequence[Target],
    window: dict[str, Any],
    prediction: torch.Tensor | None = None,
    amp: bool = False,
    device: torch.device | str | None = None,
    local: bool = False,
    progress: bool = False,
    timeout: float | None = None,
) -> Iterator[MapResult]:
    """Yield one :class:`MapResult` per (target, method), targets outermost.

    ``window`` holds sliding-window settings (``roi_size`` … ``cval``); ``prediction`` reuses
    a sliding-window prediction of ``inputs`` made elsewhere (e.g. by an evaluator).
    """
    window = window_only(window)
    if device is not None:
        network.to(device)
    if prediction is None and not local and any(t.needs_prediction for t in targets):
        start = time.monotonic()
        try:
            prediction = predict(network, inputs.to(device) if device is not None else inputs, amp=amp, **window)
        except Exception as error:  # the network cannot run on this input: every pair fails
            logger.debug("prediction failed", exc_info=True)
            text = f"prediction failed: {error_text(error)}"
            for target in targets:
                for method in methods:
                    yield MapResult(method.label, target.name, "failed", time.monotonic() - start, error=text)
            return
    for target in targets:
        for method in methods:
            start = time.monotonic()
            try:
                explainer = Explainer(network, method.name, target, amp=amp, device=device, local=local,
                                      progress=progress, timeout=timeout, **window, **method.options)
                attribution = explainer(inputs, prediction=prediction)
                yield MapResult(method.label, target.name, "ok", time.monotonic() - start, attribution=attribution,
                                report=getattr(explainer.method, "last_report", None))
            except MethodTimeout as error:
                yield MapResult(method.label, target.name, "timeout", time.monotonic() - start, error=str(error))
            except Exception as error:  # one failing method never stops the others
                logger.debug("%s", traceback.format_exc())
                yield MapResult(method.label, target.name, "failed", time.monotonic() - start, error=error_text(error))
