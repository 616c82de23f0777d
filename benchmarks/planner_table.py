"""The README's planner table: the chosen plan against the Megatron uniform and DeepSpeed parameter splits.

Each baseline runs under the chosen schedule, b and m, through the same simulator; "rc" marks a
baseline that only fits with full recomputation on every stage. Prints a Markdown table.
Run: python benchmarks/planner_table.py   (a few minutes on 2 cores)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeplan  # noqa: E402
from pipeplan.planner.baselines import PARAMETERS, UNIFORM  # noqa: E402


CASES = [
    # label, optimize() arguments
    ("llama3-8b, 1 x DGX H100, pp=8, batch 64, 1F1B only",
     dict(model="llama3-8b", cluster="dgx-h100", pp=8, global_batch=64, schedules=["1f1b"])),
    ("llama3-8b, 1 x DGX H100, pp=8, batch 64, all schedules",
     dict(model="llama3-8b", cluster="dgx-h100", pp=8, global_batch=64)),
    ("llama3-70b, 4 x DGX H100, pp=16 dp=2, dist. optimizer, batch 64 (memory-bound)",
     dict(model="llama3-70b", cluster="dgx-h100", nodes=4, pp=16, dp=2, distributed_optimizer=True, global_batch=64)),
    ("llama3-70b, 4 x DGX H100, tp=8 (SP) pp=4, batch 32",
     dict(model="llama3-70b", cluster="dgx-h100", nodes=4, tp=8, sequence_parallel=True, pp=4, global_batch=32)),
    ("gpt3-175b, 8 x DGX H100, tp=8 pp=8, batch 64, seq 2048",
     dict(model="gpt3-175b", cluster="dgx-h100", nodes=8, tp=8, pp=8, global_batch=64)),
]


def fmt(scored) -> str:
    rc = " rc" if set(scored.plan.recompute) == {"full"} else ""
    return f"{scored.iteration_time:.2f} s{rc}" + ("" if scored.result.fits else " OOM")


def recompute_text(plan) -> str:
    n = sum(r == "full" for r in plan.recompute)
    return "none" if n == 0 else ("all" if n == plan.num_stages else f"{n}/{plan.num_stages} stages")


def main() -> None:
    print("| case | chosen schedule | recompute | plan | Megatron uniform | DeepSpeed parameters | speed-up vs uniform "
          "| CP-SAT | search |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, kwargs in CASES:
        started = time.perf_counter()
        r = pipeplan.optimize(solver_time_limit=1.0, **kwargs)
        wall = time.perf_counter() - started
        plan = r.plan
        v = f" v={plan.chunks}" if plan.chunks > 1 else ""
        print(f"| {label} | {plan.schedule}{v} b={plan.microbatch_size} m={plan.num_microbatches} "
              f"| {recompute_text(plan)} | **{r.iteration_time:.2f} s** | {fmt(r.baseline(UNIFORM))} "
              f"| {fmt(r.baseline(PARAMETERS))} | {r.speedup_vs_uniform:.2f}x | {r.solution.status} | {wall:.0f} s |",
              flush=True)


if __name__ == "__main__":
    main()
