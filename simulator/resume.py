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

import numpy as np

from .compile import Compiled


@dataclass
class Resume:
    """The loop's lists at the cut, plus what it must re-create there (in time order)."""

    ended: np.ndarray                         # per op: it ended before the cut (delivers nothing any more)
    unstarted: np.ndarray                     # the ops not started before the cut, in id order
    start: np.ndarray                         # the pass's start where the op started before the cut, else nan
    end: np.ndarray                           # the pass's end where the op ended before the cut, else nan
    pointer: list[int]
    running: list[bool]
    lane_free: list[float]
    holding: list[int]
    delivered: dict[int, tuple[int, float]]   # unstarted op -> (inputs already delivered, latest arrival)
    done_consumers: np.ndarray                # consumers (in id order) of the transfers delivered before the cut
    transfers: list[list]                     # in flight: [src, dst, producer, consumer, t0, nan, nbytes]
    op_ends: list[tuple[float, int]]          # (end, op) of ops running at the cut
    collective_flows: list[int]               # collective ops whose bytes are in flight
    transfer_flows: list[tuple[int, int]]     # (index into transfers, edge) of flows in flight
    releases: list[tuple[float, int]]         # (arrival, lane) of blocking sends without a flow


def resume_state(c: Compiled, start: np.ndarray, end: np.ndarray, cut: float) -> Resume:
    lanes = c.num_lanes
    started = start < cut
    ended = started & (end < cut)
    lane_lo = np.asarray(c.lane_bounds[:-1], dtype=np.int64)
    pointer = (lane_lo + np.bincount(c.lane[started], minlength=lanes)).tolist()
    start_kept = np.where(started, start, np.nan)
    end_kept = np.where(ended, end, np.nan)

    # Transfers whose producer ended before the cut: delivered, or a flow still moving bytes.
    consumers = np.nonzero(c.remote >= 0)[0]
    producers = c.remote[consumers]
    keep = ended[producers]
    consumers, producers = consumers[keep], producers[keep]
    edges = c.edge[consumers]
    t0 = end[producers]
    arrival = t0 + np.asarray(c.edge_delay, dtype=np.float64)[edges]
    in_flight = c.edge_flow[edges] & (t0 + c.edge_phase[edges] >= cut)
    specs = c.edge_spec
    flying = np.nonzero(in_flight)[0]
    transfers = [[specs[e][0], specs[e][1], p, q, a, math.nan, specs[e][2]]
                 for p, q, e, a in zip(producers[flying].tolist(), consumers[flying].tolist(),
                                       edges[flying].tolist(), t0[flying].tolist())]
    transfer_flows = list(enumerate(edges[flying].tolist()))
    done_consumers = consumers[~in_flight]
    waiting = ~in_flight & ~started[consumers]  # delivered to an op that has not started: it still counts

    # Inputs delivered to the ops that have not started: local producers that ended, transfers done;
    # per op their count and the latest arrival (0.0 when none is later: arrivals before 0 and NaN
    # never raise it, as the loop's own comparisons would not).
    unstarted = np.nonzero(~started)[0]
    producers_of = c.producers[unstarted]
    exists = producers_of >= 0
    safe = np.where(exists, producers_of, 0)
    arrived = np.zeros(len(started), dtype=bool)
    arrived[consumers[waiting]] = True
    arrival_of = np.zeros(len(started), dtype=np.float64)
    arrival_of[consumers[waiting]] = arrival[waiting]
    through_edge = producers_of == c.remote[unstarted][:, None]
    counted = exists & ended[safe] & (~through_edge | arrived[unstarted][:, None])
    when = np.where(through_edge, arrival_of[unstarted][:, None], end[safe])
    latest = np.where(counted & (when > 0.0), when, 0.0).max(axis=1, initial=0.0)
    count = counted.sum(axis=1)
    some = np.nonzero(count)[0]
    delivered: dict[int, tuple[int, float]] = dict(zip(
        unstarted[some].tolist(), zip(count[some].tolist(), latest[some].tolist())))

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
            # A collective is a flow, then its latency: only one whose bytes are still moving at the
            # cut is a flow to re-create; past its bytes it simply ends when the exact pass says.
            if last in c.collective and float(end[last]) - c.collective[last][1] >= cut:
                collective_flows.append(last)
            else:
                op_ends.append((float(end[last]), last))
            continue
        lane_free[k] = float(end[last])
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
    return Resume(ended, unstarted, start_kept, end_kept, pointer, running, lane_free, holding, delivered,
                  done_consumers, transfers, op_ends, collective_flows, transfer_flows, releases)

