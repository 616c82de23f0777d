"""The link between two local ranks in the chosen backend: one-way time by message size.

Rank 0 sends a message of each size to rank 1, which sends it straight back (a ping-pong); a one-way
transfer is half the round trip, timed on rank 0's clock so no two clocks meet. Sizes run from one
element (the latency) to megabytes (the bandwidth), in a shuffled order, every ``wait`` bounded by
the timeout. With gloo and CUDA tensors the message is staged through host memory on both ends, as
the validator does, so the copies count in the link. torch is imported inside the functions.

Every receive is posted before its message can be sent, as the validator's gloo channels post all of
an iteration's receives up front (``validator.runtime.Channel``): after an untimed round trip, rank 0
posts the reply's receive before it sends, rank 1 the next message's before it replies. A message whose receive is not posted
yet costs gloo a rendezvous, the receiver's "ready" coming back before the data goes: on this VM the
one-way time of 4 bytes with the reply's receive posted only after the send had completed was twice
the pre-posted one (lower quartile 91 against 40 us, 72 against 48 us in a second run, two ranks
pinned to a core each), and a pipeline run never pays it.
"""
from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

# Message sizes in bytes, float32 elements: one element up to 16 MB.
SIZES = (4, 4096, 65536, 1 << 20, 1 << 22, 1 << 24)


def ping_pong(torch: Any, dist: Any, rank: int, device: Any, staged: bool, reps: int, timeout: float,
              seed: int, prepost: bool = True) -> list[list[float]]:
    """Per size of ``SIZES``, ``reps`` one-way times (seconds; filled on rank 0, empty on rank 1).

    ``prepost`` (gloo): every receive posted before the peer sends (module docstring). Without it
    (NCCL, where a posted receive holds the pair's stream, so rank 0's send would queue behind its
    own receive) each receive is posted when it is needed, as the validator posts them for NCCL."""
    wait = timedelta(seconds=timeout)
    buffers = [torch.zeros(n // 4, dtype=torch.float32, device=device) for n in SIZES]
    order = [i for i in range(len(SIZES)) for _ in range(reps)]
    random.Random(seed).shuffle(order)  # both ranks shuffle alike: same seed
    samples: list[list[float]] = [[] for _ in SIZES]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    host = torch.device("cpu") if staged else device
    # two receive buffers per size: the next message's receive is posted while the last one's is still read
    inbox = [[torch.zeros(n // 4, dtype=torch.float32, device=host) for n in SIZES] for _ in range(2)]
    pending = None
    if prepost and order:
        # an untimed round trip after which rank 1's first receive is surely posted
        token = torch.zeros(1, dtype=torch.float32, device=host)
        if rank == 0:
            back = dist.irecv(token, 1)
            dist.isend(token, 1).wait(wait)
            back.wait(wait)
        else:
            dist.irecv(token, 0).wait(wait)
            pending = dist.irecv(inbox[0][order[0]], 0)
            dist.isend(token, 0).wait(wait)
    for j, i in enumerate(order):
        into = inbox[j % 2][i]
        if rank == 0:
            reply = dist.irecv(into, 1) if prepost else None
            sync()
            start = time.perf_counter()
            sent = dist.isend(buffers[i].cpu() if staged else buffers[i], 1)
            if reply is None:
                sent.wait(wait)
                reply = dist.irecv(into, 1)
            reply.wait(wait)
            if staged:
                buffers[i].copy_(into)
            sync()
            samples[i].append((time.perf_counter() - start) / 2)
            sent.wait(wait)
        else:
            (pending or dist.irecv(into, 0)).wait(wait)
            if staged:
                buffers[i].copy_(into)
                sync()
            pending = dist.irecv(inbox[(j + 1) % 2][order[j + 1]], 0) if prepost and j + 1 < len(order) else None
            dist.isend(buffers[i].cpu() if staged else into, 0).wait(wait)
    return samples
