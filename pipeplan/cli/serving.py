"""``pipeplan simulate --inference``: a serving plan (forward-only pipeline, prefill and decode passes, KV cache).

A plan is served when ``--inference`` or a request flag (``--prompt-len``, ``--output-len``, ``--mix``,
``--requests``) is given, when its file holds a request mix, or when its schedule is forward-only (a
registry one, or a ``--schedule-csv`` of F actions alone). Then ``-b`` is the requests per micro-batch
and ``-m`` the micro-batches in flight (default pp); the schedule defaults to continuous-decode.
"""
from __future__ import annotations

import argparse
import sys

from simulator.schedules import SCHEDULES

from ..errors import SpecError
from ..inference.api import DEFAULT_SCHEDULE, check_serving_outputs, resolve_serving
from ..inference.lowering import build_serving_workload
from ..inference.metrics import ServingResult
from ..inference.requests import ServingSpec, parse_mix
from ..model import load_model
from ..plan import Plan
from .argtypes import bounded_count, count
from .chart_outputs import chart_writes, write_outputs
from .output import fmt_bytes, fmt_pct, fmt_time, print_json, table
from .paths import check_paths

REQUEST_FLAGS = ("--prompt-len", "--output-len", "--mix", "--requests")
# Training options that mean nothing to a forward-only pipeline: each is refused, naming itself.
TRAINING_FLAGS = ("--recompute", "--sequence-parallel", "--distributed-optimizer", "--profile", "--synchronise")


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving (--inference)")
    g.add_argument("--inference", action="store_true",
                   help="simulate serving: forward-only passes, a prefill and a decode step per generated token, "
                   f"a KV cache (schedule default {DEFAULT_SCHEDULE}; -b = requests per micro-batch, -m = "
                   "micro-batches in flight, default pp)")
    g.add_argument("--prompt-len", type=bounded_count("seq_len"), default=None,
                   help="prompt tokens per request (default --seq-len or the model's)")
    g.add_argument("--output-len", type=bounded_count("seq_len"), default=None,
                   help="tokens each request generates, the first (from the prefill) included (default 1)")
    g.add_argument("--mix", default=None, metavar="SxT[:W],...",
                   help="a request mix instead: classes of S prompt and T output tokens, weight W (default 1), "
                   "e.g. 512x128:3,2048x512")
    g.add_argument("--requests", type=count, default=None,
                   help="requests served per replica (default: one per slot, -b x -m); later ones wait for a slot")


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.strip("-").replace("-", "_"), None)
    return value is not None and value is not False


def wants_serving(args: argparse.Namespace) -> bool:
    return args.inference or any(_given(args, f) for f in REQUEST_FLAGS)


def is_serving_plan(plan: Plan) -> bool:
    entry = SCHEDULES.get(plan.schedule)
    return plan.serving is not None or (entry is not None and entry.forward_only)


def check_serving_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, what a serving run cannot honour."""
    for flag in TRAINING_FLAGS:
        if _given(args, flag) and not (flag == "--recompute" and args.recompute == "none"):
            raise SpecError(f"{flag}: a serving run is forward-only (no backward, no optimizer); drop {flag}")
    if args.iterations != 1:
        raise SpecError("--iterations: a serving run's passes already follow one another; serve more with "
                        "--requests or longer outputs with --output-len")
    if args.mix is not None and (args.prompt_len is not None or args.output_len is not None):
        raise SpecError("--mix: give either --mix or --prompt-len/--output-len, not both")


def serving_spec(args: argparse.Namespace, plan: Plan) -> ServingSpec:
    """The request mix the flags give, else the plan's, else one class of the plan's sequence length, 1 token."""
    requests = args.requests if args.requests is not None else (plan.serving.requests if plan.serving else None)
    if args.mix is not None:
        return ServingSpec(parse_mix(args.mix), requests)
    if args.prompt_len is None and args.output_len is None and plan.serving is not None:
        return ServingSpec(plan.serving.mix, requests)
    prompt = args.prompt_len or plan.seq_len or load_model(plan.model).seq_len
    return ServingSpec.uniform(prompt, args.output_len or 1, requests)


def serving_plan_from_args(args: argparse.Namespace, plan_from_args) -> tuple[Plan, object]:
    """The serving plan of a ``simulate`` command line (see the module docstring); ``plan_from_args`` is
    simulate's own reader, which this calls with the serving defaults in place."""
    if args.plan:
        plan, base = plan_from_args(args)
        if not is_serving_plan(plan):
            raise SpecError(f"PLAN.json: schedule {plan.schedule} trains; serve a plan of "
                            f"{DEFAULT_SCHEDULE} or inference (e.g. flags: --inference --model ... --tp ... --pp ...)")
    else:
        default_m = args.microbatches is None and not args.schedule_csv
        if args.schedule is None and not args.schedule_csv:
            args.schedule = DEFAULT_SCHEDULE
        plan, base = plan_from_args(args)
        if default_m:
            plan = plan.with_(num_microbatches=plan.pp)  # the fewest micro-batches that keep a decode pipeline full
    return plan.with_(serving=serving_spec(args, plan)), base


def run_serving(args: argparse.Namespace, plan: Plan, base, reads: list, exit_out_of_memory: int) -> int:
    """Simulate the serving ``plan`` and print (or write) what the flags ask for."""
    check_serving_arguments(args)
    check_paths(reads=reads, writes=chart_writes(args))
    resolved = resolve_serving(plan, base)
    check_serving_outputs(resolved, [flag for flag, path in chart_writes(args) if path])
    workload = build_serving_workload(resolved)
    from simulator.engine import simulate

    result = ServingResult(simulate(workload), workload, resolved)
    result.sim.timeline.meta["label"] = f"{resolved.model.name} {plan.schedule} tp={plan.tp}"
    passes = {p.microbatch: "prefill" if p.step == 0 else "decode" for p in resolved.passes.passes}
    written = write_outputs(args, result.sim, passes=passes)
    oom = out_of_memory_line(result)
    if args.json:
        print_json({**result.summary(), "plan": plan.to_dict()})
    else:
        print_serving(result)
        for path in written:
            print(f"wrote {path}")
    if oom and (args.json or args.fail_on_oom):
        print(f"pipeplan simulate: {oom}", file=sys.stderr)
    return exit_out_of_memory if oom and args.fail_on_oom else 0


def out_of_memory_line(result: ServingResult) -> str | None:
    sim = result.sim
    over = [d for d, oom in enumerate(sim.out_of_memory) if oom]
    if not over:
        return None
    parts = [f"device {d} by {fmt_bytes(sim.peak_memory[d] - sim.capacity[d])}" for d in over[:8]]
    return f"OUT OF MEMORY on {len(over)} of {len(sim.out_of_memory)} devices: {', '.join(parts)}"


def _distribution_row(name: str, d) -> list[str]:
    return [name] + [fmt_time(x) if x == x else "-" for x in (d.mean, d.p50, d.p99)]


def print_serving(result: ServingResult) -> None:
    r, plan, sim = result.resolved, result.plan, result.sim
    oom = out_of_memory_line(result)
    if oom:
        print(oom)
    print(f"{r.model.name} on {r.cluster.name}: {plan.schedule} tp={plan.tp} pp={plan.pp} dp={plan.dp}, "
          f"{plan.num_microbatches} micro-batch(es) of {plan.microbatch_size} request(s) in flight")
    print(f"requests: {len(r.passes.requests)} per replica, mix {r.serving.mix_text()} (prompt x output tokens"
          f"[:weight]); {len(r.passes.batches)} batches, {len(r.passes.passes)} passes per stage")
    print(f"throughput {result.tokens_per_second:,.0f} output tokens/s ({result.requests_per_second:,.2f} requests/s) "
          f"over {fmt_time(result.makespan)}  bubble {fmt_pct(result.bubble_fraction)}")
    print(table(["per request", "mean", "p50", "p99"], [
        _distribution_row("time to first token", result.ttft),
        _distribution_row("time per output token", result.tpot),
        _distribution_row("end-to-end latency", result.latency),
    ]))
    rows = []
    for d, parts in enumerate(result.memory):
        layers = "+".join(str(plan.layers_per_stage[s]) for s in r.schedule.stages_of(d))
        rows.append([d, layers, fmt_time(sim.busy_time[d]), fmt_pct(sim.device_bubble_fraction[d]),
                     fmt_bytes(parts.weights), fmt_bytes(parts.kv_cache), fmt_bytes(parts.activations),
                     f"{fmt_bytes(sim.peak_memory[d])} / {fmt_bytes(sim.capacity[d])}",
                     "OUT OF MEMORY" if sim.out_of_memory[d] else "ok"])
    print(table(["device", "layers", "busy", "bubble", "weights", "KV cache", "activations",
                 "peak memory / capacity", "fits"], rows))
