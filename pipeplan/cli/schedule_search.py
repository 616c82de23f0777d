"""``pipeplan schedule search``: the schedule's name position taking ``search``, the order found by CP-SAT.

``schedule`` keeps one parser: NAME is a registry schedule or ``search``, and the options below apply
to ``search`` only, so ``pipeplan schedule NAME ...`` is unchanged and both share every output flag.
"""
from __future__ import annotations

import argparse

from ..errors import SpecError
from .argtypes import bounded_count, count, seconds

SEARCH = "search"
_PLACEMENTS = ("linear", "v", "looped")  # schedule_search.PLACEMENTS, without importing the solver for --help


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "search (NAME = search)",
        "choose every device's op order with CP-SAT to minimise one iteration's time under an activation "
        "limit; the simulator judges, and the built-in schedules of the same placement that fit are the "
        "warm start and the floor")
    group.add_argument("--memory-limit", type=count, default=None, metavar="K",
                       help="stage activations alive per device, counted as the simulator's peak activations "
                       "(F start to W end; default p x chunks, 1F1B's bytes)")
    group.add_argument("--time-limit", type=seconds, default=10.0, metavar="SECONDS",
                       help="CP-SAT's budget in deterministic seconds (default 10; one worker, fixed seed)")
    group.add_argument("--placement", choices=_PLACEMENTS, default=None,
                       help="stages on devices: linear (1 chunk), v (2 chunks, ZB-V's: device d holds d and "
                       "2p-1-d), looped (stage s on device s mod p); default linear, v for 2 chunks, else looped")
    group.add_argument("--full-backward", action="store_true",
                       help="order F and B (B + W as one op) instead of F, B and W")
    group.add_argument("--workers", type=bounded_count("workers"), default=1, help="CP-SAT workers (default 1: deterministic)")


def check_search_arguments(args: argparse.Namespace) -> None:
    """Search options only with NAME = search, and the options search cannot honour not with it."""
    searching = args.name == SEARCH
    given = [flag for flag, value, default in (
        ("--memory-limit", args.memory_limit, None), ("--time-limit", args.time_limit, 10.0),
        ("--placement", args.placement, None), ("--full-backward", args.full_backward, False),
        ("--workers", args.workers, 1)) if value != default]
    if given and not searching:
        raise SpecError(f"{given[0]}: a search option; use it with 'pipeplan schedule search'")
    if searching and args.overlap is not None:
        raise SpecError("--overlap: the search has no overlapped F&B op; leave --overlap out")
    if searching and not args.time_limit > 0:
        raise SpecError(f"--time-limit: give a positive number of seconds (got {args.time_limit})")
    if searching and args.workers < 1:
        raise SpecError(f"--workers: give at least 1 (got {args.workers})")


def run_search(args: argparse.Namespace):
    """(schedule, workload, SearchResult) for the flags: uniform stage times, the order searched."""
    from simulator.stage_times import StageTimes
    from simulator.workload import times_workload

    from ..schedule_search import placement_stages, search

    chunks = 1 if args.chunks is None else args.chunks
    _, stages = placement_stages(args.devices, chunks, args.placement)
    costs = StageTimes.uniform(len(stages), args.f, args.b, args.w, args.comm)
    found = search(args.devices, args.microbatches, chunks, costs, args.memory_limit, args.placement,
                   split_backward=not args.full_backward, time_limit=args.time_limit, workers=args.workers)
    return found.schedule, times_workload(found.schedule, costs), found


def search_summary(found) -> dict:
    """The search's own figures for ``--json``."""
    return {
        "status": found.status, "objective": found.objective, "lower_bound": found.lower_bound, "gap": found.gap,
        "solve_seconds": found.solve_seconds, "source": found.source, "memory_limit": found.memory_limit,
        "placement": found.placement, "baselines": found.baselines, "excluded": found.excluded,
    }


def search_lines(found) -> list[str]:
    """Two lines under the schedule's headline: the solver's answer and the built-ins it is held against."""
    bound = "" if found.lower_bound is None else f", bound {found.lower_bound:g}, gap {100 * (found.gap or 0):.2f} %"
    kept = "" if found.source == "cp-sat" else f"; kept {found.source}'s order (CP-SAT found nothing faster)"
    lines = [f"CP-SAT {found.status} in {found.solve_seconds:.2f} s{bound}; memory limit {found.memory_limit} "
             f"activations per device, placement {found.placement}{kept}"]
    if found.baselines:
        ranked = sorted(found.baselines.items(), key=lambda kv: kv[1])
        lines.append("built-in schedules under the same limit: " + ", ".join(f"{n} {t:g}" for n, t in ranked))
    else:
        lines.append("no built-in schedule of this placement fits the same limit")
    return lines
