"""The journal of an output folder, and the manifest regenerated from it.

``OUT/journal.jsonl`` gets one JSON line per finished job (a :class:`~esegeta_monai.jobs.record.Record`)
and one per run started, appended and flushed to disk the moment it happens, under an exclusive
lock (``fcntl.flock``). Any number of writers — two runs into one folder, worker processes,
torchrun ranks — append without losing each other's lines, and a kill loses at most the jobs in
flight. A map is published (renamed into place) under the same lock as its record is appended,
so the journal's order is the order of the files on disk.

``OUT/manifest.json`` is a view: for every output path, the latest record (:func:`manifest_view`).
It is regenerated from the journal (:meth:`Journal.write_manifest`), never edited in place.

Example:
    >>> import json, pathlib, tempfile
    >>> from esegeta_monai.jobs.journal import Journal
    >>> from esegeta_monai.jobs.record import Record
    >>> journal = Journal(tempfile.mkdtemp())
    >>> run = journal.start_run({"bundle": "demo"})
    >>> journal.append(Record("a.nii.gz", "saliency", "argmax1", "failed", path="a/saliency_argmax1.nii.gz", run=run))
    >>> journal.append(Record("a.nii.gz", "saliency", "argmax1", "timeout", path="a/saliency_argmax1.nii.gz", run=run))
    >>> view = json.loads(journal.write_manifest().read_text())
    >>> [r["status"] for r in view["records"]], view["summary"]
    (['timeout'], {'timeout': 1})
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from esegeta_monai.jobs.atomic import Publish, atomic_write_json
from esegeta_monai.jobs.fingerprint import file_digest
from esegeta_monai.jobs.record import Record, now_iso, worker_name

__all__ = ["Journal", "folder_journal", "HANDLER_JOURNAL_NAME", "manifest_view", "latest_records", "JOURNAL_NAME", "MANIFEST_NAME", "MANIFEST_FORMAT", "MANIFEST_EVERY"]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
#: the Ignite handler's journal (its folder is shared with the bundle's own outputs)
HANDLER_JOURNAL_NAME = "esegeta_journal.jsonl"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "esegeta-manifest/2"
#: seconds between two regenerations of the manifest while a run goes on (and one at its end)
MANIFEST_EVERY = 10.0


def _slot(record: Record) -> str:
    """Where a record's map lives (its path), or its job for records without a path."""
    return record.path or f"{record.image}\0{record.method}\0{record.target}"


def manifest_view(entries: list[Mapping[str, Any]], header: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of journal ``entries``: the runs; for every map the latest record (``records``,
    sorted by path: an image's maps together), with a count per status; and the latest record of
    every other output (``outputs``: predictions, figures, scenes)."""
    runs = [dict(e) for e in entries if e.get("type") == "run"]
    return _view(runs, latest_records(Record.from_dict(e) for e in entries if e.get("type") == "record"), header)


def latest_records(records: Iterable[Record]) -> dict[str, Record]:
    """The latest of ``records`` (in journal order) for every output path."""
    return {_slot(record): record for record in records}


def _view(runs: list[dict[str, Any]], latest: Mapping[str, Record], header: Mapping[str, Any] | None) -> dict[str, Any]:
    records = [latest[slot].to_dict() for slot in sorted(latest) if latest[slot].kind == "map"]
    outputs = [latest[slot].to_dict() for slot in sorted(latest) if latest[slot].kind != "map"]
    last_run = runs[-1] if runs else {}
    return {
        "format": MANIFEST_FORMAT,
        "bundle": last_run.get("bundle"),
        "out": last_run.get("out"),
        "methods": last_run.get("methods", []),
        **dict(header or {}),
        "runs": runs,
        "summary": dict(Counter(r["status"] for r in records)),
        "records": records,
        "outputs": outputs,
    }


def folder_journal(folder: str | os.PathLike) -> Journal:
    """The journal of an output folder: ``journal.jsonl`` (the command's), or the Ignite handler's
    ``esegeta_journal.jsonl`` when only that one is there."""
    folder = Path(folder)
    if not (folder / JOURNAL_NAME).exists() and (folder / HANDLER_JOURNAL_NAME).exists():
        return Journal(folder, name=HANDLER_JOURNAL_NAME)
    return Journal(folder)


class Journal:
    """The append-only journal of one output folder (created on first write).

    Args:
        folder: the output folder; the journal is ``folder/<name>``.
        name: the journal's file name (default ``journal.jsonl``).
        fsync: flush every line to the disk (not only to the OS), so that a power loss loses at
            most the line being written.
    """

    def __init__(self, folder: str | os.PathLike, name: str = JOURNAL_NAME, fsync: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.fsync = fsync
        self._entries: list[dict[str, Any]] = []
        self._records: list[Record] = []  # the record entries, parsed once
        self._latest: dict[str, Record] = {}  # the latest record of every output path, kept up to date
        self._offset = 0  # bytes of the journal already parsed into _entries
        self._manifest_written = 0.0  # when write_manifest last ran (time.monotonic)

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """The journal's file descriptor, opened for appending and exclusively locked."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as to every output
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _write_line(self, fd: int, entry: Mapping[str, Any]) -> None:
        line = (json.dumps(entry, default=str, separators=(",", ":")) + "\n").encode()
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash ends here, not in ours
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover - a full disk
            raise OSError(f"{self.path}: wrote {written} of {len(line)} bytes of a journal line")
        if self.fsync:
            os.fsync(fd)

    def append(self, record: Record) -> None:
        """Append one record (flushed)."""
        with self.locked() as fd:
            self._write_line(fd, {"type": "record", **record.to_dict()})

    def start_run(self, info: Mapping[str, Any], run_id: str | None = None) -> str:
        """Record the start of a run (``info``: bundle, methods, options …); returns its id."""
        run_id = run_id or uuid.uuid4().hex[:12]
        with self.locked() as fd:
            self._write_line(fd, {"type": "run", "run": run_id, "started": now_iso(), "worker": worker_name(), **info})
        return run_id

    def reserve(self, choose: Callable[[list[dict[str, Any]]], tuple[Any, Mapping[str, Any] | None]]) -> Any:
        """Decide something from every entry so far and append the decision, as one step under
        the lock, so that writers deciding at the same moment see each other's decisions.

        ``choose(entries)`` returns ``(result, entry)``; ``entry`` (a dict with a ``type``) is
        appended unless it is None; ``result`` is returned.
        """
        with self.locked() as fd:
            result, entry = choose(self.entries())
            if entry is not None:
                self._write_line(fd, entry)
                self.entries()  # parse our own line now, so that the next read starts after it
        return result

    def publish(self, temporary: Path, final: Path, record: Record) -> Record:
        """Move a finished map from ``temporary`` to ``final`` and append its ``record`` (with
        the file's size and checksum) as one step under the lock."""
        record.size = temporary.stat().st_size
        record.sha256 = file_digest(temporary)
        with self.locked() as fd:
            os.replace(temporary, final)
            record.mtime_ns = final.stat().st_mtime_ns
            self._write_line(fd, {"type": "record", **record.to_dict()})
        return record

    def publish_written(self, write: Callable[[Publish], Any], record: Callable[[], Record]) -> Record:
        """Run ``write(publish)`` — a writer that writes a temporary file and hands it to
        ``publish(temporary, final)`` (e.g. :func:`esegeta_monai.monai.io.save_attribution`) — and
        publish it with the record ``record()`` made at that moment; returns that record."""
        published: list[Record] = []
        write(lambda temporary, final: published.append(self.publish(temporary, final, record())))
        if not published:
            raise OSError("the writer published no file")
        return published[0]

    def record_failure(self, record: Record, stale: Path | None = None) -> Record:
        """Append a failed record; a map at ``stale`` (the job's output path, from an earlier run)
        is removed under the same lock, so that no file on disk is left that the manifest does
        not describe."""
        with self.locked() as fd:
            if stale is not None and stale.exists():
                stale.unlink()
                note = "the map an earlier run wrote at this path was removed"
                record.error = f"{record.error} ({note})" if record.error else note
            self._write_line(fd, {"type": "record", **record.to_dict()})
        return record

    # -- reading --------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far, in order (new lines are read incrementally; a torn last line of a
        killed writer is skipped)."""
        if not self.path.exists():
            return list(self._entries)
        with open(self.path, "rb") as stream:
            stream.seek(self._offset)
            chunk = stream.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; a line in the making waits for the next read
        for number, line in enumerate(chunk[:end].splitlines()):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: skipped an unreadable line at byte %d (a write cut short)", self.path, self._offset)
                continue
            if isinstance(entry, dict):
                self._entries.append(entry)
                if entry.get("type") == "record":
                    record = Record.from_dict(entry)
                    self._records.append(record)
                    self._latest[_slot(record)] = record
        self._offset += end
        return list(self._entries)

    def records(self) -> list[Record]:
        self.entries()
        return list(self._records)

    def latest_by_path(self) -> dict[str, Record]:
        """The latest record of every output path."""
        self.entries()
        return dict(self._latest)

    def write_manifest(self, header: Mapping[str, Any] | None = None, path: Path | None = None,
                       at_most_every: float | None = None) -> Path | None:
        """Regenerate ``manifest.json`` from the journal (atomically, under the lock so that a
        later view never gets replaced by an earlier one); with ``at_most_every`` (seconds), only
        if the last regeneration by this object is older than that (returns None otherwise)."""
        if at_most_every is not None and time.monotonic() - self._manifest_written < at_most_every:
            return None
        path = path or self.folder / MANIFEST_NAME
        with self.locked():
            runs = [dict(e) for e in self.entries() if e.get("type") == "run"]
            atomic_write_json(path, _view(runs, self._latest, header))
        self._manifest_written = time.monotonic()
        return path
