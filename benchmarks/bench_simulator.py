"""Simulated ops per second (compute ops + transfers) with link sharing on.

Per case, the default path (a dependency-order pass, then a port-overlap check that hands over to the
max-min event loop from the first contended instant) run ``--repeats`` times: the best and the median
in wall-clock seconds and in this process's CPU seconds (on a shared machine the wall clock also counts
the time other processes hold the cores). ``simulate`` builds the timeline's records (one tuple per op
and per transfer) when they are first read; the "+ records" row times simulate and that first read
together. Then the event loop forced on every op, once. Last, the process's peak resident memory.
Run: python benchmarks/bench_simulator.py [--repeats N] [--dp-only] [--no-event-loop]
"""
from __future__ import annotations

import argparse
import resource
import statistics
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


def measure(workload: Workload, force: bool, repeats: int = 3, records: bool = False
            ) -> tuple[list[float], list[float], int]:
    """(wall seconds, CPU seconds, ops + transfers) of ``repeats`` simulations, reading the timeline's
    records within the timing when ``records``."""
    wall: list[float] = []
    cpu: list[float] = []
    count = 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = simulate(workload, force_event_loop=force)
        if records:
            count = len(result.timeline.ops) + len(result.timeline.transfers)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if not records:
            count = len(result.timeline.ops) + len(result.timeline.transfers)
        del result
    return wall, cpu, count


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each default-path case")
    parser.add_argument("--dp-only", action="store_true", help="only the data-parallel case")
    parser.add_argument("--no-event-loop", action="store_true", help="skip the forced event-loop runs")
    args = parser.parse_args()
    repeats = max(1, args.repeats)
    cases = [] if args.dp_only else [
        ("1f1b", 64, 1024, 1, 64e6, "1f1b p=64 m=1024, 64 MB messages (no overlap on ports)"),
        ("interleaved", 32, 256, 2, 64e6, "interleaved p=32 m=256 v=2, 64 MB messages"),
        ("1f1b", 64, 1024, 1, 1e9, "1f1b p=64 m=1024, 1 GB messages (transfers contend)"),
    ]
    print(f"{'case':60s} {'path':16s} {'ops+transfers':>13s} {'wall s best/median':>19s} "
          f"{'per second best/median':>23s} {'CPU s best/median':>18s} {'per CPU s best/median':>22s}")
    workloads = [(label, nvlink_workload(name, p, m, v, nbytes)) for name, p, m, v, nbytes, label in cases]
    workloads.append(("1f1b p=64 m=1024 with dp=8 DP collectives contending on ports",
                      dp_workload(64, 1024, 8, 64e6, 1e9)))
    runs = [("default", False, False), ("default + records", False, True)]
    if not args.no_event_loop:
        runs.append(("event loop", True, True))
    for label, workload in workloads:
        for path, force, records in runs:
            wall, cpu, count = measure(workload, force, repeats=1 if force else repeats, records=records)
            figures = []
            for seconds in (wall, cpu):
                best, median = min(seconds), statistics.median(seconds)
                figures.append(f"{best:9.3f}/{median:<9.3f} {count / best:11,.0f}/{count / median:<11,.0f}")
            print(f"{label:60s} {path:16s} {count:13,d} {figures[0]} {figures[1]}")
    print(f"peak resident memory: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
