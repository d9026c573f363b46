"""glibc malloc tuning, for the two kinds of process dermagan runs (no torch, no onnxruntime here).

**Serving: a cap on malloc arenas** (`limit_arenas`). glibc gives each thread that finds the heap
locked an arena of its own, up to 8 per core, and keeps what is freed inside each arena for reuse.
Under a surge the codec pool, ORT's threads and asyncio's executor allocate image buffers at once,
spread over more arenas, and the process's RSS stays at that high-water mark. With a cap the same
buffers come back to fewer arenas. Measured by bench/bench_overload.py, one process, the shipped add
model, idle machine (bench/results/overload-2026-12-01b*.md): peak RSS growth +15.0 % / +11.2 % at
2x / 5x saturation with glibc's default, +8.8 % / +1.1 % with 2 arenas.

**Training on a CPU: keep freed memory for the next step** (`keep_freed_memory`). A training step
allocates and frees the same activations and gradients every step, megabytes each. With glibc's
defaults part of them go back to the kernel when freed (blocks over the mmap threshold, and the
heap's top beyond the trim threshold), and the next step takes them again as fresh pages, each page
faulted in and zeroed: ~10,000 page faults a step for the CycleGAN's generator at 64 px. Raising
both thresholds keeps those blocks in the heap, as PyTorch's CUDA caching allocator keeps device
memory (and as jemalloc or tcmalloc, which PyTorch's CPU tuning guide suggests, would). The
process's RSS then stays at its peak instead of falling between steps.

Set in the environment, glibc's own variables win over both (`MALLOC_ARENA_MAX`; `MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_` or a `glibc.malloc.` tunable in `GLIBC_TUNABLES`). Other
C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: glibc's own variables for what `keep_freed_memory` sets; any of them in the environment (or a `glibc.malloc.`
#: tunable in GLIBC_TUNABLES) wins over it
THRESHOLD_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

#: the largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to it come from the heap
MMAP_THRESHOLD = 32 << 20
#: free memory at the heap's top kept rather than returned (a step's activations, freed at its end, are reused)
TRIM_THRESHOLD = 1 << 30


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:  # pragma: no cover - no C library to talk to
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # other C libraries' mallopt numbers differ


def _mallopt(libc: ctypes.CDLL, param: int, value: int, name: str) -> bool:
    applied = bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    if not applied:  # pragma: no cover - glibc refused the value
        log.warning("mallopt(%s, %d) was refused; keeping glibc's default", name, value)
    return applied


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` (0: leave glibc's default); True when the cap was applied."""
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _glibc()
    return libc is not None and _mallopt(libc, M_ARENA_MAX, n, "M_ARENA_MAX")


def _malloc_set_by_environment() -> bool:
    return any(n in os.environ for n in THRESHOLD_VARIABLES) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Keep blocks up to 32 MiB, and up to 1 GiB free at the heap's top, for reuse instead of giving them back
    to the kernel (a training process on a CPU); True when applied. Process-wide and not undone."""
    if _malloc_set_by_environment():
        return False
    libc = _glibc()
    # the mmap threshold first: setting either one ends glibc's own adjustment of both, and a trim threshold
    # alone (the mmap threshold left at its 128 KiB start) faults in more pages, not fewer
    return libc is not None and (_mallopt(libc, M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD")
                                 and _mallopt(libc, M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD"))
