"""U-Net for segmentation (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015): image (B, 3, H, W) -> mask logits (B, 1, H, W).

`depth` max-pool levels, so H and W must be multiples of 2**depth; ONNX-friendly (no interpolation:
ConvTranspose k2 s2 up-sampling).
"""

from __future__ import annotations

import torch
from torch import nn

from dermagan.training.networks.layers import Conv2d, init_weights, norm2d


def _double_conv(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm != "batch"), norm2d(norm, c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm != "batch"), norm2d(norm, c_out), nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 1, base: int = 32, depth: int = 4, norm: str = "batch") -> None:
        super().__init__()
        self.size_multiple = 2**depth
        widths = [base * 2**i for i in range(depth + 1)]  # e.g. 32, 64, 128, 256, 512
        self.downs = nn.ModuleList([_double_conv(in_ch, widths[0], norm)])
        self.downs.extend(_double_conv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in reversed(range(depth)))
        self.merges = nn.ModuleList(_double_conv(2 * widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.pool = nn.MaxPool2d(2)
        self.head = Conv2d(widths[0], out_ch, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = self.downs[0](x)  # (B, base, H, W)
        for down in self.downs[1:]:
            skips.append(h)
            h = down(self.pool(h))  # (B, 2c, H/2, W/2)
        for up, merge in zip(self.ups, self.merges):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))  # (B, c, 2H, 2W)
        return self.head(h)  # (B, out_ch, H, W) logits
