"""Losses, DiffAugment, EMA, LR schedule and image pool: small pure functions, tiny tensors."""

import random

import pytest
import torch

from dermagan.training import losses
from dermagan.training.augment import diff_augment, rand_color
from dermagan.training.ema import make_ema, update_ema
from dermagan.training.families import ImagePool
from dermagan.training.loop import lr_factor, random_flip


@pytest.mark.parametrize("kind", ["bce", "hinge", "lsgan"])
def test_d_loss_prefers_a_discriminator_that_separates(kind):
    good = losses.d_loss(kind, torch.full((4, 1), 3.0), torch.full((4, 1), -3.0))
    bad = losses.d_loss(kind, torch.full((4, 1), -3.0), torch.full((4, 1), 3.0))
    assert good < bad


@pytest.mark.parametrize("kind", ["bce", "hinge", "lsgan"])
def test_g_loss_falls_when_fakes_look_real(kind):
    assert losses.g_loss(kind, torch.full((4, 1), 1.0)) < losses.g_loss(kind, torch.full((4, 1), -1.0))


def test_label_smoothing_changes_the_real_target():
    logits = torch.full((8, 1), 5.0)
    assert losses.d_loss("bce", logits, -logits, 0.95) > losses.d_loss("bce", logits, -logits, 1.0)


def test_unknown_gan_loss_lists_valid_names():
    with pytest.raises(ValueError, match="bce, hinge, lsgan"):
        losses.g_loss("wgan", torch.zeros(1))


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    w = torch.tensor([1.0, 2.0, 2.0])
    x = torch.randn(5, 3, requires_grad=True)
    assert losses.r1_penalty(x @ w, x).item() == pytest.approx(9.0)


def test_r1_penalty_under_fp16_is_taken_of_the_scaled_logits():
    """A critic whose input gradients are ~1e-10: in float16 they flush to zero unless the backward carries the
    GradScaler's scale, after which the penalty matches float32's."""
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 1, 3))
    with torch.no_grad():
        d[2].weight.mul_(1e-8)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    exact = losses.r1_penalty(d(x), x).item()
    with torch.autocast("cpu", dtype=torch.float16):
        logits = d(x)
    assert losses.r1_penalty(logits, x).item() < 0.5 * exact  # unscaled: mostly underflow
    assert losses.r1_penalty(logits, x, scale=2.0**15).item() == pytest.approx(exact, rel=0.05)


def test_r1_is_taken_through_the_augmentation_with_respect_to_the_reals():
    """A linear critic's input gradient is its weight w; behind a zero-filled translation, the gradient with
    respect to the reals loses the part of w shifted out of the image (StyleGAN2-ADA's R1), so the penalty falls
    under ||w||^2 -- with respect to the augmented images it would be ||w||^2 exactly."""
    from dataclasses import replace

    from dermagan.training.config import tiny
    from dermagan.training.families import get_family

    cfg = tiny("generate")
    cfg = replace(cfg, augment="translation", loss=replace(cfg.loss, r1_gamma=1.0, r1_every=1))
    w = torch.randn(1, 3, 32, 32)

    class Linear(torch.nn.Module):
        def forward(self, x, label=None):
            return (x * w).flatten(1).sum(1, keepdim=True)

    torch.manual_seed(3)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    _, stats = get_family(cfg, ["hand"])._d_adv(Linear(), real, fake, step=0)
    assert 0.5 * w.pow(2).sum() < stats["r1"] < 0.999 * w.pow(2).sum()
    cfg = replace(cfg, augment="")
    _, stats = get_family(cfg, ["hand"])._d_adv(Linear(), real, fake, step=0)
    assert stats["r1"].item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_relevancy_loss_sees_only_pixels_outside_the_mask():
    src = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    out = src.clone()
    out[..., :2, :] = 1.0  # changed only inside the mask
    assert losses.relevancy_loss(out, src, mask).item() == 0.0
    out[..., 3, 3] = 1.0  # one changed pixel outside (8 outside pixels x 3 channels)
    assert losses.relevancy_loss(out, src, mask).item() == pytest.approx(3 / 24)


def test_dice_and_iou_are_perfect_on_a_perfect_prediction():
    target = torch.zeros(2, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 50
    assert losses.dice_loss(logits, target).item() < 1e-3
    assert losses.binary_iou(logits, target) == 1.0
    assert losses.binary_iou(-logits, target) == 0.0


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_keeps_shape_and_gradient(policy):
    x = torch.rand(3, 4, 16, 16, requires_grad=True)
    y = diff_augment(x, policy)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_each_sample_with_zero_fill_and_its_gradient_shifts_back():
    """rand_translation against the definition: sample i moved by its drawn (tx, ty) -- out[r, c] = in[r + tx, c + ty]
    where that is inside the image, else 0 -- and d out / d in is the same map, transposed."""
    from dermagan.training.augment import rand_translation

    b, c, h, w = 3, 2, 9, 7
    x = torch.randn(b, c, h, w, requires_grad=True)
    g = torch.randn(b, c, h, w)
    torch.manual_seed(11)
    y = rand_translation(x)
    (y * g).sum().backward()
    torch.manual_seed(11)  # the same draws, as the op makes them
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    tx, ty = torch.randint(-sh, sh + 1, size=[b, 1, 1]).flatten(), torch.randint(-sw, sw + 1, size=[b, 1, 1]).flatten()
    want, grad = torch.zeros(b, c, h, w), torch.zeros(b, c, h, w)
    for i in range(b):
        for r in range(h):
            for col in range(w):
                rr, cc = r + int(tx[i]), col + int(ty[i])
                if 0 <= rr < h and 0 <= cc < w:
                    want[i, :, r, col] = x[i, :, rr, cc].detach()
                    grad[i, :, rr, cc] = g[i, :, r, col]
    assert torch.equal(y.detach(), want) and torch.equal(x.grad, grad)
    assert (tx != 0).any() or (ty != 0).any()  # (the seed moves something)


def test_colour_augment_leaves_the_mask_channel_alone():
    x = torch.cat([torch.rand(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()], 1)
    assert torch.equal(rand_color(x)[:, 3:], x[:, 3:])


def test_diff_augment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="color, translation, cutout"):
        diff_augment(torch.zeros(1, 3, 8, 8), "color,rotate")


def test_ema_moves_toward_the_model():
    model = torch.nn.Linear(2, 1)
    ema = make_ema(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.weight.clone()
    update_ema(ema, model, beta=0.75)
    torch.testing.assert_close(ema.weight, before + 0.25)
    assert not ema.training and not ema.weight.requires_grad


def test_ema_update_is_the_per_tensor_lerp_bit_for_bit_and_copies_the_buffers():
    """The multi-tensor update gives exactly what lerp_ tensor by tensor gave (a resumed run stays bitwise)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
    ema = make_ema(model)
    expected = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 3, 9, 9))  # new BatchNorm running statistics
    for e, p in zip(expected, model.parameters()):
        e.lerp_(p.detach(), 1.0 - 0.999)
    update_ema(ema, model, beta=0.999)
    for e, got in zip(expected, ema.parameters()):
        assert torch.equal(e, got)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        assert torch.equal(b_ema, b)


def test_standing_statistics_describe_the_ema_weights_not_the_trained_ones():
    from dermagan.training.ema import standing_statistics

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    for _ in range(50):  # the trained network's running statistics, for its own weights
        model(torch.randn(64, 4))
    ema = make_ema(model)
    with torch.no_grad():
        ema[0].weight.mul_(3.0)  # the average drifted from the trained weights
    x = torch.randn(512, 4, generator=torch.Generator().manual_seed(1))
    rng = torch.get_rng_state()
    assert standing_statistics(ema, lambda i: (x[i * 128:(i + 1) * 128],), batches=4)
    assert torch.equal(torch.get_rng_state(), rng) and not ema.training
    h = ema[0](x)
    torch.testing.assert_close(ema[1].running_mean, h.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ema[1].running_var, h.view(4, 128, 8).var(1).mean(0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ema[1].running_var, model[1].running_var, rtol=0.5)
    assert ema[1].momentum == model[1].momentum
    assert not standing_statistics(torch.nn.Linear(2, 2), lambda i: (torch.zeros(1, 2),), batches=1)


def test_lr_factor_is_constant_then_linear_to_zero():
    assert lr_factor(0, 100, 0.5) == 1.0
    assert lr_factor(49, 100, 0.5) == 1.0
    assert lr_factor(75, 100, 0.5) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0.5) == 0.0
    assert lr_factor(99, 100, 1.0) == 1.0


def test_image_pool_mixes_history_and_new_images():
    random.seed(0)
    pool = ImagePool(2)
    first = pool.query(torch.zeros(2, 3, 4, 4))
    assert torch.equal(first, torch.zeros(2, 3, 4, 4)) and len(pool.images) == 2
    out = pool.query(torch.ones(8, 3, 4, 4))
    assert out.shape == (8, 3, 4, 4) and 0 < out.mean() < 1  # some old, some new
    assert ImagePool(0).query(torch.ones(1, 3, 2, 2)).sum() == 12


def test_random_flip_flips_image_and_mask_together():
    torch.manual_seed(0)
    img = torch.arange(16.0).view(1, 1, 4, 4).expand(8, 3, 4, 4)
    batch = random_flip({"image": img, "mask": img[:, :1], "name": ["a"] * 8})
    assert torch.equal(batch["image"][:, :1], batch["mask"])
    flipped = (batch["image"] != img).flatten(1).any(1)
    assert 0 < flipped.sum() < 8


def test_ema_decay_ramps_up_so_short_runs_do_not_export_their_initialisation():
    from dermagan.training.ema import ema_beta_at

    assert ema_beta_at(0.999, 0) == pytest.approx(0.1)
    assert ema_beta_at(0.999, 300) == pytest.approx(301 / 310)
    assert ema_beta_at(0.999, 10**6) == 0.999
    betas = [ema_beta_at(0.999, s) for s in range(0, 20000, 97)]
    assert betas == sorted(betas)
    # after 300 steps the initial weights' share in the average is tiny (fixed 0.999 would leave 74 %)
    share = 1.0
    for s in range(300):
        share *= ema_beta_at(0.999, s)
    assert share < 1e-3


def test_cycle_b_weight_scales_only_the_eczema_cycle():
    """loss is linear in lambda_cycle_b, with slope lambda_cycle x L1(G_add(G_remove(B)), B)."""
    from dataclasses import replace

    from torch.utils.data import default_collate
    from toy_triplets import ToyTriplets

    from dermagan.training.config import tiny
    from dermagan.training.families import get_family

    base = replace(tiny("cycle"), size=32, augment="")
    batch = default_collate([ToyTriplets(n=2)[i] for i in range(2)])
    torch.manual_seed(0)
    nets = get_family(base, ["eczema"]).build()
    values = []
    for w in (0.0, 1.0, 2.0):
        fam = get_family(replace(base, loss=replace(base.loss, lambda_cycle_b=w)), ["eczema"])
        with torch.no_grad():
            values.append(fam.generator_loss(nets, batch)[0].item())
    with torch.no_grad():
        real_b = batch["image"].roll(1, 0)
        rec_b = nets["G_add"](nets["G_remove"](real_b))
        slope = base.loss.lambda_cycle * losses.l1_loss(rec_b, real_b).item()
    assert values[1] - values[0] == pytest.approx(slope, rel=1e-4)
    assert values[2] - values[1] == pytest.approx(slope, rel=1e-4)


def test_a_resumed_pool_hands_its_images_out_on_the_device_of_the_new_ones():
    """A checkpoint keeps the pool on the CPU; resumed on CUDA, a stored image came back on the CPU beside the
    GPU fakes and the next torch.cat failed. (The meta device stands in for CUDA here.)"""
    pool = ImagePool(2)
    pool.images = [torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)]  # as CycleFamily.load_state_dict sets them
    random.seed(0)
    for _ in range(8):  # half of the queries swap in a stored image
        assert pool.query(torch.empty(3, 3, 2, 2, device="meta")).device.type == "meta"
