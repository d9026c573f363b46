"""glibc malloc tuning for a serving process: a cap on malloc arenas.

glibc gives each thread that finds the heap locked an arena of its own, up to 8 per core, and keeps
what is freed inside each arena for reuse. Under a surge the codec pool, ORT's threads and asyncio's
executor allocate image buffers at once, spread over more arenas, and the process's RSS stays at
that high-water mark. With a cap the same buffers come back to fewer arenas. Measured by
bench/bench_overload.py, one process, the shipped add model, idle machine (bench/results/
overload-2026-12-01b*.md): peak RSS growth +15.0 % / +11.2 % at 2x / 5x saturation with glibc's
default, +8.8 % / +1.1 % with 2 arenas.

`MALLOC_ARENA_MAX` in the environment, read by glibc itself at start, wins over the setting. Other
C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` (0: leave glibc's default); True when the cap was applied."""
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt numbers differ
            return False
        applied = bool(libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(n)))
    except (OSError, AttributeError):  # pragma: no cover - no C library to talk to
        return False
    if not applied:  # pragma: no cover - glibc refused the value
        log.warning("mallopt(M_ARENA_MAX, %d) was refused; keeping glibc's arenas", n)
    return applied
