"""An Ignite handler that explains every iteration of a MONAI evaluator: :class:`ExplainHandler`.

Attached to a ``SupervisedEvaluator`` (``handler.attach(evaluator)``), it runs right after
the evaluator's forward (``IterationEvents.FORWARD_COMPLETED``), before postprocessing and
decollation, on the preprocessed batch. It explains each image with the evaluator's network
and its inferer's window settings — gradients enabled inside, although the evaluator runs
under ``no_grad`` — reusing the evaluator's prediction for targets that read it (argmax,
Otsu). Each map is inverted through the bundle's ``preprocessing`` (MONAI ``Invertd``) and
written aligned with its input file as ``output_dir/<image stem>/<method>_<target>.nii.gz``
(``.nrrd``, ``.png``); every outcome goes to ``output_dir/<manifest>`` (JSON, rewritten atomically).
A failing method or image is recorded and logged; the evaluation goes on.

In a bundle, the override config ``esegeta bundle-config`` prints adds it without editing the
bundle (see the README, "Add an explain step to your bundle").

Example:
    >>> from esegeta_monai.handlers import ExplainHandler
    >>> handler = ExplainHandler(methods=["saliency"], targets=["argmax:1"], output_dir="/tmp/maps")
    >>> handler.attach(evaluator)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor, decollate_batch
from monai.utils import IgniteInfo, min_version, optional_import

from esegeta_monai.errors import ConfigError
from esegeta_monai.io import WRITER_FORMATS, check_output_dir, save_attribution
from esegeta_monai.maps import error_text
from esegeta_monai.runner import Manifest, image_stem, methods_header
from esegeta_monai.transforms import CHANNEL_REDUCTIONS, ExplainSettings

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["ExplainHandler"]

logger = logging.getLogger(__name__)

WRITER_SUFFIXES = {name: suffixes[0] for name, suffixes in WRITER_FORMATS.items()}  # nifti .nii.gz, nrrd, png


class ExplainHandler:
    """Explain each iteration's images and write the maps aligned with their input files.

    Args:
        methods: method names and/or ``{"name": ..., "as": label, **keywords}`` dicts.
        targets: target specs (``argmax:1``, ``otsu:1``, ``class:1`` …).
        output_dir: where the maps and the manifest go (created if needed).
        preprocessing: the transform that made the evaluator's inputs (the bundle's
            ``preprocessing``), inverted for writing; ``None``: maps stay on the network's grid.
        image_key: the image's key in that preprocessing (default ``"image"``).
        inferer: take window settings from this inferer instead of the evaluator's.
        network: explain this network instead of the evaluator's.
        reuse_prediction: reuse the evaluator's prediction (default); ``False`` recomputes it.
        channel_reduce: ``"sum"``/``"mean"`` over input channels (one map) or ``"none"`` (4D file).
        writer_format: ``"nifti"``, ``"nrrd"`` or ``"png"`` (2D maps).
        manifest: the manifest's file name in ``output_dir``.
        amp, device, local, progress, timeout: as :class:`~esegeta_monai.engine.Explainer`.
        window: window settings overriding the inferer's (``roi_size=…``, ``overlap=…``).
    """

    def __init__(
        self,
        methods: Sequence[str | dict] = ("saliency",),
        targets: str | Sequence[str] = ("argmax:1",),
        output_dir: str | Path = "./explain",
        preprocessing: Any = None,
        image_key: str = "image",
        inferer: Any = None,
        network: torch.nn.Module | None = None,
        reuse_prediction: bool = True,
        channel_reduce: str = "sum",
        writer_format: str = "nifti",
        manifest: str = "esegeta_manifest.json",
        amp: bool = False,
        device=None,
        local: bool = False,
        progress: bool = False,
        timeout: float | None = None,
        **window: Any,
    ):
        if writer_format not in WRITER_SUFFIXES:
            raise ConfigError(f"writer_format={writer_format!r}; choose one of {', '.join(WRITER_SUFFIXES)}")
        if channel_reduce not in CHANNEL_REDUCTIONS:
            raise ConfigError(f"channel_reduce={channel_reduce!r}; choose one of {', '.join(CHANNEL_REDUCTIONS)}")
        # validated now (methods, keywords, targets, window keys), so a typo fails before the first image
        self._check = ExplainSettings(None, list(methods), targets, None, window, "none", True, amp, device, local,
                                      progress, timeout, None)
        self.methods, self.targets, self.window = list(methods), targets, window
        self._settings: dict[int, ExplainSettings] = {}  # per engine, made at its first iteration
        self.output_dir = Path(output_dir)
        self.preprocessing = preprocessing
        self.image_key = image_key
        self.inferer = inferer
        self.network = network
        self.reuse_prediction = reuse_prediction
        self.channel_reduce = channel_reduce
        self.writer_format = writer_format
        self.manifest_name = manifest
        self.engine_options = dict(amp=amp, device=device, local=local, progress=progress, timeout=timeout)
        self.manifest: Manifest | None = None
        self._stems: dict[str, int] = {}

    def attach(self, engine: Engine) -> None:
        """Run after every forward of ``engine`` (a MONAI workflow: ``IterationEvents.FORWARD_COMPLETED``)."""
        from monai.engines.utils import IterationEvents

        out = check_output_dir(self.output_dir)
        self.manifest = Manifest(out / self.manifest_name, {"out": str(out), "methods": methods_header(self._check.methods)})
        if not engine.has_event_handler(self, IterationEvents.FORWARD_COMPLETED):
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.utils.enums import CommonKeys

        output = engine.state.output
        images, prediction = output[CommonKeys.IMAGE], output.get(CommonKeys.PRED)
        settings = self._settings.get(id(engine))
        if settings is None:  # the engine's network and inferer, once
            settings = self._settings[id(engine)] = ExplainSettings(
                self.network or engine.network, self.methods, self.targets, self.inferer or getattr(engine, "inferer", None),
                self.window, "none", True, spatial_dims=images.ndim - 2, **self.engine_options,
            )
        reuse = self.reuse_prediction and torch.is_tensor(prediction) and not settings.engine_options["local"]
        items = decollate_batch(images, detach=True) if isinstance(images, MetaTensor) else list(images)
        stems = [self._stem(item, engine, index) for index, item in enumerate(items)]
        records: list[dict[str, Any]] = []
        try:
            results = settings.results(images, prediction.float() if reuse else None)
        except Exception as error:  # e.g. a mask file that cannot be read: every map of the batch fails
            logger.error("explaining iteration %s failed: %s", engine.state.iteration, error_text(error))
            results = []
            records = [self._record(item, "*", "*", "failed", 0.0, error=error_text(error)) for item in items]
        for result in results:
            for item, stem, index in zip(items, stems, range(len(items))):
                records.append(self._write(result, index, item, stem))
        if self.manifest is None:  # called without attach()
            self.manifest = Manifest(check_output_dir(self.output_dir) / self.manifest_name, {"out": str(self.output_dir)})
        self.manifest.add(records)

    # -- helpers ------------------------------------------------------------------------
    def _stem(self, item: Any, engine: Engine, index: int) -> str:
        source = _filename(item)
        stem = image_stem(source) if source else f"iteration{engine.state.iteration}_{index}"
        self._stems[stem] = self._stems.get(stem, 0) + 1
        return stem if self._stems[stem] == 1 else f"{stem}_{self._stems[stem]}"

    def _write(self, result, index: int, item: Any, stem: str) -> dict[str, Any]:
        if result.status != "ok":
            logger.error("%s %s %s: %s — %s", stem, result.method, result.target, result.status, result.error)
            return self._record(item, result.method, result.target, result.status, result.seconds, error=result.error)
        start = time.monotonic()
        path = self.output_dir / stem / f"{result.method}_{result.target}{WRITER_SUFFIXES[self.writer_format]}"
        try:
            save_attribution(result.attribution[index], {self.image_key: item}, self.preprocessing, path,
                             image_key=self.image_key, channel_reduce=self.channel_reduce, writer_format=self.writer_format)
        except Exception as error:  # one unwritable map never stops the others
            logger.error("%s %s %s: failed — %s", stem, result.method, result.target, error_text(error))
            return self._record(item, result.method, result.target, "failed", result.seconds, error=error_text(error))
        return self._record(item, result.method, result.target, "ok", result.seconds + time.monotonic() - start, output=path)

    @staticmethod
    def _record(item, method, target, status, seconds, output=None, error=None) -> dict[str, Any]:
        return {"image": _filename(item), "method": method, "target": target, "status": status,
                "seconds": round(seconds, 3), "output": str(output) if output else None, "error": error}


def _filename(item: Any) -> str | None:
    meta = getattr(item, "meta", None) or {}
    source = meta.get("filename_or_obj")
    return str(source) if source else None
