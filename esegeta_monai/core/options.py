"""How a map is computed, apart from the method and the windows: one object, not five keywords.

Example:
    >>> from esegeta_monai.core.options import RunOptions
    >>> options = RunOptions(amp=True, timeout=600)
    >>> options.as_dict()["timeout"], options.updated(progress=True).progress
    (600, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from esegeta_monai.errors import ConfigError

__all__ = ["RunOptions", "RUN_OPTIONS"]


@dataclass(frozen=True)
class RunOptions:
    """Options of a run that every (method, target) pair shares.

    Attributes:
        amp: autocast forwards (float16 on CUDA, bfloat16 on CPU); attributions accumulate in float32.
        device: where to compute (``None``: the network's device).
        local: explain each window against its own output (the original TorchEsegeta behaviour).
        progress: a progress bar over windows.
        timeout: seconds per method and image, checked between window batches.
    """

    amp: bool = False
    device: str | torch.device | None = None
    local: bool = False
    progress: bool = False
    timeout: float | None = None

    def __post_init__(self):
        for key in ("amp", "local", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        timeout = self.timeout
        if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")

    def updated(self, **changes) -> RunOptions:
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """The keyword arguments of :class:`~esegeta_monai.explainer.Explainer`."""
        return asdict(self)


#: the names of :class:`RunOptions`' fields
RUN_OPTIONS = tuple(RunOptions.__dataclass_fields__)
