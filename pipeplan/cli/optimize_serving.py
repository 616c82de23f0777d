"""``pipeplan optimize --inference``: the serving plan for B requests on the GPUs given (``inference.planner``).

The request flags are ``simulate --inference``'s (``--prompt-len``, ``--output-len``, or ``--mix`` read
by ``requests.parse_mix``); ``--batch`` is how many requests are served in all (split over the
replicas), ``--microbatch-sizes`` restricts the requests per micro-batch. Every training-only flag given is refused, naming itself, before any work.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import SpecError
from .argtypes import bounded_count, seconds
from .output import fmt_bytes, fmt_time, print_json, table

# Flags of the training search that mean nothing here (each refused by name when given).
TRAINING_ONLY = ("--global-batch", "--seq-len", "--schedules", "--compare-config", "--jobs", "--profile", "--target",
                 "--export", "--export-out", "--layouts", "--solver-time-limit", "--time-limit",
                 "--sequence-parallel", "--distributed-optimizer")
SERVING_ONLY = ("--batch", "--latency-slo", "--ttft-slo", "--tpot-slo", "--objective", "--prompt-len", "--output-len",
                "--mix")
RUNNER_UPS = 3  # layouts compared with the chosen one in the explanation


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving search (--inference)")
    g.add_argument("--inference", action="store_true",
                   help="choose a serving plan instead: tp, pp, dp, the cut, requests per micro-batch and micro-batches "
                   "in flight for --batch requests of --prompt-len x --output-len tokens (continuous decode)")
    g.add_argument("--prompt-len", type=bounded_count("seq_len"), default=None, help="prompt tokens per request")
    g.add_argument("--output-len", type=bounded_count("seq_len"), default=None,
                   help="tokens each request generates, the first (from the prefill) included")
    g.add_argument("--mix", default=None, metavar="SxT[:W],...",
                   help="a request mix instead: classes of S prompt and T output tokens, weight W (default 1), "
                   "e.g. 512x128:3,2048x512")
    g.add_argument("--batch", type=bounded_count("global_batch"), default=None,
                   help="requests to serve, all replicas together (each replica serves batch / dp)")
    g.add_argument("--latency-slo", type=seconds, default=None, metavar="SECONDS",
                   help="p99 end-to-end latency target (with --objective throughput)")
    g.add_argument("--ttft-slo", type=seconds, default=None, metavar="SECONDS", help="p99 time-to-first-token target")
    g.add_argument("--tpot-slo", type=seconds, default=None, metavar="SECONDS", help="p99 time-per-output-token target")
    g.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                   help="maximise output tokens/s (default) or minimise p99 end-to-end latency")


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.strip("-").replace("-", "_"), None)
    return value is not None and value is not False


def wants_serving(args: argparse.Namespace) -> bool:
    return args.inference or any(_given(args, flag) for flag in SERVING_ONLY if flag != "--objective") \
        or args.objective != "throughput"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse the training search's flags (one line each) and a search without its requests."""
    for flag in TRAINING_ONLY:
        if _given(args, flag):
            raise SpecError(f"{flag}: not used by optimize --inference (it searches serving plans); drop {flag}")
    if args.batch is None:
        raise SpecError("--batch: give how many requests to serve, e.g. --batch 64")


def run(args: argparse.Namespace) -> int:
    """The handler ``optimize`` hands a serving search to."""
    from functools import partial

    from ..inference.planner import optimize_serving
    from .optimize import _check_outputs, _portable

    check_arguments(args)
    _check_outputs(args)
    search = partial(optimize_serving, args.model, args.cluster, batch=args.batch, prompt_len=args.prompt_len,
                     output_len=args.output_len, mix=args.mix, gpus=args.gpus, nodes=args.nodes, tp=args.tp,
                     pp=args.pp, dp=args.dp, microbatch_sizes=args.microbatch_sizes, objective=args.objective,
                     latency_slo=args.latency_slo, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo,
                     headroom=args.headroom)
    answer = _search(search, quiet=args.json or not sys.stderr.isatty())
    chosen = answer.chosen
    if chosen is None:
        raise SpecError(nothing_fits(answer))
    written = []
    if args.out:
        from ..fileio import write_atomic

        write_atomic(args.out, _portable(chosen.plan, args.out).to_json(), "--out")
        written.append(args.out)
    if args.gantt:
        from ..charts.gantt import gantt

        passes = {p.microbatch: "prefill" if p.step == 0 else "decode" for p in chosen.result.resolved.passes.passes}
        gantt(chosen.result.sim.timeline, args.gantt, title=f"{answer.question.model_spec.name}: chosen serving plan",
              passes=passes)
        written.append(args.gantt)
    if args.json:
        print_json(answer_dict(answer))
    else:
        print_answer(answer)
        for path in written:
            print(f"wrote {path}")
    return 0


def _search(search, quiet: bool):
    if quiet:
        return search()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("simulating serving candidates"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)
        return search(progress=lambda: bar.advance(task))


def _others(answer) -> list:
    return [lb.best.result for lb in answer.ranked[1:RUNNER_UPS + 1] if lb.best is not None]


def nothing_fits(answer) -> str:
    """Why no candidate was chosen, and what would change that."""
    from ..inference.planner import BOUND_MEMORY, BOUND_SLO, OUT_OF_MEMORY, OVER_SLO

    q, judged = answer.question, answer.judged
    over = [j for j in judged if j.status == OVER_SLO]
    if over or any(j.status == BOUND_SLO for j in judged):
        if over:
            closest = min(over, key=lambda j: _target_ratio(q.target, j.result))
            return (f"--{_slo_flag(q.target)}: no plan meets the target; the closest, {closest.candidate.label}, has "
                    f"{'; '.join(closest.missed)}: relax the target to that, or give more GPUs (--gpus, --nodes)")
        bounded = [j for j in judged if j.status == BOUND_SLO]
        closest = min(bounded, key=lambda j: _target_ratio(q.target, j.bounds))
        return (f"--{_slo_flag(q.target)}: no plan can meet the target: the bounds of all {len(bounded)} candidate(s) "
                f"that fit miss it, the closest, {closest.candidate.label}, by {'; '.join(closest.missed)} (at least); "
                "relax the target to that, or give more GPUs (--gpus, --nodes)")
    memory = [j for j in judged if j.status in (BOUND_MEMORY, OUT_OF_MEMORY)]
    leanest = min(memory, key=lambda j: max(j.result.peak_memory) if j.result else max(j.bounds.peak_memory))
    need = max(leanest.result.peak_memory) if leanest.result else max(leanest.bounds.peak_memory)
    usable = (1 - q.headroom) * q.cluster_spec.gpu.memory_bytes
    weights = 2 * q.model_spec.total_params()
    return (f"memory: no plan fits {q.gpus} GPU(s) of {fmt_bytes(q.cluster_spec.gpu.memory_bytes)} "
            f"({fmt_bytes(usable)} usable at --headroom {q.headroom:g}); the leanest, {leanest.candidate.label}, needs "
            f"{fmt_bytes(need)} on a GPU{' (at least: its bound)' if leanest.result is None else ''}; "
            f"the weights alone ({fmt_bytes(weights)}) need at least {-(-int(weights) // int(usable))} GPU(s): give more "
            "with --gpus or --nodes, or serve fewer or shorter requests")


def _slo_flag(target) -> str:
    return "latency-slo" if target.latency_slo is not None else ("tpot-slo" if target.tpot_slo is not None and
                                                                  target.ttft_slo is None else "ttft-slo/--tpot-slo")


def _target_ratio(target, figures_of) -> float:
    """How far p99 figures (a ``ServingResult`` or ``CandidateBounds``) are past the targets, as the worst ratio."""
    from ..inference.bounds import CandidateBounds
    from ..inference.planner import figures

    if isinstance(figures_of, CandidateBounds):
        latency, ttft, tpot = figures_of.latency_p99, figures_of.ttft_p99, figures_of.tpot_p99
    else:
        _, latency, ttft, tpot = figures(figures_of)
    return max(v / s for v, s in ((latency, target.latency_slo), (ttft, target.ttft_slo), (tpot, target.tpot_slo))
               if s is not None)


def _memory_text(result) -> str:
    d = max(range(len(result.memory)), key=lambda k: result.memory[k].total)
    m = result.memory[d]
    return (f"weights {fmt_bytes(m.weights)} + KV cache {fmt_bytes(m.kv_cache)} + activations "
            f"{fmt_bytes(m.activations)} = {fmt_bytes(result.peak_memory[d])} of {fmt_bytes(result.sim.capacity[d])}")


def _target_text(target) -> str:
    parts = [f"p99 {name} <= {fmt_time(v)}" for name, v in (("latency", target.latency_slo), ("TTFT", target.ttft_slo),
                                                             ("TPOT", target.tpot_slo)) if v is not None]
    goal = "maximise output tokens/s" if target.objective == "throughput" else "minimise p99 end-to-end latency"
    return goal + (f" with {', '.join(parts)}" if parts else "")


def layout_rows(answer) -> list[list[str]]:
    from ..inference.planner import BOUND_MEMORY, BOUND_SLO, BOUND_WORSE, OUT_OF_MEMORY, OVER_SLO

    rows = []
    for lb in answer.ranked:
        counts = [lb.count("simulated", OVER_SLO, OUT_OF_MEMORY), lb.count(BOUND_WORSE), lb.count(BOUND_SLO, OVER_SLO),
                  lb.count(BOUND_MEMORY, OUT_OF_MEMORY)]
        b = lb.best
        if b is None:
            rows.append([lb.layout.label, "-", "-", "-", "-", "-", "-", *counts])
            continue
        r, c = b.result, b.candidate
        rows.append([lb.layout.label, f"b={c.microbatch_size} k={c.in_flight} {c.split}", f"{r.tokens_per_second:,.0f}",
                     fmt_time(r.ttft.p99), fmt_time(r.tpot.p99) if r.tpot.p99 == r.tpot.p99 else "-",
                     fmt_time(r.latency.p99),
                     fmt_bytes(max(r.peak_memory)), *counts])
    return rows


def print_answer(answer) -> None:
    from ..inference.explain import explain

    q, chosen = answer.question, answer.chosen
    r, c = chosen.result, chosen.candidate
    mix = q.serving.mix_text()
    print(f"{q.model_spec.name} on {q.gpus} GPU(s) of {q.cluster_spec.name}: serving {q.batch} request(s) of {mix} "
          f"(prompt x output tokens), {_target_text(q.target)}")
    print(f"chosen: {c.layout.label} ({c.layout.gpus} GPUs), {c.in_flight} micro-batch(es) of {c.microbatch_size} "
          f"request(s) in flight per replica, layers {' '.join(map(str, c.layers_per_stage))} ({c.split} cut), "
          f"continuous-decode")
    tpot = f"  TPOT p50 {fmt_time(r.tpot.p50)} p99 {fmt_time(r.tpot.p99)}" if r.tpot.p50 == r.tpot.p50 else ""
    print(f"throughput {r.tokens_per_second:,.0f} output tokens/s  TTFT p50 {fmt_time(r.ttft.p50)} p99 "
          f"{fmt_time(r.ttft.p99)}{tpot}  latency p50 {fmt_time(r.latency.p50)} p99 {fmt_time(r.latency.p99)}")
    print(f"memory (fullest GPU at its peak): {_memory_text(r)}")
    print("why:")
    for line in explain(r, _others(answer)):
        print(f"  - {line}")
    print(f"layouts ({len(answer.layouts)}; {len(answer.judged)} candidates, {answer.simulated} simulated; best plan "
          "of each, best first):")
    print(table(["layout", "best plan", "tokens/s", "TTFT p99", "TPOT p99", "latency p99", "peak memory",
                 "simulated", "cannot win", "miss target", "no memory"], layout_rows(answer)))
    if answer.left_out:
        print(f"left out (a run over the ops limit): {len(answer.left_out)} candidate(s), e.g. {answer.left_out[0]}")


def answer_dict(answer) -> dict:
    from ..inference.explain import explain

    chosen = answer.chosen
    return {
        "chosen": {**chosen.result.summary(), "split": chosen.candidate.split, "plan": chosen.plan.to_dict()},
        "explanation": explain(chosen.result, _others(answer)),
        "target": vars(answer.question.target),
        "candidates": len(answer.judged), "simulated": answer.simulated, "left_out": list(answer.left_out),
        "layouts": [
            {"layout": lb.layout.label, "tp": lb.layout.tp, "pp": lb.layout.pp, "dp": lb.layout.dp,
             "best": None if lb.best is None else {
                 "microbatch_size": lb.best.candidate.microbatch_size, "in_flight": lb.best.candidate.in_flight,
                 "split": lb.best.candidate.split, "layers_per_stage": list(lb.best.candidate.layers_per_stage),
                 "tokens_per_second": lb.best.result.tokens_per_second, "ttft": lb.best.result.ttft.to_dict(),
                 "tpot": lb.best.result.tpot.to_dict(), "latency": lb.best.result.latency.to_dict(),
                 "peak_memory": max(lb.best.result.peak_memory)},
             "statuses": {s: lb.count(s) for s in sorted({j.status for j in lb.judged})}}
            for lb in answer.ranked],
    }
