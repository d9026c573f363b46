"""service/allocator.py: the malloc arena cap really limits glibc's arenas (counted by malloc_stats)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
from dermagan.service.allocator import limit_arenas

PROBE = """
import ctypes, sys, threading
from dermagan.service.allocator import limit_arenas
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


def arenas(n: int, **env: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(n)], capture_output=True, text=True, timeout=60, check=False,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env)
    assert out.returncode == 0, out.stderr
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
