"""The Zero Bubble paper's automatic-schedule heuristic (Qi et al., ICLR'24, section 3.1), one stage per device.

The order is built in rounds, timing every op as it is placed (an op starts when its device is free
and its input has arrived, a hop of ``comm`` later), which is exactly how the engine then runs it:

1. warm-up: every stage runs micro-batch 0's F; then, from the last stage back, each stage counts
   the F's it can run, within the memory limit, before micro-batch 0's B reaches it (``warmup_overrun``:
   one more F even when it ends after that arrival); the counts are made to fall strictly along the
   pipeline (a stage that can take all m keeps them, but never more than the stage before), those
   F's placed, then B0 runs from the last stage back to the first;
2. round k >= 1: each stage runs one more F (at most, see 3) and then B_k runs from the last stage
   back. Before each F or B a stage runs its pending W's while they end before the op's input
   arrives; when the gap left is shorter than a W it still runs one if idling there would make its
   idle time the pipeline's largest so far, or always when ``greedy_fill``; W's also run when
   memory is full, and stage 0, its F's done, runs all its pending W's before its B;
3. a stage never has run fewer F's than the next one; when it is two or more ahead and
   ``prioritise_b``, it skips its F in this round when that F (and the W's memory would demand)
   cannot end before the next stage's B reaches it and the wait it leaves does not make it the
   most idle stage; a stage runs an F only if the next stage does too;
4. each stage ends with its remaining W's.

Memory is counted in forward activations: F adds 1, B (our I) frees all but ``held_fraction``,
W frees the rest. ``round_order`` is one run of the heuristic; ``best_round_order`` is the
paper's grid search over the three switches, keeping the order with the shortest longest device
span (first op to last op). On the paper's profiled times it gives exactly its Table 5 ZB-1p and
ZB-2p bubble rates (tests/test_zero_bubble_paper.py). Pure and deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, ScheduleError
from .stage_times import StageTimes

_EPS = 1e-9


@dataclass(frozen=True)
class RoundSwitches:
    """The heuristic's three binary hyperparameters (the paper grid-searches them)."""

    warmup_overrun: bool  # a warm-up F may end after the first B's arrival (else it must end by then)
    prioritise_b: bool  # a stage two F's ahead of the next may skip an F to keep the B's moving
    greedy_fill: bool  # fill a gap shorter than a W even when idling there would not be the worst bubble


ALL_SWITCHES = tuple(RoundSwitches(*flags) for flags in product((False, True), repeat=3))


@dataclass(frozen=True)
class RoundOrder:
    device_actions: tuple[tuple[Action, ...], ...]
    spans: tuple[float, ...]  # per device, its first op's start to its last op's end

    @property
    def longest_span(self) -> float:
        return max(self.spans)


def round_order(m: int, times: StageTimes, cap: float, switches: RoundSwitches,
                stop_at: float = math.inf, mattered: set | None = None) -> RoundOrder | None:
    """One run of the heuristic on ``times.num_stages`` devices (see the module); raises ScheduleError
    when the memory limit ``cap`` (in forward activations) cannot hold the order it builds. Returns
    None as soon as some device's busy time plus its idle time so far reaches ``stop_at`` (its span
    can then only be longer). ``mattered`` collects the switches ("warmup", "prioritise", "greedy")
    whose other setting would have changed a decision so far: with the others flipped the run is the same.
    """
    mattered = set() if mattered is None else mattered
    S = times.num_stages
    F, B, W, held = times.forward, times.backward_input, times.backward_weight, times.held_fraction
    comm = times.comm
    if cap < 1 - _EPS:
        raise ScheduleError(f"memory limit {cap} holds no micro-batch's activations")
    f_end = [[0.0] * m for _ in range(S)]
    b_end = [[0.0] * m for _ in range(S)]
    nf, nb, nw = [0] * S, [0] * S, [0] * S
    free = [0.0] * S  # when each stage's device is next free
    mem = [0.0] * S
    idle = [0.0] * S  # idle time after the stage's first op
    worst = [0.0]  # the largest idle time of any stage so far
    first = [0.0] * S
    busy = [m * (F[j] + B[j] + W[j]) for j in range(S)]
    acts: list[list[tuple]] = [[] for _ in range(S)]

    def put(j: int, kind: str) -> None:
        start = free[j]
        if kind == FORWARD:
            k = nf[j]
            if j > 0:
                start = max(start, f_end[j - 1][k] + comm[j - 1])
            end = start + F[j]
            f_end[j][k] = end
            if k == 0:
                first[j] = start
            else:
                idle[j] += start - free[j]
            nf[j] = k + 1
            mem[j] += 1.0
        elif kind == BACKWARD_INPUT:
            k = nb[j]
            if j + 1 < S:
                start = max(start, b_end[j + 1][k] + comm[j])
            end = start + B[j]
            b_end[j][k] = end
            idle[j] += start - free[j]
            nb[j] = k + 1
            mem[j] -= 1.0 - held
        else:
            k = nw[j]
            end = start + W[j]
            nw[j] = k + 1
            mem[j] -= held
        if idle[j] > worst[0]:
            worst[0] = idle[j]
        free[j] = end
        acts[j].append((j, kind, k))

    def make_room(j: int, need: float) -> None:
        while mem[j] + need > cap + _EPS:
            if nw[j] >= nb[j]:
                raise ScheduleError(f"zero bubble heuristic: stage {j} cannot fit a memory limit of {cap}")
            put(j, BACKWARD_WEIGHT)

    def fill(j: int, arrival: float) -> None:
        """W's into the wait for an input arriving at ``arrival`` (the paper's rule 2)."""
        while nw[j] < nb[j] and free[j] + W[j] <= arrival + _EPS:
            put(j, BACKWARD_WEIGHT)
        if nw[j] < nb[j] and free[j] < arrival - _EPS:
            if arrival - free[j] > worst[0] - idle[j] + _EPS:
                put(j, BACKWARD_WEIGHT)
            else:
                mattered.add("greedy")
                if switches.greedy_fill:
                    put(j, BACKWARD_WEIGHT)

    def skip_forward(j: int) -> bool:
        """Rule 3: stage j, two or more F's ahead of stage j + 1, leaves its F out of this round."""
        due = free[j + 1] + F[j + 1] + B[j + 1] + comm[j]  # the next B from stage j + 1, at the soonest
        if free[j] >= due - _EPS:
            return True
        demanded, level, w = 0.0, mem[j] + 1.0, nw[j]
        while level > cap + _EPS and w < nb[j]:
            demanded += W[j]
            level -= held
            w += 1
        if free[j] + F[j] + demanded <= due + _EPS:
            return False
        return due - free[j] <= worst[0] - idle[j] + _EPS

    def warmup_counts(overrun: bool) -> list[int]:
        """Rule 1: the F's each stage adds before micro-batch 0's B reaches it."""
        extra = [0] * S
        arrival = f_end[S - 1][0] + B[S - 1]  # when B0 ends on the last stage
        for j in range(S - 2, -1, -1):
            level, clock, n = mem[j], free[j], 0
            while nf[j] + n < m and level + 1.0 <= cap + _EPS:
                if overrun:
                    if clock >= arrival + comm[j] - _EPS:
                        break
                elif clock + F[j] > arrival + comm[j] + _EPS:
                    break
                level += 1.0
                clock += F[j]
                n += 1
            extra[j] = n
            arrival = max(clock, arrival + comm[j]) + B[j]
        for j in range(1, S):
            while 0 < extra[j] >= extra[j - 1] and nf[j] + extra[j] < m:
                extra[j] -= 1
            # never more F's than the stage before (the paper's rule leaves a stage that could warm up
            # with all m alone, which on uneven stages can pass the one before it; equal costs never do)
            extra[j] = max(0, min(extra[j], nf[j - 1] + extra[j - 1] - nf[j]))
        return extra

    # 1. warm-up
    for j in range(S):
        put(j, FORWARD)
    extra = warmup_counts(switches.warmup_overrun)
    if extra != warmup_counts(not switches.warmup_overrun):
        mattered.add("warmup")
    for j in range(S):
        for _ in range(extra[j]):
            put(j, FORWARD)
    for j in range(S - 1, -1, -1):
        put(j, BACKWARD_INPUT)

    # 2./3. one F (at most) and one B per stage per round
    for k in range(1, m):
        if any(busy[j] + idle[j] >= stop_at for j in range(S)):
            return None
        want = [nf[j] < m for j in range(S)]
        for j in range(S - 1):
            if want[j] and nf[j] >= nf[j + 1] + 2 and skip_forward(j):
                mattered.add("prioritise")
                want[j] = not switches.prioritise_b
        for j in range(S - 2, -1, -1):
            want[j] = want[j] and want[j + 1]
        for j in range(S):
            if want[j]:
                make_room(j, 1.0)
                if j > 0:
                    fill(j, f_end[j - 1][nf[j]] + comm[j - 1])
                put(j, FORWARD)
        for j in range(S - 1, -1, -1):
            if j + 1 < S:
                fill(j, b_end[j + 1][k] + comm[j])
            if j == 0 and nf[0] == m:
                while nw[0] < nb[0]:
                    put(0, BACKWARD_WEIGHT)
            put(j, BACKWARD_INPUT)
    # 4. the remaining W's
    for j in range(S):
        while nw[j] < m:
            put(j, BACKWARD_WEIGHT)
    return RoundOrder(tuple(tuple(a) for a in acts), tuple(free[j] - first[j] for j in range(S)))


def _same_run(a: RoundSwitches, b: RoundSwitches, mattered: set) -> bool:
    """Whether ``a`` differs from ``b`` only in switches that did not matter in ``b``'s run."""
    differ = {name for name, x, y in (("warmup", a.warmup_overrun, b.warmup_overrun),
                                      ("prioritise", a.prioritise_b, b.prioritise_b),
                                      ("greedy", a.greedy_fill, b.greedy_fill)) if x != y}
    return not differ & mattered


def best_round_order(m: int, times: StageTimes, cap: float) -> RoundOrder:
    """The paper's grid search: the shortest longest device span over the eight ``RoundSwitches``
    (the first on ties; a run stops early once it cannot beat the best so far, and a setting is
    skipped when it differs from one already run only in switches no decision there turned on: it
    would make the same order). Actions become
    ``Action``s here, once. Raises ScheduleError when no run fits ``cap``."""
    best, failure, done = None, None, []
    for switches in ALL_SWITCHES:
        if any(_same_run(switches, other, mattered) for other, mattered in done):
            continue  # it would repeat a run already made, decision for decision
        mattered: set = set()
        done.append((switches, mattered))
        try:
            order = round_order(m, times, cap, switches, math.inf if best is None else best.longest_span - _EPS,
                                mattered)
        except ScheduleError as err:
            failure = err
            continue
        if order is not None and (best is None or order.longest_span < best.longest_span - _EPS):
            best = order
    if best is None:
        raise failure
    return RoundOrder(tuple(tuple(Action(*a) for a in acts) for acts in best.device_actions), best.spans)
