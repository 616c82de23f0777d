"""Per op: the validator's own stages timed in thread CPU time against their a-priori price.

    python validation/apriori_ops.py --cluster validation/probed-cpu.json
    python validation/apriori_ops.py --cluster validation/probed-cpu.json --only gpt2 --rounds 8 --layers

For each plan of ``validation/plans/apriori/`` (at its own ``--scale``, as ``apriori_table.py`` runs it)
and each stage, the stage's eager code (``validator.compute.StageRunner``, recomputation as the plan
says) runs ``--rounds`` rounds of two micro-batches in flight: both forwards, both input gradients,
both weight gradients, as ``validator.calibrate.stage_round`` times them. Each op is timed in its
thread's CPU time (waiting for a core while other users' jobs run is not the op's), the first round
left out (warm-up), and the median is set against ``price(stage_work(...))`` on the cluster spec, with
the price split into its terms (GEMMs, attention core, memory-bound kernels, fixed cost).

``--layers`` adds one row per layer kind the plan holds (embedding, block, head; one layer a stage at
the plan's shapes): F with its graph, F under ``no_grad`` (what a recomputing stage's F runs), I and W.
``--split`` adds per stage and op where the time went: ``--rounds`` more rounds under torch's profiler,
the GEMMs' (``aten::mm``, ``bmm``, ``addmm``) and the attention core's self CPU time as they ran inside
the stage against the GEMM curve's and the attention table's price, and the rest (measured op less
those) against the price's memory-bound and fixed terms.
Prints Markdown tables. This checks the cost model's terms where whole iterations cannot (the load).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeplan.cluster import load_cluster  # noqa: E402
from pipeplan.costs import layer_work, price, stage_work  # noqa: E402
from pipeplan.probe.layer import ATTENTION_OPS, GEMM_OPS  # noqa: E402
from pipeplan.validation.preflight import check_plan  # noqa: E402

from apriori_table import DEFAULT_PLANS, PLANS  # noqa: E402

IN_FLIGHT = 2


def _round(torch, runner, depth: int) -> dict[str, list[float]]:
    """One round of ``depth`` forwards, input gradients and weight gradients, each op's thread CPU time."""
    shape = runner.boundary_shape()
    out = {"F": [], "I": [], "W": []}
    inputs = [None if runner.first else torch.randn(shape) for _ in range(depth)]
    grad = None if runner.last else torch.randn(shape)
    for mb in range(depth):
        start = time.thread_time()
        runner.forward(mb, inputs[mb])
        out["F"].append(time.thread_time() - start)
    for mb in range(depth):
        start = time.thread_time()
        runner.backward(mb, grad, split=True)
        out["I"].append(time.thread_time() - start)
    for mb in range(depth):
        start = time.thread_time()
        runner.weight(mb)
        out["W"].append(time.thread_time() - start)
    runner.clear()
    return out


def measure(torch, runner, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {"F": [], "I": [], "W": []}
    for r in range(rounds + 1):
        got = _round(torch, runner, IN_FLIGHT)
        if r:
            for k, v in got.items():
                samples[k] += v
    return {k: statistics.median(v) for k, v in samples.items() if v}


def profiled(torch, runner, rounds: int) -> dict[str, tuple[float, float]]:
    """Per op kind, the median over ``rounds`` rounds of its GEMMs' and its attention core's self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    shape = runner.boundary_shape()
    got: dict[str, list[tuple[float, float]]] = {"F": [], "I": [], "W": []}
    for _ in range(rounds):
        inputs = [None if runner.first else torch.randn(shape) for _ in range(IN_FLIGHT)]
        grad = None if runner.last else torch.randn(shape)
        for kind, run in (("F", lambda mb: runner.forward(mb, inputs[mb])),
                          ("I", lambda mb: runner.backward(mb, grad, split=True)), ("W", runner.weight)):
            for mb in range(IN_FLIGHT):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    run(mb)
                events = prof.key_averages()
                got[kind].append(tuple(1e-6 * sum(e.self_cpu_time_total for e in events if e.key in keys)
                                       for keys in (GEMM_OPS, ATTENTION_OPS)))
        runner.clear()
    return {k: (statistics.median(g for g, _ in v), statistics.median(a for _, a in v)) for k, v in got.items()}


def split_terms(work, gpu) -> dict[str, tuple[float, float, float]]:
    """The price of ``work`` per op (F, I, W) as GEMMs, attention cores, memory-bound kernels, fixed cost."""
    def ops(cost):
        return cost.forward, cost.backward_input, cost.backward_weight

    whole = ops(price(work, gpu))
    bare = replace(gpu, op_overhead_s=0.0, layer_overheads=replace(
        gpu.layer_overheads, embedding=(0.0,) * 3, block=(0.0,) * 3, head=(0.0,) * 3) if gpu.layer_overheads else None)
    no_fixed = ops(price(work, bare))
    kernels_only = replace(bare, kernel_bandwidth=1e30, layer_overheads=replace(
        bare.layer_overheads, per_byte=None, no_grad=None) if bare.layer_overheads else None)
    kernels = ops(price(work, kernels_only))
    gemms = ops(price(replace(work, attention_gemms=()), kernels_only))
    return {"gemm": gemms, "attention": tuple(k - g for k, g in zip(kernels, gemms)),
            "memory": tuple(n - k for n, k in zip(no_fixed, kernels)),
            "fixed": tuple(w - n for w, n in zip(whole, no_fixed))}


def terms(work, gpu) -> dict[str, tuple[float, float, float]]:
    """The price of ``work`` split into GEMMs + attention, memory-bound kernels, fixed cost (F, I, W)."""
    whole = price(work, gpu)
    no_fixed = price(work, replace(gpu, layer_overheads=replace(
        gpu.layer_overheads, embedding=(0.0,) * 3, block=(0.0,) * 3, head=(0.0,) * 3))) if gpu.layer_overheads else whole
    return {"all": (whole.forward, whole.backward_input, whole.backward_weight),
            "fixed": tuple(a - b for a, b in zip((whole.forward, whole.backward_input, whole.backward_weight),
                                                  (no_fixed.forward, no_fixed.backward_input, no_fixed.backward_weight)))}


def _part(measured: float, priced: float) -> str:
    """measured / priced in ms, the error where something was measured."""
    return _cell(measured, priced) if measured > 0 else f"{1e3 * measured:.2f} / {1e3 * priced:.2f}"


def _cell(measured: float, priced: float) -> str:
    return f"{1e3 * measured:.2f} / {1e3 * priced:.2f} ({100 * (priced / measured - 1):+.0f} %)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cluster", required=True, help="the cluster spec to price with (a probed one)")
    p.add_argument("--only", action="append", help="only the plans whose file name contains this (repeatable)")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per stage (default 6)")
    p.add_argument("--layers", action="store_true", help="also time one layer of each kind at the plan's shapes")
    p.add_argument("--split", action="store_true",
                   help="also profile each stage's ops: GEMMs and attention core as they ran against their price")
    args = p.parse_args()
    if not 1 <= args.rounds <= 100:
        p.error("--rounds: 1 to 100")
    gpu = load_cluster(args.cluster).gpu
    import torch

    from validator.compute import StageRunner

    torch.set_num_threads(1)
    plans = [(n, s) for n, s in DEFAULT_PLANS if not args.only or any(k in n for k in args.only)]
    print("| plan | stage | layers | F | I | W | F no_grad |\n|---|---|---|---|---|---|---|")
    for name, scale in plans:
        checked = check_plan(str(PLANS / name), scale)
        model, plan = checked.model, checked.plan
        b, s = plan.microbatch_size, model.seq_len
        for stage in range(len(plan.layers_per_stage)):
            layers = plan.stage_layers(stage)
            rec = plan.recompute_of(stage)
            runner = StageRunner(model, stage, layers, b, s, plan.num_microbatches, torch.device("cpu"),
                                 torch.float32, seed=1, recompute=rec)
            got = measure(torch, runner, args.rounds)
            priced = terms(stage_work(model, layers, b, s, rec), gpu)["all"]
            cells = [_cell(got[k], priced[i]) for i, k in enumerate("FIW")]
            print(f"| {Path(name).stem} | {stage} | {len(layers)}{' (recompute)' if rec else ''} | "
                  + " | ".join(cells) + " | |", flush=True)
            if args.split:
                inside = profiled(torch, runner, args.rounds)
                parts = split_terms(stage_work(model, layers, b, s, rec), gpu)
                for i, k in enumerate("FIW"):
                    gemm, attention = inside[k]
                    memory, fixed = parts["memory"][i], parts["fixed"][i]
                    rest = _part(got[k] - gemm - attention, memory + fixed)
                    print(f"|  | {stage} {k} split | GEMMs {_part(gemm, parts['gemm'][i])} | attention "
                          f"{_part(attention, parts['attention'][i])} | rest {rest} (memory {1e3 * memory:.2f}, "
                          f"fixed {1e3 * fixed:.2f}) | |", flush=True)
        if not args.layers:
            continue
        seen = []
        for index, kind in enumerate(model.layer_kinds):
            if kind in seen:
                continue
            seen.append(kind)
            runner = StageRunner(model, 1000 + index, range(index, index + 1), b, s, plan.num_microbatches,
                                 torch.device("cpu"), torch.float32, seed=1)
            got = measure(torch, runner, args.rounds)
            again = StageRunner(model, 1000 + index, range(index, index + 1), b, s, plan.num_microbatches,
                                torch.device("cpu"), torch.float32, seed=1, recompute=True)
            ng = measure(torch, again, args.rounds)["F"]
            t = terms(layer_work(model, index, b, s, False), gpu)
            cells = [_cell(got[k], t["all"][i]) + f" fixed {1e3 * t['fixed'][i]:.2f}" for i, k in enumerate("FIW")]
            print(f"| {Path(name).stem} | {kind} | 1 | " + " | ".join(cells) + f" | {1e3 * ng:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
