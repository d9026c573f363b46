"""Self-describing checkpoints and the export seam `load_exportables(run_dir)`.

A run folder RUN/ holds `config.json`, `checkpoints/last.pt` (+ `step_XXXXXXX.pt`), `samples/*.png`,
`metrics.jsonl` (and `tensorboard/` with --tensorboard). A checkpoint carries the typed config (as a
dict), the label names, every network (unwrapped), the EMA copies, optimisers, LR schedulers, grad scalers, the family's own state
(CycleGAN's image pools), the RNG states of python/numpy/torch/cuda for every rank, and the step.
It holds only tensors and plain containers, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermagan.training.config import TrainConfig

FORMAT_VERSION = 1


@dataclass
class Exportable:
    """One network ready for ONNX export (see docs/INTERFACES.md)."""

    task: str  # manifest task: generate, add, remove, cycle-add, cycle-remove, segment
    name: str  # suggested model name, e.g. "eczema-add"
    module: nn.Module  # eval mode, EMA weights where kept; forward(*TASK_INPUTS[task] [, label])
    example_inputs: dict[str, torch.Tensor]  # name -> tensor at batch 1, training resolution
    facts: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state(legacy=True)  # ("MT19937", keys, pos, has_gauss, cached)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save never leaves a truncated last.pt. `saved_at` (UTC, seconds) dates the
    weights: an export of this checkpoint says it was created then, so exporting it again writes the same bytes."""
    saved_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    write_atomic(path, {"format": FORMAT_VERSION, "saved_at": saved_at, **state})


def write_atomic(path: Path, obj: Any) -> None:
    """`torch.save(obj)` to `path` through a temporary file: a crash mid-write never leaves a truncated file, and
    a failed write leaves no partial one to take the room the next try needs; a full disk is OSError(ENOSPC)
    naming `path` (torch's zip writer says only "unexpected pos ...", with no errno)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except RuntimeError as e:
        if shutil.disk_usage(tmp.parent).free < 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


#: the run folder's lock file: a trainer holds an exclusive flock on it while it trains, with its pid inside
LOCK = "train.lock"
#: lock file -> descriptor, of the locks this process holds (a second `run_lock` of the same run re-enters)
_HELD: dict[Path, int] = {}


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the run's exclusive lock for the block: one trainer per run folder. Two at once (a `--resume` while
    the run still trains) both trained, interleaved metrics.jsonl and left last.pt to whichever wrote last; the
    second one now gets a ValueError naming the other's pid before anything is written. An flock ends with its
    process, so a killed trainer leaves no stale lock for its resume to trip on (the file stays, empty). Only
    the process that writes the run takes it (rank 0 under torchrun). A run folder it had to create is removed
    again if the block wrote nothing else into it (a refusal leaves no folder behind)."""
    run_dir = Path(run_dir).absolute()
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    if path in _HELD:
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown: it has just started"
            os.close(fd)
            raise ValueError(f"{run_dir} is being trained by another process (pid {pid}); wait for it to end or stop "
                             "it (it checkpoints its step, and --resume then continues the run), or choose another "
                             "--out") from None
        try:  # the file we locked is still the folder's (not one a refused trainer removed meanwhile, below)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
        run_dir.mkdir(parents=True, exist_ok=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[path] = fd
    try:
        yield
    finally:
        del _HELD[path]
        os.ftruncate(fd, 0)  # an empty file: nobody trains it
        if made and [p.name for p in run_dir.iterdir()] == [LOCK]:
            path.unlink()
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # something else was put there meanwhile
                    break
        fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children that still share the descriptor
        os.close(fd)


def forget_run_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited descriptors of the run locks without
    unlocking them (the trainer still holds them), so that the lock ends with the trainer, not also with
    its last child: a killed trainer's workers take seconds to notice."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this version reads {FORMAT_VERSION}")
    return state


def created_at(state: dict[str, Any], path: Path) -> str:
    """When the checkpoint's weights were made (UTC ISO, seconds): SOURCE_DATE_EPOCH when set (the
    reproducible-builds convention), else the time saved in the checkpoint, else (older checkpoints) its
    file's modification time."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat()
    if state.get("saved_at"):
        return str(state["saved_at"])
    return datetime.fromtimestamp(int(path.stat().st_mtime), timezone.utc).isoformat()


def last_checkpoint(run_dir: Path | str) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def step_checkpoint(run_dir: Path | str, step: int) -> Path:
    """The checkpoint a run with `keep_checkpoints` kept at `step`."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def best_checkpoint(run_dir: Path | str) -> Path:
    """The checkpoint at the best validation score so far (`--val-every`)."""
    return Path(run_dir) / "checkpoints" / "best.pt"


def kept_steps(run_dir: Path | str) -> list[int]:
    """Steps of the kept checkpoints (`step_XXXXXXX.pt`), ascending."""
    return sorted(int(p.stem[5:]) for p in (Path(run_dir) / "checkpoints").glob("step_*.pt") if p.stem[5:].isdigit())


def trained_on(cfg: TrainConfig) -> str:
    if cfg.data.root is not None:
        root = Path(cfg.data.root)
        return f"labels CSV {root.name}" if root.suffix.lower() == ".csv" else f"folder {root.name}"
    try:
        from dermagan.training.synth import RENDERER_VERSION  # type: ignore[attr-defined]
    except ImportError:
        RENDERER_VERSION = "?"
    return f"synthetic-v{RENDERER_VERSION} (procedural: {', '.join(cfg.data.kinds)})"


def load_exportables(run_dir: Path | str, weights: str = "ema", step: int | None = None,
                     best: bool = False) -> list[Exportable]:
    """The run's exportable networks from `checkpoints/last.pt` (or the one kept at `step`, or with `best`
    the one at the best validation score), in eval mode, on CPU.

    `weights`: "ema" (the EMA copies where the run kept them, else the trained weights) or "raw"
    (always the trained weights).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"unknown weights {weights!r}; valid: ema, raw")
    from dermagan.training.families import get_family

    path = last_checkpoint(run_dir)
    if step is not None:
        path = step_checkpoint(run_dir, step)
        if not path.is_file():
            kept = ", ".join(map(str, kept_steps(run_dir))) or "none"
            raise FileNotFoundError(f"{run_dir}: no checkpoint kept at step {step} (kept: {kept})")
    if best:
        path = best_checkpoint(run_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no best checkpoint: the run was trained without --val-every, or its "
                                    "family has no metric to choose one by (cycle; add/remove without exact pairs)")
    state = load(path)
    cfg = TrainConfig.from_dict(state["config"])
    family = get_family(cfg, list(state["labels"]))
    nets = family.build()
    chosen = {**state["nets"], **(state.get("ema", {}) if weights == "ema" else {})}  # EMA wins where kept
    out = []
    for task, name, module, inputs in family.exports({k: nets[k] for k in family.generators}):
        key = next(k for k in family.generators if nets[k] is module)
        module.load_state_dict(chosen[key])
        module.eval().requires_grad_(False)
        if weights == "ema" and key in state.get("ema", {}):
            family.standing_statistics(module)
        facts = {
            "resolution": (cfg.size, cfg.size),
            "size_multiple": family.export_size_multiple(),
            "dynamic_hw": cfg.family != "generate",
            "z_dim": cfg.net.z_dim if cfg.family == "generate" else None,
            "labels": list(state["labels"]) if cfg.family == "generate" else [],
            "version": "1",
            "trained_on": trained_on(cfg),
            "recipe": cfg.recipe,
            "step": int(state["step"]),
            "family": cfg.family,
            "preset": cfg.preset,
            "created": created_at(state, path),
        }
        out.append(Exportable(task, name, module, inputs, facts))
    return out
