"""Polish a proposal with the simulator: move cut points and change recomputation together, while that simulates faster.

The analytic objective cannot tell apart the many splits with the same slowest device (for 1F1B,
Σ t_k + (m−1)·max t_k is the same for all of them), while the simulator can: lighter first and last
stages shorten the warm-up and the drain. Moving a layer changes the memory of the two devices
that hold the stages on either side of the cut, so a recomputation choice that was needed (or
useless) before may not be after. A neighbour of a plan is therefore

* one cut moved by one layer, with every fitting recomputation pattern of the devices that hold
  the two stages it touches (the other devices keep theirs), or
* the same split with another fitting recomputation pattern on one device,

"fitting" as the planner's memory rule (``exhaustive.surely_over``) allows, each pattern over the
modes the problem offers (none, full, and selective where it saves memory). Neighbours are tried in
order of ``bounds.plan_bound`` (valid for the simulated time, so one that cannot beat the current
plan costs no simulation); the first that simulates faster and fits is taken (first improvement),
and the climb stops after ``max_evals`` simulations, so it is deterministic and cheap.
"""
from __future__ import annotations

import itertools
from typing import Callable

from ..plan import Plan
from .bounds import plan_bound
from .exhaustive import device_patterns, uniform_plans
from .problem import PartitionProblem
from .result import Scored

MAX_EVALS = 60


def fits_within(scored: Scored, headroom: float) -> bool:
    """The simulator's peak memory stays under capacity x (1 - headroom) on every device."""
    sim = scored.result.sim
    return all(peak <= cap * (1 - headroom) for peak, cap in zip(sim.peak_memory, sim.capacity))


def _with(recompute: tuple[str, ...], devices_modes: tuple[dict[int, str], ...]) -> tuple[str, ...]:
    out = list(recompute)
    for modes in devices_modes:
        for k, mode in modes.items():
            out[k] = mode
    return tuple(out)


def neighbours(plan: Plan, problem: PartitionProblem) -> list[Plan]:
    """Every cut moved by one layer with the fitting recomputation patterns of the devices it touches,
    then every other fitting pattern of one device on the same split (module docstring); with
    ``uniform_recompute``, the fitting patterns are one mode on every stage."""
    layers = tuple(plan.layers_per_stage)
    recompute = tuple(plan.recompute) or ("none",) * len(layers)
    out, seen = [], {(layers, recompute)}

    def add(split: tuple[int, ...], modes: tuple[str, ...]) -> None:
        if (split, modes) not in seen:
            seen.add((split, modes))
            out.append(plan.with_(layers_per_stage=split, recompute=modes))

    if problem.uniform_recompute:
        for split in [layers] + [split for _, split in _moves(layers)]:
            for modes in uniform_plans(problem, split):
                add(split, modes)
        return out

    for k, split in _moves(layers):
        devices = sorted({problem.stage_to_device[k], problem.stage_to_device[k + 1]})
        for choice in itertools.product(*(device_patterns(problem, split, d) for d in devices)):
            add(split, _with(recompute, choice))
    for d in range(problem.pp):
        for modes in device_patterns(problem, layers, d):
            add(layers, _with(recompute, (modes,)))
    return out


def _moves(layers: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """(k, split) for every cut k moved by one layer, every stage keeping at least one."""
    out = []
    for k in range(len(layers) - 1):
        for delta in (1, -1):  # +1: stage k takes the first layer of stage k+1
            moved = list(layers)
            moved[k] += delta
            moved[k + 1] -= delta
            if min(moved) >= 1:
                out.append((k, tuple(moved)))
    return out


def refine(start: Scored, judge: Callable[[str, Plan], Scored], headroom: float, problem: PartitionProblem,
           max_evals: int = MAX_EVALS) -> Scored:
    """Hill-climb from ``start`` over ``neighbours`` (module docstring); at most ``max_evals`` simulations."""
    best, evals = start, 0
    tried = {(start.plan.layers_per_stage, start.plan.recompute)}
    improved = True
    while improved and evals < max_evals:
        improved = False
        ranked = sorted(((plan_bound(problem, p.layers_per_stage, p.recompute), i, p)
                         for i, p in enumerate(neighbours(best.plan, problem))), key=lambda x: (x[0], x[1]))
        for bound, _, plan in ranked:
            if bound >= best.iteration_time or evals >= max_evals:
                break
            key = (plan.layers_per_stage, plan.recompute)
            if key in tried:
                continue
            tried.add(key)
            evals += 1
            scored = judge(start.name, plan)
            if fits_within(scored, headroom) and scored.iteration_time < best.iteration_time * (1 - 1e-9):
                best, improved = scored, True
                break
    return best
