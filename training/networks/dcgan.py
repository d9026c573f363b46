"""The paper's noise -> image generator and two-scale discriminator.

Furger et al. (ANNPR 2020) used a DCGAN-style generator (Radford, Metz & Chintala, "Unsupervised
Representation Learning with Deep Convolutional GANs", ICLR 2016): z in R^100 -> Linear -> 8x8 ->
stride-2 ConvTranspose k5 blocks with BatchNorm + LeakyReLU(0.2) -> Conv k5 -> tanh, and a
discriminator that judges the image at two scales (1x and 0.5x), four stride-2 k4 blocks each,
dropout 0.3, logits averaged. Here the depth follows the resolution (log2(size/8) up-blocks) and an
optional label embedding makes one generator draw several kinds; the discriminator is then a
projection discriminator (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018).
Optionally each branch ends with a minibatch standard-deviation channel (Karras et al., "Progressive
Growing of GANs", ICLR 2018): D then sees how much its inputs of one kind differ, so a generator that
ignores its noise is told apart from the data. Optionally D judges its inputs in packs (PacGAN: Lin, Khetan,
Fanti & Oh, "PacGAN: The power of two samples in generative adversarial networks", NeurIPS 2018): `pack`
samples of one kind concatenated along the channels get one logit, so a generator that draws one value of
some property for every noise -- the hand generator drew every background in one hue, which its EMA copy then
averaged to grey -- is told apart by pairs that agree where real pairs differ. Optionally (`mbstd_colour` N)
each branch also gets the minibatch standard deviation of its input's colour (chroma: each pixel's colour minus
its grey, pooled to N x N cells at most -- 1: the image's mean hue --, per channel and cell, on a log scale):
the stddev channel averages over every feature, where shape dominates, so it could not see one hue for every
background. On the hands it brought the backgrounds' hues back but made the in-project KID worse (TEAM_NOTES).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dermagan.training.networks.layers import Conv2d, init_weights, maybe_sn, norm2d


class SelfAttention(nn.Module):
    """Self-attention over a feature map (SAGAN: Zhang et al., ICML 2019; keys and values max-pooled 2x2 as in
    BigGAN): x + gamma * attention(x), with gamma starting at 0, so the block begins as the identity and the
    network learns how much of it to use. Each position reads every other: what a convolution's local window
    cannot relate -- a hand's fingers, apart from each other -- one layer here can. Per sample (never mixes
    a batch); spectral norm on its 1x1 convolutions where the network has it (its discriminator)."""

    def __init__(self, ch: int, sn: bool = False) -> None:
        super().__init__()
        qk, v = max(ch // 8, 1), max(ch // 2, 1)
        self.query = maybe_sn(nn.Conv2d(ch, qk, 1, bias=False), sn)
        self.key = maybe_sn(nn.Conv2d(ch, qk, 1, bias=False), sn)
        self.value = maybe_sn(nn.Conv2d(ch, v, 1, bias=False), sn)
        self.out = maybe_sn(nn.Conv2d(v, ch, 1, bias=False), sn)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, C/8, HW)
        k = F.max_pool2d(self.key(x), 2).flatten(2)  # (B, C/8, HW/4)
        v = F.max_pool2d(self.value(x), 2).flatten(2)  # (B, C/2, HW/4)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, HW, HW/4): each position's weights, summing to 1
        o = (v @ attn.transpose(1, 2)).reshape(b, -1, h, w)  # (B, C/2, H, W)
        return x + self.gamma * self.out(o)


def attention_sizes(size: int) -> tuple[int, ...]:
    """The feature-map sizes at which `--attention` may put a self-attention block in the generator and the
    two-scale discriminator of a `size` px generator: those both have (the generator's up-blocks below the
    image's own size; the discriminator's full-size branch's four blocks), 16 px and up."""
    return tuple(r for r in (size // 2, size // 4, size // 8, size // 16) if r >= 16)


def _check_attention(attention: int, size: int, network: str) -> None:
    """ValueError unless `attention` is 0 or one of `attention_sizes(size)`."""
    if attention and attention not in attention_sizes(size):
        raise ValueError(f"attention at {attention} px: a {size} px {network}'s feature maps that take it are "
                         f"{', '.join(map(str, attention_sizes(size))) or 'none'} px (0 = off)")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) [+ label (B,)] -> image (B, 3, size, size) in [-1, 1]. `attention`: the feature-map size
    after whose up-block a `SelfAttention` block sits (0 = none). `seed_ch`: channels of the 8x8 seed the fully
    connected layer makes (0 = ngf, the paper's 8x8x64)."""

    def __init__(self, z_dim: int, size: int, ngf: int, n_labels: int = 1, norm: str = "batch",
                 attention: int = 0, *, seed_ch: int = 0) -> None:
        super().__init__()
        n_up = int(math.log2(size // 8))
        assert 8 * 2**n_up == size, f"size must be 8 * 2**k, got {size}"
        _check_attention(attention, size, "generator")
        self.z_dim, self.size, self.n_labels = z_dim, size, n_labels
        self.embed = nn.Embedding(n_labels, z_dim) if n_labels > 1 else None
        in_dim = 2 * z_dim if self.embed is not None else z_dim
        self.seed_ch = seed_ch or ngf  # the paper: 8x8x64
        self.fc = nn.Linear(in_dim, 8 * 8 * self.seed_ch)
        widths = [min(ngf * 2 ** (n_up - 1 - i), ngf * 8) for i in range(n_up)]  # 128 px: 512,256,128,64
        blocks: list[nn.Module] = [norm2d(norm, self.seed_ch), nn.LeakyReLU(0.2)]
        c = self.seed_ch
        for i, w in enumerate(widths):
            blocks += [nn.ConvTranspose2d(c, w, 5, stride=2, padding=2, output_padding=1, bias=norm == "none"),
                       norm2d(norm, w), nn.LeakyReLU(0.2)]
            if 16 * 2**i == attention:
                blocks.append(SelfAttention(w))
            c = w
        blocks += [Conv2d(c, 3, 5, padding=2), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        init_weights(self)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            assert label is not None, "a multi-kind generator needs a label per sample"
            z = torch.cat([z, self.embed(label)], dim=1)  # (B, 2*z_dim)
        h = self.fc(z).view(-1, self.seed_ch, 8, 8)  # (B, seed_ch, 8, 8)
        return self.body(h)  # (B, 3, size, size)


def set_stddev(x: torch.Tensor, group: int, label: torch.Tensor | None = None,
               n_labels: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) float32: each sample's standard deviation, per feature, across its set.

    Without labels the sets are groups of `group` consecutive samples (a batch that `group` does not
    divide uses the largest group size that divides it); the families judge reals and fakes in
    separate calls, so no set mixes them. With labels the set of a sample is every sample of the
    batch with its label: across kinds images differ anyway, so a group of mixed kinds would hide a
    generator that draws one image per kind.
    """
    b, c, hh, ww = x.shape
    x = x.float()
    if label is None or n_labels < 2:
        g = math.gcd(group, b)
        std = x.view(b // g, g, c, hh, ww).var(1, unbiased=False).add(1e-8).sqrt()  # (B/g, C, H, W)
        return std.repeat_interleave(g, 0)
    onehot = F.one_hot(label, n_labels).to(x.dtype)  # (B, L)
    count = onehot.sum(0).clamp_min(1.0).view(-1, 1, 1, 1)  # (L, 1, 1, 1)
    mean = torch.einsum("bl,bchw->lchw", onehot, x) / count  # (L, C, H, W)
    var = torch.einsum("bl,bchw->lchw", onehot, x * x) / count - mean * mean
    return var.clamp_min(0.0).add(1e-8).sqrt()[label]  # (B, C, H, W)


def minibatch_stddev(h: torch.Tensor, group: int, label: torch.Tensor | None = None,
                     n_labels: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 1, H, W): the extra channel is the mean over C, H, W of the standard
    deviation across each sample's set (ProGAN; the sets as in `set_stddev`)."""
    b, _, hh, ww = h.shape
    feat = set_stddev(h, group, label, n_labels).mean(dim=(1, 2, 3))  # (B,)
    return torch.cat([h, feat.to(h.dtype).view(b, 1, 1, 1).expand(b, 1, hh, ww)], 1)


#: added to the chroma's standard deviation before its log (in [-1, 1] units; ~2 levels of 8 bits): the data's
#: background hues spread ~0.04-0.07, a generator that draws one hue ~0.007 -- a difference of ~1 on this scale
CHROMA_STD_FLOOR = 1.0 / 64


def colour_stddev(x: torch.Tensor, grid: tuple[int, int], group: int, label: torch.Tensor | None = None,
                  n_labels: int = 1) -> torch.Tensor:
    """image(s) (B, k * 3, H, W) -> (B, k * 3, *grid): log(floor + the standard deviation across each sample's
    set of its chroma -- each pixel's colour minus the mean of its three channels -- average-pooled to `grid`)."""
    b, c, hh, ww = x.shape
    rgb = x.float().view(b, c // 3, 3, hh, ww)
    chroma = (rgb - rgb.mean(2, keepdim=True)).view(b, c, hh, ww)
    std = set_stddev(F.adaptive_avg_pool2d(chroma, grid), group, label, n_labels)  # (B, k * 3, *grid)
    return std.add(CHROMA_STD_FLOOR).log()


class _ScaleBranch(nn.Module):
    """Four stride-2 k4 blocks [-> minibatch stddev] -> features (B, C) -> logit, with projection on the label."""

    def __init__(self, in_ch: int, size: int, ndf: int, n_labels: int, dropout: float, norm: str, sn: bool,
                 mbstd: int = 0, mbstd_colour: int = 0, attention: int = 0):
        super().__init__()
        if mbstd_colour and (not mbstd or in_ch % 3 or mbstd_colour < 0):
            raise ValueError(f"the colour stddev needs the minibatch stddev's groups (mbstd > 0, got {mbstd}), "
                             f"RGB images (in_ch a multiple of 3, got {in_ch}) and cells >= 0 (got {mbstd_colour})")
        layers: list[nn.Module] = []
        c = in_ch
        for i in range(4):
            w = ndf * 2**i
            layers += [maybe_sn(nn.Conv2d(c, w, 4, stride=2, padding=1, bias=norm == "none" or i == 0), sn)]
            layers += [norm2d(norm if i > 0 else "none", w), nn.LeakyReLU(0.2)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            if attention and size // 2 ** (i + 1) == attention:  # (a branch without that size has none)
                layers.append(SelfAttention(w, sn))
            c = w
        self.body = nn.Sequential(*layers)
        self.mbstd, self.n_labels, self.mbstd_colour = mbstd, n_labels, mbstd_colour
        feat = (c + (mbstd > 0) + in_ch * (mbstd_colour > 0)) * max(size // 16, 1) ** 2
        self.fc = maybe_sn(nn.Linear(feat, 1), sn)
        self.embed = maybe_sn(nn.Embedding(n_labels, feat), sn) if n_labels > 1 else None

    def forward(self, x: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        h = self.body(x)  # (B, C, size/16, size/16)
        if self.mbstd:
            h = minibatch_stddev(h, self.mbstd, label, self.n_labels)  # (B, C + 1, size/16, size/16)
        if self.mbstd_colour:
            cells = (min(self.mbstd_colour, h.shape[-2]), min(self.mbstd_colour, h.shape[-1]))
            tint = colour_stddev(x, cells, self.mbstd, label, self.n_labels)  # (B, in_ch, *cells)
            h = torch.cat([h, F.interpolate(tint, size=h.shape[-2:]).to(h.dtype)], 1)  # each cell over its places
        h = h.flatten(1)
        out = self.fc(h)  # (B, 1)
        if self.embed is not None and label is not None:
            out = out + (self.embed(label) * h).sum(1, keepdim=True)  # projection term
        return out


class TwoScaleDiscriminator(nn.Module):
    """image (B, C, H, W) [+ label] -> logit (B, 1): mean of a 1x and a 0.5x branch (Furger et al.)."""

    def __init__(self, in_ch: int, size: int, ndf: int, n_labels: int = 1, dropout: float = 0.3,
                 norm: str = "batch", sn: bool = False, mbstd: int = 0, pack: int = 1,
                 mbstd_colour: int = 0, attention: int = 0) -> None:
        super().__init__()
        if pack < 1:
            raise ValueError(f"pack must be >= 1 (1 = off), got {pack}")
        _check_attention(attention, size, "discriminator")
        self.pack = pack
        branch = lambda s: _ScaleBranch(in_ch * pack, s, ndf, n_labels, dropout, norm, sn, mbstd,  # noqa: E731
                                        mbstd_colour, attention)
        self.scale_1x, self.scale_half = branch(size), branch(size // 2)
        init_weights(self)
        if not sn:
            # The projection embedding is a per-kind linear read-out of the same features as fc: it
            # takes fc's N(0, 0.02), not init_weights' N(0, 1) for embeddings (right for the
            # generator's, which sits beside z). At N(0, 1) its dot product over C x (size/16)^2
            # features made the paper preset's initial logits std 44 (ndf 32, 128 px) instead of ~1,
            # and BCE losses of 40-80 for as long as it was watched. With spectral norm the scale
            # cancels out, so the modern preset is left exactly as it was.
            for branch in (self.scale_1x, self.scale_half):
                if branch.embed is not None:
                    nn.init.normal_(branch.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B / pack, 1): one logit per pack of consecutive samples (the samples of a pack must
        share their label: that of its first is used)."""
        if self.pack > 1:
            b, c, h, w = x.shape
            if b % self.pack:
                raise ValueError(f"a batch of {b} cannot be judged in packs of {self.pack}")
            x = x.reshape(b // self.pack, self.pack * c, h, w)  # (B / pack, pack * C, H, W)
            label = None if label is None else label[:: self.pack]
        small = F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
        return 0.5 * (self.scale_1x(x, label) + self.scale_half(small, label))
