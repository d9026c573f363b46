"""dermagan/allocator.py: the malloc arena cap really limits glibc's arenas (counted by malloc_stats); training's
thresholds keep a step's freed memory for the next (counted in page faults)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
from dermagan.allocator import THRESHOLD_VARIABLES, limit_arenas

PROBE = """
import ctypes, sys, threading
from dermagan.allocator import limit_arenas
print("applied", limit_arenas(int(sys.argv[1])), file=sys.stderr, flush=True)
alive = threading.Barrier(8)
def work():  # every thread allocates while all eight are alive, so glibc cannot hand one arena on
    block = [bytearray(4096) for _ in range(64)]
    alive.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" section per arena, on stderr
"""

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc only")


#: glibc's own malloc settings, dropped from a probe's environment unless a test sets one
MALLOC_ENV = ("MALLOC_ARENA_MAX", *THRESHOLD_VARIABLES, "GLIBC_TUNABLES")


def probe(code: str, arg: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (malloc settings are process-wide) with glibc's defaults plus `env`."""
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=60, check=False,
                         env={k: v for k, v in os.environ.items() if k not in MALLOC_ENV} | env)
    assert out.returncode == 0, out.stderr
    return out


def arenas(n: int, **env: str) -> tuple[int, str]:
    out = probe(PROBE, str(n), env)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines()), out.stderr


@glibc
def test_the_cap_limits_the_arenas_of_eight_threads() -> None:
    free, _ = arenas(0)
    capped, err = arenas(2)
    assert "applied True" in err
    assert free > 2, f"glibc's default gave only {free} arenas to 8 live threads; the probe shows nothing"
    assert capped == 2


@glibc
def test_malloc_arena_max_in_the_environment_wins() -> None:
    count, err = arenas(2, MALLOC_ARENA_MAX="1")
    assert "applied False" in err and count == 1


def test_zero_leaves_glibc_alone() -> None:
    assert limit_arenas(0) is False


FAULTS = """
import ctypes, resource, sys
from dermagan.allocator import keep_freed_memory
print("applied", keep_freed_memory() if sys.argv[1] == "keep" else False, file=sys.stderr, flush=True)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def step():  # a training step's shape: ten 4 MiB activations written, then all freed
    blocks = [libc.malloc(4 << 20) for _ in range(10)]
    for b in blocks:
        ctypes.memset(b, 1, 4 << 20)
    for b in blocks:
        libc.free(b)
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

PAGES = 10 * (4 << 20) // 4096  # what a probe step writes


def faults_per_step(keep: bool, **env: str) -> tuple[float, str]:
    out = probe(FAULTS, "keep" if keep else "default", env)
    return float(out.stdout), out.stderr


@glibc
def test_kept_memory_is_not_faulted_in_again_every_step() -> None:
    default, _ = faults_per_step(False)
    kept, err = faults_per_step(True)
    assert "applied True" in err
    assert default > 0.5 * PAGES, f"glibc's default faulted in only {default} of {PAGES} pages a step; the probe shows nothing"
    assert kept < 0.05 * PAGES


@glibc
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_malloc_settings_in_the_environment_win(env: dict[str, str]) -> None:
    faults, err = faults_per_step(True, **env)
    assert "applied False" in err and faults > 0.5 * PAGES
