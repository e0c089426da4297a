"""Jobs sharded across torchrun ranks, on one machine or several.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every rank plans the same units from the
same inputs and journal, takes every ``world_size``-th one from its rank on (:meth:`Ranks.owns`),
and runs it on ``cuda:LOCAL_RANK`` when CUDA is there (else the CPU, its threads split between the
machine's ranks). A gloo process group provides the run id (from rank 0) and the barriers: one after
planning, so that no rank writes before every rank has read the journal, and one at the end, after
which rank 0 writes the merged manifest. Each job runs on exactly one rank; a rank that dies leaves
its finished jobs in the journal, and a rerun does only what is missing.

Example:
    >>> from esegeta_monai.jobs.distributed import Ranks
    >>> ranks = Ranks(rank=1, world_size=2, local_rank=1, local_world_size=2)
    >>> [i for i in range(5) if ranks.owns(i)], ranks.device("cpu")
    ([1, 3], 'cpu')
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Ranks", "torchrun_ranks", "ProcessGroup"]

logger = logging.getLogger(__name__)

#: how long a rank waits for the others at a barrier (a long job on one rank must not time the others out)
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among torchrun's ranks."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether unit ``index`` is this rank's (round robin)."""
        return index % self.world_size == self.rank

    def device(self, requested: str | None = None) -> str:
        """``cuda:LOCAL_RANK`` when CUDA is there and no CPU was asked for, else ``cpu``."""
        import torch

        if requested is not None and str(requested).startswith("cpu"):
            return "cpu"
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"

    def cpu_threads(self) -> int:
        """This rank's share of the machine's CPU threads."""
        return max(1, (os.cpu_count() or 1) // max(1, self.local_world_size))


def torchrun_ranks() -> Ranks | None:
    """The ranks of a torchrun launch (``WORLD_SIZE`` > 1), else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Ranks(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


class ProcessGroup:
    """A gloo process group for the length of a ``with`` block (torchrun's ``env://`` rendezvous)."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._started = False

    def __enter__(self) -> ProcessGroup:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if self._started and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def total(self, value: int) -> int:
        """The sum of ``value`` over the ranks, on every rank."""
        import torch.distributed as dist

        values: list[Any] = [None] * self.ranks.world_size
        dist.all_gather_object(values, int(value))
        return sum(values)

    def from_leader(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist

        box = [value if self.ranks.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
