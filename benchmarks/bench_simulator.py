"""Simulated ops per second (compute ops + transfers) with link sharing on.

Two figures per case: the default path (a dependency-order pass, then a port-overlap check that
falls back to the event loop when transfers contend) and the event loop forced on every op. Each is
the best of a few runs, in wall-clock seconds and in this process's CPU seconds (on a shared machine
the wall clock also counts the time other processes hold the cores).
Run: python benchmarks/bench_simulator.py [--repeats N]
"""
from __future__ import annotations

import argparse
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


def measure(workload: Workload, force: bool, repeats: int = 3) -> tuple[float, float, int]:
    """(best wall seconds, best CPU seconds, ops + transfers) over ``repeats`` simulations."""
    wall = cpu = float("inf")
    count = 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = simulate(workload, force_event_loop=force)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        count = len(result.timeline.ops) + len(result.timeline.transfers)
        del result
    return wall, cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each default-path case (best kept)")
    repeats = max(1, parser.parse_args().repeats)
    cases = [
        ("1f1b", 64, 1024, 1, 64e6, "1f1b p=64 m=1024, 64 MB messages (no overlap on ports)"),
        ("interleaved", 32, 256, 2, 64e6, "interleaved p=32 m=256 v=2, 64 MB messages"),
        ("1f1b", 64, 1024, 1, 1e9, "1f1b p=64 m=1024, 1 GB messages (transfers contend)"),
    ]
    print(f"{'case':60s} {'path':12s} {'ops+transfers':>14s} {'wall s':>7s} {'per second':>11s} "
          f"{'CPU s':>7s} {'per CPU s':>11s}")
    workloads = [(label, nvlink_workload(name, p, m, v, nbytes)) for name, p, m, v, nbytes, label in cases]
    workloads.append(("1f1b p=64 m=1024 with dp=8 DP collectives contending on ports",
                      dp_workload(64, 1024, 8, 64e6, 1e9)))
    for label, workload in workloads:
        for force in (False, True):
            wall, cpu, count = measure(workload, force, repeats=1 if force else repeats)
            path = "event loop" if force else "default"
            print(f"{label:60s} {path:12s} {count:14,d} {wall:7.2f} {count / wall:11,.0f} {cpu:7.2f} "
                  f"{count / cpu:11,.0f}")


if __name__ == "__main__":
    main()
