"""How many CPU cores this process may use: its affinity mask and its container's CPU quota.

`os.sched_getaffinity` counts the cores the process may run on. A container given a CPU limit --
`docker run --cpus 2`, Compose's `cpus:`, a Kubernetes `resources.limits.cpu` -- usually still runs on
every core of its host: the limit is a CFS quota of its cgroup (so much CPU time per period), which
the affinity mask does not show. ONNX Runtime and PyTorch size their thread pools by the cores they
see, so on a 64-core node a pod limited to 2 CPUs would start 64 threads per model, all throttled.
`usable_cores()` is the smaller of the two counts (the quota rounded up: 1.5 CPUs -> 2 threads, as
the JVM and .NET round it), at least 1.

Both cgroup versions are read, the way the kernel exposes them: v2 `cpu.max` ("QUOTA PERIOD" or
"max PERIOD"), v1 `cpu.cfs_quota_us` (-1 = none) over `cpu.cfs_period_us`, in the process's own cgroup
(from /proc/self/cgroup) and every ancestor up to the mount point (a parent's limit binds its children).
A file that is missing or unreadable means no limit from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cgroup_lines(proc_self_cgroup: Path) -> list[tuple[str, str]]:
    """(controllers, path) of each line of /proc/self/cgroup ("" controllers: v2's "0::/path"); [] when unreadable."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return []
    return [(parts[1], parts[2]) for parts in (line.split(":", 2) for line in lines) if len(parts) == 3]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), the tightest over its ancestors;
    None when there is none (or no cgroup file says so)."""
    lines = _cgroup_lines(proc_self_cgroup)
    limits: list[float] = []
    for controllers, path in lines:
        if controllers == "":  # v2: "0::/path"
            limits += _limits(_dirs(root, path), "cpu.max", _v2)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                if (root / mount).is_dir():
                    limits += _limits(_dirs(root / mount, path), "cpu.cfs_quota_us", _v1)
                    break
    if not lines:  # no /proc/self/cgroup: the mount points themselves (a container's own cgroup)
        limits += _limits([root], "cpu.max", _v2) + _limits([root / "cpu"], "cpu.cfs_quota_us", _v1)
    return min(limits) if limits else None


def cgroup_memory_left(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Bytes this process's cgroup may still take before its memory limit (v2 memory.max less memory.current, v1
    memory.limit_in_bytes less memory.usage_in_bytes), the tightest over its ancestors; None when none says."""
    left: list[float] = []
    for controllers, path in _cgroup_lines(proc_self_cgroup):
        if controllers == "":  # v2
            left += _limits(_dirs(root, path), "memory.max", lambda f: _memory_left(f, "memory.current"))
        elif "memory" in controllers.split(","):  # v1
            left += _limits(_dirs(root / "memory", path), "memory.limit_in_bytes",
                            lambda f: _memory_left(f, "memory.usage_in_bytes"))
    return int(min(left)) if left else None


def _memory_left(limit_file: Path, usage_name: str) -> float | None:
    limit = limit_file.read_text().strip()
    return None if limit == "max" else int(limit) - int((limit_file.parent / usage_name).read_text())


def usable_cores() -> int:
    """min(the affinity mask's cores, the cgroup quota rounded up), at least 1."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit is not None else cores


def _dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under `mount` and each ancestor up to `mount` itself (inside a container's
    cgroup namespace the path is "/": the mount is the container's own cgroup)."""
    here = mount / path.strip("/") if path.strip("/") else mount
    dirs = [here, *here.parents]
    return [d for d in dirs if d == mount or mount in d.parents]


def _limits(dirs: list[Path], name: str, parse: Callable[[Path], float | None]) -> list[float]:
    found = []
    for d in dirs:
        try:
            limit = parse(d / name)
        except (OSError, ValueError):
            continue
        if limit is not None:
            found.append(limit)
    return found


def _v2(cpu_max: Path) -> float | None:
    quota, period = (cpu_max.read_text().split() + ["100000"])[:2]
    return None if quota == "max" else int(quota) / int(period)


def _v1(quota_file: Path) -> float | None:
    quota = int(quota_file.read_text())
    if quota <= 0:
        return None
    return quota / int((quota_file.parent / "cpu.cfs_period_us").read_text())
