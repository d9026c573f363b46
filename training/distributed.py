"""Data-parallel training through `torchrun` (torch.distributed; gloo on CPU, NCCL on CUDA).

Gradients are averaged with one flat all-reduce per optimiser step after backward, as in
stylegan2-ada-pytorch's training loop, rather than through the DistributedDataParallel wrapper:
GAN steps call the same network several times per backward (real/fake, cycle, identity) and freeze
the discriminator during the generator step, which DDP's reducer handles poorly. The maths is DDP's:
every rank sees its own shard of each batch (the sampler in loop.py matches DistributedSampler)
and applies the averaged gradient, so the weights stay identical on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from dermagan.cpus import usable_cores


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if world == 1:
        limit_threads()
        return Dist(0, 1, torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def is_first_process() -> bool:
    """False only in torchrun's processes of rank > 0; read from the environment, so also before `init`."""
    return os.environ.get("RANK", "0") == "0"


def limit_threads() -> None:
    """torch's CPU threads at most the cores this process may use: torch counts the host's cores, not a
    container's CPU quota (dermagan.cpus), and 64 threads throttled to 2 CPUs run slower than 2.
    OMP_NUM_THREADS, when set (torchrun sets 1 per process), is left to decide."""
    cores = usable_cores()
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def shutdown(d: Dist) -> None:
    if d.world > 1 and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def average_gradients(params: Iterable[nn.Parameter], d: Dist) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce)."""
    if d.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    tdist.all_reduce(flat)
    flat /= d.world
    for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(avg.view_as(g))


def broadcast_module(module: nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank (after init or resume)."""
    if d.world == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


def barrier(d: Dist) -> None:
    if d.world > 1:
        tdist.barrier()


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every rank's `obj`, in rank order (a list of one in a single process)."""
    if d.world == 1:
        return [obj]
    out: list[object] = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def from_main(obj: object, d: Dist) -> object:
    """Rank 0's `obj` on every rank (the others may pass None): a decision every rank must take alike."""
    if d.world == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def check_in_sync(modules: Iterable[nn.Module], d: Dist) -> None:
    """Raise if the ranks' parameters differ (they must, after averaged gradients, stay identical)."""
    if d.world == 1:
        return
    flat = torch.cat([p.detach().double().flatten() for m in modules for p in m.parameters()])
    lo, hi = flat.clone(), flat.clone()
    tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"rank {d.rank}: parameters differ across ranks (max gap {(hi - lo).max().item():.3g})")


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when `flag` is true on any (so that all ranks stop at the same step)."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())
