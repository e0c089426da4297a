"""A cohort run: every image × method × target as a job, resumable, in parallel, across machines.

:func:`run_explanations` turns a :class:`~esegeta_monai.apps.config.RunConfig` into jobs
(:mod:`esegeta_monai.jobs.plan`), skips those an earlier run into the same folder finished (same
key, map intact; ``force`` recomputes), and runs the rest — in this process, in ``workers``
processes (``devices``), or sharded across torchrun ranks — one image at a time per worker: the
image is read through the bundle's preprocessing and predicted once for all its jobs. Each map is
written as ``OUT/<image folder>/<method>_<target>.nii.gz`` aligned with its input file, and its
record is appended to ``OUT/journal.jsonl`` the moment it is done; ``OUT/manifest.json`` is
regenerated from the journal. One failing image, target or method is recorded and the run goes on.

Example:
    >>> from esegeta_monai.apps.config import RunConfig
    >>> from esegeta_monai.apps.cohort import run_explanations
    >>> result = run_explanations(RunConfig(bundle="bundles/vessel_mra_demo", out="/tmp/esegeta_doc"))  # doctest: +SKIP
    >>> result.ok, result.summary["counts"]["skipped"]  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esegeta_monai import __version__
from esegeta_monai.apps.config import RunConfig
from esegeta_monai.apps.inputs import ImageInput, collect_inputs
from esegeta_monai.core.prediction import predict
from esegeta_monai.core.targets import Target, split_targets
from esegeta_monai.errors import BundleError, ConfigError, EsegetaError
from esegeta_monai.jobs.atomic import atomic_write_json, remove_stale_temporaries
from esegeta_monai.jobs.distributed import ProcessGroup, Ranks, torchrun_ranks
from esegeta_monai.jobs.fingerprint import DigestCache
from esegeta_monai.jobs.journal import MANIFEST_EVERY, Journal
from esegeta_monai.jobs.plan import Job, Unit, plan_units, reserve_names
from esegeta_monai.jobs.progress import CohortProgress, summarise
from esegeta_monai.jobs.record import Record
from esegeta_monai.jobs.resume import is_done
from esegeta_monai.jobs.workers import run_in_workers, worker_specs
from esegeta_monai.maps import compute_maps, error_text
from esegeta_monai.methods.spec import MethodSpec
from esegeta_monai.monai.bundle import Bundle, bundle_files, load_bundle
from esegeta_monai.monai.io import (WRITER_FORMATS, check_output_dir, load_for_explanation, prediction_labels, save_attribution,
                                  write_label_map)
from esegeta_monai.monai.io.labels import classification_summary, segmentation_summary
from esegeta_monai.report.html import write_report
from esegeta_monai.report.render import image_outputs, render_folder, render_image
from esegeta_monai.monai.io.masks import load_labels_like, load_mask_like

__all__ = ["RunResult", "run_explanations", "default_targets", "resolve_device", "UnitRunner"]

logger = logging.getLogger(__name__)



@dataclass
class RunResult:
    """What a run did: the records of its maps (skipped jobs have none) and of its other outputs
    (predictions, figures, scenes), the summary, where the manifest is."""

    records: list[Record] = field(default_factory=list)
    skipped: int = 0
    manifest: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    outputs: list[Record] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every job of this run wrote its map (``empty`` targets count as not ok)."""
        return not self.failures()

    def failures(self, allow_empty: bool = False) -> list[Record]:
        """The map records that are not ok (``allow_empty``: an empty target is not a failure); a
        failed prediction, figure or scene is logged and counted in the summary, not here."""
        return [r for r in self.records if not r.ok and not (allow_empty and r.status == "empty")]


def resolve_device(device: str | None) -> torch.device:
    """``None`` → CUDA when available, else CPU; a clear error for an unusable device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def default_targets(bundle: Bundle) -> list[str]:
    """``argmax:1`` for segmentation bundles, ``class:1`` for classifiers (from metadata)."""
    outputs = (bundle.metadata.get("network_data_format") or {}).get("outputs") or {}
    first = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
    kind = str(first.get("format", "")).lower() if isinstance(first, dict) else ""
    if kind in ("classification", "probabilities", "labels") or (first.get("spatial_shape") == [] if isinstance(first, dict) else False):
        return ["class:1"]
    return ["argmax:1"]


def _effective_channel_reduce(config: RunConfig, method: MethodSpec) -> str:
    """Layer maps asked per channel (``reduce: none``) keep their channels; else the run's choice."""
    return "none" if method.options.get("reduce") == "none" else config.channel_reduce


class UnitRunner:
    """Runs units in one process: the bundle loaded once, on one device.

    Calling it on a :class:`~esegeta_monai.jobs.plan.Unit` yields the unit's records, each
    appended to the journal (and its map published) before it is yielded.
    """

    def __init__(self, config: RunConfig, out: str | Path, run: str, device: str | None = None, bundle: Bundle | None = None,
                 window_progress: bool = False):
        self.config, self.out, self.run = config, Path(out), run
        self.device = resolve_device(device if device is not None else config.device)
        if bundle is None:
            bundle = load_bundle(config.bundle, weights=config.weights, device=self.device, extra_configs=config.bundle_configs)
        self.bundle = bundle
        self.bundle.network.to(self.device)
        self.window = config.window_settings(bundle.window)
        self.options = config.run_options(self.device).updated(progress=window_progress)
        self.journal = Journal(self.out)
        self._warnings: list[str] = []

    def __call__(self, unit: Unit) -> Iterator[Record]:
        yield from self._maps(unit)
        if self.config.figures:  # the image's figures and scene, from every map of its folder so far
            for outputs in image_outputs(self.journal.latest_by_path(), self.out, {unit.folder}).values():
                yield from render_image(self.out, self.journal, outputs, run=self.run)

    def _maps(self, unit: Unit) -> Iterator[Record]:
        start = time.monotonic()
        self._warnings = []
        if unit.error:
            yield from self._fail(unit, unit.jobs + ([unit.prediction] if unit.prediction else []), unit.error, start)
            return
        yield from self._fail(unit, [j for j in unit.jobs if j.error], None, start)
        jobs = [j for j in unit.jobs if not j.error]
        if not jobs and unit.prediction is None:
            return
        bundle = self.bundle
        try:
            data = load_for_explanation(unit.image, bundle.preprocessing, bundle.image_key, expected_channels=bundle.in_channels,
                                        expected_spatial_dims=bundle.spatial_dims, nan_policy=self.config.nan_policy,
                                        files=unit.files)
        except EsegetaError as error:
            logger.error("%s: every method fails — %s", unit.folder, error_text(error))
            yield from self._fail(unit, jobs + ([unit.prediction] if unit.prediction else []), error_text(error), start)
            return
        image = data[bundle.image_key]
        unit_warnings = list(getattr(image, "meta", {}).get("esegeta_warnings") or [])
        for warning in unit_warnings:
            logger.warning("%s: %s", unit.image, warning)
        self._warnings = unit_warnings
        targets: dict[str, Target] = {}
        for job in jobs:
            if job.target_name not in targets:
                try:
                    target = job.target.build(mask_loader=lambda path: load_mask_like(path, image))
                    targets[job.target_name] = target.named(job.target_name)
                except EsegetaError as error:
                    targets[job.target_name] = error_text(error)
        methods: dict[str, MethodSpec | str] = {}
        for job in jobs:
            if job.method.label not in methods:
                try:
                    methods[job.method.label] = _with_label_files(job.method, image)
                except EsegetaError as error:
                    methods[job.method.label] = error_text(error)
        runnable = {}
        for job in jobs:
            problem = next((p for p in (targets[job.target_name], methods[job.method.label]) if isinstance(p, str)), None)
            if problem:
                yield from self._fail(unit, [job], problem, start)
            else:
                runnable[(job.method.label, job.target_name)] = job
        prediction = None
        if unit.prediction is not None:
            prediction, record = self._predict(unit, data)
            yield record
        if not runnable:
            return
        results = compute_maps(bundle.network, image[None].to(self.device),
                               [m for m in methods.values() if not isinstance(m, str)],
                               [t for t in targets.values() if not isinstance(t, str)],
                               self.window, self.options, prediction=prediction, pairs=set(runnable))
        for result in results:
            job = runnable.pop((result.method, result.target))
            if result.status != "ok":
                yield self._failure(unit, job, result.status, result.seconds, result.error)
                continue
            yield self._write(unit, job, result, data)
        for job in runnable.values():  # never silent: a job without a result is recorded as failed
            yield self._failure(unit, job, "failed", time.monotonic() - start, "no result was computed for this job (a bug: please report it)")

    def _predict(self, unit: Unit, data) -> tuple[torch.Tensor | None, Record]:
        """Predict the image once, write what the network says (a segmentation's label map aligned
        with the input and its class volumes, or a classifier's scores) and return the prediction
        for the maps to reuse (segmentation only) with the record."""
        job, started = unit.prediction, time.monotonic()
        bundle, path = self.bundle, self.out / unit.prediction.path
        image = data[bundle.image_key]
        try:
            scores = predict(bundle.network, image[None].to(self.device), amp=self.options.amp, **self.window.as_dict())
            path.parent.mkdir(parents=True, exist_ok=True)
            if scores.ndim == 2:  # a classifier: its scores are the prediction
                summary = classification_summary(scores[0].tolist(), bundle.class_names)
                record = self.journal.publish_written(
                    lambda publish: atomic_write_json(path, summary, publish=publish),
                    lambda: self._record(unit, job, "ok", time.monotonic() - started, output=str(path), report=summary))
                return None, record
            label_map = prediction_labels(scores[0], data, bundle.preprocessing, image_key=bundle.image_key)
            summary = segmentation_summary(label_map.labels.numpy(), label_map.affine.numpy(), bundle.class_names,
                                           classes=scores.shape[1])
            atomic_write_json(path.with_name("prediction.json"), summary)
            writer_format = "nrrd" if path.name.endswith(".nrrd") else "nifti"
            record = self.journal.publish_written(
                lambda publish: write_label_map(label_map, path, writer_format, publish),
                lambda: self._record(unit, job, "ok", time.monotonic() - started, output=str(path), report=summary))
            return scores, record
        except Exception as error:  # the maps go on without it (they predict for themselves)
            logger.debug("the prediction of %s failed", unit.image, exc_info=True)
            return None, self._failure(unit, job, "failed", time.monotonic() - started, f"prediction: {error_text(error)}")

    # -- records ----------------------------------------------------------------------------
    def _record(self, unit: Unit, job: Job, status: str, seconds: float, **fields: Any) -> Record:
        return job.record(status, seconds, class_name=self.bundle.class_names.get(job.target.class_index), run=self.run,
                          inputs=unit.inputs, warnings=list(self._warnings), **fields)

    def _failure(self, unit: Unit, job: Job, status: str, seconds: float, error: str | None) -> Record:
        record = self.journal.record_failure(self._record(unit, job, status, seconds, error=error), stale=self.out / job.path)
        log = logger.warning if status == "empty" else logger.error
        log("%s %s %s: %s (%.1fs) — %s", unit.folder, job.method.label, job.target_name, status, seconds, record.error)
        return record

    def _fail(self, unit: Unit, jobs: list[Job], error: str | None, start: float) -> Iterator[Record]:
        for job in jobs:
            yield self._failure(unit, job, "failed", time.monotonic() - start, error or job.error)

    def _write(self, unit: Unit, job: Job, result, data) -> Record:
        started = time.monotonic()
        path = self.out / job.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = self.journal.publish_written(
                lambda publish: save_attribution(result.attribution[0], data, self.bundle.preprocessing, path,
                                                 image_key=self.bundle.image_key,
                                                 channel_reduce=_effective_channel_reduce(self.config, job.method),
                                                 writer_format=self.config.format, publish=publish),
                lambda: self._record(unit, job, "ok", result.seconds + time.monotonic() - started, output=str(path),
                                     report=result.report))
        except Exception as error:  # an unwritable map never stops the others
            logger.debug("writing %s failed", path, exc_info=True)
            return self._failure(unit, job, "failed", result.seconds + time.monotonic() - started, error_text(error))
        logger.info("%s %s %s: ok (%.1fs)", unit.folder, job.method.label, job.target_name, record.seconds)
        return record


def _with_label_files(spec: MethodSpec, image) -> MethodSpec:
    """The method with ``features: <label file>`` resampled onto this image's network grid."""
    features = spec.options.get("features")
    if isinstance(features, str) and features not in ("slic", "grid"):
        labels = torch.as_tensor(load_labels_like(features, image))[None, None]
        return MethodSpec(spec.name, {**spec.options, "features": labels}, spec.output_name)
    return spec


def _make_runner(config: RunConfig, out: str, run: str, device: str | None) -> UnitRunner:
    """The executor of one worker process (module level, so that it can be pickled)."""
    from esegeta_monai.apps.allocator import tune_allocator

    tune_allocator()
    return UnitRunner(config, out, run, device)


# ------------------------------------------------------------------------------------------- run
def _inputs(config: RunConfig, bundle: Bundle) -> list[ImageInput]:
    inputs = collect_inputs(config.images, config.image_lists, config.datalist_key)
    if not inputs and not config.images and not config.image_lists:
        inputs = [ImageInput(str(p)) for p in bundle.samples]
    if not inputs:
        raise ConfigError(f"bundle {bundle.root} has no sample input; pass --image FILE or --images LIST")
    return inputs


def _common_key_parts(config: RunConfig, bundle: Bundle, window, digests: DigestCache) -> dict[str, Any]:
    """What every job's key shares: the bundle's files by content, windows, writing, version."""
    files = bundle_files(bundle.root, config.weights, config.bundle_configs)
    fingerprint = {}
    for role, paths in files.items():
        try:
            fingerprint[role] = [digests.digest(p) for p in paths]
        except OSError as error:  # a missing weights file fails when the bundle is loaded, with its own message
            fingerprint[role] = [f"unreadable: {error.strerror or error}"]
    return {
        "version": __version__, "bundle": fingerprint, "window": window.as_dict(), "format": config.format,
        "channel_reduce": config.channel_reduce, "nan_policy": config.nan_policy, "amp": config.amp, "local": config.local,
    }


def _is_classifier(bundle: Bundle) -> bool:
    return default_targets(bundle) == ["class:1"]


def _prediction_suffix(config: RunConfig, bundle: Bundle) -> str | None:
    """What the prediction is written as (for figures, scenes and the report): a classifier's
    scores as JSON, a label map as NRRD or NIfTI; ``None`` without figures."""
    if not config.figures:
        return None
    if _is_classifier(bundle):
        return ".json"
    return ".nrrd" if config.format == "nrrd" else ".nii.gz"


def check_against_bundle(config: RunConfig, bundle: Bundle, targets: list[str], window) -> None:
    """What can be known before the first job — targets against the bundle's outputs, windows and
    output format against its dimensions — fails the run here (exit 2), not job by job."""
    source = f"bundle {bundle.root}"
    dims = bundle.spatial_dims
    if window.roi_size is not None and dims is not None and len(window.roi_size) != dims:
        raise ConfigError(f"roi_size {list(window.roi_size)} has {len(window.roi_size)} axes; {source} is {dims}D. "
                          f"Fix: give {dims} window sizes, e.g. --roi-size {','.join(['96'] * dims)}")
    if config.format == "png" and dims is not None and dims != 2:
        raise ConfigError(f"--format png writes 2D maps; {source} is {dims}D. Fix: --format nifti or nrrd")
    classifier = _is_classifier(bundle)
    names = ", ".join(f"{i} {n}" for i, n in sorted(bundle.class_names.items())) or "none named"
    for text in targets:
        for spec in split_targets(text):
            if classifier and spec.kind != "class":
                raise ConfigError(f"target {text}: {source} is a classifier (one score per class, no spatial output), "
                                  f"so {spec.kind}: has no region to explain. Fix: use class:{spec.class_index}")
            if bundle.out_channels is not None and spec.class_index >= bundle.out_channels:
                raise ConfigError(f"target {text}: class {spec.class_index} does not exist; {source} has "
                                  f"{bundle.out_channels} output channel(s) (classes: {names})")


def _run_info(config: RunConfig, bundle: Bundle, targets, window, ranks: Ranks | None) -> dict[str, Any]:
    return {
        "bundle": config.bundle or str(bundle.root), "out": str(config.out), "version": __version__,
        "methods": [{"name": m.name, "as": m.label, "options": m.options} for m in config.methods],
        "targets": list(targets), "window": window.as_dict(), "format": config.format, "force": config.force,
        "workers": config.workers, "devices": config.devices or [config.device or "auto"],
        **({"world_size": ranks.world_size} if ranks else {}),
    }


def run_explanations(config: RunConfig, bundle: Bundle | None = None) -> RunResult:
    """Run every job of ``config`` that is not done yet; never stops at a failure.

    Raises only for problems that make the whole run impossible (no bundle, no image, an
    unwritable output folder, a bad device, no worker able to load the bundle), before any job
    runs. Under torchrun (``WORLD_SIZE`` > 1) each rank runs its share; the result of rank 0
    then holds every rank's records of this run.
    """
    ranks = torchrun_ranks()
    group = ProcessGroup(ranks) if ranks else contextlib.nullcontext()
    with group:
        return _run(config, bundle, ranks, group if ranks else None)


def _run(config: RunConfig, given: Bundle | None, ranks: Ranks | None, group: ProcessGroup | None) -> RunResult:
    started = time.monotonic()
    if given is None and not config.bundle:
        raise ConfigError("no bundle given: pass --bundle DIR (or bundle: in the run config)")
    # devices are checked before anything is read or written
    devices = [str(resolve_device(d)) for d in config.devices] if config.devices else []
    device = ranks.device(config.device) if ranks else str(resolve_device(config.device))
    bundle = given or load_bundle(config.bundle, weights=config.weights, extra_configs=config.bundle_configs, build_network=False)
    inputs = _inputs(config, bundle)
    window = config.window_settings(bundle.window)
    targets = list(config.targets) or default_targets(bundle)
    check_against_bundle(config, bundle, targets, window)  # before anything is written
    out = check_output_dir(config.out)
    if ranks is None or ranks.local_rank == 0:
        remove_stale_temporaries(out)
    journal = Journal(out)
    prior = journal.records()
    digests = DigestCache(entry for record in prior for entry in record.inputs)
    folders, target_names = reserve_names(journal, [i.image for i in inputs], targets)
    units = plan_units([i.image for i in inputs], config.methods, targets, _common_key_parts(config, bundle, window, digests),
                       WRITER_FORMATS[config.format][0], folders, target_names, digests, owned=ranks.owns if ranks else None,
                       prediction_suffix=_prediction_suffix(config, bundle), case_files={i.image: i.files for i in inputs if i.files})
    latest = journal.latest_by_path()
    skipped = 0

    def pending(job: Job) -> bool:
        return config.force or job.key is None or not is_done(job.path, job.key, latest, out, config.verify)

    for unit in units:
        jobs = [j for j in unit.jobs if pending(j)]
        skipped += len(unit.jobs) - len(jobs)
        unit.jobs = jobs
        if unit.prediction is not None and not pending(unit.prediction):
            unit.prediction = None
    work = [u for u in units if u.jobs or u.prediction is not None]
    run = journal.start_run(_run_info(config, bundle, targets, window, ranks)) if not ranks or ranks.leader else None
    if group is not None:
        run = group.from_leader(run)
        group.barrier()  # every rank has read the journal before any rank writes to it
    jobs = sum(len(u.jobs) for u in work)
    logger.info("%d image(s), %d job(s) to run, %d done before (skipped)%s", len(inputs), jobs, skipped,
                f" — rank {ranks.rank} of {ranks.world_size}" if ranks else "")

    records: list[Record] = []
    progress = CohortProgress(jobs, len(work), enabled=bool(config.progress), skipped=skipped)

    def on_record(record: Record) -> None:
        records.append(record)
        progress.record(record)
        journal.write_manifest(at_most_every=MANIFEST_EVERY)

    try:
        if work:
            _execute(config, given, out, run, device, devices, work, ranks, journal, on_record, progress)
    finally:
        progress.close()
        if group is not None:
            group.barrier()
        if config.figures and (not ranks or ranks.leader):
            _finish_report(out, run, on_record)
        manifest = journal.write_manifest() if not ranks or ranks.leader else None
    if group is not None:
        skipped = group.total(skipped)
    if ranks is not None and ranks.leader:  # every rank's records of this run
        records = [r for r in journal.records() if r.run == run]
    result = RunResult([r for r in records if r.kind == "map"], skipped, manifest, run=run,
                       outputs=[r for r in records if r.kind != "map"])
    result.summary = summarise(records, skipped, time.monotonic() - started)
    return result


def _finish_report(out: Path, run: str, on_record) -> None:
    """The figures and scenes no unit made (maps an earlier run wrote), then the HTML report."""
    try:
        render_folder(out, run=run, progress=on_record)
        index = write_report(out)
        logger.info("report: %s", index)
    except Exception as error:  # the maps are written; a broken report never fails the run
        logger.debug("the report failed", exc_info=True)
        logger.error("the HTML report could not be written: %s (the maps are fine; retry with `esegeta report %s`)",
                     error_text(error), out)


def _execute(config, given, out, run, device, devices, work, ranks, journal, on_record, progress) -> None:
    """Run the pending units here, or in worker processes."""
    workers = max(config.workers, len(devices))
    if workers <= 1:
        runner = UnitRunner(config, out, run, devices[0] if devices else device, bundle=_with_network(given),
                            window_progress=False)
        for unit in work:
            for record in runner(unit):
                on_record(record)
            progress.image_done()
        return
    specs = worker_specs(workers, devices or ([device] if device != "cpu" else []),
                         cpu_threads=ranks.cpu_threads() if ranks else None, log_level=logging.getLogger("esegeta_monai").getEffectiveLevel())
    if given is not None:
        logger.info("a Bundle object cannot be shared with worker processes: each loads %s itself", given.root)

    def on_lost(index: int, reason: str, done: set[str]) -> None:
        unit = work[index]
        latest = journal.latest_by_path()  # a worker killed between its journal line and its message
        for job in unit.jobs + ([unit.prediction] if unit.prediction is not None else []):
            if job.path in done:
                continue
            record = latest.get(job.path)
            if record is None or record.run != run:
                record = journal.record_failure(job.record("failed", 0.0, error=reason, run=run, inputs=unit.inputs),
                                                stale=Path(out) / job.path)
            on_record(record)
        progress.image_done()

    def on_unit_record(index: int, record: Record) -> None:
        on_record(record)
        unit = work[index]
        unit_records[index] = unit_records.get(index, 0) + 1
        if unit_records[index] == len(unit.jobs) + (unit.prediction is not None):
            progress.image_done()

    unit_records: dict[int, int] = {}
    factory = functools.partial(_make_runner, _picklable(config), str(out), run)
    error = run_in_workers(work, factory, specs, on_unit_record, on_lost)
    if error is not None:
        raise BundleError(f"no worker could load the bundle: {error}")


def _with_network(bundle: Bundle | None) -> Bundle | None:
    return bundle if bundle is not None and bundle.network is not None else None


def _picklable(config: RunConfig) -> RunConfig:
    """The config as workers get it: progress bars are the parent's."""
    import copy

    clone = copy.copy(config)
    clone.progress = False
    return clone
