"""Memory over time, replayed from a timeline and the stage costs.

F allocates its stage's activations when it starts; B frees them when it ends; with the split
backward, I frees all but ``weight_grad_bytes`` and W frees the rest (see ``StageCost``).
"""
from __future__ import annotations

from typing import Sequence

from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD
from .timeline import Timeline
from .workload import StageCost


def memory_events(timeline: Timeline, stages: Sequence[StageCost]) -> list[list[tuple[float, float]]]:
    """Per device, (time, change in bytes) sorted by time with frees before allocations at a tie."""
    events: list[list[tuple[float, int, float]]] = [[] for _ in range(timeline.num_devices)]
    for op in timeline.ops:
        cost = stages[op.action.stage]
        kind = op.action.kind
        if kind == FORWARD:
            events[op.device].append((op.start, 1, cost.activation_bytes))
        elif kind == FULL_BACKWARD:
            events[op.device].append((op.end, 0, -cost.activation_bytes))
        elif kind == BACKWARD_INPUT:
            events[op.device].append((op.end, 0, -(cost.activation_bytes - cost.weight_grad_bytes)))
        elif kind == BACKWARD_WEIGHT:
            events[op.device].append((op.end, 0, -cost.weight_grad_bytes))
    return [[(t, delta) for t, _, delta in sorted(evs)] for evs in events]


def memory_curves(
    timeline: Timeline, stages: Sequence[StageCost], static_bytes: Sequence[float]
) -> list[tuple[list[float], list[float]]]:
    """Per device, step-curve points (times, bytes in use) starting from the static bytes."""
    curves = []
    for device, evs in enumerate(memory_events(timeline, stages)):
        level = static_bytes[device] if static_bytes else 0.0
        times, levels = [0.0], [level]
        for t, delta in evs:
            level += delta
            times.append(t)
            levels.append(level)
        curves.append((times, levels))
    return curves


def peak_memory(curves: Sequence[tuple[list[float], list[float]]]) -> list[float]:
    return [max(levels) for _, levels in curves]


def peak_live_microbatches(timeline: Timeline) -> list[int]:
    """Per device, the most micro-batch activations alive at once (F start to B or W end), per stage-chunk."""
    events: list[list[tuple[float, int]]] = [[] for _ in range(timeline.num_devices)]
    for op in timeline.ops:
        kind = op.action.kind
        if kind == FORWARD:
            events[op.device].append((op.start, 1))
        elif kind in (FULL_BACKWARD, BACKWARD_WEIGHT):
            events[op.device].append((op.end, -1))
    peaks = []
    for evs in events:
        level = peak = 0
        for _, delta in sorted(evs):
            level += delta
            peak = max(peak, level)
        peaks.append(peak)
    return peaks
