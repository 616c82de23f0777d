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

from dataclasses import replace  # noqa: E402

from simulator import Action, Collective, Link, Network, StageCost, Workload, build_schedule, simulate  # noqa: E402
from simulator.ir import make_schedule  # noqa: E402


def nvlink_workload(name: str, p: int, m: int, v: int, message_bytes: float) -> Workload:
    """p GPUs behind one NVSwitch: a 450 GB/s out-port and in-port per GPU, shared by all its links."""
    schedule = build_schedule(name, p, m, v)
    links = tuple(tuple(Link(3e-6, 450e9, (f"gpu{a}:out", f"gpu{b}:in")) for b in range(p)) for a in range(p))
    ports = {f"gpu{d}:{k}": 450e9 for d in range(p) for k in ("out", "in")}
    stage = StageCost(1e-3, 1e-3, 1e-3, send_forward_bytes=message_bytes, send_backward_bytes=message_bytes,
                      activation_bytes=1.0, weight_grad_bytes=0.5)
    return Workload(schedule, (stage,) * schedule.num_stages, Network(links, ports))


def dp_workload(p: int, m: int, dp: int, message_bytes: float, grad_bytes: float) -> Workload:
    """``nvlink_workload`` with data parallelism: each device's OPTIMIZER and REDUCE_GRAD appended (the
    compute stream's action first, as ``pipeplan.dataparallel`` lists them), the all-reduce over its dp
    ranks priced as a ring whose ports include two shared NIC ports per 8 devices (as 8 pipeline ranks of
    one node reducing through one NIC), so the collectives contend."""
    base = nvlink_workload("1f1b", p, m, 1, message_bytes)
    rows = [list(acts) + [Action(d, "OPTIMIZER", None), Action(d, "REDUCE_GRAD", None)]
            for d, acts in enumerate(base.schedule.device_actions)]
    schedule = make_schedule(rows, base.schedule.stage_to_device, m, "1f1b+dp")
    ports = dict(base.network.port_capacity)
    stages = []
    for s in range(p):
        nic = (f"node{s // 8}.nic0:out", f"node{s // 8}.nic0:in")
        ports.update({port: 50e9 for port in nic})
        path = Link(2 * (dp - 1) * 5e-6, 50e9, (f"gpu{s}:out", f"gpu{s}:in") + nic)
        collective = Collective("REDUCE_GRAD", 2 * (dp - 1) / dp * grad_bytes, path)
        stages.append(replace(base.stages[s], collectives=(collective,), optimizer=1e-3))
    return Workload(schedule, tuple(stages), Network(base.network.links, ports))


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
    label = "1f1b p=64 m=1024 with dp=8 DP collectives contending on ports"
    workload = dp_workload(64, 1024, 8, 64e6, 1e9)
    for force in (False, True):
        seconds, count = measure(workload, force, repeats=1 if force else 3)
        path = "event loop" if force else "default"
        print(f"{label:60s} {path:12s} {count:14,d} {seconds:8.2f} {count / seconds:12,.0f}")


if __name__ == "__main__":
    main()
