"""Chrome / Perfetto trace JSON from a timeline (opens in ui.perfetto.dev and chrome://tracing).

One process per device with a compute thread (tid 0) and a communication thread (tid 1) for the
pipeline transfers, plus a thread per category of communication-stream op present ("DP
communication": gathers and gradient reductions, ``pipeplan.breakdown.COMM_CATEGORY``; tid 1000,
1001, ...); tensor-parallel collectives are inside the compute ops and have no events. An ``X``
event per op and per transfer, times in microseconds; a flow (``s`` on the sending transfer, ``f``
on the op that consumes it) for every cross-device transfer. Slices on one thread must nest, so
sends that overlap in time (a forward and a backward send in flight together) go on extra
communication threads (tid 2, 3, ...) rather than on top of each other.
"""
from __future__ import annotations

import json
from typing import Any

from simulator.kinds import is_compute
from simulator.timeline import Timeline

from ..breakdown import CATEGORIES, COMM_CATEGORY
from ..fileio import write_atomic
from .style import LANE_NAMES

COMPUTE_TID, COMM_TID = 0, 1
COLLECTIVE_TID = 1000  # the device's communication stream (gathers, reductions), apart from the transfer lanes


def _lane_tid(kind: str) -> int:
    """The thread of a communication-stream op: one per category (DP, TP, other)."""
    return COLLECTIVE_TID + CATEGORIES.index(COMM_CATEGORY.get(kind, "other"))
FLOW_END_INSIDE_US = 1e-3  # a flow end binds to the slice enclosing it: put it just inside the consumer


def _comm_lanes(timeline: Timeline) -> list[int]:
    """Per transfer, the communication thread it is drawn on: the first lane free at its start."""
    lanes = [0] * len(timeline.transfers)
    lane_free_at: dict[int, list[float]] = {}
    order = sorted(range(len(timeline.transfers)), key=lambda i: (timeline.transfers[i].start, i))
    for i in order:
        t = timeline.transfers[i]
        free = lane_free_at.setdefault(t.src, [])
        lane = next((k for k, end in enumerate(free) if end <= t.start), len(free))
        if lane == len(free):
            free.append(t.end)
        else:
            free[lane] = t.end
        lanes[i] = COMM_TID + lane
    return lanes


def perfetto_trace(timeline: Timeline, time_to_us: float = 1e6) -> dict[str, Any]:
    """The trace as a dict; ``time_to_us`` converts timeline times (seconds by default) to microseconds."""
    events: list[dict[str, Any]] = []
    for d in range(timeline.num_devices):
        events.append({"ph": "M", "name": "process_name", "pid": d, "args": {"name": f"device {d}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": d, "args": {"sort_index": d}})
        events.append({"ph": "M", "name": "thread_name", "pid": d, "tid": COMPUTE_TID, "args": {"name": "compute"}})
        events.append({"ph": "M", "name": "thread_name", "pid": d, "tid": COMM_TID, "args": {"name": "communication"}})
        lanes_here = sorted({COMM_CATEGORY.get(o.action.kind, "other") for o in timeline.ops
                             if o.device == d and not is_compute(o.action.kind)}, key=CATEGORIES.index)
        for category in lanes_here:
            events.append({"ph": "M", "name": "thread_name", "pid": d, "tid": COLLECTIVE_TID + CATEGORIES.index(category),
                           "args": {"name": LANE_NAMES[category]}})
    lanes = _comm_lanes(timeline)
    for d in range(timeline.num_devices):
        for extra in sorted({lane for lane, t in zip(lanes, timeline.transfers) if t.src == d} - {COMM_TID}):
            events.append({"ph": "M", "name": "thread_name", "pid": d, "tid": extra,
                           "args": {"name": f"communication {extra - COMM_TID + 1}"}})
    start_of = {}
    for op in timeline.ops:
        start_of[op.action] = (op.device, op.start, op.end)
        events.append({
            "ph": "X", "name": str(op.action), "cat": op.action.kind, "pid": op.device,
            "tid": COMPUTE_TID if is_compute(op.action.kind) else _lane_tid(op.action.kind),
            "ts": op.start * time_to_us, "dur": (op.end - op.start) * time_to_us,
            "args": {"stage": op.action.stage, "microbatch": op.action.microbatch, "kind": op.action.kind},
        })
    for flow_id, (t, lane) in enumerate(zip(timeline.transfers, lanes)):
        name = f"send {t.action} -> {t.consumer}"
        events.append({
            "ph": "X", "name": name, "cat": "transfer", "pid": t.src, "tid": lane,
            "ts": t.start * time_to_us, "dur": (t.end - t.start) * time_to_us,
            "args": {"stage": t.action.stage, "microbatch": t.action.microbatch, "bytes": t.nbytes,
                     "src": t.src, "dst": t.dst, "consumer": str(t.consumer)},
        })
        events.append({"ph": "s", "name": "transfer", "cat": "transfer", "id": flow_id, "pid": t.src,
                       "tid": lane, "ts": t.start * time_to_us})
        consumer_device, consumer_start, consumer_end = start_of.get(t.consumer, (t.dst, t.end, t.end))
        inside = min(FLOW_END_INSIDE_US, (consumer_end - consumer_start) * time_to_us / 2)
        events.append({"ph": "f", "bp": "e", "name": "transfer", "cat": "transfer", "id": flow_id,
                       "pid": consumer_device, "tid": COMPUTE_TID, "ts": consumer_start * time_to_us + inside})
    return {"traceEvents": events, "displayTimeUnit": "ms", "metadata": dict(timeline.meta)}


def write_trace(timeline: Timeline, path: str, time_to_us: float = 1e6) -> None:
    write_atomic(path, json.dumps(perfetto_trace(timeline, time_to_us)))
