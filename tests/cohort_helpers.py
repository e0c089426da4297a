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
