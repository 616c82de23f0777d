"""ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", section 6), built from the stage costs.

2p stages in a V: device d holds stage d (the "down" chunk: forwards flow from device 0 to p - 1)
and stage 2p-1-d (the "up" chunk: back from p - 1 to 0), so a micro-batch's forward and backward
both start and end on device 0. A device's ops per micro-batch, in dependency order: F down,
F up, I up, I down, and the two W's.

The order is the paper's V heuristic, placing and timing op by op (an op starts when its device
is free and its input has arrived a hop later, as the engine runs it) under ZB-V's memory limit,
1F1B's: 2p chunk activations per device (F adds 1, I frees all but ``held_fraction``, W the rest):

1. warm-up: F down on every device; then from device p - 1 back to 0, while device d has room
   (2d + 2 activations kept free for the F's still to come through it) and time before the up
   chunk's first F returns from device d + 1, devices 0..d run one more F down; then d runs F up.
   Each later device then catches up with the one before it, F down and F up in turn;
2. 2m steady rounds: every device runs one I (the down chunk's when its count is behind the up
   chunk's and its input is there, or on device p - 1, or when the up chunk's I's are done; else the
   up chunk's; the down I's from device p - 1 back, then the up I's from device 0 on), then one F
   (the down chunk's when the up chunk has caught up with it, else the up chunk's when its input is
   there, else the down chunk's). Before each op a device runs its pending W's while they end before
   the op's input arrives; when the gap left is shorter than a W it runs one more if idling there
   would raise its idle time above the pipeline's largest (before a down I always; before an up I
   only when ``fill_i``, before an F only when ``fill_f``); W's also run when memory is full. On
   uneven stages an op whose input is not there yet waits for a later round, and rounds go on until
   every op is placed;
3. each device ends with its remaining W's.

As the paper's scheduler does, a run is repeated with each device allowed the idle time the previous
run's worst device had over its own, while that lowers the worst idle time, and the four
``fill_i`` x ``fill_f`` settings are tried: the order whose longest device span (first op to last)
is shortest is kept. On the paper's profiled times it gives exactly the bubble rates of the paper's
own V scheduler (tests/test_zero_bubble_paper.py). Pure and deterministic.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Sequence

from .generators import zb_v_rule
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, Schedule, ScheduleError, make_schedule
from .stage_times import StageTimes, stage_times_for

_EPS = 1e-9
DOWN, UP = 0, 1


def v_stage_to_device(p: int) -> list[int]:
    """Stage s on device s for the first chunk, on device 2p-1-s for the second."""
    return list(range(p)) + list(reversed(range(p)))


def v_heuristic(p: int, m: int, times: StageTimes, fill_i: bool, fill_f: bool,
                allowance: Sequence[float] | None = None, stop_at: tuple[float, float] | None = None,
                mattered: set | None = None, decisions: list | None = None) -> tuple[list[list[tuple]], list[float], list[float]] | None:
    """One run of the V heuristic (see the module): per device its ops as (stage, kind, micro-batch),
    its idle time after its first op, and its span. ``allowance[d]``: the previous run's idle times
    (the repeat step). ``stop_at`` = (span, idle): give up, returning None, once the longest span
    reaches the first and the largest idle time the second (the run can then neither win nor go on).
    ``mattered`` collects "fill_i" / "fill_f" when that switch's other setting would have changed a
    decision; ``decisions`` every short-gap decision as (device, gap, idle, worst idle, ran a W).
    Raises ScheduleError when memory cannot hold the order."""
    mattered = set() if mattered is None else mattered
    decisions = [] if decisions is None else decisions
    S = 2 * p
    F, I, W, held, comm = times.forward, times.backward_input, times.backward_weight, times.held_fraction, times.comm
    cap = float(S) + _EPS
    busy = [F[d] + F[S - 1 - d] + I[d] + I[S - 1 - d] + W[d] + W[S - 1 - d] for d in range(p)]
    busy = [m * b for b in busy]
    span_limit, idle_limit = stop_at if stop_at is not None else (math.inf, math.inf)
    stage = [(d, S - 1 - d) for d in range(p)]  # stage[d][chunk]
    # hop into stage s: from s - 1 for its F, from s + 1 for its I (0 on one device)
    f_hop = [0.0] + [0.0 if s == p else comm[s - 1] for s in range(1, S)]
    i_hop = [0.0 if s == p - 1 else comm[s] for s in range(S - 1)] + [0.0]
    f_end = [[-1.0] * m for _ in range(S)]
    i_end = [[-1.0] * m for _ in range(S)]
    nf = [[0, 0] for _ in range(p)]  # forwards run per device and chunk
    ni = [[0, 0] for _ in range(p)]
    free = [0.0] * p
    first = [0.0] * p
    mem = [0.0] * p
    idle = [0.0] * p
    worst = [0.0, 0.0]  # the largest idle time, the longest span so far (busy + idle)
    pending: list[deque] = [deque() for _ in range(p)]
    acts: list[list[tuple]] = [[] for _ in range(p)]
    allowed = [0.0] * p if allowance is None else [max(allowance) - a for a in allowance]

    def f_input(d: int, c: int) -> float:
        """When d's next F of chunk c has its input (-1: not produced yet)."""
        s = stage[d][c]
        if s == 0:
            return 0.0
        t = f_end[s - 1][nf[d][c]]
        return t if t < 0 else t + f_hop[s]

    def can_forward(d: int, c: int) -> bool:
        """d's next F of chunk c exists and has its input (the up chunk's also its own down F)."""
        return nf[d][c] < m and f_input(d, c) >= 0 and (c == DOWN or nf[d][UP] < nf[d][DOWN])

    def i_input(d: int, c: int) -> float:
        s, k = stage[d][c], ni[d][c]
        if k >= nf[d][c]:
            return -1.0
        t = f_end[s][k] if s == S - 1 else i_end[s + 1][k]
        return t if t < 0 else t + i_hop[s]

    def advance(d: int, start: float, end: float) -> None:
        if acts[d]:
            gap = start - free[d]
            if gap > 0:
                idle[d] += gap
                if idle[d] > worst[0]:
                    worst[0] = idle[d]
                if busy[d] + idle[d] > worst[1]:
                    worst[1] = busy[d] + idle[d]
        else:
            first[d] = start
        free[d] = end

    def put_w(d: int) -> None:
        s, k = pending[d].popleft()
        start = free[d]
        advance(d, start, start + W[s])
        mem[d] -= held
        acts[d].append((s, BACKWARD_WEIGHT, k))

    def put(d: int, kind: str, c: int) -> None:
        s = stage[d][c]
        if kind == FORWARD:
            k, ready = nf[d][c], f_input(d, c)
        else:
            k, ready = ni[d][c], i_input(d, c)
        if ready < 0 or k >= m:
            raise AssertionError(f"V heuristic placed {s}{kind}{k} before its input")
        start = free[d] if free[d] > ready else ready
        if kind == FORWARD:
            end = start + F[s]
            f_end[s][k] = end
            nf[d][c] = k + 1
            mem[d] += 1.0
            if mem[d] > cap:
                raise ScheduleError(f"zb-v heuristic: device {d} exceeds {S} chunk activations")
        else:
            end = start + I[s]
            i_end[s][k] = end
            ni[d][c] = k + 1
            mem[d] -= 1.0 - held
            pending[d].append((s, k))
        advance(d, start, end)
        acts[d].append((s, kind, k))

    def fill(d: int, arrival: float, switch: str | None) -> None:
        """W's into the wait for an input arriving at ``arrival``; ``switch`` decides the short gap."""
        queue = pending[d]
        while queue and free[d] + W[queue[0][0]] <= arrival + _EPS:
            put_w(d)
        if not queue:
            return
        gap = arrival - free[d]
        short = gap > max(worst[0], allowed[d]) - idle[d] + _EPS
        decisions.append((d, gap, idle[d], worst[0], short))
        if short:
            if switch is not None:
                mattered.add(switch)
            if switch is None or (fill_i if switch == "fill_i" else fill_f):
                put_w(d)

    # 1. warm-up
    for d in range(p):
        put(d, FORWARD, DOWN)
    for d in range(p - 1, -1, -1):
        if d < p - 1:
            back = f_end[stage[d + 1][UP]][0] + f_hop[stage[d][UP]]
            while mem[d] + 2 * d + 2 <= cap and free[d] + F[d] <= back + _EPS and nf[d][DOWN] < m:
                for e in range(d + 1):
                    put(e, FORWARD, DOWN)
        put(d, FORWARD, UP)
    chunk, stuck = DOWN, 0
    for d in range(1, p):
        while (sum(nf[d]) < sum(nf[d - 1]) or nf[d][UP] <= nf[d - 1][UP] < m) and stuck < 2:
            placed = 0
            for e in range(p - 1, d - 1, -1):
                if can_forward(e, chunk) and mem[e] + 1.0 <= cap:
                    put(e, FORWARD, chunk)
                    placed += 1
            stuck = 0 if placed else stuck + 1
            chunk = 1 - chunk

    # 2. steady rounds: one I, then one F, per device (2m of them; on uneven stages, where an op's input
    # may not be there yet, it waits for a later round, and rounds go on until every F and I is placed)
    rounds = 0
    while rounds < 2 * m or any(ni[d][DOWN] < m for d in range(p)):
        rounds += 1
        if worst[1] >= span_limit and worst[0] >= idle_limit:
            return None
        placed = 0
        down_devices, up_devices = [], []
        for d in range(p):
            if ni[d][DOWN] < ni[d][UP] and (d == p - 1 or i_input(d, DOWN) >= 0 or ni[d][UP] >= m):
                down_devices.append(d)
            else:
                up_devices.append(d)
        for d in reversed(down_devices):
            if i_input(d, DOWN) < 0:
                continue
            if d < p - 1:
                fill(d, i_input(d, DOWN), None)
            put(d, BACKWARD_INPUT, DOWN)
            placed += 1
        for d in up_devices:
            if ni[d][UP] >= nf[d][UP] or i_input(d, UP) < 0:
                continue
            if d > 0:
                fill(d, i_input(d, UP), "fill_i")
            put(d, BACKWARD_INPUT, UP)
            placed += 1
        for d in range(p):
            if nf[d][UP] >= m:
                continue
            if nf[d][UP] >= nf[d][DOWN]:
                c = DOWN
            elif d == p - 1 or f_input(d, UP) >= 0:
                c = UP
            elif nf[d][DOWN] < m and f_input(d, DOWN) >= 0:
                c = DOWN
            else:
                continue
            if not can_forward(d, c):
                continue
            while mem[d] + 1.0 > cap:
                if not pending[d]:
                    raise ScheduleError(f"zb-v heuristic: device {d} cannot fit {S} chunk activations")
                put_w(d)
            if stage[d][c] not in (0, p):
                fill(d, f_input(d, c), "fill_f")
            put(d, FORWARD, c)
            placed += 1
        if not placed and rounds >= 2 * m:
            raise ScheduleError("zb-v heuristic: no op can run (uneven stages)")
    # 3. the remaining W's
    for d in range(p):
        while pending[d]:
            put_w(d)
    if any(len(a) != 6 * m for a in acts):
        raise ScheduleError("zb-v heuristic: some ops were left unplaced")
    return acts, idle, [free[d] - first[d] for d in range(p)]


def best_v_order(p: int, m: int, times: StageTimes) -> list[list[Action]]:
    """The heuristic's best order over ``fill_i`` x ``fill_f`` and the repeat step (see the module).

    A repeated run stops early once it can neither beat the best order so far nor lower its chain's
    worst idle time (then the chain would stop there anyway): the same order as running it through.
    A setting is skipped when it differs from one already run only in switches no decision of that
    chain turned on (the same order again). When no run fits (very uneven stages), the order is
    built from the stages' mean times, as the paper's runtime always does.
    """
    best = _best_run(p, m, times)
    if best is None:
        S = 2 * p
        mean = StageTimes.uniform(S, sum(times.forward) / S, sum(times.backward_input) / S,
                                  sum(times.backward_weight) / S, sum(times.comm) / max(1, S - 1), times.held_fraction)
        best = _best_run(p, m, mean)
    if best is None:
        raise ScheduleError(f"zb-v: no order fits 2p = {2 * p} chunk activations")
    return [[Action(*a) for a in acts] for acts in best]


def _best_run(p: int, m: int, times: StageTimes) -> list[list[tuple]] | None:
    best, best_span, done = None, math.inf, []
    for fill_i in (True, False):
        for fill_f in (True, False):
            if any((fill_i == i or "fill_i" not in used) and (fill_f == f or "fill_f" not in used)
                   for i, f, used in done):
                continue  # the same chain as one already run, decision for decision
            mattered: set = set()
            done.append((fill_i, fill_f, mattered))
            allowance = None
            while True:
                stop_at = None if allowance is None else (best_span - _EPS, max(allowance) - _EPS)
                decisions: list = []
                try:
                    run = v_heuristic(p, m, times, fill_i, fill_f, allowance, stop_at, mattered, decisions)
                except ScheduleError:
                    break
                if run is None:
                    break
                acts, idle, spans = run
                if max(spans) < best_span - _EPS:
                    best, best_span = acts, max(spans)
                if allowance is not None and max(idle) >= max(allowance) - _EPS:
                    break
                allowed = [max(idle) - a for a in idle]
                if all((gap > max(worst, allowed[d]) - own + _EPS) == short for d, gap, own, worst, short in decisions):
                    break  # the repeat would decide everything alike: the same order, and the chain ends
                allowance = idle
    return best


def zb_v(p: int, m: int, v: int = 2, costs: StageTimes | None = None) -> Schedule:
    """ZB-V: two chunks per device in a V, ordered by timing the per-chunk ``costs`` (unit times by default).

    Bubble -> only the fill when t_F = t_B = t_W; peak activations as 1F1B (2p chunk activations).
    """
    zb_v_rule(p, m, v)
    stage_to_device = v_stage_to_device(p)
    times = stage_times_for(costs, 2 * p)
    return make_schedule(best_v_order(p, m, times), stage_to_device, m, "zb-v", 2)
