"""Run configuration: which methods, targets, windows, device and output, validated up front.

A run config is a YAML or JSON mapping; every key is optional::

    bundle: bundles/vessel_mra_demo
    images: [scan1.nii.gz, scan2.nii.gz]     # default: the bundle's sample input(s)
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

Validation happens before anything runs; an error names the key and the allowed values.

Example:
    >>> from esegeta_monai.config import RunConfig
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

from esegeta_monai.errors import ConfigError, EsegetaError
from esegeta_monai.methods import get_method
from esegeta_monai.targets import TARGET_KINDS

__all__ = ["MethodSpec", "RunConfig", "load_run_config", "parse_methods", "DEFAULT_METHODS"]

#: what runs when no method is named: fast, exact, and one complete (axiomatic) method
DEFAULT_METHODS = (("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 16}))
WINDOW_KEYS = ("roi_size", "overlap", "mode", "sw_batch_size", "sigma_scale", "padding_mode")
NAN_POLICIES = ("error", "zero")
OUTPUT_FORMATS = ("nifti", "nrrd", "png")
CHANNEL_REDUCTIONS = ("sum", "mean", "none")  # as esegeta_monai.io.save_attribution  # the writer formats of esegeta_monai.io.save_attribution


@dataclass
class MethodSpec:
    """A method name and its keyword arguments (validated against the method)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    output_name: str | None = None

    @property
    def label(self) -> str:
        """The name used in output files (``as:`` in a run config, else the method name)."""
        return self.output_name or self.name


@dataclass
class RunConfig:
    """Everything one `esegeta explain` run needs."""

    bundle: str | None = None
    bundle_configs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
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
        if "images" in values:
            values["images"] = _string_list(values["images"], "images", source)
        if "bundle_configs" in values:
            values["bundle_configs"] = _string_list(values["bundle_configs"], "bundle_configs", source)
        if "targets" in values:
            values["targets"] = _string_list(values["targets"], "targets", source)
        config = cls(**values)
        config.validate(source)
        return config

    def validate(self, source: str = "run config") -> None:
        """Check every value; raises :class:`ConfigError` naming the key."""
        labels = [spec.label for spec in self.methods]
        for label in labels:
            if labels.count(label) > 1:
                raise ConfigError(
                    f"{source}: methods: {label!r} is listed twice and its maps would overwrite each other; "
                    f"give one an output name, e.g. {{name: {label}, as: {label}_2, ...}}"
                )
        for spec in self.methods:
            try:
                spec.options = _plain_options(get_method(spec.name).validate(spec.options), spec.options)
            except EsegetaError as error:
                raise ConfigError(f"{source}: methods: {error}") from None
        for target in self.targets:
            kind = target.split(":", 1)[0].strip().lower()
            if ":" not in target or kind not in TARGET_KINDS:
                raise ConfigError(f"{source}: targets: {target!r} is not a target; kinds: " + "; ".join(TARGET_KINDS.values()))
        for key in self.window:
            if key not in WINDOW_KEYS:
                raise ConfigError(f"{source}: window: unknown key {key!r}; allowed: {', '.join(WINDOW_KEYS)}")
        overlap = self.window.get("overlap")
        if overlap is not None and not (isinstance(overlap, (int, float)) and 0 <= overlap < 1):
            raise ConfigError(f"{source}: window.overlap must be a number in [0, 1), got {overlap!r}")
        mode = self.window.get("mode")
        if mode is not None and mode not in ("gaussian", "constant"):
            raise ConfigError(f"{source}: window.mode must be 'gaussian' or 'constant', got {mode!r}")
        batch = self.window.get("sw_batch_size")
        if batch is not None and not (isinstance(batch, int) and batch >= 1):
            raise ConfigError(f"{source}: window.sw_batch_size must be an integer ≥ 1, got {batch!r}")
        roi = self.window.get("roi_size")
        if roi is not None and not (isinstance(roi, (list, tuple)) and all(isinstance(v, int) for v in roi)):
            raise ConfigError(f"{source}: window.roi_size must be a list of integers such as [64, 64, 64], got {roi!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ConfigError(f"{source}: timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.channel_reduce not in CHANNEL_REDUCTIONS:
            raise ConfigError(f"{source}: channel_reduce must be one of {CHANNEL_REDUCTIONS}, got {self.channel_reduce!r}")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"{source}: format must be one of {OUTPUT_FORMATS}, got {self.format!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"{source}: nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        for key in ("amp", "local"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"{source}: out must be a folder path, got {self.out!r}")


def parse_methods(value, source) -> list[MethodSpec]:
    """Method entries (names, or names with keywords) as specs; not validated yet."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: methods must be a non-empty list of names or {{name: {{keyword: value}}}} entries")
    specs = []
    for entry in value:
        if isinstance(entry, str):
            specs.append(MethodSpec(entry))
        elif isinstance(entry, dict) and "name" in entry:
            options = {k: v for k, v in entry.items() if k not in ("name", "as")}
            specs.append(MethodSpec(entry["name"], options, _output_name(entry.get("as"), source)))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, options), = entry.items()
            if options is not None and not isinstance(options, dict):
                raise ConfigError(f"{source}: methods: keywords of {name!r} must be a mapping, got {options!r}")
            options = dict(options or {})
            output_name = _output_name(options.pop("as", None), source)
            specs.append(MethodSpec(name, options, output_name))
        else:
            raise ConfigError(f"{source}: methods: cannot read entry {entry!r}; use a name or {{name: {{keyword: value}}}}")
    return specs


def _output_name(value, source) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or not all(c.isalnum() or c in "_-" for c in value):
        raise ConfigError(f"{source}: methods: 'as' must be a file-name-safe name (letters, digits, _ and -), got {value!r}")
    return value


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
    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    text = path.read_text()
    try:
        mapping = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"run config {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {error}") from None
    return RunConfig.from_mapping(mapping or {}, source=str(path))
