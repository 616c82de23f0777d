"""``pipeplan optimize``: search the layout (tp, pp, dp), schedule, chunks, micro-batching, cuts and recomputation."""
from __future__ import annotations

import argparse
import sys

from simulator.schedules import DEFAULT_SCHEDULES, SCHEDULES

from ..errors import SpecError
from ..export import EXPORTERS
from . import optimize_serving
from .argtypes import bounded_count, count, seconds, share
from .bands import add_band_arguments, band_line
from .output import fmt_bytes, fmt_pct, fmt_time, print_json


OTHERS = [name for name in SCHEDULES if name not in DEFAULT_SCHEDULES]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="find the fastest plan that fits (CP-SAT proposes, the simulator judges)",
        description="Search contiguous cut points, recomputation per stage, schedule, chunks, micro-batch size "
        "and count with OR-Tools CP-SAT; the discrete-event simulator re-scores the best proposals and the "
        "baselines (Megatron uniform split, DeepSpeed parameter split) under the same schedule, b and m.",
    )
    p.add_argument("--model", required=True, help="model preset, JSON/YAML file, or Hugging Face config.json (or its folder)")
    p.add_argument("--cluster", default="dgx-h100", help="cluster preset or JSON/YAML file (default dgx-h100)")
    p.add_argument("--nodes", type=count, default=None, help="number of nodes of the cluster (the plan uses all their GPUs)")
    p.add_argument("--gpus", type=count, default=None, help="GPUs the plan uses, exactly (default: every GPU of the nodes)")
    p.add_argument("--tp", type=count, default=None, help="pin the tensor-parallel degree, inside a node (default: searched)")
    p.add_argument("--pp", type=count, default=None, help="pin the pipeline devices per replica (default: searched)")
    p.add_argument("--dp", type=count, default=None, help="pin the data-parallel replicas (default: searched)")
    p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="pin sequence parallelism on or off (default: on wherever tp > 1)")
    p.add_argument("--distributed-optimizer", action=argparse.BooleanOptionalAction, default=None,
                   help="pin the distributed optimizer on or off (default: on wherever dp > 1)")
    p.add_argument("--global-batch", type=bounded_count("global_batch"), default=None,
                   help="sequences per iteration, all replicas (required unless --inference)")
    p.add_argument("--seq-len", type=bounded_count("seq_len"), default=None, help="sequence length (default: the model's)")
    p.add_argument("--schedules", nargs="+", metavar="NAME", default=None,
                   help=f"schedules to consider (default: {' '.join(DEFAULT_SCHEDULES)}; also {' '.join(OTHERS)})")
    p.add_argument("--microbatch-sizes", nargs="+", type=bounded_count("microbatch_size"), metavar="B", default=None,
                   help="micro-batch sizes to consider (default: every divisor of the per-replica batch)")
    p.add_argument("--time-limit", type=seconds, default=None,
                   help="wall-clock budget of the whole search, seconds; past it the best plan found is returned "
                        "(default: none)")
    p.add_argument("--solver-time-limit", type=seconds, default=None,
                   help="CP-SAT budget per candidate, deterministic seconds (default 5 for a pinned layout, "
                        "0.1 when several layouts are searched)")
    p.add_argument("--layouts", type=count, default=None,
                   help="layouts (tp, pp, dp) searched in full, the best the screen ranks (default 3)")
    p.add_argument("--compare-config", metavar="K=V,...", default=None,
                   help="a configuration to compare against, e.g. tp=8,pp=8,dp=24,b=2,v=2 (also schedule=, rc=)")
    p.add_argument("--headroom", type=share, default=0.05, help="share of GPU memory kept free (default 0.05)")
    p.add_argument("--jobs", type=count, default=None, help="candidates solved at once in worker processes (default 1)")
    p.add_argument("--profile", metavar="FILE", default=None,
                   help="measured costs (a profile or report from `pipeplan validate`) instead of the analytic model")
    p.add_argument("--target", choices=list(EXPORTERS), default=None,
                   help="search only what this framework runs (megatron: 1f1b and interleaved, one recomputation "
                        "mode for every stage)")
    p.add_argument("--export", choices=list(EXPORTERS), default=None, metavar="TARGET",
                   help=f"also export the chosen plan to TARGET ({', '.join(EXPORTERS)}; see `pipeplan export`); "
                        "searches only what TARGET runs, as --target does")
    p.add_argument("--export-out", metavar="FILE", default=None,
                   help="where --export writes (a torchtitan schedule CSV, when needed, goes beside it as "
                        "<name>.schedule.csv)")
    p.add_argument("--out", metavar="PLAN.json", help="write the chosen plan (for simulate / validate)")
    p.add_argument("--gantt", metavar="FILE", help="Gantt chart of the chosen plan (.png, .svg or .pdf)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_band_arguments(p)
    optimize_serving.add_arguments(p)
    p.set_defaults(handler=run)


def _check_outputs(args: argparse.Namespace) -> str | None:
    """The outputs' extensions, and where they go (``paths.check_paths``), before the search starts; return
    where a torchtitan export's schedule CSV would go."""
    from pathlib import Path

    from .export import check_export_outputs
    from .paths import check_paths, spec_reads

    if args.gantt:
        from ..charts.render import figure_format

        figure_format(args.gantt, "--gantt")
    if args.out and Path(args.out).suffix.lower() != ".json":
        raise SpecError(f"--out: {args.out!r} needs a .json extension")
    if bool(args.export) != bool(args.export_out):
        raise SpecError("--export-out: give it with --export TARGET (and --export with it): the file the export "
                        "goes to")
    reads = [*spec_reads("--model", args.model), *spec_reads("--cluster", args.cluster), ("--profile", args.profile)]
    writes = [("--out", args.out), ("--gantt", args.gantt)]
    if not args.export:
        check_paths(reads, writes)
        return None
    return check_export_outputs(args.export, args.export_out, None, reads, writes, out_flag="--export-out")


def search_target(args: argparse.Namespace) -> str | None:
    """The export target whose limits the search keeps to: whichever of --target and --export limits it
    (Megatron and torchtitan do), else --target."""
    limiting = [t for t in (args.target, args.export)
                if t and (EXPORTERS[t].schedules is not None or EXPORTERS[t].uniform_recompute)]
    return limiting[0] if limiting else args.target


def run(args: argparse.Namespace) -> int:
    if optimize_serving.wants_serving(args):
        return optimize_serving.run(args)
    if args.global_batch is None:
        raise SpecError("--global-batch: give the sequences per iteration, all replicas (e.g. --global-batch 64); "
                        "or search a serving plan with --inference")
    import time

    started = time.perf_counter()
    csv_path = _check_outputs(args)
    target = search_target(args)
    from functools import partial

    from ..planner.layout_search import TOP_LAYOUTS
    from ..planner.optimize import optimize
    from ..profile import load_profile

    profile = load_profile(args.profile) if args.profile else None
    search = partial(
        optimize, args.model, args.cluster, args.global_batch, pp=args.pp, dp=args.dp, tp=args.tp, gpus=args.gpus,
        nodes=args.nodes, seq_len=args.seq_len, schedules=args.schedules, microbatch_sizes=args.microbatch_sizes,
        time_limit=args.time_limit, solver_time_limit=args.solver_time_limit, headroom=args.headroom,
        distributed_optimizer=args.distributed_optimizer, sequence_parallel=args.sequence_parallel,
        parallel=args.jobs or 1, profile=profile, layouts=args.layouts or TOP_LAYOUTS, compare_config=args.compare_config, target=target)
    if args.json or not sys.stderr.isatty():
        result = search()
    else:
        result = _with_progress(search)
    written = []
    if args.out:
        from ..fileio import write_atomic

        write_atomic(args.out, _portable(result.plan, args.out).to_json(), "--out")
        written.append(args.out)
    if args.gantt:
        from ..charts.gantt import gantt

        gantt(result.result.timeline, args.gantt, title=f"{result.result.resolved.model.name}: optimized plan")
        written.append(args.gantt)
    if args.export:
        from ..export import ExportOptions, export_plan
        from .export import write_export

        export = export_plan(result.result.resolved, args.export, ExportOptions(schedule_csv=csv_path))
    bands, band_note = _bands(args, result, profile,
                              None if args.time_limit is None else started + args.time_limit)
    if args.json:
        print_json({**result.to_dict(), "bands": None if bands is None else bands.to_dict(), "band_note": band_note})
    else:
        print_report(result, profile, bands, band_note)
    if args.export:
        written += write_export(export, args.export_out, csv_path)
    if not args.json:
        for path in written:
            print(f"wrote {path}")
    return 0


def _bands(args: argparse.Namespace, result, profile, deadline: float | None):
    """(``OptimizeBands`` or None, a note or None). ``--band-samples`` is the most samples here: the plan
    is known only after the search, so a count the limit does not allow for it shrinks, saying so. Past
    ``deadline`` (--time-limit) the chosen plan still gets its band, but no comparison starts."""
    from ..bands import affordable_samples
    from ..bands.ties import optimize_bands
    from ..limits import limit

    if args.no_band:
        return None, None
    plan = result.plan
    most = affordable_samples(plan) if args.band_samples is None else args.band_samples
    allowed = affordable_samples(plan)
    samples = None if most is None or allowed is None else min(most, max(allowed, 0))
    if samples is None:
        return None, (f"band left out: the chosen plan is too large for a band within the limit of "
                      f"{limit('band_ops'):,} op re-timings (raise PIPEPLAN_MAX_BAND_OPS)")
    note = (f"band: {samples} samples, not {most}: the limit of {limit('band_ops'):,} op re-timings allows no more "
            "for this plan" if samples < most else None)
    bands = optimize_bands(result, samples, args.band_seed, profile, deadline=deadline)
    return bands, "; ".join(n for n in (note, bands.note) if n) or None


def _portable(plan, out: str):
    """``plan`` with its spec files named relative to the plan file's folder, where plans look them up."""
    import os
    from pathlib import Path

    folder = Path(out).resolve().parent
    changes = {k: os.path.relpath(v, folder) for k, v in (("model", plan.model), ("cluster", plan.cluster))
               if isinstance(v, str) and os.path.isabs(v)}
    return plan.with_(**changes)


def _with_progress(search):
    """``search(progress=...)`` with a progress bar on stderr, gone once it ends."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("searching", total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        return search(progress=update)


def compact_layers(layers) -> str:
    """Layers per stage, runs of three or more written as ``8x5`` so 64-stage plans stay one line."""
    out, i = [], 0
    while i < len(layers):
        j = i
        while j < len(layers) and layers[j] == layers[i]:
            j += 1
        out.append(f"{layers[i]}x{j - i}" if j - i >= 3 else " ".join([str(layers[i])] * (j - i)))
        i = j
    return " ".join(out)


def _recompute_text(plan) -> str:
    flags = list(plan.recompute) or ["none"] * plan.num_stages
    full = [str(k) for k, r in enumerate(flags) if r == "full"]
    if not full:
        return "none"
    if len(full) == len(flags):
        return "all stages"
    return f"{len(full)} of {len(flags)} stages" if len(full) > 8 else "stages " + ",".join(full)


def print_report(result, profile=None, bands=None, band_note: str | None = None) -> None:
    """The chosen plan, its devices, the baselines and, with ``bands`` (``OptimizeBands``), the chosen
    plan's band and the plans it ties with; ``profile`` is the measured Profile it was priced with."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    plan, sim = result.plan, result.result
    model, cluster = sim.resolved.model, sim.resolved.cluster
    sol = result.solution
    gap = "" if sol.gap is None else f", gap {fmt_pct(sol.gap)}"
    console.print(
        f"[bold]{model.name}[/] on {cluster.nodes} x {cluster.name}: "
        + (f"tp={plan.tp} " if plan.tp > 1 else "") + f"pp={plan.pp} dp={plan.dp} "
        + ("sequence-parallel " if plan.sequence_parallel else "")
        + ("distributed-optimizer " if plan.distributed_optimizer else "")
        + 
        f"global batch {plan.microbatch_size * plan.num_microbatches * plan.dp}, seq {sim.resolved.seq_len}"
        + (f"; costs measured on {profile.device} ({profile.backend})" if profile else "")
    )
    console.print(
        f"chosen: [bold]{plan.schedule}[/] v={plan.chunks} b={plan.microbatch_size} m={plan.num_microbatches}, "
        f"recompute {_recompute_text(plan)}  (from {result.source}; CP-SAT {sol.status}{gap}, "
        f"{sol.wall_time:.2f} s; search {result.search_time:.1f} s)"
    )
    console.print(
        f"iteration [bold]{fmt_time(sim.iteration_time)}[/] (analytic {fmt_time(result.predicted_iteration_time)}"
        + ("" if result.analytic_gap is None else
           f"; this plan {fmt_time(result.chosen_analytic)}, simulated {result.analytic_gap * 100:+.2f} % off it")
        + ")  "
        f"bubble {fmt_pct(sim.bubble_fraction)}  {sim.tokens_per_second:,.0f} tokens/s  MFU {fmt_pct(sim.mfu)}"
    )
    if bands is not None:
        console.print(band_line(bands.chosen), markup=False)
    schedule = sim.resolved.schedule
    stages = Table(title="per device", title_justify="left")
    for h in ("device", "stages", "layers", "recompute", "peak memory / capacity"):
        stages.add_column(h, justify="right")
    flags = list(plan.recompute) or ["none"] * plan.num_stages
    for d in range(plan.pp):
        mine = schedule.stages_of(d)
        stages.add_row(str(d), " ".join(map(str, mine)), "+".join(str(plan.layers_per_stage[k]) for k in mine),
                       " ".join(flags[k] for k in mine),
                       f"{fmt_bytes(sim.peak_memory[d])} / {fmt_bytes(sim.sim.capacity[d])}")
    console.print(stages)
    table = Table(title=f"against the baselines ({plan.schedule}, b={plan.microbatch_size}, m={plan.num_microbatches})",
                  title_justify="left")
    for h in ("plan", "layers per stage", "recompute", "iteration", "bubble", "MFU", "fits", "speed-up"):
        table.add_column(h, justify="right" if h not in ("plan", "layers per stage") else "left")
    table.add_row("chosen", compact_layers(plan.layers_per_stage), _recompute_text(plan),
                  fmt_time(sim.iteration_time), fmt_pct(sim.bubble_fraction), fmt_pct(sim.mfu), "yes", "1.00x")
    for b in result.baselines:
        r = b.result
        table.add_row(b.name, compact_layers(b.plan.layers_per_stage), _recompute_text(b.plan),
                      fmt_time(r.iteration_time), fmt_pct(r.bubble_fraction), fmt_pct(r.mfu),
                      "yes" if r.fits else "OUT OF MEMORY", f"{r.iteration_time / sim.iteration_time:.2f}x")
    console.print(table)
    if bands is not None and bands.comparisons:
        print_comparisons(console, bands)
    if band_note:
        console.print(band_note, markup=False)
    if result.layouts:
        print_layouts(console, result)
    if result.timed_out:
        console.print("[bold]time limit reached[/]: the plan above is the best found in the time given "
                      "(raise --time-limit to search further)")


def print_comparisons(console, bands) -> None:
    """The closest other plans: their bands, the paired ratio of their time to the chosen one's, ties and why."""
    from rich.table import Table

    ties = len(bands.ties)
    table = Table(title=f"the chosen plan against the closest others ({ties} tie{'s' if ties != 1 else ''}; ratio: "
                        f"its time / the chosen plan's in the same {bands.chosen.samples} samples)",
                  title_justify="left")
    for h in ("plan", "iteration", "90 % band", "ratio (90 %)", "verdict"):
        table.add_column(h, justify="left" if h in ("plan", "verdict") else "right")
    for c in bands.comparisons:
        t = c.band.iteration_time
        table.add_row(c.name, fmt_time(t.point), f"{fmt_time(t.low)} .. {fmt_time(t.high)}",
                      f"{c.ratio.low:.3f} .. {c.ratio.high:.3f}x", ("TIE: " if c.tie else "") + c.reason)
    console.print(table)


LAYOUT_ROWS = 12  # the layouts table shows the fastest few; --json has every layout


def print_layouts(console, result) -> None:
    """The layouts the whole search considered, fastest simulated first, with their fate."""
    from rich.table import Table

    def best(r):
        times = [t for t in (r.simulated, r.screened if r.screen_fits else None) if t is not None]
        return min(times) if times else float("inf")

    rows = sorted(result.layouts, key=lambda r: (best(r), r.time_floor))
    table = Table(title=f"layouts ({len(rows)}; {sum(r.status == 'SEARCHED' for r in rows)} searched in full)",
                  title_justify="left")
    for h in ("layout", "floor", "screen", "searched", "status"):
        table.add_column(h, justify="left" if h in ("layout", "status") else "right")
    for r in rows[:LAYOUT_ROWS]:
        screen = "-" if r.screened is None else fmt_time(r.screened) + ("" if r.screen_fits else " OOM")
        table.add_row(r.layout.label, fmt_time(r.time_floor), screen,
                      "-" if r.simulated is None else fmt_time(r.simulated), r.status)
    console.print(table)
