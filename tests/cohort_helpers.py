"""Helpers of the cohort tests that worker processes import (spawn pickles functions by module)."""

import os


def toy_executor_factory(device):
    """An executor that yields one record per job and kills its own process on a unit named 'die'."""

    def execute(unit):
        if unit["name"] == "die":
            os._exit(9)
        for job in unit["jobs"]:
            yield {"path": job, "device": device}

    return execute


def failing_factory(device):
    raise RuntimeError(f"cannot start on {device}")


def rendezvous_executor_factory(device):
    """An executor that waits (up to 60 s) until two processes have taken a unit, then reports its pid.

    With two workers and two units this proves both processes pull from the one queue, whatever
    the order in which they start.
    """
    import time
    from pathlib import Path

    def execute(unit):
        folder = Path(unit["folder"])
        (folder / f"{os.getpid()}.started").touch()
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.started"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {"path": unit["name"], "pid": os.getpid()}

    return execute
