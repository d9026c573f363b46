"""Networks of every family, built from a `NetConfig` through explicit factories.

- dcgan: the paper's noise -> image generator and two-scale discriminator (DCGAN, Radford et al. 2016)
- resnet: CycleGAN's ResNet translator and the masked add/remove translator (Zhu et al. 2017)
- unet: the segmentation U-Net (Ronneberger et al. 2015)
- unet_translator: pix2pix's U-Net generator as an add/remove translator (Isola et al. 2017)
- patchgan: the 70x70 PatchGAN discriminator (pix2pix, Isola et al. 2017)
"""

from __future__ import annotations

from torch import nn

from dermagan.training.config import NetConfig
from dermagan.training.networks.dcgan import DCGANGenerator, TwoScaleDiscriminator
from dermagan.training.networks.patchgan import PatchDiscriminator
from dermagan.training.networks.resnet import MaskedTranslator, ResnetGenerator
from dermagan.training.networks.unet import UNet

__all__ = [
    "DCGANGenerator", "TwoScaleDiscriminator", "PatchDiscriminator", "ResnetGenerator", "MaskedTranslator",
    "UNet", "build_discriminator",
]


def build_discriminator(net: NetConfig, in_ch: int, size: int, n_labels: int = 1) -> nn.Module:
    """The discriminator named by `net.disc` (explicit registry; unknown names raise ValueError)."""
    builders = {
        "two_scale": lambda: TwoScaleDiscriminator(in_ch, size, net.ndf, n_labels, net.d_dropout, net.d_norm, net.spectral_norm,
                                                 net.d_mbstd, net.d_pack, net.d_mbstd_colour, net.attention),
        "patch": lambda: PatchDiscriminator(in_ch, net.ndf, net.d_layers, net.d_norm, net.spectral_norm),
    }
    if net.disc not in builders:
        raise ValueError(f"unknown discriminator {net.disc!r}; valid: {', '.join(builders)}")
    return builders[net.disc]()
