"""Exponential moving average of generator weights (Karras et al. 2018; Yazici et al., "The Unusual
Effectiveness of Averaging in GAN Training", ICLR 2019). The EMA copy is what gets exported.

BatchNorm statistics do not average with the weights: the trained network's running statistics
describe the trained weights, not their average. `standing_statistics` recomputes them for the EMA
weights from fresh inputs before the EMA copy draws samples or is exported ("standing statistics",
Brock et al., BigGAN, ICLR 2019). Measured on the shipped generator of 2026-12-01 (validation split,
n = 200): KID in the in-project space 0.26 / 2.11 / 2.28 (eczema / hand / lesion) with the copied
statistics, 0.16 / 1.25 / 0.50 with standing ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers (BN statistics) are copied.

    With torch's multi-tensor ops: on a GPU a few kernel launches for all the network's tensors instead of
    one (and a Python call) per tensor; on a CPU the same per-tensor loop, in C++. The same arithmetic
    (lerp) either way."""
    params = list(ema.parameters())
    if params:
        torch._foreach_lerp_(params, [p.detach() for p in model.parameters()], 1.0 - beta)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))


def ema_beta_at(beta: float, step: int) -> float:
    """The EMA decay to use after `step` optimiser steps: min(beta, (1 + step) / (10 + step)).

    A warm-up: with a fixed beta of 0.999 the average would still be ~74 % the random
    initialisation after 300 steps, so short runs would export noise. Ramping the decay up
    keeps the average's horizon at about a tenth of the steps taken until it reaches 1 / (1 - beta).
    """
    return min(beta, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def standing_statistics(model: nn.Module, inputs: Callable[[int], tuple[torch.Tensor, ...]], batches: int) -> bool:
    """Recompute every BatchNorm's running mean and variance as the plain average over `batches`
    train-mode forward passes of `model(*inputs(i))`, then leave `model` in eval mode.

    Returns False (and changes nothing) when `model` has no BatchNorm. `inputs` must draw from its
    own generator: this touches no global RNG, so training stays exactly resumable.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.train()
    for i in range(batches):
        model(*inputs(i))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return True
