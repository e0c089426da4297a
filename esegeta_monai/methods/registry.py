"""One registry of methods: ``register`` a class, ``get_method`` it by name.

The registry holds this package's methods (every module of ``esegeta_monai.methods`` registers its
own) and those of other installed packages, found through the entry-point group
``esegeta_monai.methods``: a lab adds a method without forking, e.g. in its ``pyproject.toml``::

    [project.entry-points."esegeta_monai.methods"]
    my_saliency = "mylab.methods:MySaliency"     # a Method subclass, or a module that registers its own

A plugin that cannot be imported, or that reuses a registered name, is skipped with a warning.

Example:
    >>> from esegeta_monai.methods import available_methods, get_method
    >>> "saliency" in available_methods()
    True
    >>> get_method("saliency").family
    'gradient'
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from esegeta_monai.errors import MethodError

__all__ = ["register", "get_method", "available_methods", "method_table", "ENTRY_POINT_GROUP"]

logger = logging.getLogger(__name__)

#: the entry-point group other packages register methods under
ENTRY_POINT_GROUP = "esegeta_monai.methods"
_REGISTRY: dict[str, type] = {}
_LOADED = {"families": False, "plugins": False}


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


def method_table() -> list[dict[str, Any]]:
    """One row per method: name, family, library, dims, tasks, summary and ``params`` (its
    parameter table: name, default, help, expects, choices, type, nullable)."""
    return [get_method(name).describe() for name in available_methods()]


def _load_families() -> None:
    """Import every family module of this package once (importing one registers its methods,
    so a new family is one new file, with no list to edit here), then the plugins."""
    import importlib
    import pkgutil

    import esegeta_monai.methods as package

    if not _LOADED["families"]:
        for module in pkgutil.iter_modules(package.__path__):
            if module.name not in _NOT_FAMILIES:
                importlib.import_module(f"{package.__name__}.{module.name}")
        _LOADED["families"] = True
    if not _LOADED["plugins"]:
        _LOADED["plugins"] = True
        _load_plugins()


def _load_plugins() -> None:
    """Methods of other packages, from the ``esegeta_monai.methods`` entry points."""
    from importlib.metadata import entry_points

    from esegeta_monai.methods.base import Method

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken plugin never breaks the package
            logger.warning("method plugin %r (%s) cannot be imported: %s: %s", entry.name, entry.value, type(error).__name__, error)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Method) and _REGISTRY.get(loaded.name) is not loaded:
            try:
                register(loaded)
            except ValueError as error:
                logger.warning("method plugin %r (%s) is skipped: %s", entry.name, entry.value, error)


_NOT_FAMILIES = {"base", "registry", "spec"}
