"""A compiled workload with every op and every transfer stretched by its own factor, timed again.

What an uncertainty band needs from the engine (``pipeplan.bands`` draws the factors): the same
schedule, dependencies and ports, with op o taking ``op_factor[o]`` times its duration and the
transfer into op o (from its producer on another device) ``transfer_factor[o]`` times its time
alone. Compiling once and re-timing the columns keeps a sample at the cost of the exact pass.

A transfer's factor stretches its latency and its bytes alike (X bytes at rate r become f·X
bytes), so alone it takes f times as long and, sharing a port, it still holds the port f times as
long at the rate max-min fairness gives it. A collective op is stretched the same way. Each
consumer gets an edge of its own here (compiling shares one per device pair and stage), so two
transfers over one link can be stretched differently.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .compile import Compiled, _send_hold
from .engine import busy_per_device, event_loop_cut
from .flows import event_loop
from .passes import uncontended_times


def rescaled(c: Compiled, op_factor: np.ndarray, transfer_factor: np.ndarray) -> Compiled:
    """``c`` with op o's duration x ``op_factor[o]`` and its incoming transfer's time x ``transfer_factor[o]``.

    Both arrays have one entry per op; factors must be finite and >= 0 (ValueError otherwise).
    """
    n = len(c.actions)
    op_factor = np.asarray(op_factor, dtype=np.float64)
    transfer_factor = np.asarray(transfer_factor, dtype=np.float64)
    for name, factor in (("op_factor", op_factor), ("transfer_factor", transfer_factor)):
        if factor.shape != (n,):
            raise ValueError(f"{name}: one factor per op ({n}), got shape {factor.shape}")
        if not bool(np.all(np.isfinite(factor) & (factor >= 0))):
            raise ValueError(f"{name}: factors must be finite and >= 0")
    duration = (np.asarray(c.duration, dtype=np.float64) * op_factor).tolist()
    collective = {o: (nbytes * op_factor[o], latency * op_factor[o], *rest)
                  for o, (nbytes, latency, *rest) in c.collective.items()}
    consumers = np.nonzero(c.remote >= 0)[0]
    shared = c.edge[consumers]
    stretch = transfer_factor[consumers]
    edge = np.full(n, -1, dtype=np.int64)
    edge[consumers] = np.arange(len(consumers), dtype=np.int64)
    edge_delay = (np.asarray(c.edge_delay, dtype=np.float64)[shared] * stretch).tolist() if len(consumers) else []
    specs = c.edge_spec
    edge_spec = [(a, b, nbytes * f, latency * f, bandwidth, ports)
                 for (a, b, nbytes, latency, bandwidth, ports), f in
                 zip((specs[k] for k in shared.tolist()), stretch.tolist())]
    waits = None
    if c.waits:
        waits = {o: [(prod, edge_delay[edge[o]] if prod == c.remote[o] else delay) for prod, delay in row]
                 for o, row in c.waits.items()}
    out = replace(c, duration=duration, collective=collective, edge=edge, edge_delay=edge_delay,
                  edge_spec=edge_spec, waits=waits, hold=None)
    if c.hold is not None:
        out.hold = _send_hold(out)
    return out


def makespan_and_busy(c: Compiled, port_capacity: dict[str, float]) -> tuple[float, list[float]]:
    """(iteration time, compute-stream busy time per device) of ``c``, as ``engine.simulate`` times it:
    the exact pass, and the max-min event loop from the first instant two bandwidth phases share a port.

    ``c`` must be complete and deadlock-free (it is, when it was compiled from a workload that
    ``engine.simulate`` accepts and then ``rescaled``).
    """
    times = uncontended_times(c)
    if times is None:
        raise ValueError("the rescaled workload deadlocks; rescale one that simulates")
    start, end = times
    cut = event_loop_cut(c, start, end)
    if cut is not None:
        start, end, _, _ = event_loop(c, port_capacity, (start, end, cut))
    total = float(end.max() - start.min())
    if not math.isfinite(total):
        raise ValueError("the rescaled workload did not finish every op")
    return total, busy_per_device(c.compute_stream, start, end, c.bounds)
