"""Content fingerprints: what a job's key is made of.

A job's key (:func:`job_key`) is the SHA-256 of a canonical JSON of everything that changes its
result: the image's content, the bundle (weights and config files), the method with all its
options, the target (with the content of a mask file), the window settings, the output format and
the package version. Files are hashed by content (:func:`file_digest`); a :class:`DigestCache`
remembers the digest of a file whose size and modification time have not changed, so a rerun over
a large cohort does not read every scan again.

Example:
    >>> import pathlib, tempfile
    >>> from esegeta_monai.jobs.fingerprint import DigestCache, job_key
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.nii.gz"
    >>> _ = path.write_bytes(b"voxels")
    >>> cache = DigestCache()
    >>> cache.digest(path) == cache.digest(path)   # the second call reads nothing
    True
    >>> job_key({"a": 1, "b": [1, 2]}) == job_key({"b": [1, 2], "a": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DigestCache", "file_digest", "canonical", "job_key", "tensor_digest", "state_digest", "KEY_LENGTH"]

#: hex digits kept of a key (128 bits)
KEY_LENGTH = 32
_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; of a folder (a DICOM series), of its files' relative names
    and contents in sorted order."""
    path = Path(path)
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            sha.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                sha.update(chunk)
    return sha.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    """Identity of a file's current content for the cache: resolved path, size, mtime (ns).
    A folder counts the sum of its files' sizes and their latest modification."""
    if path.is_dir():
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
        return str(path.resolve()), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class DigestCache:
    """File digests keyed by (resolved path, size, mtime): a file is read once per change.

    ``known`` seeds it, e.g. from a journal's records (``{"path", "size", "mtime_ns", "sha256"}``).
    """

    def __init__(self, known: Iterable[Mapping[str, Any]] = ()):
        self._digests: dict[tuple[str, int, int], str] = {}
        for entry in known:
            self.remember(entry)

    def remember(self, entry: Mapping[str, Any]) -> None:
        try:
            self._digests[(str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"]))] = str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            pass

    def entry(self, path: str | os.PathLike) -> dict[str, Any]:
        """``{"path", "size", "mtime_ns", "sha256"}`` of ``path`` (hashed only if unknown)."""
        path = Path(path)
        key = _stat_key(path)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return {"path": key[0], "size": key[1], "mtime_ns": key[2], "sha256": self._digests[key]}

    def digest(self, path: str | os.PathLike) -> str:
        return self.entry(path)["sha256"]


def tensor_digest(value: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    array = value.detach().cpu().contiguous().numpy() if torch.is_tensor(value) else np.ascontiguousarray(value)
    sha = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    sha.update(array.tobytes())
    return sha.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a network's state (parameter and buffer names, dtypes, shapes and values)."""
    sha = hashlib.sha256()
    for name, value in module.state_dict().items():
        if torch.is_tensor(value):
            array = value.detach().cpu().contiguous()
            sha.update(f"{name}{array.dtype}{tuple(array.shape)}".encode())
            sha.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
    return sha.hexdigest()


def canonical(value: Any) -> Any:
    """A JSON-able form of ``value`` that is the same for equal values: mappings with sorted
    string keys, tuples as lists, arrays and tensors by their digest, enums by their value."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return {"array_sha256": tensor_digest(value)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, (str, int, float)):
        return enum_value
    return repr(value)


def job_key(parts: Mapping[str, Any]) -> str:
    """The key of a job: a digest of the canonical JSON of ``parts`` (order-free)."""
    text = json.dumps(canonical(parts), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
