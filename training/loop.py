"""The one training loop of every family: `train(cfg, run_dir)`.

Read it top to bottom: set up (data, networks, optimisers, resume) -> per step: generator phase,
discriminator phase, EMA, LR schedule -> log, sample, checkpoint. The family-specific maths lives
in `families.py`; DDP adds only the gradient all-reduce and a few `if d.is_main` lines.

Exact resume: the sample order of epoch e is a permutation drawn from (seed, e) (the semantics of
DistributedSampler), a resumed run skips the batches already consumed, and every RNG state is
restored from the checkpoint, so on CPU with a fixed seed the weights are bitwise those of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dermagan import allocator
from dermagan.training import checkpoint, distributed, sources
from dermagan.training.config import TrainConfig
from dermagan.training.ema import ema_beta_at, make_ema, update_ema
from dermagan.training.families import Batch, get_family

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _to_layout(net: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """bf16 on a CPU: the network's weights in channels_last, so its activations follow. oneDNN's bf16
    convolutions work in channels_last; with NCHW activations each one transposed its input and output (a 2 ms
    copy of a (6, 128, 34, 34) input against a 0.8 ms convolution). The CPU release's runs trained 1.09-1.38x
    faster (bench/results/train-2026-12-07i-xeon-amx-channels-last.md). float32 stays NCHW: its kernels do not
    transpose, and the CycleGAN's generator ran 1.0-1.3x slower in channels_last. Checkpoints keep the values;
    a net loads them in whatever layout it has."""
    if device.type == "cpu" and cfg.amp == "bf16":
        return net.to(memory_format=torch.channels_last)
    return net


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """1 until decay_start * total, then linearly down to 0 at total (CycleGAN's 'linear' policy)."""
    start = decay_start * total
    if decay_start >= 1.0 or step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(total - start, 1.0))


class EpochOrder(torch.utils.data.Sampler[int]):
    """Endless sample indices for one rank; epoch e's order comes from (seed, e) alone.

    The permutation and the rank's shard follow DistributedSampler (drop the tail, take every
    world-th index); each epoch yields whole batches only. Starting at `start_step` skips the
    batches already consumed without loading them, so a resumed run sees the same data.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start_step: int) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // world // batch_size  # batches per epoch per rank
        self.epoch, self.skip = divmod(start_step, self.per_epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.skip
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g)[: self.n // self.world * self.world][self.rank:: self.world]
            yield from order[skip * self.batch_size: self.per_epoch * self.batch_size].tolist()
            epoch, skip = epoch + 1, 0


def batches(dataset: Dataset, batch_size: int, seed: int, rank: int, world: int, start_step: int,
            workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """Endless batches of this rank's shard from one DataLoader (workers live for the whole run)."""
    sampler = EpochOrder(len(dataset), batch_size, seed, rank, world, start_step)  # type: ignore[arg-type]
    # a private generator: creating the loader must not draw from the global torch RNG
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                        persistent_workers=workers > 0,
                        worker_init_fn=_leave_signals_to_the_trainer if workers > 0 else None)
    return iter(loader)


def random_flip(batch: Batch) -> Batch:
    """Flip each sample horizontally with p = 0.5, all its image-like tensors together."""
    b = batch["image"].shape[0]
    flip = (torch.rand(b) < 0.5).view(b, 1, 1, 1)
    out = dict(batch)
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() == 4:
            out[k] = torch.where(flip.to(v.device), v.flip(-1), v)
    return out


def random_crop(batch: Batch, crop: int) -> Batch:
    """One random crop x crop window per sample, the same for all its image-like tensors (the torch RNG
    picks the corners, so a resumed run crops exactly as an uninterrupted one)."""
    b, _, h, w = batch["image"].shape
    if (h, w) == (crop, crop):
        return batch
    top = torch.randint(0, h - crop + 1, (b,)).tolist()
    left = torch.randint(0, w - crop + 1, (b,)).tolist()
    out = dict(batch)
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() == 4:
            out[k] = torch.stack([v[i, :, t:t + crop, l:l + crop] for i, (t, l) in enumerate(zip(top, left))])
    return out


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def save_grid(rows: list[torch.Tensor], path: Path, max_cols: int = 8) -> None:
    """Rows of (N, 3, H, W) images in [-1, 1] -> one PNG, one row each."""
    cols = min(max_cols, *(len(r) for r in rows))
    grid = torch.cat([torch.cat(list(r[:cols].float().cpu()), dim=2) for r in rows], dim=1)  # (3, rH, cW)
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trained(dict):
    """What `train` returns: the last step's statistics (a dict, as it always was), and `step`, the step this
    call ended at. Every rank has the same `step` (the ranks agree on where to stop), so each can tell a run
    that reached cfg.steps from one stopped short (`dermagan train` exits 75 on those, on every rank)."""

    def __init__(self, stats: dict[str, float], step: int) -> None:
        super().__init__(stats)
        self.step = step


def train(cfg: TrainConfig, run_dir: Path | str, *, resume: bool = False, dataset: Dataset | None = None,
          labels: list[str] | None = None, progress: bool = True, until: int | None = None,
          max_seconds: float | None = None, val_dataset: Dataset | None = None) -> Trained:
    """Train (or, with resume, continue) the run in `run_dir`; returns the last step's statistics and the step.

    `until` (a step) and `max_seconds` (wall clock of this call) stop early, with a checkpoint,
    although the schedule spans cfg.steps: time-sliced jobs (`--max-minutes`) resume exactly.
    The process that writes the run (rank 0) holds its lock throughout (`checkpoint.run_lock`): a second
    trainer on the same folder is refused before it reads or writes anything.
    """
    held = checkpoint.run_lock(run_dir) if distributed.is_first_process() else contextlib.nullcontext()
    with held:
        return _train(cfg, Path(run_dir), resume=resume, dataset=dataset, labels=labels, progress=progress,
                      until=until, max_seconds=max_seconds, val_dataset=val_dataset)


def _train(cfg: TrainConfig, run_dir: Path, *, resume: bool, dataset: Dataset | None, labels: list[str] | None,
           progress: bool, until: int | None, max_seconds: float | None, val_dataset: Dataset | None) -> Trained:
    # ---- 1. check everything that can fail before any training happens
    cfg.validate()
    ckpt_path = checkpoint.last_checkpoint(run_dir)
    state = checkpoint.load(ckpt_path) if resume else None
    if not resume and ckpt_path.exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    writer_class = _tensorboard_writer() if cfg.tensorboard else None
    if dataset is None:
        if not resume and distributed.is_first_process():  # a new run renders its data afresh (not a file left by a
            (run_dir / sources.DATA_CACHE).unlink(missing_ok=True)  # run that failed before its first step)
        dataset, labels = sources.build_dataset(cfg, store=run_dir / sources.DATA_CACHE, borrow=_source_data(cfg))
    labels = list(state["labels"]) if state else list(labels or [])
    sources.check_sample(cfg, dataset)
    if cfg.val_every and val_dataset is None:
        val_dataset = sources.build_validation(cfg)
    d = distributed.init(cfg.device)
    device = d.device
    if device.type == "cuda":  # fastest kernels; bitwise exactness is promised on CPU only
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    elif device.type == "cpu":  # a step's freed activations stay in the heap for the next (no page faults)
        allocator.keep_freed_memory()
    source = _warm_start_source(cfg, labels) if state is None and cfg.init_from else None
    if len(dataset) // d.world < cfg.batch_size:  # type: ignore[arg-type]
        raise ValueError(f"{len(dataset)} samples cannot fill batch_size {cfg.batch_size} on {d.world} process(es)")  # type: ignore[arg-type]

    # ---- 2. networks, EMA, optimisers, schedules; then the checkpoint's state if resuming
    seed_everything(cfg.seed + d.rank)
    family = get_family(cfg, labels)
    nets = {k: _to_layout(v.to(device), cfg, device).train() for k, v in family.build().items()}
    emas = {k: make_ema(nets[k]) for k in family.generators} if cfg.optim.ema_beta > 0 else {}
    o = cfg.optim
    g_params = [p for k in family.generators for p in nets[k].parameters()]
    d_params = [p for k in family.discriminators for p in nets[k].parameters()]
    optims = {"g": make_adam(g_params, o.lr_g, (o.beta1, o.beta2), device)}
    if d_params:
        optims["d"] = make_adam(d_params, o.lr_d, (o.beta1, o.beta2), device)
    schedule = partial(lr_factor, total=cfg.steps, decay_start=o.decay_start)
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for k, opt in optims.items()}
    scalers = {k: torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16") for k in optims}
    if "d" in scalers and scalers["d"].is_enabled():
        family.d_grad_scale = scalers["d"].get_scale
    step = 0
    if source is not None:
        _warm_start(source, nets, emas)
    if state is not None:
        for k, net in nets.items():
            net.load_state_dict(state["nets"][k])
        for k, ema in emas.items():
            ema.load_state_dict(state["ema"][k])
        for k in optims:
            optims[k].load_state_dict(state["optims"][k])
            _keep_fused(optims[k], device)  # checkpoints of older runs say fused=False
            scheds[k].load_state_dict(state["scheds"][k])
            scalers[k].load_state_dict(state["scalers"][k])
        # each rank's own image pools and RNG streams (older checkpoints kept rank 0's pools only: every rank then
        # starts from those). A rank the checkpoint lacks (resumed on more processes) starts from rank 0's pools and
        # keeps the streams of its own seed (cfg.seed + rank, set above), not a copy of rank 0's
        rngs, pools = state["rng"], state.get("family_ranks") or [state["family"]]
        family.load_state_dict(pools[d.rank] if d.rank < len(pools) else state["family"])
        if d.rank < len(rngs):
            checkpoint.set_rng_state(rngs[d.rank])
        had, now = state.get("samples"), len(dataset)  # type: ignore[arg-type]  # (before 2026-12-08: not said)
        if d.is_main and had is not None and had != now:
            print(f"dermagan train: note: the data set has {now} samples now, {had} when {ckpt_path} was written (its "
                  "folder changed): the run goes on, but its batches are not those of an uninterrupted run",
                  file=sys.stderr, flush=True)
        if d.is_main and len(rngs) != d.world:
            print(f"dermagan train: note: {ckpt_path} was written by {len(rngs)} process(es), this run has {d.world}: "
                  "it goes on, but each process's data shard and random streams are not those of an uninterrupted "
                  "run", file=sys.stderr, flush=True)
        step = int(state["step"])
    for net in list(nets.values()) + list(emas.values()):
        distributed.broadcast_module(net, d)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        history = _schedule_history(run_dir, state, step, cfg.steps)
        (run_dir / "config.json").write_text(
            json.dumps({**cfg.to_dict(), "labels": labels, **({"history": history} if history else {})}, indent=2))
        _trim_metrics(run_dir / "metrics.jsonl", step)
    # TensorBoard hides the events from `purge_step` on: what the run logged after this checkpoint, which a
    # resumed run logs again (as _trim_metrics does for metrics.jsonl)
    board = writer_class(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None) \
        if writer_class is not None and d.is_main else None
    # the fixed sample batch is read in index order without touching any RNG
    fixed = to_device(_first(dataset, min(8, len(dataset))), device)  # type: ignore[arg-type]
    val = to_device(_first(val_dataset, min(cfg.data.val_n, len(val_dataset))), device) \
        if cfg.val_every and val_dataset is not None else None  # type: ignore[arg-type]
    best: dict[str, Any] = dict(state.get("best") or {}) if state else {}

    # ---- 3. the loop
    autocast = partial(torch.autocast, device.type, dtype=AMP_DTYPES.get(cfg.amp, torch.float32),
                       enabled=cfg.amp != "none")
    data = batches(dataset, cfg.batch_size, cfg.seed, d.rank, d.world, step, cfg.data.workers, device.type == "cuda")
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and d.is_main), dynamic_ncols=True)
    t0, step0, stats = time.perf_counter(), step, {}
    # each statistic's latest value: one computed on some steps only (lazy R1, every r1_every) is logged at the
    # logged steps after it, not lost whenever its steps and log_every's never meet (16 and 10 never do)
    latest: dict[str, Any] = {}
    stop = min(cfg.steps, until or cfg.steps)
    stopper = _SignalStop.install(d.world, d.is_main)
    try:
        while step < stop:
            batch = to_device(next(data), device)
            if cfg.data.flip:
                batch = random_flip(batch)
            if cfg.data.crop:
                batch = random_crop(batch, cfg.data.crop)

            # generator phase (the discriminators are frozen; their weights get no gradient)
            for k in family.discriminators:
                nets[k].requires_grad_(False)
            with autocast():
                g_loss, stats, fakes = family.generator_loss(nets, batch)
            _step(optims["g"], scalers["g"], g_loss, g_params, d)
            for k in family.discriminators:
                nets[k].requires_grad_(True)

            # discriminator phase, on the generator's (detached) fakes
            if "d" in optims:
                with autocast():
                    d_loss, d_stats = family.discriminator_loss(nets, batch, fakes, step)
                _step(optims["d"], scalers["d"], d_loss, d_params, d)
                stats.update(d_stats)
            latest.update(stats)

            for k, ema in emas.items():
                update_ema(ema, nets[k], ema_beta_at(o.ema_beta, step))
            with warnings.catch_warnings():  # fp16: a step the GradScaler skipped still advances the schedule
                warnings.simplefilter("ignore", UserWarning)
                for s in scheds.values():
                    s.step()
            step += 1
            # out of time (--max-minutes), or Ctrl-C / SIGTERM: log and checkpoint this step, then end. torchrun's
            # ranks agree first, every step with a time limit, else at each logged step (a device sync there anyway)
            want = stopper.requested or (max_seconds is not None and time.perf_counter() - t0 > max_seconds)
            if d.world == 1 or max_seconds is not None or step % cfg.log_every == 0:
                if distributed.any_rank(want, d):
                    stop = step

            # log, sample, checkpoint (rank 0 only)
            ips = (step - step0) * cfg.batch_size * d.world / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop:
                stats = {k: float(v) for k, v in latest.items()}  # the only device sync of the step
                bad = [k for k, v in stats.items() if not math.isfinite(v)]
                if bad and cfg.amp != "fp16":  # (fp16: the GradScaler skips such steps by design)
                    raise FloatingPointError(f"step {step}: non-finite {', '.join(bad)}; lower the learning rate or use --amp none")
            if d.is_main and (step % cfg.log_every == 0 or step == stop):
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()} | {"img/s": f"{ips:.1f}"})
                line = {"images_per_s": ips, "lr_g": scheds["g"].get_last_lr()[0], **stats}
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **line}) + "\n")
                if board is not None:
                    for k, v in line.items():
                        board.add_scalar(k, v, step)
            if d.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                grid = run_dir / "samples" / f"step_{step:07d}.png"
                _sample(family, emas or nets, fixed, grid, ema=bool(emas))
                if board is not None:
                    with Image.open(grid) as im:
                        board.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            improved = False
            # at the run's end too, but not where a time-sliced call stops: a resumed run validates where an
            # uninterrupted one does, so both keep the same best
            if val is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                # rank 0 measures and every rank takes its numbers, so all decide `improved` alike and join the gather
                # below together (ranks that measured for themselves disagreed: each keeps BatchNorm running statistics
                # of its own shard, and a step where their scores straddled the best hung the run). Rank 0's networks
                # are the ones its checkpoints save and its metrics.jsonl reports; the other ranks' running statistics
                # are read by nothing (eval mode only: validation, samples, checkpoints are rank 0's), so they are
                # not broadcast at every validation (a resume starts every rank from rank 0's, broadcast_module)
                scores = distributed.from_main(_validate(family, emas or nets, val, cfg.batch_size)
                                               if d.is_main else None, d)
                if d.is_main:
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, **scores}) + "\n")
                    if board is not None:
                        for k, v in scores.items():
                            board.add_scalar(k, v, step)
                chosen = family.best_metric()
                if chosen is not None:
                    name, mode = chosen
                    value = scores[name]
                    improved = math.isfinite(value) and (not best or (value < best["value"] if mode == "min"
                                                                      else value > best["value"]))
                    if improved:
                        best = {"metric": name, "mode": mode, "value": value, "step": step}
            save_last = step % cfg.ckpt_every == 0 or step == stop
            if save_last or improved:
                # every rank's RNG state and (cycle) image pools, for an exact resume on as many processes
                own = family.state_dict()
                rngs, pools = map(list, zip(*distributed.gather_objects((checkpoint.rng_state(), own), d)))
                if d.is_main:
                    ckpt = {
                        "config": cfg.to_dict(), "labels": labels, "step": step,
                        "samples": len(dataset),  # type: ignore[arg-type]
                        "nets": {k: v.state_dict() for k, v in nets.items()},
                        "ema": {k: v.state_dict() for k, v in emas.items()},
                        "optims": {k: v.state_dict() for k, v in optims.items()},
                        "scheds": {k: v.state_dict() for k, v in scheds.items()},
                        "scalers": {k: v.state_dict() for k, v in scalers.items()},
                        "family": own, "rng": rngs, "best": best,
                    }
                    if d.world > 1:  # rank 0's pools once: `own`, the very tensors of "family"
                        ckpt["family_ranks"] = [own, *pools[1:]]
                    if save_last:
                        checkpoint.save(ckpt_path, ckpt)
                        if cfg.keep_checkpoints:
                            checkpoint.save(checkpoint.step_checkpoint(run_dir, step), ckpt)
                    if improved:
                        checkpoint.save(checkpoint.best_checkpoint(run_dir), ckpt)
    finally:
        stopper.restore()
    bar.close()
    if board is not None:
        board.close()
    stats = {k: float(v) for k, v in stats.items()}
    distributed.check_in_sync(nets.values(), d)
    distributed.shutdown(d)
    return Trained(stats, step)


class _SignalStop:
    """Ctrl-C (SIGINT) or SIGTERM during a run: finish the step, checkpoint it and end, as --max-minutes
    does (before, the steps since the last checkpoint were lost); a second signal stops at once. Under
    torchrun the ranks agree on the step (at the next logged step) and rank 0 writes; a Ctrl-C there
    arrives twice -- from the terminal and forwarded by torchrun's agent, which kills the ranks 30 s later
    -- so a repeat within `SAME_S` is the same request."""

    SAME_S = 2.0

    def __init__(self, world: int = 1, is_main: bool = True) -> None:
        self.requested = False
        self.world, self.is_main = world, is_main
        self.first = 0.0
        self.previous: dict[int, Any] = {}

    @classmethod
    def install(cls, world: int, is_main: bool = True) -> "_SignalStop":
        stopper = cls(world, is_main)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                stopper.previous[sig] = signal.signal(sig, stopper._on_signal)
        return stopper

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            if self.world > 1 and time.monotonic() - self.first < self.SAME_S:
                return  # torchrun's copy of the terminal's Ctrl-C
            self.restore()  # a second one: at once
            signal.raise_signal(signum)
            return
        self.requested, self.first = True, time.monotonic()
        if self.is_main:
            print(f"\ndermagan train: {signal.Signals(signum).name}: stopping after "
                  + ("this step" if self.world == 1 else "the ranks agree on a step") + " with a checkpoint "
                  "(continue with --resume; again to stop at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C reaches the whole process group, and
    torchrun sends its SIGTERM to each rank's group; a worker that died of either would fail the batches the
    run still draws before it checkpoints (torchrun's ranks agree on a step first). The training process
    shuts them down as it ends (and they end by themselves if it dies). Nor do they keep the run's lock: it
    goes with the trainer at once, not seconds later when they notice it is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    checkpoint.forget_run_locks()


def run_history(run_dir: Path) -> list[dict[str, int]]:
    """The schedule changes recorded in a run folder's config.json ("history"; [] when none):
    {"step": where a resume changed the step count, "steps_before": old total, "steps": new total}."""
    try:
        return list(json.loads((Path(run_dir) / "config.json").read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def _source_data(cfg: TrainConfig) -> Path | None:
    """The procedural set kept by the run `cfg.init_from` names (its folder, or a checkpoint in its
    checkpoints/): a warm start on the same set reads it instead of rendering it again."""
    if not cfg.init_from:
        return None
    path = Path(cfg.init_from)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    return None if run is None else run / sources.DATA_CACHE


def _warm_start_source(cfg: TrainConfig, labels: list[str]) -> dict[str, Any]:
    """The checkpoint `cfg.init_from` names, checked against this run before anything is built: same
    family, same networks (every net.* field) and same labels; otherwise a ValueError naming the difference."""
    path = Path(cfg.init_from)
    ckpt_path = checkpoint.last_checkpoint(path) if path.is_dir() else path
    if not ckpt_path.is_file():
        raise ValueError(f"init_from {cfg.init_from!r}: no checkpoint there (expected a run folder with "
                         f"checkpoints/last.pt, or a .pt file)")
    source = checkpoint.load(ckpt_path)
    theirs = TrainConfig.from_dict(source["config"])
    if theirs.family != cfg.family:
        raise ValueError(f"init_from {cfg.init_from!r} trains {theirs.family!r}, not {cfg.family!r}")
    differ = [f"net.{k} ({v} there, {getattr(cfg.net, k)} here)" for k, v in vars(theirs.net).items()
              if getattr(cfg.net, k) != v]
    if differ:
        raise ValueError(f"init_from {cfg.init_from!r} has other networks: {', '.join(differ)}")
    if list(source["labels"]) != list(labels):
        raise ValueError(f"init_from {cfg.init_from!r} was trained on labels {source['labels']}, this run on {labels}")
    return source


def _warm_start(source: dict[str, Any], nets: dict[str, torch.nn.Module], emas: dict[str, torch.nn.Module]) -> None:
    """Networks from the source checkpoint; each EMA from the source's EMA, or from its network if the
    source kept none. Optimisers, schedules, the image pool and the step start afresh."""
    for k, net in nets.items():
        net.load_state_dict(source["nets"][k])
    for k, ema in emas.items():
        ema.load_state_dict(source["ema"].get(k) or source["nets"][k])


def _schedule_history(run_dir: Path, state: dict | None, step: int, steps: int) -> list[dict[str, int]]:
    """run_history so far, plus this resume's entry if it changes the step count (a fresh run: [])."""
    if state is None:
        return []
    history = run_history(run_dir)
    before = int(state["config"]["steps"])
    if before != steps:
        history.append({"step": step, "steps_before": before, "steps": steps})
    return history


def make_adam(params: list, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over all parameters: ~5 % of a CPU step saved vs the
    single-tensor loop; deterministic on CPU, so resume stays bitwise)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=_fused_ok(params, device))


def _fused_ok(params: list, device: torch.device) -> bool:
    return device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)


def _keep_fused(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """load_state_dict restores the saved groups' flags; keep the kernel this process chose."""
    for group in opt.param_groups:
        group["fused"], group["foreach"] = _fused_ok(group["params"], device), None


def _step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor, params: list, d: Any) -> None:
    """zero_grad -> (scaled) backward -> average over ranks -> step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.average_gradients(params, d)
    scaler.step(opt)
    scaler.update()


def _first(dataset: Dataset, n: int) -> Batch:
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


@torch.no_grad()
def _validate(family: Any, nets: dict, batch: Batch, chunk: int) -> dict[str, float]:
    """The family's validation metrics over `batch`, in chunks of `chunk` samples, in eval mode and fp32
    (the exported model's behaviour); the mean per metric. No RNG is drawn and no state changes."""
    gens = {k: nets[k] for k in family.generators}
    modes = {k: g.training for k, g in gens.items()}
    n = len(batch["image"])
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for g in gens.values():
            g.eval()
        for i in range(0, n, chunk):
            piece = {k: v[i:i + chunk] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}
            for k, v in family.validation(gens, piece).items():
                parts.setdefault(k, []).append(v.float().cpu())
    finally:
        for k, g in gens.items():
            g.train(modes[k])
    return {k: float(torch.cat(v).mean()) for k, v in parts.items()}


@torch.no_grad()
def _sample(family: Any, nets: dict, batch: Batch, path: Path, ema: bool = False) -> None:
    """Sample rows in eval mode (no BN statistics change, no global RNG drawn), then back to train.
    EMA copies draw with standing BatchNorm statistics, computed on a throw-away copy."""
    gens = {k: nets[k] for k in family.generators}
    if ema:
        gens = {k: copy.deepcopy(g) for k, g in gens.items()}
        for g in gens.values():
            family.standing_statistics(g)
    modes = {k: g.training for k, g in gens.items()}
    for g in gens.values():
        g.eval()
    save_grid(family.sample_rows(gens, batch), path)
    for k, g in gens.items():
        g.train(modes[k])


def _tensorboard_writer() -> Any:
    """torch's SummaryWriter, or a ValueError naming the package to install (checked before training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard "
                         "(part of the dermagan[train] extra)") from None
    return SummaryWriter


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again), and lines that do
    not parse: a write cut short by a full disk, a kill or a power loss -- the events a resume follows."""
    if step == 0 or not path.exists():
        return
    keep, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            logged = json.loads(line)["step"] if line.strip() else None
        except (ValueError, TypeError, KeyError):
            logged, torn = None, torn + 1
        if isinstance(logged, int) and logged <= step:
            keep.append(line)
    if torn:
        print(f"dermagan train: note: {path}: dropped {torn} line(s) that do not parse (a write cut short)",
              file=sys.stderr, flush=True)
    path.write_text("".join(line + "\n" for line in keep))
