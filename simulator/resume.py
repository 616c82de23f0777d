"""The event loop's state at the first contended instant, read off the exact pass.

Before the first instant two bandwidth phases share a port (``passes.first_contention``) every
transfer and collective had its ports to itself, so the exact pass's times are the event loop's
times up to rounding. ``resume_state`` turns them into the loop's state at that instant: which
ops ran and ended, which transfers were delivered (and to whom), what is still in flight (a
running op, a flow, a blocking send's release), where each lane stands. Vectorised over the ops
that ended long before; a Python loop only over what is still open.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .compile import Compiled
from .timeline import TransferRecord


@dataclass
class Resume:
    """The loop's lists at the cut, plus what it must re-create there (in time order)."""

    start: list[float]
    end: list[float]
    pointer: list[int]
    running: list[bool]
    lane_free: list[float]
    holding: list[int]
    delivered: dict[int, tuple[int, float]]   # unstarted op -> (inputs already delivered, latest arrival)
    done_records: list                        # TransferRecords of transfers delivered before the cut
    transfers: list[list]                     # in flight: [src, dst, producer, consumer, t0, nan, nbytes]
    op_ends: list[tuple[float, int]]          # (end, op) of ops running at the cut
    collective_flows: list[int]               # collective ops whose bytes or latency are in flight
    transfer_flows: list[tuple[int, int]]     # (index into transfers, edge) of flows in flight
    releases: list[tuple[float, int]]         # (arrival, lane) of blocking sends without a flow


def _is_flow(spec: tuple) -> bool:
    nbytes, bandwidth, ports = spec[2], spec[4], spec[5]
    return not (nbytes <= 0 or (math.isinf(bandwidth) and not ports))


def resume_state(c: Compiled, start: np.ndarray, end: np.ndarray, cut: float) -> Resume:
    n, lanes = len(c.actions), c.num_lanes
    started = start < cut
    ended = started & (end < cut)
    lane_lo = np.asarray(c.lane_bounds[:-1], dtype=np.int64)
    pointer = (lane_lo + np.bincount(c.lane[started], minlength=lanes)).tolist()
    start_list = np.where(started, start, np.nan).tolist()
    end_list = np.where(ended, end, np.nan).tolist()

    # Transfers whose producer ended before the cut: delivered, or a flow still moving bytes.
    consumers = np.nonzero(c.remote >= 0)[0]
    producers = c.remote[consumers]
    keep = ended[producers]
    consumers, producers = consumers[keep], producers[keep]
    edges = c.edge[consumers]
    delay = np.asarray(c.edge_delay, dtype=np.float64)
    latency = np.array([spec[3] for spec in c.edge_spec], dtype=np.float64)
    flow = np.array([_is_flow(spec) for spec in c.edge_spec], dtype=bool)
    t0 = end[producers]
    arrival = t0 + delay[edges]
    in_flight = flow[edges] & (t0 + (delay[edges] - latency[edges]) >= cut)
    specs = c.edge_spec
    flying = np.nonzero(in_flight)[0]
    transfers = [[specs[e][0], specs[e][1], p, q, a, math.nan, specs[e][2]]
                 for p, q, e, a in zip(producers[flying].tolist(), consumers[flying].tolist(),
                                       edges[flying].tolist(), t0[flying].tolist())]
    transfer_flows = list(enumerate(edges[flying].tolist()))
    landed = ~in_flight
    nbytes = [spec[2] for spec in specs]  # the spec's own Python object (an int stays an int)
    get = c.actions.__getitem__
    done_records = list(map(tuple.__new__, repeat(TransferRecord), zip(
        c.device[producers[landed]].tolist(), c.device[consumers[landed]].tolist(),
        map(get, producers[landed].tolist()), map(get, consumers[landed].tolist()),
        t0[landed].tolist(), arrival[landed].tolist(), map(nbytes.__getitem__, edges[landed].tolist()))))
    arrived_at = dict(zip(consumers[~in_flight].tolist(), arrival[~in_flight].tolist()))

    # Inputs delivered to the ops that have not started: local producers that ended, transfers done.
    delivered: dict[int, tuple[int, float]] = {}
    for o in np.nonzero(~started)[0].tolist():
        count, latest = 0, 0.0
        for prod in c.producers[o].tolist():
            if prod < 0 or not ended[prod]:
                continue
            if prod == c.remote[o]:
                if o not in arrived_at:
                    continue
                t = arrived_at[o]
            else:
                t = end_list[prod]
            count += 1
            latest = t if t > latest else latest
        if count:
            delivered[o] = (count, latest)

    running, lane_free, holding = [False] * lanes, [0.0] * lanes, [0] * lanes
    op_ends: list[tuple[float, int]] = []
    collective_flows: list[int] = []
    releases: list[tuple[float, int]] = []
    sends_in_flight: dict[int, list[float]] = {}
    if c.hold is not None:  # blocking sends: an ended op's lane waits for its sends' arrivals
        for p, a, f in zip(producers.tolist(), arrival.tolist(), in_flight.tolist()):
            sends_in_flight.setdefault(p, []).append(math.inf if f else a)
    for k in range(lanes):
        if pointer[k] == c.lane_bounds[k]:
            continue
        last = pointer[k] - 1
        if not ended[last]:
            running[k], pointer[k] = True, last  # the loop advances past it when it ends
            if last in c.collective:
                collective_flows.append(last)
            else:
                op_ends.append((float(end[last]), last))
            continue
        lane_free[k] = end_list[last]
        for a in sends_in_flight.get(last, ()):
            if a >= cut:
                holding[k] += 1
                if a != math.inf:
                    releases.append((a, k))
            elif a > lane_free[k]:
                lane_free[k] = a
        running[k] = holding[k] > 0
    op_ends.sort()
    releases.sort()
    return Resume(start_list, end_list, pointer, running, lane_free, holding, delivered, done_records, transfers, op_ends,
                  collective_flows, transfer_flows, releases)

