"""Losses: they compute tensors and nothing else (no logging, stepping or saving).

- GAN objectives: non-saturating BCE with one-sided label smoothing (Goodfellow et al. 2014;
  Salimans et al. 2016; the paper used real label 0.95), hinge (Lim & Ye 2017; Miyato et al. 2018,
  SN-GAN) and least squares (Mao et al. 2017, LSGAN; CycleGAN's default).
- R1 gradient penalty on reals (Mescheder et al. 2018), applied lazily (Karras et al. 2020).
- The paper's relevancy loss: MSE between input and output outside the mask (Furger et al. 2020).
- pix2pix's L1 term (Isola et al. 2017) and CycleGAN's cycle/identity L1 (Zhu et al. 2017).
- Dice + BCE for segmentation (Milletari et al. 2016, V-Net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """Discriminator loss of one real and one fake batch (logits of any shape)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "lsgan":  # junyanz halves the D loss
        return 0.5 * (((real_logits - 1.0) ** 2).mean() + (fake_logits**2).mean())
    raise ValueError(f"unknown GAN loss {kind!r}; valid: bce, hinge, lsgan")


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: make D call the fakes real (non-saturating for bce and hinge)."""
    fake_logits = fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "lsgan":
        return ((fake_logits - 1.0) ** 2).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: bce, hinge, lsgan")


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over reals; `real_inputs` must require grad and feed `real_logits`.

    `scale`: under fp16 autocast, the GradScaler's current scale. The input gradient is then taken of the logits'
    mean times the scale -- what the scaled loss's own backward carries through the critic -- and unscaled in
    float32 (torch.amp's recipe for gradient penalties): unscaled, its backward through float16 layers flushes
    small gradients to zero. If it overflows, the penalty is not finite and the scaler skips the step and lowers
    its scale, as it does for an overflowing loss."""
    if scale == 1.0:  # kept apart so that bf16/fp32 runs (the shipped hand recipe) compute exactly what they did
        (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
        return grad.float().pow(2).flatten(1).sum(1).mean()
    n = real_logits.numel()
    (grad,) = torch.autograd.grad(real_logits.float().sum() * (scale / n), real_inputs, create_graph=True)
    return (grad.float() * (n / scale)).pow(2).flatten(1).sum(1).mean()


def relevancy_loss(output: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between output and source outside the mask (B,1,H,W in {0,1}), mean over those pixels."""
    keep = (1.0 - mask).expand_as(source)
    return ((output.float() - source.float()) ** 2 * keep).sum() / keep.sum().clamp_min(1.0)


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.float() - target.float()).abs().mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged; logits and target (B, 1, H, W)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return (1.0 - dice).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, lambda_dice: float, lambda_bce: float) -> torch.Tensor:
    return lambda_dice * dice_loss(logits, target) + lambda_bce * F.binary_cross_entropy_with_logits(logits.float(), target.float())


@torch.no_grad()
def binary_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of (logits > 0) and target > 0.5 over the whole batch (0-dim; 1 if both empty)."""
    p, t = logits > 0, target > 0.5
    union = (p | t).sum()
    return torch.where(union > 0, (p & t).sum() / union.clamp_min(1), torch.ones((), device=logits.device))
