"""Resume continues exactly: 3 + 3 steps give bitwise the weights of 6 uninterrupted steps (CPU).

The checkpoint at step 3 falls in the middle of an epoch (8 samples, batch 4), so this also checks
that the data order resumes where it stopped.
"""

import pytest
import torch
from toy_triplets import run_tiny

from dermagan.training.checkpoint import load


def _same(a, b, path=""):
    if torch.is_tensor(a):
        assert torch.equal(a, b), f"differs at {path}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"differs at {path}: {a} != {b}"


@pytest.mark.parametrize("family", ["generate", "add", "cycle", "segment"])
def test_resume_is_bitwise_exact(family, tmp_path):
    run_tiny(family, tmp_path / "whole", steps=6, ckpt_every=100)
    run_tiny(family, tmp_path / "split", steps=6, ckpt_every=100, until=3)
    run_tiny(family, tmp_path / "split", steps=6, ckpt_every=100, resume=True)
    whole, split = load(tmp_path / "whole/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    assert whole["step"] == split["step"] == 6
    for key in ("nets", "ema", "optims", "family", "rng"):
        _same(whole[key], split[key], key)
    metrics = (tmp_path / "split/metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 6


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_tiny("add", tmp_path, resume=True)


def test_resume_with_a_longer_schedule_records_it_in_the_run_config(tmp_path):
    import json

    run_tiny("add", tmp_path, steps=4, ckpt_every=100)
    assert "history" not in json.loads((tmp_path / "config.json").read_text())
    run_tiny("add", tmp_path, steps=6, ckpt_every=100, resume=True)  # the schedule lengthened at step 4
    run_tiny("add", tmp_path, steps=6, ckpt_every=100, resume=True)  # a plain resume keeps what was said
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["steps"] == 6
    assert cfg["history"] == [{"step": 4, "steps_before": 4, "steps": 6}]
