"""What ``optimize`` returns: the chosen plan, its simulation, the baselines and how the search went."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..api import PlanResult
from ..plan import Plan
from .baselines import UNIFORM
from .cpsat import Solution
from .problem import Candidate

if TYPE_CHECKING:
    from .layouts import Layout


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate's fate: pruned by its bound, solved (status, predicted time), maybe simulated."""

    candidate: Candidate
    lower_bound: float
    status: str = "PRUNED"
    predicted: float | None = None
    gap: float | None = None
    solve_time: float = 0.0
    simulated: float | None = None
    simulated_bound: float | None = None  # valid for the simulated time of every split (``bounds``)

    def to_dict(self) -> dict:
        return {
            "schedule": self.candidate.schedule, "chunks": self.candidate.chunks,
            "microbatch_size": self.candidate.microbatch_size, "num_microbatches": self.candidate.num_microbatches,
            "lower_bound": self.lower_bound, "status": self.status, "predicted_iteration_time": self.predicted,
            "gap": self.gap, "solve_time": self.solve_time, "simulated_iteration_time": self.simulated,
            "simulated_lower_bound": self.simulated_bound,
        }


@dataclass(frozen=True)
class LayoutRecord:
    """One layout's fate in a whole-configuration search (``layout_search``): its floors (seconds, bytes),
    what its screen plan simulated to, and whether it was searched, pruned by its floor, left at its
    screen (ranked below the layouts searched), out of memory by its floor, or stopped by the time limit."""

    layout: "Layout"
    time_floor: float
    status: str
    memory_floor: float = 0.0
    screened: float | None = None
    screen_fits: bool = False
    simulated: float | None = None
    search_time: float = 0.0

    def to_dict(self) -> dict:
        lay = self.layout
        return {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "sequence_parallel": lay.sequence_parallel,
                "distributed_optimizer": lay.distributed_optimizer, "status": self.status,
                "time_floor": self.time_floor, "memory_floor": self.memory_floor,
                "screened_iteration_time": self.screened, "screen_fits": self.screen_fits,
                "simulated_iteration_time": self.simulated, "search_time": self.search_time}


@dataclass(frozen=True)
class Scored:
    """A plan and its simulation; ``fits`` is the simulator's word (no device over capacity)."""

    name: str
    plan: Plan
    result: PlanResult

    @property
    def iteration_time(self) -> float:
        return self.result.iteration_time

    def to_dict(self, reference: float) -> dict:
        r = self.result
        return {
            "iteration_time": r.iteration_time,
            "bubble_fraction": r.bubble_fraction,
            "tokens_per_second": r.tokens_per_second,
            "mfu": r.mfu,
            "fits": r.fits,
            "peak_memory": r.peak_memory,
            "layers_per_stage": list(self.plan.layers_per_stage),
            "recompute": list(self.plan.recompute) or ["none"] * self.plan.num_stages,
            "speedup": r.iteration_time / reference,  # how much faster the chosen plan is than this one
        }


@dataclass(frozen=True)
class OptimizeResult:
    """The plan, its simulated result, the baselines (same schedule, b and m) and the search record.

    ``source`` is "cp-sat" or, when a baseline simulated faster than every proposal, its name:
    the planner searches a superset, so it never returns something slower than a baseline.
    """

    chosen: Scored
    source: str
    candidate: Candidate
    solution: Solution
    predicted_iteration_time: float
    baselines: tuple[Scored, ...]
    candidates: tuple[CandidateRecord, ...] = field(default=())
    search_time: float = 0.0
    headroom: float = 0.0
    proposal: Scored | None = None  # CP-SAT's split as proposed, before the simulator's polish
    chosen_analytic: float | None = None  # the analytic objective (seconds) of the chosen plan itself
    layouts: tuple[LayoutRecord, ...] = ()  # a whole-configuration search's layouts (empty: layout fixed)
    timed_out: bool = False  # the whole search's time limit ran out (the answer is the best found by then)
    # Other plans the search simulated that fit: each candidate's proposal, other layouts' answers and
    # screens (what a band compares the chosen plan with, ``pipeplan.bands.ties``).
    contenders: tuple[Scored, ...] = ()

    @property
    def analytic_gap(self) -> float | None:
        """(simulated − analytic) / simulated for the chosen plan: how far the model CP-SAT solved
        (its status and gap are about that model) is from the simulator's number."""
        if self.chosen_analytic is None or not self.iteration_time:
            return None
        return (self.iteration_time - self.chosen_analytic) / self.iteration_time

    @property
    def plan(self) -> Plan:
        return self.chosen.plan

    @property
    def result(self) -> PlanResult:
        return self.chosen.result

    @property
    def iteration_time(self) -> float:
        return self.result.iteration_time

    def baseline(self, name: str) -> Scored | None:
        return next((b for b in self.baselines if b.name == name), None)

    @property
    def speedup_vs_uniform(self) -> float | None:
        uniform = self.baseline(UNIFORM)
        return None if uniform is None else uniform.iteration_time / self.iteration_time

    def to_dict(self) -> dict:
        r = self.result
        return {
            "plan": self.plan.to_dict(),
            "source": self.source,
            "iteration_time": r.iteration_time,
            "predicted_iteration_time": self.predicted_iteration_time,
            "proposal_iteration_time": None if self.proposal is None else self.proposal.iteration_time,
            "proposal_layers_per_stage": None if self.proposal is None else list(self.proposal.plan.layers_per_stage),
            "bubble_fraction": r.bubble_fraction,
            "tokens_per_second": r.tokens_per_second,
            "mfu": r.mfu,
            "peak_memory": r.peak_memory,
            "capacity": r.sim.capacity,
            "headroom": self.headroom,
            "fits": r.fits,
            "solver_status": self.solution.status,  # of the analytic model
            "chosen_analytic_iteration_time": self.chosen_analytic,
            "analytic_gap": self.analytic_gap,
            "solver_gap": self.solution.gap,
            "solver_time": self.solution.wall_time,
            "search_time": self.search_time,
            "speedup_vs_uniform": self.speedup_vs_uniform,
            "baselines": {b.name: b.to_dict(self.iteration_time) for b in self.baselines},
            "candidates": [c.to_dict() for c in self.candidates],
            "layouts": [r.to_dict() for r in self.layouts],
            "timed_out": self.timed_out,
        }
