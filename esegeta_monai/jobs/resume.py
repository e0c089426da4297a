"""Resume: which jobs a rerun may skip.

A job is done when the latest record of its output path has the job's key, status ``ok``, and
its file is still there and intact: the recorded size, and the recorded modification time or,
when that changed, the recorded SHA-256. Everything else runs again — a failed or timed-out job,
a job whose image, weights, options or target changed (its key changed), a map deleted or
altered since.

Example:
    >>> from esegeta_monai.jobs.record import Record
    >>> from esegeta_monai.jobs.resume import is_done
    >>> latest = {"a/saliency_argmax1.nii.gz": Record("a.nii.gz", "saliency", "argmax1", "failed", key="k")}
    >>> is_done("a/saliency_argmax1.nii.gz", "k", latest, "/tmp")
    False
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from esegeta_monai.jobs.fingerprint import file_digest
from esegeta_monai.jobs.record import Record

__all__ = ["is_done", "intact"]


def intact(record: Record, folder: str | os.PathLike, verify: bool = False) -> bool:
    """Whether the map of an ok ``record`` is on disk as it was written (``verify``: always
    compare the checksum, not only when the modification time changed)."""
    if record.path is None or record.size is None or record.sha256 is None:
        return False
    path = Path(folder) / record.path
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != record.size:
        return False
    if not verify and record.mtime_ns is not None and stat.st_mtime_ns == record.mtime_ns:
        return True
    return file_digest(path) == record.sha256


def is_done(path: str, key: str, latest: Mapping[str, Record], folder: str | os.PathLike, verify: bool = False) -> bool:
    """Whether the job ``key`` writing ``path`` (relative to ``folder``) is done already."""
    record = latest.get(path)
    return record is not None and record.ok and record.key == key and intact(record, folder, verify)
