"""One clock for every op on every rank.

On CPU an op's start and end are ``perf_counter`` readings taken after its inputs are in place and
after its compute returns (CPU ops are synchronous, so no further sync is needed). On GPU they are
CUDA events recorded on the compute stream, converted to host seconds through a reference event
recorded right after a device synchronise at the start of each iteration.

Ranks are aligned NTP-style: rank 0 exchanges a few round trips with every other rank and takes the
one with the smallest round-trip time; the other rank's clock reading is assumed to fall in the
middle of it. On one host perf_counter is CLOCK_MONOTONIC and the offset comes out at a few
microseconds; across nodes it corrects the clocks' different origins.
"""
from __future__ import annotations

import os
import socket
import time
import zlib
from datetime import timedelta

import torch
import torch.distributed as dist


class CpuClock:
    """perf_counter marks; ``mark()`` returns a token, ``seconds(token)`` the host time."""

    def begin_iteration(self) -> None:
        pass

    def mark(self) -> float:
        return time.perf_counter()

    def resolve(self, marks: list) -> list[float]:
        return list(marks)


class CudaClock:
    """CUDA events on the current stream; resolved to host seconds after the iteration."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reference = None
        self.reference_host = 0.0

    def begin_iteration(self) -> None:
        torch.cuda.synchronize(self.device)
        self.reference = torch.cuda.Event(enable_timing=True)
        self.reference.record()
        torch.cuda.synchronize(self.device)
        self.reference_host = time.perf_counter()

    def mark(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def resolve(self, marks: list) -> list[float]:
        torch.cuda.synchronize(self.device)
        return [self.reference_host + self.reference.elapsed_time(e) / 1e3 for e in marks]


def make_clock(device: torch.device):
    return CudaClock(device) if device.type == "cuda" else CpuClock()


def _sync(device: torch.device) -> None:
    # An NCCL wait only orders streams; the host must see the data before it reads the clock.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_offsets(rank: int, world: int, device: torch.device, timeout: float, rounds: int = 16) -> list[float]:
    """Per rank, how far its perf_counter runs ahead of rank 0's (seconds); all ranks get the list.

    Ranks on rank 0's host share its clock (perf_counter is CLOCK_MONOTONIC, one per machine) and get
    exactly 0: an estimate would only add the round trip's noise. ``device`` is where the exchanged
    scalars live (CUDA for NCCL, CPU for gloo).
    """
    wait = timedelta(seconds=timeout)
    offsets = [0.0] * world
    key = torch.tensor([float(zlib.crc32(socket.gethostname().encode()))], dtype=torch.float64, device=device)
    keys = [torch.zeros_like(key) for _ in range(world)]
    dist.all_gather(keys, key)
    same_host = [float(k.item()) == float(keys[0].item()) for k in keys]
    buf = torch.zeros(1, dtype=torch.float64, device=device)
    for peer in range(1, world):
        if same_host[peer]:
            continue
        if rank == 0:
            best_rtt, best = float("inf"), 0.0
            for _ in range(rounds):
                t0 = time.perf_counter()
                dist.isend(buf, peer).wait(wait)
                dist.irecv(buf, peer).wait(wait)
                _sync(device)
                t1 = time.perf_counter()
                if t1 - t0 < best_rtt:
                    best_rtt, best = t1 - t0, float(buf.item()) - (t0 + t1) / 2
            offsets[peer] = best
        elif rank == peer:
            for _ in range(rounds):
                dist.irecv(buf, 0).wait(wait)
                _sync(device)
                buf.fill_(time.perf_counter())
                dist.isend(buf, 0).wait(wait)
    shared = torch.tensor(offsets, dtype=torch.float64, device=device)
    dist.broadcast(shared, 0)
    return [float(x) for x in shared.cpu()]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def host_busy_seconds() -> float:
    """CPU seconds this host has spent busy (all cores, all processes) since boot; 0 if unknown."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields + ["0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def run_delay_seconds() -> float:
    """Seconds the calling thread has spent runnable but waiting for a core (its ``schedstat``,
    nanosecond resolution); 0 where the kernel does not say.

    Only the calling thread (the rank's compute thread): the backend's I/O threads also wait behind
    it on the rank's own core, which is how the schedule runs everywhere and not a disturbance.
    """
    try:
        with open("/proc/thread-self/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave this VM's cores to others since boot (all cores); 0 if unknown."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return 0.0
    return int((fields + ["0"] * 8)[7]) / _CLOCK_TICKS


def other_threads_cpu_seconds() -> float:
    """CPU seconds of this process's threads other than the calling one (gloo's, on a rank)."""
    return time.process_time() - time.thread_time()


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all threads (compute, gloo, autograd)."""
    return time.process_time()


def foreign_cores(samples: list[list[float]], wall: float) -> float:
    """Cores that processes other than the ranks kept busy during a window of ``wall`` seconds.

    ``samples`` holds, per rank, [host key, host busy seconds, own CPU seconds] for the window; each
    host's busy time minus its ranks' own CPU time is what others used (the launcher included).
    """
    hosts: dict[float, list[list[float]]] = {}
    for key, busy, own in samples:
        hosts.setdefault(key, []).append([busy, own])
    foreign = 0.0
    for rows in hosts.values():
        busy = sum(r[0] for r in rows) / len(rows)
        foreign += max(0.0, busy - sum(r[1] for r in rows))
    return foreign / wall if wall > 0 else 0.0
