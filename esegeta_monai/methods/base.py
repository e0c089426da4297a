"""The method interface and its keyword-argument validation.

A method is a small adapter: it declares its parameters (:class:`Param`), and ``run``
computes a full-size attribution by driving a :class:`~esegeta_monai.explainer.WindowPass`,
which hides the windows. Families share one base class each; a new method is a few lines.

Example:
    >>> from esegeta_monai.methods import get_method
    >>> get_method("integrated_gradients").validate({"n_steps": 16})["n_steps"]
    16
    >>> row = get_method("integrated_gradients").describe()["params"][0]
    >>> row["name"], row["default"], row["type"], row["choices"]
    ('n_steps', 50, 'int', None)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esegeta_monai.errors import MethodError

__all__ = ["Param", "Method", "json_safe", "positive_int", "non_negative_number", "positive_number", "is_int", "one_of", "is_bool", "SEED"]


@dataclass(frozen=True)
class Param:
    """One keyword a method accepts: default, a validity check and a help line."""

    default: Any
    check: Callable[[Any], bool] | None = None
    help: str = ""
    expects: str = ""

    def describe(self, name: str) -> dict[str, Any]:
        """The parameter as a form needs it (``esegeta methods --json``, the GUI): its name, JSON-safe
        default, help, what it expects, the allowed values (``choices``, or None), its ``type``
        (``int``, ``float``, ``bool``, ``str`` or ``any``) and whether None is allowed (``nullable``)."""
        choices = getattr(self.check, "choices", None)
        return {
            "name": name,
            "default": json_safe(self.default),
            "help": self.help,
            "expects": self.expects or (f"one of {', '.join(map(repr, choices))}" if choices else ""),
            "choices": [json_safe(c) for c in choices] if choices else None,
            "type": _value_type(self, choices),
            "nullable": self.default is None or _accepts(self.check, None),
        }


def json_safe(value: Any) -> Any:
    """``value`` if JSON has it (numbers, text, booleans, None, lists and string-keyed dicts of
    those), else its ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: json_safe(v) for k, v in value.items()}
    return repr(value)


def _accepts(check: Callable[[Any], bool] | None, value: Any) -> bool:
    if check is None:
        return True
    try:
        return bool(check(value))
    except Exception:  # a check written for other types
        return False


#: probe values by type: a parameter's type is the set of these its check accepts
_PROBES = (("bool", True), ("int", 3), ("float", 0.5), ("str", "x"), ("list", [1]))


def _value_type(param: Param, choices) -> str:
    """The type of a parameter's values: from its choices, else from what its check accepts."""
    if choices:
        values = list(choices)
    elif param.check is None:
        values = [param.default]
    else:
        values = [v for _, v in _PROBES if _accepts(param.check, v)]
    kinds = {"bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float" if isinstance(v, float)
             else "str" if isinstance(v, str) else "any" for v in values if v is not None}  # a list: any
    if kinds == {"int", "float"}:
        return "float"
    return kinds.pop() if len(kinds) == 1 else "any"


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def non_negative_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def positive_number(value) -> bool:
    return non_negative_number(value) and value > 0


def is_bool(value) -> bool:
    return isinstance(value, bool)


def one_of(*choices) -> Callable[[Any], bool]:
    def check(value) -> bool:
        return value in choices

    check.choices = choices  # type: ignore[attr-defined]
    return check


#: the seed of a method's random draws (noise, baselines, masks, orders, starts)
SEED = Param(0, is_int, "random seed", "an int")


class Method:
    """Base of every method adapter.

    Class attributes describe the method for ``esegeta methods`` and the README table;
    ``params`` lists the keywords it accepts.
    """

    name: str = ""
    family: str = ""
    library: str = "captum"
    dims: str = "2D/3D"
    tasks: str = "classification/segmentation"
    summary: str = ""
    params: dict[str, Param] = {}
    #: whether forwards may run under autocast; if not, ``amp=True`` is ignored for it
    amp_safe: bool = True
    amp_note: str = ""
    #: whether an image's map depends on the other images of its batch (feature permutation)
    batch_dependent: bool = False
    #: whether the map depends on the target (False: visualisation, which ignores it); an empty
    #: target region is refused only for methods that read the target
    reads_target: bool = True

    def validate(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """Return the options with defaults filled in; raise :class:`MethodError` on any
        unknown keyword or invalid value, naming it and what is allowed."""
        options = dict(options or {})
        unknown = [key for key in options if key not in self.params]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, self.params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(sorted(self.params)) or "none"
            raise MethodError(f"method {self.name!r} has no keyword {key!r}{hint}; it accepts: {allowed}")
        resolved = {}
        for key, param in self.params.items():
            value = options.get(key, param.default)
            if key in options and param.check is not None and not param.check(value):
                expects = param.expects or getattr(param.check, "choices", None) or param.help
                raise MethodError(f"method {self.name!r}: invalid {key}={value!r}; expected {expects}")
            resolved[key] = value
        return resolved

    def run(self, window_pass, inputs, options: dict[str, Any]):  # pragma: no cover - interface
        """Attribution of ``inputs`` (B, C, *spatial) for the pass's target."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The method's row of ``esegeta methods --json``: what it is, and its parameter table."""
        return {
            "name": self.name,
            "family": self.family,
            "library": self.library,
            "dims": self.dims,
            "tasks": self.tasks,
            "summary": self.summary,
            "params": [param.describe(key) for key, param in self.params.items()],
        }
