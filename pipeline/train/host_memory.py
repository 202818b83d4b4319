"""Keep freed host memory in the training process instead of handing it back to the kernel.

glibc's malloc returns memory eagerly: it trims the top of the heap once more than
M_TRIM_THRESHOLD is free there, and serves blocks above a (dynamic) mmap threshold with a fresh
mapping that is unmapped on free. A CPU training step allocates and frees the same activation
and gradient buffers every iteration, so every step faults them in again, page by zeroed page.
Keeping the memory for reuse (as PyTorch's caching allocator does on GPUs) takes those faults
away (benchmarks/host_memory.py, docs/performance.md). The price: the process keeps its peak
of freed memory.

Both settings go together: a fixed trim threshold alone turns glibc's dynamic mmap threshold
off, and every block above 128 KiB would be mapped afresh, on every allocation.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2, 32 MiB on 64-bit systems; larger
# blocks are still mapped per allocation.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # the largest an int takes: never trim


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (blocks up to 32 MiB from the heap,
    no trimming). Process-wide, inherited by processes forked later (DataLoader workers).
    Returns False, changing nothing, where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: if glibc refuses it, the trim threshold must stay dynamic too.
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
