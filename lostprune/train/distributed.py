"""Data-parallel training under ``torchrun`` (DDP): several GPUs, or CPU processes with gloo.

    torchrun --nproc_per_node 4 -m lostprune.cli run CONFIG

``train`` notices the process group (``init()`` creates it from torchrun's environment):
each process reads its shard of every epoch (DistributedSampler), gradients are averaged
across processes, and the configured batch size stays the *global* batch, so a schedule
means the same thing on one or on many devices. Only the main process writes files."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> bool:
    """Join the process group torchrun describes (no-op without torchrun). True when distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_world_size() > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: its local GPU under torchrun, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def broadcast(obj):
    """The main process's ``obj`` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    if active():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
