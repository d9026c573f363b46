"""Validation during training (--val-every): held-out metrics in metrics.jsonl, checkpoints/best.pt by the
family's main metric, `dermagan export --best`; it changes nothing of the training itself."""

from __future__ import annotations

import json

import pytest
import torch
from toy_triplets import ToyTriplets, run_tiny

from dermagan.cli import main
from dermagan.training import checkpoint


def _val_lines(run) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if any(k.startswith("val_") for k in m)]


@pytest.mark.parametrize("family, main_metric, best_is", [("segment", "val_iou", max), ("remove", "val_l1", min),
                                                          ("cycle", None, None)])
def test_validation_reports_keeps_the_best_and_leaves_training_as_it_was(family, main_metric, best_is, tmp_path):
    held_out = ToyTriplets(6, 32, seed=99)
    plain = run_tiny(family, tmp_path / "plain", steps=6, ckpt_every=100)
    run = tmp_path / "val"
    valued = run_tiny(family, run, steps=6, ckpt_every=100, val_every=2, val_dataset=held_out)
    assert plain == valued  # the last step's losses: validation drew no RNG and changed no weights
    a, b = checkpoint.load(tmp_path / "plain/checkpoints/last.pt"), checkpoint.load(run / "checkpoints/last.pt")
    assert all(torch.equal(a["nets"][k][p], b["nets"][k][p]) for k in a["nets"] for p in a["nets"][k])
    scores = _val_lines(run)
    assert [m["step"] for m in scores] == [2, 4, 6]
    if main_metric is None:  # the CycleGAN only reports
        assert all("val_cycle" in m for m in scores) and b["best"] == {}
        assert not checkpoint.best_checkpoint(run).exists()
        return
    best_line = best_is(scores, key=lambda m: m[main_metric])
    assert b["best"] == {"metric": main_metric, "mode": best_is.__name__, "value": best_line[main_metric],
                         "step": best_line["step"]}
    assert checkpoint.load(checkpoint.best_checkpoint(run))["step"] == best_line["step"]


def test_segment_validation_values_are_the_iou_of_the_held_out_masks(tmp_path):
    """A segmenter that learns the toy masks scores a higher IoU on held-out toys than at the start."""
    run = tmp_path / "run"
    run_tiny("segment", run, steps=60, ckpt_every=1000, val_every=30, val_dataset=ToyTriplets(8, 32, seed=7))
    first, last = _val_lines(run)[0], _val_lines(run)[-1]
    assert 0 <= first["val_iou"] <= 1 and 0 <= last["val_dice"] <= 1
    assert last["val_iou"] > first["val_iou"]


def test_export_best_and_the_cli(tmp_path, capsys):
    """dermagan train --val-every on the procedural data (the renderer's validation seeds), then
    dermagan export --best writes the best step's segmenter; --best without one says why."""
    run = tmp_path / "run"
    argv = ["train", "segment", "--preset", "tiny", "--steps", "4", "--batch-size", "2", "--length", "8", "--val-every",
            "2", "--val-n", "4", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    best = checkpoint.load(checkpoint.best_checkpoint(run))
    assert best["best"]["step"] == best["step"] in (2, 4)
    assert main(["export", str(run), "--best", "--out", str(tmp_path / "models"), "--opset", "17"]) == 0
    assert "wrote" in capsys.readouterr().out
    other = tmp_path / "other"
    assert main(["train", "segment", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--length", "4",
                 "--out", str(other), "--quiet"]) == 0
    assert main(["export", str(other), "--best", "--out", str(tmp_path / "m2")]) == 1
    assert "no best checkpoint: the run was trained without --val-every" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--val-every", "10"], "for a generator, export kept checkpoints"),
    (["segment", "--data", "/tmp", "--val-every", "10"], "pass --val-data DIR"),
    (["segment", "--data", "/tmp", "--val-data", "/tmp/", "--val-every", "10"], "is the training folder"),
    (["segment", "--val-every", "-1"], "--val-every must be >= 0"),
])
def test_bad_validation_settings_fail_before_training(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_a_resumed_run_validates_and_keeps_the_best_as_an_uninterrupted_one(tmp_path):
    held_out = ToyTriplets(6, 32, seed=99)
    run_tiny("segment", tmp_path / "whole", steps=6, ckpt_every=100, val_every=2, val_dataset=held_out)
    run_tiny("segment", tmp_path / "split", steps=6, ckpt_every=100, val_every=2, val_dataset=held_out, until=3)
    run_tiny("segment", tmp_path / "split", steps=6, ckpt_every=100, val_every=2, val_dataset=held_out, resume=True)
    whole, split = (checkpoint.load(tmp_path / r / "checkpoints/last.pt") for r in ("whole", "split"))
    assert whole["best"] == split["best"] and _val_lines(tmp_path / "whole") == _val_lines(tmp_path / "split")
    assert all(torch.equal(whole["nets"]["S"][p], split["nets"]["S"][p]) for p in whole["nets"]["S"])
