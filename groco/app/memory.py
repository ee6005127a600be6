"""Give large freed blocks back to the OS at once (glibc), so that the server's memory
follows the decodes in flight, not the worst burst it ever saw.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB on 64-bit),
after which the 16 MB blocks PIL decodes images into come from per-thread arenas and stay
there when freed: a burst of large query decodes spread over Gradio's worker threads then
holds the sum of every thread's largest decode (measured: 16 decodes of a 49 MP PNG, 2 at
a time on 8 threads, peak 1.5 GB and 714 MB kept afterwards; with a fixed 1 MiB threshold,
375 MB peak and 3 MB kept). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, as the
``MALLOC_MMAP_THRESHOLD_`` environment variable does at start-up) maps every block over
1 MiB on its own and unmaps it on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
THRESHOLD = 1 << 20


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; ``False`` (and
    nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return ok
