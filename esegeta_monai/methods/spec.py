"""A method with its keyword arguments, as run configs, transforms and handlers name it.

:func:`parse_methods` reads the forms users write — ``"saliency"``, ``"saliency,deeplift"``,
``{"saliency": {"abs": False, "as": "signed"}}`` or ``{"name": "saliency", "abs": False}`` — and
:func:`unique_specs` makes their output labels unique: an exact repeat runs once; two specs of one
method with different options, neither named with ``as:``, keep the plain name for the one without
options and get their options in the name otherwise (``saliency-abs-False``), so that no map ever
overwrites another.

Example:
    >>> from esegeta_monai.methods.spec import parse_methods, unique_specs
    >>> specs = unique_specs(parse_methods(["saliency", {"saliency": {"abs": False}}, "saliency"]))
    >>> [s.label for s in specs]
    ['saliency', 'saliency-abs-False']
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from esegeta_monai.errors import ConfigError

__all__ = ["MethodSpec", "parse_methods", "unique_specs"]

logger = logging.getLogger(__name__)

_LABEL_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_READABLE = 48


@dataclass
class MethodSpec:
    """A method name, its keyword arguments, and the name of its maps (``as:``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    output_name: str | None = None

    @property
    def label(self) -> str:
        """The name used in output files (``as:`` in a run config, else the method name)."""
        return self.output_name or self.name

    def identity(self) -> str:
        """What makes two specs the same: name, options and output name."""
        return json.dumps([self.name, self.output_name, _plain(self.options)], sort_keys=True, default=repr)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def parse_methods(value: Any, source: str = "methods") -> list[MethodSpec]:
    """Method entries (names, a comma-separated string, or names with keywords) as specs; the
    names and keywords are validated by the registry later."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (tuple, MethodSpec)):
        value = list(value) if isinstance(value, tuple) else [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: methods must be a non-empty list of names or {{name: {{keyword: value}}}} entries")
    specs = []
    for entry in value:
        if isinstance(entry, MethodSpec):
            specs.append(MethodSpec(entry.name, dict(entry.options), entry.output_name))
        elif isinstance(entry, str):
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
    if not isinstance(value, str) or not _LABEL_CHARS.match(value):
        raise ConfigError(f"{source}: methods: 'as' must be a file-name-safe name (letters, digits, _ and -), got {value!r}")
    return value


def _options_label(spec: MethodSpec) -> str:
    """``name-key-value-…`` when short and file-name-safe, else ``name-<digest of the options>``."""
    parts = [spec.name]
    for key in sorted(spec.options):
        parts += [str(key), str(_plain(spec.options[key]))]
    readable = "-".join(parts)
    if len(readable) <= _MAX_READABLE and _LABEL_CHARS.match(readable):
        return readable
    digest = hashlib.sha256(spec.identity().encode()).hexdigest()[:8]
    return f"{spec.name}-{digest}"


def unique_specs(specs: Sequence[MethodSpec], source: str = "methods") -> list[MethodSpec]:
    """Specs with unique labels, in their order: exact repeats dropped (logged once); specs of one
    method with different options and no ``as:`` named after their options; two specs that
    were given the same ``as:`` name are an error."""
    kept: list[MethodSpec] = []
    seen: dict[str, int] = {}
    for spec in specs:
        identity = spec.identity()
        if identity in seen:
            seen[identity] += 1
            continue
        seen[identity] = 1
        kept.append(MethodSpec(spec.name, dict(spec.options), spec.output_name))
    for identity, count in seen.items():
        if count > 1:
            name = json.loads(identity)[0]
            logger.warning("%s: %s is listed %d times with the same options; it runs once", source, name, count)
    by_label: dict[str, list[MethodSpec]] = defaultdict(list)
    for spec in kept:
        by_label[spec.label].append(spec)
    for label, group in by_label.items():
        if len(group) == 1:
            continue
        named = [s for s in group if s.output_name is not None]
        if named:
            raise ConfigError(f"{source}: two methods are named {label!r} (as: {label}); give each its own 'as:' name")
        for spec in group:
            if spec.options:
                spec.output_name = _options_label(spec)
    labels = [s.label for s in kept]
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:  # a derived name equal to another's given name
        raise ConfigError(f"{source}: the maps of several methods would be named {clashes[0]!r}; give them 'as:' names")
    return kept
