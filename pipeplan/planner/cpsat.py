"""The CP-SAT model for one candidate: where to cut, which stages recompute.

Variables: cut ``c_k`` (first layer of stage k, k = 1..S−1), an integer; every stage sum is a
difference of prefix sums read through Element constraints, ``P[c_{k+1}] − P[c_k]``; contiguity and "every
stage at least one layer" are ``c_{k+1} ≥ c_k + 1``. ``r_k`` says stage k recomputes; the extra
forward and the smaller stored bytes enter through enforced equalities. The slowest device is an
``AddMaxEquality``; memory is one linear constraint per device and count vector of the schedule
(exact, see ``simulator.memory.live_count_profiles``). The objective is
``PartitionProblem.objective``. Deterministic: fixed seed and worker count, and a deterministic
time budget where one is given.

Selective recomputation is not a CP-SAT choice: the model picks none or full per stage. Where
selective saves memory (standard attention; ``PartitionProblem.modes``) it sits between the two in
both time and bytes, and the simulator-driven steps try it: the polish tries every fitting
none/selective/full pattern of the devices a cut move touches (``refine``) and small models are
searched exhaustively over all three (``exhaustive``). For large standard-attention models this is a
local search around CP-SAT's none/full answer, not a proof.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .problem import PartitionProblem

OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN = "OPTIMAL", "FEASIBLE", "INFEASIBLE", "UNKNOWN"


@dataclass(frozen=True)
class Solution:
    """What one solve returns; ``objective``/``bound`` in the problem's scaled units, ``seconds`` in s."""

    status: str
    layers_per_stage: tuple[int, ...] = ()
    recompute: tuple[bool, ...] = ()
    objective: int | None = None
    bound: float | None = None
    wall_time: float = 0.0
    modes: tuple[str, ...] = ()  # per stage none/selective/full where selective is offered, else empty

    @property
    def found(self) -> bool:
        return self.status in (OPTIMAL, FEASIBLE)

    @property
    def gap(self) -> float | None:
        """Relative distance between the solution and the solver's proven lower bound."""
        if self.objective is None or self.bound is None:
            return None
        return max(0.0, (self.objective - self.bound) / self.objective) if self.objective else 0.0


def _rerun_of(problem: PartitionProblem, prefix: dict, stage_sum):
    """(k, F_k) -> what full recomputation re-runs in stage k (``PartitionProblem.recomputed``). The layers it
    does not re-run are the embedding and the head, the first and the last layer, which stage 0 and stage
    S - 1 always hold: F_k less those, with no Element constraint more. Else the prefix sums of ``recomputed``."""
    L, S, forward, rerun = problem.num_layers, problem.num_stages, problem.forward, problem.recomputed
    skipped = {i for i in range(L) if rerun[i] != forward[i]}
    if skipped <= {0, L - 1} and all(rerun[i] == 0 for i in skipped):
        first, last = (forward[0] if 0 in skipped else 0), (forward[L - 1] if L - 1 in skipped else 0)
        return lambda k, f: f - (first if k == 0 else 0) - (last if k == S - 1 else 0)
    prefix["recomputed"] = _prefix(rerun)
    return lambda k, f: stage_sum("recomputed", k)


def _inert(problem: PartitionProblem, layers: range) -> bool:
    """Full recomputation of these layers re-runs and saves nothing (the embedding or the head alone): CP-SAT
    may set it at no cost, and a plan should not ask a framework for it."""
    return all(problem.recomputed[i] == 0 and problem.activation_rc[i] == problem.activation[i]
               and problem.held_rc[i] == problem.held[i] for i in layers)


def _prefix(values: tuple[int, ...]) -> list[int]:
    out = [0]
    for x in values:
        out.append(out[-1] + x)
    return out


def _exposed_tail(problem: PartitionProblem, tail, stage_sum):
    """``PartitionProblem.exposed_tail`` as a CP-SAT expression."""
    k = problem.tail_stage
    if k is None:
        return 0
    return (tail.reduce_latency + tail.gather_latency + stage_sum("tail_reduce", k)
            + stage_sum("tail_optimizer", k) + stage_sum("tail_gather", k))


def solve(problem: PartitionProblem, time_limit: float = 10.0, workers: int = 1, hint: tuple[int, ...] | None = None,
          hint_recompute: tuple[bool, ...] | None = None, objective: str = "time",
          wall_limit: float | None = None) -> Solution:
    """Minimise the analytic iteration time of ``problem`` (``objective="time"``).

    ``"memory"`` minimises the largest per-device memory level instead, ignoring the capacity (to
    say how much memory a plan would need); ``"none"`` only asks whether any split fits (to find
    how many devices would be enough). ``hint`` is a layers-per-stage split to start from and
    ``hint_recompute`` its recomputation flags; a hint that fits gives the search a first solution at once.
    ``wall_limit`` (seconds) caps the wall-clock time as well (a search's deadline: then the answer may depend
    on the machine's speed).
    """
    minimize_memory = objective == "memory"
    from ortools.sat.python import cp_model

    L, S, p = problem.num_layers, problem.num_stages, problem.pp
    if S > L:
        return Solution(INFEASIBLE)
    model = cp_model.CpModel()
    prefix = {name: _prefix(getattr(problem, name)) for name in (
        "forward", "backward_input", "backward_weight", "activation", "held", "activation_rc", "held_rc", "static")}
    tail = problem.tail_units if objective == "time" else None
    if tail is not None:
        prefix.update(tail_optimizer=_prefix(tail.optimizer), tail_reduce=_prefix(tail.reduce),
                      tail_gather=_prefix(tail.gather))

    # Cut k is the first layer of stage k: an integer with its prefix sums read through Element
    # constraints. Prefix sums are monotone, so bound propagation on them moves the cuts as a
    # greedy "fill each stage up to the slowest allowed" would, which proves optimality quickly.
    cuts = [model.NewConstant(0)]
    for k in range(1, S):
        cuts.append(model.NewIntVar(k, L - S + k, f"c{k}"))
    cuts.append(model.NewConstant(L))
    for k in range(S):
        model.Add(cuts[k + 1] >= cuts[k] + 1)
    at_cut: dict[tuple[str, int], object] = {}

    def at(name: str, k: int):
        """The prefix sum ``name`` at cut k (an Element variable, made once when first read)."""
        values = prefix[name]
        if k in (0, S):
            return values[0] if k == 0 else values[L]
        if (name, k) not in at_cut:
            v = model.NewIntVar(values[k], values[L - S + k], f"{name}@c{k}")
            model.AddElement(cuts[k], values, v)
            at_cut[name, k] = v
        return at_cut[name, k]

    def stage_sum(name: str, k: int):
        return at(name, k + 1) - at(name, k)

    a, b, c = problem.fill_weights
    big_f = prefix["forward"][-1]
    rerun = _rerun_of(problem, prefix, stage_sum)
    work, fill_terms, act, held = [], [], [], []
    recompute = []
    for k in range(S):
        f, i_, w = stage_sum("forward", k), stage_sum("backward_input", k), stage_sum("backward_weight", k)
        r = model.NewBoolVar(f"r{k}")
        if not problem.allow_recompute:
            model.Add(r == 0)
        recompute.append(r)
        extra = model.NewIntVar(0, big_f, f"rf{k}")  # = r_k · (stage k's recomputed forward)
        model.Add(extra == rerun(k, f)).OnlyEnforceIf(r)
        model.Add(extra == 0).OnlyEnforceIf(r.Not())
        work.append(f + i_ + w + extra)
        fill_terms.append(a * f + b * (i_ + extra) + c * w)
        top_act = max(prefix["activation"][-1], prefix["activation_rc"][-1])
        top_held = max(prefix["held"][-1], prefix["held_rc"][-1])
        ak = model.NewIntVar(0, top_act, f"act{k}")
        hk = model.NewIntVar(0, top_held, f"held{k}")
        model.Add(ak == stage_sum("activation", k)).OnlyEnforceIf(r.Not())
        model.Add(ak == stage_sum("activation_rc", k)).OnlyEnforceIf(r)
        model.Add(hk == stage_sum("held", k)).OnlyEnforceIf(r.Not())
        model.Add(hk == stage_sum("held_rc", k)).OnlyEnforceIf(r)
        act.append(ak)
        held.append(hk)

    if problem.uniform_recompute:
        for r in recompute[1:]:
            model.Add(r == recompute[0])

    total_work = prefix["forward"][-1] * 2 + prefix["backward_input"][-1] + prefix["backward_weight"][-1]
    device_work = []
    levels = []
    for d in range(p):
        stages = problem.stages_of(d)
        wd = model.NewIntVar(0, total_work, f"work{d}")
        model.Add(wd == sum(work[k] for k in stages))
        device_work.append(wd)
        static = sum(stage_sum("static", k) for k in stages)
        for vector in problem.profiles[d]:
            level = static + sum(nf * act[k] + nh * held[k] for k, (nf, nh) in zip(stages, vector))
            levels.append(level)
            if not minimize_memory:
                model.Add(level <= problem.capacity)
    slowest = model.NewIntVar(0, total_work, "slowest")
    model.AddMaxEquality(slowest, device_work)
    # Redundant but tightens the LP: the slowest device does at least its share of the plain work.
    base = prefix["forward"][-1] + prefix["backward_input"][-1] + prefix["backward_weight"][-1]
    model.Add(p * slowest >= base)

    if minimize_memory:
        top = max(1, 4 * sum(problem.static) + sum(max(x, y) for x, y in zip(problem.activation, problem.activation_rc))
                  * problem.num_microbatches * 4)
        peak = model.NewIntVar(0, top, "peak")
        for level in levels:
            model.Add(peak >= level)
        model.Minimize(peak)
    elif objective == "time":
        if problem.chunks > 1:
            # The widest stage's φ; minimisation makes these bounds tight. (An AddMaxEquality over
            # these sums sends CP-SAT's presolve into a long loop on 64-stage models.)
            widest = model.NewIntVar(-2 * total_work, 2 * total_work, "widest_fill")
            for term in fill_terms:
                model.Add(widest >= term)
            fill = problem.scale * widest
        else:
            fill = sum(fill_terms)
        exposed = 0
        if tail is not None:
            exposed = _exposed_tail(problem, tail, stage_sum)
        model.Minimize(problem.scale * problem.num_microbatches * slowest + (p - 1) * fill
                       + problem.scale * problem.comm + problem.scale * exposed)

    if hint:
        start = 0
        for k, n in enumerate(hint[:-1], start=1):
            start += n
            model.AddHint(cuts[k], start)
        for r, flag in zip(recompute, hint_recompute or ()):
            model.AddHint(r, bool(flag))

    solver = cp_model.CpSolver()
    # The deterministic budget makes the answer independent of machine load; the wall-clock cap
    # only guards against a budget that runs far slower than its nominal seconds.
    solver.parameters.max_deterministic_time = float(time_limit)
    solver.parameters.max_time_in_seconds = min(10.0 * float(time_limit),
                                                float("inf") if wall_limit is None else max(0.01, wall_limit))
    solver.parameters.num_workers = int(workers)
    solver.parameters.random_seed = 0
    # Full linearisation puts the enforced (recompute) equalities into the LP: memory-bound models
    # prove optimal in seconds instead of stalling at a 25 % gap.
    solver.parameters.linearization_level = 2
    started = time.perf_counter()
    code = solver.Solve(model)
    wall = time.perf_counter() - started
    status = {cp_model.OPTIMAL: OPTIMAL, cp_model.FEASIBLE: FEASIBLE, cp_model.INFEASIBLE: INFEASIBLE}.get(code, UNKNOWN)
    if status not in (OPTIMAL, FEASIBLE):
        return Solution(status, wall_time=wall)
    values = [solver.Value(c) for c in cuts]
    layers = tuple(values[k + 1] - values[k] for k in range(S))
    flags = [bool(solver.Value(r)) for r in recompute]
    if not problem.uniform_recompute:  # a stage whose recomputation changes nothing (no block) says none
        flags = [flag and not _inert(problem, range(values[k], values[k + 1])) for k, flag in enumerate(flags)]
    return Solution(
        status=status,
        layers_per_stage=layers,
        recompute=tuple(flags),
        objective=int(round(solver.ObjectiveValue())),
        bound=float(solver.BestObjectiveBound()),
        wall_time=wall,
    )
