"""The link between two local ranks in the chosen backend: one-way time by message size.

Rank 0 sends a message of each size to rank 1, which sends it straight back (a ping-pong); a one-way
transfer is half the round trip, timed on rank 0's clock so no two clocks meet. Sizes run from one
element (the latency) to megabytes (the bandwidth), in a shuffled order, every ``wait`` bounded by
the timeout. With gloo and CUDA tensors the message is staged through host memory on both ends, as
the validator does, so the copies count in the link. torch is imported inside the functions.
"""
from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

# Message sizes in bytes, float32 elements: one element up to 16 MB.
SIZES = (4, 4096, 65536, 1 << 20, 1 << 22, 1 << 24)


def _send(dist: Any, tensor: Any, peer: int, wait: timedelta, staged: bool) -> None:
    dist.isend(tensor.cpu() if staged else tensor, peer).wait(wait)


def _recv(torch: Any, dist: Any, tensor: Any, peer: int, wait: timedelta, staged: bool) -> None:
    if staged:
        host = torch.empty(tensor.shape, dtype=tensor.dtype)
        dist.irecv(host, peer).wait(wait)
        tensor.copy_(host)
    else:
        dist.irecv(tensor, peer).wait(wait)


def ping_pong(torch: Any, dist: Any, rank: int, device: Any, staged: bool, reps: int, timeout: float,
              seed: int) -> list[list[float]]:
    """Per size of ``SIZES``, ``reps`` one-way times (seconds; filled on rank 0, empty on rank 1)."""
    wait = timedelta(seconds=timeout)
    buffers = [torch.zeros(n // 4, dtype=torch.float32, device=device) for n in SIZES]
    order = [i for i in range(len(SIZES)) for _ in range(reps)]
    random.Random(seed).shuffle(order)  # both ranks shuffle alike: same seed
    samples: list[list[float]] = [[] for _ in SIZES]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for i in order:
        buf = buffers[i]
        if rank == 0:
            sync()
            start = time.perf_counter()
            _send(dist, buf, 1, wait, staged)
            _recv(torch, dist, buf, 1, wait, staged)
            sync()
            samples[i].append((time.perf_counter() - start) / 2)
        else:
            _recv(torch, dist, buf, 0, wait, staged)
            sync()
            _send(dist, buf, 0, wait, staged)
    return samples
