"""Planner speed on llama3-405b (126 blocks + embedding + head = 128 pipeline layers) at pp = 16.

405B does not fit 80 GB GPUs as a pure pipeline: weights, gradients and Adam state alone are
405e9 x 18 B / 16 = 456 GB per stage. As real runs do, each pipeline device is a tensor-parallel
group of 8 H100s with sequence parallelism, on 16 real dgx-h100 nodes (costs and memory of one
tensor rank, its all-reduces on NVLink). The memory limit still binds: stages must recompute.

Prints (1) the CP-SAT cut-point model for 1F1B, b = 1, m = 64: status and solve time (target
OPTIMAL < 5 s), (2) ``optimize`` at that pinned layout over every schedule, b and v (target < 30 s on a
2-core machine), and (3) the whole-configuration search, nothing pinned, default settings: llama3-405b on
2048 DGX H100 nodes (16,384 GPUs), global batch 2048 sequences of 8192 tokens (target < 60 s), and
llama3-70b on 8 nodes, global batch 512 (target < 20 s). Run: python benchmarks/bench_planner.py [whole]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeplan  # noqa: E402
from pipeplan.planner.cpsat import solve  # noqa: E402
from pipeplan.planner.problem import Candidate, build_problem  # noqa: E402
from simulator import build_schedule  # noqa: E402

CLUSTER = "dgx-h100"
NODES, TP = 16, 8


def cut_point_model(schedule: str = "1f1b", v: int = 1) -> None:
    model = pipeplan.load_model("llama3-405b")
    cluster = pipeplan.load_cluster(CLUSTER, NODES)
    started = time.perf_counter()
    problem = build_problem(model, cluster, Candidate(schedule, v, 1, 64), build_schedule(schedule, 16, 64, v),
                            model.seq_len, [d * TP for d in range(16)], headroom=0.05, tp=TP, sequence_parallel=True)
    built = time.perf_counter() - started
    solution = solve(problem, time_limit=30)
    recomputed = sum(solution.recompute)
    print(f"cut-point model {schedule} v={v} b=1 m=64, {problem.num_layers} layers -> {problem.num_stages} stages: "
          f"{solution.status} in {solution.wall_time:.2f} s (build {built:.2f} s), gap {solution.gap:.2%}, "
          f"analytic {problem.seconds(solution.objective):.2f} s, {recomputed} stages recompute")
    print(f"  layers per stage {list(solution.layers_per_stage)}")


def whole_optimize() -> None:
    started = time.perf_counter()
    result = pipeplan.optimize("llama3-405b", CLUSTER, global_batch=64, pp=16, nodes=NODES, tp=TP,
                               sequence_parallel=True, solver_time_limit=0.5)
    wall = time.perf_counter() - started
    plan = result.plan
    print(f"whole optimize: {wall:.1f} s; chose {plan.schedule} v={plan.chunks} b={plan.microbatch_size} "
          f"m={plan.num_microbatches}, simulated {result.iteration_time:.2f} s, "
          f"speed-up vs uniform {result.speedup_vs_uniform:.2f}x (CP-SAT {result.solution.status})")
    solved = [c for c in result.candidates if c.status != "PRUNED"]
    print(f"  {len(result.candidates)} candidates, {len(solved)} solved, "
          f"{len(result.candidates) - len(solved)} pruned by their bound, "
          f"CP-SAT time {sum(c.solve_time for c in solved):.1f} s")


def whole_configuration(model: str, nodes: int, batch: int) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    result = pipeplan.optimize(model, CLUSTER, global_batch=batch, nodes=nodes)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    plan = result.plan
    counts = {}
    for record in result.layouts:
        counts[record.status] = counts.get(record.status, 0) + 1
    # CPU seconds beside the wall clock: on a shared machine the wall clock also counts other processes' turns.
    print(f"{model} on {nodes} nodes ({nodes * 8} GPUs), batch {batch}: whole search {wall:.1f} s (CPU {cpu:.1f} s); "
          f"chose tp={plan.tp} pp={plan.pp} dp={plan.dp} {plan.schedule} v={plan.chunks} b={plan.microbatch_size} "
          f"m={plan.num_microbatches}, simulated {result.iteration_time:.2f} s, MFU {result.result.mfu:.1%}")
    print(f"  layouts: {len(result.layouts)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); searched: "
          + ", ".join(f"{r.layout.label} {r.search_time:.1f} s" for r in result.layouts if r.status == "SEARCHED"))


if __name__ == "__main__":
    if sys.argv[1:] != ["whole"]:
        cut_point_model()
        whole_optimize()
    whole_configuration("llama3-70b", 8, 512)
    whole_configuration("llama3-405b", 2048, 2048)
