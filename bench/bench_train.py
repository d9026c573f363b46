"""Steady-state training throughput (images/s) of every family, and against the reference.

Prints a Markdown table naming the machine: our trainer (`dermagan.training.loop.train`, the real
loop with its logging) per family at 64 and 128 px on CPU (and CUDA where present), and -- with
`--reference-dir` pointing at a checkout of junyanz/pytorch-CycleGAN-and-pix2pix -- the reference
`train.py` on the same machine in the same run, for the issue's two comparisons:

- CycleGAN `resnet_9blocks` at 64 px, batch 1 (our `cycle` family with the `paper` preset is the
  reference's defaults: ngf 64, InstanceNorm, 70x70 PatchGAN, LSGAN, pool 50, identity 0.5);
- pix2pix `unet_128` at 128 px, batch 1, against our `add` family configured like pix2pix
  (`--generator unet`: the same U-Net, 7 down-samplings, ngf 64, BatchNorm, dropout 0.5; PatchGAN D
  with BatchNorm, BCE, L1 100, no DiffAugment/EMA); and `resnet_6blocks` against our ResNet-6
  translator in the same setup.

Timing: per-step wall time, median over the steps after `--warmup` (robust on shared machines).
Ours: from the loop's own metrics.jsonl (cumulative images/s per step -> per-step times; it
includes data fetch, EMA and logging). Reference: the `time:` its loss log prints per iteration
(`--print_freq 1`; compute only, data loading excluded) -- so the comparison is conservative for us.
`--step-profile` also profiles a step of each comparison in both trainers (torch.profiler: operators, kernels
launched, kernel time and host-device syncs a step), to tell a step bound by the device from one bound by
launching its work (a GPU at batch 1).
Run both in one environment (the reference needs torchvision), e.g.
    /tmp/refvenv/bin/python bench/bench_train.py --reference-dir /tmp/ref --out bench/results/train-DATE.md
The reference's code is never part of this repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dermagan.training import loop
from dermagan.training.config import FAMILIES, TrainConfig, preset

LABELS = ["eczema", "hand", "lesion"]


class RandomTriplets(Dataset):
    """In-memory random samples with every tensor any family reads (content does not change FLOPs)."""

    def __init__(self, size: int, n: int = 16, seed: int = 0, n_labels: int = len(LABELS)) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = [{
            "image": torch.rand(3, size, size, generator=g) * 2 - 1,
            "healthy": torch.rand(3, size, size, generator=g) * 2 - 1,
            "mask": (torch.rand(1, size, size, generator=g) > 0.5).float(),
            "label": torch.tensor(i % n_labels),
        } for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def pix2pix_like(size: int, generator: str = "unet") -> TrainConfig:
    """Our add family with pix2pix's training setup: U-Net-128 (7 downs) or ResNet-6 generator."""
    cfg = preset("paper", "add")
    return dataclasses.replace(
        cfg, size=size, batch_size=1, augment="",
        net=dataclasses.replace(cfg.net, disc="patch", d_norm="batch", g_norm="batch", g_blocks=6,
                                generator=generator, g_unet_downs=7),
        loss=dataclasses.replace(cfg.loss, gan="bce", real_label=1.0, lambda_l1=100.0, lambda_relevancy=0.0),
        optim=dataclasses.replace(cfg.optim, lr_g=2e-4, lr_d=2e-4, beta1=0.5, ema_beta=0.0))


def ours(cfg: TrainConfig, steps: int, warmup: int, device: str, amp: str = "none", clock: str = "wall",
         labels: list[str] | None = None) -> float:
    """Median steady-state images/s of the real training loop (`labels`: a generator's kinds, default all three)."""
    total = warmup + steps
    cfg = dataclasses.replace(cfg, steps=total, log_every=1, sample_every=10**9, ckpt_every=10**9,
                              keep_checkpoints=False, device=device, amp=amp)
    labels = (labels or LABELS) if cfg.family == "generate" else []
    dataset = RandomTriplets(cfg.size, n=max(16, cfg.batch_size * 2), n_labels=max(1, len(labels)))
    wall = time.perf_counter
    with tempfile.TemporaryDirectory() as run:
        if clock == "cpu":  # the loop times itself with time.perf_counter
            time.perf_counter = time.process_time
        try:
            loop.train(cfg, run, dataset=dataset, labels=labels, progress=False)
        finally:
            time.perf_counter = wall
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    # images_per_s is cumulative since the loop started: t_k = k * B / ips_k
    t = {r["step"]: r["step"] * cfg.batch_size / r["images_per_s"] for r in rows}
    dts = [t[k] - t[k - 1] for k in range(warmup + 1, total + 1)]
    return cfg.batch_size / statistics.median(dts)


def step_gflop(cfg: TrainConfig, device: str) -> float:
    """GFLOP of one optimiser step of our real loop (forward and backward of every network, as
    `torch.utils.flop_counter` counts them: convolutions and matrix products, 2 per multiply-add):
    a run of 2 steps less a run of 1, so what a run does once (its final sample grid) drops out."""
    from torch.utils.flop_counter import FlopCounterMode

    def run_of(steps: int) -> float:
        c = dataclasses.replace(cfg, steps=steps, log_every=1, sample_every=10**9, ckpt_every=10**9,
                                keep_checkpoints=False, device=device, amp="none")
        dataset = RandomTriplets(c.size, n=max(16, c.batch_size * 2), n_labels=1)
        with tempfile.TemporaryDirectory() as run, FlopCounterMode(display=False) as counter:
            loop.train(c, run, dataset=dataset, labels=[], progress=False)
        return counter.get_total_flops()

    return (run_of(2) - run_of(1)) / 1e9


def gemm_peak(device: str, n: int = 2048, reps: int = 12) -> float:
    """GFLOP/s of an n x n x n float32 matrix product on `device` (torch's threads): the rate a
    convolution, which is a matrix product, can at best approach. Best of `reps`."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 2):
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------- the reference


def _noise_png(path: Path, w: int, h: int, rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


#: Runs the reference's train.py unchanged, with its `time.time()` reading process CPU time.
_CPU_CLOCK = "import runpy, sys, time\ntime.time = time.process_time\nsys.argv[0] = 'train.py'\nrunpy.run_path('train.py', run_name='__main__')\n"


def reference_times(log: str) -> list[tuple[float, float]]:
    """(compute, data) seconds of every iteration the reference's loss log prints (`--print_freq 1`):
    `time` is its set_input + optimize_parameters + loss read-out per image, `data` its wait for the
    DataLoader (PNG decoding and transforms, on the CPU)."""
    return [(float(t), float(d)) for t, d in re.findall(r"\(epoch: \d+, iters: \d+, time: ([0-9.]+), data: ([0-9.]+)\)", log)]


def reference(ref_dir: Path, model: str, net_g: str, size: int, steps: int, warmup: int, device: str,
              clock: str = "wall", launcher: list[str] | None = None,
              env: dict[str, str] | None = None) -> tuple[float, float]:
    """Median steady-state images/s of the reference train.py (batch 1), parsed from its loss log: on its
    compute time alone (what its log calls `time`), and on compute + data loading (its whole step).
    `launcher`: how Python starts it (default `train.py`, or the CPU-clock one); `env`: more variables."""
    n = warmup + steps
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        if model == "cycle_gan":
            for d in ("trainA", "trainB"):
                (root / d).mkdir(parents=True)
                for i in range(n):
                    _noise_png(root / d / f"{i}.png", size, size, rng)
            extra = []
        else:  # pix2pix: aligned A|B pairs side by side
            (root / "train").mkdir(parents=True)
            for i in range(n):
                _noise_png(root / "train" / f"{i}.png", 2 * size, size, rng)
            extra = ["--dataset_mode", "aligned", "--direction", "AtoB"]
        big = str(10**9)
        launcher = launcher or (["-c", _CPU_CLOCK] if clock == "cpu" else ["train.py"])
        cmd = [sys.executable, *launcher, "--dataroot", str(root), "--name", "bench", "--model", model,
               "--netG", net_g, "--checkpoints_dir", str(Path(tmp) / "ckpt"), "--batch_size", "1",
               "--load_size", str(size), "--crop_size", str(size), "--gpu_ids", "0" if device == "cuda" else "-1",
               "--display_id", "0", "--no_html", "--print_freq", "1", "--display_freq", big,
               "--update_html_freq", big, "--save_latest_freq", big, "--save_epoch_freq", big,
               "--n_epochs", "1", "--n_epochs_decay", "0", "--num_threads", "0", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads()),
               **(env or {})}
        proc = subprocess.run(cmd, cwd=ref_dir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"reference train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    times = reference_times(proc.stdout)
    if len(times) != n:
        raise RuntimeError(f"expected {n} timed iterations in the reference log, parsed {len(times)}:\n{proc.stdout[-2000:]}")
    steady = times[warmup:]
    return 1.0 / statistics.median(t for t, _ in steady), 1.0 / statistics.median(t + d for t, d in steady)


# ----------------------------------------------------------------------------- where a step's time goes

#: device-side synchronisations the host waits on (a step that waits can no longer queue work ahead)
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def profile_totals(prof: Any) -> dict[str, float]:
    """What a torch.profiler run did in all: `ops` the operators called from Python or autograd (top-level
    aten calls: on a GPU each launches about one kernel), `launches` the kernels launched, `kernel_ms` their
    time on the device, `syncs` the host's waits on the device (0 on a CPU for the last three)."""
    from torch.autograd import DeviceType

    ops = kernels = 0
    kernel_us = 0.0
    for e in prof.events():
        parent = e.cpu_parent
        if e.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::")):
            ops += 1
        elif e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            kernels += 1  # a kernel as the device ran it (whatever the launch API is called)
            kernel_us += e.time_range.elapsed_us()  # (the ops that launched it carry the same time: not summed)
    launches = syncs = 0
    for k in prof.key_averages():
        if k.key in _LAUNCHES:
            launches += k.count
        elif k.key in _SYNCS:
            syncs += k.count
    return {"ops": ops, "launches": max(launches, kernels), "kernel_ms": kernel_us / 1e3, "syncs": syncs}


def _activities() -> list[Any]:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def per_step(run_of: Any, n1: int, n2: int) -> dict[str, float]:
    """`profile_totals` of a run of n2 steps less a run of n1, per step: set-up, warm-up (cuDNN's autotuning) and
    the run's end drop out."""
    a, b = run_of(n1), run_of(n2)
    return {k: (b[k] - a[k]) / (n2 - n1) for k in a}


def ours_profiled(cfg: TrainConfig, device: str, n: int) -> dict[str, float]:
    from torch.profiler import profile

    with profile(activities=_activities()) as prof:
        ours(cfg, n - 1, 1, device)
    return profile_totals(prof)


#: Runs the reference's train.py unchanged under torch.profiler and writes `profile_totals` as JSON.
_PROFILED = ("import json, os, runpy, sys\nsys.path.insert(0, os.environ['DERMAGAN_BENCH_DIR'])\n"
             "import bench_train\nfrom torch.profiler import profile\nsys.argv[0] = 'train.py'\n"
             "with profile(activities=bench_train._activities()) as prof:\n"
             "    runpy.run_path('train.py', run_name='__main__')\n"
             "json.dump(bench_train.profile_totals(prof), open(os.environ['DERMAGAN_PROFILE_OUT'], 'w'))\n")


def reference_profiled(ref_dir: Path, model: str, net_g: str, size: int, device: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        env = {"DERMAGAN_BENCH_DIR": str(Path(__file__).resolve().parent), "DERMAGAN_PROFILE_OUT": str(out)}
        reference(ref_dir, model, net_g, size, n - 1, 1, device, launcher=["-c", _PROFILED], env=env)
        return json.loads(out.read_text())


# ----------------------------------------------------------------------------- report


def generator_batching(device: str, rounds: int, size: int = 64) -> dict[int, float]:
    """ms per image of the CycleGAN's ResNet-9 generator, forward + backward, at batch 1, 2 and 3.

    Our cycle step runs the six generator passes of a batch-1 step as three calls of 2, 3 and 1
    images (families.CycleFamily); the reference makes six calls of 1. What that is worth depends
    on how much faster a CPU's convolutions run per image at batch 2-3 than at batch 1.
    """
    from dermagan.training.networks.resnet import ResnetGenerator

    net = ResnetGenerator(3, 64, 9, 2, "instance").to(device)
    xs = {b: torch.rand(b, 3, size, size, device=device) * 2 - 1 for b in (1, 2, 3)}

    def once(b: int) -> float:
        t = time.perf_counter()
        net(xs[b]).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for b in (1, 2, 3, 1, 2, 3):  # warm-up
        once(b)
    times: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for _ in range(rounds):  # interleaved, so drift of a shared machine hits every batch size alike
        for b in times:
            times[b].append(once(b))
    return {b: 1000 * statistics.median(ts) / b for b, ts in times.items()}


def release_configs(profile: str) -> list[tuple[str, TrainConfig]]:
    """(run name, the TrainConfig its `dermagan train` command line builds) for every run of a release profile."""
    from dermagan.training.release import SHIPPED

    return [(run.run, run.config()) for run in SHIPPED[profile]]


def step_costs(cfg: TrainConfig, steps: int, warmup: int, glibc_default: bool) -> dict[str, float]:
    """Median wall seconds and minor page faults a step of the real loop on `cfg` (its device and amp), in this
    process: with dermagan's allocator thresholds (dermagan/allocator.py, what `loop.train` sets on a CPU) or,
    with `glibc_default`, without them. Process-wide and irreversible, so one arm per process (`--allocator`)."""
    import resource

    from dermagan import allocator
    from dermagan.training import families

    marks: list[tuple[float, int]] = []
    keep, losses = allocator.keep_freed_memory, {cls: cls.generator_loss for cls in set(families.FAMILIES.values())}
    for cls, loss in losses.items():  # a step begins where its generator loss does
        def marked(self: Any, *a: Any, _loss: Any = loss, **k: Any) -> Any:
            marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
            return _loss(self, *a, **k)
        cls.generator_loss = marked  # type: ignore[method-assign]
    if glibc_default:
        allocator.keep_freed_memory = lambda: False
    try:
        ours(cfg, steps, warmup, cfg.device, amp=cfg.amp, labels=list(cfg.data.kinds))
    finally:
        allocator.keep_freed_memory = keep
        for cls, loss in losses.items():
            cls.generator_loss = loss  # type: ignore[method-assign]
    spans = list(zip(marks[warmup:], marks[warmup + 1:]))
    return {"s": statistics.median(b[0] - a[0] for a, b in spans),
            "faults": statistics.median(b[1] - a[1] for a, b in spans)}


def allocator_ab(profile: str, rounds: int, steps: int, warmup: int, runs: list[str] | None = None,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Every distinct configuration of the release profile's runs, glibc's default allocator against dermagan's
    thresholds, each arm a child process, alternated (order swapped every round) over `rounds` rounds."""
    configs, seen = dict(release_configs(profile)), set()
    rows = []
    for name, cfg in configs.items():
        key = (cfg.family, cfg.size, cfg.batch_size, cfg.net, cfg.amp)  # the CycleGAN's stages differ in losses only,
        if key in seen or (runs is not None and name not in runs):     # hand-generate from generate in its kinds only
            continue
        seen.add(key)
        got: dict[str, list[dict[str, float]]] = {"default": [], "kept": []}
        for r in range(rounds):
            for arm in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
                cmd = [sys.executable, __file__, "--allocator-child", arm, profile, name, str(steps), str(warmup)]
                cmd += ["--threads", str(threads)] if threads else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                got[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
        ratios = [d["s"] / k["s"] for d, k in zip(got["default"], got["kept"])]
        rows.append({"run": name, "cfg": cfg,
                     "default_s": statistics.median(x["s"] for x in got["default"]),
                     "kept_s": statistics.median(x["s"] for x in got["kept"]),
                     "speedup": statistics.median(ratios), "ratios": ratios,
                     "default_faults": statistics.median(x["faults"] for x in got["default"]),
                     "kept_faults": statistics.median(x["faults"] for x in got["kept"])})
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores (torch threads {torch.get_num_threads()}){gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; "
            f"load average at start {os.getloadavg()[0]:.1f} (other work shares the machine)")


def _commit() -> str:
    """Short hash of this checkout's HEAD (+ "-dirty" when tracked files differ), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "training", "bench/bench_train.py"], cwd=here.parent).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", type=Path, help="checkout of junyanz/pytorch-CycleGAN-and-pix2pix (its train.py)")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES,
                   help="families of the per-family table (none: no table)")
    p.add_argument("--comparisons", type=int, default=3,
                   help="first N reference comparisons: cycle, pix2pix unet_128, pix2pix resnet_6blocks (default 3)")
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    p.add_argument("--preset", default="paper", help="preset of the per-family table (default: paper)")
    p.add_argument("--batch-size", type=int, default=4, help="largest batch size of the per-family table (default 4; BatchNorm needs > 1)")
    p.add_argument("--steps", type=int, default=12, help="timed steps after warm-up (default 12)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/reference rounds; the best counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads for ours and the reference "
                   "(default: torch's; 1 is steadier on a shared machine)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: wall-clock time; cpu: process CPU time (with --threads 1 the work itself, "
                   "independent of what else runs on a shared machine)")
    p.add_argument("--bf16", action="store_true", help="also time ours with bf16 autocast (--amp bf16)")
    p.add_argument("--roofline", action="store_true",
                   help="with --reference-dir: also count a step's GFLOP and measure the device's float32 matrix-product "
                   "rate, i.e. how far each trainer is from the most the hardware allows, and what rate a target "
                   "ratio over the reference needs")
    p.add_argument("--step-profile", action="store_true",
                   help="with --reference-dir: also profile a step of each comparison, ours and the reference's "
                   "(torch.profiler; operators, kernels launched, kernel time and host-device syncs a step): on a GPU "
                   "at batch 1, whether a trainer is bound by the device or by launching its work")
    p.add_argument("--generator-batching", action="store_true",
                   help="also time the CycleGAN generator per image at batch 1, 2, 3 (what batching its passes saves)")
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--release-profile", choices=("cpu", "gpu"),
                   help="also time every run of `dermagan release --profile P` with its own configuration (device, "
                   "amp, widths, batch) on in-memory data, and the hours its step count then takes")
    p.add_argument("--allocator", action="store_true",
                   help="also time every distinct run of `--release-profile` (default cpu) with glibc's default "
                   "allocator and with dermagan's thresholds (dermagan/allocator.py), each arm a child process, "
                   "alternated over --rounds rounds: wall time and page faults a step")
    p.add_argument("--allocator-child", nargs=5, help=argparse.SUPPRESS)  # ARM PROFILE RUN STEPS WARMUP
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator_child:
        arm, profile, run, steps, warmup = args.allocator_child
        cost = step_costs(dict(release_configs(profile))[run], int(steps), int(warmup), glibc_default=arm == "default")
        print(json.dumps(cost))
        return 0

    lines = [f"# Training throughput ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {machine()}.", "", f"Code: dermagan commit {_commit()}.", "",
             f"Median steady-state images/s over {args.steps} steps after {args.warmup} warm-up steps, "
             f"{'process CPU time' if args.clock == 'cpu' else 'wall-clock time'}; best of {args.rounds} "
             "alternating rounds for the comparison.", ""]

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    for line in lines:
        print(line)
    if args.reference_dir:
        emit("## Against the reference (junyanz/pytorch-CycleGAN-and-pix2pix train.py), batch 1")
        emit()
        emit("`reference img/s` is on its compute time alone, as its log reports it (the headline ratio: ours "
             "includes fetching our data); `ref incl. data` adds its wait for its DataLoader (decoding PNGs), "
             "its whole step.")
        emit()
        emit("| device | comparison | size | ours fp32 img/s | reference img/s | ours fp32 / ref | ref incl. data img/s | "
             "ours fp32 / ref incl. data |" + (" ours bf16 autocast img/s | ours bf16 / ref |" if args.bf16 else ""))
        emit("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.bf16 else ""))
        pairs = [("CycleGAN resnet_9blocks: our cycle (paper preset) vs ref cycle_gan", 64,
                  dataclasses.replace(preset("paper", "cycle"), size=64, batch_size=1), "cycle_gan", "resnet_9blocks"),
                 ("pix2pix unet_128: our add (pix2pix-like, U-Net-128 G) vs ref pix2pix", 128,
                  pix2pix_like(128, "unet"), "pix2pix", "unet_128"),
                 ("pix2pix resnet_6blocks: our add (pix2pix-like, ResNet-6 G) vs ref pix2pix", 128,
                  pix2pix_like(128, "resnet"), "pix2pix", "resnet_6blocks")][: args.comparisons]
        roof: list[tuple[str, str, float, float, float]] = []  # device, comparison, ours img/s, ref img/s, GFLOP/img
        for device in args.devices:
            for label, size, cfg, model, net_g in pairs:
                a = b = bd = c = 0.0
                for _ in range(args.rounds):  # alternate, keep the best of each: other load only slows down
                    a = max(a, ours(cfg, args.steps, args.warmup, device, clock=args.clock))
                    rb, rbd = reference(args.reference_dir, model, net_g, size, args.steps, args.warmup, device,
                                        clock=args.clock)
                    b, bd = max(b, rb), max(bd, rbd)
                    if args.bf16:
                        c = max(c, ours(cfg, args.steps, args.warmup, device, amp="bf16", clock=args.clock))
                emit(f"| {device} | {label} | {size} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {bd:.3f} | {a / bd:.2f}x |"
                     + (f" {c:.3f} | {c / b:.2f}x |" if args.bf16 else ""))
                if args.roofline:
                    roof.append((device, label.split(":")[0], a, b, step_gflop(cfg, device) / cfg.batch_size))
        emit()
        if roof:
            emit("### Roofline: how far from the hardware each trainer runs")
            emit()
            emit("GFLOP an image: one step of our loop counted by `torch.utils.flop_counter` (every network's forward "
                 "and backward), taken as the reference's too (the same networks, losses and passes). Peak: the best "
                 "of 2048 x 2048 x 2048 float32 matrix products on the device, measured now (a convolution is a "
                 "matrix product; oneDNN / cuDNN run it at or below that rate).")
            emit()
            emit("| device | comparison | GFLOP an image | peak GFLOP/s | ours GFLOP/s (of peak) | reference GFLOP/s "
                 "(of peak) | 1.3x the reference needs (of peak) |")
            emit("|---|---|---|---|---|---|---|")
            peaks = {d: gemm_peak(d) for d in {r[0] for r in roof}}
            for device, label, a, b, gflop in roof:
                pk = peaks[device]
                emit(f"| {device} | {label} | {gflop:.1f} | {pk:.0f} | {a * gflop:.0f} ({a * gflop / pk:.0%}) | "
                     f"{b * gflop:.0f} ({b * gflop / pk:.0%}) | {1.3 * b * gflop:.0f} ({1.3 * b * gflop / pk:.0%}) |")
            emit()
    if args.step_profile and args.reference_dir:
        emit("## Where a step goes (torch.profiler)")
        emit()
        emit("Per step: a profiled run of 8 steps less one of 4 (set-up and cuDNN's autotuning drop out). `operators`: "
             "top-level aten calls (on a GPU, about one kernel each); `kernels`, `kernel ms`, `syncs` (the host waiting "
             "on the device: a loss read out, a copy back) on CUDA only. A step whose kernel time is well under its wall "
             "time (the table above) is bound by launching its work, not by the device.")
        emit()
        emit("| device | comparison | trainer | operators | kernels | kernel ms | syncs |")
        emit("|---|---|---|---|---|---|---|")
        for device in args.devices:
            for label, size, cfg, model, net_g in pairs:
                rows = {"ours": per_step(lambda n: ours_profiled(cfg, device, n), 4, 8),
                        "reference": per_step(lambda n: reference_profiled(args.reference_dir, model, net_g, size,
                                                                           device, n), 4, 8)}
                for who, r in rows.items():
                    emit(f"| {device} | {label.split(':')[0]} | {who} | {r['ops']:.0f} | {r['launches']:.0f} | "
                         f"{r['kernel_ms']:.2f} | {r['syncs']:.1f} |")
        emit()
    if args.generator_batching:
        emit("## The CycleGAN's ResNet-9 generator, forward + backward at 64 px, ms per image")
        emit()
        emit("Ours makes the six generator passes of a batch-1 cycle step in calls of 2, 3 and 1 images; "
             "the reference in six calls of 1.")
        emit()
        emit("| device | batch 1 | batch 2 | batch 3 | six passes as 2 + 3 + 1 vs 6 x 1 |")
        emit("|---|---|---|---|---|")
        for device in args.devices:
            ms = generator_batching(device, rounds=3 * args.steps)
            batched = 2 * ms[2] + 3 * ms[3] + ms[1]
            emit(f"| {device} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} | {6 * ms[1] / batched:.2f}x faster |")
        emit()
    if args.release_profile:
        emit(f"## `dermagan release --profile {args.release_profile}`: each run's own configuration, data in memory")
        emit()
        emit("Compute only: the procedural data is rendered once per sample and memoised, so after the first "
             "epoch a run trains at about this rate (the first epoch can be bound by rendering).")
        emit()
        emit("| run | family | device, amp | size | batch | img/s | steps/s | steps | hours for its steps |")
        emit("|---|---|---|---|---|---|---|---|---|")
        for name, cfg in release_configs(args.release_profile):
            ips = ours(cfg, args.steps, args.warmup, cfg.device, amp=cfg.amp, clock=args.clock, labels=list(cfg.data.kinds))
            rate = ips / cfg.batch_size
            emit(f"| {name} | {cfg.family} | {cfg.device}, {cfg.amp} | {cfg.size} | {cfg.batch_size} | {ips:.1f} | "
                 f"{rate:.2f} | {cfg.steps} | {cfg.steps / rate / 3600:.2f} |")
        emit()
    if args.allocator:
        profile = args.release_profile or "cpu"
        emit(f"## The allocator: glibc's default vs dermagan's thresholds, `dermagan release --profile {profile}`'s runs")
        emit()
        emit(f"Each run's own configuration on in-memory data; each arm a child process, {args.rounds} rounds alternated "
             f"(the order swapped every round); median over {args.steps} steps after {args.warmup}. `kept`: blocks up "
             "to 32 MiB and up to 1 GiB free at the heap's top stay in the process (dermagan/allocator.py, set by "
             "`loop.train` on a CPU). Speed-up: the median of the rounds' ratios (their range after it). A run with "
             "an earlier one's networks, size, batch and amp (differing in losses or kinds) is not timed again.")
        emit()
        emit("| run | family | size | batch | amp | s/step default | s/step kept | speed-up | page faults/step default | kept |")
        emit("|---|---|---|---|---|---|---|---|---|---|")
        for row in allocator_ab(profile, args.rounds, args.steps, args.warmup, threads=args.threads):
            c = row["cfg"]
            emit(f"| {row['run']} | {c.family} | {c.size} | {c.batch_size} | {c.amp} | {row['default_s']:.3f} | "
                 f"{row['kept_s']:.3f} | {row['speedup']:.3f}x ({min(row['ratios']):.2f}-{max(row['ratios']):.2f}) | "
                 f"{row['default_faults']:.0f} | {row['kept_faults']:.0f} |")
        emit()
    if args.families:
        emit(f"## Every family, `{args.preset}` preset, batch min(preset's, {args.batch_size}), fp32")
        emit()
        emit("| device | family | size | batch | img/s |")
        emit("|---|---|---|---|---|")
    for device in args.devices:
        for family in args.families:
            for size in args.sizes:
                cfg = preset(args.preset, family)
                cfg = dataclasses.replace(cfg, size=size, batch_size=min(cfg.batch_size, args.batch_size))
                ips = ours(cfg, args.steps, args.warmup, device, clock=args.clock)
                emit(f"| {device} | {family} | {size} | {cfg.batch_size} | {ips:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
