"""Small building blocks shared by the networks: normalisation and spectral-norm wrappers."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm (DCGAN/pix2pix), InstanceNorm (CycleGAN) or nothing.

    InstanceNorm has no running statistics here (as in junyanz), so train and eval agree and the
    output of one image never depends on the rest of its batch.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: batch, instance, none")


#: values per image from which InstanceNorm2d normalises a channels_last batch (of 32 channels or more) image by
#: image with batch_norm rather than as an NCHW copy: forward + backward in bf16 on the AMX Xeon, (6, 128, 32, 32)
#: 1.0 vs 2.0 ms, (8, 32, 64, 64) 1.25 vs 1.61 ms, but (8, 32, 32, 32) 0.55 vs 0.40 ms, and with 16 channels
#: batch_norm's channels_last backward is slow: (8, 16, 64, 64) 0.81-0.82 vs 0.78-0.89 ms, 0.48 ms a (1, 16, 64, 64) image
#: in the adder's step (bench/results/train-2026-12-07j-xeon-amx-instancenorm-cl.md)
PER_IMAGE_MIN = 1 << 16


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (affine, no running statistics) whose training passes on a CPU run as a GroupNorm with one
    group per channel: the same statistics and affine, in one fused kernel each way -- forward + backward 2.2-2.5x
    faster than instance_norm's batch_norm over a reshaped view with its weight repeated per image (CPU, fp32,
    (1-3, 64-256, 16-64 px); bench/results/train-2026-12-07d-xeon-amx-instancenorm.md). Evaluation and export keep
    instance_norm (ONNX InstanceNormalization); outputs agree within float rounding (~1e-6). Built with running
    statistics (norm2d never does) it stays instance_norm, which updates them. A channels_last input stays
    channels_last: a large image is normalised by batch_norm on its own, a small batch as an NCHW copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.track_running_stats and x.device.type == "cpu" and x.dim() == 4:
            if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                # a channels_last activation (bf16 training on a CPU, loop._to_layout): group_norm's channels_last
                # backward with a group per channel ran 20-30x its NCHW time in bf16
                if x[0].numel() >= PER_IMAGE_MIN and x.shape[1] >= 32 and x.shape[2] * x.shape[3] > 1:
                    # each image alone through batch_norm (training statistics over its H x W: its instance norm),
                    # whose channels_last kernels are fast; ~30 us an image, so for large images only
                    return torch.cat([nn.functional.batch_norm(xi, None, None, self.weight, self.bias, True, 0.0,
                                                               self.eps) for xi in x.split(1)])
                # small ones: normalise an NCHW copy (two transposes each way, cheap at these sizes)
                out = nn.functional.group_norm(x.contiguous(), self.num_features, self.weight, self.bias, self.eps)
                return out.contiguous(memory_format=torch.channels_last)
            return nn.functional.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


class ReflectionPad2d(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that pads in its input's own dtype under a CPU autocast. CPU autocast runs
    reflection_pad2d in float32 (its fp32 list), so in bf16 training each padded activation was cast up, padded
    and cast down again by the next convolution -- whole-activation copies forward and backward in every ResNet
    block, for an op that only moves values (exact in any dtype). The forward is bitwise the same; the backward
    sums the reflected borders' gradients in bf16 instead of float32 before the same rounding to bf16. The CPU
    release's CycleGAN and remover steps (bf16, 128 px) ran 1.03-1.06x faster (bench/results/
    train-2026-12-07h-xeon-amx-reflection-pad.md). Without autocast (float32, evaluation, export) it is
    nn.ReflectionPad2d: ONNX Pad mode=reflect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return nn.functional.pad(x, self.padding, mode="reflect")
        return super().forward(x)


#: output channels up to which a stride-1 convolution trains through conv_transpose2d on a CPU (Conv2d below)
FEW_OUT = 4


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose training passes on a CPU, for a stride-1 convolution to a few channels (a generator's last
    layer to RGB, a PatchGAN's to one logit), run as the same correlation written as a transposed convolution of
    the flipped kernel: conv2d(x, w, padding=p) == conv_transpose2d(x, flip(w).T, padding=k - 1 - p). The forward
    costs about the same; the backward is 1.4-4.5x faster: oneDNN computes the gradients of a convolution with 1-3
    output channels slowly (as far as we can tell, its kernels vectorise over output channels) and those of the
    transposed form as ordinary ones (AMD EPYC with AVX-512, 2026-12-08: the ResNet generator's last 7x7 to 3
    channels at 64 px, batch 1, fp32 backward 4.6 -> 1.3 ms; DCGAN's last 5x5 at 128 px, batch 16, 105 -> 50 ms
    fp32, 22 -> 11 ms bf16; a PatchGAN's last 4x4 to 1 channel 5.4 -> 1.5 ms; whole steps 1-3 % faster;
    bench/results/train-2026-12-08c-amd-avx512-few-out-conv.md). Same parameters and state_dict keys (spectral
    norm's parametrisation included); evaluation, export (ONNX Conv) and GPUs keep nn.Conv2d's forward. Outputs and
    gradients agree to float rounding (tests/training/test_networks.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.device.type == "cpu" and torch.is_grad_enabled() and self.out_channels <= FEW_OUT
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            pad = (self.kernel_size[0] - 1 - self.padding[0], self.kernel_size[1] - 1 - self.padding[1])
            if min(pad) >= 0:
                return nn.functional.conv_transpose2d(x, self.weight.flip(2, 3).transpose(0, 1), self.bias,
                                                      padding=pad)
        return super().forward(x)


def maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al., "Spectral Normalization for GANs", ICLR 2018)."""
    return spectral_norm(layer) if enabled else layer


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, 0.02) conv/linear weights and N(1, 0.02) norm scales (DCGAN, Radford et al. 2016)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = getattr(m.parametrizations, "weight").original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(cast(torch.Tensor, w), 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 1.0)
