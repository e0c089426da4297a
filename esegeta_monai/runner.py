"""Many methods × many targets × many images, with a manifest that records every outcome.

For each image: load it through the bundle's preprocessing, compute the sliding-window
prediction once (reused by every target that needs it), run every (target, method) pair
with its own time budget, and write each map as ``OUT/<image stem>/<method>_<target>.nii.gz``
aligned with the input file. One failing image, target or method is recorded and the run
goes on. ``OUT/manifest.json`` is rewritten atomically after every record.

Example:
    >>> from esegeta_monai.config import MethodSpec, RunConfig
    >>> from esegeta_monai.runner import run_explanations
    >>> result = run_explanations(RunConfig(bundle="bundles/vessel_mra_demo", out="/tmp/esegeta_doc"))  # doctest: +SKIP
    >>> result.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esegeta_monai.bundle import Bundle, load_bundle
from esegeta_monai.config import MethodSpec, RunConfig
from esegeta_monai.errors import ConfigError, EsegetaError
from esegeta_monai.io import WRITER_FORMATS, check_output_dir, load_for_explanation, save_attribution
from esegeta_monai.io.masks import load_labels_like, load_mask_like
from esegeta_monai.maps import compute_maps, error_text, window_only
from esegeta_monai.targets import Target, parse_targets

__all__ = ["Manifest", "RunResult", "run_explanations", "default_targets", "image_stem", "resolve_device", "methods_header"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


@dataclass
class RunResult:
    """The records of a run and where the manifest is."""

    records: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return all(record["status"] == "ok" for record in self.records)


def image_stem(path: str | Path) -> str:
    """File name without its image extension(s): ``scan.nii.gz`` → ``scan``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


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
    return resolved


def default_targets(bundle: Bundle) -> list[str]:
    """``argmax:1`` for segmentation bundles, ``class:1`` for classifiers (from metadata)."""
    outputs = (bundle.metadata.get("network_data_format") or {}).get("outputs") or {}
    first = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
    kind = str(first.get("format", "")).lower() if isinstance(first, dict) else ""
    if kind in ("classification", "probabilities", "labels") or (first.get("spatial_shape") == [] if isinstance(first, dict) else False):
        return ["class:1"]
    return ["argmax:1"]


def _window_settings(bundle: Bundle, config: RunConfig) -> dict[str, Any]:
    """The bundle's inferer settings, overridden by the run config's."""
    return window_only({**(bundle.inferer or {}), **config.window})


class Manifest:
    """``records`` of a run, rewritten atomically to ``path`` (JSON) after every change, so an
    interrupted run leaves a complete manifest of what was done.

    Example:
        >>> import json, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "manifest.json"
        >>> manifest = Manifest(path, {"bundle": "demo"})
        >>> manifest.add([{"image": "a.nii.gz", "status": "ok"}])
        >>> json.loads(path.read_text())["records"][0]["status"]
        'ok'
    """

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = dict(header)
        self.records: list[dict[str, Any]] = []

    def add(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)
        self.write()

    def write(self) -> None:
        payload = {**self.header, "records": self.records}
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".json.tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(payload, stream, indent=2)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def methods_header(methods) -> list[dict[str, Any]]:
    """The methods of a run as the manifest records them."""
    return [{"name": m.name, "as": m.label, "options": _jsonable(m.options)} for m in methods]


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v)) for k, v in options.items()}


def run_explanations(config: RunConfig, bundle: Bundle | None = None) -> RunResult:
    """Run every method and target on every image of ``config``; never stops at a failure.

    Raises only for problems that make the whole run impossible (no bundle, no image,
    an unwritable output folder, a bad device), before anything is written.
    """
    device = resolve_device(config.device)
    if bundle is None:
        if not config.bundle:
            raise ConfigError("no bundle given: pass --bundle DIR (or bundle: in the run config)")
        bundle = load_bundle(config.bundle, weights=config.weights, device=device, extra_configs=config.bundle_configs)
    bundle.network.to(device)
    images = list(config.images) or [str(p) for p in bundle.samples]
    if not images:
        raise ConfigError(f"bundle {bundle.root} has no sample input; pass --image FILE")
    out = check_output_dir(config.out)
    window = _window_settings(bundle, config)
    target_specs = list(config.targets) or default_targets(bundle)
    progress = bool(config.progress)
    manifest = Manifest(out / "manifest.json", {"bundle": config.bundle, "out": str(config.out), "methods": methods_header(config.methods)})
    result = RunResult(manifest=manifest.path)
    used_stems: dict[str, int] = {}
    logger.info("explaining %d image(s) with %s; targets %s; windows %s", len(images), ", ".join(m.name for m in config.methods), ", ".join(target_specs), window)

    for image in images:
        stem = image_stem(image)
        used_stems[stem] = used_stems.get(stem, 0) + 1
        if used_stems[stem] > 1:
            stem = f"{stem}_{used_stems[stem]}"
        records = _explain_image(image, stem, bundle, config, window, target_specs, out, device, progress)
        result.records.extend(records)
        manifest.add(records)
    failed = sum(r["status"] != "ok" for r in result.records)
    logger.info("%d map(s) written, %d failed or timed out; manifest: %s", len(result.records) - failed, failed, manifest.path)
    return result


def _target_names(spec: str) -> list[str]:
    """The names a target spec's maps would have, without reading any mask file."""
    try:
        return [target.name for target in parse_targets(spec, mask_loader=lambda path: np.ones(1))]
    except EsegetaError:
        return [spec]


def _with_label_files(methods, image) -> list:
    """The methods with ``features: <label file>`` resampled onto this image's network grid."""
    resolved = []
    for spec in methods:
        features = spec.options.get("features")
        if isinstance(features, str) and features not in ("slic", "grid"):
            labels = torch.as_tensor(load_labels_like(features, image))[None, None]
            spec = MethodSpec(spec.name, {**spec.options, "features": labels}, spec.output_name)
        resolved.append(spec)
    return resolved


def _channel_reduce(config: RunConfig, label: str) -> str:
    """How a map's channels are written: kept for layer maps asked per channel (``reduce: none``),
    else the run's ``channel_reduce`` (input channels summed by default)."""
    spec = next((m for m in config.methods if m.label == label), None)
    return "none" if spec is not None and spec.options.get("reduce") == "none" else config.channel_reduce


def _explain_image(image, stem, bundle, config, window, target_specs, out, device, progress) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    class_of: dict[str, int] = {}  # target name → output channel, for the channel's name in the metadata

    def record(method: str, target: str, status: str, seconds: float, output: Path | None = None, error: str | None = None,
               log_it: bool = True, report: dict | None = None):
        records.append({
            "image": str(image), "method": method, "target": target, "class_name": bundle.class_names.get(class_of.get(target, -1)),
            "status": status, "seconds": round(seconds, 3), "output": str(output) if output else None, "error": error,
            **({"report": report} if report else {}),
        })
        if log_it:
            log = logger.info if status == "ok" else logger.error
            log("%s %s %s: %s (%.1fs)%s", stem, method, target, status, seconds, f" — {error}" if error else "")

    start = time.monotonic()
    try:
        data = load_for_explanation(
            image, bundle.preprocessing, bundle.image_key,
            expected_channels=bundle.in_channels, expected_spatial_dims=bundle.spatial_dims, nan_policy=config.nan_policy,
        )
    except EsegetaError as error:
        logger.error("%s: every method fails — %s", stem, error_text(error))
        for spec in target_specs:
            for name in _target_names(spec):
                for method in config.methods:
                    record(method.label, name, "failed", time.monotonic() - start, error=error_text(error), log_it=False)
        return records
    image_tensor = data[bundle.image_key]
    x = image_tensor[None].to(device)

    targets: list[tuple[str, Target]] = []
    for spec in target_specs:
        try:
            parsed = parse_targets(spec, mask_loader=lambda path: load_mask_like(path, image_tensor))
            known = {target.name for _, target in targets}
            targets.extend((spec, target) for target in parsed if target.name not in known)  # a repeated spec runs once
            class_of.update({target.name: target.class_index for target in parsed})
        except EsegetaError as error:
            for method in config.methods:
                record(method.label, spec, "failed", 0.0, error=error_text(error))

    folder = out / stem
    try:
        methods = _with_label_files(config.methods, image_tensor)
    except EsegetaError as error:
        for _, target in targets:
            for method in config.methods:
                record(method.label, target.name, "failed", 0.0, error=error_text(error))
        return records
    for result in compute_maps(bundle.network, x, methods, [t for _, t in targets], window, amp=config.amp,
                               device=device, local=config.local, progress=progress, timeout=config.timeout):
        path = folder / f"{result.method}_{result.target}{WRITER_FORMATS[config.format][0]}"
        if result.status != "ok":
            record(result.method, result.target, result.status, result.seconds, error=result.error)
            continue
        t0 = time.monotonic()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_attribution(result.attribution[0], data, bundle.preprocessing, path, image_key=bundle.image_key,
                             channel_reduce=_channel_reduce(config, result.method),
                             writer_format=config.format)
            record(result.method, result.target, "ok", result.seconds + time.monotonic() - t0, output=path, report=result.report)
        except Exception as error:  # an unwritable map never stops the others
            logger.debug("%s", traceback.format_exc())
            record(result.method, result.target, "failed", result.seconds + time.monotonic() - t0, error=error_text(error))
    return records
