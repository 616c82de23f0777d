"""The small discrete choices: schedule, chunks v, micro-batch size b (and so m), and their lower bounds."""
from __future__ import annotations

import math
from typing import Callable

from simulator.schedules import DEFAULT_SCHEDULES, SCHEDULES, lookup

from ..errors import SpecError
from ..limits import limit, schedule_ops
from .problem import Candidate, PartitionProblem


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order, in O(sqrt n) (a global batch may be large)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def schedule_variants(names: list[str] | None) -> list[tuple[str, int]]:
    """(schedule, chunks per device) pairs the planner tries for the named schedules (the registry's
    default set when None).

    Each schedule contributes its registry entry's ``planner_chunks``; unknown names are a one-line error.
    """
    entries = []
    for name in names or list(DEFAULT_SCHEDULES):
        entry = lookup(name)
        if entry is None:
            raise SpecError(f"--schedules: unknown {name!r}; choose from {', '.join(SCHEDULES)}")
        if entry.fill_weights is None:
            raise SpecError(f"--schedules: the planner cannot price {entry.name}: {entry.default_note}")
        if entry not in entries:
            entries.append(entry)
    return [(entry.name, v) for entry in entries for v in entry.planner_chunks]


MAX_EVEN_CHUNKS = 8  # the largest chunk count tried beyond an entry's planner_chunks (see even_chunks)


def even_chunks(variants: list[tuple[str, int]], blocks: int, pp: int) -> list[tuple[str, int]]:
    """Besides ``variants`` (each entry's ``planner_chunks``), every chunk count v ≤ ``MAX_EVEN_CHUNKS`` that
    splits the model's ``blocks`` transformer blocks evenly over pp·v stages (Megatron's interleaving asks
    num_layers % (pp·v) == 0; the published 76.1B and 529.6B plans run v = 3), for each schedule whose
    registry rule accepts v (interleaved: any v ≥ 2; zb-v: only 2). ``enumerate_candidates`` leaves out
    those whose simulation would pass the ops limit (the search was sized by the planner_chunks,
    ``limits.check_planner_size``)."""
    out = list(variants)
    for name in dict.fromkeys(n for n, _ in variants):
        entry = SCHEDULES[name]
        for v in range(2, MAX_EVEN_CHUNKS + 1):
            if (name, v) not in out and blocks % (pp * v) == 0 and entry.accepts(pp, pp, v):
                out.append((name, v))
    return out


def enumerate_candidates(num_layers: int, pp: int, batch: int, variants: list[tuple[str, int]],
                         microbatch_sizes: list[int] | None = None,
                         runs: Callable[[str, int, int], bool] | None = None,
                         blocks: int | None = None) -> list[Candidate]:
    """Every (schedule, v, b) whose generator accepts (p, m = batch/b, v) and whose p·v stages fit the layers
    (chunked schedules only where there is a pipeline, p > 1).

    b runs over the divisors of the per-replica batch; the schedule's registry rule, the same check
    its generator runs (e.g. interleaved's m divisible by its number of rounds), decides the rest,
    so the planner never proposes a schedule the simulator or the validator cannot build.
    ``runs(schedule, m, v)``, when given, must accept it too (an export target's limits,
    ``OptimizeRequest.runs``). With the model's ``blocks``, ``even_chunks`` adds chunk counts.
    """
    sizes = [b for b in divisors(batch) if microbatch_sizes is None or b in microbatch_sizes]
    extra = [] if blocks is None else even_chunks(variants, blocks, pp)[len(variants):]
    found = []
    for name, v in list(variants) + extra:
        # One device gains nothing from running its layers as v chunks of a pipeline order (same compute,
        # more activations held); Megatron refuses virtual stages without a pipeline. Without this rule a
        # whole search returned "interleaved v=8 at pp=1" on a 0.04 % difference in bucket timing.
        if pp * v > num_layers or (pp == 1 and v > 1):
            continue
        entry = SCHEDULES[name]
        for b in sizes:
            m = batch // b
            if (name, v) in extra and schedule_ops(pp, m, v, 3) > limit("ops"):
                continue
            if entry.accepts(pp, m, v) and (runs is None or runs(name, m, v)):
                found.append(Candidate(name, v, b, m))
    return found


def lower_bound(problem: PartitionProblem) -> int:
    """A bound no split of this candidate beats, in the problem's objective units.

    Perfect balance without recomputation: the slowest device does at least 1/p of the work, the
    fill is at least its value without recomputation (recomputing only lengthens I, whose weight in
    φ is never negative), with chunks the widest stage's φ is at least the average, and the
    data-parallel tail at least its least value.
    """
    p, S = problem.pp, problem.num_stages
    a, b, c = problem.fill_weights
    base = sum(problem.forward) + sum(problem.backward_input) + sum(problem.backward_weight)
    phi = a * sum(problem.forward) + b * sum(problem.backward_input) + c * sum(problem.backward_weight)
    fill = (p - 1) * (problem.scale * math.ceil(phi / S) if problem.chunks > 1 else phi)
    return (problem.scale * problem.num_microbatches * math.ceil(base / p) + fill + problem.scale * problem.comm
            + problem.scale * _least_tail(problem))


def _least_tail(problem: PartitionProblem) -> int:
    """The least data-parallel tail of any split (``PartitionProblem.exposed_tail``): stage k* holds at least
    one layer, whose reduction, step and gather follow the collectives' latencies."""
    tail = problem.tail_units
    if tail is None or problem.tail_stage is None:
        return 0
    return tail.reduce_latency + tail.gather_latency + min(
        o + r + g for o, r, g in zip(tail.optimizer, tail.reduce, tail.gather))
