"""Schedule search: every device's F/I/W (or F/B) order chosen by CP-SAT to minimise one iteration's time.

The question Zero Bubble's authors wrote an ILP for (Qi et al., ICLR'24, appendix: their MILP, left
disabled in their repository): given per-stage F, I, W and hop times and an activation limit, which
order should each device run? The model (``_build``):

* one interval per op (stage s, kind, micro-batch j), its length the stage's time, scaled to integers;
* ``NoOverlap`` per device: a device runs one op at a time;
* precedence from the one dependency table, ``simulator.deps.RULES`` (``producers_of``): a consumer
  starts after its producer ends, plus the hop's transfer time when they sit on different devices
  (the engine's rule for an uncontended transfer, ``Link`` latency);
* memory as the simulator counts it (``kinds.KindRule.live_delta``, ``memory.peak_live_microbatches``):
  micro-batch (s, j) holds one activation on its device from its F's start to its W's end (B's with
  the full backward); a ``Cumulative`` per device keeps at most ``memory_limit`` of them alive;
* objective: the makespan, the last op's end (the simulator's ``iteration_time`` from 0).

Symmetry: on each (stage, kind) the micro-batches run in order. Every stage takes the same time for
every micro-batch, so this loses nothing: in any feasible schedule, give the k-th slot of each
(stage, kind) to micro-batch k. A dependency a_j >= b_j + c holding for some matching of slots holds
for the sorted slots (the k-th smallest of a is at least the k-th smallest of b), also for the max of
two producers; memory counts F starts minus W ends on a device, which relabelling does not change.

The simulator is the judge: the per-device orders (ops sorted by CP-SAT's start times) are simulated
with the same costs. The simulator starts each op as early as its order allows, so it can only be as
fast or faster; at a proven optimum it must reproduce the objective exactly (``search`` checks it).
Every built-in schedule of the same placement that fits the limit is simulated too, warm-starts the
solver (its order, re-timed by the simulator, is a feasible hint) and bounds the objective, and the
answer is the fastest of them all: never worse than a hand-crafted schedule under the same limit.

Here, not in ``simulator``: the simulator imports no solver (the validator and planner import it
alone); CP-SAT lives in pipeplan next to the planner's model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from simulator.deps import ActionIndex, producers_of
from simulator.engine import simulate
from simulator.ir import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    COMPOSITE_KINDS,
    FORWARD,
    FULL_BACKWARD,
    Action,
    Schedule,
    ScheduleError,
    make_schedule,
)
from simulator.schedules import SCHEDULES
from simulator.stage_times import StageTimes, stage_times_for
from simulator.vshape import v_stage_to_device
from simulator.workload import times_workload

PLACEMENTS = ("linear", "v", "looped")
OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN = "OPTIMAL", "FEASIBLE", "INFEASIBLE", "UNKNOWN"
_MAX_DECIMALS = 6


@dataclass(frozen=True)
class SearchResult:
    """The searched schedule and how it was found.

    ``iteration_time`` is the simulator's (the judge's); ``objective`` and ``lower_bound`` are CP-SAT's
    makespan and proven bound in the same time unit (None when it found no solution). ``source`` is
    "cp-sat", or the built-in schedule whose order was kept because CP-SAT found nothing faster within
    its time limit. ``baselines`` maps every built-in schedule of the same placement that fits the
    limit to its simulated iteration time; ``excluded`` says why the others were left out.
    """

    schedule: Schedule
    iteration_time: float
    peak_activations: list[int]
    status: str
    objective: float | None
    lower_bound: float | None
    solve_seconds: float
    source: str
    memory_limit: int
    placement: str
    baselines: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """(answer - bound) / answer: 0 at a proven optimum."""
        if self.lower_bound is None or self.iteration_time <= 0:
            return None
        return max(0.0, (self.iteration_time - self.lower_bound) / self.iteration_time)


def placement_stages(p: int, v: int, placement: str | None = None) -> tuple[str, list[int]]:
    """(placement, stage -> device): one stage per device ("linear", v = 1), ZB-V's "v" (v = 2: device
    d holds stages d and 2p-1-d) or Megatron's "looped" (stage s on device s mod p, any v)."""
    if p < 1 or v < 1:
        raise ScheduleError(f"devices and chunks must be at least 1 (got p={p}, v={v})")
    if placement is None:
        placement = "linear" if v == 1 else "v" if v == 2 else "looped"
    if placement not in PLACEMENTS:
        raise ScheduleError(f"placement: choose one of {', '.join(PLACEMENTS)} (got {placement!r})")
    if placement == "linear" and v != 1:
        raise ScheduleError(f"placement: linear holds one stage per device; use v or looped for {v} chunks")
    if placement == "v" and v != 2:
        raise ScheduleError(f"placement: v holds exactly 2 chunks per device (got {v}); use looped")
    stages = v_stage_to_device(p) if placement == "v" else [s % p for s in range(p * v)]
    return placement, stages


def default_memory_limit(p: int, v: int) -> int:
    """p·v stage activations per device: 1F1B's bytes (p micro-batches of the whole model slice), ZB-V's 2p."""
    return p * v


def time_scale(costs: StageTimes) -> tuple[int, bool]:
    """(10^k, exact): the smallest power of ten, up to 10^6, that makes every time an integer for CP-SAT."""
    values = costs.forward + costs.backward_input + costs.backward_weight + costs.comm
    for k in range(_MAX_DECIMALS + 1):
        scale = 10 ** k
        if all(abs(x * scale - round(x * scale)) <= 1e-9 * max(1.0, x * scale) for x in values):
            return scale, True
    return 10 ** _MAX_DECIMALS, False


def scaled_costs(costs: StageTimes, scale: int) -> StageTimes:
    """``costs`` x ``scale`` rounded to integers (held as floats: the simulator adds them exactly)."""
    def up(xs):
        return tuple(float(round(x * scale)) for x in xs)
    return StageTimes(up(costs.forward), up(costs.backward_input), up(costs.backward_weight), up(costs.comm),
                      costs.held_fraction)


def search_ops(num_stages: int, m: int, split_backward: bool) -> list[Action]:
    """Every compute op of one iteration: F, I, W (or F, B) of every stage and micro-batch."""
    kinds = (FORWARD, BACKWARD_INPUT, BACKWARD_WEIGHT) if split_backward else (FORWARD, FULL_BACKWARD)
    return [Action(s, k, j) for s in range(num_stages) for k in kinds for j in range(m)]


def op_time(costs: StageTimes, action: Action) -> float:
    s = action.stage
    return {FORWARD: costs.forward[s], BACKWARD_INPUT: costs.backward_input[s],
            BACKWARD_WEIGHT: costs.backward_weight[s],
            FULL_BACKWARD: costs.backward_input[s] + costs.backward_weight[s]}[action.kind]


def transfer_lag(costs: StageTimes, stages: list[int], producer: Action, consumer: Action, direction: str) -> float:
    """The time between a producer's end and its consumer's start: the hop's transfer across devices, else 0."""
    if direction == "local" or stages[producer.stage] == stages[consumer.stage]:
        return 0.0
    return costs.comm[min(producer.stage, consumer.stage)]


def as_search_order(schedule: Schedule, split_backward: bool) -> Schedule | None:
    """A built-in schedule in the search's op set: B split into I then W when searching F/I/W; None when
    it cannot be (an overlapped F&B pair, or I/W ops in a full-backward search)."""
    if not schedule.kinds_present.isdisjoint(COMPOSITE_KINDS):
        return None
    if not split_backward:
        return schedule if schedule.kinds_present <= {FORWARD, FULL_BACKWARD} else None
    rows = []
    for actions in schedule.device_actions:
        row = []
        for a in actions:
            if a.kind == FULL_BACKWARD:  # I then W at once: the gradient leaves at I's end, never later than B's
                row += [Action(a.stage, BACKWARD_INPUT, a.microbatch), Action(a.stage, BACKWARD_WEIGHT, a.microbatch)]
            else:
                row.append(a)
        rows.append(row)
    return make_schedule(rows, schedule.stage_to_device, schedule.num_microbatches, schedule.name, schedule.chunks)


@dataclass
class _Baselines:
    times: dict[str, float]  # name -> simulated iteration time, as built
    orders: dict[str, Schedule]  # name -> the order in the search's op set
    excluded: dict[str, str]


def builtin_baselines(p: int, m: int, v: int, stages: list[int], costs: StageTimes, memory_limit: int,
                      split_backward: bool) -> _Baselines:
    """Every training schedule of the registry that accepts (p, m, v), holds its stages where ``stages`` says
    and fits ``memory_limit``, simulated with ``costs`` (cost-aware ones ordered by them)."""
    out = _Baselines({}, {}, {})
    for name, entry in SCHEDULES.items():
        if entry.forward_only or not entry.accepts(p, m, v):
            continue  # a forward-only schedule has no backward: not an order of the search's ops
        schedule = entry.build(p, m, v, costs if entry.cost_aware else None)
        if list(schedule.stage_to_device) != stages:
            out.excluded[name] = "another placement"
            continue
        order = as_search_order(schedule, split_backward)
        if order is None:
            out.excluded[name] = ("overlapped F&B pairs (one op for two micro-batches)"
                                  if schedule.overlaps() else "splits the backward (search is F/B)")
            continue
        result = simulate(times_workload(schedule, costs))
        if max(result.peak_activations) > memory_limit:
            out.excluded[name] = f"peaks at {max(result.peak_activations)} activations"
            continue
        out.times[name] = result.iteration_time
        out.orders[name] = order
    return out


def _sorted_slots(times: dict[Action, tuple[float, float]]) -> dict[Action, tuple[float, float]]:
    """The same time slots with each (stage, kind)'s k-th slot given to micro-batch k (module docstring)."""
    groups: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for a in sorted(times, key=lambda a: a.microbatch):
        groups.setdefault((a.stage, a.kind), []).append(times[a])
    return {Action(s, k, j): slot for (s, k), slots in groups.items() for j, slot in enumerate(sorted(slots))}


def _build(ops, stages, p, m, memory_limit, costs, split_backward, horizon):
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    start, end, interval = {}, {}, {}
    for a in ops:
        size = int(op_time(costs, a))
        start[a] = model.NewIntVar(0, horizon - size, f"s{a}")
        end[a] = model.NewIntVar(size, horizon, f"e{a}")
        interval[a] = model.NewIntervalVar(start[a], size, end[a], f"i{a}")
    index = ActionIndex(ops, len(stages), m)
    for a in ops:
        for dep in producers_of(a, index):
            model.Add(start[a] >= end[dep.producer] + int(transfer_lag(costs, stages, dep.producer, a, dep.direction)))
        if a.microbatch > 0:  # the symmetry rule: micro-batches in order on each (stage, kind)
            model.Add(start[a] >= end[Action(a.stage, a.kind, a.microbatch - 1)])
    release = BACKWARD_WEIGHT if split_backward else FULL_BACKWARD
    for d in range(p):
        mine = [a for a in ops if stages[a.stage] == d]
        model.AddNoOverlap([interval[a] for a in mine])
        held = []
        for a in mine:
            if a.kind == FORWARD:
                last = Action(a.stage, release, a.microbatch)
                length = model.NewIntVar(0, horizon, f"h{a}")
                held.append(model.NewIntervalVar(start[a], length, end[last], f"held{a}"))
        model.AddCumulative(held, [1] * len(held), memory_limit)
    makespan = model.NewIntVar(0, horizon, "makespan")
    model.AddMaxEquality(makespan, [end[a] for a in ops])
    # Redundant, for the bound: every op of a device waits (through the rules) for the first forward of
    # its earliest stage, so the device's work all lies between that op's start and the end.
    for d in range(p):
        first = Action(min(s for s in range(len(stages)) if stages[s] == d), FORWARD, 0)
        work = sum(int(op_time(costs, a)) for a in ops if stages[a.stage] == d)
        model.Add(makespan >= start[first] + work)
    model.Minimize(makespan)
    return model, start, makespan


def search(p: int, m: int, v: int = 1, costs: StageTimes | None = None, memory_limit: int | None = None,
           placement: str | None = None, split_backward: bool = True, time_limit: float = 10.0,
           workers: int = 1, use_builtins: bool = True) -> SearchResult:
    """The fastest order found for p devices, m micro-batches, v chunks per device under ``memory_limit``.

    ``costs``: per-stage times (None: F = I = W = 1, no transfers); ``memory_limit``: stage activations
    alive per device (default p·v, 1F1B's bytes); ``time_limit``: CP-SAT's deterministic seconds (one
    worker and a fixed seed by default: the same inputs give the same schedule); ``use_builtins``: warm
    start from, bound by and fall back on the built-in schedules (off: CP-SAT alone, for testing it).
    """
    from ortools.sat.python import cp_model  # here, not at the top: importing pipeplan stays quick

    placement, stages = placement_stages(p, v, placement)
    if m < 1:
        raise ScheduleError(f"microbatches must be at least 1 (got {m})")
    costs = stage_times_for(costs, len(stages))
    compute = costs.forward + costs.backward_input + (costs.backward_weight if split_backward else ())
    if min(compute) <= 0:
        raise ScheduleError("costs: the search needs F, I and W (I + W with the full backward) above 0 "
                            "(a zero-length op has no place in a device's order)")
    memory_limit = default_memory_limit(p, v) if memory_limit is None else int(memory_limit)
    scale, exact = time_scale(costs)
    int_costs = scaled_costs(costs, scale)
    ops = search_ops(len(stages), m, split_backward)
    base = builtin_baselines(p, m, v, stages, costs, memory_limit, split_backward) if use_builtins \
        else _Baselines({}, {}, {})

    # The built-ins re-timed in integer units: a feasible hint and an upper bound on the makespan.
    horizon = int(sum(op_time(int_costs, a) for a in ops) + 2 * m * sum(int_costs.comm)) + 1
    hint = None
    for name, order in base.orders.items():
        timed = simulate(times_workload(order, int_costs))
        if max(timed.peak_activations) <= memory_limit and timed.iteration_time < horizon:
            horizon = int(round(timed.iteration_time))
            hint = _sorted_slots({o.action: (o.start, o.end) for o in timed.timeline.ops})
    model, start, makespan = _build(ops, stages, p, m, memory_limit, int_costs, split_backward, horizon)
    if hint is not None:
        for a, (t, _) in hint.items():
            model.AddHint(start[a], int(round(t)))
        model.AddHint(makespan, horizon)

    solver = cp_model.CpSolver()
    # A deterministic budget: the answer does not depend on the machine's load; the wall-clock cap
    # only guards against a budget that runs far slower than its nominal seconds.
    solver.parameters.max_deterministic_time = float(time_limit)
    solver.parameters.max_time_in_seconds = 10.0 * float(time_limit)
    solver.parameters.num_workers = int(workers)
    solver.parameters.random_seed = 0
    started = time.perf_counter()
    code = solver.Solve(model)
    solve_seconds = time.perf_counter() - started
    status = {cp_model.OPTIMAL: OPTIMAL, cp_model.FEASIBLE: FEASIBLE,
              cp_model.INFEASIBLE: INFEASIBLE}.get(code, UNKNOWN)

    candidates: list[tuple[float, int, str, Schedule]] = []
    objective = bound = None
    if status in (OPTIMAL, FEASIBLE):
        objective, bound = solver.ObjectiveValue() / scale, solver.BestObjectiveBound() / scale
        rows = [sorted((a for a in ops if stages[a.stage] == d), key=lambda a: solver.Value(start[a]))
                for d in range(p)]
        found = make_schedule(rows, stages, m, "search", v)
        judged = simulate(times_workload(found, costs))
        _check_judge(judged, objective, status, exact, memory_limit)
        candidates.append((judged.iteration_time, 0, "cp-sat", found))
    for name, order in base.orders.items():
        candidates.append((simulate(times_workload(order, costs)).iteration_time, 1, name, order))
    if not candidates:
        if status == INFEASIBLE:
            raise ScheduleError(f"memory limit: no order of p={p}, m={m}, v={v} ({placement}) keeps at most "
                                f"{memory_limit} activations per device; raise --memory-limit")
        raise ScheduleError(f"CP-SAT found no order within {time_limit:g} s and no built-in schedule fits "
                            f"{memory_limit} activations; raise --time-limit or --memory-limit")
    best_time, _, source, best = min(candidates, key=lambda c: (c[0], c[1]))
    if source != "cp-sat":
        best = make_schedule(best.device_actions, stages, m, "search", v)
    final = simulate(times_workload(best, costs))
    if status == INFEASIBLE:
        status = UNKNOWN  # pragma: no cover - a fitting built-in contradicts CP-SAT's proof
    return SearchResult(best, final.iteration_time, final.peak_activations, status, objective, bound,
                        solve_seconds, source, memory_limit, placement, base.times, base.excluded)


def _check_judge(judged, objective: float, status: str, exact: bool, memory_limit: int) -> None:
    """The simulator of CP-SAT's order must fit the limit and be no slower than CP-SAT's timing
    (equal at a proven optimum when the times scaled exactly): else model and simulator disagree."""
    tolerance = 1e-9 * max(1.0, objective)
    if max(judged.peak_activations) > memory_limit:
        raise AssertionError(f"the searched order peaks at {judged.peak_activations} activations in the "
                             f"simulator, above the limit {memory_limit}: the model and memory.py disagree")
    if judged.iteration_time > objective + tolerance or (
            status == OPTIMAL and exact and abs(judged.iteration_time - objective) > tolerance):
        raise AssertionError(f"the simulator times the searched order at {judged.iteration_time!r}, CP-SAT "
                             f"at {objective!r} ({status}): the model and the engine disagree")
