"""Build time of every schedule generator at p = 8, 16, 32 (m = 4p), best of a few runs, in milliseconds.

The cost-aware ones (zb-1p, zb-2p, zb-v) are ordered from the Zero Bubble paper's 14.6B times (its
Table 9: T_F 11.307, T_B 11.254, T_W 8.101, T_comm 0.379 ms; a V chunk gets half), with every stage's
times spread by up to +-10 % as a planner's split would have them: the planner orders them anew for
every split it simulates, so this is the per-split price. Run: python benchmarks/bench_schedules.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator import SCHEDULES, StageTimes, build_schedule  # noqa: E402

F, B, W, COMM = 11.307, 11.254, 8.101, 0.379


def uneven_times(stages: int, scale: float) -> StageTimes:
    """The paper's times over ``stages`` stages, each stage off by a fixed pattern of up to +-10 %."""
    spread = [1 + 0.1 * ((7 * s) % 11 - 5) / 5 for s in range(stages)]
    return StageTimes(tuple(F * scale * x for x in spread), tuple(B * scale * x for x in spread),
                      tuple(W * scale * x for x in spread), (COMM,) * (stages - 1))


def build_ms(name: str, p: int, m: int, v: int, costs: StageTimes | None, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        build_schedule(name, p, m, v, costs)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    sizes = (8, 16, 32)
    print(f"{'schedule':<16}" + "".join(f"{f'p={p} m={4 * p}':>14}" for p in sizes) + "   (ms, best of 3)")
    for name, entry in SCHEDULES.items():
        v = entry.default_chunks
        cells = []
        for p in sizes:
            if not entry.accepts(p, 4 * p, v):
                cells.append(f"{'-':>14}")
                continue
            costs = uneven_times(p * v, 1 / v) if entry.cost_aware else None
            cells.append(f"{build_ms(name, p, 4 * p, v, costs, 3):>14.1f}")
        print(f"{name + (' *' if entry.cost_aware else ''):<16}" + "".join(cells))
    print("* ordered from the stage costs")
    print(f"{'zb-2p, equal':<16}" + "".join(
        f"{build_ms('zb-2p', p, 4 * p, 1, StageTimes.uniform(p, F, B, W, COMM), 3):>14.1f}" for p in sizes))
    print(f"{'zb-v, equal':<16}" + "".join(
        f"{build_ms('zb-v', p, 4 * p, 2, StageTimes.uniform(2 * p, F / 2, B / 2, W / 2, COMM), 3):>14.1f}"
        for p in sizes))


if __name__ == "__main__":
    main()
