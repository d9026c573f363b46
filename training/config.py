"""Typed, frozen run configuration of `dermagan train` and its presets.

A run is described by one `TrainConfig` (nested frozen dataclasses, no global option bag). The CLI
builds it from a preset plus overrides, `loop.train(cfg, run_dir)` receives it, and every checkpoint
stores it (`to_dict` / `from_dict`), so a checkpoint rebuilds its own networks (nanoGPT style).

Presets are plain functions of the family, registered in the explicit dict `PRESETS`:
- `paper`  -- what Furger et al. (ANNPR 2020) trained: DCGAN-style generator, two-scale
  discriminator with dropout 0.3, BCE with real labels 0.95, Adam 5e-5 (generate, add, remove);
  the junyanz CycleGAN reference defaults for `cycle` (ResNet-9 at ngf 64, LSGAN, lambda 10,
  identity 0.5, pool 50, Adam 2e-4 beta1 0.5, linear decay over the second half);
- `modern` -- small-data practice: spectral norm on D (Miyato et al. 2018), hinge loss, EMA of G,
  DiffAugment colour/translation/cutout (Zhao et al. 2020), TTUR learning rates;
- `tiny`   -- 32 px, tiny widths and few steps, for CPU tests (modern features switched on, so the
  tests run every code path).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

FAMILIES: tuple[str, ...] = ("generate", "add", "remove", "cycle", "segment")
KINDS: tuple[str, ...] = ("eczema", "hand", "lesion")
GAN_LOSSES: tuple[str, ...] = ("bce", "hinge", "lsgan")
DISCRIMINATORS: tuple[str, ...] = ("two_scale", "patch")
GENERATORS: tuple[str, ...] = ("resnet", "unet")  # add/remove translators
NORMS: tuple[str, ...] = ("batch", "instance", "none")
AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains the
    CycleGAN 1.8x (AMD EPYC, AVX512-BF16) to 2.4x (Intel Xeon, AMX) faster than fp32
    (bench/results/train-*.md); elsewhere oneDNN emulates it, slower than fp32."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # no torch, or an op this build lacks
        return False


@dataclass(frozen=True)
class NetConfig:
    """Network shapes. Fields a family does not use are ignored by it."""

    z_dim: int = 100  # generate: noise size (DCGAN, Radford et al. 2016)
    ngf: int = 64  # generator base width (channels of the last up-block / first block)
    ndf: int = 64  # discriminator base width
    g_norm: str = "batch"  # batch | instance | none
    d_norm: str = "batch"  # batch | instance | none (none with spectral norm)
    g_blocks: int = 9  # residual blocks of the ResNet translator (CycleGAN: 9)
    g_downs: int = 2  # stride-2 down-samplings of the ResNet translator -> size_multiple 2**g_downs
    g_residual: bool = False  # cycle: output clamp(x + tanh(.)) instead of tanh(.) (see modern())
    generator: str = "resnet"  # add/remove: resnet (ResNet translator) | unet (pix2pix U-Net)
    g_unet_downs: int = 7  # down-samplings of the U-Net translator (pix2pix unet_128: 7) -> 2**g_unet_downs
    g_inpaint: bool = False  # add/remove: the translator sees the image with the mask's inside blanked (inpainting)
    unet_depth: int = 4  # U-Net levels (segment) -> size_multiple 2**unet_depth
    disc: str = "two_scale"  # two_scale (Furger et al.) | patch (70x70 PatchGAN, pix2pix)
    d_layers: int = 3  # PatchGAN n_layers
    d_dropout: float = 0.3  # two-scale D dropout (the paper's 0.3)
    spectral_norm: bool = False  # SN on every D layer (SN-GAN)
    d_mbstd: int = 0  # two-scale D: minibatch-stddev channel (ProGAN), per kind or over groups of this size; 0 = off
    d_pack: int = 1  # two-scale D: samples judged together, concatenated along the channels (PacGAN); 1 = off
    d_mbstd_colour: int = 0  # two-scale D: also the stddev of the input's chroma over N x N cells across d_mbstd's sets
    attention: int = 0  # generate: a self-attention block (SAGAN) in G and D at this feature-map size in px; 0 = off
    g_seed_ch: int = 0  # generate: channels of the generator's 8x8 seed (the fully connected layer's output); 0 = ngf


@dataclass(frozen=True)
class LossConfig:
    """Loss types and weights, named as in the papers."""

    gan: str = "bce"  # bce (non-saturating) | hinge | lsgan
    real_label: float = 1.0  # one-sided label smoothing for bce (the paper: 0.95)
    lambda_l1: float = 0.0  # paired L1 to exact ground truth (pix2pix: 100); 0 = unpaired
    lambda_relevancy: float = 0.0  # MSE outside the mask (Furger et al.'s relevancy loss)
    lambda_cycle: float = 10.0  # CycleGAN cycle consistency
    lambda_identity: float = 0.5  # CycleGAN identity weight, as a multiple of lambda_cycle
    lambda_cycle_b: float = 1.0  # eczema -> healthy -> eczema cycle, as a multiple of lambda_cycle (the reference's
    # lambda_B / lambda_A, but only that cycle: the reference's lambda_B also scales G_add's identity term; here the
    # identity terms keep lambda_identity * lambda_cycle -- the shipped CycleGAN's stages were tuned so)
    r1_gamma: float = 0.0  # lazy R1 penalty weight (Mescheder et al. 2018); 0 = off
    r1_every: int = 16  # lazy regularisation interval (StyleGAN2)
    lambda_dice: float = 1.0  # segment
    lambda_bce: float = 1.0  # segment


@dataclass(frozen=True)
class OptimConfig:
    """Adam for every network; TTUR = different lr_g and lr_d (Heusel et al. 2017)."""

    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: float = 1.0  # fraction of the steps after which lr decays linearly to 0 (1 = never)
    ema_beta: float = 0.0  # EMA of generator weights per step; 0 = off


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from. `root=None` = the procedural SynthDataset."""

    root: str | None = None  # PairedFolder (add/remove/cycle/segment), ClassFolder/ImageFolder (generate)
    kinds: tuple[str, ...] = ("eczema",)  # synthetic kinds; generate conditions on them
    length: int = 4096  # synthetic samples per kind
    seed: int = 0  # renderer seed offset
    flip: bool = True  # random horizontal flips (the paper's only augmentation)
    crop: int = 0  # add/remove/cycle/segment: train on random crop x crop windows of the size x size images; 0 = off
    patches: int = 0  # folders: cut size x size patches (stride size / 2) of each image resized to this shorter side; 0 = off
    workers: int = 0  # DataLoader worker processes
    cache_gb: float = 1.0  # keep the set in memory as 8-bit when it fits in this many GB (each training process); 0 = never
    unpaired: bool = False  # add/remove: ignore exact ground truth (train as the paper did)
    fit: str = ""  # folders: squash | crop an image of another shape than size x size; "" = squash, with a warning
    val_root: str | None = None  # held-out folder (root's layout) for validation during training (val_every)
    val_n: int = 64  # validation samples (the first of the held-out set)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs; stored in every checkpoint."""

    family: str
    preset: str
    size: int = 128
    batch_size: int = 16
    steps: int = 20_000
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout"; "" = off
    pool_size: int = 0  # image history pool for D (CycleGAN: 50)
    sample_every: int = 500
    ckpt_every: int = 2_000
    log_every: int = 10
    keep_checkpoints: bool = True  # also keep checkpoints/step_XXXXXXX.pt
    tensorboard: bool = False  # also log losses, images/s, learning rate and sample grids to RUN/tensorboard/
    val_every: int = 0  # steps between validations on held-out data (metrics.jsonl "val_*", checkpoints/best.pt); 0 = off
    recipe: str = ""  # the command line that started the run
    init_from: str = ""  # warm start: a run folder (or .pt checkpoint) whose networks and EMA this run starts from
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        subs = {"net": NetConfig, "loss": LossConfig, "optim": OptimConfig, "data": DataConfig}
        for key, sub in subs.items():
            d[key] = sub(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get(key, {}).items()})
        return cls(**d)

    def validate(self) -> None:
        """Checks that need no data; raises ValueError naming the field and the accepted values."""
        _one_of("family", self.family, FAMILIES)
        _one_of("amp", self.amp, AMP_MODES)
        _one_of("loss.gan", self.loss.gan, GAN_LOSSES)
        _one_of("net.disc", self.net.disc, DISCRIMINATORS)
        _one_of("net.generator", self.net.generator, GENERATORS)
        _one_of("net.g_norm", self.net.g_norm, NORMS)
        _one_of("net.d_norm", self.net.d_norm, NORMS)
        for k in self.data.kinds:
            _one_of("data.kinds", k, KINDS)
        if not self.data.kinds:
            raise ValueError("data.kinds is empty; choose from " + ", ".join(KINDS))
        twice = sorted({k for k in self.data.kinds if self.data.kinds.count(k) > 1})
        if twice:
            raise ValueError(f"data.kinds names {', '.join(map(repr, twice))} more than once")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("batch_size", "steps", "sample_every", "ckpt_every", "log_every", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # the least value of each count (fields a family does not use too: a checkpoint keeps them all)
        for name, least, why in (("pool_size", 0, " (0 = off)"), ("net.z_dim", 1, ""), ("net.ngf", 1, ""),
                                 ("net.ndf", 1, ""), ("net.g_blocks", 0, ""), ("net.g_downs", 0, ""),
                                 ("net.g_unet_downs", 2, " (the U-Net translator's least)"), ("net.unet_depth", 0, ""),
                                 ("net.d_layers", 0, ""), ("net.d_mbstd", 0, " (0 = off)"), ("net.d_pack", 1, " (1 = off)"),
                                 ("net.d_mbstd_colour", 0, " (0 = off)"), ("net.attention", 0, " (0 = off)"),
                                 ("net.g_seed_ch", 0, " (0 = ngf)"),
                                 ("loss.r1_every", 1, ""), ("data.length", 1, ""), ("data.workers", 0, ""),
                                 ("data.crop", 0, " (0 = off)"), ("data.patches", 0, " (0 = off)")):
            value = getattr(self, name) if "." not in name else getattr(getattr(self, name.split(".")[0]),
                                                                        name.split(".")[1])
            if value < least:
                raise ValueError(f"{name} must be >= {least}{why}, got {value}")
        for f in dataclasses.fields(self.loss):
            if f.name.startswith("lambda_") and getattr(self.loss, f.name) < 0:
                raise ValueError(f"loss.{f.name} must be >= 0, got {getattr(self.loss, f.name)}")
        if self.loss.r1_gamma < 0:
            raise ValueError(f"loss.r1_gamma must be >= 0 (0 = off), got {self.loss.r1_gamma}")
        if not 0.0 < self.loss.real_label <= 1.0:
            raise ValueError(f"loss.real_label must be within (0, 1] (the paper: 0.95), got {self.loss.real_label}")
        for name in ("lr_g", "lr_d"):
            if not getattr(self.optim, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self.optim, name)}")
        for name, value, what in (("optim.beta1", self.optim.beta1, ""), ("optim.beta2", self.optim.beta2, ""),
                                  ("optim.ema_beta", self.optim.ema_beta, " (0 = off)"),
                                  ("net.d_dropout", self.net.d_dropout, " (0 = off)")):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be within [0, 1){what}, got {value}")
        if not 0.0 <= self.data.cache_gb < math.inf:
            raise ValueError(f"data.cache_gb must be a number of GB >= 0 (0 = never cache), got {self.data.cache_gb}")
        if not 0.0 <= self.optim.decay_start <= 1.0:
            raise ValueError(f"optim.decay_start must be within [0, 1] (1 = constant learning rate), "
                             f"got {self.optim.decay_start}")
        if self.augment:
            from dermagan.training.augment import AUGMENTS

            for p in self.augment.split(","):
                _one_of("augment", p, tuple(AUGMENTS))
        if self.data.crop:
            if self.family == "generate":
                raise ValueError("data.crop does not apply to generate (its generator draws whole size x size images); "
                                 "leave it 0")
            m = max(32, size_multiple(self))
            if not (self.data.crop % size_multiple(self) == 0 and m <= self.data.crop <= self.size):
                raise ValueError(f"data.crop {self.data.crop} does not fit the {self.family} network: it must be a "
                                 f"multiple of {size_multiple(self)} from {m} to size {self.size} (0 = off)")
            if self.family != "segment" and self.net.disc == "two_scale" and self.data.crop != self.size:  # (segment: no D)
                raise ValueError(f"data.crop {self.data.crop} needs a discriminator that takes any size: the two-scale "
                                 f"one (net.disc two_scale, the paper preset's) ends in a layer sized for {self.size} px; "
                                 "use --disc patch, or no --crop")
        if self.net.d_pack > 1:
            if self.family != "generate" or self.net.disc != "two_scale":
                raise ValueError(f"net.d_pack {self.net.d_pack}: packing is for generate's two-scale discriminator "
                                 f"(this run: {self.family}, {self.net.disc}); leave it 1")
            if self.batch_size % self.net.d_pack:
                raise ValueError(f"batch_size {self.batch_size} is not a multiple of net.d_pack {self.net.d_pack}: "
                                 "the discriminator judges whole packs")
            if self.data.root is None and len(self.data.kinds) > 1:
                raise ValueError(f"net.d_pack {self.net.d_pack} needs one kind (the samples of a pack must share "
                                 f"theirs), got {', '.join(self.data.kinds)}; train a generator per kind")
        if self.net.d_mbstd_colour and (self.family != "generate" or self.net.disc != "two_scale"
                                        or not self.net.d_mbstd):
            raise ValueError("net.d_mbstd_colour is for generate's two-scale discriminator with its minibatch stddev "
                             f"(this run: {self.family}, {self.net.disc}, net.d_mbstd {self.net.d_mbstd}); it takes "
                             "d_mbstd's sets")
        if self.net.attention:
            from dermagan.training.networks.dcgan import attention_sizes

            if self.family != "generate" or self.net.disc != "two_scale":
                raise ValueError("net.attention is for generate's generator and two-scale discriminator (this run: "
                                 f"{self.family}, {self.net.disc}); leave it 0")
            if self.net.attention not in attention_sizes(self.size):
                raise ValueError(f"net.attention {self.net.attention}: at {self.size} px the feature maps that take "
                                 f"it are {', '.join(map(str, attention_sizes(self.size))) or 'none'} px (0 = off)")
        if self.net.g_seed_ch and self.family != "generate":
            raise ValueError(f"net.g_seed_ch is for generate's generator (this run: {self.family}); leave it 0")
        if self.val_every < 0 or self.data.val_n < 1:
            raise ValueError(f"val_every must be >= 0 (0 = off) and data.val_n >= 1, got {self.val_every}, "
                             f"{self.data.val_n}")
        if self.val_every and self.family == "generate":
            raise ValueError("val_every: validation during training measures add, remove, cycle and segment; for a "
                             "generator, export kept checkpoints and compare them with dermagan evaluate --split "
                             "validation")
        if self.val_every and self.data.root is not None and self.data.val_root is None:
            raise ValueError("val_every on your own data (--data) needs held-out images in the same layout: "
                             "pass --val-data DIR (never the training folder)")
        if self.data.val_root is not None and self.data.root is not None and \
                Path(self.data.val_root).resolve() == Path(self.data.root).resolve():
            raise ValueError(f"--val-data {self.data.val_root} is the training folder: validation needs images "
                             "the model does not train on")
        if self.data.fit not in ("", "squash", "crop"):
            raise ValueError(f"data.fit must be squash or crop, got {self.data.fit!r}")
        if self.data.fit and self.data.root is None:
            raise ValueError("data.fit shapes your own photographs (--data); the procedural data is drawn at size "
                             "(leave it unset)")
        if self.data.patches:
            if self.data.root is None or self.family == "generate":
                raise ValueError("data.patches cuts your own photographs (--data) for add/remove/cycle/segment; "
                                 "the procedural data and generate draw whole images (leave it 0)")
            if self.data.patches < self.size:
                raise ValueError(f"data.patches {self.data.patches} is the shorter side the patches are cut from: "
                                 f"at least size {self.size}")
        if not size_fits(self):
            raise ValueError(
                f"size {self.size} does not fit the {self.family} network: it must be "
                + ("8 * 2**k with k >= 2 (32, 64, 128, 256 ...)" if self.family == "generate"
                   else f"a multiple of {size_multiple(self)} and at least {max(32, size_multiple(self))}")
            )


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def size_multiple(cfg: TrainConfig) -> int:
    """H and W must be multiples of this (the product of the network's strides)."""
    if cfg.family == "generate":
        return 8  # and size / 8 must be a power of two (size_fits)
    if cfg.family == "segment":
        return 2**cfg.net.unet_depth
    if cfg.family in ("add", "remove") and cfg.net.generator == "unet":
        return 2**cfg.net.g_unet_downs
    # add/remove/cycle: the ResNet translator
    return 2**cfg.net.g_downs


def size_fits(cfg: TrainConfig) -> bool:
    """Whether cfg.size suits the family's networks (the discriminators need >= 32 px)."""
    if cfg.family == "generate":
        k = cfg.size // 8
        return cfg.size % 8 == 0 and k >= 4 and k & (k - 1) == 0  # 8x8 seed doubled k times
    return cfg.size % size_multiple(cfg) == 0 and cfg.size >= max(32, size_multiple(cfg))


# ----------------------------------------------------------------------------------------------
# Presets


def paper(family: str) -> TrainConfig:
    """The paper's recipe (Furger et al. 2020); for cycle the junyanz CycleGAN reference defaults."""
    _one_of("family", family, FAMILIES)
    if family == "cycle":
        return TrainConfig(
            family, "paper", size=128, batch_size=1, steps=200_000, pool_size=50,
            net=NetConfig(ngf=64, ndf=64, g_norm="instance", d_norm="instance", g_blocks=9, disc="patch"),
            loss=LossConfig(gan="lsgan", lambda_cycle=10.0, lambda_identity=0.5),
            optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, beta1=0.5, decay_start=0.5),
        )
    if family == "segment":
        return TrainConfig(
            family, "paper", size=128, batch_size=16, steps=20_000,
            net=NetConfig(ngf=32, unet_depth=4, g_norm="batch"),
            optim=OptimConfig(lr_g=1e-3, beta1=0.9),
        )
    # the paper's GAN setting: BCE with real labels 0.95, Adam 5e-5 with default betas, BN everywhere
    loss = LossConfig(gan="bce", real_label=0.95)
    optim = OptimConfig(lr_g=5e-5, lr_d=5e-5, beta1=0.9, beta2=0.999)
    net = NetConfig(ngf=64, ndf=64, disc="two_scale", d_dropout=0.3)
    if family == "generate":
        return TrainConfig(family, "paper", size=128, batch_size=32, net=net, loss=loss, optim=optim,
                           data=DataConfig(kinds=KINDS))
    # add / remove: residual translator (4 channels in), relevancy loss, paired L1 where exact
    return TrainConfig(
        family, "paper", size=128, batch_size=16, net=replace(net, g_blocks=6),
        loss=replace(loss, lambda_relevancy=10.0, lambda_l1=100.0), optim=optim,
    )


def modern(family: str) -> TrainConfig:
    """Small-data practice: SN on D, hinge, EMA of G, DiffAugment, TTUR."""
    base = paper(family)
    if family == "segment":
        return replace(base, preset="modern", augment="")
    net = replace(base.net, spectral_norm=True, d_norm="none", g_norm="batch" if family == "generate" else "instance")
    if family == "cycle":
        # Residual generators (Furger et al.'s form for add/remove): InstanceNorm after the first
        # convolution removes each feature map's mean, which for a nearly flat skin patch is its skin
        # tone -- a plain ResNet generator then cannot carry the tone through (measured: at step 3500
        # at 128 px every translation and reconstruction had one average tone). x + tanh(.) keeps it.
        # The discriminators stay the reference's (InstanceNorm PatchGAN, no spectral norm): with
        # LSGAN's 0/1 targets a spectrally normalised D cannot move its outputs far from 0.5 for
        # images this alike (measured: D losses 0.24 = chance after 940 steps at 128 px, and the
        # generators learnt the identity).
        return replace(base, preset="modern", net=replace(base.net, g_residual=True),
                       optim=replace(base.optim, ema_beta=0.999))
    optim = replace(base.optim, lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.99, ema_beta=0.999)
    # generate: a minibatch-stddev channel in D (ProGAN), per kind when there are kinds, so D sees a
    # batch that lacks variety. The generator shipped on 2026-12-01, without it, drew one image per kind
    # (pixel std across z 0.03-0.04 of the data's); see release.py's generate run for the measurements.
    mbstd = 4 if family == "generate" else 0
    return replace(
        base, preset="modern", augment="color,translation,cutout",
        net=replace(net, disc="two_scale" if family == "generate" else "patch", d_dropout=0.0, d_mbstd=mbstd),
        loss=replace(base.loss, gan="hinge", real_label=1.0), optim=optim,
    )


def tiny(family: str) -> TrainConfig:
    """32 px, tiny widths, a few steps: CPU tests of every code path (not a useful model)."""
    base = modern(family)
    net = replace(base.net, z_dim=16, ngf=8, ndf=8, g_blocks=2, unet_depth=3)
    data = replace(base.data, length=8, kinds=("eczema",) if family != "generate" else ("eczema", "hand"))
    return replace(
        base, preset="tiny", size=32, batch_size=4, steps=6, sample_every=3, ckpt_every=3, log_every=1,
        pool_size=4 if family == "cycle" else 0, net=net, data=data,
        optim=replace(base.optim, ema_beta=0.9 if family != "segment" else 0.0),
    )


#: name -> preset function of the family. Explicit registry.
PRESETS = {"paper": paper, "modern": modern, "tiny": tiny}


def preset(name: str, family: str) -> TrainConfig:
    """The preset `name` for `family`; unknown names raise ValueError listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name](family)
