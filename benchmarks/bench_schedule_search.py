"""CP-SAT schedule search: solve times and answers at p = 4, m = 8 and beyond, against the built-in schedules.

Each row searches every device's order under an activation limit (stage activations per device, as the
simulator counts them) and prints CP-SAT's status, its wall time, the simulated iteration time, the proven
bound and the fastest built-in schedule of the same placement that fits the same limit. Costs: uniform,
random integers (F, I, W in 1..4 per stage, transfers 0..2; seeded), and Zero Bubble's profiled 1.5B times
(Qi et al., ICLR'24, Table 9: F 18.522, B 18.086, W 9.337, comm 0.601 ms). One CP-SAT worker, fixed seed,
budget in deterministic seconds (``--time-limit``, default 60). Run: python benchmarks/bench_schedule_search.py
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeplan.schedule_search import placement_stages, search  # noqa: E402
from simulator import StageTimes  # noqa: E402


def random_costs(seed: int, stages: list[int]) -> StageTimes:
    rng = random.Random(seed)
    n = len(stages)
    pair: dict[tuple[int, int], float] = {}
    comm = []
    for s in range(n - 1):
        a, b = sorted((stages[s], stages[s + 1]))
        comm.append(pair.setdefault((a, b), float(rng.randint(0, 2))) if a != b else 0.0)
    draw = lambda: tuple(float(rng.randint(1, 4)) for _ in range(n))  # noqa: E731
    return StageTimes(draw(), draw(), draw(), tuple(comm))


def zero_bubble_1p5b(stages: int) -> StageTimes:
    return StageTimes.uniform(stages, 18.522, 18.086, 9.337, 0.601)


def cases() -> list[tuple[str, int, int, int, str, int, bool]]:
    """(label, p, m, v, costs, memory limit, split backward)."""
    rows = [("uniform", 4, 8, 1, "uniform", 4, True), ("uniform", 4, 8, 1, "uniform", 8, True),
            ("uniform, V", 4, 8, 2, "uniform", 8, True), ("uniform, F/B", 4, 8, 1, "uniform", 4, False)]
    rows += [(f"random seed {seed}", 4, 8, 1, f"random:{seed}", 4, True) for seed in range(5)]
    rows += [(f"random seed {seed}, V", 4, 8, 2, f"random:{seed}", 8, True) for seed in range(2)]
    rows += [("ZB 1.5B", 4, 8, 1, "zb", 4, True), ("ZB 1.5B", 8, 16, 1, "zb", 8, True),
             ("ZB 1.5B, 2p", 8, 16, 1, "zb", 16, True), ("random seed 0", 8, 16, 1, "random:0", 8, True),
             ("uniform, V", 8, 16, 2, "uniform", 16, True)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--only-small", action="store_true", help="p = 4 rows only")
    args = parser.parse_args()
    print("| costs | p | m | v | limit | backward | status | solve | search | bound | best built-in |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, p, m, v, kind, limit, split in cases():
        if args.only_small and p > 4:
            continue
        _, stages = placement_stages(p, v)
        costs = (None if kind == "uniform" else zero_bubble_1p5b(len(stages)) if kind == "zb"
                 else random_costs(int(kind.split(":")[1]), stages))
        started = time.perf_counter()
        found = search(p, m, v, costs, limit, split_backward=split, time_limit=args.time_limit)
        total = time.perf_counter() - started
        best = min(found.baselines.items(), key=lambda kv: kv[1]) if found.baselines else None
        builtin = f"{best[0]} {best[1]:.6g}" if best else "none fits"
        bound = "-" if found.lower_bound is None else f"{found.lower_bound:.6g}"
        print(f"| {label} | {p} | {m} | {v} | {limit} | {'F/I/W' if split else 'F/B'} | {found.status} | "
              f"{found.solve_seconds:.2f} s | **{found.iteration_time:.6g}** | {bound} | {builtin} |", flush=True)


if __name__ == "__main__":
    main()
