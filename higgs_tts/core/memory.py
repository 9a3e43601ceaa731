"""The C allocator's mmap threshold, fixed for the process.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned to the system
when freed; smaller ones come from a heap per thread (an arena), which keeps what is freed. Its threshold
starts at 128 KiB and rises after every large free, up to 32 MiB, so which of a request's large tensors
land in an arena depends on what the process freed before: a 60 s reference peaked anywhere from +65 to
+156 MB on one server (tests/delivery/test_reference_memory.py). A fixed threshold keeps tensors above it
out of the arenas: the same request then peaks at the same +84 MB every time at 4 MiB. It costs speed
where large tensors are made and freed on the host, on a CPU (docs/operations.md has the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter (malloc.h)


def fix_mmap_threshold(threshold: int) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes (0: leave glibc's own); False where the C library
    is not glibc or refuses it."""
    if threshold == 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to fix
        return False
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("the C library refused an mmap threshold of %d bytes", threshold)
        return False
    return True
