"""The count behind admission control: work requests in flight in the service.

One process counts in an int (`Admission`). The worker processes of one `dermagan serve --workers N`
count together (`SharedAdmission`), in a small file in shared memory that the parent creates and
names in ADMISSION_ENV: one slot (pid, in flight) per worker, each written only by its owner, so a
request takes no lock. A worker admits while the sum over the slots is below the service's limit.

Why one count and not a share of the limit per worker: keep-alive connections land on the workers
unevenly. On one shared listening socket, 64 connections came out 64/0, 63/1, 57/7, 37/27 and 35/29
over 2 workers; with a SO_REUSEPORT socket per worker (cli.WorkerSocket) 32-36 each, still not
exactly half. With a per-worker share (64 / 2 + 2 = 34) the busier worker answered a stream of fast
503s while the service as a whole had room (bench/results/peers-2026-12-01c.md: 45,981 of them at
c = 64).

Exactness: two workers that decide in the same microsecond may both take the last place, so the
service can exceed its limit by at most N - 1 requests. A worker that dies keeps its slot until
its replacement starts (uvicorn restarts it at once) and takes over the slots of dead processes.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("dermagan.service")

ADMISSION_ENV = "DERMAGAN_SHARED_ADMISSION"  # set by `dermagan serve --workers N` for its workers
_SLOT = 2  # int64 fields per slot: pid, in flight
_BYTES = 8


class Admission:
    """Work requests in flight in this process, against `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0  # this process's

    def service_inflight(self) -> int:
        return self.inflight

    def try_enter(self) -> bool:
        if self.service_inflight() >= self.limit:
            return False
        self._add(1)
        return True

    def leave(self) -> None:
        self._add(-1)

    def _add(self, n: int) -> None:
        self.inflight += n

    def close(self) -> None:
        pass


def create_shared_file(workers: int, base: str | None = None) -> str:
    """The parent's part: a zeroed file in `base` (default: the temporary folder), named after the
    parent's pid, with room for `workers` slots and as many again for replacements that start before
    a dead worker's slot is taken over."""
    fd, path = tempfile.mkstemp(prefix=f"dermagan-admission-{os.getpid()}-", dir=base)
    try:
        os.ftruncate(fd, 2 * workers * _SLOT * _BYTES)
    finally:
        os.close(fd)
    return path


class SharedAdmission(Admission):
    """The in-flight count of all the workers that share `path` (see the module docstring)."""

    def __init__(self, limit: int, path: str) -> None:
        super().__init__(limit)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < _SLOT * _BYTES or size % (_SLOT * _BYTES):
                raise ValueError(f"{ADMISSION_ENV}={path}: not an admission file ({size} bytes)")
            self._map = mmap.mmap(fd, size)
            with _locked(fd):
                self._index = self._claim()
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        self._counts = self._slots[1::_SLOT]
        self._mine = self._index * _SLOT + 1

    def _claim(self) -> int:
        """Take a free slot, or one of a dead process (zeroing its count); under the file lock."""
        slots = memoryview(self._map).cast("q")
        try:
            pid = os.getpid()
            free = None
            for i in range(len(slots) // _SLOT):
                owner = slots[i * _SLOT]
                if owner == 0 or not pid_alive(owner):
                    slots[i * _SLOT], slots[i * _SLOT + 1] = 0, 0
                    free = i if free is None else free
            if free is None:
                raise ValueError(f"{ADMISSION_ENV}: all {len(slots) // _SLOT} slots are held by live processes")
            slots[free * _SLOT], slots[free * _SLOT + 1] = pid, 0
            return free
        finally:
            slots.release()

    def service_inflight(self) -> int:
        return self.inflight if self._map.closed else sum(self._counts)

    def _add(self, n: int) -> None:
        self.inflight += n
        if not self._map.closed:  # (a request that outlives close() only counts here)
            self._slots[self._mine] = self.inflight

    def close(self) -> None:
        """Give the slot back (a clean exit); a killed worker's slot is taken over by its replacement."""
        if self._map.closed:
            return
        self._slots[self._mine - 1], self._slots[self._mine] = 0, 0
        self._counts.release()
        self._slots.release()
        self._map.close()


def for_process(limit: int, process_limit: int, workers: int) -> Admission:
    """The admission count for this process: shared when `dermagan serve --workers N` named a file,
    else this process's own (against `process_limit`: workers started by another supervisor share
    nothing, so each takes its share of the limit)."""
    path = os.environ.get(ADMISSION_ENV)
    if path:
        return SharedAdmission(limit, path)
    if workers > 1:
        log.info("%d workers without a shared admission count: each admits %d", workers, process_limit)
    return Admission(process_limit if workers > 1 else limit)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
