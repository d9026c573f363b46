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
                                        (["--eval-seeds", "0"], "release: --eval-seeds must be within 1..")])
def test_evaluation_options_are_checked_before_any_training(tmp_path, monkeypatch, argv, words):
    from dermagan import cli
    from dermagan.training import release

    monkeypatch.setattr(release, "train_all", lambda *a, **k: pytest.fail("trained before refusing its options"))
    with pytest.raises(SystemExit, match=words):
        cli.main(["release", "--profile", "tiny", "--work", str(tmp_path / "runs"), "--models", str(tmp_path / "m"), *argv])
    assert not (tmp_path / "runs").exists()
