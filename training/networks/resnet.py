"""ResNet image translator: CycleGAN's generator (Zhu et al., "Unpaired Image-to-Image Translation
using Cycle-Consistent Adversarial Networks", ICCV 2017; after Johnson et al. 2016), also used for
the paper's add/remove models with a 4-channel input (RGB + mask) and a residual output
`clamp(x + tanh(.), -1, 1)` (Furger et al. 2020: the residual form kept healthy skin intact).

Fully convolutional: any H, W that are multiples of 2**n_downs work (reflection padding keeps
borders clean; ONNX Pad mode=reflect).

ReLUs are not in place (the reference's are): instance_norm returns a view (layers.InstanceNorm2d uses it on
a GPU and in evaluation), and an in-place op on a view makes autograd copy in every backward -- the same
gradients, a slower step (tests/training/test_networks.py).
"""

from __future__ import annotations

import torch
from torch import nn

from dermagan.training.config import GENERATORS
from dermagan.training.networks.layers import Conv2d, ReflectionPad2d, init_weights, norm2d
from dermagan.training.networks.unet_translator import UnetGenerator


class ResidualBlock(nn.Module):
    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=norm != "batch"), norm2d(norm, c), nn.ReLU(),
            ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=norm != "batch"), norm2d(norm, c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, in_ch, H, W) -> (B, 3, H, W) in [-1, 1]; residual=True adds the input's RGB."""

    def __init__(self, in_ch: int = 3, ngf: int = 64, n_blocks: int = 9, n_downs: int = 2,
                 norm: str = "instance", residual: bool = False) -> None:
        super().__init__()
        self.residual, self.size_multiple = residual, 2**n_downs
        bias = norm != "batch"
        layers: list[nn.Module] = [ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=bias), norm2d(norm, ngf), nn.ReLU()]
        c = ngf
        for _ in range(n_downs):  # (B, c, H, W) -> (B, 2c, H/2, W/2)
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm2d(norm, 2 * c), nn.ReLU()]
            c *= 2
        layers += [ResidualBlock(c, norm) for _ in range(n_blocks)]
        for _ in range(n_downs):  # (B, c, H, W) -> (B, c/2, 2H, 2W)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias), norm2d(norm, c // 2), nn.ReLU()]
            c //= 2
        layers += [ReflectionPad2d(3), Conv2d(c, 3, 7), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, 3, H, W)
        if self.residual:
            out = torch.clamp(x[:, :3] + out, -1.0, 1.0)
        return out


class MaskedTranslator(nn.Module):
    """The add/remove generator: (image (B,3,H,W), mask (B,1,H,W)) -> image (B,3,H,W).

    `generator` picks the ResNet translator (n_blocks, n_downs) or pix2pix's U-Net (unet_downs).
    It returns the raw generator output; compositing mask*G + (1-mask)*image is the service's job.
    With `inpaint` the network sees the image blanked (0 = mid-grey) inside the mask, as inpainting
    networks do: what was there cannot leak into the output through the residual path or the skips.
    """

    def __init__(self, ngf: int, n_blocks: int, n_downs: int, norm: str, generator: str = "resnet",
                 unet_downs: int = 7, *, inpaint: bool = False) -> None:
        super().__init__()
        self.inpaint = inpaint
        self.net: nn.Module
        if generator == "resnet":
            self.net = ResnetGenerator(4, ngf, n_blocks, n_downs, norm, residual=True)
        elif generator == "unet":  # pix2pix's unet_128 / unet_256 (networks/unet_translator.py)
            self.net = UnetGenerator(4, ngf, unet_downs, norm, residual=True)
        else:
            raise ValueError(f"unknown generator {generator!r}; valid: {', '.join(GENERATORS)}")
        self.size_multiple: int = self.net.size_multiple  # type: ignore[assignment]

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.inpaint:
            image = image * (1.0 - mask)
        return self.net(torch.cat([image, mask], dim=1))  # (B, 4, H, W) -> (B, 3, H, W)
