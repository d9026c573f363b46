"""pix2pix's U-Net generator (Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", CVPR 2017; `unet_128` = 7 down-samplings, `unet_256` = 8), as an add/remove translator:
4-channel input (RGB + mask), residual output `clamp(x + tanh(.), -1, 1)` (Furger et al. 2020).

Encoder: k4 s2 convolutions, widths ngf, 2ngf, 4ngf, 8ngf, 8ngf ... (LeakyReLU 0.2, norm except on the
first and the innermost). Decoder: ReLU -> k4 s2 transposed convolution -> norm, concatenated with the
encoder's feature map of the same size; dropout 0.5 in the decoder blocks of the 8ngf levels between the
innermost and the first three widenings (pix2pix's noise source). Dropout is off in eval mode, and
BatchNorm then uses running statistics, so the exported model is deterministic and batch invariant.
Fully convolutional: H and W must be multiples of 2**n_downs.
"""

from __future__ import annotations

import torch
from torch import nn

from dermagan.training.networks.layers import init_weights, norm2d


class _Level(nn.Module):
    """One U-Net level: down -> (inner levels) -> up, its input concatenated to its output."""

    def __init__(self, c_outer: int, c_inner: int, inner: "_Level | None", norm: str, dropout: bool) -> None:
        super().__init__()
        bias = norm != "batch"
        self.down = nn.Sequential(  # (B, c_outer, H, W) -> (B, c_inner, H/2, W/2)
            nn.LeakyReLU(0.2), nn.Conv2d(c_outer, c_inner, 4, 2, 1, bias=bias),
            norm2d(norm if inner is not None else "none", c_inner))
        self.inner = inner
        up_in = c_inner if inner is None else 2 * c_inner
        self.up = nn.Sequential(  # (B, up_in, H/2, W/2) -> (B, c_outer, H, W)
            nn.ReLU(), nn.ConvTranspose2d(up_in, c_outer, 4, 2, 1, bias=bias), norm2d(norm, c_outer),
            *([nn.Dropout(0.5)] if dropout else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        if self.inner is not None:
            h = self.inner(h)  # (B, 2 * c_inner, H/2, W/2)
        return torch.cat([x, self.up(h)], dim=1)  # (B, 2 * c_outer, H, W)


class UnetGenerator(nn.Module):
    """(B, in_ch, H, W) -> (B, 3, H, W) in [-1, 1]; residual=True adds the input's RGB."""

    def __init__(self, in_ch: int = 4, ngf: int = 64, n_downs: int = 7, norm: str = "batch",
                 residual: bool = True) -> None:
        super().__init__()
        if n_downs < 2:
            raise ValueError(f"a U-Net generator needs n_downs >= 2, got {n_downs}")
        self.residual, self.size_multiple = residual, 2**n_downs
        widths = [ngf * min(2**i, 8) for i in range(n_downs)]  # outer level first: 64, 128, 256, 512, 512 ...
        level: _Level | None = None
        for i in reversed(range(1, n_downs)):  # innermost first; levels 1 .. n_downs-1 below the head
            c_inner = widths[i]
            dropout = level is not None and i >= 4  # 8ngf levels between the widenings and the innermost
            level = _Level(widths[i - 1], c_inner, level, norm, dropout)
        assert level is not None
        self.head = nn.Conv2d(in_ch, ngf, 4, 2, 1, bias=norm != "batch")  # (B, in_ch, H, W) -> (B, ngf, H/2, W/2); no norm
        self.body = level  # (B, ngf, H/2, W/2) -> (B, 2 ngf, H/2, W/2)
        self.tail = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * ngf, 3, 4, 2, 1), nn.Tanh())
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tail(self.body(self.head(x)))  # (B, 3, H, W)
        if self.residual:
            out = torch.clamp(x[:, :3] + out, -1.0, 1.0)
        return out
