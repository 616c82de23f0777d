"""The small discrete choices: schedule, chunks v, micro-batch size b (and so m), and their lower bounds."""
from __future__ import annotations

import math

from simulator.ir import Schedule, ScheduleError
from simulator.schedules import SCHEDULES

from ..errors import SpecError
from ..lowering import generated_schedule
from .problem import Candidate, PartitionProblem

# (schedule, chunks per device) pairs the planner tries; interleaved at v = 2 and v = 4.
SCHEDULE_VARIANTS: tuple[tuple[str, int], ...] = (
    ("1f1b", 1), ("zb-h1", 1), ("zb-h2", 1), ("zb-v", 2), ("interleaved", 2), ("interleaved", 4), ("gpipe", 1),
)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def schedule_variants(names: list[str] | None) -> list[tuple[str, int]]:
    """The variants of the named schedules (all when None); unknown names are a one-line error."""
    if not names:
        return list(SCHEDULE_VARIANTS)
    chosen = []
    for name in names:
        key = name.lower().replace("_", "-")
        if key not in SCHEDULES:
            raise SpecError(f"--schedules: unknown {name!r}; choose from {', '.join(SCHEDULES)}")
        chosen += [v for v in SCHEDULE_VARIANTS if v[0] == key and v not in chosen]
    return chosen


def enumerate_candidates(num_layers: int, pp: int, batch: int, variants: list[tuple[str, int]],
                         microbatch_sizes: list[int] | None = None) -> list[tuple[Candidate, Schedule]]:
    """Every (schedule, v, b) whose generator accepts (p, m = batch/b, v) and whose p·v stages fit the layers.

    b runs over the divisors of the per-replica batch; a generator's own rules (e.g. interleaved's
    m divisible by its number of rounds) decide the rest, so the planner never proposes a schedule
    the simulator or the validator cannot build.
    """
    sizes = [b for b in divisors(batch) if microbatch_sizes is None or b in microbatch_sizes]
    found = []
    for name, v in variants:
        if pp * v > num_layers:
            continue
        for b in sizes:
            m = batch // b
            try:
                schedule = generated_schedule(name, pp, m, v)
            except ScheduleError:
                continue
            found.append((Candidate(name, v, b, m), schedule))
    return found


def lower_bound(problem: PartitionProblem) -> int:
    """A bound no split of this candidate beats, in the problem's objective units.

    Perfect balance without recomputation: the slowest device does at least 1/p of the work, the
    fill is at least its value without recomputation (recomputing only lengthens I, whose weight in
    φ is never negative) and, with chunks, the widest stage's φ is at least the average.
    """
    p, S = problem.pp, problem.num_stages
    a, b, c = problem.fill_weights
    base = sum(problem.forward) + sum(problem.backward_input) + sum(problem.backward_weight)
    phi = a * sum(problem.forward) + b * sum(problem.backward_input) + c * sum(problem.backward_weight)
    fill = (p - 1) * (problem.scale * math.ceil(phi / S) if problem.chunks > 1 else phi)
    return problem.scale * problem.num_microbatches * math.ceil(base / p) + fill + problem.scale * problem.comm
