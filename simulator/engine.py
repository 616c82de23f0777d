"""The discrete-event engine.

Each device runs its action list in order on one compute stream. When an op ends, every
consumer on another device gets a transfer that starts at once (sends are asynchronous, so
compute and communication overlap); a consumer starts when its device is free and all its
inputs have arrived. Transfers crossing a shared port split its capacity max-min fairly with
the transfers overlapping them; a transfer of X bytes alone takes latency + X / bandwidth
(latency is paid after the bytes leave, as propagation).

The hot loop works on integer ids and flat lists built once up front; records are made after.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from .checker import check_schedule
from .deps import schedule_dependencies
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, ScheduleError
from .memory import memory_curves, peak_live_microbatches, peak_memory
from .timeline import (
    OpRecord,
    Timeline,
    TransferRecord,
    bubble_fraction,
    busy_time,
    device_bubble_fractions,
    iteration_time,
)
from .workload import Workload


@dataclass
class SimResult:
    """Everything one simulation returns; plain data that charts, planner and validator read."""

    timeline: Timeline
    iteration_time: float
    bubble_fraction: float
    device_bubble_fraction: list[float]
    busy_time: list[float]
    memory: list[tuple[list[float], list[float]]]
    peak_memory: list[float]
    capacity: list[float]
    out_of_memory: list[bool]
    peak_activations: list[int]

    def summary(self) -> dict:
        return {
            "iteration_time": self.iteration_time,
            "bubble_fraction": self.bubble_fraction,
            "device_bubble_fraction": self.device_bubble_fraction,
            "busy_time": self.busy_time,
            "peak_memory": self.peak_memory,
            "capacity": [c if math.isfinite(c) else None for c in self.capacity],
            "out_of_memory": self.out_of_memory,
            "peak_activations": self.peak_activations,
            "num_ops": len(self.timeline.ops),
            "num_transfers": len(self.timeline.transfers),
        }


class _Flows:
    """Active bandwidth-phase transfers and their max-min fair rates."""

    def __init__(self, port_capacity: dict[str, float]):
        self.capacity = port_capacity
        self.by_port: dict[str, set[int]] = {}
        self.ports: dict[int, tuple[str, ...]] = {}
        self.cap: dict[int, float] = {}
        self.remaining: dict[int, float] = {}
        self.rate: dict[int, float] = {}
        self.updated: dict[int, float] = {}

    def component(self, seeds: list[int]) -> list[int]:
        seen = set(seeds)
        stack = list(seeds)
        while stack:
            f = stack.pop()
            for port in self.ports[f]:
                for other in self.by_port[port]:
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
        return sorted(seen)

    def add(self, fid: int, nbytes: float, cap: float, ports: tuple[str, ...], now: float) -> None:
        self.ports[fid] = ports
        self.cap[fid] = cap
        self.remaining[fid] = nbytes
        self.rate[fid] = 0.0
        self.updated[fid] = now
        for port in ports:
            self.by_port.setdefault(port, set()).add(fid)

    def remove(self, fid: int) -> list[int]:
        """Drop a finished flow; return the flows that shared a port with it."""
        neighbours: set[int] = set()
        for port in self.ports.pop(fid):
            members = self.by_port[port]
            members.discard(fid)
            neighbours |= members
        for table in (self.cap, self.remaining, self.rate, self.updated):
            del table[fid]
        return sorted(neighbours)

    def rebalance(self, flows: list[int], now: float) -> list[int]:
        """Advance ``flows`` to ``now`` and give them max-min fair rates (progressive filling)."""
        for f in flows:
            self.remaining[f] = max(0.0, self.remaining[f] - self.rate[f] * (now - self.updated[f]))
            self.updated[f] = now
        if len(flows) == 1:
            f = flows[0]
            rate = self.cap[f]
            for port in self.ports[f]:
                rate = min(rate, self.capacity.get(port, math.inf))
            self.rate[f] = rate
            return flows
        left = {port: self.capacity.get(port, math.inf) for f in flows for port in self.ports[f]}
        unfrozen = set(flows)
        while unfrozen:
            level = min(self.cap[f] for f in unfrozen)
            for port, cap in left.items():
                users = sum(1 for f in self.by_port[port] if f in unfrozen)
                if users:
                    level = min(level, cap / users)
            frozen = [
                f for f in unfrozen
                if self.cap[f] <= level or any(
                    left[p] / max(1, sum(1 for g in self.by_port[p] if g in unfrozen)) <= level
                    for p in self.ports[f]
                )
            ]
            for f in frozen:
                self.rate[f] = level
                unfrozen.discard(f)
                for port in self.ports[f]:
                    left[port] -= level
        return flows


def simulate(workload: Workload, check: bool = True) -> SimResult:
    """Time ``workload.schedule`` on ``workload``'s stages and network; see the module docstring."""
    schedule = workload.schedule
    if check:
        check_schedule(schedule)
    p = schedule.num_devices
    deps = schedule_dependencies(schedule)

    # Integer ids for ops, in device order.
    actions = [a for acts in schedule.device_actions for a in acts]
    op_id = {a: i for i, a in enumerate(actions)}
    n = len(actions)
    op_device = [0] * n
    device_ops: list[list[int]] = []
    i = 0
    for d, acts in enumerate(schedule.device_actions):
        device_ops.append(list(range(i, i + len(acts))))
        for _ in acts:
            op_device[i] = d
            i += 1
    duration = [0.0] * n
    for i, a in enumerate(actions):
        cost = workload.stages[a.stage]
        if a.kind == FORWARD:
            duration[i] = cost.forward
        elif a.kind == FULL_BACKWARD:
            duration[i] = cost.full_backward
        elif a.kind == BACKWARD_INPUT:
            duration[i] = cost.backward_input
        elif a.kind == BACKWARD_WEIGHT:
            duration[i] = cost.backward_weight

    # Consumers of each op: (consumer, None) when local, else (consumer, transfer spec).
    pending = [0] * n
    ready_at = [0.0] * n
    consumers: list[list[tuple[int, tuple | None]]] = [[] for _ in range(n)]
    for consumer, dep_list in deps.items():
        c = op_id[consumer]
        pending[c] = len(dep_list)
        for dep in dep_list:
            prod = op_id[dep.producer]
            src, dst = op_device[prod], op_device[c]
            if src == dst:
                consumers[prod].append((c, None))
                continue
            cost = workload.stages[dep.producer.stage]
            nbytes = cost.send_forward_bytes if dep.direction == "fwd" else cost.send_backward_bytes
            link = workload.network.link(src, dst)
            consumers[prod].append((c, (src, dst, nbytes, link.latency, link.bandwidth, link.ports)))

    start = [math.nan] * n
    end = [math.nan] * n
    pointer = [0] * p
    device_free = [0.0] * p
    running = [False] * p
    transfers: list[list] = []  # [src, dst, producer, consumer, start, end, nbytes]
    heap: list[tuple[float, int, int, int]] = []  # (time, seq, kind 0=op end 1=flow end, id/version)
    seq = 0
    flows = _Flows(workload.network.port_capacity)
    flow_version: dict[int, int] = {}
    flow_info: dict[int, tuple[int, float, int]] = {}  # fid -> (consumer, latency, transfer index)
    heappush, heappop = heapq.heappush, heapq.heappop

    def try_start(d: int) -> None:
        nonlocal seq
        ptr = pointer[d]
        if running[d] or ptr >= len(device_ops[d]):
            return
        o = device_ops[d][ptr]
        if pending[o]:
            return
        t0 = device_free[d] if device_free[d] > ready_at[o] else ready_at[o]
        start[o] = t0
        running[d] = True
        seq += 1
        heappush(heap, (t0 + duration[o], seq, 0, o))

    def deliver(c: int, t: float) -> None:
        pending[c] -= 1
        if t > ready_at[c]:
            ready_at[c] = t
        if not pending[c]:
            try_start(op_device[c])

    def reschedule(fids: list[int], now: float) -> None:
        nonlocal seq
        for f in flows.rebalance(fids, now):
            flow_version[f] += 1
            rate = flows.rate[f]
            finish = now + (flows.remaining[f] / rate if rate > 0 else math.inf)
            seq += 1
            heappush(heap, (finish, seq, 1, f * 4096 + flow_version[f] % 4096))

    for d in range(p):
        try_start(d)
    done = 0
    while heap:
        t, _, kind, ident = heappop(heap)
        if kind == 0:
            o = ident
            end[o] = t
            done += 1
            d = op_device[o]
            running[d] = False
            device_free[d] = t
            pointer[d] += 1
            for c, spec in consumers[o]:
                if spec is None:
                    deliver(c, t)
                    continue
                src, dst, nbytes, latency, bandwidth, ports = spec
                if nbytes <= 0 or (math.isinf(bandwidth) and not ports):
                    arrival = t + latency + (0.0 if nbytes <= 0 else 0.0)
                    transfers.append([src, dst, o, c, t, arrival, nbytes])
                    deliver(c, arrival)
                    continue
                fid = len(transfers)
                transfers.append([src, dst, o, c, t, math.nan, nbytes])
                flows.add(fid, nbytes, bandwidth, ports, t)
                flow_version[fid] = 0
                flow_info[fid] = (c, latency, fid)
                reschedule(flows.component([fid]), t)
            try_start(d)
        else:
            fid, version = divmod(ident, 4096)
            if fid not in flow_version or flow_version[fid] % 4096 != version:
                continue
            c, latency, index = flow_info.pop(fid)
            del flow_version[fid]
            arrival = t + latency
            transfers[index][5] = arrival
            neighbours = flows.remove(fid)
            deliver(c, arrival)
            if neighbours:
                reschedule(flows.component(neighbours), t)

    if done != n:
        stuck = [str(schedule.device_actions[d][pointer[d]]) for d in range(p) if pointer[d] < len(device_ops[d])]
        raise ScheduleError(f"deadlock in simulation: devices stuck at {', '.join(stuck)}")

    ops = [OpRecord(op_device[i], actions[i], start[i], end[i]) for i in range(n)]
    transfer_records = [
        TransferRecord(s, d, actions[prod], actions[c], t0, t1, nb) for s, d, prod, c, t0, t1, nb in transfers
    ]
    timeline = Timeline(
        p,
        ops,
        transfer_records,
        {
            "schedule": schedule.name,
            "devices": p,
            "microbatches": schedule.num_microbatches,
            "chunks": schedule.chunks,
            "source": "simulated",
        },
    )
    static = list(workload.static_bytes) or [0.0] * p
    capacity = list(workload.capacity_bytes) or [math.inf] * p
    curves = memory_curves(timeline, workload.stages, static)
    peaks = peak_memory(curves)
    return SimResult(
        timeline=timeline,
        iteration_time=iteration_time(timeline),
        bubble_fraction=bubble_fraction(timeline),
        device_bubble_fraction=device_bubble_fractions(timeline),
        busy_time=busy_time(timeline),
        memory=curves,
        peak_memory=peaks,
        capacity=capacity,
        out_of_memory=[peak > cap for peak, cap in zip(peaks, capacity)],
        peak_activations=peak_live_microbatches(timeline),
    )
