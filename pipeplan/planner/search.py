"""The planner's search, as named steps over one ``OptimizeRequest``; ``search`` runs them in order.

1. ``bounded_candidates``: every (schedule, v, b) the generators accept, m = per-replica batch / b, each
   with its partition problem, its analytic bound and a bound valid for the simulated time (``bounds``);
2. ``solve_and_prune``: CP-SAT finds each candidate's best split and recomputation under the analytic
   objective and the simulator judges it at once; a candidate is skipped when its simulated-time bound
   (``bounds``, then the memory-aware ``relaxation``) cannot beat the fastest simulation (or the
   request's ``incumbent``), or its analytic bound the ``rescore``-th best prediction once
   ``FAMILY_FEW`` of its schedule variant were judged;
3. ``rescore``: the proposals' simulations; those that fit (headroom included) go on, with the usual
   splits (uniform, parameters) of every schedule variant's best proposal as further starts (``starts``);
4. ``polish``: the fastest ``request.polished`` of them move layers and recomputation together (``refine``);
5. ``exhaustive``: for small models, every split x recomputation of every candidate the valid bounds
   leave, simulated (``exhaustive``);
6. ``score_baselines`` (``starts``): the baselines under the winner's schedule, b and m, through the same
   simulator;
7. ``assemble``: whichever of the polished plan and the baselines simulates fastest and fits, with the
   search record, so the answer is never slower than a baseline.

Each step is a function of the request and the earlier steps' results (small frozen records below);
a new stage is one more such function, called from ``search``.
"""
from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from ..errors import OutOfTime, SpecError
from ..plan import Plan
from . import clock
from .baselines import megatron_uniform
from .bounds import candidate_bound
from .candidates import enumerate_candidates, lower_bound
from .cpsat import UNKNOWN, Solution, solve
from .exhaustive import MAX_PLANS, exhaust, space_size
from .infeasible import explain_infeasible
from .problem import Candidate, PartitionProblem
from .refine import MAX_EVALS, fits_within, refine
from .relaxation import relaxed_bound
from .request import OptimizeRequest
from .result import CandidateRecord, OptimizeResult, Scored
from .starts import candidate_ops, judge, plan_ops, score_baselines, seed_starts

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what runs now)
# Simulated actions one polish may spend (its simulations x the plan's actions), so that the polish of
# a 128-stage, 24,000-action plan costs what the polish of a small one does; 60 simulations at most.
# Transfers keep a polish improving longer than single-cut moves did: the budget went from 500,000 to
# 250,000 (llama3-405b at pp = 16, interleaved v = 4: 60 simulations per polish, 34 s, 24.21 s; now 30,
# 24 s, 24.34 s; single-cut moves had reached 24.41 s in 33 s).
POLISH_ACTIONS = 250_000
MIN_POLISH_EVALS = 8
FAMILY_FEW = 2  # candidates per schedule variant solved and simulated before its analytic bound may prune one


@dataclass(frozen=True)
class Bounded:
    """A candidate, its partition problem, the analytic bound (seconds) no split of it beats in the
    objective, and ``simulated_bound``, one no split and recomputation beats in the simulator."""

    candidate: Candidate
    problem: PartitionProblem
    bound: float
    simulated_bound: float = 0.0


@dataclass(frozen=True)
class Proposal:
    """CP-SAT's best split of one candidate (its problem kept for polishing) and its analytic
    iteration time (seconds)."""

    candidate: Candidate
    problem: PartitionProblem
    solution: Solution
    predicted: float
    scored: Scored | None = None  # its simulation, taken as it is solved


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
    """The winner of the polish: ``scored`` after it, ``start`` the simulated proposal it began from;
    ``source`` "cp-sat" (the polish of CP-SAT's split), "<usual split> + polish" (of a seed, ``starts``), or
    "exhaustive" when the exhaustive search (small models) found faster."""

    start: Simulated
    scored: Scored
    source: str = "cp-sat"


class Dominated(Exception):
    """Every candidate that might fit was pruned by a bound no better than ``request.incumbent``, a plan
    simulated outside this search: the search has nothing faster to return."""


def search(request: OptimizeRequest, progress: Progress | None = None) -> OptimizeResult:
    """Run the steps in order (see the module docstring); SpecError (one line) when nothing fits."""
    started = clock.now()
    bounded = bounded_candidates(request)
    total = len(bounded) + 1  # one step per candidate solved, one for the simulations
    solved = solve_and_prune(request, bounded, progress)
    if progress:
        progress(total - 1, total, "simulating the best proposals")
    rescored = rescore(request, solved)
    best = exhaustive(request, bounded, polish(request, rescored))
    baselines = (score_baselines(request, _candidate_of(best.scored.plan), _problem_of(bounded, best.scored.plan))
                 if request.baselines else [])
    if progress:
        progress(total, total, "done")
    return assemble(request, solved, rescored, best, baselines, clock.now() - started, bounded)


def bounded_candidates(request: OptimizeRequest) -> list[Bounded]:
    """Every candidate with its problem and bounds, in order of analytic bound (then label, for determinism)."""
    found = enumerate_candidates(request.model.num_pipeline_layers, request.pp, request.replica_batch,
                                 list(request.variants), request.microbatch_sizes, request.runs,
                                 blocks=request.model.num_layers)
    if not found:
        names = ", ".join(n for n, _ in request.variants)
        raise SpecError(f"schedules: no schedule of {names} runs with pp = {request.pp} and a per-replica batch "
                        f"of {request.replica_batch}; try other --schedules or a larger --global-batch")
    out = []
    for candidate in found:
        if request.out_of_time and request.incumbent < float("inf"):
            raise OutOfTime("the time limit ran out while this layout's candidates were listed")
        problem = request.problem_for(candidate)
        out.append(Bounded(candidate, problem, problem.seconds(lower_bound(problem)), candidate_bound(problem)))
    out.sort(key=lambda c: (c.bound, c.candidate.label))
    return out


def solve_and_prune(request: OptimizeRequest, bounded: list[Bounded], progress: Progress | None = None) -> Solved:
    """CP-SAT per candidate in analytic-bound order, each proposal simulated as it comes.

    A candidate is skipped when (a) its ``simulated_bound``, valid for the simulator (``bounds``), or
    the memory-aware ``relaxation.relaxed_bound`` (solved only for a candidate the cheaper checks leave;
    infinite when no plan of it may fit) is no better than the fastest fitting simulation so far (or
    ``request.incumbent``, a plan simulated before this search): nothing in it can win; or (b) its
    analytic bound is no better than the ``rescore``-th best prediction so far and its schedule
    variant already had ``FAMILY_FEW`` candidates solved and simulated: the analytic bound is a
    heuristic for the simulator (its fill term is approximate), so every family's best few are
    judged by the simulator before the heuristic discards any of its candidates.

    With ``jobs`` > 1, workers solve a batch of ``jobs`` candidates ahead of time; the results are taken
    in bound order and one that a single process would have pruned (by a result earlier in the same
    batch) is dropped. Each solve is deterministic, so the record and the proposals do not depend on
    how many processes ran them.
    """
    records: dict[Candidate, CandidateRecord] = {}
    proposals: list[Proposal] = []
    solved_per_family: dict[tuple[str, int], int] = {}
    fastest = [request.incumbent]
    relaxed: dict[Candidate, float] = {}

    def simulated_bound(item: Bounded, relax: bool = False) -> float:
        """The cheap bound, raised by the linear relaxation (``relaxation``) where that was solved; ``relax``:
        solve it now unless the cheap bound already prunes."""
        if relax and item.simulated_bound < fastest[0] and item.candidate not in relaxed:
            relaxed[item.candidate] = max(item.simulated_bound, relaxed_bound(item.problem))
        return relaxed.get(item.candidate, item.simulated_bound)

    def pruned(item: Bounded) -> str | None:
        if simulated_bound(item) >= fastest[0]:
            return "PRUNED"
        if fastest[0] < float("inf") and request.no_time_for(candidate_ops(request.pp, item.candidate)):
            return "TIME LIMIT"  # a fitting plan is in hand; the whole search's wall-clock budget is spent
        best = sorted(p.predicted for p in proposals)
        family = (item.candidate.schedule, item.candidate.chunks)
        if (len(best) >= request.rescore and item.bound >= best[request.rescore - 1]
                and solved_per_family.get(family, 0) >= FAMILY_FEW):
            return "PRUNED (analytic)"
        if simulated_bound(item, relax=True) >= fastest[0]:  # last: the relaxation is the costly check
            return "PRUNED"
        return None

    width = request.jobs
    pool = ProcessPoolExecutor(width) if width > 1 else None
    try:
        for first in range(0, len(bounded), width):
            if progress:  # the last of len(bounded) + 1 steps is the simulations after this one
                progress(first, len(bounded) + 1, f"candidate {bounded[first].candidate.label}")
            started = []
            for item in bounded[first:first + width]:
                why = pruned(item)
                if why:
                    records[item.candidate] = CandidateRecord(item.candidate, item.bound, why,
                                                              simulated_bound=simulated_bound(item))
                else:
                    started.append((item, _start_solve(request, item.problem, pool, fastest[0] < float("inf"))))
            for item, job in started:
                why = pruned(item)
                if why:
                    job.cancel()
                    records[item.candidate] = CandidateRecord(item.candidate, item.bound, why,
                                                              simulated_bound=simulated_bound(item))
                    continue
                solution = job.result()
                family = (item.candidate.schedule, item.candidate.chunks)
                solved_per_family[family] = solved_per_family.get(family, 0) + 1
                predicted = item.problem.seconds(solution.objective) if solution.found else None
                scored = None
                if solution.found:
                    scored = judge(request, "cp-sat", _plan_of(request, item.candidate, solution))
                    if fits_within(scored, request.headroom):
                        fastest[0] = min(fastest[0], scored.iteration_time)
                    proposals.append(Proposal(item.candidate, item.problem, solution, predicted, scored))
                records[item.candidate] = CandidateRecord(item.candidate, item.bound, solution.status, predicted,
                                                          solution.gap, solution.wall_time,
                                                          simulated_bound=simulated_bound(item))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, queued solves do not run
    return Solved(tuple(records[item.candidate] for item in bounded), tuple(proposals))


def _plan_of(request: OptimizeRequest, candidate: Candidate, solution: Solution) -> Plan:
    plan = request.plan_for(candidate, solution.layers_per_stage, solution.recompute)
    return plan.with_(recompute=solution.modes) if solution.modes else plan


def _start_solve(request: OptimizeRequest, problem: PartitionProblem, pool: ProcessPoolExecutor | None,
                 in_hand: bool = False) -> Future:
    """Submit one CP-SAT solve to ``pool``, or run it here (a finished future) without one.

    The uniform split is the hint, with the first recomputation setting under which it fits: a
    first solution at once, so a short budget still ends with a plan. With a fitting plan ``in_hand``,
    the solve also stops at the search's deadline (wall clock).
    """
    hint = megatron_uniform(request.model, problem.num_stages)
    hint_recompute = next((rc for rc in ((False,) * len(hint), (True,) * len(hint))
                           if problem.objective(hint, rc) is not None), None)
    limit = request.time_limit
    if request.deadline is not None:  # never far past the whole search's budget; a hint is a first answer
        limit = min(limit, max(0.1, request.deadline - clock.now()))
    wall = request.deadline - clock.now() if request.deadline is not None and in_hand else None
    args = (problem, limit, 1, hint, hint_recompute, "time", wall)
    if pool:
        return pool.submit(solve, *args)
    done: Future = Future()
    done.set_result(solve(*args))
    return done


def rescore(request: OptimizeRequest, solved: Solved) -> Rescored:
    """Every proposal's simulation (taken as it was solved). When none of them fits (headroom included)
    raises ``OutOfTime`` if some candidate went unsolved for want of time (CP-SAT's budget or the whole
    search's), else SpecError saying what would fit."""
    simulated = tuple(Simulated(p, p.scored if p.scored is not None else
                                judge(request, "cp-sat", _plan_of(request, p.candidate, p.solution)))
                      for p in shortlist(solved.proposals, len(solved.proposals)))
    fitting = [s for s in simulated if fits_within(s.scored, request.headroom)]
    if not fitting and any(r.status == "PRUNED" and r.simulated_bound < float("inf") for r in solved.records):
        # Only an outside incumbent prunes while nothing here fits: what was pruned may fit, but not beat it.
        raise Dominated(f"no candidate of pp = {request.pp}, dp = {request.dp} can beat {request.incumbent:.4g} s")
    if not fitting:
        unsolved = [r for r in solved.records if r.status in (UNKNOWN, "TIME LIMIT")]
        if unsolved:
            raise OutOfTime(f"no plan that fits was found in the time given: {len(unsolved)} of "
                            f"{len(solved.records)} candidates ran out of time before CP-SAT found or ruled out a "
                            f"split (CP-SAT had {request.time_limit:g} s each); raise --solver-time-limit or "
                            "--time-limit")
        raise SpecError(explain_infeasible(request.model, request.cluster, request.pp, request.dp,
                                           request.replica_batch, request.sequence_length, request.headroom,
                                           request.distributed_optimizer, request.gpus, request.tp,
                                           request.sequence_parallel, request.deadline))
    if not request.out_of_time:
        fitting += _seeds(request, simulated, fitting)
    fitting.sort(key=lambda s: (s.scored.iteration_time, s.candidate.label, s.scored.name))
    return Rescored(simulated, tuple(fitting))


def _seeds(request: OptimizeRequest, simulated: tuple[Simulated, ...], fitting: list[Simulated]) -> list[Simulated]:
    """The usual splits of every schedule variant's best proposals, the one predicted fastest and the one whose
    CP-SAT split simulated fastest (the b and m the analytic model and the simulator each prefer), as further
    polish starts (``starts``)."""
    chosen: dict[Candidate, Simulated] = {}
    for key in (lambda s: (s.proposal.predicted, s.candidate.label),
                lambda s: (not fits_within(s.scored, request.headroom), s.scored.iteration_time, s.candidate.label)):
        seen: set[tuple[str, int]] = set()
        for item in sorted(simulated, key=key):
            variant = (item.candidate.schedule, item.candidate.chunks)
            if variant not in seen:
                seen.add(variant)
                chosen.setdefault(item.candidate, item)
    fastest = min([request.incumbent] + [s.scored.iteration_time for s in fitting])
    out = []
    for item in chosen.values():
        for scored in seed_starts(request, [(item.candidate, item.proposal.problem)], fastest):
            out.append(Simulated(item.proposal, scored))
            fastest = min(fastest, scored.iteration_time)
    return out


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
    """Polish the ``request.polished`` fastest fitting proposals with the simulator (cut moves and
    recomputation changes together, ``refine``; only towards plans that could beat ``request.incumbent``);
    the fastest result wins (the earlier on a tie)."""
    best = None
    for start in rescored.fitting[:request.polished]:
        actions = start.scored.result.resolved.schedule.num_actions()
        if request.no_time_for(actions):  # past the whole search's deadline: the fastest proposal as it is
            best = best or Polished(start, start.scored, _source(start))
            break
        evals = max(MIN_POLISH_EVALS, min(MAX_EVALS, POLISH_ACTIONS // max(1, actions)))
        polished = refine(start.scored, partial(judge, request), request.headroom, start.proposal.problem,
                          max_evals=evals, ceiling=request.incumbent, stop=lambda: request.no_time_for(actions))
        if best is None or polished.iteration_time < best.scored.iteration_time:
            best = Polished(start, polished, _source(start))
    return best


def _source(start: Simulated) -> str:
    """"cp-sat" for a start that is CP-SAT's split, "<usual split> + polish" for a seed."""
    return "cp-sat" if start.scored.name == "cp-sat" else f"{start.scored.name} + polish"


def exhaustive(request: OptimizeRequest, bounded: list[Bounded], best: Polished) -> Polished:
    """For small models (``exhaustive.space_size`` ≤ ``MAX_PLANS``): every candidate's every split and
    recomputation that might beat the polished plan, simulated (``exhaustive.exhaust``); the faster wins."""
    if request.out_of_time or space_size([b.problem for b in bounded]) > MAX_PLANS:
        return best
    found = exhaust([(b.candidate, b.problem) for b in bounded], request.plan_for,
                    lambda plan: judge(request, "exhaustive", plan),
                    lambda scored: fits_within(scored, request.headroom), best.scored,
                    stop=lambda: request.no_time_for(plan_ops(best.scored.plan)))
    if found.best is None or found.best.iteration_time >= best.scored.iteration_time:
        return best
    return Polished(best.start, found.best, "exhaustive")


def _candidate_of(plan: Plan) -> Candidate:
    return Candidate(plan.schedule, plan.chunks, plan.microbatch_size, plan.num_microbatches)


def _problem_of(bounded: list[Bounded], plan: Plan) -> PartitionProblem:
    return next(b.problem for b in bounded if b.candidate == _candidate_of(plan))


def assemble(request: OptimizeRequest, solved: Solved, rescored: Rescored, best: Polished,
             baselines: list[Scored], search_time: float, bounded: list[Bounded] = ()) -> OptimizeResult:
    """The answer: the polished (or exhaustive) plan, unless a baseline that fits (headroom included)
    simulates faster; the record of every candidate, with the simulated time of those solved; and the
    chosen plan's analytic time (from its candidate's problem in ``bounded``), beside the simulated one."""
    chosen, source = best.scored, best.source
    for b in baselines:
        if fits_within(b, request.headroom) and b.iteration_time < chosen.iteration_time:
            chosen, source = b, b.name
    simulated = {s.candidate: s.scored.iteration_time for s in rescored.simulated}
    records = tuple(replace(r, simulated=simulated[r.candidate]) if r.candidate in simulated else r
                    for r in solved.records)
    proposal = best.start.proposal
    plan = chosen.plan
    problem = next((b.problem for b in bounded if b.candidate == _candidate_of(plan)), None)
    objective = None if problem is None else problem.objective(plan.layers_per_stage, plan.recompute)
    return OptimizeResult(chosen, source, proposal.candidate, proposal.solution, proposal.predicted,
                          tuple(baselines), records, search_time, request.headroom, best.start.scored,
                          None if objective is None else problem.seconds(objective),
                          contenders=tuple(s.scored for s in rescored.fitting))
