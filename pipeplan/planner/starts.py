"""The plans the simulator judges besides CP-SAT's: the splits people use (Megatron's uniform split, DeepSpeed's
``parameters`` split) as polish starts for every schedule variant and as the answer's baselines, and the
brute-force optimum for small models.

Why starts: CP-SAT's split is one point of a plateau of the analytic objective (it sees the slowest device
and the widest stage, so splits that only place the larger stages elsewhere tie), and the simulator may time
that point far from the plateau's best (llama3-8b, pp = 8, interleaved v = 4: CP-SAT's split 8.72 s, the
uniform split 8.25 s, the parameter split 7.40 s, the best 7.31 s). The polish goes to the fastest starts, so
each variant's best candidate also offers the usual splits: a variant whose CP-SAT point simulates badly still
gets polished from a good start.
"""
from __future__ import annotations

from typing import Iterable

from simulator.schedules import SCHEDULES

from ..api import simulate
from ..limits import schedule_ops
from ..plan import Plan
from . import clock
from .baselines import BRUTE_FORCE, PARAMETERS, UNIFORM, deepspeed_parameters, megatron_uniform
from .bounds import plan_bound
from .exhaustive import MAX_PLANS, exhaust, space_size, surely_over, uniform_plans
from .problem import Candidate, PartitionProblem
from .refine import fits_within
from .request import OptimizeRequest
from .result import Scored


# Plans by these names are the usual splits (quick plans, seeds, baselines, the given configuration), asked for
# again by later steps: their simulations are kept (``OptimizeRequest.judged``). CP-SAT's, the polish's and the
# exhaustive search's plans are mostly new, and are not kept (a polish of a small model simulates hundreds).
REUSED = frozenset({"screen", UNIFORM, PARAMETERS, "given config"})


def judge(request: OptimizeRequest, name: str, plan: Plan) -> Scored:
    """``plan`` as the simulator replays it on the request's model, cluster and (measured) costs (its time per
    op goes to the request's ``pace``); a usual split (``REUSED``) simulated before in this search is not
    simulated again (the simulator is deterministic)."""
    key = plan.to_json() if name in REUSED else None
    if key is not None and key in request.judged:
        return Scored(name, plan, request.judged[key])
    started = clock.now()
    result = simulate(request.model, request.cluster, plan, profile=request.profile)
    request.pace.record(result.resolved.schedule.num_actions(), clock.now() - started)
    if key is not None:
        request.judged[key] = result
    return Scored(name, plan, result)


def candidate_ops(pp: int, candidate: Candidate) -> int:
    """The compute ops of ``candidate``'s schedule on pp devices (what ``request.no_time_for`` is asked)."""
    kinds = 3 if SCHEDULES[candidate.schedule].split_backward else 2
    return schedule_ops(pp, candidate.num_microbatches, candidate.chunks, kinds)


def plan_ops(plan: Plan) -> int:
    return candidate_ops(plan.pp, Candidate(plan.schedule, plan.chunks, plan.microbatch_size, plan.num_microbatches))


def usual_splits(request: OptimizeRequest, stages: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, layers per stage) of Megatron's uniform split and DeepSpeed's parameter split."""
    return ((UNIFORM, megatron_uniform(request.model, stages)),
            (PARAMETERS, deepspeed_parameters(request.model, stages, request.sequence_length)))


def seed_starts(request: OptimizeRequest, candidates: Iterable[tuple[Candidate, PartitionProblem]],
                fastest: float) -> list[Scored]:
    """The usual splits of each candidate, with the least recomputation (one mode on every stage) that may fit
    and fits, simulated unless their bound (``bounds.plan_bound``) cannot beat ``fastest`` (seconds, the
    fastest fitting plan simulated so far, lowered as seeds fit), and none past the request's deadline."""
    out = []
    for candidate, problem in candidates:
        for name, layers in usual_splits(request, problem.num_stages):
            for modes in uniform_plans(problem, layers):  # least recomputation first
                plan = request.plan_for(candidate, layers, (False,) * len(layers)).with_(recompute=modes)
                if plan_bound(problem, layers, modes) >= fastest or request.no_time_for(plan_ops(plan)):
                    break
                scored = judge(request, name, plan)
                if fits_within(scored, request.headroom):
                    out.append(scored)
                    fastest = min(fastest, scored.iteration_time)
                    break
    return out


def score_baselines(request: OptimizeRequest, candidate: Candidate,
                    problem: PartitionProblem | None = None) -> list[Scored]:
    """The uniform and parameter-balanced splits of ``candidate`` (recomputing everywhere when they
    do not fit otherwise), and for small models the best of every split and recomputation choice
    (``_brute_force`` on ``problem``, built here when not given), as the simulator replays them.

    "Fit" is the chosen plan's rule, headroom included, so a speed-up is never measured against a
    baseline that breaks it. Past the request's deadline no more is simulated (those scored by then).
    """
    if problem is None:
        problem = request.problem_for(candidate)
    S = candidate.chunks * request.pp
    none, full = (False,) * S, (True,) * S
    out = []  # uniform, parameters, then the brute force when there is one
    ops = candidate_ops(request.pp, candidate)
    for name, layers in usual_splits(request, S):
        if request.no_time_for(ops):  # a deadline: the baselines scored by then
            return out
        # Without recomputation, unless some device is surely over memory so (it would not fit: full it is).
        scored = None
        if not any(surely_over(problem, d, layers, dict.fromkeys(problem.stages_of(d), "none"))
                   for d in range(request.pp)):
            scored = judge(request, name, request.plan_for(candidate, layers, none))
        if (scored is None or not fits_within(scored, request.headroom)) and not request.no_time_for(ops):
            scored = judge(request, name, request.plan_for(candidate, layers, full))
        if scored is not None:
            out.append(scored)
    best = _brute_force(request, candidate, problem)
    return out if best is None else out + [best]


def _brute_force(request: OptimizeRequest, candidate: Candidate, problem: PartitionProblem) -> Scored | None:
    """The fastest plan of ``candidate`` over every split x every per-stage recomputation choice, each
    simulated unless surely over memory or bounded above the best so far (``exhaustive.exhaust``);
    None when the space is too large or nothing fits."""
    if request.out_of_time or space_size([problem]) > MAX_PLANS:
        return None
    ops = candidate_ops(request.pp, candidate)
    found = exhaust([(candidate, problem)], request.plan_for, lambda plan: judge(request, BRUTE_FORCE, plan),
                    lambda scored: fits_within(scored, request.headroom), None,
                    stop=lambda: request.no_time_for(ops))
    return found.best if found.complete else None
