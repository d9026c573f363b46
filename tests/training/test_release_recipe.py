"""The release recipe's profiles (training/release.py SHIPPED), read without training: each makes every model
the service ships, its stages start from networks of their own shape, a run whose checkpoint is chosen keeps
several, and each run's procedural data is held in memory rather than re-rendered every epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dermagan.manifest import load_manifest
from dermagan.training import sources
from dermagan.training.release import SHIPPED

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODELS = sorted(m.name for m in load_manifest(ROOT / "models").models)


@pytest.mark.parametrize("profile", list(SHIPPED))
def test_every_profile_makes_every_shipped_model_once(profile):
    made = [name for run in SHIPPED[profile] for name in run.models]
    assert sorted(made) == SHIPPED_MODELS, f"{profile} makes {made}"


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_stages_start_from_an_earlier_run_of_the_same_networks_and_chosen_runs_keep_checkpoints(profile):
    runs = {run.run: (i, run, run.config()) for i, run in enumerate(SHIPPED[profile])}
    for i, run, cfg in runs.values():
        if run.init_from:
            j, _, source = runs[run.init_from]
            assert j < i and source.family == cfg.family and source.net == cfg.net and source.size == cfg.size, run.run
        if run.select:
            assert cfg.keep_checkpoints and cfg.steps // cfg.ckpt_every >= 4, run.run


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_every_runs_procedural_data_fits_the_in_memory_cache(profile, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # build the sets without rendering them ahead
    for run in SHIPPED[profile]:
        dataset, _ = sources.build_dataset(run.config())
        assert isinstance(dataset, sources.Memo), f"{profile} {run.run}: {len(dataset)} samples re-rendered every epoch"


def test_evaluations_render_their_data_on_every_core(monkeypatch):
    from dermagan.training import release

    monkeypatch.setattr(release, "usable_cores", lambda: 16)
    assert release.eval_workers() == 16
    monkeypatch.setattr(release, "usable_cores", lambda: 1)
    assert release.eval_workers() == 2  # evaluate's own default, as before


@pytest.mark.parametrize("argv,words", [(["--eval-n", "3"], "release: --eval-n must be at least 6, got 3"),
                                        (["--minutes", "-5"], "release: --minutes must be >= 0, got -5"),
                                        (["--jobs", "0"], "release: --jobs must be >= 1, got 0"),
                                        (["--eval-seeds", "0"], "release: --eval-seeds must be within 1..")])
def test_bad_options_are_refused_before_any_training(tmp_path, monkeypatch, argv, words):
    from dermagan import cli
    from dermagan.training import release

    monkeypatch.setattr(release, "train_all", lambda *a, **k: pytest.fail("trained before refusing its options"))
    with pytest.raises(SystemExit, match=words):
        cli.main(["release", "--profile", "tiny", "--work", str(tmp_path / "runs"), "--models", str(tmp_path / "m"), *argv])
    assert not (tmp_path / "runs").exists()


def _fake_training(release, monkeypatch, cores: int):
    """train_all with `dermagan train` replaced by a process that finishes its run at once: returns the list of
    (run, OMP threads it was given, runs under way beside it) in launch order."""
    import json

    launched, under_way = [], set()

    class Done:
        def __init__(self, cmd, env, **_):
            out = Path(cmd[cmd.index("--out") + 1])
            launched.append((out.name, int(env["OMP_NUM_THREADS"]), sorted(under_way)))
            under_way.add(out.name)
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / "last.pt").write_bytes(b"")
            (out / "config.json").write_text(json.dumps({"steps": 10}))
            (out / "metrics.jsonl").write_text(json.dumps({"step": 10}) + "\n")
            self.name, self.returncode = out.name, 0

        def poll(self):
            under_way.discard(self.name)
            return 0

    monkeypatch.setattr(release, "usable_cores", lambda: cores)
    monkeypatch.setattr(release.subprocess, "Popen", Done)
    monkeypatch.setattr(release.time, "sleep", lambda s: None)
    return launched


def _run(name: str, init_from: str = ""):
    from dermagan.training.release import ShippedRun

    return ShippedRun(name, "segment", ("--steps", "10"), 1.0, (), init_from=init_from)


@pytest.mark.parametrize("runs,jobs,threads", [
    # one chain of stages (`--only cycle cycle-tune cycle-final`): never two at once, so every core each
    ([_run("a"), _run("b", "a"), _run("c", "b")], 2, {"a": 2, "b": 2, "c": 2}),
    # two runs side by side share the cores; the stage left after them gets them all
    ([_run("x"), _run("a"), _run("b", "a")], 2, {"x": 1, "a": 1, "b": 2}),
    # two stages from one run: those two can train at once, so the run they start from gets its share too
    ([_run("a"), _run("b", "a"), _run("c", "a")], 2, {"a": 1, "b": 1, "c": 1}),
    ([_run("x"), _run("a"), _run("b", "a")], 1, {"x": 2, "a": 2, "b": 2}),
])
def test_each_run_gets_the_cores_divided_by_the_runs_that_can_train_beside_it(tmp_path, monkeypatch, runs, jobs,
                                                                              threads):
    from dermagan.training import release

    launched = _fake_training(release, monkeypatch, cores=2)
    release.train_all(runs, tmp_path, None, jobs)
    assert {name: n for name, n, _ in launched} == threads
    for name, n, beside in launched:  # never more threads than cores, whatever ran beside
        assert n * (1 + len(beside)) <= 2 or n == 1, (name, n, beside)


def test_the_core_count_is_divided_among_at_most_jobs_runs(tmp_path, monkeypatch):
    from dermagan.training import release

    launched = _fake_training(release, monkeypatch, cores=16)
    release.train_all([_run(n) for n in "abcde"], tmp_path, None, 4)
    assert [n for _, n, _ in launched] == [4, 4, 4, 4, 16]  # e trains alone, after the four


def test_a_failed_export_ends_the_release_with_its_runs_named_after_the_others_finish(tmp_path, monkeypatch):
    """Before, the first failed `dermagan export` raised CalledProcessError out of the release: a traceback."""
    import subprocess

    from dermagan.training import release

    runs = [r for r in SHIPPED["tiny"] if r.run in ("segment", "add", "remove")]
    monkeypatch.setattr(release, "run_progress", lambda folder: (10**6, 10**6))
    started = []

    def fake_run(cmd, **kwargs):
        started.append(Path(cmd[cmd.index("export") + 1]).name)
        return subprocess.CompletedProcess(cmd, 1 if started[-1] == "add" else 0)

    monkeypatch.setattr(release.subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match=r"^release: dermagan export failed for add \(exit 1\); its message is above$"):
        release.export_all(runs, tmp_path / "runs", tmp_path / "models", partial=False, jobs=2)
    assert sorted(started) == ["add", "remove", "segment"]  # the others still exported
