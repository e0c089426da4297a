"""An Ignite handler that explains every iteration of a MONAI evaluator: :class:`ExplainHandler`.

Attached to a ``SupervisedEvaluator`` (``handler.attach(evaluator)``), it runs right after
the evaluator's forward (``IterationEvents.FORWARD_COMPLETED``), before postprocessing and
decollation, on the preprocessed batch. It explains each image with the evaluator's network
and its inferer's window settings — gradients enabled inside, although the evaluator runs
under ``no_grad`` — reusing the evaluator's prediction for targets that read it (argmax,
Otsu). Each map is inverted through the bundle's ``preprocessing`` (MONAI ``Invertd``) and
written aligned with its input file as ``output_dir/<image folder>/<method>_<target>.nii.gz``
(``.nrrd``, ``.png``), with the command's job model: unique folder names per image, one record
per job appended to ``output_dir/esegeta_journal.jsonl`` as it ends, ``esegeta_manifest.json``
regenerated from it, and jobs an earlier evaluation finished (same image, weights, method,
target, windows and format; map intact) skipped unless ``force=True``. A failing method or image
is recorded and logged; the evaluation goes on.

In a bundle, the override config ``esegeta bundle-config`` prints adds it without editing the
bundle (see the README, "Add an explain step to your bundle").

Example:
    >>> from esegeta_monai.monai.handlers import ExplainHandler
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

from esegeta_monai import __version__
from esegeta_monai.core.options import RunOptions
from esegeta_monai.core.targets import Target
from esegeta_monai.errors import ConfigError
from esegeta_monai.jobs.atomic import remove_stale_temporaries
from esegeta_monai.jobs.fingerprint import DigestCache, state_digest, tensor_digest
from esegeta_monai.jobs.journal import HANDLER_JOURNAL_NAME, MANIFEST_EVERY, Journal
from esegeta_monai.jobs.plan import Job, Unit, plan_units, reserve_names
from esegeta_monai.jobs.record import Record
from esegeta_monai.jobs.resume import is_done
from esegeta_monai.maps import check_channel_reduce, error_text
from esegeta_monai.monai.io import WRITER_FORMATS, check_output_dir, save_attribution
from esegeta_monai.monai.transforms import ExplainSettings

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
        targets: target specs (``argmax:1``, ``otsu:1``, ``class:1``, ``mask:1:FILE`` …).
        output_dir: where the maps, the journal and the manifest go (created if needed).
        preprocessing: the transform that made the evaluator's inputs (the bundle's
            ``preprocessing``), inverted for writing; ``None``: maps stay on the network's grid.
        image_key: the image's key in that preprocessing (default ``"image"``).
        inferer: take window settings from this inferer instead of the evaluator's.
        network: explain this network instead of the evaluator's.
        reuse_prediction: reuse the evaluator's prediction (default); ``False`` recomputes it.
        channel_reduce: ``"sum"``/``"mean"`` over input channels (one map) or ``"none"`` (4D file).
        writer_format: ``"nifti"``, ``"nrrd"`` or ``"png"`` (2D maps).
        manifest: the manifest's file name in ``output_dir`` (the journal is ``esegeta_journal.jsonl``).
        force: recompute jobs an earlier evaluation into ``output_dir`` finished (default: skip them).
        amp, device, local, progress, timeout: as :class:`~esegeta_monai.explainer.Explainer`.
        window: window settings overriding the inferer's (``roi_size=…``, ``overlap=…``).

    A job's key covers the image (its file's content, or the tensor for in-memory inputs), the
    network's weights, the methods with their options, the targets (mask files by content), the
    window settings and the output format — not the preprocessing: after changing it, use
    ``force=True`` or another ``output_dir``.
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
        force: bool = False,
        amp: bool = False,
        device=None,
        local: bool = False,
        progress: bool = False,
        timeout: float | None = None,
        **window: Any,
    ):
        if writer_format not in WRITER_SUFFIXES:
            raise ConfigError(f"writer_format={writer_format!r}; choose one of {', '.join(WRITER_SUFFIXES)}")
        check_channel_reduce(channel_reduce)
        targets = [targets] if isinstance(targets, (str, Target)) else list(targets)
        if not all(isinstance(t, str) for t in targets):
            raise ConfigError("ExplainHandler targets are specs such as 'argmax:1' or 'mask:1:FILE' (strings), so that "
                              "their maps can be named and resumed; use Explaind for Target objects")
        self.options = RunOptions(amp, device, local, progress, timeout)
        # validated now (methods, keywords, targets, window keys), so a typo fails before the first image
        self._check = ExplainSettings(None, list(methods), targets, None, window, "none", True, self.options, None)
        self.methods, self.targets, self.window = self._check.methods, targets, window
        self._settings: dict[int, ExplainSettings] = {}  # per engine, made at its first iteration
        self._common: dict[int, dict[str, Any]] = {}
        self.output_dir = Path(output_dir)
        self.preprocessing = preprocessing
        self.image_key = image_key
        self.inferer = inferer
        self.network = network
        self.reuse_prediction = reuse_prediction
        self.channel_reduce = channel_reduce
        self.writer_format = writer_format
        self.manifest_name = manifest
        self.force = force
        self.journal: Journal | None = None
        self.run: str | None = None
        self._digests = DigestCache()

    # -- engine events -----------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Run after every forward of ``engine`` (a MONAI workflow: ``IterationEvents.FORWARD_COMPLETED``),
        and write the manifest when it completes."""
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        self._open()
        if not engine.has_event_handler(self, IterationEvents.FORWARD_COMPLETED):
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)
        if not engine.has_event_handler(self.write_manifest, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.write_manifest)

    def write_manifest(self, engine: Engine | None = None) -> Path:
        """Regenerate the manifest from the journal."""
        self._open()
        return self.journal.write_manifest(path=self.output_dir / self.manifest_name)

    def __call__(self, engine: Engine) -> None:
        from monai.utils.enums import CommonKeys

        self._open()
        output = engine.state.output
        images, prediction = output[CommonKeys.IMAGE], output.get(CommonKeys.PRED)
        settings = self._settings_for(engine, images)
        items = decollate_batch(images, detach=True) if isinstance(images, MetaTensor) else list(images)
        units = self._units(engine, items)
        pending = {(job.method.label, job.target_name) for unit in units for job in unit.jobs}
        if not pending:
            return
        reuse = self.reuse_prediction and torch.is_tensor(prediction) and not self.options.local
        start = time.monotonic()
        try:
            names = {job.target.text: job.target_name for unit in units for job in unit.jobs}
            results = settings.results(images, prediction.float() if reuse else None, pairs=pending, names=names)
        except Exception as error:  # e.g. a mask file that cannot be read: every map of the batch fails
            logger.error("explaining iteration %s failed: %s", engine.state.iteration, error_text(error))
            for unit in units:
                for job in unit.jobs:
                    self._failure(unit, job, "failed", time.monotonic() - start, error_text(error))
            self.write_manifest()
            return
        for result in results:
            for index, (item, unit) in enumerate(zip(items, units)):
                job = next((j for j in unit.jobs if (j.method.label, j.target_name) == (result.method, result.target)), None)
                if job is not None:
                    self._write(result, index, item, unit, job)
        self.journal.write_manifest(path=self.output_dir / self.manifest_name, at_most_every=MANIFEST_EVERY)

    # -- helpers -----------------------------------------------------------------------------
    def _open(self) -> None:
        if self.journal is not None:
            return
        out = check_output_dir(self.output_dir)
        remove_stale_temporaries(out, legacy=False)  # the folder is shared with the bundle's own outputs
        self.journal = Journal(out, name=HANDLER_JOURNAL_NAME)
        prior = self.journal.records()
        self._digests = DigestCache(entry for record in prior for entry in record.inputs)
        self.run = self.journal.start_run({"out": str(out), "version": __version__, "handler": "ExplainHandler",
                                           "methods": [{"name": m.name, "as": m.label, "options": m.options} for m in self.methods],
                                           "targets": list(self.targets), "format": self.writer_format, "force": self.force})

    def _settings_for(self, engine: Engine, images) -> ExplainSettings:
        settings = self._settings.get(id(engine))
        if settings is None:  # the engine's network and inferer, once
            network = self.network or engine.network
            settings = self._settings[id(engine)] = ExplainSettings(
                network, self.methods, self.targets, self.inferer or getattr(engine, "inferer", None), self.window, "none",
                True, self.options, spatial_dims=images.ndim - 2,
            )
            weights = state_digest(network)
            self._common[id(engine)] = {"version": __version__, "weights": weights, "window": settings.window.as_dict(),
                                        "format": self.writer_format, "channel_reduce": self.channel_reduce,
                                        "amp": self.options.amp, "local": self.options.local}
        return settings

    def _units(self, engine: Engine, items: list) -> list[Unit]:
        """One unit per image of the batch, with its pending jobs."""
        names, digests = [], {}
        for index, item in enumerate(items):
            source = _filename(item)
            if source and Path(source).exists():
                names.append(source)
            else:  # an in-memory image: named by its iteration, keyed by its content
                name = source or f"iteration{engine.state.iteration}_{index}"
                names.append(name)
                digests[name] = tensor_digest(torch.as_tensor(item))
        folders, targets = reserve_names(self.journal, names, self.targets)
        units = plan_units(names, self.methods, self.targets, self._common[id(engine)], WRITER_SUFFIXES[self.writer_format],
                           folders, targets, self._digests, image_digests=digests)
        latest = self.journal.latest_by_path() if not self.force else {}
        for unit in units:
            unit.jobs = [j for j in unit.jobs if self.force or j.key is None or not is_done(j.path, j.key, latest, self.output_dir)]
        return units

    def _record(self, unit: Unit, job: Job, status: str, seconds: float, **fields: Any) -> Record:
        return job.record(status, seconds, run=self.run, inputs=unit.inputs, **fields)

    def _failure(self, unit: Unit, job: Job, status: str, seconds: float, error: str | None) -> Record:
        logger.error("%s %s %s: %s — %s", unit.folder, job.method.label, job.target_name, status, error)
        return self.journal.record_failure(self._record(unit, job, status, seconds, error=error), stale=self.output_dir / job.path)

    def _write(self, result, index: int, item: Any, unit: Unit, job: Job) -> Record:
        if job.error:
            return self._failure(unit, job, "failed", 0.0, job.error)
        if result.status != "ok":
            return self._failure(unit, job, result.status, result.seconds, result.error)
        start = time.monotonic()
        path = self.output_dir / job.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return self.journal.publish_written(
                lambda publish: save_attribution(result.attribution[index], {self.image_key: item}, self.preprocessing, path,
                                                 image_key=self.image_key, channel_reduce=self.channel_reduce,
                                                 writer_format=self.writer_format, publish=publish),
                lambda: self._record(unit, job, "ok", result.seconds + time.monotonic() - start, output=str(path),
                                     report=result.report))
        except Exception as error:  # one unwritable map never stops the others
            return self._failure(unit, job, "failed", result.seconds, error_text(error))


def _filename(item: Any) -> str | None:
    meta = getattr(item, "meta", None) or {}
    source = meta.get("filename_or_obj")
    return str(source) if source else None
