"""Where a run computes: its device, its torch threads, and its process group under torchrun.

`train.device` becomes a `torch.device` (`resolve_device`); under torchrun each process joins
the process group and takes the GPU of its local rank (`distributed_context`); `train.threads`
sets torch's intra-op threads while the run trains (`torch_threads`, `resolve_threads`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .registry import UserError


def resolve_device(name: str) -> torch.device:
    """The device `train.device` names; "auto": CUDA where it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return torch.device(name)


def distributed_context(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) under torchrun; (0, 1, device) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), world_size, device


# How long "auto" watches the machine before it decides: 10 ticks of a 100 Hz kernel clock per core,
# enough to tell one busy core from none.
BUSY_SAMPLE_SECONDS = 0.1
PROC_STAT = "/proc/stat"  # Linux's CPU time counters, since boot


def busy_cores(seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """How many of the machine's cores other processes keep busy now: the busy share of the CPU
    time that passes in `seconds` (Linux's /proc/stat), times the cores; this process sleeps
    meanwhile, so it counts only the others. Where /proc/stat cannot be read, the 1-minute load
    average (which lags a minute behind and counts this process too); None where neither can be."""
    def cpu_times() -> list[int]:
        with open(PROC_STAT) as f:
            return [int(v) for v in f.readline().split()[1:]]

    try:
        before = cpu_times()
        time.sleep(seconds)
        after = cpu_times()
    except (OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    idle = delta[3] + delta[4]
    return (os.cpu_count() or 1) * (total - idle) / total if total > 0 else 0.0


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_threads(threads: int | str, busy: float | None = None) -> int:
    """The number of torch threads `train.threads` asks for; 0: torch's default.

    "auto" is what other processes leave free when the run starts: round(cores - busy cores),
    at least 1 and at most torch's default (one per core, or `OMP_NUM_THREADS`); `busy` is
    `busy_cores()` unless given. On an idle machine that is torch's default; on a two-core
    machine with one busy process it is 1, which measured 3-5x faster per step than two threads
    there (docs/speed.md, `experiments/speed.py --threads-default`). Where the machine's load
    cannot be read, torch's default."""
    if threads != "auto":
        return int(threads)
    default = torch.get_num_threads()
    if busy is None:
        busy = busy_cores()
    if busy is None:
        return default
    return min(default, max(1, round(cores() - busy)))


@contextlib.contextmanager
def torch_threads(threads: int | str) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (`train.threads`: `resolve_threads`) while the
    block runs, then restored; 0 leaves torch's default (one per core). On a shared or busy machine
    one thread can be several times faster than torch's default: threads that wait for a core stall
    every operation that splits its work among them."""
    previous = torch.get_num_threads()
    count = resolve_threads(threads)
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(previous)
