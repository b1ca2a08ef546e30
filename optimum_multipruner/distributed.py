"""Candidate scoring spread over processes with `torch.distributed`: which process this is, how the candidates of a
step are shared out, and how the ranks agree on the results.

Under `torchrun` or `accelerate launch` the same program runs on every rank, each holding the whole model (one GPU
each, or its own device map). At every greedy step the candidates are shared out between the ranks, balanced by the
decoder layers each recomputes; every rank scores its share, the results of all ranks are gathered, and every rank
picks the same winner by (total, candidate order). So every rank applies the same step, and the record is the one a
single process makes. Only rank 0 writes files.

The process group is the caller's (the one `accelerate` or the user's `init_process_group` made). When the launcher
says there are several processes (`WORLD_SIZE > 1`) but no group exists yet, [`init_distributed`] makes the default
group from the launcher's environment variables: NCCL for a CUDA model, gloo otherwise. With one process nothing
here touches `torch.distributed`.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

_created_group = False  # whether `init_distributed` made the default group (then `release` destroys it)


# ------------------------------------------------------------------ who is who
def _launcher_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group, else from the launcher's `RANK` (torchrun, accelerate), else 0."""
    return dist.get_rank() if _group_ready() else _launcher_int("RANK", 0)


def world_size() -> int:
    """Number of processes searching together: the process group's size, else the launcher's `WORLD_SIZE`, else 1."""
    return dist.get_world_size() if _group_ready() else _launcher_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that logs, shows progress and writes files."""
    return rank() == 0


def local_device() -> torch.device:
    """This process's own accelerator: `cuda:LOCAL_RANK` (cuda:0 without a launcher) with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", _launcher_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """Join the processes the launcher started, if there are several and no process group exists yet.

    The default group is made from the launcher's environment (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`)
    with NCCL when `device` (the model's) is a CUDA device, gloo otherwise.
    """
    global _created_group
    if _group_ready() or world_size() == 1:
        return
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE is {world_size()} but this PyTorch build has no torch.distributed support.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _created_group = True


def release() -> None:
    """Destroy the process group if [`init_distributed`] made it (a group the caller made is left alone)."""
    global _created_group
    if _created_group and _group_ready():
        dist.destroy_process_group()
    _created_group = False


# ------------------------------------------------------------------ sharing out
def share_out(costs: Sequence[float], num_ranks: int) -> list[list[int]]:
    """Positions `0..len(costs)-1` shared out between `num_ranks` ranks with balanced total cost.

    The costliest items go first, each to the least loaded rank (ties: the lower rank); each rank's positions are
    returned ascending, so every rank keeps the given scoring order. The same inputs give the same split everywhere.
    """
    if num_ranks == 1:
        return [list(range(len(costs)))]
    loads, shares = [0.0] * num_ranks, [[] for _ in range(num_ranks)]
    for position in sorted(range(len(costs)), key=lambda p: (-costs[p], p)):
        target = min(range(num_ranks), key=lambda r: (loads[r], r))
        loads[target] += costs[position]
        shares[target].append(position)
    return [sorted(share) for share in shares]


# ------------------------------------------------------------------ collectives
def _collective_device(device: torch.device) -> torch.device:
    """Where tensors of a collective must live: the CPU for gloo, the rank's own device for NCCL."""
    return torch.device("cpu") if "gloo" in str(dist.get_backend()) else device


def all_gather_rows(rows: torch.Tensor, counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """Concatenate, in rank order, the `[counts[r], k]` float64 rows each rank `r` holds; the same on every rank.

    Every rank must pass the same `counts` (they come from [`share_out`], computed alike everywhere). With one
    process, `rows` is returned as it is.
    """
    if len(counts) == 1:
        return rows
    width, longest = rows.shape[1], max(counts)
    padded = torch.zeros(longest, width, dtype=torch.float64, device=_collective_device(device))
    padded[: len(rows)] = rows.to(padded.device, torch.float64)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).cpu()


def sum_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all ranks (the values themselves with one process)."""
    if world_size() == 1:
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(total)
    return total.tolist()


def check_same_on_all_ranks(fingerprint: str, what: str, device: torch.device) -> None:
    """`ValueError` on every rank unless every rank passed the same `fingerprint` (a string describing `what`)."""
    if world_size() == 1:
        return
    digest = torch.frombuffer(bytearray(hashlib.sha256(fingerprint.encode()).digest()), dtype=torch.uint8)
    digests = all_gather_rows(digest.double()[None], [1] * world_size(), device)
    differing = [r for r in range(len(digests)) if not torch.equal(digests[r], digests[0])]
    if differing:
        raise ValueError(
            f"Rank(s) {differing} have other {what} than rank 0. Every process of a distributed search must load "
            "the same model in the same dtype, with the same configuration and calibration data."
        )


def weights_fingerprint(model: nn.Module, samples: int = 64) -> str:
    """A cheap fingerprint of the weights: names, dtypes, shapes and `samples` evenly spaced values of each tensor
    (none of offloaded, meta tensors)."""
    parts = []
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = [] if flat.is_meta else flat[:: max(1, flat.numel() // samples)][:samples].float().tolist()
        parts.append(f"{name}|{tensor.dtype}|{list(tensor.shape)}|{sample}")
    return "\n".join(parts)


@contextmanager
def fail_together(device: torch.device) -> Iterator[None]:
    """Run the block on every rank; if it raises on any rank, raise on every rank (so no rank waits forever for the
    others in the next collective). The rank that failed raises its own error; the others say which rank failed."""
    if world_size() == 1:
        yield
        return
    error = None
    try:
        yield
    except Exception as caught:  # re-raised below, once every rank knows
        error = caught
    failed = sum_over_ranks([float(r == rank() and error is not None) for r in range(world_size())], device)
    if error is not None:
        raise error
    failed_ranks = [r for r, flag in enumerate(failed) if flag]
    if failed_ranks:
        raise RuntimeError(f"Rank(s) {failed_ranks} failed their input checks (see their error); stopping here too.")
