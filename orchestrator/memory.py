"""Handing memory the driver has freed back to the operating system.

A sweep's driver lives for days and frees large amounts at known moments: the trial objects of a Tune experiment
when its window ends, the rows a compaction has merged. Freed is not returned: glibc keeps freed heap pages that
live objects are scattered among, and Arrow's allocator keeps its own, so the driver's resident memory would keep
each peak (``bench/bench_scale.py --part driver``: 617 MiB at the start of a 20,000-trial run, 891 MiB after the
compactions of its first 10,000 rows, kept to the end). Releasing at those moments makes it follow what is live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import pyarrow as pa


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def release_freed_memory() -> None:
    """Collect cycles, then give back what Arrow's pool and the C heap hold free (``malloc_trim(0)`` also returns
    free pages inside the heap, not only at its end)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
