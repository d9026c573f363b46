"""The five model families, each the few functions the one training loop calls.

A family builds its networks, computes its generator-phase and discriminator-phase losses (through
`losses.py`, which only computes), draws sample rows for the PNG grids and names its exportable
networks. Registry: `FAMILIES` (explicit dict).

- generate: DCGAN-style noise -> image, optionally kind-conditional (Radford et al. 2016;
  Furger et al. 2020); two-scale or PatchGAN D; DiffAugment (Zhao et al. 2020) and lazy R1.
- add / remove: (image, mask) -> image with a residual ResNet or pix2pix U-Net translator;
  relevancy loss outside the mask (Furger et al.) + pix2pix L1 to exact ground truth when paired
  (Isola et al. 2017); D sees (image, mask) so it judges the edit where it was asked for.
- cycle: CycleGAN healthy <-> eczema (Zhu et al. 2017): two generators, two discriminators,
  cycle + identity L1, image history pool (Shrivastava et al. 2017).
- segment: U-Net image -> mask logits with Dice + BCE; no discriminator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dermagan.training import losses
from dermagan.training.augment import diff_augment
from dermagan.training.ema import standing_statistics
from dermagan.training.config import TrainConfig, size_multiple
from dermagan.training.networks import DCGANGenerator, MaskedTranslator, ResnetGenerator, UNet, build_discriminator

Nets = dict[str, nn.Module]
Batch = dict[str, Any]
Stats = dict[str, torch.Tensor]  # detached 0-dim tensors; the loop reads them only when it logs


class ImagePool:
    """History of generated images for D (CycleGAN): half of the time a stored one replaces the new."""

    def __init__(self, size: int) -> None:
        self.size, self.images = size, []  # type: int, list[torch.Tensor]

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif random.random() > 0.5:
                j = random.randrange(self.size)
                out.append(self.images[j].to(img, copy=True))  # a resumed pool was loaded on the CPU
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)


class Family:
    """Base: names of the networks each optimiser owns; subclasses fill in the maths."""

    generators: tuple[str, ...] = ("G",)  # optimised by opt_g, EMA'd, exported
    discriminators: tuple[str, ...] = ("D",)

    def __init__(self, cfg: TrainConfig, labels: list[str]) -> None:
        self.cfg, self.labels = cfg, labels
        # the discriminators' loss scale under fp16 (the loop sets it to their GradScaler's): the R1 penalty's
        # input gradient is taken of the logits scaled as the loss is (losses.r1_penalty), as torch.amp's
        # gradient-penalty recipe does, so that it does not underflow in float16's range; 1 otherwise
        self.d_grad_scale: Callable[[], float] = lambda: 1.0

    def build(self) -> Nets:
        raise NotImplementedError

    def generator_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, Stats, Batch]:
        raise NotImplementedError

    def discriminator_loss(self, nets: Nets, batch: Batch, fakes: Batch, step: int) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def sample_rows(self, gens: Nets, batch: Batch) -> list[torch.Tensor]:
        raise NotImplementedError

    def validation(self, gens: Nets, batch: Batch) -> dict[str, torch.Tensor]:
        """Held-out metrics of the generators (eval mode, no grad): name -> one value per sample [B]."""
        raise NotImplementedError(f"{self.cfg.family} has no validation metrics")

    def best_metric(self) -> tuple[str, str] | None:
        """(validation metric, "min" | "max") that picks checkpoints/best.pt; None: validation only reports."""
        return None

    def exports(self, gens: Nets) -> list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]]:
        """(task, name, module, example_inputs at batch 1)."""
        raise NotImplementedError

    def export_size_multiple(self) -> int:
        return size_multiple(self.cfg)

    def standing_statistics(self, ema: nn.Module) -> None:
        """Recompute the BatchNorm statistics of a generator's EMA copy for its own weights (see
        ema.py), before it draws samples or is exported. Families whose inputs are data, not
        noise, keep the trained network's statistics."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- shared helpers
    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.augment)

    def _d_adv(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, step: int,
               label: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
        """D loss on augmented reals and fakes, with the lazy R1 penalty every r1_every steps: the gradient is taken
        with respect to the reals before their (differentiable) augmentation, as StyleGAN2-ADA does."""
        lc = self.cfg.loss
        r1_now = lc.r1_gamma > 0 and step % lc.r1_every == 0
        real = real.detach().requires_grad_(r1_now)
        real_in = self._aug(real)
        fake_in = self._aug(fake.detach())
        if self.cfg.net.d_norm == "batch" or self.cfg.net.d_mbstd:
            # batch statistics (BatchNorm, minibatch stddev): reals and fakes are judged apart (pix2pix)
            real_logits, fake_logits = d(real_in, label), d(fake_in, label)
        else:  # per-sample maths: one call on [reals; fakes] gives the same logits, with larger convs
            both = None if label is None else torch.cat([label, label])
            real_logits, fake_logits = d(torch.cat([real_in, fake_in]), both).split([len(real_in), len(fake_in)])
        loss = losses.d_loss(lc.gan, real_logits, fake_logits, lc.real_label)
        stats = {"d_real": real_logits.detach().float().mean(), "d_fake": fake_logits.detach().float().mean()}
        if r1_now:
            r1 = losses.r1_penalty(real_logits, real, scale=self.d_grad_scale())
            loss = loss + 0.5 * lc.r1_gamma * lc.r1_every * r1
            stats["r1"] = r1.detach()
        return loss, stats


class GenerateFamily(Family):
    def build(self) -> Nets:
        c, n = self.cfg, max(len(self.labels), 1)
        if c.net.d_pack > 1 and n > 1:  # (one procedural kind is checked by the config; classes of --data here)
            raise ValueError(f"net.d_pack {c.net.d_pack} needs one class (the samples of a pack must share theirs); "
                             f"this data has {n}: {', '.join(self.labels)}")
        return {"G": DCGANGenerator(c.net.z_dim, c.size, c.net.ngf, n, c.net.g_norm, c.net.attention,
                                    seed_ch=c.net.g_seed_ch),
                "D": build_discriminator(c.net, 3, c.size, n)}

    def _label(self, batch: Batch) -> torch.Tensor | None:
        return batch["label"] if len(self.labels) > 1 else None

    def generator_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, Stats, Batch]:
        real, label = batch["image"], self._label(batch)
        z = torch.randn(real.shape[0], self.cfg.net.z_dim, device=real.device)  # (B, z_dim)
        fake = nets["G"](z, label)  # (B, 3, H, W)
        loss = losses.g_loss(self.cfg.loss.gan, nets["D"](self._aug(fake), label))
        return loss, {"g": loss.detach()}, {"fake": fake}

    def discriminator_loss(self, nets: Nets, batch: Batch, fakes: Batch, step: int) -> tuple[torch.Tensor, Stats]:
        loss, stats = self._d_adv(nets["D"], batch["image"], fakes["fake"], step, self._label(batch))
        return loss, {"d": loss.detach(), **stats}

    def _fixed(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(self.cfg.seed + 12345)  # never touches the global RNG
        z = torch.randn(n, self.cfg.net.z_dim, generator=g).to(device)
        label = torch.arange(n, device=device) % len(self.labels) if len(self.labels) > 1 else None
        return z, label

    def sample_rows(self, gens: Nets, batch: Batch) -> list[torch.Tensor]:
        z, label = self._fixed(2 * batch["image"].shape[0], batch["image"].device)
        fake = gens["G"](z, label)
        return [batch["image"], fake[: len(fake) // 2], fake[len(fake) // 2:]]

    def standing_statistics(self, ema: nn.Module) -> None:
        """16 batches of 64 from a fixed seed (no global RNG), every kind equally often."""
        device = next(ema.parameters()).device
        g = torch.Generator().manual_seed(self.cfg.seed + 54321)
        n = max(len(self.labels), 1)

        def inputs(_: int) -> tuple[torch.Tensor, ...]:
            z = torch.randn(64, self.cfg.net.z_dim, generator=g).to(device)
            return (z, torch.arange(64, device=device) % n) if n > 1 else (z,)

        standing_statistics(ema, inputs, batches=16)

    def exports(self, gens: Nets) -> list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]]:
        z, label = self._fixed(1, torch.device("cpu"))
        inputs = {"z": z} if label is None else {"z": z, "label": label}
        name = "generate" if len(self.labels) > 1 else f"{self.labels[0]}-generate"
        return [("generate", name, gens["G"], inputs)]

    def export_size_multiple(self) -> int:
        return self.cfg.size  # fixed output size


class EditFamily(Family):
    """add (healthy + mask -> eczema) and remove (eczema + mask -> healthy)."""

    def build(self) -> Nets:
        c = self.cfg
        return {"G": MaskedTranslator(c.net.ngf, c.net.g_blocks, c.net.g_downs, c.net.g_norm, c.net.generator,
                                      c.net.g_unet_downs, inpaint=c.net.g_inpaint),
                "D": build_discriminator(c.net, 4, c.size)}

    def _pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) images: add maps healthy -> image, remove image -> healthy."""
        if self.cfg.family == "add":
            return batch["healthy"], batch["image"]
        return batch["image"], batch["healthy"]

    @property
    def paired(self) -> bool:
        return not self.cfg.data.unpaired and self.cfg.loss.lambda_l1 > 0

    def generator_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, Stats, Batch]:
        lc = self.cfg.loss
        source, target = self._pair(batch)
        mask = batch["mask"]  # (B, 1, H, W)
        fake = nets["G"](source, mask)  # (B, 3, H, W)
        adv = losses.g_loss(lc.gan, nets["D"](self._aug(torch.cat([fake, mask], 1))))
        rel = losses.relevancy_loss(fake, source, mask)
        loss = adv + lc.lambda_relevancy * rel
        stats = {"g_adv": adv.detach(), "relevancy": rel.detach()}
        l1 = losses.l1_loss(fake, target)  # always reported (a metric when unpaired)
        if self.paired:
            loss = loss + lc.lambda_l1 * l1
        stats["l1"] = l1.detach()
        return loss, stats, {"fake": fake}

    def discriminator_loss(self, nets: Nets, batch: Batch, fakes: Batch, step: int) -> tuple[torch.Tensor, Stats]:
        _, target = self._pair(batch)
        mask = batch["mask"]
        real_mask = mask
        if not self.paired:  # unpaired: D's reals are other samples' targets, never this one's
            target, real_mask = target.roll(1, 0), mask.roll(1, 0)
        loss, stats = self._d_adv(nets["D"], torch.cat([target, real_mask], 1), torch.cat([fakes["fake"], mask], 1), step)
        return loss, {"d": loss.detach(), **stats}

    def sample_rows(self, gens: Nets, batch: Batch) -> list[torch.Tensor]:
        source, target = self._pair(batch)
        mask = batch["mask"]
        return [source, mask.expand_as(source) * 2 - 1, gens["G"](source, mask), target]

    def validation(self, gens: Nets, batch: Batch) -> dict[str, torch.Tensor]:
        """val_outside: mean |output - input| outside the mask (the relevancy the edit must keep); with
        exact pairs also val_l1 to the ground truth, over the image and inside the mask (pixels in [-1, 1])."""
        source, target = self._pair(batch)
        mask = batch["mask"]
        fake = gens["G"](source, mask)
        out = {"val_outside": _masked_mean((fake - source).abs(), 1 - mask)}
        if self.paired:
            out["val_l1"] = (fake - target).abs().mean((1, 2, 3))
            out["val_l1_inside"] = _masked_mean((fake - target).abs(), mask)
        return out

    def best_metric(self) -> tuple[str, str] | None:
        return ("val_l1", "min") if self.paired else None  # without exact pairs nothing says "better"

    def exports(self, gens: Nets) -> list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]]:
        g = torch.Generator().manual_seed(0)
        s = self.cfg.size
        image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
        mask = torch.zeros(1, 1, s, s)
        mask[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
        kind = self.cfg.data.kinds[0] if self.cfg.data.root is None else "eczema"
        return [(self.cfg.family, f"{kind}-{self.cfg.family}", gens["G"], {"image": image, "mask": mask})]


class CycleFamily(Family):
    """Domain A = healthy, B = eczema. G_add: A -> B, G_remove: B -> A; D_eczema judges B, D_healthy A."""

    generators = ("G_add", "G_remove")
    discriminators = ("D_eczema", "D_healthy")

    def __init__(self, cfg: TrainConfig, labels: list[str]) -> None:
        super().__init__(cfg, labels)
        self.pools = {"eczema": ImagePool(cfg.pool_size), "healthy": ImagePool(cfg.pool_size)}

    def build(self) -> Nets:
        n = self.cfg.net
        gen = lambda: ResnetGenerator(3, n.ngf, n.g_blocks, n.g_downs, n.g_norm, residual=n.g_residual)  # noqa: E731
        return {"G_add": gen(), "G_remove": gen(), "D_eczema": build_discriminator(n, 3, self.cfg.size),
                "D_healthy": build_discriminator(n, 3, self.cfg.size)}

    @staticmethod
    def _domains(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # the synthetic triplets are aligned; rolling B keeps the training genuinely unpaired
        return batch["healthy"], batch["image"].roll(1, 0)

    def generator_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, Stats, Batch]:
        lc = self.cfg.loss
        real_a, real_b = self._domains(batch)  # (B, 3, H, W) each
        identity, n = lc.lambda_identity > 0, len(real_a)
        if self.cfg.net.g_norm != "batch":
            # per-sample norms: batching independent passes of one generator is the same maths with
            # larger convolutions -- three calls instead of six (G_add: translate + identity;
            # G_remove: translate + reconstruct A + identity; G_add: reconstruct B)
            out = nets["G_add"](torch.cat([real_a, real_b] if identity else [real_a])).split(n)
            fake_b, idt_b = out[0], out[-1]
            out = nets["G_remove"](torch.cat([real_b, fake_b, real_a] if identity else [real_b, fake_b])).split(n)
            fake_a, rec_a, idt_a = out[0], out[1], out[-1]
            rec_b = nets["G_add"](fake_a)
        else:
            fake_b, fake_a = nets["G_add"](real_a), nets["G_remove"](real_b)
            rec_a, rec_b = nets["G_remove"](fake_b), nets["G_add"](fake_a)
            if identity:
                idt_b, idt_a = nets["G_add"](real_b), nets["G_remove"](real_a)
        adv = (losses.g_loss(lc.gan, nets["D_eczema"](self._aug(fake_b)))
               + losses.g_loss(lc.gan, nets["D_healthy"](self._aug(fake_a))))
        cycle_a, cycle_b = losses.l1_loss(rec_a, real_a), losses.l1_loss(rec_b, real_b)
        cycle = cycle_a + cycle_b
        loss = adv + lc.lambda_cycle * (cycle_a + lc.lambda_cycle_b * cycle_b)
        stats = {"g_adv": adv.detach(), "cycle": cycle.detach()}
        if identity:
            idt = losses.l1_loss(idt_b, real_b) + losses.l1_loss(idt_a, real_a)
            loss = loss + lc.lambda_identity * lc.lambda_cycle * idt
            stats["identity"] = idt.detach()
        return loss, stats, {"fake_b": fake_b, "fake_a": fake_a}

    def discriminator_loss(self, nets: Nets, batch: Batch, fakes: Batch, step: int) -> tuple[torch.Tensor, Stats]:
        real_a, real_b = self._domains(batch)
        fake_b = self.pools["eczema"].query(fakes["fake_b"])
        fake_a = self.pools["healthy"].query(fakes["fake_a"])
        loss_b, sb = self._d_adv(nets["D_eczema"], real_b, fake_b, step)
        loss_a, sa = self._d_adv(nets["D_healthy"], real_a, fake_a, step)
        return loss_a + loss_b, {"d_eczema": loss_b.detach(), "d_healthy": loss_a.detach(), "d_real": 0.5 * (sa["d_real"] + sb["d_real"])}

    def sample_rows(self, gens: Nets, batch: Batch) -> list[torch.Tensor]:
        real_a, real_b = self._domains(batch)
        fake_b, fake_a = gens["G_add"](real_a), gens["G_remove"](real_b)
        return [real_a, fake_b, gens["G_remove"](fake_b), real_b, fake_a, gens["G_add"](fake_a)]

    def validation(self, gens: Nets, batch: Batch) -> dict[str, torch.Tensor]:
        """val_cycle: L1 of healthy -> eczema -> healthy and eczema -> healthy -> eczema, summed. It only
        reports (an identity mapping reconstructs perfectly): no best checkpoint is chosen by it."""
        real_a, real_b = self._domains(batch)
        rec_a, rec_b = gens["G_remove"](gens["G_add"](real_a)), gens["G_add"](gens["G_remove"](real_b))
        return {"val_cycle": (rec_a - real_a).abs().mean((1, 2, 3)) + (rec_b - real_b).abs().mean((1, 2, 3))}

    def exports(self, gens: Nets) -> list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]]:
        s = self.cfg.size
        image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return [("cycle-add", "cycle-add", gens["G_add"], {"image": image}),
                ("cycle-remove", "cycle-remove", gens["G_remove"], {"image": image})]

    def state_dict(self) -> dict[str, Any]:
        return {k: [t.cpu() for t in p.images] for k, p in self.pools.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, images in state.items():
            self.pools[k].images = list(images)


class SegmentFamily(Family):
    generators = ("S",)
    discriminators = ()

    def build(self) -> Nets:
        n = self.cfg.net
        return {"S": UNet(3, 1, n.ngf, n.unet_depth, n.g_norm)}

    def generator_loss(self, nets: Nets, batch: Batch) -> tuple[torch.Tensor, Stats, Batch]:
        lc = self.cfg.loss
        logits = nets["S"](batch["image"])  # (B, 1, H, W)
        loss = losses.segmentation_loss(logits, batch["mask"], lc.lambda_dice, lc.lambda_bce)
        return loss, {"seg": loss.detach(), "iou": losses.binary_iou(logits, batch["mask"])}, {}

    def sample_rows(self, gens: Nets, batch: Batch) -> list[torch.Tensor]:
        img = batch["image"]
        prob = torch.sigmoid(gens["S"](img)).expand_as(img) * 2 - 1
        return [img, batch["mask"].expand_as(img) * 2 - 1, prob]

    def validation(self, gens: Nets, batch: Batch) -> dict[str, torch.Tensor]:
        """val_iou and val_dice of (logit > 0) against the mask, per image (1 where both are empty)."""
        p, t = gens["S"](batch["image"]) > 0, batch["mask"] > 0.5
        inter, union, total = (p & t).sum((1, 2, 3)), (p | t).sum((1, 2, 3)), p.sum((1, 2, 3)) + t.sum((1, 2, 3))
        one = torch.ones_like(inter, dtype=torch.float32)
        return {"val_iou": torch.where(union > 0, inter / union.clamp_min(1), one),
                "val_dice": torch.where(total > 0, 2 * inter / total.clamp_min(1), one)}

    def best_metric(self) -> tuple[str, str] | None:
        return ("val_iou", "max")

    def exports(self, gens: Nets) -> list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]]:
        s = self.cfg.size
        image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
        kind = self.cfg.data.kinds[0] if self.cfg.data.root is None else "eczema"
        return [("segment", f"{kind}-segment", gens["S"], {"image": image})]


def _masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of x [B, C, H, W] over the pixels where weight [B, 1, H, W] is 1 (0 where none)."""
    w = weight.expand_as(x)
    return (x * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp_min(1)


#: family name -> class. Explicit registry.
FAMILIES: dict[str, type[Family]] = {
    "generate": GenerateFamily, "add": EditFamily, "remove": EditFamily, "cycle": CycleFamily, "segment": SegmentFamily,
}


def get_family(cfg: TrainConfig, labels: list[str]) -> Family:
    if cfg.family not in FAMILIES:
        raise ValueError(f"unknown family {cfg.family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family](cfg, labels)
