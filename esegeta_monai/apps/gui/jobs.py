"""The GUI's jobs: ``esegeta`` subprocesses, queued, watched, cancelled, and remembered on disk.

Each job is one folder ``OUT/<job id>/``: the job's spec ``gui_job.json`` (written atomically at
every change of status), the command's ``log.txt`` and, for an ``explain`` job, its ``run.yaml``
and the ordinary output of ``esegeta explain`` (``journal.jsonl``, ``manifest.json``, maps,
figures, ``report/``). A job runs as ``python -m esegeta_monai <arguments>`` in a new session
(its own process group), so a crashing method never takes the server down and a cancel stops the
process with every worker it started (SIGTERM, then SIGKILL after :data:`CANCEL_GRACE` seconds).

At most ``max_parallel`` jobs run at a time; the others wait in order (``queued``). Progress is
read from the job's journal: the map records against the planned count. A new manager on the same
output folder (a restarted server) lists every job from its ``gui_job.json``: a queued job waits
again, a running job whose process still runs is watched to its end, and one whose process is
gone is ``done`` when every planned map is in its journal, else ``failed`` with its log's tail.

Example:
    >>> import sys, tempfile, time
    >>> from esegeta_monai.apps.gui.jobs import JobManager
    >>> manager = JobManager(tempfile.mkdtemp())
    >>> job_id, folder = manager.reserve()
    >>> job = manager.submit(job_id, "targets", ["targets"])
    >>> manager.wait(job.id, timeout=120).status
    'done'
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import esegeta_monai
from esegeta_monai.errors import EsegetaError
from esegeta_monai.jobs.atomic import atomic_write_json
from esegeta_monai.jobs.journal import Journal
from esegeta_monai.jobs.record import now_iso

__all__ = ["Job", "JobManager", "JobError", "JOB_SPEC", "LOG_NAME", "FINAL", "CANCEL_GRACE"]

logger = logging.getLogger(__name__)

JOB_SPEC = "gui_job.json"
LOG_NAME = "log.txt"
#: the statuses a job never leaves
FINAL = ("done", "failed", "cancelled")
#: seconds a cancelled process group has to stop after SIGTERM before SIGKILL
CANCEL_GRACE = 5.0
#: characters of the log returned as its tail
LOG_TAIL = 4000
#: seconds between two looks at a process this manager did not start (a restarted server's)
WATCH_EVERY = 1.0


class JobError(EsegetaError):
    """A job that does not exist (404) or cannot do what was asked (409)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One job, as ``gui_job.json`` stores it."""

    id: str
    kind: str  #: the esegeta subcommand: ``explain`` or ``evaluate``
    arguments: list[str]  #: after ``python -m esegeta_monai``
    status: str = "queued"
    created: str = field(default_factory=now_iso)
    started: str | None = None
    finished: str | None = None
    planned: int | None = None  #: maps the job makes (explain); None: unknown
    bundle: str | None = None  #: the bundle's id
    request: dict[str, Any] = field(default_factory=dict)  #: what the page asked for
    parent: str | None = None  #: the job whose output an evaluation scores
    pid: int | None = None
    returncode: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> Job:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in mapping.items() if k in names})


def _alive(pid: int, probe: Callable[[int, int], None] = os.kill) -> bool:
    """Whether process ``pid`` exists (``probe=os.killpg``: whether process group ``pid`` has a process)."""
    try:
        probe(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` lives and is an esegeta command writing to ``folder`` (not an
    unrelated process that got the pid of a finished one)."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (macOS): trust the pid
        return True
    return any(str(folder).encode() in part for part in command) and b"esegeta_monai" in b" ".join(command)


def _signal_group(pgid: int, number: int) -> None:
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(folder: Path, chars: int = LOG_TAIL) -> str:
    """The last ``chars`` characters of a job's log ('' when it has none)."""
    path = folder / LOG_NAME
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, path.stat().st_size - chars))
            return stream.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _error_line(tail: str) -> str | None:
    """The command's own error message in a log tail (``esegeta: error: …``), else its last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("esegeta: error:"):
            return line[len("esegeta: error:"):].strip()
    return lines[-1] if lines else None


class JobManager:
    """The jobs of one output folder.

    Args:
        out: the output folder (created if missing); jobs go to ``out/<job id>/``.
        max_parallel: jobs running at once; the others are queued.
        python: the interpreter the jobs run with (default: this one).
    """

    def __init__(self, out: str | os.PathLike, max_parallel: int = 1, python: str | None = None):
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an integer ≥ 1, got {max_parallel!r}")
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.max_parallel = max_parallel
        self.python = python or sys.executable
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._processes: dict[str, subprocess.Popen] = {}
        self._journals: dict[str, Journal] = {}
        self._recover()
        self._schedule()

    # -- listing --------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        return self.out / job_id

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise JobError(f"no job {job_id!r}; GET /api/jobs lists them", 404)
            return self._jobs[job_id]

    def jobs(self) -> list[Job]:
        """Every job, the newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.created, j.id), reverse=True)

    # -- submitting -----------------------------------------------------------------------
    def reserve(self) -> tuple[str, Path]:
        """A new job id and its (new, empty) folder, for the files its arguments name."""
        while True:
            job_id = f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            folder = self.folder(job_id)
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return job_id, folder

    def submit(self, job_id: str, kind: str, arguments: Sequence[str], planned: int | None = None,
               bundle: str | None = None, request: dict[str, Any] | None = None, parent: str | None = None) -> Job:
        """Queue ``python -m esegeta_monai <arguments>`` as job ``job_id`` (from :meth:`reserve`);
        it starts as soon as fewer than ``max_parallel`` jobs run."""
        job = Job(job_id, kind, [str(a) for a in arguments], planned=planned, bundle=bundle, request=dict(request or {}),
                  parent=parent)
        with self._lock:
            self._jobs[job_id] = job
            self._save(job)
            self._schedule()
        return job

    # -- running --------------------------------------------------------------------------
    def _save(self, job: Job) -> None:
        atomic_write_json(self.folder(job.id) / JOB_SPEC, job.to_dict())

    def _schedule(self) -> None:
        """Start queued jobs, the oldest first, while fewer than ``max_parallel`` run."""
        with self._lock:
            running = sum(j.status == "running" for j in self._jobs.values())
            for job in sorted((j for j in self._jobs.values() if j.status == "queued"), key=lambda j: (j.created, j.id)):
                if running >= self.max_parallel:
                    break
                self._start(job)
                running += job.status == "running"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        package_parent = str(Path(esegeta_monai.__file__).resolve().parents[1])  # the code this server runs
        env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        return env

    def _start(self, job: Job) -> None:
        folder = self.folder(job.id)
        command = [self.python, "-m", "esegeta_monai", *job.arguments]
        try:
            with open(folder / LOG_NAME, "ab") as log:
                log.write(f"$ {' '.join(command)}\n".encode())
                log.flush()
                process = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True, env=self._environment())
        except OSError as error:
            job.status, job.finished, job.error = "failed", now_iso(), f"the job could not start: {error}"
            self._save(job)
            return
        job.status, job.started, job.pid = "running", now_iso(), process.pid
        self._processes[job.id] = process
        self._save(job)
        threading.Thread(target=self._wait_process, args=(job.id, process), name=f"job-{job.id}", daemon=True).start()

    def _wait_process(self, job_id: str, process: subprocess.Popen) -> None:
        returncode = process.wait()
        with self._lock:
            self._processes.pop(job_id, None)
            job = self._jobs[job_id]
            job.returncode = returncode
            if job.status == "running":
                self._finish(job, returncode)
            self._save(job)
            self._schedule()

    def _watch(self, job_id: str, pid: int) -> None:
        """Follow a process another server started, to its end."""
        folder = self.folder(job_id)
        while _runs_in(pid, folder):
            time.sleep(WATCH_EVERY)
        with self._lock:
            job = self._jobs[job_id]
            if job.status == "running":
                self._finish(job, None)
                self._save(job)
            self._schedule()

    def _finish(self, job: Job, returncode: int | None) -> None:
        """The final status of a job whose process ended (``returncode`` None: not known)."""
        job.finished = now_iso()
        progress = self.progress(job)
        complete = (job.planned is not None and progress["ok"] + progress["empty"] >= job.planned > 0) or (
            job.kind == "evaluate" and (self.folder(job.id) / "ranking.json").is_file())  # its tables are written
        if returncode == 0 or (returncode is None and complete):
            job.status = "done"
            return
        job.status = "failed"
        tail = log_tail(self.folder(job.id))
        if returncode is not None and returncode < 0:
            job.error = (f"the job's process was stopped by signal {-returncode} "
                         f"({signal.Signals(-returncode).name if -returncode in signal.valid_signals() else '?'}) — "
                         "killed from outside the GUI, or out of memory")
        elif progress["failed"]:
            first = next((r["error"] for r in self.records(job)[0] if r["status"] in ("failed", "timeout") and r.get("error")), None)
            job.error = f"{progress['failed']} of {progress['total']} maps failed" + (f": {first}" if first else "")
        elif returncode is None:
            job.error = f"the job's process is gone (the GUI or the machine stopped while it ran); {progress['ok']} of " \
                        f"{progress['total']} maps were written. Its log ends: {_error_line(tail) or '(empty)'}"
        else:
            job.error = _error_line(tail) or f"the command ended with exit code {returncode}"

    def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job (its whole process group); 409 if it already ended."""
        with self._lock:
            job = self.get(job_id)
            if job.status in FINAL:
                raise JobError(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled", 409)
            was_running = job.status == "running"
            job.status, job.error = "cancelled", "cancelled by the user"
            self._save(job)
            process = self._processes.get(job_id)
        if was_running and job.pid:
            self._terminate(job.pid, process)
        with self._lock:
            job.finished = now_iso()
            self._save(job)
            self._schedule()
        return job

    @staticmethod
    def _terminate(pid: int, process: subprocess.Popen | None) -> None:
        """SIGTERM to the process group of ``pid``; SIGKILL to what is left after the grace time."""
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE
        if process is not None:
            try:
                process.wait(timeout=CANCEL_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(pid, signal.SIGKILL)
                process.wait()
        else:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        for _ in range(20):  # workers of the job: the same group
            if not _alive(pid, os.killpg):
                return
            if time.monotonic() > deadline:
                _signal_group(pid, signal.SIGKILL)
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)

    def wait(self, job_id: str, timeout: float | None = None, every: float = 0.2) -> Job:
        """Block until a job ends (for scripts and tests); raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.get(job_id).status not in FINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {self.get(job_id).status} after {timeout} s")
            time.sleep(every)
        return self.get(job_id)

    # -- recovery -------------------------------------------------------------------------
    def _recover(self) -> None:
        """The jobs an earlier server left in ``out``."""
        for spec in sorted(self.out.glob(f"*/{JOB_SPEC}")):
            try:
                job = Job.from_dict(json.loads(spec.read_text()))
            except (OSError, ValueError, TypeError) as error:
                logger.warning("%s: unreadable job spec, skipped: %s", spec, error)
                continue
            if job.id != spec.parent.name:
                continue
            self._jobs[job.id] = job
            if job.status != "running":
                continue
            if job.pid and _runs_in(job.pid, spec.parent):
                threading.Thread(target=self._watch, args=(job.id, job.pid), name=f"watch-{job.id}", daemon=True).start()
            else:
                self._finish(job, None)
                self._save(job)

    # -- progress -------------------------------------------------------------------------
    def _journal(self, job: Job) -> Journal:
        with self._lock:
            if job.id not in self._journals:
                self._journals[job.id] = Journal(self.folder(job.id), fsync=False)
            return self._journals[job.id]

    def records(self, job: Job) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The latest record of every map, and of every other output (prediction, figure,
        scene), from the job's journal, sorted by path."""
        journal = self._journal(job)
        with self._lock:
            latest = journal.latest_by_path() if journal.path.exists() else {}
        ordered = [latest[k].to_dict() for k in sorted(latest)]
        return [r for r in ordered if r["kind"] == "map"], [r for r in ordered if r["kind"] != "map"]

    def progress(self, job: Job) -> dict[str, int | None]:
        """``done`` maps (any outcome) of ``total`` planned, with ``ok``, ``failed`` (failed or
        timed out) and ``empty`` (an empty target region) among them."""
        maps = self.records(job)[0]
        count = {status: sum(r["status"] == status for r in maps) for status in ("ok", "failed", "timeout", "empty")}
        total = job.planned if job.planned is not None else (len(maps) or None)
        return {"done": len(maps), "total": total, "ok": count["ok"], "failed": count["failed"] + count["timeout"],
                "empty": count["empty"]}
