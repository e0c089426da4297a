"""Keep freed tensor memory in glibc's heap, so window batches stop page-faulting.

With glibc's defaults, the large buffers of each window batch (activations, gradients) are
``mmap``-ed and ``munmap``-ed every time and faulted in again by the next batch: on CPU
20–30 % of an attribution's time goes to the kernel (``docs/benchmarks.md``). After
:func:`tune_allocator`, glibc serves every allocation from its heap and keeps freed memory
there for reuse (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``). The peak
memory is the same; the process simply does not hand memory back to the OS until it exits.

The ``esegeta`` command calls it; set ``ESEGETA_MALLOC_TUNING=0`` to keep glibc's defaults.
It does nothing off Linux/glibc. Library users may call it once at start-up.

Example:
    >>> from esegeta_monai.apps.allocator import tune_allocator
    >>> tune_allocator() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["tune_allocator"]

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1


def tune_allocator() -> bool:
    """Apply the heap-reuse setting; True when glibc accepted it."""
    if os.environ.get("ESEGETA_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    accepted = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    logger.debug("glibc heap reuse %s", "on" if accepted else "refused")
    return accepted
