"""The layout screen (``layout_search`` step 2): a quick simulated plan per layout, and the order layouts are
screened in.

A layout's *quick plans* are the uniform split (``baselines.megatron_uniform``) under 1F1B and ZB-V (those
the request allows, else its first schedule), each at the smallest micro-batch size it runs with, with the
least recomputation (none, selective where it saves memory, full) that fits. Before a quick plan is
simulated, its candidate's ``PartitionProblem`` (the one the search solves) judges it: a recomputation mode
under which some device is surely over the memory limit (``exhaustive.surely_over``) is not simulated, nor
a plan whose ``bounds.plan_bound`` (valid for the simulated time) is not below the fastest fitting plan
simulated so far: it cannot be the answer, and the screen's ranking only needs to know it is slower.

Layouts are screened in order of ``screen_order``: the smallest ``plan_bound`` of a layout's quick plans at
the least recomputation that may fit, or, where larger, the time floor stretched by the 1F1B fill
(``screen_estimate``). A rank, not a bound: it puts first the layouts whose quick plans fit with little
recomputation, so that the best screens come early and the bound check above skips the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..plan import Plan
from .baselines import megatron_uniform
from .bounds import plan_bound
from .exhaustive import surely_over
from .layouts import Layout
from .problem import Candidate, PartitionProblem
from .refine import fits_within
from .request import OptimizeRequest
from .result import Scored
from .starts import candidate_ops, judge

SCREEN_ORDER = ("none", "selective", "full")
SCREEN_SCHEDULES = (("1f1b", 1), ("zb-v", 2))  # one plain and one bubble-free family, where allowed


@dataclass(frozen=True)
class QuickPlan:
    """A quick plan's candidate, its problem and its uniform split, before any recomputation is chosen."""

    candidate: Candidate
    problem: PartitionProblem
    layers: tuple[int, ...]

    def may_fit(self, mode: str) -> bool:
        """No device is surely over the memory limit with ``mode`` on every stage."""
        return not any(surely_over(self.problem, d, self.layers, dict.fromkeys(self.problem.stages_of(d), mode))
                       for d in range(self.problem.pp))

    def bound(self, mode: str) -> float:
        """Seconds this plan with ``mode`` on every stage cannot simulate faster than."""
        return plan_bound(self.problem, self.layers, (mode,) * len(self.layers))

    def least_bound(self) -> float:
        """The bound at the least recomputation that may fit (inf: none may)."""
        return next((self.bound(mode) for mode in self.problem.modes if self.may_fit(mode)), math.inf)


def quick_plans(request: OptimizeRequest) -> list[QuickPlan]:
    """The request's quick plans (module docstring), 1F1B's first."""
    allowed = [variant for variant in SCREEN_SCHEDULES if variant in request.variants] or [request.variants[0]]
    sizes = request.microbatch_sizes or tuple(b for b in range(1, request.replica_batch + 1)
                                              if request.replica_batch % b == 0)
    out = []
    for schedule, v in allowed:
        S = request.pp * v
        if S > request.model.num_pipeline_layers:
            continue
        b = next((b for b in sizes if request.replica_batch % b == 0
                  and request.runs(schedule, request.replica_batch // b, v)), None)
        if b is not None:
            candidate = Candidate(schedule, v, b, request.replica_batch // b)
            out.append(QuickPlan(candidate, request.problem_for(candidate), megatron_uniform(request.model, S)))
    return out


def screen_estimate(floor: float, layout: Layout, base: OptimizeRequest) -> float:
    """The time floor stretched by the screen plan's own 1F1B fill, (m + pp - 1) / m at its smallest
    micro-batch. Not a bound (the floor is the one pruning uses) but a rank: without the fill, the floor
    ranks a deep pipeline with few micro-batches per replica (a 50 % bubble at pp = 128, m = 256) above the
    shallower layouts, and a time limit could stop the screen before it reaches the layouts that are fastest."""
    batch = base.global_batch // layout.dp
    b = min((b for b in base.microbatch_sizes or (1,) if batch % b == 0), default=1)
    m = batch // b
    return floor * (m + layout.pp - 1) / m


def screen_order(floor: float, layout: Layout, base: OptimizeRequest, quicks: list[QuickPlan]) -> float:
    """The rank a layout is screened in (module docstring): lower first."""
    least = min((q.least_bound() for q in quicks), default=math.inf)
    return max(screen_estimate(floor, layout, base), least if math.isfinite(least) else 0.0)


def screen_plan(request: OptimizeRequest, quicks: list[QuickPlan], best: float = math.inf,
                stop=lambda: False) -> Scored | None:
    """The fastest quick plan that fits (module docstring), of those not excluded by memory or by ``best``
    (the fastest fitting simulation so far, seconds); when none fits, the last one simulated; None when
    nothing was simulated. Once ``stop()`` (a deadline) says so with a fitting plan in hand, no more."""
    chosen, fallback = None, None
    for quick in quicks:
        for mode in quick.problem.modes:
            if best < math.inf and (stop() or request.no_time_for(candidate_ops(request.pp, quick.candidate))):
                return chosen or fallback
            if not quick.may_fit(mode) or quick.bound(mode) >= best:
                continue
            scored = judge(request, "screen", _plan(request, quick, mode))
            if fits_within(scored, request.headroom):
                if chosen is None or scored.iteration_time < chosen.iteration_time:
                    chosen = scored
                best = min(best, scored.iteration_time)
                break
            fallback = scored
    return chosen or fallback


def _plan(request: OptimizeRequest, quick: QuickPlan, mode: str) -> Plan:
    plan = request.plan_for(quick.candidate, quick.layers, (False,) * len(quick.layers))
    return plan.with_(recompute=(mode,) * len(quick.layers))


def least_recompute(request: OptimizeRequest, name: str, schedule: str, v: int, b: int,
                    modes: tuple[str, ...] = SCREEN_ORDER) -> Scored | None:
    """The uniform split under ``schedule`` at micro-batch b with the first recomputation in ``modes`` that
    fits (headroom included), each simulated; the last one tried when none fits; None when the schedule (or
    the request's target) rejects (p, m, v)."""
    batch = request.replica_batch
    if batch % b or request.pp * v > request.model.num_pipeline_layers:
        return None
    m = batch // b
    if not request.runs(schedule, m, v):
        return None
    layers = megatron_uniform(request.model, request.pp * v)
    plan = request.plan_for(Candidate(schedule, v, b, m), layers, (False,) * len(layers))
    scored = None
    for mode in modes:
        scored = judge(request, name, plan.with_(recompute=(mode,) * len(layers)))
        if fits_within(scored, request.headroom):
            return scored
    return scored
