"""``pipeplan schedule``: a named schedule on synthetic uniform stage costs."""
from __future__ import annotations

import argparse

from simulator.engine import simulate
from simulator.ir import to_csv
from simulator.iterations import simulate_iterations
from simulator.schedules import SCHEDULES, build_schedule
from simulator.stage_times import StageTimes
from simulator.workload import uniform_workload

from ..errors import SpecError
from ..fileio import write_atomic
from ..limits import check_output_size, check_schedule_size, check_search_size, op_kinds, schedule_ops
from .argtypes import count, duration
from .chart_outputs import add_output_arguments, chart_writes, check_output_arguments, write_outputs
from .iterations import add_iterations_arguments, check_iterations_arguments, iterations_line
from .output import fmt_pct, print_json, table
from .paths import check_paths
from .schedule_search import SEARCH, add_search_arguments, check_search_arguments, run_search, search_lines, \
    search_summary


def register(sub: argparse._SubParsersAction) -> None:
    full_backward = [name for name, entry in SCHEDULES.items() if not entry.split_backward]
    chunked = [f"{name}: {entry.chunk_rule}" for name, entry in SCHEDULES.items() if entry.default_chunks > 1]
    p = sub.add_parser(
        "schedule",
        help="simulate a named schedule with uniform synthetic stage costs",
        description="Simulate a schedule where every stage takes the same time. B is the input-gradient "
        f"time and W the weight-gradient time; a full backward ({', '.join(full_backward)}) takes B + W. "
        "Times are per stage, i.e. per chunk where a device holds several. "
        f"{', '.join(n for n, e in SCHEDULES.items() if e.cost_aware)} order their ops by these times.",
    )
    p.add_argument("name", choices=list(SCHEDULES) + [SEARCH], metavar="NAME",
                   help=f"one of {', '.join(SCHEDULES)}; or {SEARCH}: the order CP-SAT finds (options below)")
    p.add_argument("--devices", "-p", type=count, required=True, help="pipeline devices p")
    p.add_argument("--microbatches", "-m", type=count, required=True, help="micro-batches m")
    p.add_argument("--chunks", "-v", type=count, default=None, help=f"chunks per device ({', '.join(chunked)})")
    p.add_argument("--f", type=duration, default=1.0, help="forward time per stage (default 1)")
    p.add_argument("--b", type=duration, default=1.0, help="input-gradient time per stage (default 1)")
    p.add_argument("--w", type=duration, default=1.0, help="weight-gradient time per stage (default 1)")
    p.add_argument("--comm", type=duration, default=0.0, help="fixed transfer time between devices (default 0)")
    p.add_argument("--passes", type=count, default=1, metavar="T",
                   help=f"passes of each micro-batch stream, e.g. a prefill and T-1 decode steps "
                   f"({', '.join(n for n, e in SCHEDULES.items() if e.recurrent)}; default 1)")
    p.add_argument("--overlap", type=duration, default=None,
                   help="time of an overlapped F&B pair (dualpipe-v; default F + B of the pair: no overlap gain)")
    p.add_argument("--csv", metavar="FILE", help="write the schedule as torch's compute-only CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_iterations_arguments(p)
    add_output_arguments(p)
    add_search_arguments(p)
    p.set_defaults(handler=run)


def check_sizes(args: argparse.Namespace) -> None:
    """Refuse a schedule too large to build and simulate (``pipeplan.limits``), before building it."""
    if args.name == SEARCH:
        chunks = 1 if args.chunks is None else args.chunks
        check_search_size(args.devices, args.microbatches, chunks, not args.full_backward)
        name = "search"
    else:
        name, chunks = args.name, SCHEDULES[args.name].default_chunks if args.chunks is None else args.chunks
    if args.passes != 1 and not (name in SCHEDULES and SCHEDULES[name].recurrent):
        raise SpecError(f"--passes: {name} runs each micro-batch once; --passes is for "
                        f"{', '.join(n for n, e in SCHEDULES.items() if e.recurrent)}")
    check_schedule_size(name, args.devices, args.microbatches * args.passes, chunks, args.iterations)
    ops = schedule_ops(args.devices, args.microbatches * args.passes, chunks, op_kinds(name), args.iterations)
    check_output_size(ops, [flag for flag, path in chart_writes(args) if path])


def run(args: argparse.Namespace) -> int:
    check_output_arguments(args)
    check_iterations_arguments(args)
    check_search_arguments(args)
    check_paths(reads=[], writes=[("--csv", args.csv), *chart_writes(args)])
    check_sizes(args)
    found = None
    if args.name == SEARCH:
        schedule, workload, found = run_search(args)
    else:
        entry = SCHEDULES[args.name]
        costs = None
        if entry.cost_aware:
            stages = args.devices * (entry.default_chunks if args.chunks is None else args.chunks)
            costs = StageTimes.uniform(stages, args.f, args.b, args.w, args.comm) if stages > 0 else None
        schedule = build_schedule(args.name, args.devices, args.microbatches, args.chunks, costs, args.passes)
        workload = uniform_workload(schedule, args.f, args.b, args.w, args.comm, args.overlap)
    result = simulate(workload)
    steady = simulate_iterations(workload, args.iterations, args.synchronise) if args.iterations > 1 else None
    # Charts show every iteration simulated: K back to back, or the one a synchronised run repeats.
    drawn = steady.result if steady is not None else result
    drawn.timeline.meta["time_unit"] = "unit"
    if args.csv:
        write_atomic(args.csv, to_csv(schedule), "--csv")
    written = write_outputs(args, drawn)
    if args.json:
        data = {
            "schedule": schedule.name,
            "devices": schedule.num_devices,
            "microbatches": schedule.num_microbatches,
            "chunks": schedule.chunks,
            "forward_only": schedule.forward_only,
            "streams": schedule.recurrence or None,
            "passes": args.passes,
            "bubble_fraction": result.bubble_fraction,
            "iteration_time": result.iteration_time,
            "span_bubble_fraction": result.span_bubble_fraction,
            "device_span": result.device_span,
            "peak_activations": result.peak_activations,
            "device_bubble_fraction": result.device_bubble_fraction,
            "busy_time": result.busy_time,
        }
        if steady is not None:
            data["steady_state"] = steady.summary()
        if found is not None:
            data["search"] = search_summary(found)
        print_json(data)
        return 0
    streams = (f"m={schedule.recurrence} streams x {args.passes} passes" if schedule.recurrence
               else f"m={schedule.num_microbatches}")
    print(
        f"{schedule.name}: p={schedule.num_devices} {streams} v={schedule.chunks}  "
        f"bubble {fmt_pct(result.bubble_fraction)}  iteration time {result.iteration_time:g}"
    )
    for line in search_lines(found) if found is not None else []:
        print(line)
    print(f"longest device span {max(result.device_span):g}, bubble over it {fmt_pct(result.span_bubble_fraction)} "
          "(Zero Bubble's bubble rate)")
    if steady is not None:
        print(iterations_line(steady, lambda t: f"{t:g}"))
    rows = [
        [d, " ".join(map(str, schedule.stages_of(d))), f"{result.busy_time[d]:g}",
         fmt_pct(result.device_bubble_fraction[d]), result.peak_activations[d]]
        for d in range(schedule.num_devices)
    ]
    print(table(["device", "stages", "busy", "bubble", "peak activations"], rows))
    for path in ([args.csv] if args.csv else []) + written:
        print(f"wrote {path}")
    return 0
