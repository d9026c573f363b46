"""Resume continues exactly: 3 + 3 steps give bitwise the weights of 6 uninterrupted steps (CPU).

The checkpoint at step 3 falls in the middle of an epoch (8 samples, batch 4), so this also checks
that the data order resumes where it stopped.
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from toy_triplets import run_tiny

from dermagan.training.checkpoint import load
from dermagan.training.config import tiny


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


@pytest.mark.parametrize("family", ["generate", "cycle"])
def test_bf16_on_a_cpu_trains_channels_last_and_resumes_bitwise(family, tmp_path):
    """bf16 autocast on a CPU trains the networks in channels_last (loop._to_layout: oneDNN's bf16 convolutions
    work in it); the resume stays exact, and the checkpoint's weights load into a plain NCHW network as the same
    values (what export does)."""
    from dermagan.training.families import get_family

    run_tiny(family, tmp_path / "whole", steps=4, ckpt_every=100, amp="bf16")
    run_tiny(family, tmp_path / "split", steps=4, ckpt_every=100, amp="bf16", until=2)
    run_tiny(family, tmp_path / "split", steps=4, ckpt_every=100, amp="bf16", resume=True)
    whole, split = load(tmp_path / "whole/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    for key in ("nets", "ema", "optims", "family", "rng"):
        _same(whole[key], split[key], key)
    convs = [v for net in whole["nets"].values() for v in net.values() if v.dim() == 4 and v.shape[2] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)
    cfg = tiny(family)
    labels = list(cfg.data.kinds) if family == "generate" else []
    fresh = get_family(cfg, labels).build()
    for k, net in fresh.items():
        net.load_state_dict(whole["nets"][k])
        for name, v in net.state_dict().items():
            assert torch.equal(v, whole["nets"][k][name]) and (v.dim() != 4 or v.is_contiguous()), name


def test_resume_with_random_crops_is_bitwise_exact(tmp_path):
    crop = {"size": 64, "data": replace(tiny("remove").data, crop=32)}
    run_tiny("remove", tmp_path / "whole", steps=6, ckpt_every=100, **crop)
    run_tiny("remove", tmp_path / "split", steps=6, ckpt_every=100, until=3, **crop)
    run_tiny("remove", tmp_path / "split", steps=6, ckpt_every=100, resume=True, **crop)
    whole, split = load(tmp_path / "whole/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    for key in ("nets", "ema", "optims", "rng"):
        _same(whole[key], split[key], key)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_tiny("add", tmp_path, resume=True)


def test_a_resume_on_a_data_set_of_another_size_says_it_is_not_exact(tmp_path, capsys):
    """A sample deleted from (or added to) the data folder between sittings: the run went on without a word,
    though README promises an exact resume."""
    from toy_triplets import ToyTriplets

    run_tiny("add", tmp_path, steps=4, ckpt_every=2, until=2)
    assert load(tmp_path / "checkpoints" / "last.pt")["samples"] == 8
    run_tiny("add", tmp_path, steps=4, ckpt_every=2, until=3, resume=True)  # the same 8: nothing said
    assert "data set has" not in capsys.readouterr().err
    run_tiny("add", tmp_path, steps=4, ckpt_every=2, resume=True, dataset=ToyTriplets(7, tiny("add").size))
    assert "the data set has 7 samples now, 8 when" in capsys.readouterr().err


def test_resume_with_a_longer_schedule_records_it_in_the_run_config(tmp_path):
    import json

    run_tiny("add", tmp_path, steps=4, ckpt_every=100)
    assert "history" not in json.loads((tmp_path / "config.json").read_text())
    run_tiny("add", tmp_path, steps=6, ckpt_every=100, resume=True)  # the schedule lengthened at step 4
    run_tiny("add", tmp_path, steps=6, ckpt_every=100, resume=True)  # a plain resume keeps what was said
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["steps"] == 6
    assert cfg["history"] == [{"step": 4, "steps_before": 4, "steps": 6}]


def test_a_constant_rate_run_of_fewer_steps_is_the_longer_runs_prefix(tmp_path):
    """What lets a recipe stop at the checkpoint its release chose (generate: 12000 of 14000): with a constant
    learning rate nothing of a step depends on the run's total, so 4 steps end bitwise where 6 steps pass step 4.
    With a decaying rate the total sets every step's rate, and they differ."""
    from dermagan.training.config import tiny

    constant = replace(tiny("generate").optim, decay_start=1.0)
    run_tiny("generate", tmp_path / "long", steps=6, ckpt_every=2, optim=constant)
    run_tiny("generate", tmp_path / "short", steps=4, ckpt_every=2, optim=constant)
    long, short = load(tmp_path / "long/checkpoints/step_0000004.pt"), load(tmp_path / "short/checkpoints/last.pt")
    assert long["step"] == short["step"] == 4
    for key in ("nets", "ema", "optims", "rng"):
        _same(long[key], short[key], key)
    decaying = replace(constant, decay_start=0.0)
    run_tiny("generate", tmp_path / "long-decay", steps=6, ckpt_every=2, optim=decaying)
    run_tiny("generate", tmp_path / "short-decay", steps=4, ckpt_every=2, optim=decaying)
    with pytest.raises(AssertionError, match="differs"):
        _same(load(tmp_path / "long-decay/checkpoints/step_0000004.pt")["nets"],
              load(tmp_path / "short-decay/checkpoints/last.pt")["nets"])


def test_init_from_starts_with_the_source_networks_and_fresh_optimisers(tmp_path):
    """A warm start (fine-tuning) begins where the source run's networks and EMA ended; its optimisers,
    schedule and step start afresh, and its own run folder records where it came from."""
    import json
    from dataclasses import replace

    from dermagan.training.config import tiny

    run_tiny("cycle", tmp_path / "source", steps=4, ckpt_every=100)
    source = load(tmp_path / "source/checkpoints/last.pt")
    run_tiny("cycle", tmp_path / "tuned", steps=3, ckpt_every=1, until=1, init_from=str(tmp_path / "source"),
             loss=replace(tiny("cycle").loss, lambda_identity=0.0))
    tuned = load(tmp_path / "tuned/checkpoints/last.pt")
    assert tuned["step"] == 1
    assert tuned["optims"]["g"]["state"][0]["step"].item() == 1  # a fresh Adam: one step taken, not five
    fresh = tmp_path / "fresh"
    run_tiny("cycle", fresh, steps=3, ckpt_every=1, until=1, loss=replace(tiny("cycle").loss, lambda_identity=0.0))
    fresh_w = load(fresh / "checkpoints/last.pt")["nets"]
    for k, weights in tuned["nets"].items():  # one small step from the source, far from a fresh init
        dist_src = max((weights[n].float() - source["nets"][k][n].float()).abs().max().item() for n in weights)
        dist_fresh = max((weights[n].float() - fresh_w[k][n].float()).abs().max().item() for n in weights)
        assert dist_src < dist_fresh, k
    cfg = json.loads((tmp_path / "tuned/config.json").read_text())
    assert cfg["init_from"] == str(tmp_path / "source")
    assert cfg["loss"]["lambda_identity"] == 0.0
    # resuming the warm-started run continues it (its own checkpoint), not the source again
    run_tiny("cycle", tmp_path / "tuned", steps=3, ckpt_every=1, init_from=str(tmp_path / "source"),
             loss=replace(tiny("cycle").loss, lambda_identity=0.0), resume=True)
    assert load(tmp_path / "tuned/checkpoints/last.pt")["optims"]["g"]["state"][0]["step"].item() == 3


def test_init_from_refuses_other_networks_or_families_before_training(tmp_path):
    from dataclasses import replace

    from dermagan.training.config import tiny

    run_tiny("add", tmp_path / "source", steps=2, ckpt_every=100)
    with pytest.raises(ValueError, match=r"other networks: net\.ngf \(8 there, 16 here\)"):
        run_tiny("add", tmp_path / "wider", steps=2, init_from=str(tmp_path / "source"),
                 net=replace(tiny("add").net, ngf=16))
    assert not (tmp_path / "wider").exists()  # nothing written
    with pytest.raises(ValueError, match="trains 'add', not 'remove'"):
        run_tiny("remove", tmp_path / "other", steps=2, init_from=str(tmp_path / "source"))
    with pytest.raises(ValueError, match="no checkpoint there"):
        run_tiny("add", tmp_path / "none", steps=2, init_from=str(tmp_path / "missing"))


def test_tensorboard_logs_and_a_resume_hides_what_it_logs_again(tmp_path):
    """--tensorboard: the metrics.jsonl values and the sample grids as TensorBoard events. A run that died after
    step 4 with its last checkpoint at step 2 logs steps 3 and 4 again: TensorBoard shows each step once."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_tiny("add", run, steps=4, ckpt_every=2, log_every=1, sample_every=2, tensorboard=True)
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shutil.copy(run / "checkpoints" / "step_0000002.pt", run / "checkpoints" / "last.pt")  # the crash
    run_tiny("add", run, steps=4, ckpt_every=2, log_every=1, sample_every=2, tensorboard=True, resume=True)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert {"images_per_s", "lr_g", "l1", "d"} <= set(events.Tags()["scalars"])
    l1 = [(e.step, e.value) for e in events.Scalars("l1")]
    assert [s for s, _ in l1] == [1, 2, 3, 4]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4] and logged[:2] == first[:2]
    assert [v for _, v in l1] == pytest.approx([m["l1"] for m in logged])
    assert [e.step for e in events.Images("samples")] == [2, 4]


def test_a_checkpoint_that_does_not_fit_names_the_full_disk_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    from dermagan.training import checkpoint

    def fails(obj, f):  # what torch's zip writer raises when a write fails: no errno
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(OSError) as e:
        checkpoint.save(tmp_path / "last.pt", {"step": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 10 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # room enough: not a full disk, said as it was
        checkpoint.save(tmp_path / "last.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def kept_set(monkeypatch):
    """A tiny generator's config whose procedural set is rendered ahead (in 2 worker processes) and kept in
    the run, trained on one thread."""
    from dermagan.training import sources

    monkeypatch.setattr(sources, "PRERENDER_MIN", 2)
    cfg = tiny("generate")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield replace(cfg, ckpt_every=100, data=replace(cfg.data, length=4, workers=2))
    torch.set_num_threads(threads)


def test_resume_reads_the_rendered_procedural_set_back_and_stays_bitwise_exact(tmp_path, monkeypatch, kept_set):
    from dermagan.training import sources
    from dermagan.training.loop import train

    cfg = replace(kept_set, steps=6)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", progress=False, until=3)
    assert (tmp_path / "split" / sources.DATA_CACHE).is_file()

    def render_again(self, processes):
        raise AssertionError("the resumed run rendered its data again")

    monkeypatch.setattr(sources.Memo, "fill", render_again)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    whole, split = load(tmp_path / "whole/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    assert whole["step"] == split["step"] == 6
    for key in ("nets", "ema", "optims", "family", "rng"):
        _same(whole[key], split[key], key)


def test_a_warm_start_on_the_same_set_reads_its_source_runs_rendered_data(tmp_path, monkeypatch, capsys, kept_set):
    """--init-from a run that kept its procedural set (RUN/data-cache.pt): the same set is read from there,
    not rendered again (8000 hands: ~8 min on 2 cores), and kept in the new run as a hard link; another set
    is rendered as before."""
    from dermagan.training import sources
    from dermagan.training.loop import train

    cfg = replace(kept_set, steps=2)
    train(cfg, tmp_path / "source", progress=False)
    kept = tmp_path / "source" / sources.DATA_CACHE
    assert kept.is_file()
    rendered = []
    real_fill = sources.Memo.fill
    monkeypatch.setattr(sources.Memo, "fill", lambda self, n: (rendered.append(len(self)), real_fill(self, n)))
    capsys.readouterr()
    step_file = str(tmp_path / "source" / "checkpoints" / "last.pt")
    for name, init_from in (("by-folder", str(tmp_path / "source")), ("by-file", step_file)):
        train(replace(cfg, init_from=init_from), tmp_path / name, progress=False)
        assert rendered == [], name
        assert os.path.samefile(tmp_path / name / sources.DATA_CACHE, kept), name
    assert f"samples that {kept} holds (the same set: not rendered again)" in capsys.readouterr().err
    # the warm-started run's own file outlives its source's
    kept.unlink()
    train(replace(cfg, init_from=str(tmp_path / "by-folder")), tmp_path / "third", progress=False)
    assert rendered == []
    other = replace(cfg, init_from=str(tmp_path / "source"), data=replace(cfg.data, seed=5))
    train(other, tmp_path / "other-seed", progress=False)
    assert len(rendered) == 1


def test_resume_drops_a_torn_metrics_line_and_says_so_once(tmp_path, capsys):
    """A full disk, a kill or a power loss -- what a resume follows -- can cut metrics.jsonl's last line short;
    --resume failed on it with a bare JSON error. Lines that do not parse are dropped, with one note."""
    run_tiny("segment", tmp_path, steps=3, ckpt_every=100, until=2)
    log = tmp_path / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + '{"step": 2, "se\n' + lines[1] + "\n" + '{"step": 3, "images_per_s": 1')
    capsys.readouterr()
    run_tiny("segment", tmp_path, steps=3, ckpt_every=100, resume=True)
    err = capsys.readouterr().err
    assert err.count("do not parse") == 1 and f"{log}: dropped 2 line(s)" in err, err
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
