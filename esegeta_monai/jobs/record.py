"""The one record type: what happened to one job (an image, a method with its options, a target).

Every front-end — the command, the Ignite handler, workers and torchrun ranks — writes
:class:`Record` lines to a journal (:mod:`esegeta_monai.jobs.journal`); the manifest is a view of
them. A record names its job by ``key`` (a digest of everything that changes the result) and its
output by ``path`` (relative to the output folder), and carries the size and SHA-256 of the file it
wrote, so that a rerun can tell an intact map from a missing or altered one.

Example:
    >>> from esegeta_monai.jobs.record import Record
    >>> record = Record(image="a.nii.gz", method="saliency", target="argmax1", status="ok", seconds=1.25)
    >>> Record.from_dict(record.to_dict()) == record
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Record", "STATUSES", "KINDS", "FINISHED_OK", "now_iso", "worker_name"]

#: the outcomes of a job; ``ok`` is the only one a rerun skips. ``empty``: the target's region is
#: empty on this image (e.g. no voxel predicted as the class), so no map was written
STATUSES = ("ok", "failed", "timeout", "empty")
FINISHED_OK = "ok"
#: what a job makes: an attribution map, the prediction (label map and class volumes or scores),
#: a figure (PNG) of maps, or a 3D Slicer scene
KINDS = ("map", "prediction", "figure", "scene")


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def worker_name() -> str:
    """``host:pid`` (with ``/rank`` under torchrun): who ran a job."""
    rank = os.environ.get("RANK")
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/rank{rank}" if rank is not None and "WORLD_SIZE" in os.environ else "")


@dataclass
class Record:
    """The outcome of one job.

    The first fields are what a reader of the manifest needs; the rest is bookkeeping
    (identity of the job, integrity of its file, who ran it and when).
    """

    image: str | None  #: the input as given (a file path), or an identity for in-memory inputs
    method: str  #: the method's output label (its ``as:`` name, else its name)
    target: str  #: the target's name in file names, e.g. ``argmax1``
    status: str  #: ``ok``, ``failed``, ``timeout`` or ``empty``
    seconds: float = 0.0
    output: str | None = None  #: the map's path as the run wrote it (output folder joined), when ok
    error: str | None = None
    class_name: str | None = None
    report: dict[str, Any] | None = None  #: what a method reports besides its map (a surrogate's R²)
    warnings: list[str] = field(default_factory=list)  #: what the reader of the map must know (e.g. a header fixed)
    key: str | None = None  #: the job's key (:func:`esegeta_monai.jobs.fingerprint.job_key`)
    path: str | None = None  #: the map's path relative to the output folder: the job's slot
    method_name: str | None = None
    options: dict[str, Any] | None = None  #: the method's options as given
    target_spec: str | None = None  #: the target spec of one class, e.g. ``mask:1:/data/roi.nii.gz``
    size: int | None = None  #: bytes of the map file
    sha256: str | None = None  #: of the map file
    mtime_ns: int | None = None  #: of the map file when it was published
    inputs: list[dict[str, Any]] = field(default_factory=list)  #: digests of the files read (image, masks)
    run: str | None = None  #: the run that wrote the record
    worker: str | None = None
    finished: str | None = None
    kind: str = "map"  #: what the job made: ``map``, ``prediction``, ``figure`` or ``scene``

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"record status {self.status!r}; one of {STATUSES}")
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r}; one of {KINDS}")
        self.seconds = round(float(self.seconds), 3)
        if self.finished is None:
            self.finished = now_iso()
        if self.worker is None:
            self.worker = worker_name()

    @property
    def ok(self) -> bool:
        return self.status == FINISHED_OK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> Record:
        """A record from its dict; unknown keys (a newer version's) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in mapping.items() if k in names})
