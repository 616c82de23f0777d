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

from .kinds import BACKWARD_INPUT, BACKWARD_WEIGHT, BY_CODE, FORWARD, FULL_BACKWARD, KINDS, START, KindRule, rules_for
from .timeline import Timeline
from .workload import StageCost, Workload


def _ops_in_run_order(timeline: Timeline) -> list[list]:
    """Per device, its ops in the order they ran (stable on ties, so zero-length ops keep list order)."""
    per_device: list[list] = [[] for _ in range(timeline.num_devices)]
    for op in timeline.ops:
        per_device[op.device].append(op)
    for ops in per_device:
        ops.sort(key=lambda o: (o.start, o.end))
    return per_device


def delivery_times(timeline: Timeline) -> dict:
    """Per op that sends, when its last outgoing transfer arrives (``kinds.DELIVERED``)."""
    delivered: dict = {}
    for t in timeline.transfers:
        if t.end > delivered.get((t.src, t.action), float("-inf")):
            delivered[t.src, t.action] = t.end
    return delivered


def memory_events(timeline: Timeline, costs: "Sequence[StageCost] | Workload") -> list[list[tuple[float, float]]]:
    """Per device, (time, change in bytes) in causal order.

    ``costs``: the stage costs, or the workload (its pass classes and its schedule's forward-only rules).
    Events sort by time, then by the op's position on its device (its start before its end),
    so a free at the end of one op comes before the allocation of the next op starting at
    the same instant, and never before the allocation it releases; a release at delivery
    (``kinds.Release``) sorts as its op's end.
    """
    if isinstance(costs, Workload):
        rules, cost_of = rules_for(costs.schedule.forward_only), costs.cost_of
    else:
        rules, cost_of = BY_CODE, (lambda stage, microbatch: costs[stage])
    by_name = {rule.name: rule for rule in rules}
    delivered = delivery_times(timeline) if any(rule.release for rule in rules) else {}
    events: list[list[tuple[float, int, float]]] = []
    for ops in _ops_in_run_order(timeline):
        evs = []
        for position, op in enumerate(ops):
            rule = by_name[op.action.kind]
            cost = cost_of(op.action.stage, op.action.microbatch)
            delta = rule.memory_delta(cost)
            if rule.memory_at == START:
                evs.append((op.start, 2 * position, delta))
            else:
                evs.append((op.end, 2 * position + 1, delta))
            if rule.release is not None:
                when = max(op.end, delivered.get((op.device, op.action), op.end))
                evs.append((when, 2 * position + 1, rule.release.memory_delta(cost)))
        evs.sort()
        events.append(evs)
    return [[(t, delta) for t, _, delta in evs] for evs in events]


def memory_curves(
    timeline: Timeline, stages: "Sequence[StageCost] | Workload", static_bytes: Sequence[float]
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


def peak_live_microbatches(timeline: Timeline, forward_only: bool = False) -> list[int]:
    """Per device, the most micro-batch activations alive at once (F start to B or W end; in a
    forward-only schedule to the F's delivery), per stage-chunk."""
    by_name = {rule.name: rule for rule in rules_for(forward_only)}
    delivered = delivery_times(timeline) if forward_only else {}
    peaks = []
    for ops in _ops_in_run_order(timeline):
        evs = []
        for position, op in enumerate(ops):
            rule = by_name[op.action.kind]
            if rule.live_delta > 0:
                evs.append((op.start, 2 * position, rule.live_delta))
            elif rule.live_delta < 0:
                evs.append((op.end, 2 * position + 1, rule.live_delta))
            if rule.release is not None and rule.release.live_delta:
                when = max(op.end, delivered.get((op.device, op.action), op.end))
                evs.append((when, 2 * position + 1, rule.release.live_delta))
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


def _merged_order(device: np.ndarray, primary: np.ndarray, secondary: np.ndarray, bounds: Sequence[int],
                  splits: Sequence[int] | None) -> np.ndarray:
    """The stable lexsort by (device, primary, secondary) of ids, ties in id order.

    With ``splits`` (device d's ids bounds[d]:splits[d] and splits[d]:bounds[d + 1] each a run already
    in order, as the ops of a device's compute and communication streams are) the two runs are merged
    by binary search instead: each op of the second run goes after every op of the first that is not
    after it, so ties keep id order as the sort does. Without, or when a run is out of order, lexsort.
    """
    # (Both callers have found the ids out of order already: in order, the runs are too, and the
    # merge below gives the identity.)
    if splits is None or not _runs_sorted(primary, secondary, bounds, splits):
        return np.lexsort((secondary, primary, device))
    order = np.arange(len(device), dtype=np.int64)
    for d in range(len(bounds) - 1):
        a, b, c = bounds[d], splits[d], bounds[d + 1]
        if a == b or b == c:
            continue
        p1, s1, p2, s2 = primary[a:b], secondary[a:b], primary[b:c], secondary[b:c]
        lo, hi = np.searchsorted(p1, p2, "left"), np.searchsorted(p1, p2, "right")
        at = hi.copy()  # how many ops of the first run come before each op of the second
        for k in np.nonzero(hi > lo)[0].tolist():  # equal primaries: the secondaries decide, then the id
            at[k] = lo[k] + np.searchsorted(s1[lo[k]:hi[k]], s2[k], "right")
        merged = np.empty(c - a, dtype=np.int64)
        merged[at + np.arange(c - b)] = np.arange(b, c)
        first = np.ones(c - a, dtype=bool)
        first[at + np.arange(c - b)] = False
        merged[first] = np.arange(a, b)
        order[a:c] = merged
    return order


def _runs_sorted(primary: np.ndarray, secondary: np.ndarray, bounds: Sequence[int], splits: Sequence[int]) -> bool:
    """Whether each device's two runs (see ``_merged_order``) are each in (primary, secondary) order."""
    run = np.zeros(len(primary), dtype=np.int64)
    starts = np.asarray([x for pair in zip(bounds[:-1], splits) for x in pair], dtype=np.int64)
    starts = starts[starts < len(primary)]
    np.add.at(run, starts, 1)
    return _sorted_within_devices(np.cumsum(run), primary, secondary)


def _run_positions(device: np.ndarray, start: np.ndarray, end: np.ndarray, bounds: Sequence[int],
                   splits: Sequence[int] | None = None) -> np.ndarray:
    """Each op's index in its device's run order (sorted by (start, end), ties in id order)."""
    base = np.asarray(bounds[:-1], dtype=np.int64)
    if _sorted_within_devices(device, start, end):
        return np.arange(len(device), dtype=np.int64) - base[device]
    order = _merged_order(device, start, end, bounds, splits)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64) - base[device[order]]
    return position


def memory_curves_columns(
    device: np.ndarray, cost: np.ndarray, kind: np.ndarray, start: np.ndarray, end: np.ndarray,
    bounds: Sequence[int], costs: Sequence[StageCost], static_bytes: Sequence[float],
    rules: Sequence[KindRule] = BY_CODE, delivered: np.ndarray | None = None, splits: Sequence[int] | None = None,
) -> tuple[list[tuple[list[float], list[float]]], list[int]]:
    """(memory_curves, peak_live_microbatches) of the ops given as columns; device d owns ids bounds[d]:bounds[d+1].

    ``cost[o]`` is op o's row of ``costs`` (``Workload.cost_table``), ``rules`` the kind rules by code
    (``kinds.rules_for``); a rule's ``release`` happens at ``delivered[o]`` (needed when any rule has one),
    ordered as the op's end. Given ``splits``, device d runs ids bounds[d]:splits[d] and
    splits[d]:bounds[d+1] each in order (its streams), which the ordering uses.
    """
    key = 2 * _run_positions(device, start, end, bounds, splits)
    at_start = np.array([rule.memory_at == START for rule in rules])[kind]
    key += ~at_start
    when = np.where(at_start, start, end)
    per_stage = [[rule.memory_delta(c) for rule in rules] for c in costs]
    width = len(rules)
    value_index = cost * width + kind
    live_of = np.array([rule.live_delta for rule in rules], dtype=np.int64)
    live = live_of[kind]
    releasing = np.array([rule.release is not None for rule in rules])[kind]
    event_device, event_bounds = device, bounds
    if bool(releasing.any()):
        # The release events: their deltas follow the main ones in the value list, keyed as the op's end.
        per_stage = per_stage + [[rule.release.memory_delta(c) if rule.release else 0 for rule in rules] for c in costs]
        released = np.nonzero(releasing)[0]
        release_live = np.array([rule.release.live_delta if rule.release else 0 for rule in rules], dtype=np.int64)
        event_device = np.concatenate((device, device[released]))
        when = np.concatenate((when, delivered[released]))
        key = np.concatenate((key, key[released] | 1))
        value_index = np.concatenate((value_index, len(costs) * width + value_index[released]))
        live = np.concatenate((live, release_live[kind[released]]))
        event_bounds = np.searchsorted(np.sort(event_device), np.arange(len(bounds))).tolist()
    change = np.array(per_stage, dtype=np.float64).reshape(-1)[value_index]
    if event_device is device and _sorted_within_devices(device, when, key):  # releases come after every device's ops
        order = np.arange(len(event_device))
    else:
        # Release events follow every device's ops in the columns, so only without them do the streams' runs hold.
        order = (_merged_order(device, when, key, bounds, splits) if event_device is device
                 else np.lexsort((key, when, event_device)))
        when, change = when[order], change[order]
    # Integer byte counts stay integers in memory_curves (int + int); keep that, adding the
    # Python values one by one, when any count or static size is not a float.
    exact_types = all(type(x) is float for row in per_stage for x in row) and all(
        type(x) is float for x in (static_bytes or ()))
    if not exact_types:
        values = [x for row in per_stage for x in row]
        change_objects = list(map(values.__getitem__, value_index[order].tolist()))
    # Live micro-batches: +1 at an F's start, -1 at a B's or W's end (a forward-only F's delivery); I: none.
    live = live[order]
    curves = []
    peaks = []
    for d in range(len(bounds) - 1):
        lo, hi = event_bounds[d], event_bounds[d + 1]
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
