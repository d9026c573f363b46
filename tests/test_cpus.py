"""dermagan.cpus: the cores a process may use, its container's CPU quota included -- on cgroup trees
written here (v1 and v2, as Docker and Kubernetes lay them out) and in a real cgroup where the
machine lets the test make one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dermagan import cpus


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize(("proc", "files", "limit"), [
    # v2, a container in its own cgroup namespace: the mount is its cgroup
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # v2, a Kubernetes pod seen without a cgroup namespace: the pod's limit binds the container's
    ("0::/kubepods/pod1/ctr\n", {"kubepods/pod1/ctr/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "200000 100000",
                                 "kubepods/cpu.max": "max 100000"}, 2.0),
    # the tighter of two levels wins
    ("0::/a/b\n", {"a/b/cpu.max": "50000 100000", "a/cpu.max": "300000 100000"}, 0.5),
    # v1, Docker without a cgroup namespace: /proc names the host's path, the mount is the container's cgroup
    ("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.5),
    ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("1:cpu:/job\n", {"cpu/job/cpu.cfs_quota_us": "100000", "cpu/job/cpu.cfs_period_us": "100000"}, 1.0),
    # unreadable or unlimited: no limit from it
    ("0::/\n", {"cpu.max": "garbage"}, None),
    ("0::/\n", {}, None),
])
def test_cgroup_cpu_limit(tmp_path: Path, proc: str, files: dict[str, str], limit: float | None) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    _tree(root, files)
    (tmp_path / "proc-self-cgroup").write_text(proc)
    assert cpus.cgroup_cpu_limit(root, tmp_path / "proc-self-cgroup") == limit


@pytest.mark.parametrize(("affinity", "limit", "usable"), [(64, 2.0, 2), (64, 1.5, 2), (64, 0.2, 1), (4, 16.0, 4),
                                                           (8, None, 8)])
def test_usable_cores_is_the_smaller_of_affinity_and_quota(monkeypatch: pytest.MonkeyPatch, affinity: int,
                                                           limit: float | None, usable: int) -> None:
    monkeypatch.setattr(cpus, "affinity_cores", lambda: affinity)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: limit)
    assert cpus.usable_cores() == usable


def test_the_service_and_training_size_their_threads_by_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from dermagan.service import engine, settings
    from dermagan.training import distributed

    torch = pytest.importorskip("torch")
    for module in (settings, engine, distributed):
        monkeypatch.setattr(module, "usable_cores", lambda: 3)
    s = settings.Settings.from_env({}, workers=2)
    assert (s.cores_per_worker, s.ort_threads, s.codec_workers) == (1, 1, 1)
    assert settings.Settings.from_env({}).ort_threads == 3 and engine._threads(0) == 3 and engine._threads(5) == 5
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(8)
        distributed.limit_threads()
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "8")  # set by the user (or torchrun): theirs to decide
        torch.set_num_threads(8)
        distributed.limit_threads()
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


def _cpu_cgroup_v1() -> Path | None:
    root = Path("/sys/fs/cgroup/cpu")
    if os.geteuid() != 0 or not (root / "cpu.cfs_quota_us").is_file() or len(os.sched_getaffinity(0)) < 2:
        return None
    return root


def test_a_real_cgroup_quota_is_seen_by_a_process_inside_it() -> None:
    """A cgroup made here with a 1-CPU quota (v1, where the machine is root and has two cores or
    more): a process started in it counts 1 usable core, and `dermagan serve --check` sizes its
    threads by it."""
    root = _cpu_cgroup_v1()
    if root is None:
        pytest.skip("needs root, a writable cgroup v1 cpu controller and at least 2 cores")
    group = root / f"dermagan-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as e:
        pytest.skip(f"cannot make a cgroup here: {e}")
    try:
        inside = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", sys.executable]
        out = subprocess.run([*inside, "-c", "from dermagan import cpus; print(cpus.cgroup_cpu_limit(), "
                              "cpus.usable_cores(), cpus.affinity_cores())"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
        assert out[:2] == ["1.0", "1"] and int(out[2]) >= 2
        models = Path(__file__).resolve().parents[1] / "models"
        if (models / "manifest.json").is_file():
            check = subprocess.run([*inside, "-m", "dermagan.cli", "serve", "--check", "--models-dir", str(models)],
                                   capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "DERMAGAN_PROVIDERS": "CPUExecutionProvider",
                                        "DERMAGAN_MODELS": "eczema-segment"})
            assert check.returncode == 0, check.stderr[-2000:]
            assert f"CPU: 1 cores usable (affinity {out[2]}, cgroup quota 1 CPUs), 1 per worker of 1: ORT intra-op " \
                   "threads 1 per model, codec threads 1" in check.stderr
    finally:
        group.rmdir()
