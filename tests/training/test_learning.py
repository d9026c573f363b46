"""Learning actually happens (CPU, 32 px, tiny widths, a few hundred steps at most).

- add / remove over-fit 4 procedural triplets: L1 to the exact ground truth < 0.05 (and inside the
  mask, where the edit happens, well below where it started);
- CycleGAN's cycle loss falls by half;
- segmentation reaches IoU > 0.8 on its training triplets;
- a generator on a toy distribution (flat colours around a mean) moves its samples' mean colour
  toward the data's.
Evaluation uses the exported networks (eval mode, EMA weights), as the service would.
"""

import json
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Dataset, default_collate
from toy_triplets import run_tiny

from dermagan.training import losses
from dermagan.training.checkpoint import load_exportables
from dermagan.training.config import tiny

pytestmark = pytest.mark.slow
QUIET = {"sample_every": 10**6, "ckpt_every": 10**6, "keep_checkpoints": False}


def _triplets(n=4):
    from dermagan.training.data import SynthDataset

    return SynthDataset("eczema", size=32, length=n, seed=0)


def _masked_l1(out, target, mask):
    return ((out - target).abs() * mask).sum().item() / (3 * mask.sum().item())


@pytest.mark.parametrize("family", ["add", "remove"])
def test_add_remove_overfit_four_triplets(family, tmp_path):
    ds = _triplets()
    cfg = tiny(family)
    run_tiny(family, tmp_path, dataset=ds, steps=120, optim=replace(cfg.optim, lr_g=1e-3),
             data=replace(cfg.data, flip=False), **QUIET)
    (e,) = load_exportables(tmp_path)
    b = default_collate([ds[i] for i in range(4)])
    source, target = (b["healthy"], b["image"]) if family == "add" else (b["image"], b["healthy"])
    with torch.no_grad():
        out = e.module(source, b["mask"])
    assert losses.l1_loss(out, target).item() < 0.05
    before = _masked_l1(source, target, b["mask"])
    assert _masked_l1(out, target, b["mask"]) < 0.5 * before


def test_cycle_loss_falls_by_half(tmp_path):
    cfg = tiny("cycle")
    run_tiny("cycle", tmp_path, dataset=_triplets(), steps=100, batch_size=2, log_every=1, **QUIET)
    cycle = [json.loads(line)["cycle"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(cycle[:5]) / 5, sum(cycle[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert cfg.loss.lambda_cycle == 10 and cfg.loss.lambda_identity == 0.5


def test_segmentation_reaches_iou_08(tmp_path):
    ds = _triplets()
    cfg = tiny("segment")
    run_tiny("segment", tmp_path, dataset=ds, steps=100, optim=replace(cfg.optim, lr_g=1e-3), **QUIET)
    (e,) = load_exportables(tmp_path)
    b = default_collate([ds[i] for i in range(4)])
    with torch.no_grad():
        assert losses.binary_iou(e.module(b["image"]), b["mask"]) > 0.8


class FlatColours(Dataset):
    """Flat 32 px images of colour MEAN + N(0, 0.1^2): a toy distribution with a known mean."""

    MEAN = torch.tensor([0.6, 0.1, -0.4])

    def __len__(self):
        return 64

    def __getitem__(self, i):
        c = self.MEAN + 0.1 * torch.randn(3, generator=torch.Generator().manual_seed(i))
        return {"image": c.view(3, 1, 1).expand(3, 32, 32).clone(), "label": torch.tensor(0), "name": str(i)}


def test_generator_moves_toward_the_data(tmp_path):
    cfg = tiny("generate")
    kw = dict(dataset=FlatColours(), steps=120, batch_size=8, data=replace(cfg.data, kinds=("eczema",)),
              optim=replace(cfg.optim, lr_g=1e-3, lr_d=1e-3), **QUIET)

    def mean_gap():
        (e,) = load_exportables(tmp_path)
        with torch.no_grad():
            x = e.module(torch.randn(64, cfg.net.z_dim, generator=torch.Generator().manual_seed(1)))
        return (x.mean((0, 2, 3)) - FlatColours.MEAN).norm().item()

    run_tiny("generate", tmp_path, until=1, **kw)
    before = mean_gap()
    run_tiny("generate", tmp_path, resume=True, **kw)
    after = mean_gap()
    assert after < 0.4 * before, (before, after)
