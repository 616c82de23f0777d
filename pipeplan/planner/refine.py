"""Polish a proposal with the simulator: move single cut points by one layer while that simulates faster.

The analytic objective cannot tell apart the many splits with the same slowest device (for 1F1B,
Σ t_k + (m−1)·max t_k is the same for all of them), while the simulator can: lighter first and last
stages shorten the warm-up and the drain. A first-improvement hill climb over "move cut k by ±1"
(recomputation flags stay with their stage, and dropping one is tried too) keeps every step within
the memory limit as the simulator replays it, and stops after ``max_evals`` simulations, so it is
deterministic and cheap.
"""
from __future__ import annotations

from typing import Callable

from ..plan import Plan
from .result import Scored

MAX_EVALS = 40


def fits_within(scored: Scored, headroom: float) -> bool:
    """The simulator's peak memory stays under capacity x (1 - headroom) on every device."""
    sim = scored.result.sim
    return all(peak <= cap * (1 - headroom) for peak, cap in zip(sim.peak_memory, sim.capacity))


def neighbours(plan: Plan) -> list[Plan]:
    """Splits one cut away (a layer moves to the neighbouring stage), then one recomputation fewer."""
    out = []
    layers = list(plan.layers_per_stage)
    for k in range(len(layers) - 1):
        for delta in (1, -1):  # +1: stage k takes the first layer of stage k+1
            moved = layers.copy()
            moved[k] += delta
            moved[k + 1] -= delta
            if min(moved) >= 1:
                out.append(plan.with_(layers_per_stage=tuple(moved)))
    for k, flag in enumerate(plan.recompute):
        if flag == "full":
            out.append(plan.with_(recompute=plan.recompute[:k] + ("none",) + plan.recompute[k + 1:]))
    return out


def refine(start: Scored, judge: Callable[[str, Plan], Scored], headroom: float,
           may_fit: Callable[[Plan], bool] = lambda plan: True, max_evals: int = MAX_EVALS) -> Scored:
    """``may_fit`` screens neighbours before they cost a simulation: the planner's own memory rule,
    which rounds bytes up, so a neighbour it rejects is over the limit or within rounding of it."""
    best, evals = start, 0
    seen = {(start.plan.layers_per_stage, start.plan.recompute)}
    improved = True
    while improved and evals < max_evals:
        improved = False
        for plan in neighbours(best.plan):
            key = (plan.layers_per_stage, plan.recompute)
            if key in seen or evals >= max_evals:
                continue
            seen.add(key)
            if not may_fit(plan):
                continue
            evals += 1
            scored = judge(start.name, plan)
            if fits_within(scored, headroom) and scored.iteration_time < best.iteration_time * (1 - 1e-9):
                best, improved = scored, True
                break
    return best
