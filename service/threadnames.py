"""Thread names the operating system shows.

`top -H`, `ps -L`, /proc/PID/task/TID/comm, perf and gdb name a thread by its kernel name, which Python (before
3.14) leaves as the process's own ("python" for every thread). `name_os_thread`, the initializer of the service's
thread pools, gives the calling thread its Python name -- `codec_0`, `infer-eczema-add_0` -- cut to the kernel's
15 bytes, so an operator sees which thread is the model's and which the codec's, and `bench/bench_cpu_split.py`
measures each role's CPU exactly. Linux only (prctl PR_SET_NAME); elsewhere, or when it fails, nothing changes.
"""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15  # linux/prctl.h
#: the kernel keeps 16 bytes of a thread's name, its NUL included
OS_NAME_BYTES = 15


def name_os_thread() -> None:
    """Give the calling thread its Python name (first 15 bytes) as its kernel name."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:OS_NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError):  # no libc to call, or no prctl in it: the name stays "python"
        pass
