"""Render time of a large Gantt chart: 1F1B at p=64, m=512 (65,536 ops + 64,512 transfers).

Run: python benchmarks/bench_gantt.py [out.png]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeplan.charts.gantt import gantt  # noqa: E402
from simulator import build_schedule, simulate, uniform_workload  # noqa: E402


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gantt_p64_m512.png"
    t0 = time.perf_counter()
    result = simulate(uniform_workload(build_schedule("1f1b", 64, 512), comm=0.2))
    result.timeline.meta["time_unit"] = "unit"
    t1 = time.perf_counter()
    gantt(result.timeline, out)
    t2 = time.perf_counter()
    ops, transfers = len(result.timeline.ops), len(result.timeline.transfers)
    print(f"1f1b p=64 m=512: {ops:,} ops + {transfers:,} transfers")
    print(f"simulate {t1 - t0:.2f} s, render {t2 - t1:.2f} s -> {out}")


if __name__ == "__main__":
    main()
