"""A bundle's own Python packages (``scripts/``) on the import path while it is read.

Model-zoo configs name classes of the bundle itself, ``"_target_": "scripts.networks.unest.UNesT"``,
and import them, ``"$import scripts.monai_utils"``: ``python -m monai.bundle run`` finds them
because it runs from the bundle folder. :func:`bundle_import_path` puts the bundle folder first
on ``sys.path`` for the time of a block and takes it off again afterwards, together with the
modules imported from it, so that two bundles that both have a ``scripts`` package never see
each other's (objects already built keep their classes).

Example:
    >>> import pathlib, sys, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "scripts").mkdir()
    >>> _ = (root / "scripts" / "__init__.py").write_text("NAME = 'first bundle'")
    >>> with bundle_import_path(root):
    ...     import scripts
    ...     scripts.NAME
    'first bundle'
    >>> "scripts" in sys.modules, str(root) in sys.path
    (False, False)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["bundle_import_path", "bundle_packages"]


def bundle_packages(root: str | os.PathLike) -> list[str]:
    """Top-level module names the bundle folder provides (``scripts`` and any other package or
    ``.py`` file at its root)."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    names += [p.stem for p in root.glob("*.py")]
    return sorted(set(names))


def _owned(module_name: str, packages: list[str]) -> bool:
    return any(module_name == name or module_name.startswith(name + ".") for name in packages)


@contextlib.contextmanager
def bundle_import_path(root: str | os.PathLike) -> Iterator[None]:
    """Make the bundle's own packages importable inside the block (see the module docstring)."""
    root = str(Path(root).resolve())
    packages = bundle_packages(root)
    if not packages:
        yield
        return
    shadowed = {name: module for name, module in sys.modules.items() if _owned(name, packages)}
    for name in shadowed:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        for name in [name for name in sys.modules if _owned(name, packages)]:
            del sys.modules[name]
        sys.modules.update(shadowed)
