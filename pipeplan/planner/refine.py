"""Polish a proposal with the simulator: move layers between stages and change recomputation together, while that
simulates faster.

The analytic objective cannot tell apart the many splits with the same slowest device and widest stage
(for 1F1B, Σ t_k + (m−1)·max t_k is the same for all of them; for llama3-8b at pp = 8 under interleaved
v = 4, 244 of the 361 splits that fit without recomputation share the optimum and simulate from 7.31 s
to 9.05 s), while the simulator can: where the heavier stages sit shapes the warm-up, the drain and the
bubbles in between. A neighbour of a plan is

* one cut moved by one layer, with the fitting recomputation patterns of the devices that hold the two
  stages it touches (the other devices keep theirs);
* a *transfer*: one layer from a stage to a smaller stage that is not next to it, the cuts between
  moving by one (the stages between keep their sizes), each device keeping its pattern where it may
  still fit and taking its first fitting one where not. Moves of single cuts cannot cross a plateau
  of the analytic objective (the larger stages' positions); transfers can, in one step;
* the same split with another fitting recomputation pattern on one device.

"Fitting" is the planner's memory rule (``exhaustive.surely_over``); a device's patterns are the
*minimal* fitting ones over the modes the problem offers (none, full, and selective where it saves
memory): a pattern that recomputes where another fitting pattern of the same device does not only
lengthens its ops. Neighbours are tried in order of ``bounds.plan_bound`` (valid for the simulated
time, so one that cannot beat the current plan costs no simulation); the first that simulates faster
and fits is taken (first improvement), and the climb stops after ``max_evals`` simulations, so it is
deterministic and cheap.
"""
from __future__ import annotations

import itertools
from typing import Callable

from ..plan import Plan
from .bounds import plan_bound
from .exhaustive import minimal_patterns, surely_over, uniform_plans
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
    every transfer, then every other fitting pattern of one device on the same split (module
    docstring); with ``uniform_recompute``, one mode on every stage, the least that may fit."""
    layers = tuple(plan.layers_per_stage)
    recompute = tuple(plan.recompute) or ("none",) * len(layers)
    out, seen = [], {(layers, recompute)}

    def add(split: tuple[int, ...], modes: tuple[str, ...]) -> None:
        if (split, modes) not in seen:
            seen.add((split, modes))
            out.append(plan.with_(layers_per_stage=split, recompute=modes))

    if problem.uniform_recompute:
        for split in [layers] + [split for _, split in _moves(layers)] + _transfers(layers):
            for modes in uniform_plans(problem, split)[:1]:
                add(split, modes)
        return out

    for k, split in _moves(layers):
        devices = sorted({problem.stage_to_device[k], problem.stage_to_device[k + 1]})
        for choice in itertools.product(*(minimal_patterns(problem, split, d) for d in devices)):
            add(split, _with(recompute, choice))
    for split in _transfers(layers):
        modes = _kept_or_first(problem, split, recompute)
        if modes is not None:
            add(split, modes)
    for d in range(problem.pp):
        for modes in minimal_patterns(problem, layers, d):
            add(layers, _with(recompute, (modes,)))
    return out


def _kept_or_first(problem: PartitionProblem, split: tuple[int, ...],
                   recompute: tuple[str, ...]) -> tuple[str, ...] | None:
    """``recompute`` on ``split`` with each device that would surely be over memory given its first minimal
    fitting pattern instead (None: some device fits none)."""
    choice = []
    for d in range(problem.pp):
        mine = {k: recompute[k] for k in problem.stages_of(d)}
        if surely_over(problem, d, split, mine):
            fitting = minimal_patterns(problem, split, d)
            if not fitting:
                return None
            mine = fitting[0]
        choice.append(mine)
    return _with(recompute, tuple(choice))


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


def _transfers(layers: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every split with one layer moved from a stage to a smaller one at least two stages away (module
    docstring): the sizes of the stages between are kept, the cuts between move by one."""
    out = []
    for i, j in itertools.permutations(range(len(layers)), 2):
        if abs(i - j) >= 2 and layers[i] > layers[j]:
            moved = list(layers)
            moved[i] -= 1
            moved[j] += 1
            out.append(tuple(moved))
    return out


def refine(start: Scored, judge: Callable[[str, Plan], Scored], headroom: float, problem: PartitionProblem,
           max_evals: int = MAX_EVALS, ceiling: float = float("inf"),
           stop: Callable[[], bool] | None = None) -> Scored:
    """Hill-climb from ``start`` over ``neighbours`` (module docstring); at most ``max_evals`` simulations, none
    once ``stop()`` (a deadline) says so. A neighbour whose bound is not below ``ceiling`` (seconds: a plan
    simulated elsewhere, which it could not beat) is not simulated either."""
    best, evals = start, 0
    tried = {(start.plan.layers_per_stage, start.plan.recompute)}
    improved = True
    while improved and evals < max_evals and not (stop is not None and stop()):
        improved = False
        ranked = sorted(((plan_bound(problem, p.layers_per_stage, p.recompute), i, p)
                         for i, p in enumerate(neighbours(best.plan, problem))), key=lambda x: (x[0], x[1]))
        for bound, _, plan in ranked:
            if bound >= min(best.iteration_time, ceiling) or evals >= max_evals:
                break
            if stop is not None and stop():
                return best
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
