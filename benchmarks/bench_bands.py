"""Seconds per op and sample of a band (what the band-ops limit in pipeplan/limits.py is set from).

Each case simulates a plan once, then times ``plan_band`` with 200 samples under the default a-priori
spread: the exact pass per sample, and the max-min event loop whenever the drawn times make two
transfers share a port.

    python benchmarks/bench_bands.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeplan  # noqa: E402
from pipeplan.bands import plan_band  # noqa: E402
from pipeplan.limits import plan_ops  # noqa: E402

CASES = [
    ("llama3-8b 1f1b pp=8 m=32", dict(pp=8, microbatches=32)),
    ("llama3-8b 1f1b pp=8 m=256", dict(pp=8, microbatches=256)),
    ("llama3-8b zb-v pp=8 m=64", dict(pp=8, microbatches=64, schedule="zb-v")),
    ("llama3-8b tp=2 pp=4 dp=2 m=32", dict(tp=2, pp=4, dp=2, gpus=16, microbatches=32)),
]


def main() -> None:
    for name, layout in CASES:
        result = pipeplan.simulate("llama3-8b", "dgx-h100", **layout)
        started = time.perf_counter()
        plan_band(result, samples=200)
        seconds = time.perf_counter() - started
        ops = plan_ops(result.plan)
        print(f"{name}: {ops:,} ops x 200 samples in {seconds:.1f} s, {seconds / ops / 200 * 1e6:.1f} us per op "
              "and sample")


if __name__ == "__main__":
    main()
