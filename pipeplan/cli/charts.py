"""``pipeplan gantt`` (draw a plan, a saved simulation or a validation report) and ``pipeplan figures``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gantt",
        help="draw a Gantt chart of a plan, a saved simulation or a validation report",
        description="INPUT is a plan JSON (simulated first), a simulation saved with --timeline, or a "
        "validation report (drawn predicted | measured on one time axis).",
    )
    g.add_argument("input", metavar="INPUT")
    g.add_argument("-o", "--output", required=True, metavar="FILE", help="chart file (.png, .svg or .pdf)")
    g.add_argument("--no-transfers", action="store_true", help="leave out the transfer lanes")
    g.set_defaults(handler=run_gantt)
    f = sub.add_parser("figures", help="regenerate the figures committed in figures/")
    f.add_argument("--out", default="figures", help="folder (default figures/)")
    f.set_defaults(handler=run_figures)


def run_gantt(args: argparse.Namespace) -> int:
    from ..charts.gantt import gantt, side_by_side
    from ..charts.render import figure_format
    from ..results import is_plan_document, load_timelines
    from .paths import check_paths, plan_reads

    figure_format(args.output, "--output")
    show = not args.no_transfers
    writes = [("--output", args.output)]
    if is_plan_document(args.input):
        from ..api import simulate
        from ..plan import Plan

        plan, base = Plan.load(args.input), Path(args.input).parent
        check_paths([("INPUT", args.input), *plan_reads(plan, base)], writes)
        if plan.serving is not None:  # a serving plan: its passes coloured prefill or decode
            from simulator.engine import simulate as simulate_workload

            from ..inference.api import check_serving_outputs, resolve_serving
            from ..inference.lowering import build_serving_workload

            resolved = resolve_serving(plan, base)
            check_serving_outputs(resolved, ["--output"])
            sim = simulate_workload(build_serving_workload(resolved))
            passes = {p.microbatch: "prefill" if p.step == 0 else "decode" for p in resolved.passes.passes}
            gantt(sim.timeline, args.output, show_transfers=show, passes=passes)
        else:
            result = simulate(plan=plan, base_dir=base)
            gantt(result.timeline, args.output, show_transfers=show)
    else:
        check_paths([("INPUT", args.input)], writes)
        timelines = load_timelines(args.input)
        if len(timelines) == 2:
            (left_label, left), (right_label, right) = timelines
            side_by_side(left, right, args.output, (left_label, right_label), show_transfers=show)
        else:
            gantt(timelines[0][1], args.output, show_transfers=show)
    print(f"wrote {args.output}")
    return 0


def run_figures(args: argparse.Namespace) -> int:
    from ..charts.figures import regenerate

    for path in regenerate(args.out):
        print(f"wrote {path}")
    return 0
