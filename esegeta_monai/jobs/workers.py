"""Units of work run by worker processes fed from one queue.

:func:`run_in_workers` starts one process per :class:`WorkerSpec` (``spawn``: safe with CUDA and
threads), each of which builds its executor once — ``factory(device)``, e.g. loading a bundle onto
its device — and then runs units from a shared queue until none is left. An executor is a
callable ``executor(unit) -> iterable of records``; it records each job itself (in the journal)
and the records come back to the parent as events, for progress, each sent synchronously on the
worker's own pipe before the next job starts. A worker that dies (killed, out of memory) loses at
most the unit it was running: the parent sees it exit at once (its process sentinel), reports that
unit's unrecorded jobs through ``on_lost``, and the other workers go on with the rest.

Example:
    >>> from esegeta_monai.jobs.workers import WorkerSpec, worker_specs
    >>> [(w.device, w.threads) for w in worker_specs(2, ["cuda:0", "cuda:1"], cpu_threads=16)]
    [('cuda:0', 8), ('cuda:1', 8)]
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerSpec", "worker_specs", "run_in_workers"]

logger = logging.getLogger(__name__)

#: a worker's messages are ``(kind, worker index, payload)``, kinds ``ready``, ``init_failed``,
#: ``start``, ``record``, ``unit_failed``, ``done``, ``exit``

@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its index, device (``None``: the executor's default) and CPU threads."""

    index: int
    device: str | None
    threads: int
    log_level: int = logging.INFO


def worker_specs(workers: int, devices: Sequence[str] = (), cpu_threads: int | None = None,
                 log_level: int = logging.INFO) -> list[WorkerSpec]:
    """``workers`` specs (at least one per device), devices assigned round robin, the CPU threads
    split evenly between the workers."""
    count = max(int(workers), len(devices), 1)
    threads = max(1, (cpu_threads or os.cpu_count() or 1) // count)
    return [WorkerSpec(i, devices[i % len(devices)] if devices else None, threads, log_level) for i in range(count)]


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if not type(error).__module__.startswith("esegeta_monai") else str(error)


def _worker_main(spec: WorkerSpec, factory: Callable, tasks, events) -> None:  # pragma: no cover - in a child process
    import torch

    from esegeta_monai.jobs.console import configure_console

    configure_console(spec.log_level, prefix=f"[worker {spec.index}] ")
    torch.set_num_threads(spec.threads)
    try:
        _serve(spec, factory, tasks, events)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, once
        pass


def _serve(spec: WorkerSpec, factory: Callable, tasks, events) -> None:  # pragma: no cover - in a child process
    try:
        execute = factory(spec.device)
    except Exception as error:
        logger.debug("worker %d could not start", spec.index, exc_info=True)
        events.send(("init_failed", spec.index, _error_text(error)))
        return
    events.send(("ready", spec.index, None))
    while True:
        item = tasks.get()
        if item is None:
            break
        index, unit = item
        events.send(("start", spec.index, index))
        try:
            for record in execute(unit):
                events.send(("record", spec.index, (index, record)))
        except Exception as error:  # a bug in the executor: the parent records the unit's other jobs
            logger.error("worker %d: %s", spec.index, traceback.format_exc())
            events.send(("unit_failed", spec.index, (index, _error_text(error))))
        events.send(("done", spec.index, index))
    events.send(("exit", spec.index, None))


def run_in_workers(
    units: Sequence[Any],
    factory: Callable[[str | None], Callable[[Any], Iterable[Any]]],
    workers: Sequence[WorkerSpec],
    on_record: Callable[[int, Any], None],
    on_lost: Callable[[int, str, set[str]], None],
    record_path: Callable[[Any], str] = lambda record: getattr(record, "path", None),
) -> str | None:
    """Run ``units`` on ``workers``; returns the start error when no worker could start.

    Args:
        units: picklable units of work.
        factory: picklable ``factory(device) -> executor``; ``executor(unit)`` yields records.
        workers: the worker processes to start.
        on_record: ``on_record(unit index, record)`` for every record, in the parent.
        on_lost: ``on_lost(unit index, reason, paths already recorded)`` for a unit whose worker
            died or failed, or that no worker could run.
        record_path: the job path of a record (to tell which of a lost unit's jobs were done).
    """
    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    for index, unit in enumerate(units):
        tasks.put((index, unit))
    for _ in workers:
        tasks.put(None)
    pipes, processes = {}, {}
    for spec in workers:
        receiver, sender = context.Pipe(duplex=False)
        pipes[spec.index] = receiver
        processes[spec.index] = context.Process(target=_worker_main, args=(spec, factory, tasks, sender), daemon=True,
                                                name=f"esegeta-worker-{spec.index}")
        processes[spec.index].start()
        sender.close()  # the child holds its end: the parent sees end-of-file when the child is gone
    running: dict[int, int] = {}  # worker → unit index
    recorded: dict[int, set[str]] = defaultdict(set)
    finished_units: set[int] = set()
    start_errors: list[str] = []
    ready = 0

    def lose(index: int, reason: str) -> None:
        if index not in finished_units:
            finished_units.add(index)
            on_lost(index, reason, recorded[index])

    def handle(kind: str, worker: int, payload: Any) -> None:
        nonlocal ready
        if kind == "ready":
            ready += 1
        elif kind == "init_failed":
            start_errors.append(payload)
            logger.error("worker %d could not start: %s", worker, payload)
        elif kind == "start":
            running[worker] = payload
        elif kind == "record":
            index, record = payload
            recorded[index].add(record_path(record))
            on_record(index, record)
        elif kind == "unit_failed":
            lose(*payload)
        elif kind == "done":
            finished_units.add(running.pop(worker, payload))

    from multiprocessing.connection import wait

    open_pipes = dict(pipes)
    try:
        while open_pipes:
            for ready_pipe in wait(list(open_pipes.values()), timeout=1.0):
                worker = next(w for w, p in open_pipes.items() if p is ready_pipe)
                try:
                    handle(*ready_pipe.recv())
                except (EOFError, OSError):  # the worker is gone, and every message it sent was read
                    del open_pipes[worker]
                    processes[worker].join(timeout=5)
                    if worker in running:
                        lose(running.pop(worker), f"worker {worker} died (exit code {processes[worker].exitcode}) while running this image")
    finally:
        for process in processes.values():
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
    for index in range(len(units)):  # every worker gone before the queue was empty
        lose(index, "no worker could run it" + (f": {start_errors[0]}" if start_errors else ""))
    return start_errors[0] if start_errors and not ready else None
