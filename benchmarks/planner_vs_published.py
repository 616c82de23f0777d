"""The planner against the published configurations of Megatron-LM SC'21, Table 1 (``published_runs``).

For each row, two simulations on the ``dgx-a100`` preset with the row's GPU count:

* **published**: the paper's configuration (t, p, d, b, v; 1F1B or interleaved, Megatron's even split,
  full recomputation) exactly as ``benchmarks/published_runs.py`` builds and simulates it
  (``pipeplan.simulate(plan=plan_of(run))``);
* **optimize**: ``pipeplan.optimize`` given only the model (``model_of(run)``), the cluster, the GPU
  count, the global batch and the sequence length, searching the whole configuration (tp x pp x dp,
  schedule, v, b, m, cuts, recomputation). No ``compare_config``: the published configuration is not
  given to it, so the table shows what the search finds on its own.

Both are simulated the same way: Megatron 2021 had neither sequence parallelism nor the distributed
optimizer, and its point-to-point exchanges blocked, so optimize runs with ``sequence_parallel=False,
distributed_optimizer=False, blocking_p2p=True`` (the published plans say ``blocking_p2p`` and leave
the other two off). The search may still choose what Megatron 2021 did not have: selective or per-stage
recomputation and the zero-bubble schedules of the planner's default set. ``--open`` adds a column
with sequence parallelism and the distributed optimizer left to the search (on wherever they apply).

TFLOP/s per GPU: the paper's eq. 3 (``published_runs.megatron_flops``, which counts a recomputed
forward) over the simulated iteration, for both, so their ratio is the ratio of iteration times (for a
plan that recomputes less, eq. 3 counts more FLOPs than it runs). "ratio": published time / optimize's;
"rc": recomputation per stage ("1f+7n": one stage full, seven none).
The searches run without a time limit by default, so that the answer does not depend on the machine's
load: "search" is each row's wall-clock and CPU seconds. ``--time-limit S`` bounds each row's search
instead (the answer is the best found by then; "*" marks a row whose limit ran out). The ``--layouts``
best layouts of the screen are searched in full.

Run: python benchmarks/planner_vs_published.py [--open] [--rows 1.7B,3.6B] [--time-limit S]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeplan  # noqa: E402
from published_runs import SEQ, TABLE_1, Run, megatron_flops, model_of, plan_of  # noqa: E402

# Megatron 2021 as the published plans simulate it (see the module docstring)
MEGATRON_2021 = dict(sequence_parallel=False, distributed_optimizer=False, blocking_p2p=True)


def published_time(run: Run) -> float:
    """The published configuration's simulated iteration time, as ``published_runs`` simulates it."""
    return pipeplan.simulate(plan=plan_of(run)).iteration_time


def optimized(run: Run, time_limit: float | None, layouts: int, solver_time_limit: float,
              open_switches: bool = False):
    """``optimize`` given only the model, dgx-a100 with the row's GPUs, the global batch and the sequence
    length (Megatron 2021's switches pinned unless ``open_switches``); (result, wall seconds, CPU seconds)."""
    pins = dict(blocking_p2p=True) if open_switches else MEGATRON_2021
    started, cpu = time.perf_counter(), time.process_time()
    result = pipeplan.optimize(model_of(run).to_dict(), "dgx-a100", run.batch, gpus=run.gpus, seq_len=SEQ,
                               time_limit=time_limit, layouts=layouts, solver_time_limit=solver_time_limit, **pins)
    return result, time.perf_counter() - started, time.process_time() - cpu


def tflops(run: Run, seconds: float) -> float:
    """TFLOP/s per GPU by the paper's eq. 3 for one iteration of ``seconds``."""
    return megatron_flops(run) / (seconds * run.gpus) / 1e12


def describe(plan) -> str:
    """t, p, d, the schedule with v, b, m and the recomputation per stage, compactly."""
    v = f" v={plan.chunks}" if plan.chunks > 1 else ""
    counts = Counter(plan.recompute)
    rc = next(iter(counts)) if len(counts) == 1 else "+".join(f"{n}{mode[0]}" for mode, n in sorted(counts.items()))
    flags = (" sp" if plan.sequence_parallel else "") + (" do" if plan.distributed_optimizer else "")
    return (f"t{plan.tp} p{plan.pp} d{plan.dp}{flags} {plan.schedule}{v} b={plan.microbatch_size} "
            f"m={plan.num_microbatches} rc={rc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated model names of Table 1 (default: all)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="optimize's wall-clock limit per row in seconds (default: none)")
    parser.add_argument("--layouts", type=int, default=1, help="layouts searched in full per row")
    parser.add_argument("--solver-time-limit", type=float, default=0.5, help="CP-SAT's limit per candidate")
    parser.add_argument("--open", action="store_true",
                        help="add a column with sequence parallelism and the distributed optimizer searched")
    args = parser.parse_args(argv)
    rows = TABLE_1 if not args.rows else [r for r in TABLE_1 if r.name in args.rows.split(",")]
    began, began_cpu = time.perf_counter(), time.process_time()
    limit = "no time limit" if args.time_limit is None else f"time limit {args.time_limit:g} s per row"
    print(f"Megatron SC'21 Table 1 on dgx-a100: published configuration vs pipeplan.optimize (no compare_config; "
          f"{limit}, {args.layouts} layout(s) searched in full, CP-SAT {args.solver_time_limit:g} s per candidate; "
          f"search: wall/CPU seconds)")
    head = (f"{'model':>7} {'GPUs':>5} {'B':>5} | {'published t,p,d,b,v':>19} {'time':>7} {'TF/s':>5} | "
            f"{'optimize (no sp, no dist-opt)':<46} {'time':>7} {'TF/s':>5} {'ratio':>6} {'search':>10}")
    if args.open:
        head += f" | {'optimize (sp, dist-opt open)':<52} {'time':>7} {'TF/s':>5} {'ratio':>6} {'search':>10}"
    print(head)
    worst = float("inf")
    for run in rows:
        pub = published_time(run)
        parts = [f"{run.name:>7} {run.gpus:>5} {run.batch:>5}",
                 f"{f'{run.tp},{run.pp},{run.dp},{run.microbatch},{run.chunks}':>19} {pub:>6.2f}s "
                 f"{tflops(run, pub):>5.1f}"]
        for open_switches in ([False, True] if args.open else [False]):
            result, wall, cpu = optimized(run, args.time_limit, args.layouts, args.solver_time_limit, open_switches)
            ratio = pub / result.iteration_time
            if not open_switches:
                worst = min(worst, ratio)
            mark = "*" if result.timed_out else " "
            parts.append(f"{describe(result.plan):<{52 if open_switches else 46}} {result.iteration_time:>6.2f}s "
                         f"{tflops(run, result.iteration_time):>5.1f} {ratio:>5.2f}x {f'{wall:.0f}/{cpu:.0f}s':>9}{mark}")
        line = " | ".join(parts).rstrip()
        print(line, flush=True)
    print(f"worst ratio (no sp, no dist-opt) {worst:.3f}; total {time.perf_counter() - began:.0f} s wall, "
          f"{time.process_time() - began_cpu:.0f} s CPU")


if __name__ == "__main__":
    main()
