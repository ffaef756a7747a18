"""Keep the process's memory bounded when large buffers come and go.

glibc raises its mmap threshold each time a large block is freed, so after the first 5 MiB
upload part is freed, later parts come from the heap arenas of the worker threads and stay
there: RSS creeps up with the amount of data moved. Fixing the threshold at 1 MiB keeps large
buffers in mmap, returned to the system on free (measured: 100 -> 79 MiB for a 200 MiB upload).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
_done = False


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold (once per process); False where there is no glibc."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    return _done
