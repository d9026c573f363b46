"""A tiny deterministic stand-in for SynthDataset in unit tests: (healthy, mask, eczema) triplets.

Smooth skin-toned gradients; the "eczema" is a reddish, brighter-textured patch inside a random
rectangle. Same dict format as dermagan.training.data (images in [-1, 1], masks in {0, 1}).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset


class ToyTriplets(Dataset):
    def __init__(self, n: int = 8, size: int = 32, seed: int = 0, n_labels: int = 1) -> None:
        self.n, self.size, self.seed, self.n_labels = n, size, seed, n_labels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        s = self.size
        base = torch.tensor([0.55, 0.15, 0.0]) + 0.2 * torch.rand(3, generator=g)  # skin tone in [-1, 1]
        ramp = torch.linspace(-0.15, 0.15, s)
        healthy = base.view(3, 1, 1) + ramp.view(1, 1, s) * torch.rand(1, generator=g)
        healthy = healthy.expand(3, s, s).clone()  # (3, s, s)
        mask = torch.zeros(1, s, s)
        h, w = torch.randint(s // 4, s // 2, (2,), generator=g).tolist()
        y, x = torch.randint(0, s - h, (1,), generator=g).item(), torch.randint(0, s - w, (1,), generator=g).item()
        mask[:, y:y + h, x:x + w] = 1
        lesion = torch.tensor([0.8, -0.4, -0.3]).view(3, 1, 1) + 0.1 * torch.randn(3, s, s, generator=g)
        image = torch.where(mask.bool(), lesion, healthy)
        label = i % self.n_labels
        return {"image": image.clamp(-1, 1), "healthy": healthy.clamp(-1, 1), "mask": mask,
                "label": torch.tensor(label), "name": f"toy{i:03d}"}


def run_tiny(family: str, run_dir, *, dataset: Dataset | None = None, resume: bool = False, until: int | None = None,
             val_dataset: Dataset | None = None, **changes) -> dict:
    """Train the tiny preset of `family` on toy triplets (single-threaded: the test machines are shared)."""
    from dataclasses import replace

    from dermagan.training.config import tiny
    from dermagan.training.loop import train

    cfg = replace(tiny(family), **changes)
    labels = list(cfg.data.kinds) if family == "generate" else []
    dataset = dataset or ToyTriplets(8, cfg.size, n_labels=max(len(labels), 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, run_dir, dataset=dataset, labels=labels, resume=resume, until=until, progress=False,
                     val_dataset=val_dataset)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (the 2 cores are shared; more threads only contend)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
