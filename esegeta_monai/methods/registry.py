"""One registry of methods: ``register`` a class, ``get_method`` it by name.

Example:
    >>> from esegeta_monai.methods import available_methods, get_method
    >>> "saliency" in available_methods()
    True
    >>> get_method("saliency").family
    'gradient'
"""

from __future__ import annotations

import difflib

from esegeta_monai.errors import MethodError

__all__ = ["register", "get_method", "available_methods", "method_table"]

_REGISTRY: dict[str, type] = {}


def register(method_class: type) -> type:
    """Class decorator adding a method to the registry under ``method_class.name``."""
    name = method_class.name
    if not name or name in _REGISTRY:
        raise ValueError(f"method name {name!r} is empty or registered twice")
    _REGISTRY[name] = method_class
    return method_class


def get_method(name: str):
    """An instance of the method called ``name``; unknown names list close matches."""
    _load_families()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise MethodError(f"unknown method {name!r}{hint}; `esegeta methods` lists them: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def available_methods() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def method_table() -> list[dict[str, str]]:
    """One row per method: name, family, library, dims, tasks, summary."""
    return [get_method(name).describe() for name in available_methods()]


def _load_families() -> None:
    """Import every family module of this package once: importing one registers its methods,
    so a new family is one new file, with no list to edit here."""
    import importlib
    import pkgutil

    import esegeta_monai.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_FAMILIES:
            importlib.import_module(f"{package.__name__}.{module.name}")


_NOT_FAMILIES = {"base", "registry"}
