"""Exponential moving average of generator weights (Karras et al. 2018; Yazici et al., "The Unusual
Effectiveness of Averaging in GAN Training", ICLR 2019). The EMA copy is what gets exported."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers (BN statistics) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_beta_at(beta: float, step: int) -> float:
    """The EMA decay to use after `step` optimiser steps: min(beta, (1 + step) / (10 + step)).

    A warm-up: with a fixed beta of 0.999 the average would still be ~74 % the random
    initialisation after 300 steps, so short runs would export noise. Ramping the decay up
    keeps the average's horizon at about a tenth of the steps taken until it reaches 1 / (1 - beta).
    """
    return min(beta, (1.0 + step) / (10.0 + step))
