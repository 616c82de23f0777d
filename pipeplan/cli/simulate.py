"""``pipeplan simulate``: simulate a plan file, or a plan described by flags, or a custom CSV schedule."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import PlanResult, simulate
from ..bands import plan_band
from ..errors import SpecError
from ..limits import check_model, check_output_size, check_plan_size, plan_ops
from ..model import load_model
from ..plan import RECOMPUTE_CHOICES, Plan, even_split
from ..profile import load_profile
from ..sizing import make_plan
from ..specs import read_schedule_csv
from .argtypes import bounded_count, count
from .bands import add_band_arguments, band_line, band_samples
from .chart_outputs import add_output_arguments, chart_writes, check_output_arguments, write_outputs
from .iterations import add_iterations_arguments, check_iterations_arguments, iterations_line
from .output import fmt_bytes, fmt_pct, fmt_time, print_json, table
from .paths import check_paths, plan_reads, spec_reads
from .serving import add_serving_arguments, check_serving_arguments, is_serving_plan, run_serving, serving_plan_from_args, serving_spec, \
    wants_serving


# Defaults of the flags that describe a plan; None in the parser, so a flag given can be told from one left out.
PLAN_DEFAULTS = {"cluster": "dgx-h100", "schedule": "1f1b", "microbatch_size": 1, "recompute": "none"}
# Exit code of ``simulate --fail-on-oom`` when a device runs out of memory (1 is a failure, 2 bad input).
EXIT_OUT_OF_MEMORY = 3


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a plan when no plan file is given (also used by other commands)."""
    p.add_argument("--model", help="model preset, JSON/YAML file, or Hugging Face config.json or its folder (without a plan file)")
    p.add_argument("--cluster", default=None, help="cluster preset or file (default dgx-h100)")
    p.add_argument("--nodes", type=count, default=None, help="number of nodes of the cluster")
    p.add_argument("--gpus", type=count, default=None,
                   help="GPUs the plan uses, exactly (= tp x pp x dp; nodes follow; a missing pp or dp is derived)")
    p.add_argument("--schedule", default=None, help="schedule name (default 1f1b)")
    p.add_argument("--pp", type=count, default=None,
                   help="pipeline devices (default: the GPUs of --gpus or of the cluster / (tp x dp))")
    p.add_argument("--tp", type=count, default=None, help="tensor-parallel size, dividing a node's GPUs (default 1)")
    p.add_argument("--dp", type=count, default=None,
                   help="data-parallel replicas (default: --gpus / (tp x pp) when --gpus is given, else 1)")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="sequence parallelism inside each tensor group (needs --tp > 1)")
    p.add_argument("--distributed-optimizer", action="store_true", help="shard optimizer state over dp")
    p.add_argument("--chunks", type=count, default=None, help="chunks per device (default: the schedule's)")
    p.add_argument("--microbatches", "-m", type=count, default=None,
                   help="micro-batches per iteration (default 4 x pp)")
    p.add_argument("--microbatch-size", "-b", type=bounded_count("microbatch_size"), default=None,
                   help="sequences per micro-batch (default 1)")
    p.add_argument("--seq-len", type=bounded_count("seq_len"), default=None,
                   help="sequence length (default: the model's)")
    p.add_argument("--recompute", choices=list(RECOMPUTE_CHOICES), default=None,
                   help="recomputation on every stage (selective: the attention core only; default none)")


# The flags ``add_plan_arguments`` adds, as written; with a plan file each would be ignored, so each is refused.
PLAN_FLAGS = ("--model", "--cluster", "--nodes", "--gpus", "--schedule", "--pp", "--tp", "--dp", "--sequence-parallel",
              "--distributed-optimizer", "--chunks", "--microbatches", "--microbatch-size", "--seq-len", "--recompute")


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.strip("-").replace("-", "_"), None)
    return value is not None and value is not False


def plan_from_args(args: argparse.Namespace) -> tuple[Plan, Path]:
    """The plan a command should use: the file, or one built from flags; and the folder paths resolve from."""
    if args.plan:
        given = [flag for flag in PLAN_FLAGS if _given(args, flag)]
        if given:
            raise SpecError(f"{given[0]}: a plan file fixes its model, cluster and layout; give either a plan file "
                            f"or flags: drop {given[0]}, or describe the plan by flags (--model ...) without "
                            "PLAN.json")
        path = Path(args.plan)
        plan = Plan.load(args.plan)
        base = path.parent
    else:
        if not args.model:
            raise SpecError("plan: give a PLAN.json or --model NAME (with --cluster, --schedule, --pp, -m)")
        values = {name: default if getattr(args, name) is None else getattr(args, name)
                  for name, default in PLAN_DEFAULTS.items()}
        plan = make_plan(
            args.model, values["cluster"], values["schedule"], tp=args.tp, pp=args.pp, dp=args.dp, gpus=args.gpus,
            nodes=args.nodes, chunks=args.chunks, microbatches=args.microbatches,
            microbatch_size=values["microbatch_size"], seq_len=args.seq_len, recompute=values["recompute"],
            sequence_parallel=args.sequence_parallel, distributed_optimizer=args.distributed_optimizer)
        base = Path(".")
    if getattr(args, "schedule_csv", None):
        csv_path = Path(args.schedule_csv)
        custom = read_schedule_csv(csv_path, "--schedule-csv")
        model = load_model(plan.model)
        check_model(model)
        layers = plan.layers_per_stage
        if len(layers) != custom.num_stages:
            layers = even_split(model.num_pipeline_layers, custom.num_stages)
        recompute = plan.recompute if len(plan.recompute) == custom.num_stages else ()
        plan = plan.with_(
            schedule="custom", schedule_csv=str(csv_path.resolve()), pp=custom.num_devices, chunks=custom.chunks,
            num_microbatches=custom.num_microbatches, layers_per_stage=layers, recompute=recompute,
            notes={**plan.notes, "forward_only": custom.forward_only},
        )
    return plan, base


def plan_from_args_reads(args: argparse.Namespace, plan: Plan, base: Path) -> list[tuple[str, str | None]]:
    """The files ``plan_from_args`` read for ``plan``, named by the flag that gave each."""
    flags = [("PLAN.json", args.plan), ("--schedule-csv", getattr(args, "schedule_csv", None)),
             ("--profile", getattr(args, "profile", None))]
    if args.plan:
        return flags + plan_reads(plan, base)
    return flags + spec_reads("--model", args.model) + spec_reads("--cluster", args.cluster)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a plan on its model and cluster",
        description="Simulate PLAN.json (it names its model and cluster), or a plan given by flags with an "
        "even layer split. --schedule-csv runs a custom schedule in torch's compute-only CSV format. "
        "--inference (or a forward-only schedule, or a plan with a request mix) simulates serving instead: "
        "prefill and decode passes, KV cache, latency and throughput per request.",
    )
    p.add_argument("plan", nargs="?", metavar="PLAN.json", help="plan file written by pipeplan optimize")
    add_plan_arguments(p)
    p.add_argument("--schedule-csv", metavar="FILE", help="custom schedule (torch compute-only CSV)")
    p.add_argument("--profile", metavar="FILE",
                   help="measured op and link costs (from pipeplan validate) instead of the analytic model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--fail-on-oom", action="store_true",
                   help=f"exit with code {EXIT_OUT_OF_MEMORY} when a device runs out of memory (the report still "
                   "prints, its first line saying which devices and by how much)")
    add_iterations_arguments(p)
    add_band_arguments(p)
    add_output_arguments(p)
    add_serving_arguments(p)
    p.set_defaults(handler=run)


def out_of_memory_line(result: PlanResult, shown: int = 8) -> str | None:
    """One line naming the devices whose peak memory exceeds their capacity and by how much; None when all fit."""
    sim = result.sim
    over = [d for d, oom in enumerate(sim.out_of_memory) if oom]
    if not over:
        return None
    parts = [f"device {d} by {fmt_bytes(sim.peak_memory[d] - sim.capacity[d])} ({fmt_bytes(sim.peak_memory[d])} of "
             f"{fmt_bytes(sim.capacity[d])})" for d in over[:shown]]
    more = f", and {len(over) - shown} more" if len(over) > shown else ""
    return f"OUT OF MEMORY on {len(over)} of {len(sim.out_of_memory)} devices: {', '.join(parts)}{more}"


def print_result(result: PlanResult, band=None, band_note: str | None = None) -> None:
    plan = result.plan
    sim = result.sim
    oom = out_of_memory_line(result)
    if oom:
        print(oom)
    print(
        f"{result.resolved.model.name} on {result.resolved.cluster.name}: {plan.schedule} p={plan.pp} "
        f"v={plan.chunks} m={plan.num_microbatches} b={plan.microbatch_size} seq={result.resolved.seq_len}"
    )
    print(
        f"iteration {fmt_time(result.iteration_time)}  bubble {fmt_pct(result.bubble_fraction)}  "
        f"{result.tokens_per_second:,.0f} tokens/s  MFU {fmt_pct(result.mfu)}"
    )
    if result.steady is not None:
        print(iterations_line(result.steady, fmt_time))
    print_parallel_lines(result)
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
    print_breakdown_table(result)
    if band is not None or band_note:  # last, so the lines above keep their places
        print(band_line(band, result.steady is not None) if band is not None else band_note)


def _comm_text(t) -> str:
    # Zero time means no such communication in the timeline (e.g. dp = 1, or none scheduled yet).
    return f"{fmt_time(t.total)} ({fmt_time(t.exposed)} exposed)" if t.total > 0 else "none"


def print_parallel_lines(result: PlanResult) -> None:
    """The 3D layout, FLOPs and communication summary lines (after the iteration line)."""
    plan, cluster = result.plan, result.resolved.cluster
    flags = [name for name, on in (("sequence parallel", plan.sequence_parallel),
                                   ("distributed optimizer", plan.distributed_optimizer)) if on]
    print(f"layout tp={plan.tp} pp={plan.pp} dp={plan.dp}: {result.num_gpus} GPUs of {cluster.nodes} node(s) x "
          f"{cluster.gpus_per_node}" + (f"; {', '.join(flags)}" if flags else ""))
    print(f"per GPU: model {result.model_tflops_per_gpu:,.1f} TFLOP/s, hardware {result.hardware_tflops_per_gpu:,.1f} "
          f"TFLOP/s (with recomputation); per iteration {result.model_flops / 1e15:,.3f} / "
          f"{result.hardware_flops / 1e15:,.3f} PFLOP")
    comm = result.communication
    pp, dp = comm.mean("pp"), comm.mean("dp")
    tp = _comm_text(comm.mean("tp")) + " inside the ops" if comm.tp is not None else "none"
    print(f"communication per device (mean): PP {_comm_text(pp)}  DP {_comm_text(dp)}  TP {tp}")


def print_breakdown_table(result: PlanResult) -> None:
    """Per device: PP and DP communication (exposed) and the parts of the peak memory."""
    comm = result.communication
    rows = []
    for d, parts in enumerate(result.memory_breakdown):
        rows.append([d, _comm_text(comm.pp[d]), _comm_text(comm.dp[d]), fmt_bytes(parts.weights),
                     fmt_bytes(parts.grads), fmt_bytes(parts.optimizer), fmt_bytes(parts.activations),
                     fmt_bytes(parts.buffers)])
    print(table(["device", "PP comm", "DP comm", "weights", "grads", "optimizer", "activations", "buffers"], rows))


def run(args: argparse.Namespace) -> int:
    check_output_arguments(args)
    check_iterations_arguments(args)
    if wants_serving(args):
        check_serving_arguments(args)
        plan, base = serving_plan_from_args(args, plan_from_args)
        return run_serving(args, plan, base, plan_from_args_reads(args, plan, base), EXIT_OUT_OF_MEMORY)
    plan, base = plan_from_args(args)
    if is_serving_plan(plan) or plan.notes.get("forward_only"):
        plan = plan.with_(serving=serving_spec(args, plan))
        return run_serving(args, plan, base, plan_from_args_reads(args, plan, base), EXIT_OUT_OF_MEMORY)
    check_paths(reads=plan_from_args_reads(args, plan, base), writes=chart_writes(args))
    check_plan_size(plan, args.iterations)
    check_output_size(plan_ops(plan, args.iterations), [flag for flag, path in chart_writes(args) if path])
    samples, band_note = band_samples(args, plan)
    profile = load_profile(args.profile) if args.profile else None
    result = simulate(plan=plan, base_dir=base, profile=profile, iterations=args.iterations,
                      synchronise=args.synchronise)
    band = plan_band(result, samples=samples, seed=args.band_seed, profile=profile) if samples else None
    result.timeline.meta["label"] = f"{result.resolved.model.name} {plan.schedule}"
    written = write_outputs(args, result.sim)
    oom = out_of_memory_line(result)
    if args.json:
        extra = {"band": band.to_dict()} if band is not None else {"band": None, "band_note": band_note}
        print_json({**result.summary(), "plan": plan.to_dict(), **extra})
    else:
        print_result(result, band, band_note)
        for path in written:
            print(f"wrote {path}")
    if oom and (args.json or args.fail_on_oom):  # JSON's first line is "{": say it where a reader sees it
        print(f"pipeplan simulate: {oom}", file=sys.stderr)
    return EXIT_OUT_OF_MEMORY if oom and args.fail_on_oom else 0
