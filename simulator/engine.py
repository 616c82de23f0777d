"""The discrete-event engine: ``simulate(workload) -> SimResult``.

Each device has a compute stream and a communication stream (``kinds``), each running its
actions in list order. When an op ends, every consumer on another device gets a transfer that
starts at once (sends are asynchronous, so compute and communication overlap); a consumer starts
when its stream is free and all its inputs have arrived. Transfers and collectives crossing a
shared port split its capacity max-min fairly with the ones overlapping them; a transfer of X
bytes alone takes latency + X / bandwidth (``Network.transfer_seconds``).

One algorithm in four steps, each in its own module:

1. ``compile.compile_workload``: the workload as numpy columns, producers from ``deps.RULES``;
2. ``passes.uncontended_times``: the exact pass in dependency order, every transfer alone;
3. ``passes.first_contention``: do any two bandwidth phases overlap on a port? Only then
   ``flows.event_loop`` re-times with max-min sharing, from that first instant on;
4. here: memory replay (``memory``), the figures of the result, and its timeline, whose records
   ``records.SimulatedTimeline`` builds from the columns when they are first read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .checker import check_complete, check_order_and_deadlock
from .compile import compile_workload
from .flows import event_loop
from .kinds import rules_for
from .memory import memory_curves_columns, peak_memory
from .passes import first_contention, transfer_records, uncontended_times
from .paused_gc import paused_gc
from .records import SimulatedTimeline, loop_transfer_records, op_records
from .timeline import Timeline
from .workload import Workload


@dataclass
class SimResult:
    """Everything one simulation returns; plain data that charts, planner and validator read."""

    timeline: Timeline
    iteration_time: float
    bubble_fraction: float
    device_bubble_fraction: list[float]
    busy_time: list[float]
    memory: list[tuple[list[float], list[float]]]
    peak_memory: list[float]
    capacity: list[float]
    out_of_memory: list[bool]
    peak_activations: list[int]
    # Per device, its first compute op's start to its last one's end (``device_spans``).
    device_span: list[float] = field(default_factory=list)

    @property
    def span_bubble_fraction(self) -> float:
        """Idle share of the longest device span: 1 - sum(busy) / (devices x longest span).

        Zero Bubble's bubble rate (Qi et al., ICLR'24, Table 5: cost = the longest device's span):
        back-to-back iterations overlap one device's fill with the previous iteration's tail, so
        when every device repeats the same span in steady state this is the steady-state bubble;
        ``bubble_fraction`` is the bubble of one isolated iteration (its makespan).
        """
        longest = max(self.device_span, default=0.0)
        p = len(self.busy_time)
        return 1.0 - sum(self.busy_time) / (p * longest) if longest > 0 else 0.0

    def summary(self) -> dict:
        return {
            "iteration_time": self.iteration_time,
            "bubble_fraction": self.bubble_fraction,
            "device_bubble_fraction": self.device_bubble_fraction,
            "busy_time": self.busy_time,
            "peak_memory": self.peak_memory,
            "capacity": [c if math.isfinite(c) else None for c in self.capacity],
            "out_of_memory": self.out_of_memory,
            "peak_activations": self.peak_activations,
            "device_span": self.device_span,
            "span_bubble_fraction": self.span_bubble_fraction,
            "num_ops": len(self.timeline.ops),
            "num_transfers": len(self.timeline.transfers),
        }


def simulate(workload: Workload, force_event_loop: bool = False) -> SimResult:
    """Time ``workload.schedule`` on ``workload``'s stages and network (see the module docstring).

    A schedule that is incomplete or cannot run raises ScheduleError naming the device and the
    action. ``force_event_loop`` skips the uncontended pass (the same times, slower; for tests
    and benchmarks).
    """
    with paused_gc():
        return _simulate(workload, force_event_loop)


def _simulate(workload: Workload, force_event_loop: bool) -> SimResult:
    schedule = workload.schedule
    compiled = compile_workload(workload)
    if not compiled.complete:
        check_complete(schedule)  # raises, naming what is wrong
        raise AssertionError("the columns and the checker disagree on completeness")
    times = uncontended_times(compiled)
    if times is None:
        check_order_and_deadlock(schedule)  # raises with the named devices and actions
        raise AssertionError("the pass and the checker disagree on a deadlock")
    start_arr, end_arr = times
    cut = None if force_event_loop else event_loop_cut(compiled, start_arr, end_arr)
    rows: list[list] = []
    pass_end, done = end_arr, None  # the transfers timed by the pass: all, or those delivered before the cut
    if force_event_loop or cut is not None:
        prefix = None if force_event_loop else (start_arr, end_arr, cut)
        start_arr, end_arr, rows, done = event_loop(compiled, workload.network.port_capacity, prefix)
        if done is None:
            done = np.zeros(0, dtype=np.int64)
    p = schedule.num_devices
    timeline = SimulatedTimeline(p, simulated_meta(schedule),
                                 partial(op_records, compiled.device, compiled.actions, start_arr, end_arr),
                                 partial(_transfer_records, compiled, pass_end, done, rows))
    static = list(workload.static_bytes) or [0.0] * p
    capacity = list(workload.capacity_bytes) or [math.inf] * p
    rules = rules_for(schedule.forward_only)
    delivered = _delivery_times(compiled, pass_end, done, rows, end_arr) if any(r.release for r in rules) else None
    # A device's ops of each stream are in run order (lane-major ids): lane 2d + 1 starts at lane_bounds[2d + 1].
    splits = compiled.lane_bounds[1:-1:2] if compiled.num_lanes == 2 * p else None
    curves, live = memory_curves_columns(compiled.device, compiled.cost, compiled.code, start_arr, end_arr,
                                         compiled.bounds, workload.cost_table(), static, rules, delivered, splits)
    peaks = peak_memory(curves)
    busy = busy_per_device(compiled.compute_stream, start_arr, end_arr, compiled.bounds)
    total = float(end_arr.max() - start_arr.min())
    return SimResult(
        timeline=timeline,
        iteration_time=total,
        bubble_fraction=1.0 - sum(busy) / (p * total) if total > 0 else 0.0,
        device_bubble_fraction=[1.0 - b / total if total > 0 else 0.0 for b in busy],
        busy_time=busy,
        memory=curves,
        peak_memory=peaks,
        capacity=capacity,
        out_of_memory=[peak > cap for peak, cap in zip(peaks, capacity)],
        peak_activations=live,
        device_span=device_spans(compiled.compute_stream, start_arr, end_arr, compiled.bounds),
    )


def _transfer_records(compiled, pass_end: np.ndarray, done: np.ndarray | None, rows: list[list]) -> list:
    """The simulation's transfer records: those the pass timed (``done``, or every one when None) in
    consumer order, then the event loop's in the order it started them."""
    records = transfer_records(compiled, pass_end, done)
    records.extend(loop_transfer_records(compiled.actions, rows))
    return records


def _delivery_times(compiled, pass_end: np.ndarray, done: np.ndarray | None, rows: list[list],
                    end: np.ndarray) -> np.ndarray:
    """Per op, when its last outgoing transfer arrives; its end when it sends nothing (``kinds.DELIVERED``).

    The transfers the pass timed arrive at their producer's end plus the edge's time alone (as
    their records say), the event loop's when its rows say."""
    delivered = end.copy()
    consumers = np.nonzero(compiled.remote >= 0)[0] if done is None else done
    if len(consumers):
        producers = compiled.remote[consumers]
        arrival = pass_end[producers] + np.asarray(compiled.edge_delay, dtype=np.float64)[compiled.edge[consumers]]
        np.maximum.at(delivered, producers, arrival)
    if rows:
        np.maximum.at(delivered, np.array([r[2] for r in rows], dtype=np.int64),
                      np.array([r[5] for r in rows], dtype=np.float64))
    return delivered


def event_loop_cut(compiled, start: np.ndarray, end: np.ndarray) -> float | None:
    """Where the max-min event loop takes over from the exact pass: the first instant two bandwidth
    phases share a port, or None. The loop takes no op over half-run, so a producer whose buckets
    start before it ends (``Compiled.early``) moves the cut to its start."""
    cut = first_contention(compiled, start, end)
    if cut is not None and compiled.early:
        cut = min(cut, float(start[list(compiled.early)].min()))
    return cut


def busy_per_device(compute_stream: np.ndarray, start: np.ndarray, end: np.ndarray, bounds: list[int]) -> list[float]:
    """Per device, its compute-stream ops' durations (F, B, I, W, OPTIMIZER) summed left to right in list order.

    np.cumsum adds sequentially, as ``timeline.busy_time`` does (np.sum would pair terms
    differently); communication ops overlap compute and are not busy time.
    """
    spans = np.where(compute_stream, end - start, 0.0)
    return [float(np.cumsum(spans[bounds[d]:bounds[d + 1]])[-1]) if bounds[d + 1] > bounds[d] else 0.0
            for d in range(len(bounds) - 1)]


def device_spans(compute_stream: np.ndarray, start: np.ndarray, end: np.ndarray, bounds: list[int]) -> list[float]:
    """Per device, from its first compute-stream op's start to its last one's end (0 without any)."""
    spans = []
    for d in range(len(bounds) - 1):
        mine = compute_stream[bounds[d]:bounds[d + 1]]
        if not mine.any():
            spans.append(0.0)
            continue
        spans.append(float(end[bounds[d]:bounds[d + 1]][mine].max() - start[bounds[d]:bounds[d + 1]][mine].min()))
    return spans


def simulated_meta(schedule) -> dict:
    """What a simulated timeline says about itself."""
    meta = dict(schedule=schedule.name, devices=schedule.num_devices, microbatches=schedule.num_microbatches,
                chunks=schedule.chunks, source="simulated")
    if schedule.forward_only:
        meta.update(forward_only=True, recurrence=schedule.recurrence)
    return meta
