"""The in-flight count of admission control, in one process and shared by worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dermagan.service.admission import ADMISSION_ENV, Admission, SharedAdmission, create_shared_file, for_process


@pytest.fixture
def shared_file():
    path = create_shared_file(2)
    yield path
    os.unlink(path)


def test_one_process_counts_against_its_limit() -> None:
    a = Admission(2)
    assert a.try_enter() and a.try_enter() and not a.try_enter()
    a.leave()
    assert a.inflight == 1 and a.try_enter()


#: a worker process: takes n places of the shared count, says which it got, waits for stdin to close
WORKER = """
import json, sys
from dermagan.service.admission import SharedAdmission
a = SharedAdmission(int(sys.argv[3]), sys.argv[1])
print(json.dumps([a.try_enter() for _ in range(int(sys.argv[2]))]), flush=True)
sys.stdin.read()
"""


def _worker(path: str, n: int, limit: int) -> tuple[subprocess.Popen[str], list[bool]]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, path, str(n), str(limit)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def test_processes_share_one_limit_and_a_dead_ones_places_come_back(shared_file: str) -> None:
    here = SharedAdmission(4, shared_file)
    assert here.try_enter()
    other, got = _worker(shared_file, 4, 4)
    assert got == [True, True, True, False]  # 1 here + 3 there = the limit
    assert here.service_inflight() == 4 and here.inflight == 1 and not here.try_enter()
    other.kill()
    other.wait()
    assert here.service_inflight() == 4  # a killed worker's places stay taken until its replacement starts
    replacement, got = _worker(shared_file, 3, 4)
    assert got == [True, True, True]  # it took over the dead slot, zeroed
    replacement.communicate("")
    here.leave()
    here.close()
    assert Path(shared_file).read_bytes()[:16] == bytes(16)  # a clean exit gives its slot (pid, count) back


def test_a_file_that_is_no_admission_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"x" * 5)
    with pytest.raises(ValueError, match=f"{ADMISSION_ENV}=.*bad: not an admission file"):
        SharedAdmission(4, str(bad))


def test_for_process_shares_only_when_the_supervisor_said_so(shared_file: str, monkeypatch) -> None:
    monkeypatch.delenv(ADMISSION_ENV, raising=False)
    alone = for_process(68, 34, workers=2)
    assert type(alone) is Admission and alone.limit == 34  # workers of another supervisor: a share each
    assert for_process(68, 34, workers=1).limit == 68
    monkeypatch.setenv(ADMISSION_ENV, shared_file)
    shared = for_process(68, 34, workers=2)
    assert isinstance(shared, SharedAdmission) and shared.limit == 68
    assert shared.try_enter()
    shared.close()
    shared.leave()  # a request that finishes after the slot was given back still counts down, here only
    assert shared.inflight == 0


def test_a_killed_supervisors_leftovers_are_swept_at_the_next_start(tmp_path: Path) -> None:
    from dermagan.service.cli import sweep_leftovers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    (tmp_path / f"dermagan-metrics-{dead}-abc").mkdir()
    (tmp_path / f"dermagan-metrics-{dead}-abc" / "counter_1.db").write_bytes(b"x")
    (tmp_path / f"dermagan-admission-{dead}-def").write_bytes(bytes(32))
    live = [tmp_path / f"dermagan-admission-{os.getppid()}-ghi", tmp_path / "dermagan-metrics-old", tmp_path / "other"]
    for p in live:
        p.write_bytes(b"")
    removed = sweep_leftovers(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == [f"dermagan-admission-{dead}-def", f"dermagan-metrics-{dead}-abc"]
    assert all(p.exists() for p in live)  # a live supervisor's file, and names that are not ours, stay


def test_the_sweep_removes_a_folder_named_after_its_own_pid(tmp_path: Path) -> None:
    """In a container the supervisor is always PID 1: a folder with our pid is an earlier supervisor's (the sweep
    runs before this one makes its own)."""
    from dermagan.service.cli import sweep_leftovers

    ours = tmp_path / f"dermagan-metrics-{os.getpid()}-abc"
    ours.mkdir()
    (tmp_path / f"dermagan-admission-{os.getpid()}-def").write_bytes(bytes(32))
    live = tmp_path / f"dermagan-admission-{os.getppid()}-ghi"  # another live process's
    live.write_bytes(b"")
    removed = sorted(Path(p).name for p in sweep_leftovers(str(tmp_path)))
    assert removed == [f"dermagan-admission-{os.getpid()}-def", f"dermagan-metrics-{os.getpid()}-abc"]
    assert live.exists()


def test_the_sweep_runs_before_the_supervisor_makes_its_own_files() -> None:
    import inspect

    from dermagan.service import cli

    source = inspect.getsource(cli._serve_workers)
    assert source.index("sweep_leftovers(base)") < source.index("_metrics_dir(base)") < source.index(
        "create_shared_file(")
