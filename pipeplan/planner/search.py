"""The planner's search, as named steps over one ``OptimizeRequest``; ``search`` runs them in order.

1. ``bounded_candidates``: every (schedule, v, b) the generators accept, m = per-replica batch / b, each
   with its partition problem and a lower bound on its iteration time, in bound order;
2. ``solve_and_prune``: CP-SAT finds each candidate's best split and recomputation under the analytic
   objective; a candidate whose bound cannot beat the ``rescore``-th best found is skipped;
3. ``rescore``: the simulator judges the ``shortlist`` (the best ``rescore`` proposals and the best of
   every schedule variant); those that fit (headroom included) go on;
4. ``polish``: the fastest ``POLISHED`` of them move single cuts while that simulates faster (``refine``);
5. ``score_baselines``: the baselines under the winner's schedule, b and m, through the same simulator;
6. ``assemble``: whichever of the polished plan and the baselines simulates fastest and fits, with the
   search record, so the answer is never slower than a baseline.

Each step is a function of the request and the earlier steps' results (small frozen records below);
a new stage is one more such function, called from ``search``.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from ..api import simulate
from ..errors import SpecError
from ..plan import Plan
from .baselines import BRUTE_FORCE, PARAMETERS, UNIFORM, all_splits, deepspeed_parameters, megatron_uniform
from .candidates import enumerate_candidates, lower_bound
from .cpsat import Solution, solve
from .infeasible import explain_infeasible
from .problem import Candidate, PartitionProblem, build_problem
from .refine import fits_within, refine
from .request import OptimizeRequest
from .result import CandidateRecord, OptimizeResult, Scored

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what runs now)
POLISHED = 2  # proposals the simulator polishes; the runner-up schedule often overtakes after polish


@dataclass(frozen=True)
class Bounded:
    """A candidate, its partition problem and the bound (seconds) no split of it beats."""

    candidate: Candidate
    problem: PartitionProblem
    bound: float


@dataclass(frozen=True)
class Proposal:
    """CP-SAT's best split of one candidate (its problem kept for polishing) and its analytic
    iteration time (seconds)."""

    candidate: Candidate
    problem: PartitionProblem
    solution: Solution
    predicted: float


@dataclass(frozen=True)
class Solved:
    """What the solve step leaves: every candidate's record (in bound order) and the proposals found."""

    records: tuple[CandidateRecord, ...]
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True)
class Simulated:
    """A proposal as the simulator replays it."""

    proposal: Proposal
    scored: Scored

    @property
    def candidate(self) -> Candidate:
        return self.proposal.candidate


@dataclass(frozen=True)
class Rescored:
    """Every proposal simulated (the record keeps their times) and those that fit, fastest first."""

    simulated: tuple[Simulated, ...]
    fitting: tuple[Simulated, ...]


@dataclass(frozen=True)
class Polished:
    """The winner of the polish: ``scored`` after it, ``start`` the simulated proposal it began from."""

    start: Simulated
    scored: Scored


def search(request: OptimizeRequest, progress: Progress | None = None) -> OptimizeResult:
    """Run the steps in order (see the module docstring); SpecError (one line) when nothing fits."""
    started = time.perf_counter()
    bounded = bounded_candidates(request)
    total = len(bounded) + 1  # one step per candidate solved, one for the simulations
    solved = solve_and_prune(request, bounded, progress)
    if progress:
        progress(total - 1, total, "simulating the best proposals")
    rescored = rescore(request, solved.proposals)
    best = polish(request, rescored)
    baselines = score_baselines(request, best.start.candidate)
    if progress:
        progress(total, total, "done")
    return assemble(request, solved, rescored, best, baselines, time.perf_counter() - started)


def judge(request: OptimizeRequest, name: str, plan: Plan) -> Scored:
    """``plan`` as the simulator replays it on the request's model, cluster and (measured) costs."""
    return Scored(name, plan, simulate(request.model, request.cluster, plan, profile=request.profile))


def bounded_candidates(request: OptimizeRequest) -> list[Bounded]:
    """Every candidate with its problem and lower bound, in order of bound (then label, for determinism)."""
    found = enumerate_candidates(request.model.num_pipeline_layers, request.pp, request.replica_batch,
                                 list(request.variants), request.microbatch_sizes)
    if not found:
        names = ", ".join(n for n, _ in request.variants)
        raise SpecError(f"schedules: no schedule of {names} runs with pp = {request.pp} and a per-replica batch "
                        f"of {request.replica_batch}; try other --schedules or a larger --global-batch")
    out = []
    for candidate, schedule in found:
        problem = build_problem(request.model, request.cluster, candidate, schedule, request.sequence_length,
                                request.gpus, request.dp, request.distributed_optimizer, request.headroom,
                                profile=request.profile, tp=request.tp,
                                sequence_parallel=request.sequence_parallel)
        out.append(Bounded(candidate, problem, problem.seconds(lower_bound(problem))))
    out.sort(key=lambda c: (c.bound, c.candidate.label))
    return out


def solve_and_prune(request: OptimizeRequest, bounded: list[Bounded], progress: Progress | None = None) -> Solved:
    """CP-SAT per candidate in bound order, skipping those whose bound is no better than the
    ``rescore``-th best prediction so far (they could not enter the ``rescore`` best).

    With ``jobs`` > 1, workers solve a batch of ``jobs`` candidates ahead of time; the results are taken
    in bound order and one that a single process would have pruned (by a result earlier in the same
    batch) is dropped. Each solve is deterministic, so the record and the proposals do not depend on
    how many processes ran them.
    """
    records: dict[Candidate, CandidateRecord] = {}
    proposals: list[Proposal] = []

    def pruned(bound: float) -> bool:
        best = sorted(p.predicted for p in proposals)
        return len(best) >= request.rescore and bound >= best[request.rescore - 1]

    width = request.jobs
    pool = ProcessPoolExecutor(width) if width > 1 else None
    try:
        for first in range(0, len(bounded), width):
            if progress:  # the last of len(bounded) + 1 steps is the simulations after this one
                progress(first, len(bounded) + 1, bounded[first].candidate.label)
            started = []
            for item in bounded[first:first + width]:
                if pruned(item.bound):
                    records[item.candidate] = CandidateRecord(item.candidate, item.bound)
                else:
                    started.append((item, _start_solve(request, item.problem, pool)))
            for item, job in started:
                if pruned(item.bound):
                    job.cancel()
                    records[item.candidate] = CandidateRecord(item.candidate, item.bound)
                    continue
                solution = job.result()
                predicted = item.problem.seconds(solution.objective) if solution.found else None
                records[item.candidate] = CandidateRecord(item.candidate, item.bound, solution.status, predicted,
                                                          solution.gap, solution.wall_time)
                if solution.found:
                    proposals.append(Proposal(item.candidate, item.problem, solution, predicted))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, queued solves do not run
    return Solved(tuple(records[item.candidate] for item in bounded), tuple(proposals))


def _start_solve(request: OptimizeRequest, problem: PartitionProblem, pool: ProcessPoolExecutor | None) -> Future:
    """Submit one CP-SAT solve to ``pool``, or run it here (a finished future) without one.

    The uniform split is the hint, with the first recomputation setting under which it fits: a
    first solution at once, so a short budget still ends with a plan.
    """
    hint = megatron_uniform(request.model, problem.num_stages)
    hint_recompute = next((rc for rc in ((False,) * len(hint), (True,) * len(hint))
                           if problem.objective(hint, rc) is not None), None)
    args = (problem, request.time_limit, 1, hint, hint_recompute)
    if pool:
        return pool.submit(solve, *args)
    done: Future = Future()
    done.set_result(solve(*args))
    return done


def rescore(request: OptimizeRequest, proposals: tuple[Proposal, ...]) -> Rescored:
    """Simulate the shortlist (``shortlist``). Raises SpecError saying what would fit when none of it
    fits (headroom included)."""
    simulated = tuple(
        Simulated(p, judge(request, "cp-sat", request.plan_for(p.candidate, p.solution.layers_per_stage,
                                                               p.solution.recompute)))
        for p in shortlist(proposals, request.rescore))
    fitting = [s for s in simulated if fits_within(s.scored, request.headroom)]
    if not fitting:
        raise SpecError(explain_infeasible(request.model, request.cluster, request.pp, request.dp,
                                           request.replica_batch, request.sequence_length, request.headroom,
                                           request.distributed_optimizer, request.gpus, request.tp,
                                           request.sequence_parallel))
    fitting.sort(key=lambda s: (s.scored.iteration_time, s.candidate.label))
    return Rescored(simulated, tuple(fitting))


def shortlist(proposals: tuple[Proposal, ...], rescore: int) -> list[Proposal]:
    """The ``rescore`` best predictions and the best of every schedule variant, best first. Each
    variant's best gets a simulation because the analytic fill term is exact only for uniform stages
    and is approximated differently per schedule, so it may misrank variants."""
    ranked = sorted(proposals, key=lambda p: (p.predicted, p.candidate.label))
    chosen, seen_variants = [], set()
    for i, proposal in enumerate(ranked):
        variant = (proposal.candidate.schedule, proposal.candidate.chunks)
        if i < rescore or variant not in seen_variants:
            chosen.append(proposal)
        seen_variants.add(variant)
    return chosen


def polish(request: OptimizeRequest, rescored: Rescored) -> Polished:
    """Polish the ``POLISHED`` fastest fitting proposals with the simulator; the fastest result wins
    (the earlier on a tie)."""
    best = None
    for start in rescored.fitting[:POLISHED]:
        polished = refine(start.scored, partial(judge, request), request.headroom,
                          partial(_within_planner_memory, start.proposal.problem))
        if best is None or polished.iteration_time < best.scored.iteration_time:
            best = Polished(start, polished)
    return best


def _within_planner_memory(problem: PartitionProblem, plan: Plan) -> bool:
    """The planner's own (rounded-up) memory rule: a cheap screen before a neighbour costs a simulation."""
    return problem.objective(plan.layers_per_stage, tuple(r == "full" for r in plan.recompute)) is not None


def score_baselines(request: OptimizeRequest, candidate: Candidate) -> list[Scored]:
    """The uniform and parameter-balanced splits of ``candidate`` (recomputing everywhere when they do
    not fit otherwise), and for small models the best of every split, as the simulator replays them.

    "Fit" is the chosen plan's rule, headroom included, so a speed-up is never measured against a
    baseline that breaks it.
    """
    S = candidate.chunks * request.pp
    none, full = (False,) * S, (True,) * S
    out = []  # uniform, parameters, then the brute force when there is one
    for name, layers in ((UNIFORM, megatron_uniform(request.model, S)),
                         (PARAMETERS, deepspeed_parameters(request.model, S, request.sequence_length))):
        scored = judge(request, name, request.plan_for(candidate, layers, none))
        if not fits_within(scored, request.headroom):
            scored = judge(request, name, request.plan_for(candidate, layers, full))
        out.append(scored)
    best = _brute_force(request, candidate)
    return out if best is None else out + [best]


def _brute_force(request: OptimizeRequest, candidate: Candidate) -> Scored | None:
    """The fastest split that fits, every split simulated, without recomputation if any fits so; None
    when the model has too many splits to try (``all_splits``)."""
    S = candidate.chunks * request.pp
    splits = all_splits(request.model.num_pipeline_layers, S) or []
    for recompute in ((False,) * S, (True,) * S):
        best = None
        for layers in splits:
            scored = judge(request, BRUTE_FORCE, request.plan_for(candidate, layers, recompute))
            faster = best is None or scored.iteration_time < best.iteration_time
            if faster and fits_within(scored, request.headroom):
                best = scored
        if best is not None:
            return best
    return None


def assemble(request: OptimizeRequest, solved: Solved, rescored: Rescored, best: Polished,
             baselines: list[Scored], search_time: float) -> OptimizeResult:
    """The answer: the polished plan, unless a baseline that fits (headroom included) simulates faster;
    and the record of every candidate, with the simulated time of those re-scored."""
    chosen, source = best.scored, "cp-sat"
    for b in baselines:
        if fits_within(b, request.headroom) and b.iteration_time < chosen.iteration_time:
            chosen, source = b, b.name
    simulated = {s.candidate: s.scored.iteration_time for s in rescored.simulated}
    records = tuple(replace(r, simulated=simulated[r.candidate]) if r.candidate in simulated else r
                    for r in solved.records)
    proposal = best.start.proposal
    return OptimizeResult(chosen, source, proposal.candidate, proposal.solution, proposal.predicted,
                          tuple(baselines), records, search_time, request.headroom, best.start.scored)
