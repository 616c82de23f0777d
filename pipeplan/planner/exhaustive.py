"""Exhaustive search for small models: every split x every per-stage recomputation choice, judged by the simulator.

Branch and bound over candidates (schedule, v, b, m) in order of ``bounds.candidate_bound``; inside
one, every contiguous split and, per device, every pattern of recomputation modes over its stages
(``PartitionProblem.modes``: none, full, and selective where it saves memory). A plan is skipped
without a simulation only when

* some device is surely over the memory limit (its rounded-up level minus one unit per rounded
  term still exceeds the limit: rounding cannot make it fit), or
* ``bounds.plan_bound`` (valid for the simulated time) is no better than the best simulated so far.

Everything else is simulated, so when the search ``complete``s, its answer is the simulator's
optimum over the candidates it was given. It is used only when the space is small
(``space_size`` ≤ ``MAX_PLANS``) and stops after ``MAX_SIMULATIONS`` simulations.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..plan import Plan
from .bounds import candidate_bound, plan_bound
from .problem import Candidate, PartitionProblem, mode_of
from .result import Scored

MAX_PLANS = 60_000  # splits x recomputation patterns over all candidates; larger spaces are not enumerated
MAX_SIMULATIONS = 4_000
Judge = Callable[[Plan], Scored]


@dataclass(frozen=True)
class Exhaustive:
    """The fastest fitting plan found (None: none beat the incumbent), the simulations spent, and
    whether every plan was simulated or excluded by a valid argument."""

    best: Scored | None
    simulations: int
    complete: bool


def splits(num_layers: int, num_stages: int) -> Iterator[tuple[int, ...]]:
    """Every contiguous split into ``num_stages`` non-empty stages, in lexicographic order of the cuts."""
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        bounds = (0, *cuts, num_layers)
        yield tuple(bounds[i + 1] - bounds[i] for i in range(num_stages))


def space_size(problems: Sequence[PartitionProblem]) -> int:
    """How many (split, recomputation) plans the problems hold together."""
    return sum(math.comb(p.num_layers - 1, p.num_stages - 1)
               * len(p.modes) ** (1 if p.uniform_recompute else p.num_stages)
               for p in problems if p.num_stages <= p.num_layers)


def surely_over(problem: PartitionProblem, device: int, layers: Sequence[int], modes: dict[int, str]) -> bool:
    """Device ``device`` exceeds the limit whatever the rounding: each integer term may be up to one
    unit above its byte count (``build_problem`` rounds up), so one unit per term is taken off."""
    starts = [0]
    for n in layers:
        starts.append(starts[-1] + n)
    stages = problem.stages_of(device)
    ranges = {k: range(starts[k], starts[k + 1]) for k in stages}
    static = sum(problem.static[i] for k in stages for i in ranges[k])
    static_terms = sum(len(ranges[k]) for k in stages)
    per_stage = {}
    for k in stages:
        mode = modes[k]
        act, held = {"none": (problem.activation, problem.held), "full": (problem.activation_rc, problem.held_rc),
                     "selective": (problem.activation_sel, problem.held_sel)}[mode]
        per_stage[k] = (sum(act[i] for i in ranges[k]), sum(held[i] for i in ranges[k]), len(ranges[k]))
    for vector in problem.profiles[device]:
        level, terms = static, static_terms
        for k, (nf, nh) in zip(stages, vector):
            a, h, n = per_stage[k]
            level += nf * a + nh * h
            terms += (nf + nh) * n
        if level - terms > problem.capacity + 1:
            return True
    return False


def device_patterns(problem: PartitionProblem, layers: Sequence[int], device: int) -> list[dict[int, str]]:
    """The recomputation patterns (stage -> mode) of ``device``'s stages that may fit under ``layers``, in
    ``itertools.product`` order of ``problem.modes``."""
    stages = problem.stages_of(device)
    combos, over = _over_every_pattern(problem, layers, device)
    return [dict(zip(stages, (problem.modes[i] for i in combo))) for combo, no in zip(combos, over) if not no]


def minimal_patterns(problem: PartitionProblem, layers: Sequence[int], device: int) -> list[dict[int, str]]:
    """Of ``device_patterns``, those no other fitting pattern recomputes less than on every stage (modes in
    ``problem.modes`` order, least first). Recomputing more only stores less, so the fitting patterns are
    closed upwards and a fitting pattern is minimal when lowering any one stage by one mode overflows."""
    stages, modes = problem.stages_of(device), problem.modes
    combos, over = _over_every_pattern(problem, layers, device)
    radix = len(modes)
    weights = radix ** np.arange(len(stages) - 1, -1, -1)  # product order: the first stage is the top digit
    index = combos @ weights if len(combos) else np.zeros(0, dtype=np.int64)
    minimal = ~over
    for j in range(len(stages)):
        lower = combos[:, j] > 0
        minimal &= ~(lower & ~over[np.where(lower, index - weights[j], 0)])
    return [dict(zip(stages, (modes[i] for i in combo))) for combo, keep in zip(combos, minimal) if keep]


def _over_every_pattern(problem: PartitionProblem, layers: Sequence[int], device: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pattern of ``device``'s stages (rows of mode indices, ``itertools.product`` order) and whether
    it is ``surely_over``: the same sums, taken per stage and mode once and added per pattern."""
    starts = np.concatenate(([0], np.cumsum(layers)))
    stages, modes = problem.stages_of(device), problem.modes
    ranges = [range(starts[k], starts[k + 1]) for k in stages]
    tables = {"none": (problem.activation, problem.held), "full": (problem.activation_rc, problem.held_rc),
              "selective": (problem.activation_sel, problem.held_sel)}
    combos = np.array(list(itertools.product(range(len(modes)), repeat=len(stages))), dtype=np.int64)
    combos = combos.reshape(-1, len(stages))
    slack = problem.capacity + 1 - sum(problem.static[i] for r in ranges for i in r) + sum(len(r) for r in ranges)
    sums = [[(sum(tables[mode][0][i] for i in r), sum(tables[mode][1][i] for i in r)) for mode in modes]
            for r in ranges]
    over = np.zeros(len(combos), dtype=bool)
    for vector in problem.profiles[device]:
        level = np.zeros(len(combos), dtype=np.int64)
        for j, ((nf, nh), r) in enumerate(zip(vector, ranges)):
            per_mode = np.array([nf * (a - len(r)) + nh * (h - len(r)) for a, h in sums[j]], dtype=np.int64)
            level += per_mode[combos[:, j]]
        over |= level > slack
    return combos, over


def _patterns(problem: PartitionProblem, layers: Sequence[int]) -> list[list[dict[int, str]]] | None:
    """Per device, the recomputation patterns of its stages that may fit (None: a device fits none)."""
    out = []
    for d in range(problem.pp):
        fitting = device_patterns(problem, layers, d)
        if not fitting:
            return None
        out.append(fitting)
    return out


def uniform_plans(problem: PartitionProblem, layers: Sequence[int]) -> list[tuple[str, ...]]:
    """One mode on every stage, for each mode under which every device of ``layers`` may fit."""
    S = problem.num_stages
    return [(mode,) * S for mode in problem.modes
            if not any(surely_over(problem, d, layers, dict.fromkeys(problem.stages_of(d), mode))
                       for d in range(problem.pp))]


def plans_of(problem: PartitionProblem, layers: Sequence[int]) -> Iterator[tuple[str, ...]]:
    """Every recomputation tuple of ``layers`` whose devices may all fit (one mode for all stages when the
    problem asks for ``uniform_recompute``)."""
    if problem.uniform_recompute:
        yield from uniform_plans(problem, layers)
        return
    per_device = _patterns(problem, layers)
    if per_device is None:
        return
    for choice in itertools.product(*per_device):
        merged: dict[int, str] = {}
        for modes in choice:
            merged.update(modes)
        yield tuple(merged[k] for k in range(problem.num_stages))


def exhaust(items: Sequence[tuple[Candidate, PartitionProblem]], plan_for: Callable[[Candidate, tuple, tuple], Plan],
            judge: Judge, fits: Callable[[Scored], bool], incumbent: Scored | None,
            max_simulations: int = MAX_SIMULATIONS, stop: Callable[[], bool] | None = None) -> Exhaustive:
    """Branch and bound (module docstring) below ``incumbent``'s simulated time; deterministic: candidates
    in order of bound then label, splits and patterns in a fixed order, ties keep the earlier plan. Once
    ``stop()`` (a deadline) says so it returns what it has, not ``complete``."""
    best_time = math.inf if incumbent is None else incumbent.iteration_time
    best, sims = None, 0
    ordered = sorted(((candidate_bound(p), c.label, c, p) for c, p in items if p.num_stages <= p.num_layers),
                     key=lambda x: (x[0], x[1]))
    for bound, _, candidate, problem in ordered:
        if bound >= best_time:
            break
        for layers in splits(problem.num_layers, problem.num_stages):
            for modes in plans_of(problem, layers):
                if plan_bound(problem, layers, modes) >= best_time:
                    continue
                if sims >= max_simulations or (stop is not None and stop()):
                    return Exhaustive(best, sims, False)
                sims += 1
                plan = plan_for(candidate, layers, tuple(mode_of(m) == "full" for m in modes)).with_(recompute=modes)
                scored = judge(plan)
                if fits(scored) and scored.iteration_time < best_time:
                    best, best_time = scored, scored.iteration_time
    return Exhaustive(best, sims, True)
