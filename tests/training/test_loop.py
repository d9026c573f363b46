"""A few iterations end to end for every family: run folder, checkpoints, samples, metrics, exportables."""

import json
import math
from dataclasses import replace

import pytest
import torch
from PIL import Image
from toy_triplets import ToyTriplets, run_tiny

from dermagan.manifest import TASK_INPUTS
from dermagan.training.checkpoint import load, load_exportables
from dermagan.training.config import tiny
from dermagan.training.loop import random_crop, train

EXPECTED = {
    "generate": [("generate", "generate")],
    "add": [("add", "eczema-add")],
    "remove": [("remove", "eczema-remove")],
    "cycle": [("cycle-add", "cycle-add"), ("cycle-remove", "cycle-remove")],
    "segment": [("segment", "eczema-segment")],
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_family_trains_and_exports(family, tmp_path):
    stats = run_tiny(family, tmp_path)
    assert stats and all(v == v for v in stats.values())  # finite numbers, no NaN
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt", "step_0000006.pt"]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6] and lines[-1]["images_per_s"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["family"] == family

    state = load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 6 and set(state["rng"][0]) >= {"python", "numpy", "torch"}

    exps = load_exportables(tmp_path)
    assert [(e.task, e.name) for e in exps] == EXPECTED[family]
    for e in exps:
        assert not e.module.training
        names = TASK_INPUTS[e.task] + (("label",) if e.facts["labels"] and len(e.facts["labels"]) > 1 else ())
        assert tuple(e.example_inputs) == names
        assert e.facts["resolution"] == (32, 32) and e.facts["dynamic_hw"] == (family != "generate")
        assert e.facts["recipe"] == "" and "synthetic" in e.facts["trained_on"]
        with torch.no_grad():
            out = e.module(*e.example_inputs.values())
        assert out.shape == ((1, 1, 32, 32) if family == "segment" else (1, 3, 32, 32))
        if family != "segment":
            assert out.abs().max() <= 1
        if family != "generate":  # fully convolutional: another multiple of the stride works
            m = e.facts["size_multiple"]
            bigger = {k: torch.nn.functional.pad(v, (0, m, 0, 2 * m)) for k, v in e.example_inputs.items()}
            assert e.module(*bigger.values()).shape[-2:] == (32 + 2 * m, 32 + m)


def test_random_crop_cuts_the_same_window_from_every_image_of_a_sample():
    b, s, c = 6, 16, 8
    coords = torch.arange(s * s, dtype=torch.float32).view(1, 1, s, s).expand(b, 1, s, s)
    batch = {"image": coords.expand(b, 3, s, s) + torch.arange(b).view(b, 1, 1, 1) * 1000, "mask": coords.clone(),
             "healthy": -coords.expand(b, 3, s, s), "label": torch.arange(b), "name": [f"n{i}" for i in range(b)]}
    torch.manual_seed(0)
    out = random_crop(batch, c)
    assert out["image"].shape == (b, 3, c, c) and out["mask"].shape == (b, 1, c, c) and out["healthy"].shape == (b, 3, c, c)
    assert torch.equal(out["label"], batch["label"]) and out["name"] == batch["name"]
    corners = set()
    for i in range(b):
        first = int(out["mask"][i, 0, 0, 0])
        top, left = divmod(first, s)
        window = coords[i, :, top:top + c, left:left + c]  # a contiguous window of the original ...
        assert torch.equal(out["mask"][i], window)
        assert torch.equal(out["image"][i], window.expand(3, c, c) + i * 1000)  # ... of this sample, image and
        assert torch.equal(out["healthy"][i], -window.expand(3, c, c))  # healthy cut at the same place
        corners.add((top, left))
    assert len(corners) > 1  # each sample gets its own window
    torch.manual_seed(0)
    assert torch.equal(random_crop(batch, c)["image"], out["image"])  # the torch RNG decides: reproducible
    assert random_crop(batch, s) is batch  # the whole image: nothing to cut


@pytest.mark.parametrize("family", ["remove", "cycle", "segment"])
def test_crops_train_on_windows_and_export_the_whole_size(family, tmp_path):
    cfg = tiny(family)
    stats = run_tiny(family, tmp_path, size=64, steps=2, data=replace(cfg.data, crop=32))
    assert all(v == v for v in stats.values())
    assert load(tmp_path / "checkpoints" / "last.pt")["config"]["data"]["crop"] == 32
    with Image.open(tmp_path / "samples" / "step_0000002.png") as grid:  # the samples show whole 64 px images
        assert grid.width == 8 * 64 and grid.height % 64 == 0
    for e in load_exportables(tmp_path):
        assert e.facts["resolution"] == (64, 64)


def test_generate_facts_name_the_kinds_and_z(tmp_path):
    run_tiny("generate", tmp_path, steps=1)
    (e,) = load_exportables(tmp_path)
    assert e.facts["labels"] == ["eczema", "hand"] and e.facts["z_dim"] == 16
    assert e.example_inputs["z"].shape == (1, 16) and e.example_inputs["label"].dtype == torch.int64


def test_generator_exports_its_ema_with_standing_batchnorm_statistics(tmp_path):
    run_tiny("generate", tmp_path, steps=3)
    state = load(tmp_path / "checkpoints" / "last.pt")
    (e,) = load_exportables(tmp_path)
    (again,) = load_exportables(tmp_path)
    key = next(k for k in state["ema"]["G"] if k.endswith("running_var"))
    copied = state["ema"]["G"][key]  # the trained network's statistics, copied into the EMA each step
    standing = e.module.state_dict()[key]
    assert not torch.allclose(standing, copied)  # recomputed for the EMA weights
    assert torch.equal(standing, again.module.state_dict()[key])  # from a fixed seed: every export the same
    (raw,) = load_exportables(tmp_path, weights="raw")
    assert torch.equal(raw.module.state_dict()[key], state["nets"]["G"][key])  # raw weights keep their own


def test_single_kind_generator_takes_only_z(tmp_path):
    cfg = tiny("generate")
    run_tiny("generate", tmp_path, steps=1, data=replace(cfg.data, kinds=("lesion",)), dataset=ToyTriplets(8, 32))
    (e,) = load_exportables(tmp_path)
    assert e.name == "lesion-generate" and list(e.example_inputs) == ["z"]


@pytest.mark.parametrize("inpaint", [False, True])
def test_unet_translator_trains_and_exports(inpaint, tmp_path):
    from dermagan.training.export import export_run

    cfg = tiny("remove")
    run_tiny("remove", tmp_path / "run", steps=2,
             net=replace(cfg.net, generator="unet", g_unet_downs=5, g_inpaint=inpaint))
    (entry,) = export_run(tmp_path / "run", tmp_path / "models")  # ONNX parity, other H/W, batch invariance
    assert entry.size_multiple == 32 and (tmp_path / "models" / entry.file).is_file()


@pytest.mark.parametrize("family", list(EXPECTED))
def test_paper_preset_trains_a_step_at_tiny_width(family, tmp_path):
    from dermagan.training.config import paper

    cfg = paper(family)
    cfg = replace(cfg, size=32, batch_size=2, steps=1, net=replace(cfg.net, ngf=4, ndf=4, z_dim=8, g_blocks=1, unet_depth=3),
                  data=replace(cfg.data, kinds=("eczema",)))
    torch.set_num_threads(1)
    train(cfg, tmp_path, dataset=ToyTriplets(4, 32), labels=["eczema"] if family == "generate" else [], progress=False)
    (e, *_) = load_exportables(tmp_path)
    assert not e.module.training


def test_unpaired_add_trains_without_the_l1_term(tmp_path):
    cfg = tiny("add")
    stats = run_tiny("add", tmp_path, steps=2, data=replace(cfg.data, unpaired=True))
    assert stats["l1"] > 0  # still reported, as a metric
    from dermagan.training.families import get_family

    assert get_family(replace(cfg, data=replace(cfg.data, unpaired=True)), []).paired is False
    assert get_family(cfg, []).paired is True
    assert load(tmp_path / "checkpoints" / "last.pt")["config"]["data"]["unpaired"] is True


def test_bf16_autocast_on_cpu(tmp_path):
    stats = run_tiny("add", tmp_path, amp="bf16", steps=2)
    assert all(v == v for v in stats.values())


def test_r1_and_lsgan_paths(tmp_path):
    cfg = tiny("generate")
    stats = run_tiny("generate", tmp_path, steps=1, loss=replace(cfg.loss, r1_gamma=1.0, r1_every=2, gan="lsgan"))
    assert "r1" in stats


def test_r1_behind_every_diffaugment_op(tmp_path):
    """The penalty's gradient goes back through the augmentation, and its own backward twice."""
    cfg = tiny("generate")
    stats = run_tiny("generate", tmp_path, steps=2, augment="color,translation,cutout",
                     loss=replace(cfg.loss, r1_gamma=1.0, r1_every=1))
    assert math.isfinite(stats["r1"]) and stats["r1"] > 0


def test_a_lazy_penalty_reaches_the_metrics_log_whatever_log_every(tmp_path):
    """In the log's numbering R1 runs in steps 1, 4, 7 (r1_every 3) and lines are written after steps 2, 4, 6, 8
    (log_every 2): every line carries the latest penalty, new after steps 4 and 8, kept at 6."""
    cfg = tiny("generate")
    run_tiny("generate", tmp_path, steps=8, log_every=2, loss=replace(cfg.loss, r1_gamma=1.0, r1_every=3))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6, 8]
    r1 = [line["r1"] for line in lines]
    assert all(math.isfinite(v) and v > 0 for v in r1)
    assert r1[0] != r1[1] and r1[1] == r1[2] and r1[2] != r1[3]


def test_refuses_to_overwrite_a_run(tmp_path):
    run_tiny("segment", tmp_path, steps=1)
    with pytest.raises(ValueError, match="--resume"):
        run_tiny("segment", tmp_path, steps=1)


@pytest.mark.parametrize("family,missing", [("add", "mask"), ("remove", "healthy"), ("segment", "mask"), ("cycle", "healthy")])
def test_missing_masks_or_healthy_fail_before_training(family, missing, tmp_path):
    class Without(ToyTriplets):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s.pop(missing)
            return s

    with pytest.raises(ValueError, match=f"needs '{missing}'"):
        run_tiny(family, tmp_path, dataset=Without(8, 32))
    assert not (tmp_path / "checkpoints").exists()


def test_wrong_image_size_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3, 32, 32\)"):
        run_tiny("add", tmp_path, dataset=ToyTriplets(8, 64))


def test_decay_start_outside_zero_one_fails_before_training(tmp_path):
    cfg = tiny("remove")
    with pytest.raises(ValueError, match=r"optim.decay_start must be within \[0, 1\].*got 1.5"):
        run_tiny("remove", tmp_path, optim=replace(cfg.optim, decay_start=1.5))
    assert not (tmp_path / "checkpoints").exists()


def test_too_few_samples_for_a_batch(tmp_path):
    with pytest.raises(ValueError, match="batch_size 4"):
        run_tiny("segment", tmp_path, dataset=ToyTriplets(3, 32))


def test_fp16_with_grad_scaler_on_cpu(tmp_path):
    stats = run_tiny("segment", tmp_path, amp="fp16", steps=2)
    assert all(v == v for v in stats.values())
    assert "scale" in str(load(tmp_path / "checkpoints" / "last.pt")["scalers"]["g"])


def test_r1_under_fp16_carries_the_discriminators_loss_scale(tmp_path, monkeypatch):
    import dermagan.training.losses as losses

    scales, penalty = [], losses.r1_penalty
    monkeypatch.setattr(losses, "r1_penalty", lambda *a, scale=1.0: scales.append(scale) or penalty(*a, scale=scale))
    cfg = tiny("generate")
    stats = run_tiny("generate", tmp_path, amp="fp16", steps=3, loss=replace(cfg.loss, r1_gamma=1.0, r1_every=1))
    assert math.isfinite(stats["r1"]) and stats["r1"] > 0
    # each penalty carries the critic's scale of its step: GradScaler's initial 2^16, halved once by the first
    # step's overflow -- which the run without R1 has too: the penalty's backward overflows no more than the loss's
    run_tiny("generate", tmp_path / "no-r1", amp="fp16", steps=3)
    final = [load(path / "checkpoints" / "last.pt")["scalers"]["d"]["scale"] for path in (tmp_path, tmp_path / "no-r1")]
    assert scales == [2.0**16, 2.0**15, 2.0**15] and final == [2.0**15, 2.0**15]
    scales.clear()
    run_tiny("generate", tmp_path / "fp32", steps=1, loss=replace(cfg.loss, r1_gamma=1.0, r1_every=1))
    assert scales == [1.0]


def test_a_cpu_run_keeps_its_freed_memory_for_the_next_step(tmp_path, monkeypatch):
    import dermagan.training.loop as loop

    calls = []
    monkeypatch.setattr(loop.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    run_tiny("segment", tmp_path)
    assert calls == [1]  # once a run, before its first step (dermagan/allocator.py; tests/test_allocator.py)
