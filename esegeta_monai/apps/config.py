"""Run configuration: which methods, targets, windows, device and output, validated up front.

A run config is a YAML or JSON mapping; every key is optional::

    bundle: bundles/vessel_mra_demo
    images: [scan1.nii.gz, scans/*.nii.gz]   # files and globs; default: the bundle's sample input(s)
    image_lists: [cohort.json]               # MONAI datalist JSON, CSV (image[, label]), text file or folder
    datalist_key: testing                    # the datalist section (default: testing, test, validation, training)
    methods:                                 # a name, or a name with its keywords
      - saliency
      - saliency: {abs: false, as: saliency_signed}   # `as`: the name in output files
      - integrated_gradients: {n_steps: 32}
    targets: [argmax:1, otsu:1]
    window: {roi_size: [64, 64, 64], overlap: 0.25, mode: gaussian, sw_batch_size: 2}
    device: cpu
    amp: false
    timeout: 600          # seconds per method and image
    out: esegeta_out
    format: nifti         # nifti (default), nrrd, or png (2D maps only)
    channel_reduce: sum   # input channels of a map: sum (default), mean, or none (a 4D file per map)
    workers: 2            # worker processes (each loads the bundle once)
    devices: [cuda:0, cuda:1]   # one per worker, round robin (default: device)
    force: false          # recompute jobs a previous run finished (default: resume)
    allow_empty: false    # an empty target (no voxel of the class) does not make the exit code 1
    verify: false         # on resume, compare every map's checksum (default: when its time stamp changed)
    figures: true         # the prediction, figures, 3D Slicer scenes and the HTML report (OUT/report/index.html)

Validation happens before anything runs; an error names the key and the allowed values.

Example:
    >>> from esegeta_monai.apps.config import RunConfig
    >>> config = RunConfig.from_mapping({"methods": [{"integrated_gradients": {"n_steps": 8}}], "targets": ["argmax:1"]})
    >>> config.methods[0].name, config.methods[0].options
    ('integrated_gradients', {'n_steps': 8})
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from esegeta_monai.core.options import RunOptions
from esegeta_monai.core.targets import split_targets
from esegeta_monai.core.windows import WindowSettings
from esegeta_monai.errors import ConfigError, EsegetaError
from esegeta_monai.maps import CHANNEL_REDUCTIONS
from esegeta_monai.methods import get_method
from esegeta_monai.methods.spec import MethodSpec, parse_methods, unique_specs

__all__ = ["MethodSpec", "RunConfig", "load_run_config", "parse_methods", "DEFAULT_METHODS", "OUTPUT_FORMATS"]

#: what runs when no method is named: fast, exact, and one complete (axiomatic) method
DEFAULT_METHODS = (("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 16}))
NAN_POLICIES = ("error", "zero")
OUTPUT_FORMATS = ("nifti", "nrrd", "png")


@dataclass
class RunConfig:
    """Everything one `esegeta explain` run needs."""

    bundle: str | None = None
    bundle_configs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    image_lists: list[str] = field(default_factory=list)
    datalist_key: str | None = None
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec(m, dict(o)) for m, o in DEFAULT_METHODS])
    targets: list[str] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    amp: bool = False
    timeout: float | None = None
    out: str = "esegeta_out"
    weights: str | None = None
    local: bool = False
    nan_policy: str = "error"
    progress: bool | None = None
    format: str = "nifti"
    channel_reduce: str = "sum"
    workers: int = 1
    devices: list[str] = field(default_factory=list)
    force: bool = False
    verify: bool = False
    allow_empty: bool = False
    figures: bool = True

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], source: str = "run config") -> RunConfig:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(mapping).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
        values = dict(mapping)
        if "methods" in values:
            values["methods"] = parse_methods(values["methods"], source)
        for key in ("images", "image_lists", "devices"):
            if key in values:
                values[key] = _string_list(values[key], key, source)
        if "bundle_configs" in values:
            values["bundle_configs"] = _string_list(values["bundle_configs"], "bundle_configs", source)
        if "targets" in values:
            values["targets"] = _string_list(values["targets"], "targets", source)
        config = cls(**values)
        config.validate(source)
        return config

    def validate(self, source: str = "run config") -> None:
        """Check every value; raises :class:`ConfigError` naming the key."""
        self.methods = unique_specs(self.methods, f"{source}: methods")
        for spec in self.methods:
            try:
                spec.options = _plain_options(get_method(spec.name).validate(spec.options), spec.options)
            except EsegetaError as error:
                raise ConfigError(f"{source}: methods: {error}") from None
        for target in self.targets:
            try:
                specs = split_targets(target)
            except EsegetaError as error:
                raise ConfigError(f"{source}: targets: {error}") from None
            negative = [s.class_index for s in specs if s.class_index < 0]
            if negative:
                raise ConfigError(f"{source}: targets: {target!r}: class {negative[0]} is negative; classes count from 0")
        self.window_settings()
        try:
            self.run_options()
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        if self.channel_reduce not in CHANNEL_REDUCTIONS:
            raise ConfigError(f"{source}: channel_reduce must be one of {CHANNEL_REDUCTIONS}, got {self.channel_reduce!r}")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"{source}: format must be one of {OUTPUT_FORMATS}, got {self.format!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"{source}: nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        for key in ("force", "verify", "allow_empty", "figures"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {getattr(self, key)!r}")
        if not (isinstance(self.workers, int) and not isinstance(self.workers, bool) and self.workers >= 1):
            raise ConfigError(f"{source}: workers must be an integer ≥ 1, got {self.workers!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"{source}: out must be a folder path, got {self.out!r}")

    def window_settings(self, base: WindowSettings | None = None) -> WindowSettings:
        """The run's window settings over ``base`` (the bundle's)."""
        settings = WindowSettings.from_mapping(self.window, "window")  # unknown keys and bad values fail here, named
        if settings.roi_size is not None and any(v < 1 for v in settings.roi_size):
            raise ConfigError(f"window.roi_size {list(settings.roi_size)}: window sizes must be ≥ 1 voxel")
        return (base or WindowSettings()).updated(**self.window)

    def run_options(self, device=None) -> RunOptions:
        """The options every (method, target) pair of the run shares."""
        return RunOptions(amp=self.amp, device=device if device is not None else self.device, local=self.local,
                          progress=bool(self.progress), timeout=self.timeout)


def _string_list(value, key, source) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")
    return list(value)


def _plain_options(resolved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Keep only what the user gave (validated); defaults stay with the method."""
    return {k: resolved[k] for k in given}


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML or JSON run config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"run config {path} is a folder; give the run config file itself (YAML or JSON), e.g. "
                          "configs/vessel_demo.yaml")
    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    text = path.read_text()
    try:
        mapping = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"run config {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {error}") from None
    return RunConfig.from_mapping(mapping or {}, source=str(path))
