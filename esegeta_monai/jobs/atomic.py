"""Atomic writes for the whole package: a temporary file next to the target, renamed into place.

A reader never sees a half-written file: every output (maps, manifests, tables) is written to a
temporary name in the same folder and published with ``os.replace``. Temporary names carry the
writer's host and process id, so a later run can tell the leftovers of a killed process
(:func:`remove_stale_temporaries`) from the files a concurrent, living writer is still writing.

Example:
    >>> import json, pathlib, tempfile
    >>> from esegeta_monai.jobs.atomic import atomic_write_json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "table.json"
    >>> _ = atomic_write_json(path, {"a": 1})
    >>> json.loads(path.read_text()), sorted(p.name for p in path.parent.iterdir())
    ({'a': 1}, ['table.json'])
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path", "atomic_write_text", "atomic_write_json", "temporary_path", "remove_stale_temporaries",
    "is_temporary", "Publish",
]

logger = logging.getLogger(__name__)

#: marks every temporary file this package writes: ``.<name>.esegeta-tmp.<pid>@<host>.<token><suffix>``
TEMP_MARK = ".esegeta-tmp."
_TEMP_NAME = re.compile(r"\.esegeta-tmp\.(\d+)@([A-Za-z0-9_]+)\.[0-9a-f]{12}")
_V01_TEMP_NAME = re.compile(r"^\..*\.tmp(\.|$)")  # the names v0.1 used (maps, manifests), before hosts and pids
#: a temporary file of another host is removed only when it is older than this (seconds)
FOREIGN_TEMPORARY_AGE = 24 * 3600.0

#: ``publish(temporary, final)`` moves a finished temporary file into place (default ``os.replace``)
Publish = Callable[[Path, Path], Any]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def temporary_path(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A fresh temporary name next to ``path`` that keeps its extension (writers choose their
    format by it): ``out/a.nii.gz`` → ``out/.a.esegeta-tmp.<pid>@<host>.<token>.nii.gz``."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if suffix is None and path.name.endswith(".nii.gz") else (
        path.suffix if suffix is None else suffix)
    stem = path.name[: len(path.name) - len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    return path.parent / f".{stem}{TEMP_MARK}{os.getpid()}@{_host()}.{uuid.uuid4().hex[:12]}{suffix}"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of this package's temporary names."""
    return TEMP_MARK in Path(path).name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, publish: Publish | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is published as ``path`` (``publish``,
    default ``os.replace``), on any error it is removed and the error goes on."""
    path = Path(path)
    temporary = temporary_path(path, suffix)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"{temporary}: the writer wrote nothing")
        (publish or os.replace)(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, publish: Publish | None = None) -> Path:
    """Write ``text`` to ``path`` atomically, as UTF-8 (whatever the locale); returns ``path``."""
    path = Path(path)
    with atomic_path(path, publish=publish) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def atomic_write_json(path: str | os.PathLike, payload: Any, publish: Publish | None = None) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n", publish=publish)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's living process
        return True
    return True


def remove_stale_temporaries(root: str | os.PathLike, now: float | None = None, legacy: bool = True) -> list[Path]:
    """Remove the temporary files a killed writer left under ``root``; returns them.

    A temporary file of this host is stale when its process is gone; one of another host (a
    shared file system) when it is older than :data:`FOREIGN_TEMPORARY_AGE`. Files of living
    writers — a concurrent run into the same folder — are left alone. ``legacy`` also removes
    hidden ``*.tmp*`` files older than an hour (the names v0.1 used), in folders only we write to.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    host, removed = _host(), []
    for folder, _, names in os.walk(root):
        for name in names:
            match = _TEMP_NAME.search(name)
            path = Path(folder) / name
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if match:
                pid, writer_host = int(match.group(1)), match.group(2)
                stale = (writer_host == host and not _alive(pid)) or (writer_host != host and age > FOREIGN_TEMPORARY_AGE)
            else:
                stale = legacy and bool(_V01_TEMP_NAME.match(name)) and age > 3600
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) a killed run left in %s", len(removed), root)
    return removed
