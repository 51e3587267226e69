"""Data-parallel training under torchrun: the process group, each rank's device, gathered batches."""

from __future__ import annotations

import atexit
import os

import torch

from shopsearch.errors import ConfigError


def distributed_context() -> tuple[int, int]:
    """(rank, world size) under torchrun (WORLD_SIZE > 1 starts the process group: gloo on CPU,
    nccl on CUDA), or (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            # Before NCCL starts: each rank's collectives, and the tensors broadcast_object_list
            # makes, go to the *current* device, which is cuda:0 on every rank unless set
            # ("Duplicate GPU detected" on the first broadcast).
            torch.cuda.set_device(training_device(int(os.environ.get("RANK", "0"))))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Tear the group down before the interpreter does: left to exit, gloo's threads were
        # destroyed while joinable and a rank aborted ("terminate called without an active
        # exception", exit -6) after its work was done, once in ~5 test runs.
        atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        # Every rank reaches teardown before any closes its connections: a rank destroying the group
        # while another's gloo threads still talked to it aborted that one (exit -6, about once in
        # 5-10 CI runs even with the teardown above). Bounded: a rank that died never arrives.
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
            else:
                dist.barrier()
        except Exception:  # noqa: BLE001 - teardown goes on whatever the others did
            pass
        dist.destroy_process_group()


def training_device(rank: int, requested: str = "") -> torch.device:
    """CUDA where there is one, else the CPU (`requested`: "cpu" or "cuda" to choose). On CUDA the
    device of this rank *on its host*: torchrun's LOCAL_RANK (the global rank counts every host's
    GPUs; rank 9 of 2 hosts x 8 GPUs is cuda:1), falling back to the rank in a single-host run
    without torchrun's variables."""
    if requested not in ("", "cpu", "cuda"):
        raise ConfigError("train", "device", f"'{requested}' is not cpu or cuda (or empty: CUDA where there is one)")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train", "device", "cuda was asked for and torch sees no CUDA device")
    if torch.cuda.is_available() and requested != "cpu":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def gather_rows(x: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's rows, in rank order, with gradients flowing back to each rank's own rows."""
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def broadcast_from_rank0(value, world: int):
    """Rank 0's `value` on every rank (any picklable object); itself in a plain process."""
    if world == 1:
        return value
    import torch.distributed as dist

    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def global_mean(local_share: torch.Tensor, world: int) -> float:
    """The batch's mean loss over all ranks (each rank holds world * its sum / global positions)."""
    if world == 1:
        return local_share.item()
    import torch.distributed as dist

    total = local_share.float().clone()
    dist.all_reduce(total)
    return total.item() / world


def seed_everything(seed: int, threads: int = 0) -> None:
    """Python, NumPy and torch RNGs seeded alike on every rank; `threads` > 0 caps torch's CPU threads."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
