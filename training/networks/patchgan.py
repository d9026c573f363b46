"""70x70 PatchGAN discriminator (Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks" (pix2pix), CVPR 2017; the junyanz NLayerDiscriminator with n_layers=3).

It classifies overlapping patches, so it is fully convolutional: image (B, C, H, W) -> logits
(B, 1, H/8 - 2, W/8 - 2) for n_layers 3.
"""

from __future__ import annotations

import torch
from torch import nn

from dermagan.training.networks.layers import Conv2d, init_weights, maybe_sn, norm2d


class PatchDiscriminator(nn.Module):
    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance", sn: bool = False):
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [maybe_sn(nn.Conv2d(in_ch, ndf, 4, 2, 1), sn), nn.LeakyReLU(0.2)]
        c = ndf
        for i in range(1, n_layers + 1):
            w = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [maybe_sn(nn.Conv2d(c, w, 4, stride, 1, bias=bias), sn), norm2d(norm, w), nn.LeakyReLU(0.2)]
            c = w
        layers.append(maybe_sn(Conv2d(c, 1, 4, 1, 1), sn))
        self.body = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(x)  # (B, 1, h, w) patch logits
