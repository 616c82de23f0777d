"""Memory over time, replayed from a timeline and the stage costs.

What each kind allocates or frees, and when, is ``kinds.KIND_TABLE``'s ``memory_delta`` at
``memory_at``: F allocates its stage's activations when it starts; B frees them when it ends;
with the split backward, I frees all but ``weight_grad_bytes`` and W frees the rest; UNSHARD
holds the gathered parameters until RESHARD (see ``StageCost``).
"""
from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import numpy as np

from .kinds import BACKWARD_INPUT, BACKWARD_WEIGHT, BY_CODE, FORWARD, FULL_BACKWARD, KINDS, START
from .timeline import Timeline
from .workload import StageCost


def _ops_in_run_order(timeline: Timeline) -> list[list]:
    """Per device, its ops in the order they ran (stable on ties, so zero-length ops keep list order)."""
    per_device: list[list] = [[] for _ in range(timeline.num_devices)]
    for op in timeline.ops:
        per_device[op.device].append(op)
    for ops in per_device:
        ops.sort(key=lambda o: (o.start, o.end))
    return per_device


def memory_events(timeline: Timeline, stages: Sequence[StageCost]) -> list[list[tuple[float, float]]]:
    """Per device, (time, change in bytes) in causal order.

    Events sort by time, then by the op's position on its device (its start before its end),
    so a free at the end of one op comes before the allocation of the next op starting at
    the same instant, and never before the allocation it releases.
    """
    events: list[list[tuple[float, int, float]]] = []
    for ops in _ops_in_run_order(timeline):
        evs = []
        for position, op in enumerate(ops):
            rule = KINDS[op.action.kind]
            delta = rule.memory_delta(stages[op.action.stage])
            if rule.memory_at == START:
                evs.append((op.start, 2 * position, delta))
            else:
                evs.append((op.end, 2 * position + 1, delta))
        evs.sort()
        events.append(evs)
    return [[(t, delta) for t, _, delta in evs] for evs in events]


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
    peaks = []
    for ops in _ops_in_run_order(timeline):
        evs = []
        for position, op in enumerate(ops):
            rule = KINDS[op.action.kind]
            if rule.live_delta > 0:
                evs.append((op.start, 2 * position, rule.live_delta))
            elif rule.live_delta < 0:
                evs.append((op.end, 2 * position + 1, rule.live_delta))
        level = peak = 0
        for _, _, delta in sorted(evs):
            level += delta
            peak = max(peak, level)
        peaks.append(peak)
    return peaks


def live_count_profiles(schedule) -> list[tuple[tuple[tuple[int, int], ...], ...]]:
    """Per device, the activation counts at every moment its memory can peak, with dominated ones removed.

    Memory on a device changes only at its own ops, which run one after another, so the level
    after each op follows from the action order alone (``memory_events`` replays the same rules
    with times). It peaks just after an F allocates. At that moment, for every stage the device
    holds (in ``schedule.stages_of(device)`` order), count ``full``: micro-batches whose F has
    started and whose I/B has not ended, and ``held``: those past I whose W has not ended. The
    level is then ``static + sum(full·activation_bytes + held·weight_grad_bytes)`` over the
    stages, so ``max`` over the returned count vectors is the exact peak for any stage costs:
    a planner can state the memory limit as one linear constraint per vector.
    """
    profiles = []
    for device in range(schedule.num_devices):
        stages = schedule.stages_of(device)
        slot = {s: i for i, s in enumerate(stages)}
        full = [0] * len(stages)
        held = [0] * len(stages)
        seen: set[tuple] = set()
        for action in schedule.simulated_actions(device):  # an overlapped pair as its F then its B
            i = slot[action.stage]
            if action.kind == FORWARD:
                full[i] += 1
                seen.add(tuple(zip(full, held)))
            elif action.kind == FULL_BACKWARD:
                full[i] -= 1
            elif action.kind == BACKWARD_INPUT:
                full[i] -= 1
                held[i] += 1
            elif action.kind == BACKWARD_WEIGHT:
                held[i] -= 1
        # A vector that dominates another is lexicographically larger, so it comes first in this order; and
        # one dominated by a dropped vector is dominated by whatever dropped that one: comparing with the
        # vectors kept so far removes exactly the dominated ones, in O(n · kept) rather than O(n²).
        kept: list[tuple] = []
        for v in sorted(seen, reverse=True):
            if not any(_dominates(k, v) for k in kept):
                kept.append(v)
        profiles.append(tuple(kept) if kept else (tuple((0, 0) for _ in stages),))
    return profiles


def _dominates(a: tuple, b: tuple) -> bool:
    """a >= b in every count: b can never be the higher level, whatever the (non-negative) bytes."""
    return all(fa >= fb and ha >= hb for (fa, ha), (fb, hb) in zip(a, b))


# Column forms of memory_curves and peak_live_microbatches for the engine, which holds its ops as
# numpy arrays (ids device-major, kinds by their KindRule.code). Same events, same order, same
# sums: np.lexsort is stable like list.sort, and np.cumsum adds left to right like the loops above.

def _sorted_within_devices(device: np.ndarray, *keys: np.ndarray) -> bool:
    """True when consecutive ids on one device are already in (keys...) order, ties allowed.

    A device runs its ops one after another, so its ops and its memory events almost always
    come in id order already; a stable sort of sorted data is the identity, and this O(n) check
    lets the replay skip it. NaN compares false and sends the data to the sort.
    """
    if len(device) < 2:
        return True
    same = device[1:] == device[:-1]
    ahead = np.zeros(len(device) - 1, dtype=bool)
    tied = np.ones(len(device) - 1, dtype=bool)
    for k in keys:
        ahead |= tied & (k[1:] > k[:-1])
        tied &= k[1:] == k[:-1]
    return bool(np.all(ahead | tied | ~same))


def _run_positions(device: np.ndarray, start: np.ndarray, end: np.ndarray, bounds: Sequence[int]) -> np.ndarray:
    """Each op's index in its device's run order (sorted by (start, end), ties in id order)."""
    base = np.asarray(bounds[:-1], dtype=np.int64)
    if _sorted_within_devices(device, start, end):
        return np.arange(len(device), dtype=np.int64) - base[device]
    order = np.lexsort((end, start, device))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64) - base[device[order]]
    return position


def memory_curves_columns(
    device: np.ndarray, stage: np.ndarray, kind: np.ndarray, start: np.ndarray, end: np.ndarray,
    bounds: Sequence[int], stages: Sequence[StageCost], static_bytes: Sequence[float],
) -> tuple[list[tuple[list[float], list[float]]], list[int]]:
    """(memory_curves, peak_live_microbatches) of the ops given as columns; device d owns ids bounds[d]:bounds[d+1]."""
    key = 2 * _run_positions(device, start, end, bounds)
    at_start = np.array([rule.memory_at == START for rule in BY_CODE])[kind]
    key += ~at_start
    when = np.where(at_start, start, end)
    per_stage = [[rule.memory_delta(c) for rule in BY_CODE] for c in stages]
    change = np.array(per_stage, dtype=np.float64)[stage, kind]
    if _sorted_within_devices(device, when, key):
        order = np.arange(len(device))
    else:
        order = np.lexsort((key, when, device))
        when, change = when[order], change[order]
    # Integer byte counts stay integers in memory_curves (int + int); keep that, adding the
    # Python values one by one, when any count or static size is not a float.
    exact_types = all(type(x) is float for row in per_stage for x in row) and all(
        type(x) is float for x in (static_bytes or ()))
    if not exact_types:
        values = [x for row in per_stage for x in row]
        change_objects = list(map(values.__getitem__, (stage * len(BY_CODE) + kind)[order].tolist()))
    # Live micro-batches: +1 at an F's start, -1 at a B's or W's end; an I changes nothing.
    live = np.array([rule.live_delta for rule in BY_CODE], dtype=np.int64)[kind][order]
    curves = []
    peaks = []
    for d in range(len(bounds) - 1):
        lo, hi = bounds[d], bounds[d + 1]
        level = static_bytes[d] if static_bytes else 0.0
        if exact_types:
            levels = np.cumsum(np.concatenate(([level], change[lo:hi]))).tolist()
            levels[0] = level
        else:
            levels = list(accumulate(change_objects[lo:hi], initial=level))
        curves.append(([0.0] + when[lo:hi].tolist(), levels))
        counts = np.cumsum(live[lo:hi])
        peaks.append(max(0, int(counts.max())) if hi > lo else 0)
    return curves, peaks
