"""Shapes, depth, batch invariance and any-size inputs of every network (tiny widths, CPU)."""

import math

import pytest
import torch
from toy_triplets import one_thread  # noqa: F401 (a fixture)

from dermagan.training.config import NetConfig
from dermagan.training.networks import (
    DCGANGenerator, MaskedTranslator, PatchDiscriminator, ResnetGenerator, TwoScaleDiscriminator, UNet,
    build_discriminator,
)
from dermagan.training.networks.dcgan import SelfAttention
from dermagan.training.networks.layers import norm2d
from dermagan.training.networks.unet_translator import UnetGenerator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_dcgan_generator_depth_follows_size(size):
    g = DCGANGenerator(z_dim=8, size=size, ngf=4, n_labels=3).eval()
    out = g(torch.randn(2, 8), torch.tensor([0, 2]))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1
    n_up = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert 8 * 2**n_up == size


def test_paper_generator_matches_the_papers_size():
    # 128 px, z 100, up-blocks 512, 256, 128, 64: the paper reports ~5.5 M parameters
    g = DCGANGenerator(100, 128, 64)
    widths = [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64]
    assert 4e6 < sum(p.numel() for p in g.parameters()) < 7e6


def test_reference_cyclegan_generator_size():
    assert abs(sum(p.numel() for p in ResnetGenerator(3, 64, 9).parameters()) - 11.38e6) < 0.1e6


def test_unet_translator_is_pix2pix_unet_128():
    # junyanz unet_128 (7 downs, ngf 64, BatchNorm) has 41.83 M parameters with 3 input channels
    g = UnetGenerator(4, 64, 7, "batch")
    assert abs(sum(p.numel() for p in g.parameters()) - 41.83e6) < 0.01e6
    assert sum(isinstance(m, torch.nn.Conv2d) for m in g.modules()) == 7
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 2  # num_downs - 5, as pix2pix


def test_unet_translator_dropout_only_in_training():
    tr = MaskedTranslator(4, 0, 0, "batch", generator="unet", unet_downs=6)
    x, m = torch.rand(2, 3, 64, 64) * 2 - 1, torch.ones(2, 1, 64, 64)
    assert not torch.equal(tr(x, m), tr(x, m))  # train mode: dropout noise
    tr.eval()
    assert torch.equal(tr(x, m), tr(x, m)) and tr(x, m).abs().max() <= 1


def test_two_scale_discriminator_one_logit_per_image():
    d = TwoScaleDiscriminator(4, 32, 4, n_labels=2, dropout=0.3, norm="batch", sn=True)
    assert d(torch.randn(3, 4, 32, 32), torch.tensor([0, 1, 1])).shape == (3, 1)


def test_kind_conditional_two_scale_discriminator_starts_with_small_logits():
    """The paper preset's projection D (no spectral norm) at 128 px: its per-kind term must not swamp
    the logits at initialisation (with N(0, 1) embeddings their std was ~44 and BCE losses 40-80)."""
    torch.manual_seed(0)
    x, kinds = torch.rand(16, 3, 128, 128) * 2 - 1, torch.arange(16) % 3
    d = TwoScaleDiscriminator(3, 128, 32, n_labels=3, dropout=0.3, norm="batch").train()
    with torch.no_grad():
        conditional, plain = d(x, kinds).std().item(), d(x, None).std().item()
    assert conditional < 3 * plain and conditional < 5, (conditional, plain)


def test_spectral_norm_discriminator_keeps_its_embedding_init():
    """With spectral norm the embedding's scale cancels, so it keeps init_weights' N(0, 1): the modern
    preset's networks (and the shipped generator's recipe) draw exactly what they drew before."""
    torch.manual_seed(0)
    d = TwoScaleDiscriminator(3, 64, 8, n_labels=3, dropout=0.0, norm="none", sn=True)
    weight = d.scale_1x.embed.parametrizations.weight.original
    assert 0.9 < weight.std().item() < 1.1


def test_minibatch_stddev_sees_a_collapsed_group_and_never_mixes_groups():
    from dermagan.training.networks.dcgan import minibatch_stddev

    h = torch.randn(8, 5, 2, 2)
    h[4:] = h[4]  # the second group of 4 is one sample repeated: a collapsed generator
    out = minibatch_stddev(h, 4)
    assert out.shape == (8, 6, 2, 2) and torch.equal(out[:, :5], h)
    assert (out[:4, 5] > 0.5).all() and (out[4:, 5] < 1e-3).all()
    h2 = h.clone()
    h2[:4] = torch.randn(4, 5, 2, 2)
    assert torch.equal(minibatch_stddev(h2, 4)[4:], out[4:])  # the first group does not leak into the second
    assert minibatch_stddev(h[:3], 4).shape == (3, 6, 2, 2)  # a batch the group does not divide: gcd


def test_minibatch_stddev_with_labels_sees_one_image_per_kind():
    from dermagan.training.networks.dcgan import minibatch_stddev

    label = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    h = torch.randn(8, 5, 2, 2)
    per_kind = h.clone()
    for k in range(3):  # a generator that draws one image per kind: the kinds still differ
        per_kind[label == k] = h[k].clone()
    assert (minibatch_stddev(per_kind, 4)[:, 5] > 0.3).all()  # groups of mixed kinds do not see it
    out = minibatch_stddev(per_kind, 4, label, 3)
    assert torch.equal(out[:, :5], per_kind) and (out[:, 5] < 1e-3).all()
    diverse = minibatch_stddev(h, 4, label, 3)[:, 5, 0, 0]
    assert (diverse > 0.3).all() and diverse[0] == diverse[3] == diverse[6]  # one value per kind


def test_discriminator_with_minibatch_stddev_tells_a_collapsed_batch_apart():
    torch.manual_seed(0)
    d = TwoScaleDiscriminator(3, 32, 4, n_labels=2, dropout=0.0, norm="none", sn=True, mbstd=4).eval()
    diverse = torch.rand(4, 3, 32, 32) * 2 - 1
    collapsed = diverse[:1].expand(4, -1, -1, -1)
    label = torch.tensor([0, 1, 0, 1])
    # the same first image gets a different logit when its group is a copy of it: D sees the group
    assert not torch.allclose(d(diverse, label)[0], d(collapsed, label)[0])
    plain = TwoScaleDiscriminator(3, 32, 4, n_labels=2, dropout=0.0, norm="none", sn=True).eval()  # eval: SN fixed
    assert torch.allclose(plain(diverse, label)[0], plain(collapsed, label)[0])


def test_packed_discriminator_judges_pairs_and_sees_pairs_that_agree():
    torch.manual_seed(0)
    d = TwoScaleDiscriminator(3, 32, 4, dropout=0.0, norm="none", sn=True, pack=2).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert d(x).shape == (2, 1)  # one logit a pair
    # a pair's logit depends on both of its samples: a pair of copies (a generator that ignores its noise in
    # some property) is judged apart from the same first sample beside a different one
    twins = torch.stack([x[0], x[0], x[2], x[3]])
    assert not torch.allclose(d(x)[0], d(twins)[0]) and torch.allclose(d(x)[1], d(twins)[1])
    assert torch.allclose(d(x), torch.cat([d(x[:2]), d(x[2:])]))  # pairs are judged on their own
    with pytest.raises(ValueError, match="a batch of 3 cannot be judged in packs of 2"):
        d(x[:3])
    with pytest.raises(ValueError, match="pack must be >= 1"):
        TwoScaleDiscriminator(3, 32, 4, pack=0)


def test_colour_stddev_sees_one_hue_for_every_image_whatever_their_brightness():
    from dermagan.training.networks.dcgan import CHROMA_STD_FLOOR, colour_stddev

    torch.manual_seed(0)
    grey = torch.rand(8, 1, 1, 1) * 1.6 - 0.8  # backgrounds of any brightness...
    hues = torch.randn(8, 3, 1, 1) * 0.06  # ...each faintly tinted, as the renderer draws them
    tinted = (grey + hues).expand(8, 3, 16, 16)
    one_hue = (grey + hues[:1]).expand(8, 3, 16, 16)  # the shipped hand generator: one hue for all
    out = colour_stddev(tinted, (2, 2), 4)
    assert out.shape == (8, 3, 2, 2)
    assert out.mean() > -3.2 and colour_stddev(one_hue, (2, 2), 4).max() < math.log(CHROMA_STD_FLOOR) + 0.01
    # brightness alone is no colour: greys of every level read as no spread at all
    assert colour_stddev(grey.expand(8, 3, 16, 16), (2, 2), 4).max() < math.log(CHROMA_STD_FLOOR) + 0.01
    # sets as the minibatch stddev's: groups never mix, and with labels a kind is its own set
    changed = tinted.clone()
    changed[:4] = torch.randn(4, 3, 1, 1).expand(4, 3, 16, 16)
    assert torch.equal(colour_stddev(changed, (2, 2), 4)[4:], out[4:])
    label = torch.tensor([0, 1] * 4)
    per_kind = torch.where(label.view(8, 1, 1, 1) == 0, one_hue, tinted)
    by_kind = colour_stddev(per_kind, (2, 2), 4, label, 2)
    assert (by_kind[label == 0] < math.log(CHROMA_STD_FLOOR) + 0.01).all() and (by_kind[label == 1] > -3.5).all()
    # packed inputs: each image of a pack has its own chroma
    assert colour_stddev(torch.cat([tinted, one_hue], 1), (2, 2), 4).shape == (8, 6, 2, 2)


def test_discriminator_with_the_colour_stddev_judges_hues_across_its_sets():
    torch.manual_seed(0)
    shape = torch.rand(1, 3, 64, 64) * 0.4 - 0.2
    tinted = shape + torch.randn(4, 3, 1, 1) * 0.06
    one_hue = tinted[:1].expand(4, -1, -1, -1)  # every image as the first one, hue and all
    for cells in (1, 2, 8):  # the image's mean hue; 2 x 2 cells; the branch's whole last grid (4 x 4 and 2 x 2)
        d = TwoScaleDiscriminator(3, 64, 4, dropout=0.0, norm="none", sn=True, mbstd=4, mbstd_colour=cells).eval()
        assert d(tinted).shape == (4, 1) and not torch.allclose(d(tinted)[0], d(one_hue)[0])
        assert d.scale_1x.fc.parametrizations.weight.original.shape[1] == (32 + 1 + 3) * 4 * 4
    with pytest.raises(ValueError, match="the colour stddev needs the minibatch stddev's groups"):
        TwoScaleDiscriminator(3, 32, 4, mbstd=0, mbstd_colour=1)


def test_self_attention_starts_as_the_identity_and_relates_distant_places_per_sample():
    torch.manual_seed(0)
    block = SelfAttention(16).eval()
    x = torch.randn(4, 16, 8, 8)
    assert torch.equal(block(x), x)  # gamma 0: the block begins as the identity
    with torch.no_grad():
        block.gamma.fill_(1.0)
    out = block(x)
    assert not torch.allclose(out, x)
    # one corner changes every place of its own image (a convolution's window would reach its neighbours only),
    # and nothing of the other images in the batch
    moved = x.clone()
    moved[0, :, 0, 0] += 3.0
    diff = (block(moved) - out).abs().sum(1)  # (B, H, W)
    assert (diff[0, 4:, 4:] > 0).all() and torch.equal(block(moved)[1:], out[1:])
    loss = block(x).square().mean()
    loss.backward()
    assert block.gamma.grad is not None and block.query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size,at", [(32, 16), (128, 32), (128, 64)])
def test_attention_sits_at_its_size_in_the_generator_and_each_discriminator_branch_that_has_it(size, at):
    g = DCGANGenerator(z_dim=8, size=size, ngf=4, attention=at).eval()
    d = TwoScaleDiscriminator(3, size, 4, dropout=0.0, norm="none", sn=True, mbstd=2, attention=at)
    seen: list[tuple[str, int]] = []
    for name, net in (("G", g), ("D", d)):
        for m in net.modules():
            if isinstance(m, SelfAttention):
                m.register_forward_hook(lambda m, args, out, name=name: seen.append((name, args[0].shape[-1])))
    assert g(torch.randn(2, 8)).shape == (2, 3, size, size) and d(torch.randn(2, 3, size, size)).shape == (2, 1)
    # the full-size branch always has `at`; the half-size one where its maps reach it
    assert seen == [("G", at), ("D", at)] + ([("D", at)] if at <= size // 4 else [])
    # spectral norm on the discriminator's attention, as on its other layers; none in the generator (BatchNorm)
    assert any(hasattr(m.query, "parametrizations") for m in d.modules() if isinstance(m, SelfAttention))
    assert not any(hasattr(m.query, "parametrizations") for m in g.modules() if isinstance(m, SelfAttention))
    # off: the networks as they were (same parameters, drawn from the same seed)
    torch.manual_seed(1)
    plain = DCGANGenerator(z_dim=8, size=size, ngf=4).state_dict()
    torch.manual_seed(1)
    off = DCGANGenerator(z_dim=8, size=size, ngf=4, attention=0).state_dict()
    assert plain.keys() == off.keys() and all(torch.equal(plain[k], off[k]) for k in plain)
    with pytest.raises(ValueError, match=f"attention at 8 px: a {size} px generator's feature maps that take it"):
        DCGANGenerator(z_dim=8, size=size, ngf=4, attention=8)
    with pytest.raises(ValueError, match="attention at 8 px"):
        TwoScaleDiscriminator(3, size, 4, attention=8)


def test_patch_discriminator_is_fully_convolutional():
    d = PatchDiscriminator(3, 4, n_layers=3)
    assert d(torch.randn(1, 3, 64, 64)).shape == (1, 1, 6, 6)
    assert d(torch.randn(1, 3, 64, 96)).shape == (1, 1, 6, 10)


def test_registry_rejects_unknown_discriminator():
    with pytest.raises(ValueError, match="two_scale, patch"):
        build_discriminator(NetConfig(disc="stylegan"), 3, 32)


@pytest.mark.parametrize("h,w", [(32, 32), (48, 80)])
def test_fully_convolutional_networks_take_any_multiple_of_their_stride(h, w):
    tr = MaskedTranslator(ngf=4, n_blocks=1, n_downs=2, norm="batch").eval()
    assert tr(torch.rand(1, 3, h, w) * 2 - 1, torch.zeros(1, 1, h, w)).shape == (1, 3, h, w)
    assert ResnetGenerator(3, 4, 1, 2).eval()(torch.zeros(1, 3, h, w)).shape == (1, 3, h, w)
    assert UNet(3, 1, 4, depth=3).eval()(torch.zeros(1, 3, h, w)).shape == (1, 1, h, w)
    unet_tr = MaskedTranslator(4, 0, 0, "batch", generator="unet", unet_downs=4).eval()
    assert unet_tr(torch.rand(1, 3, h, w) * 2 - 1, torch.zeros(1, 1, h, w)).shape == (1, 3, h, w)


def test_residual_translator_keeps_output_in_range():
    tr = MaskedTranslator(ngf=4, n_blocks=1, n_downs=2, norm="instance")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tr(x, torch.ones(2, 1, 32, 32))
    assert out.abs().max() <= 1


@pytest.mark.parametrize("make", [
    lambda: (DCGANGenerator(8, 32, 4, n_labels=2), lambda b: (torch.randn(b, 8, generator=torch.Generator().manual_seed(0)), torch.arange(b) % 2)),
    lambda: (MaskedTranslator(4, 1, 2, "batch"), lambda b: (torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.ones(b, 1, 32, 32))),
    lambda: (MaskedTranslator(4, 0, 0, "batch", "unet", 5), lambda b: (torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.ones(b, 1, 32, 32))),
    lambda: (ResnetGenerator(3, 4, 1, 2, "instance"), lambda b: (torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)),
    lambda: (UNet(3, 1, 4, 3, "batch"), lambda b: (torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)),
], ids=["dcgan", "masked", "masked-unet", "resnet", "unet"])
def test_eval_mode_is_batch_invariant(make):
    net, inputs = make()
    net.train()
    for _ in range(2):  # move the BN running statistics away from their init
        net(*inputs(4))
    net.eval()
    with torch.no_grad():
        alone = net(*[t[:1] for t in inputs(3)])
        in_batch = net(*inputs(3))[:1]
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=0)


def test_instance_norm_generator_cannot_see_a_flat_patchs_tone_the_residual_one_keeps_it():
    """Why the modern CycleGAN is residual: InstanceNorm after the first conv removes each feature
    map's mean, so a plain ResNet generator maps one skin texture on a light and on a dark tone to the
    same output (the tone is a constant offset of the input)."""
    from dermagan.training.config import modern, paper

    torch.manual_seed(0)
    texture = 0.1 * torch.randn(1, 3, 32, 32)
    light, dark = 0.6 + texture, -0.4 + texture
    plain = ResnetGenerator(3, ngf=8, n_blocks=2, norm="instance").eval()
    residual = ResnetGenerator(3, ngf=8, n_blocks=2, norm="instance", residual=True).eval()
    with torch.no_grad():
        assert torch.allclose(plain(light), plain(dark), atol=1e-4)
        assert (residual(light) - residual(dark)).mean().item() > 0.9  # the tones are carried through
    assert modern("cycle").net.g_residual and not paper("cycle").net.g_residual  # paper = the junyanz reference
    assert not modern("cycle").net.spectral_norm and modern("cycle").net.d_norm == "instance"  # LSGAN needs it


@pytest.mark.parametrize("generator", ["resnet", "unet"])
def test_inpainting_translator_cannot_see_inside_the_mask(generator):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tr = MaskedTranslator(4, 1, 2, "instance", generator, 5, inpaint=True).eval()
    plain = MaskedTranslator(4, 1, 2, "instance", generator, 5).eval()
    plain.load_state_dict(tr.state_dict())
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    other = image.clone()
    other[..., 8:24, 8:24] = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1  # other lesion, same surroundings
    with torch.no_grad():
        assert torch.equal(tr(image, mask), tr(other, mask))
        assert not torch.allclose(plain(image, mask), plain(other, mask))  # without it, the inside leaks


def test_the_generators_seed_is_as_wide_as_asked_and_ngf_wide_by_default():
    torch.manual_seed(0)
    wide = DCGANGenerator(z_dim=8, size=32, ngf=4, seed_ch=16)
    assert wide.fc.out_features == 8 * 8 * 16 and wide.body[0].num_features == 16
    assert wide.body[2].in_channels == 16 and wide(torch.randn(2, 8)).shape == (2, 3, 32, 32)
    # 0 (the default): the paper's seed, ngf channels -- the network as it was, parameter for parameter
    torch.manual_seed(1)
    default = DCGANGenerator(z_dim=8, size=32, ngf=4, seed_ch=0)
    torch.manual_seed(1)
    before = DCGANGenerator(z_dim=8, size=32, ngf=4)
    assert default.fc.out_features == 8 * 8 * 4
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), before.state_dict().values()))


def _graph_node_list(out: torch.Tensor) -> list[str]:
    """The type name of every node in `out`'s backward graph, each node once."""
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack += [f for f, _ in node.next_functions]
    return names


def _graph_nodes(out: torch.Tensor) -> set[str]:
    return set(_graph_node_list(out))


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_no_in_place_op_rewrites_a_norms_view(norm):
    """InstanceNorm returns a view of batch_norm's output: an in-place ReLU on it makes autograd rebase the view's
    history (CopySlices, AsStrided), copies in every backward -- with ReLU(inplace=True) the remove translator's
    steps ran 1.06x slower (bench/results/train-2026-12-07c-xeon-amx-relu.md). Gradients are the same either way."""
    image, mask = torch.randn(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
    nets = [ResnetGenerator(3, 8, 2, 2, norm), UNet(3, 1, 8, 2, norm), MaskedTranslator(8, 2, 2, norm),
            MaskedTranslator(8, 2, 2, norm, generator="unet", unet_downs=5)]
    for net in nets:  # instance_norm's path (a GPU's training passes, and every evaluation); with grad, as in training
        net.eval()
    outs = [nets[0](image), nets[1](image), nets[2](image, mask), nets[3](image, mask)]
    for net, out in zip(nets, outs):
        assert not _graph_nodes(out) & {"CopySlices", "AsStridedBackward0"}, type(net).__name__


def _random_affine_instance_norm(channels: int) -> torch.nn.Module:
    """norm2d's InstanceNorm with a scale and shift far from the identity, so that gradients reach both."""
    norm = norm2d("instance", channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    return norm


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (3, 16, 8, 12)])
def test_instance_norm_trains_as_group_norm_with_instance_norms_values_and_gradients(shape):
    """layers.InstanceNorm2d: on a CPU its training pass is GroupNorm with a group per channel (one fused kernel each
    way), evaluation and export stay instance_norm; both are the same normalisation, values and gradients."""
    from dermagan.training.networks.layers import InstanceNorm2d

    norm = _random_affine_instance_norm(shape[1])
    assert isinstance(norm, InstanceNorm2d)
    x = (torch.randn(*shape) * 3 + 1).requires_grad_()
    upstream = torch.randn(*shape)
    norm.train()
    out = norm(x)
    grads = torch.autograd.grad(out, (x, norm.weight, norm.bias), upstream)
    ref = torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    ref_grads = torch.autograd.grad(ref, (x, norm.weight, norm.bias), upstream)
    assert "NativeGroupNormBackward0" in _graph_nodes(out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    norm.eval()
    assert "NativeGroupNormBackward0" not in _graph_nodes(norm(x))
    torch.testing.assert_close(norm(x), ref, rtol=0, atol=1e-5)
    norm.train()  # a channels_last input (bf16 training on a CPU): normalised as an NCHW copy, given back channels_last
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_cl = norm(x_cl)
    assert shape[2] * shape[3] == 1 or out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out_cl, out)
    for g, r in zip(torch.autograd.grad(out_cl, (x_cl, norm.weight, norm.bias), upstream), grads):
        assert torch.equal(g, r)


def test_reflection_padding_keeps_bf16_activations_in_bf16_under_a_cpu_autocast():
    """layers.ReflectionPad2d: CPU autocast runs reflection_pad2d in float32, so a bf16 activation was cast up and
    down again around every pad; in its own dtype the ResNet translator's forward is bitwise what it was, its graph
    holds two casts fewer a pad (the weights' casts stay), and its gradients agree to bf16's rounding."""
    import copy

    from dermagan.training.networks.layers import ReflectionPad2d

    torch.manual_seed(0)
    new = ResnetGenerator(3, 8, 2, 2, "instance")
    old = copy.deepcopy(new)
    pads = [n for n, m in old.named_modules() if isinstance(m, ReflectionPad2d)]
    assert len(pads) == 6  # the stem, two in each of the 2 blocks, the head
    for name in pads:
        parent, _, leaf = name.rpartition(".")
        old.get_submodule(parent)._modules[leaf] = torch.nn.ReflectionPad2d(old.get_submodule(name).padding)
    fp32 = copy.deepcopy(old)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    outs, grads = [], []
    for net in (new, old):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.float().square().sum(), list(net.parameters())))
    assert torch.equal(outs[0], outs[1])
    casts = [_graph_node_list(out).count("ToCopyBackward0") for out in outs]
    assert casts[1] - casts[0] == 2 * (len(pads) - 1), casts  # each pad's cast up and down, but the stem's (on float32)
    # gradients: as far from float32's as bf16's were (not the convolutions' biases before an InstanceNorm, whose
    # gradient is 0 in exact arithmetic and rounding noise in any precision)
    exact = torch.autograd.grad(fp32(x).square().sum(), list(fp32.parameters()))
    errors = [[(g - e).norm().item() / e.norm().item() for g, e in zip(gs, exact) if e.norm() > 1e-3] for gs in grads]
    assert len(errors[0]) >= 20 and sum(errors[0]) <= 1.05 * sum(errors[1]), errors
    pad = ReflectionPad2d(1)  # without autocast: nn.ReflectionPad2d, also for the ONNX export
    torch.testing.assert_close(pad(x), torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_large_channels_last_image_is_normalised_alone_with_the_same_values_and_gradients(dtype):
    """layers.InstanceNorm2d on a channels_last batch of large images (bf16 training on a CPU): each image through
    batch_norm on its own -- the same normalisation, output still channels_last; gradients, and the gradients of a
    gradient penalty (R1 through an InstanceNorm critic: a double backward), as the NCHW path's."""
    from dermagan.training.networks.layers import PER_IMAGE_MIN

    norm = _random_affine_instance_norm(32)
    x0 = (torch.randn(2, 32, 64, 64) * 2 + 1).to(dtype)
    assert x0[0].numel() >= PER_IMAGE_MIN
    upstream = torch.randn(2, 32, 64, 64).to(dtype)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = x0.contiguous(memory_format=layout).requires_grad_()
        out = norm(x)
        assert out.is_contiguous(memory_format=layout)
        (g,) = torch.autograd.grad((out * upstream).float().sum(), x, create_graph=True)
        penalty = g.float().square().sum()
        results.append([out, g, penalty, *torch.autograd.grad(penalty, (x, norm.weight))])  # (the bias drops out)
    assert "NativeBatchNormBackward0" in _graph_nodes(results[1][0])
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    for nchw, cl in zip(*results):
        torch.testing.assert_close(cl.float(), nchw.float(), **tol)


@pytest.mark.parametrize("out_ch,k,pad,layout", [(3, 7, 0, "nchw"), (3, 5, 2, "nchw"), (1, 4, 1, "nchw"),
                                                 (1, 1, 0, "nchw"), (3, 7, 0, "cl"), (1, 4, 1, "cl")])
def test_a_few_channel_convolution_trains_as_a_transposed_one_with_the_convolutions_values_and_gradients(
        out_ch, k, pad, layout):
    from dermagan.training.networks.layers import Conv2d

    torch.manual_seed(0)
    layer = Conv2d(8, out_ch, k, padding=pad).double().train()
    x = torch.randn(2, 8, 13, 11, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(torch.nn.functional.conv2d(x, layer.weight, padding=pad))
    ours = layer(x1)
    ours.backward(g)
    grads = [x1.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
    layer.zero_grad()
    ref = torch.nn.functional.conv2d(x2, layer.weight, layer.bias, padding=pad)
    ref.backward(g)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, [x2.grad, layer.weight.grad, layer.bias.grad]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    # the transposed form is the training path only: evaluation and export run nn.Conv2d's own forward
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=pad))


def test_the_few_channel_convolution_keeps_bf16_under_a_cpu_autocast_and_its_spectral_norm():
    from dermagan.training.networks.layers import Conv2d, maybe_sn

    torch.manual_seed(0)
    layer = maybe_sn(Conv2d(16, 1, 4, 1, 1), True).train()
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 1, 11, 11)
    y.float().sum().backward()
    assert layer.parametrizations.weight.original.grad is not None and x.grad is not None
    layer.eval()  # the power iteration's u and v as the training forward left them: the same normalised weight
    ref = torch.nn.functional.conv2d(x.detach(), layer.weight.detach(), layer.bias.detach(), padding=1)
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02)
