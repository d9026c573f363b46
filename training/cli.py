"""`dermagan train FAMILY`: build a TrainConfig from a preset plus overrides and run the loop.

    dermagan train generate|add|remove|cycle|segment [--preset paper|modern|tiny] [--data DIR]
        [--size PX] [--batch-size N] [--steps N] [--out RUN] [--resume] [--device cpu|cuda]
        [--amp bf16|fp16|none] [--seed N] [--sample-every N] [--ckpt-every N] [hyper-parameters]

Multi-GPU / multi-node: `torchrun --nproc_per_node=G -m dermagan.cli train ...` (see loop.py).
Every failure that can be known before training (unknown preset, bad size, missing data folder,
missing masks, a run another process trains) is reported as `dermagan train: error: ...` with exit
status 2; a run stopped short of its steps with a checkpoint (--max-minutes, Ctrl-C, SIGTERM) exits 75.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from dermagan.training.config import (AMP_MODES, DISCRIMINATORS, FAMILIES, GAN_LOSSES, GENERATORS, KINDS, NORMS, PRESETS,
                                      TrainConfig, native_bf16, preset)

#: CLI option -> (config section or "" for the top level, field). Explicit table of the overrides.
OVERRIDES: dict[str, tuple[str, str]] = {
    "size": ("", "size"), "batch_size": ("", "batch_size"), "steps": ("", "steps"), "seed": ("", "seed"),
    "device": ("", "device"), "amp": ("", "amp"), "sample_every": ("", "sample_every"),
    "ckpt_every": ("", "ckpt_every"), "log_every": ("", "log_every"), "augment": ("", "augment"),
    "tensorboard": ("", "tensorboard"), "val_every": ("", "val_every"), "val_data": ("data", "val_root"),
    "val_n": ("data", "val_n"),
    "pool_size": ("", "pool_size"), "init_from": ("", "init_from"),
    "z_dim": ("net", "z_dim"), "ngf": ("net", "ngf"), "ndf": ("net", "ndf"), "disc": ("net", "disc"),
    "g_blocks": ("net", "g_blocks"), "generator": ("net", "generator"),
    "g_unet_downs": ("net", "g_unet_downs"), "spectral_norm": ("net", "spectral_norm"),
    "g_residual": ("net", "g_residual"), "d_norm": ("net", "d_norm"),
    "g_inpaint": ("net", "g_inpaint"), "d_mbstd": ("net", "d_mbstd"), "d_pack": ("net", "d_pack"),
    "attention": ("net", "attention"), "g_seed_ch": ("net", "g_seed_ch"),
    "d_mbstd_colour": ("net", "d_mbstd_colour"),
    "gan_loss": ("loss", "gan"), "real_label": ("loss", "real_label"), "lambda_l1": ("loss", "lambda_l1"),
    "lambda_relevancy": ("loss", "lambda_relevancy"), "lambda_cycle": ("loss", "lambda_cycle"),
    "lambda_identity": ("loss", "lambda_identity"),
    "lambda_cycle_b": ("loss", "lambda_cycle_b"), "r1_gamma": ("loss", "r1_gamma"),
    "lr_g": ("optim", "lr_g"), "lr_d": ("optim", "lr_d"), "beta1": ("optim", "beta1"), "ema": ("optim", "ema_beta"),
    "decay_start": ("optim", "decay_start"),
    "data": ("data", "root"), "kinds": ("data", "kinds"), "length": ("data", "length"), "workers": ("data", "workers"),
    "cache_gb": ("data", "cache_gb"),
    "unpaired": ("data", "unpaired"), "flip": ("data", "flip"),
    "crop": ("data", "crop"), "patches": ("data", "patches"), "fit": ("data", "fit"),
}
#: Options that may change when a run is resumed (the rest comes from its checkpoint).
RESUMABLE = {"steps", "device", "amp", "sample_every", "ckpt_every", "log_every", "workers", "cache_gb",
             "tensorboard", "val_every"}
#: The data options a resume may take after all, when the run's own folder is gone (moved): option -> data field.
#: (A run keeps these and --init-from absolute, so that a resume from another folder finds them.)
MOVABLE = {"data": "root", "val_data": "val_root"}
DEFAULT_PRESET = "modern"
#: `dermagan train`'s exit status for a run stopped short of its steps (--max-minutes, Ctrl-C, SIGTERM) with a
#: checkpoint: EX_TEMPFAIL ("try again later"), as `dermagan release` exits for runs left short, so that
#: `dermagan train ... && dermagan export ...` exports only a finished run.
AGAIN_STATUS = 75


EPILOG = """examples:
  dermagan train add --preset paper --out runs/add                 # procedural triplets, the paper's recipe
  dermagan train segment --data DIR --size 128 --out runs/seg       # your folders: DIR/image, DIR/patho
  dermagan train generate --kinds eczema,hand,lesion --device cuda --amp bf16
  dermagan train add --out runs/add --resume --steps 40000          # continue exactly where it stopped
  dermagan train add --out runs/add --resume --max-minutes 50 && dermagan export runs/add --out my-models/
      # exit status 0 once the run has reached its steps; 75 when --max-minutes, Ctrl-C or SIGTERM stopped it
      # short (with a checkpoint: run it again with --resume); 2 when refused before training (one trainer a run)
  dermagan train add --data DIR --init-from runs/add --out runs/add-real   # fine-tune a trained run on your data
  torchrun --nproc_per_node=4 -m dermagan.cli train cycle --device cuda --out runs/cycle   # DDP
"""


def _flag(text: str) -> bool:
    """true/false options: 1/true/yes or 0/false/no; anything else is an error naming the words."""
    word = text.strip().lower()
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (1/0, yes/no), got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("family", choices=FAMILIES, help="model family to train")
    p.add_argument("--preset", default=None, help=f"recipe: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/FAMILY-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this much wall-clock time with a checkpoint and exit with status "
                        f"{AGAIN_STATUS}, as after Ctrl-C or SIGTERM (continue later with --resume; 0: after the "
                        "first step); 0 only once the run has reached --steps")
    g = p.add_argument_group("data (default: the procedural SynthDataset)")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="your own images: the paper's layout image/ patho/ [healthy/] for add/remove/cycle/segment "
                        "(healthy skin: healthy/ paired by name, or with --unpaired and for cycle the images "
                        "with an empty mask plus healthy/ under any name); for generate class folders, a "
                        "HAM10000 / ISIC labels CSV (or its folder), or one flat folder; the run keeps it as an "
                        "absolute path, and --resume takes --data only when the run's own has moved away")
    g.add_argument("--kinds", type=lambda s: tuple(s.split(",")), default=None,
                   help=f"synthetic kinds, comma-separated: {','.join(KINDS)}")
    g.add_argument("--length", type=int, default=None, help="synthetic samples per kind")
    g.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    g.add_argument("--cache-gb", type=float, default=None, metavar="GB",
                   help="keep the data set in memory (8-bit, in each training process) when it fits in GB, so that "
                        "it is rendered or decoded once, not every epoch (default 1; 0 = never)")
    g.add_argument("--unpaired", action="store_true", default=None, help="add/remove: no L1 to ground truth")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random flips")
    g.add_argument("--crop", type=int, default=None, metavar="PX",
                   help="add/remove/cycle/segment: train on one random PX x PX window of each --size image (for "
                        "images too large to train whole; the exported model still takes any multiple of the "
                        "stride); 0 = off")
    g.add_argument("--fit", choices=("squash", "crop"), default=None,
                   help="your photographs (--data), when one is not of the --size shape: squash it to that shape "
                        "(the reference pix2pix / CycleGAN loaders' resize) or crop its largest centred window of that "
                        "shape, keeping proportions (e.g. HAM10000's 600x450 lesions); unset: squash, with a warning "
                        "naming how many images it distorts")
    g.add_argument("--patches", type=int, default=None, metavar="SHORT_PX",
                   help="your photographs (--data; add/remove/cycle/segment): train on --size patches of them, "
                        "cut at half their size's stride after resizing each photograph so its shorter side is "
                        "SHORT_PX, as the paper cut 128 px patches of its 480 px hand photographs; patches "
                        "without eczema are the healthy skin of --unpaired and cycle; 0 = whole images")
    g = p.add_argument_group("run")
    g.add_argument("--init-from", default=None, metavar="RUN",
                   help="warm start: begin with the networks (and EMA) of another run of the same family and "
                        "architecture (its folder or a .pt checkpoint); optimisers and step start afresh")
    g.add_argument("--size", type=int, default=None, help="image size in pixels (square)")
    g.add_argument("--batch-size", type=int, default=None, help="images per step per process")
    g.add_argument("--steps", type=int, default=None, help="total optimiser steps")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    g.add_argument("--amp", choices=AMP_MODES, default=None, help="autocast precision (fp16 uses a GradScaler)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--sample-every", type=int, default=None, help="steps between PNG sample grids")
    g.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints")
    g.add_argument("--log-every", type=int, default=None, help="steps between metrics.jsonl lines")
    g.add_argument("--val-every", type=int, default=None, metavar="STEPS",
                   help="add/remove/cycle/segment: measure the model on held-out data every STEPS steps (val_* lines "
                        "in metrics.jsonl) and keep checkpoints/best.pt by its main metric (segment: IoU; add/remove "
                        "with exact pairs: L1 to the truth; export it with --best); held-out data: the renderer's "
                        "validation seeds, or --val-data; 0 = off")
    g.add_argument("--val-data", default=None, metavar="DIR",
                   help="with --data: held-out images in the same layout for --val-every (never the training folder)")
    g.add_argument("--val-n", type=int, default=None, help="validation samples (default 64)")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write the logged values and the sample grids for TensorBoard to RUN/tensorboard/ "
                        "(`tensorboard --logdir runs/`); a resumed run drops what was logged after its checkpoint")
    g = p.add_argument_group("hyper-parameters (override the preset)")
    g.add_argument("--lr-g", type=float, default=None)
    g.add_argument("--lr-d", type=float, default=None)
    g.add_argument("--beta1", type=float, default=None)
    g.add_argument("--decay-start", type=float, default=None,
                   help="fraction of --steps after which both learning rates fall linearly to 0 (1 = constant)")
    g.add_argument("--gan-loss", choices=GAN_LOSSES, default=None)
    g.add_argument("--real-label", type=float, default=None, help="bce real label (the paper: 0.95)")
    g.add_argument("--lambda-l1", type=float, default=None)
    g.add_argument("--lambda-relevancy", type=float, default=None)
    g.add_argument("--lambda-cycle", type=float, default=None)
    g.add_argument("--lambda-identity", type=float, default=None, help="multiple of lambda_cycle")
    g.add_argument("--lambda-cycle-b", type=float, default=None,
                   help="weight of the eczema -> healthy -> eczema cycle, as a multiple of lambda_cycle (1 = both equal)")
    g.add_argument("--r1-gamma", type=float, default=None, help="lazy R1 weight (0 = off): the critic's input-gradient "
                   "penalty on the reals, taken through --augment, every 16 steps (StyleGAN2)")
    g.add_argument("--ema", type=float, default=None, help="EMA beta of G (0 = off)")
    g.add_argument("--augment", default=None, help="DiffAugment policy, e.g. color,translation,cutout ('' = off)")
    g.add_argument("--pool-size", type=int, default=None)
    g.add_argument("--z-dim", type=int, default=None)
    g.add_argument("--ngf", type=int, default=None)
    g.add_argument("--ndf", type=int, default=None)
    g.add_argument("--g-blocks", type=int, default=None)
    g.add_argument("--generator", choices=GENERATORS, default=None,
                   help="add/remove translator: resnet (default) or unet (pix2pix's U-Net; sizes a multiple of 2**g-unet-downs)")
    g.add_argument("--g-unet-downs", type=int, default=None, help="U-Net translator down-samplings (pix2pix unet_128: 7)")
    g.add_argument("--disc", choices=DISCRIMINATORS, default=None)
    g.add_argument("--spectral-norm", type=_flag, default=None)
    g.add_argument("--d-norm", choices=NORMS, default=None, help="discriminator normalisation")
    g.add_argument("--d-mbstd", type=int, default=None,
                   help="two-scale D: minibatch standard-deviation channel against mode collapse, over each kind "
                   "of the batch (several kinds) or groups of this many samples (one kind); 0 = off")
    g.add_argument("--d-pack", type=int, default=None,
                   help="generate: the two-scale D judges this many samples at once, concatenated along the channels "
                   "(PacGAN), so a generator that draws some property alike for every noise is told apart; one kind "
                   "only, and --batch-size a multiple of it; 1 = off")
    g.add_argument("--d-mbstd-colour", type=int, default=None,
                   help="generate: the two-scale D also sees how much the colour (each pixel's hue, pooled to N x N "
                   "cells; 1 = the image's mean hue) differs across --d-mbstd's sets, so a generator that draws every "
                   "background in one hue is told apart; needs --d-mbstd; 0 = off")
    g.add_argument("--attention", type=int, default=None, metavar="PX",
                   help="generate: a self-attention block (SAGAN) in the generator and in the two-scale discriminator "
                   "at this feature-map size (16, 32 or 64 at 128 px), so distant parts of an image -- a hand's fingers "
                   "-- are drawn and judged together; 0 = off")
    g.add_argument("--g-seed-ch", type=int, default=None, metavar="C",
                   help="generate: channels of the generator's 8 x 8 seed, where the noise first becomes a picture "
                   "and a hand's pose and fingers are laid out (the paper: 8 x 8 x 64, i.e. --ngf); 0 = --ngf")
    g.add_argument("--g-inpaint", type=_flag, default=None,
                   help="add/remove: blank the image inside the mask before the translator (inpainting)")
    g.add_argument("--g-residual", type=_flag, default=None,
                   help="cycle: residual generators, output clamp(x + tanh(.)) (modern: true; paper/junyanz: false)")


def recipe(args: argparse.Namespace) -> str:
    """The command line that (re)creates this run, from the parsed options."""
    parts = ["dermagan", "train", args.family, "--preset", args.preset or DEFAULT_PRESET]
    for key in OVERRIDES:
        v = getattr(args, key)
        if v is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "flip":
            parts.append("--no-flip")
        elif key == "unpaired":
            parts.append(flag)
        elif isinstance(v, bool):  # as the option's own words (_flag)
            parts += [flag, "true" if v else "false"]
        else:
            parts += [flag, ",".join(v) if isinstance(v, tuple) else str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def as_flags(message: str) -> str:
    """A configuration error in the words of the command line: `data.kinds` -> `--kinds`. Only dotted and
    snake_case field names are replaced (`size` or `steps` are also plain words)."""
    for key, (section, name) in OVERRIDES.items():
        field = f"{section}.{name}" if section else name
        if "." in field or "_" in field:
            message = re.sub(rf"(?<![\w.-]){re.escape(field)}(?!\w)", "--" + key.replace("_", "-"), message)
    return message


def build_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The preset (or a resumed run's config) with the given options applied; validated."""
    cfg = base or preset(args.preset or DEFAULT_PRESET, args.family)
    if base is not None and base.family != args.family:
        raise ValueError(f"the run in {args.out} trains {base.family!r}, not {args.family!r}")
    sections: dict[str, dict[str, object]] = {}
    for key, (section, name) in OVERRIDES.items():
        v = getattr(args, key)
        if v is None or (base is not None and key not in RESUMABLE):
            continue
        sections.setdefault(section, {})[name] = v
    cfg = replace(cfg, **sections.pop("", {}))
    cfg = replace(cfg, **{s: replace(getattr(cfg, s), **kv) for s, kv in sections.items()})
    if base is None:  # the recipe as typed; the config with absolute paths, which a resume reads from any folder
        cfg = replace(cfg, recipe=recipe(args), init_from=_absolute(cfg.init_from) if cfg.init_from else "",
                      data=replace(cfg.data, root=_absolute(cfg.data.root), val_root=_absolute(cfg.data.val_root)))
    elif cfg.steps != base.steps and base.recipe:  # the run now ends elsewhere: its recipe says so
        steps, n = re.subn(r"--steps \d+", f"--steps {cfg.steps}", base.recipe)
        cfg = replace(cfg, recipe=steps if n else f"{base.recipe} --steps {cfg.steps}")
    cfg.validate()
    return cfg


def _absolute(path: str | None) -> str | None:
    """`path` from the working directory, made absolute (no symlinks resolved: the folder as the user named it)."""
    return None if path is None else os.path.abspath(path)


def _resumed_data(args: argparse.Namespace, base: TrainConfig, say: bool = True) -> tuple[TrainConfig, list[str]]:
    """The run's config with its data folders as this resume reads them, and the options that decided it.
    A recorded folder that exists is the run's own data (an older run's relative path, read from here, is made
    absolute); one that no longer exists (moved) gives way to --data / --val-data, with a note; a resume with
    neither says how to point it to the moved folder."""
    data, used = base.data, []
    for key, field in MOVABLE.items():
        recorded, given, flag = getattr(data, field), getattr(args, key), "--" + key.replace("_", "-")
        if recorded is None:
            continue
        if Path(recorded).exists():
            data = replace(data, **{field: _absolute(recorded)})
            continue
        what = "data" if key == "data" else "validation data"
        if given is None:
            raise ValueError(f"the run's {what} {recorded!r} does not exist (moved or deleted?); if it moved, pass "
                             f"{flag} NEW with --resume to read it from there")
        if not Path(given).exists():
            raise ValueError(f"{flag} {given!r} does not exist, nor does the run's own {what} {recorded!r}; pass "
                             f"{flag} with the folder the run's {what} moved to")
        if say:  # (torchrun: rank 0)
            print(f"dermagan train: note: the run's {what} moved: reading {_absolute(given)} instead of {recorded}",
                  file=sys.stderr)
        data, used = replace(data, **{field: _absolute(given)}), used + [key]
    return replace(base, data=data), used


def _fp32_by_default(cfg: TrainConfig, args: argparse.Namespace) -> bool:
    """The run trains in fp32 on a CPU because nobody asked otherwise: neither this call's --amp nor its recipe's
    (a resume reads --amp from the recipe the run began with)."""
    asked = args.amp is not None or "--amp" in shlex.split(cfg.recipe or "")
    return cfg.amp == "none" and cfg.device == "cpu" and not asked


def run(args: argparse.Namespace) -> int:
    from dermagan.training import checkpoint, distributed
    from dermagan.training.loop import train

    given_preset, args.preset = args.preset, args.preset or DEFAULT_PRESET
    args.out = args.out or Path("runs") / f"{args.family}-{args.preset}"
    first = distributed.is_first_process()  # the process that writes the run: torchrun's rank 0
    try:
        if args.max_minutes is not None and not args.max_minutes >= 0:  # 0: one step (a checkpoint of the first)
            raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes:g}")
        # the run's lock before its checkpoint is read: a second trainer is refused before it says or writes anything
        # (train takes it again: the same process re-enters it; a new run's folder goes again if it is refused)
        with checkpoint.run_lock(args.out) if first else contextlib.nullcontext():
            base, start = None, 0
            if args.resume:
                state = checkpoint.load(checkpoint.last_checkpoint(args.out))
                base, start = TrainConfig.from_dict(state["config"]), int(state["step"])
                if args.steps is not None and args.steps < start:  # before anything (config.json) is rewritten
                    raise ValueError(f"--steps {args.steps} is below the step the run in {args.out} has reached "
                                     f"({start}); pass --steps {start} or more to continue it")
                base, moved = _resumed_data(args, base, say=first)
                ignored = [k for k in OVERRIDES
                           if getattr(args, k) is not None and k not in RESUMABLE and k not in moved]
                # --preset only where it differs: the same preset may merely name the default --out (runs/add-tiny)
                ignored = (["preset"] if given_preset not in (None, base.preset) else []) + ignored
                if ignored and first:
                    print(f"dermagan train: note: --resume keeps the run's own {', '.join(ignored)}", file=sys.stderr)
            cfg = build_config(args, base)
            if cfg.amp == "bf16" and cfg.device == "cpu" and not native_bf16():
                print("dermagan train: warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so oneDNN emulates "
                      "it and bf16 autocast trains much slower than fp32 (an AVX2-only AMD EPYC, 2026-12-03: the hand "
                      "generator at 128 px, batch 16, ~49 s a step against ~3.9 s in fp32, both while rendering its "
                      "data); pass --amp none" + (" with --resume to continue this run in fp32" if args.resume else ""),
                      file=sys.stderr)
            max_s = None if args.max_minutes is None else 60.0 * args.max_minutes
            trained = train(cfg, args.out, resume=args.resume, progress=not args.quiet, max_seconds=max_s)
    except (ValueError, FileNotFoundError) as e:
        print(f"dermagan train: error: {as_flags(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first step (a step in progress checkpoints first: loop._SignalStop)
        if checkpoint.last_checkpoint(args.out).is_file():
            raise  # dermagan.cli says how to go on (--resume)
        print("dermagan train: interrupted before its first checkpoint; nothing to resume", file=sys.stderr)
        return 130
    short = trained.step < cfg.steps  # every rank alike: torchrun's ranks stop at one step
    if not first:  # torchrun: rank 0 reports
        return AGAIN_STATUS if short else 0
    print(f"{'stopped' if short else 'trained'} {cfg.family} ({cfg.preset}) {'at' if short else 'to'} step "
          f"{trained.step}/{cfg.steps} -> {args.out}  " + " ".join(f"{k}={v:.4g}" for k, v in trained.items()),
          flush=True)
    if trained.step > start and _fp32_by_default(cfg, args) and native_bf16():  # after steps it could have sped up
        print("dermagan train: note: this CPU computes bf16 natively; --amp bf16 may train faster (the shipped models "
              "were trained so; on an AMX Xeon the CycleGAN 2.2-2.4x, pix2pix's U-Net at batch 1 not at all: "
              "bench/results/train-2026-12-02.md)" + ("; `--resume --amp bf16` continues this run so" if short else ""),
              file=sys.stderr)
    if short:
        print(f"dermagan train: stopped short of its {cfg.steps} steps, with a checkpoint at step {trained.step}; run "
              f"it again with --resume to continue (exit status {AGAIN_STATUS})", file=sys.stderr)
        return AGAIN_STATUS
    return 0
