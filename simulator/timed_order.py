"""Order split-backward ops by timing them with the real costs: the placement step behind zb-v, zb-1p and zb-2p.

The Zero Bubble paper (Qi et al., ICLR'24, section 3.1 and section 6) builds its automatic schedules
by placing F, B (our I) and W one at a time with the profiled T_F, T_B, T_W and T_comm, under a
memory limit: as many F's as memory allows while the first backward has not arrived, the critical
F and I as soon as they can run, and W's into the gaps the critical ops leave, W's being the only
ops nothing else waits for. ``timed_order`` is that idea as a discrete-event list scheduler:

* devices decide in time order; an op starts at max(its device is free, its inputs have arrived),
  an input from another device arriving ``comm`` of its hop later (the engine's rule for an
  uncontended transfer), so the order it returns runs in the engine with exactly the times it saw;
* a ready I goes first (oldest micro-batch, later stage first), then a ready F whose activations fit
  under ``cap`` (the later stage first when ``late_stage_first``: on a V that is the second chunk,
  which heads for the loss), then a W;
* a device with W's pending and no critical op ready runs a W when it ends before the next critical
  op arrives; when that gap is shorter than the W, it still runs the W if the gap is at least
  ``fill`` x T_W, else it waits. A device decides a W only once the clock has passed the moment it
  would matter, so the arrival times it compares are known, not guessed; W has no consumer, so it
  can be placed back at the moment the device became free.

Memory is counted in forward activations: F adds 1, I frees all but ``held_fraction`` (what W still
needs), W frees the rest; an F runs only while the count stays at or under ``cap`` (one activation
kept for a later stage on the same device: the V's warm-up is then the paper's 2p-1 F's), and a W
runs first when that is all that stands in the F's way. Pure and deterministic: ties break by device
and stage index.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, ScheduleError
from .stage_times import StageTimes

_EPS = 1e-9


@dataclass(frozen=True)
class Policy:
    """The two choices the paper's heuristic tries both ways (its ``fill_f``/``fill_b`` and order flags)."""

    fill: float  # run a W into a gap shorter than the W when the gap is at least fill x T_W
    late_stage_first: bool = True  # among ready F's, the later stage first (else the oldest micro-batch)
    alternate: bool = True  # after its first I a device alternates F and I (the paper's rounds), W's between


@dataclass(frozen=True)
class TimedOrder:
    device_actions: tuple[tuple[Action, ...], ...]
    spans: tuple[float, ...]  # per device, its first op's start to its last op's end

    @property
    def longest_span(self) -> float:
        return max(self.spans)


def timed_order(stage_to_device: Sequence[int], m: int, times: StageTimes, cap: float, policy: Policy) -> TimedOrder:
    """Place every F, I and W of ``m`` micro-batches on the devices of ``stage_to_device`` (see the module)."""
    S = len(stage_to_device)
    p = max(stage_to_device) + 1
    if cap < 1:
        raise ScheduleError(f"memory limit {cap} holds no micro-batch's activations")
    on = [[s for s in range(S) if stage_to_device[s] == d] for d in range(p)]
    F, I, W, comm, held = times.forward, times.backward_input, times.backward_weight, times.comm, times.held_fraction
    # An F of a stage whose device also holds a later stage keeps one activation free for that later
    # stage's F: the oldest micro-batch can then always reach the loss, so the limit never deadlocks.
    reserve = [1 if any(t > s for t in on[stage_to_device[s]]) else 0 for s in range(S)]
    hop = [0.0 if stage_to_device[s] == stage_to_device[s + 1] else comm[s] for s in range(S - 1)]
    f_end = [[None] * m for _ in range(S)]
    i_end = [[None] * m for _ in range(S)]
    nf, ni = [0] * S, [0] * S
    free = [0.0] * p
    live = [0.0] * p
    inflight = [0] * p  # F's whose I has not run
    last: list[str | None] = [None] * p  # the kind of the device's latest F or I
    steady: list[int | None] = [None] * p  # F's in flight when the device's first I ran: its steady-state limit
    first: list[float | None] = [None] * p
    pending: list[deque] = [deque() for _ in range(p)]
    acts: list[list[Action]] = [[] for _ in range(p)]
    version = [0] * p
    heap: list[tuple[float, int, int, int]] = []
    left = 3 * S * m

    def ready_i(s: int) -> float | None:
        k = ni[s]
        if k >= m or f_end[s][k] is None:
            return None
        if s == S - 1:
            return f_end[s][k]
        upstream = i_end[s + 1][k]
        return None if upstream is None else max(f_end[s][k], upstream + hop[s])

    def ready_f(s: int) -> float | None:
        k = nf[s]
        if k >= m:
            return None
        if s == 0:
            return 0.0
        upstream = f_end[s - 1][k]
        if upstream is None:
            return None
        # Warming up, a stage stays one forward behind the stage before it (the paper's warm-up counts
        # fall along the pipeline), so the first backward is never held up behind extra forwards.
        d = stage_to_device[s]
        if policy.alternate and steady[d] is None and k + 1 < m and f_end[s - 1][k + 1] is None \
                and stage_to_device[s - 1] != d:
            return None
        return upstream + hop[s - 1]

    def critical(d: int) -> tuple[list, list]:
        """(ready-time, order key, action) of d's next I's and memory-fitting F's; and F's memory blocks."""
        crit, blocked = [], []
        want_i = want_f = True
        if policy.alternate and steady[d] is not None and any(nf[s] < m for s in on[d]):
            want_i, want_f = last[d] == FORWARD, last[d] == BACKWARD_INPUT
        for s in on[d]:
            r = ready_i(s) if want_i else None
            if r is not None:
                crit.append((r, (0, ni[s], -s), Action(s, BACKWARD_INPUT, ni[s])))
            r = ready_f(s) if want_f else None
            if r is not None:
                key = (1, -s, nf[s]) if policy.late_stage_first else (1, nf[s], -s)
                fits = live[d] + 1 + reserve[s] <= cap + _EPS and (steady[d] is None or inflight[d] < steady[d])
                (crit if fits else blocked).append((r, key, Action(s, FORWARD, nf[s])))
        return crit, blocked

    def next_event(d: int) -> float | None:
        """When d decides next: now if a critical op (or a W memory demands) can run, else when it is known."""
        t0 = free[d]
        crit, blocked = critical(d)
        r_min = min((c[0] for c in crit), default=math.inf)
        if r_min <= t0 + _EPS:
            return t0
        if pending[d]:
            if blocked and not crit and min(b[0] for b in blocked) <= t0 + _EPS:
                return t0
            return min(r_min, t0 + W[pending[d][0][0]])
        return None if math.isinf(r_min) else r_min

    def place(d: int, action: Action, start: float) -> None:
        nonlocal left
        s, kind, k = action
        duration = F[s] if kind == FORWARD else I[s] if kind == BACKWARD_INPUT else W[s]
        end = start + duration
        if first[d] is None:
            first[d] = start
        free[d] = end
        acts[d].append(action)
        left -= 1
        if kind != BACKWARD_WEIGHT:
            last[d] = kind
        if kind == FORWARD:
            f_end[s][k] = end
            nf[s] += 1
            live[d] += 1
            inflight[d] += 1
        elif kind == BACKWARD_INPUT:
            if steady[d] is None:
                steady[d] = inflight[d]
            inflight[d] -= 1
            i_end[s][k] = end
            ni[s] += 1
            live[d] -= 1 - held
            pending[d].append((s, k))
        else:
            live[d] -= held

    def schedule_event(d: int, clock: float) -> None:
        version[d] += 1
        t = next_event(d)
        if t is not None:
            heapq.heappush(heap, (max(t, clock), d, version[d], 0))

    def decide(d: int, clock: float) -> Action:
        t0 = free[d]
        crit, blocked = critical(d)
        ready = [c for c in crit if c[0] <= t0 + _EPS]
        if ready:
            _, _, action = min(ready, key=lambda c: c[1])
            place(d, action, t0)
            return action
        if pending[d]:
            s, k = pending[d][0]
            r_min = min((c[0] for c in crit), default=math.inf)
            gap = r_min - t0
            forced = blocked and not crit and min(b[0] for b in blocked) <= t0 + _EPS
            if forced or gap >= W[s] - _EPS or (policy.fill < 1 and gap >= policy.fill * W[s]):
                pending[d].popleft()
                action = Action(s, BACKWARD_WEIGHT, k)
                place(d, action, t0)
                return action
            if r_min > clock + _EPS:
                raise AssertionError("a gap decision before its arrival is known")
        r_min = min(c[0] for c in crit)
        _, _, action = min((c for c in crit if c[0] <= r_min + _EPS), key=lambda c: c[1])
        place(d, action, max(t0, r_min))
        return action

    for d in range(p):
        schedule_event(d, 0.0)
    while heap:
        t, d, ver, _ = heapq.heappop(heap)
        if ver != version[d]:
            continue
        action = decide(d, t)
        touched = {d}
        if action.kind == FORWARD and action.stage + 1 < S:
            touched.add(stage_to_device[action.stage + 1])
        elif action.kind == BACKWARD_INPUT and action.stage > 0:
            touched.add(stage_to_device[action.stage - 1])
        for e in sorted(touched):
            schedule_event(e, t)
    if left:
        raise ScheduleError(f"timed order: {left} ops could not be placed under a memory limit of {cap}")
    spans = tuple(free[d] - (first[d] or 0.0) for d in range(p))
    return TimedOrder(tuple(tuple(a) for a in acts), spans)


def best_timed_order(stage_to_device: Sequence[int], m: int, times: StageTimes, cap: float,
                     policies: Sequence[Policy]) -> TimedOrder:
    """The order with the shortest longest device span over ``policies`` (the first on ties).

    A policy whose strict F/I alternation leaves some op unplaceable is skipped; the relaxed
    policies (``alternate=False``) never are, as long as one micro-batch fits under ``cap``.
    """
    best, failure = None, None
    for policy in policies:
        try:
            order = timed_order(stage_to_device, m, times, cap, policy)
        except ScheduleError as err:
            failure = err
            continue
        if best is None or order.longest_span < best.longest_span - _EPS:
            best = order
    if best is None:
        raise failure
    return best


def order_spans(device_actions: Sequence[Sequence[Action]], stage_to_device: Sequence[int], m: int,
                times: StageTimes) -> tuple[float, ...] | None:
    """Per device, the span (first op's start to last op's end) of a fixed F/I/W order run as soon as
    possible with ``times``; None when the order cannot run (it waits on itself)."""
    S = len(stage_to_device)
    hop = [0.0 if stage_to_device[s] == stage_to_device[s + 1] else times.comm[s] for s in range(S - 1)]
    end: dict[Action, float] = {}
    free = [0.0] * len(device_actions)
    first: list[float | None] = [None] * len(device_actions)
    position = [0] * len(device_actions)
    progressed = True
    while progressed:
        progressed = False
        for d, actions in enumerate(device_actions):
            while position[d] < len(actions):
                s, kind, k = action = actions[position[d]]
                if kind == FORWARD:
                    deps = [] if s == 0 else [(Action(s - 1, FORWARD, k), hop[s - 1])]
                    duration = times.forward[s]
                elif kind == BACKWARD_INPUT:
                    deps = [(Action(s, FORWARD, k), 0.0)]
                    if s < S - 1:
                        deps.append((Action(s + 1, BACKWARD_INPUT, k), hop[s]))
                    duration = times.backward_input[s]
                else:
                    deps = [(Action(s, BACKWARD_INPUT, k), 0.0)]
                    duration = times.backward_weight[s]
                if any(dep not in end for dep, _ in deps):
                    break
                start = max([free[d]] + [end[dep] + lag for dep, lag in deps])
                if first[d] is None:
                    first[d] = start
                end[action] = free[d] = start + duration
                position[d] += 1
                progressed = True
    if any(position[d] < len(a) for d, a in enumerate(device_actions)):
        return None
    return tuple(free[d] - (first[d] or 0.0) for d in range(len(device_actions)))


def peak_activations(device_actions: Sequence[Sequence[Action]], held_fraction: float) -> float:
    """The most forward activations any device holds, W's held share counted (``timed_order``'s measure)."""
    peak = 0.0
    for actions in device_actions:
        level = 0.0
        for action in actions:
            level += 1 if action.kind == FORWARD else -(1 - held_fraction) if action.kind == BACKWARD_INPUT \
                else -held_fraction
            peak = max(peak, level)
    return peak
