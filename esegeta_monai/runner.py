"""Many methods × many targets × many images, with a manifest that records every outcome.

For each image: load it through the bundle's preprocessing, compute the sliding-window
prediction once (reused by every target that needs it), run every (target, method) pair
with its own time budget, and write each map as ``OUT/<image stem>/<method>_<target>.nii.gz``
aligned with the input file. One failing image, target or method is recorded and the run
goes on. ``OUT/manifest.json`` is rewritten atomically after every record.

Example:
    >>> from esegeta_monai.config import RunConfig
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
from esegeta_monai.config import RunConfig
from esegeta_monai.engine import Explainer, predict
from esegeta_monai.errors import ConfigError, EsegetaError, MethodTimeout
from esegeta_monai.io import check_output_dir, load_for_explanation, save_attribution
from esegeta_monai.io.masks import load_mask_like
from esegeta_monai.targets import Target, parse_targets

__all__ = ["RunResult", "run_explanations", "default_targets", "image_stem", "resolve_device"]

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
    settings = {k: v for k, v in (bundle.inferer or {}).items() if v is not None}
    settings.update(config.window)
    allowed = ("roi_size", "overlap", "mode", "sw_batch_size", "sigma_scale", "padding_mode", "cval")
    settings = {k: v for k, v in settings.items() if k in allowed}
    if "mode" in settings:
        settings["mode"] = str(getattr(settings["mode"], "value", settings["mode"]))
    if "padding_mode" in settings:
        settings["padding_mode"] = str(getattr(settings["padding_mode"], "value", settings["padding_mode"]))
    return settings


def _write_manifest(path: Path, config: RunConfig, records: list[dict[str, Any]]) -> None:
    payload = {
        "bundle": config.bundle,
        "out": str(config.out),
        "methods": [{"name": m.name, "as": m.label, "options": _jsonable(m.options)} for m in config.methods],
        "records": records,
    }
    handle, temporary = tempfile.mkstemp(prefix=".manifest.", suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v)) for k, v in options.items()}


def _error_text(error: BaseException) -> str:
    if isinstance(error, EsegetaError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_explanations(config: RunConfig, bundle: Bundle | None = None) -> RunResult:
    """Run every method and target on every image of ``config``; never stops at a failure.

    Raises only for problems that make the whole run impossible (no bundle, no image,
    an unwritable output folder, a bad device), before anything is written.
    """
    device = resolve_device(config.device)
    if bundle is None:
        if not config.bundle:
            raise ConfigError("no bundle given: pass --bundle DIR (or bundle: in the run config)")
        bundle = load_bundle(config.bundle, weights=config.weights, device=device)
    bundle.network.to(device)
    images = list(config.images) or [str(p) for p in bundle.samples]
    if not images:
        raise ConfigError(f"bundle {bundle.root} has no sample input; pass --image FILE")
    out = check_output_dir(config.out)
    window = _window_settings(bundle, config)
    target_specs = list(config.targets) or default_targets(bundle)
    progress = bool(config.progress)
    manifest = out / "manifest.json"
    result = RunResult(manifest=manifest)
    used_stems: dict[str, int] = {}
    logger.info("explaining %d image(s) with %s; targets %s; windows %s", len(images), ", ".join(m.name for m in config.methods), ", ".join(target_specs), window)

    for image in images:
        stem = image_stem(image)
        used_stems[stem] = used_stems.get(stem, 0) + 1
        if used_stems[stem] > 1:
            stem = f"{stem}_{used_stems[stem]}"
        records = _explain_image(image, stem, bundle, config, window, target_specs, out, device, progress)
        result.records.extend(records)
        _write_manifest(manifest, config, result.records)
    failed = sum(r["status"] != "ok" for r in result.records)
    logger.info("%d map(s) written, %d failed or timed out; manifest: %s", len(result.records) - failed, failed, manifest)
    return result


def _target_names(spec: str) -> list[str]:
    """The names a target spec's maps would have, without reading any mask file."""
    try:
        return [target.name for target in parse_targets(spec, mask_loader=lambda path: np.ones(1))]
    except EsegetaError:
        return [spec]


def _explain_image(image, stem, bundle, config, window, target_specs, out, device, progress) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []

    def record(method: str, target: str, status: str, seconds: float, output: Path | None = None, error: str | None = None,
               log_it: bool = True):
        records.append({
            "image": str(image), "method": method, "target": target, "status": status,
            "seconds": round(seconds, 3), "output": str(output) if output else None, "error": error,
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
        logger.error("%s: every method fails — %s", stem, _error_text(error))
        for spec in target_specs:
            for name in _target_names(spec):
                for method in config.methods:
                    record(method.label, name, "failed", time.monotonic() - start, error=_error_text(error), log_it=False)
        return records
    image_tensor = data[bundle.image_key]
    x = image_tensor[None].to(device)

    targets: list[tuple[str, Target]] = []
    for spec in target_specs:
        try:
            parsed = parse_targets(spec, mask_loader=lambda path: load_mask_like(path, image_tensor))
            known = {target.name for _, target in targets}
            targets.extend((spec, target) for target in parsed if target.name not in known)  # a repeated spec runs once
        except EsegetaError as error:
            for method in config.methods:
                record(method.label, spec, "failed", 0.0, error=_error_text(error))

    prediction = None
    if any(target.needs_prediction for _, target in targets) and not config.local:
        try:
            prediction = predict(bundle.network, x, window.get("roi_size"), window.get("sw_batch_size", 1),
                                 overlap=window.get("overlap", 0.25), mode=window.get("mode", "gaussian"),
                                 sigma_scale=window.get("sigma_scale", 0.125), padding_mode=window.get("padding_mode", "constant"),
                                 cval=window.get("cval", 0.0), amp=config.amp)
        except Exception as error:  # the network cannot run on this image: every record fails
            logger.debug("prediction failed", exc_info=True)
            for spec, target in targets:
                for method in config.methods:
                    record(method.label, target.name, "failed", time.monotonic() - start, error=f"prediction failed: {_error_text(error)}")
            return records

    folder = out / stem
    for spec, target in targets:
        for method in config.methods:
            t0 = time.monotonic()
            path = folder / f"{method.label}_{target.name}.nii.gz"
            try:
                explainer = Explainer(
                    bundle.network, method.name, target, amp=config.amp, device=device, local=config.local,
                    progress=progress, timeout=config.timeout, **window, **method.options,
                )
                attribution = explainer(x, prediction=prediction)[0]
                folder.mkdir(parents=True, exist_ok=True)
                save_attribution(attribution, data, bundle.preprocessing, path, image_key=bundle.image_key)
                record(method.label, target.name, "ok", time.monotonic() - t0, output=path)
            except MethodTimeout as error:
                record(method.label, target.name, "timeout", time.monotonic() - t0, error=str(error))
            except Exception as error:  # one failing method never stops the others
                logger.debug("%s", traceback.format_exc())
                record(method.label, target.name, "failed", time.monotonic() - t0, error=_error_text(error))
    return records
