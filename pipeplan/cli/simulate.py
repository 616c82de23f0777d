"""``pipeplan simulate``: simulate a plan file, or a plan described by flags, or a custom CSV schedule."""
from __future__ import annotations

import argparse
from pathlib import Path

from simulator.ir import from_csv

from ..api import PlanResult, simulate
from ..errors import SpecError
from ..model import load_model
from ..plan import Plan, even_split
from .chart_outputs import add_output_arguments, check_output_arguments, write_outputs
from .output import fmt_bytes, fmt_pct, fmt_time, print_json, table


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a plan when no plan file is given (also used by other commands)."""
    p.add_argument("--model", help="model preset or JSON/YAML file (without a plan file)")
    p.add_argument("--cluster", default="dgx-h100", help="cluster preset or file (default dgx-h100)")
    p.add_argument("--nodes", type=int, default=None, help="number of nodes of the cluster")
    p.add_argument("--schedule", default="1f1b", help="schedule name (default 1f1b)")
    p.add_argument("--pp", type=int, default=None, help="pipeline devices (default: all GPUs of the cluster)")
    p.add_argument("--chunks", type=int, default=None, help="chunks per device")
    p.add_argument("--microbatches", "-m", type=int, default=None, help="micro-batches per iteration")
    p.add_argument("--microbatch-size", "-b", type=int, default=1, help="sequences per micro-batch (default 1)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the model's)")
    p.add_argument("--recompute", choices=["none", "full"], default="none", help="recomputation on every stage")


def plan_from_args(args: argparse.Namespace) -> tuple[Plan, Path]:
    """The plan a command should use: the file, or one built from flags; and the folder paths resolve from."""
    if args.plan:
        path = Path(args.plan)
        plan = Plan.load(args.plan)
        base = path.parent
    else:
        if not args.model:
            raise SpecError("plan: give a PLAN.json or --model NAME (with --cluster, --schedule, --pp, -m)")
        from ..cluster import load_cluster
        from simulator.schedules import SCHEDULES

        model = load_model(args.model)
        cluster = load_cluster(args.cluster, args.nodes)
        if args.schedule not in SCHEDULES:
            raise SpecError(f"schedule: unknown {args.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        pp = args.pp or cluster.num_gpus
        chunks = args.chunks or SCHEDULES[args.schedule].default_chunks
        m = args.microbatches or pp * 4
        stages = pp * chunks
        plan = Plan(
            model=args.model, cluster=args.cluster, nodes=args.nodes, schedule=args.schedule, pp=pp, chunks=chunks,
            num_microbatches=m, microbatch_size=args.microbatch_size, seq_len=args.seq_len,
            layers_per_stage=even_split(model.num_pipeline_layers, stages), recompute=(args.recompute,) * stages,
        )
        base = Path(".")
    if getattr(args, "schedule_csv", None):
        csv_path = Path(args.schedule_csv)
        if not csv_path.is_file():
            raise SpecError(f"--schedule-csv: file {str(csv_path)!r} does not exist")
        custom = from_csv(csv_path.read_text())
        model = load_model(plan.model)
        layers = plan.layers_per_stage
        if len(layers) != custom.num_stages:
            layers = even_split(model.num_pipeline_layers, custom.num_stages)
        recompute = plan.recompute if len(plan.recompute) == custom.num_stages else ()
        plan = plan.with_(
            schedule="custom", schedule_csv=str(csv_path.resolve()), pp=custom.num_devices, chunks=custom.chunks,
            num_microbatches=custom.num_microbatches, layers_per_stage=layers, recompute=recompute,
        )
    return plan, base


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a plan on its model and cluster",
        description="Simulate PLAN.json (it names its model and cluster), or a plan given by flags with an "
        "even layer split. --schedule-csv runs a custom schedule in torch's compute-only CSV format.",
    )
    p.add_argument("plan", nargs="?", metavar="PLAN.json", help="plan file written by pipeplan optimize")
    add_plan_arguments(p)
    p.add_argument("--schedule-csv", metavar="FILE", help="custom schedule (torch compute-only CSV)")
    p.add_argument("--profile", metavar="FILE",
                   help="measured op and link costs (from pipeplan validate) instead of the analytic model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_output_arguments(p)
    p.set_defaults(handler=run)


def print_result(result: PlanResult) -> None:
    plan = result.plan
    sim = result.sim
    print(
        f"{result.resolved.model.name} on {result.resolved.cluster.name}: {plan.schedule} p={plan.pp} "
        f"v={plan.chunks} m={plan.num_microbatches} b={plan.microbatch_size} seq={result.resolved.seq_len}"
    )
    print(
        f"iteration {fmt_time(result.iteration_time)}  bubble {fmt_pct(result.bubble_fraction)}  "
        f"{result.tokens_per_second:,.0f} tokens/s  MFU {fmt_pct(result.mfu)}"
    )
    schedule = result.resolved.schedule
    rows = []
    for d in range(plan.pp):
        stages = schedule.stages_of(d)
        layers = "+".join(str(plan.layers_per_stage[s]) for s in stages)
        rows.append([
            d, " ".join(map(str, stages)), layers, fmt_time(sim.busy_time[d]), fmt_pct(sim.device_bubble_fraction[d]),
            f"{fmt_bytes(sim.peak_memory[d])} / {fmt_bytes(sim.capacity[d])}",
            "OUT OF MEMORY" if sim.out_of_memory[d] else "ok",
        ])
    print(table(["device", "stages", "layers", "busy", "bubble", "peak memory / capacity", "fits"], rows))


def run(args: argparse.Namespace) -> int:
    check_output_arguments(args)
    plan, base = plan_from_args(args)
    result = simulate(plan=plan, base_dir=base, profile=args.profile)
    result.timeline.meta["label"] = f"{result.resolved.model.name} {plan.schedule}"
    written = write_outputs(args, result.sim)
    if args.json:
        print_json({**result.summary(), "plan": plan.to_dict()})
    else:
        print_result(result)
        for path in written:
            print(f"wrote {path}")
    return 0
