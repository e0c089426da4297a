"""Many methods × many targets on one batch: the step shared by the command, the transforms
and the Ignite handler.

:func:`compute_maps` computes the sliding-window prediction once (only if a target reads it,
and only if none was given), then runs every (target, method) pair with its own
:class:`~esegeta_monai.explainer.Explainer` and yields one :class:`MapResult` per pair. A pair
that fails or times out yields a result with its error and the others go on. Also here:
:func:`reduce_channels`, the one way a map's input channels become one map (or stay).

Example:
    >>> import torch
    >>> from esegeta_monai.core.targets import parse_targets
    >>> from esegeta_monai.core.windows import WindowSettings
    >>> from esegeta_monai.maps import compute_maps
    >>> from esegeta_monai.methods.spec import MethodSpec
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
    >>> results = compute_maps(net, torch.rand(1, 1, 12, 12, 12), [MethodSpec("saliency")],
    ...                        parse_targets("argmax:1"), WindowSettings(roi_size=(8, 8, 8)))
    >>> [(r.method, r.target, r.status, tuple(r.attribution.shape)) for r in results]
    [('saliency', 'argmax1', 'ok', (1, 1, 12, 12, 12))]
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from esegeta_monai.core.options import RunOptions
from esegeta_monai.core.targets import Target
from esegeta_monai.core.windows import WindowSettings
from esegeta_monai.errors import ConfigError, EmptyTargetError, EsegetaError, MethodTimeout
from esegeta_monai.explainer import Explainer, predict
from esegeta_monai.methods.spec import MethodSpec

__all__ = ["MapResult", "compute_maps", "error_text", "reduce_channels", "CHANNEL_REDUCTIONS", "check_channel_reduce"]

logger = logging.getLogger(__name__)

#: how a map's input channels are written: summed, averaged, or kept (one volume per channel)
CHANNEL_REDUCTIONS = ("sum", "mean", "none")


@dataclass
class MapResult:
    """The outcome of one (method, target) pair on one batch."""

    method: str  #: the method's output label (``as:`` name, else the method name)
    target: str  #: the target's name, e.g. ``argmax1``
    status: str  #: ``ok``, ``failed``, ``timeout`` or ``empty`` (the target's region is empty: no map)
    seconds: float
    attribution: torch.Tensor | None = None  #: ``(B, C, *spatial)`` on the input's grid, when ok
    error: str | None = None
    report: dict | None = None  #: what the method reports besides the map (e.g. a surrogate's R²)


def error_text(error: BaseException) -> str:
    """Our errors say what to do already; others get their type name in front."""
    if isinstance(error, EsegetaError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def check_channel_reduce(how: str, source: str = "channel_reduce") -> str:
    if how not in CHANNEL_REDUCTIONS:
        raise ConfigError(f"{source}={how!r}; choose one of {', '.join(CHANNEL_REDUCTIONS)}")
    return how


def reduce_channels(attribution: torch.Tensor, how: str, channel_dim: int = 1) -> torch.Tensor:
    """One map from per-input-channel maps (``sum``/``mean``), or unchanged (``none``).

    Example:
        >>> reduce_channels(torch.ones(1, 3, 2, 2), "sum").shape
        torch.Size([1, 1, 2, 2])
    """
    check_channel_reduce(how)
    if how == "none":
        return attribution
    if how == "sum":
        return attribution.sum(channel_dim, keepdim=True)
    return attribution.mean(channel_dim, keepdim=True)


def compute_maps(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    methods: Sequence[MethodSpec],
    targets: Sequence[Target],
    window: WindowSettings | None = None,
    options: RunOptions | None = None,
    prediction: torch.Tensor | None = None,
    pairs: set[tuple[str, str]] | None = None,
) -> Iterator[MapResult]:
    """Yield one :class:`MapResult` per (target, method), targets outermost.

    ``prediction`` reuses a sliding-window prediction of ``inputs`` made elsewhere (e.g. by an
    evaluator); ``pairs`` limits the run to these ``(method label, target name)`` pairs.
    """
    window = window or WindowSettings()
    options = options or RunOptions()
    if pairs is not None:
        targets = [t for t in targets if any((m.label, t.name) in pairs for m in methods)]
    device = options.device
    if device is not None:
        network.to(device)
    if prediction is None and not options.local and any(t.needs_prediction for t in targets):
        start = time.monotonic()
        try:
            prediction = predict(network, inputs.to(device) if device is not None else inputs, amp=options.amp, **window.as_dict())
        except Exception as error:  # the network cannot run on this input: every pair fails
            logger.debug("prediction failed", exc_info=True)
            text = f"prediction failed: {error_text(error)}"
            for target in targets:
                for method in methods:
                    if pairs is not None and (method.label, target.name) not in pairs:
                        continue
                    yield MapResult(method.label, target.name, "failed", time.monotonic() - start, error=text)
            return
    for target in targets:
        for method in methods:
            if pairs is not None and (method.label, target.name) not in pairs:
                continue
            start = time.monotonic()
            try:
                explainer = Explainer(network, method.name, target, **window.as_dict(), **options.as_dict(), **method.options)
                attribution = explainer(inputs, prediction=prediction)
                report = dict(getattr(explainer.method, "last_report", None) or {})
                if getattr(explainer, "last_region_voxels", None) is not None:
                    report["region_voxels"] = explainer.last_region_voxels  # the size of what was explained, per image
                yield MapResult(method.label, target.name, "ok", time.monotonic() - start, attribution=attribution,
                                report=report or None)
            except MethodTimeout as error:
                yield MapResult(method.label, target.name, "timeout", time.monotonic() - start, error=str(error))
            except EmptyTargetError as error:
                logger.warning("%s", error)
                yield MapResult(method.label, target.name, "empty", time.monotonic() - start, error=str(error))
            except Exception as error:  # one failing method never stops the others
                logger.debug("%s", traceback.format_exc())
                yield MapResult(method.label, target.name, "failed", time.monotonic() - start, error=error_text(error))
