"""Keep glibc's malloc from handing the scoring thread fresh pages on every batch.

The worker scores on a thread of its own. There, glibc's default policy returns the large
buffers of a forward pass to the kernel after each batch, and the next batch takes them back
page by page: about 3 500 page faults per 128² image on the CPU, against about 20 when the
same code runs on the main thread. That cost ~15 % of scoring throughput here
(docs/PERFORMANCE.md). Fixed thresholds keep those buffers in the process instead:
- `M_MMAP_THRESHOLD` at its maximum, 32 MiB: smaller blocks come from the heap, and the
  threshold no longer moves by itself;
- `M_TRIM_THRESHOLD`: free memory at the top of the heap is kept up to 1 GiB.

Memory stays near the peak of one batch, which a worker needs again a moment later anyway.
Called once at start-up (never at import); a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (see the module docstring). True when they were set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("not glibc: malloc thresholds left as they are")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc thresholds %s", "set" if ok else "refused")
    return ok
