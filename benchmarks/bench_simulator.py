"""Simulated ops per second (compute ops + transfers) with link sharing on.

Two figures per case: the default path (a dependency-order pass, then a port-overlap check that
falls back to the event loop when transfers contend) and the event loop forced on every op.
Run: python benchmarks/bench_simulator.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator import Link, Network, StageCost, Workload, build_schedule, simulate  # noqa: E402


def nvlink_workload(name: str, p: int, m: int, v: int, message_bytes: float) -> Workload:
    """p GPUs behind one NVSwitch: a 450 GB/s out-port and in-port per GPU, shared by all its links."""
    schedule = build_schedule(name, p, m, v)
    links = tuple(tuple(Link(3e-6, 450e9, (f"gpu{a}:out", f"gpu{b}:in")) for b in range(p)) for a in range(p))
    ports = {f"gpu{d}:{k}": 450e9 for d in range(p) for k in ("out", "in")}
    stage = StageCost(1e-3, 1e-3, 1e-3, send_forward_bytes=message_bytes, send_backward_bytes=message_bytes,
                      activation_bytes=1.0, weight_grad_bytes=0.5)
    return Workload(schedule, (stage,) * schedule.num_stages, Network(links, ports))


def measure(workload: Workload, force: bool, repeats: int = 3) -> tuple[float, int]:
    best = float("inf")
    count = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = simulate(workload, force_event_loop=force)
        best = min(best, time.perf_counter() - t0)
        count = len(result.timeline.ops) + len(result.timeline.transfers)
    return best, count


def main() -> None:
    cases = [
        ("1f1b", 64, 1024, 1, 64e6, "1f1b p=64 m=1024, 64 MB messages (no overlap on ports)"),
        ("interleaved", 32, 256, 2, 64e6, "interleaved p=32 m=256 v=2, 64 MB messages"),
        ("1f1b", 64, 1024, 1, 1e9, "1f1b p=64 m=1024, 1 GB messages (transfers contend)"),
    ]
    print(f"{'case':60s} {'path':12s} {'ops+transfers':>14s} {'seconds':>8s} {'per second':>12s}")
    for name, p, m, v, nbytes, label in cases:
        workload = nvlink_workload(name, p, m, v, nbytes)
        for force in (False, True):
            seconds, count = measure(workload, force, repeats=1 if force else 3)
            path = "event loop" if force else "default"
            print(f"{label:60s} {path:12s} {count:14,d} {seconds:8.2f} {count / seconds:12,.0f}")


if __name__ == "__main__":
    main()
