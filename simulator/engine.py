"""The discrete-event engine.

Each device runs its action list in order on one compute stream. When an op ends, every
consumer on another device gets a transfer that starts at once (sends are asynchronous, so
compute and communication overlap); a consumer starts when its device is free and all its
inputs have arrived. Transfers crossing a shared port split its capacity max-min fairly with
the transfers overlapping them; a transfer of X bytes alone takes latency + X / bandwidth
(latency is paid after the bytes leave, as propagation).

Two ways to the same times. Without contention (no two transfers ever overlap on a port) every
op's start is max(device free, inputs arrived) with a fixed delay per edge: a single pass over the
ops in dependency order computes it exactly. ``simulate`` takes that pass first, checks the
transfers for overlap on any port, and only when some overlap runs the event loop, where
overlapping transfers share bandwidth. Both work on integer ids and flat lists built once up
front; records are made after.

Well-formed workloads (every action once, on its stage's device, durations >= 0) are flattened
to numpy columns (``_flatten``): producers come from a (stage, kind, micro-batch) table, edge
costs are worked out once per distinct edge, and the dependency pass, overlap check, memory
replay and records read the columns. Anything else takes the per-op lists (``_simulate_general``)
it replaced. Both give the same floats: the same additions and comparisons, in the same order
where order matters (tests/test_engine_reference.py holds results stored before the columns).
"""
from __future__ import annotations

import gc
import heapq
import math
from contextlib import contextmanager
from itertools import chain, repeat

import numpy as np
from dataclasses import dataclass

from .checker import check_complete, check_order_and_deadlock
from .deps import backward_kind_map, producer_keys
from .ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, ScheduleError
from .memory import memory_curves, memory_curves_columns, peak_live_microbatches, peak_memory
from .timeline import OpRecord, Timeline, TransferRecord
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
        # Progressive filling with the per-port count of unfrozen flows kept up to date instead of
        # recounted: the same divisions, comparisons and subtractions as counting afresh, in the
        # same port order, so the rates are the same floats.
        ports, cap, by_port, capacity = self.ports, self.cap, self.by_port, self.capacity
        unfrozen = set(flows)
        left: dict[str, float] = {}
        users: dict[str, int] = {}
        for f in flows:
            for port in ports[f]:
                if port not in left:
                    left[port] = capacity.get(port, math.inf)
                    users[port] = len(by_port[port] & unfrozen)
        while unfrozen:
            level = min(cap[f] for f in unfrozen)
            share: dict[str, float] = {}
            for port, count in users.items():
                if count:
                    s = share[port] = left[port] / count
                    if s < level:  # min(level, s)
                        level = s
            frozen = [f for f in unfrozen if cap[f] <= level or any(share[p] <= level for p in ports[f])]
            for f in frozen:
                self.rate[f] = level
                unfrozen.discard(f)
                for port in ports[f]:
                    left[port] -= level
                    users[port] -= 1
        return flows


@dataclass
class _Compiled:
    """A workload flattened to integer op ids (device-major order)."""

    actions: list
    op_device: list[int]
    device_ops: list[list[int]]
    duration: list[float]
    # Per consumer: (producer, delay when alone or -1.0 when local, transfer spec or None).
    producers: list[list[tuple[int, float, tuple | None]]]
    # One row per (transfer, port it crosses): producer op, bandwidth-phase length, port id.
    port_use_producer: list[int]
    port_use_length: list[float]
    port_use_port: list[int]


def _compile(workload: Workload) -> _Compiled:
    schedule = workload.schedule
    actions = [a for acts in schedule.device_actions for a in acts]
    op_id = {a: i for i, a in enumerate(actions)}
    op_device: list[int] = []
    device_ops: list[list[int]] = []
    for d, acts in enumerate(schedule.device_actions):
        device_ops.append(list(range(len(op_device), len(op_device) + len(acts))))
        op_device.extend([d] * len(acts))
    stages = workload.stages
    per_kind = [
        {FORWARD: c.forward, FULL_BACKWARD: c.full_backward, BACKWARD_INPUT: c.backward_input,
         BACKWARD_WEIGHT: c.backward_weight}
        for c in stages
    ]
    duration = [per_kind[a[0]][a[1]] for a in actions]
    grad_kind = backward_kind_map(actions)
    num_stages = schedule.num_stages
    network = workload.network
    capacity = network.port_capacity
    edge_cache: dict[tuple[int, int, str, int], tuple[float, tuple | None]] = {}
    producers: list[list[tuple[int, float, tuple | None]]] = []
    port_ids: dict[str, int] = {}
    use_producer: list[int] = []
    use_length: list[float] = []
    use_port: list[int] = []
    for i, (stage, kind, mb) in enumerate(actions):
        entry = []
        for key, direction in producer_keys(stage, kind, mb, num_stages, grad_kind):
            prod = op_id[key]
            src, dst = op_device[prod], op_device[i]
            if src == dst:
                entry.append((prod, -1.0, None))
                continue
            cache_key = (src, dst, direction, key[0])
            cached = edge_cache.get(cache_key)
            if cached is None:
                cost = stages[key[0]]
                nbytes = cost.send_forward_bytes if direction == "fwd" else cost.send_backward_bytes
                link = network.link(src, dst)
                rate = link.bandwidth
                for port in link.ports:
                    rate = min(rate, capacity.get(port, math.inf))
                if nbytes <= 0 or math.isinf(rate):
                    cached = (link.latency, (src, dst, 0.0 if nbytes <= 0 else nbytes, link.latency, math.inf, ()))
                else:
                    cached = (link.latency + nbytes / rate, (src, dst, nbytes, link.latency, link.bandwidth, link.ports))
                edge_cache[cache_key] = cached
            entry.append((prod, cached[0], cached[1]))
            for port in cached[1][5]:
                use_producer.append(prod)
                use_length.append(cached[0] - cached[1][3])
                use_port.append(port_ids.setdefault(port, len(port_ids)))
        producers.append(entry)
    return _Compiled(actions, op_device, device_ops, duration, producers, use_producer, use_length, use_port)


def _uncontended_times(c: _Compiled, p: int) -> tuple[list[float], list[float]] | None:
    """Start/end of every op assuming each transfer has its link to itself; None on a wait cycle."""
    n = len(c.actions)
    start = [0.0] * n
    end = [-1.0] * n
    free = [0.0] * p
    pointer = [0] * p
    waiting: dict[int, list[int]] = {}
    device_ops, producers, duration = c.device_ops, c.producers, c.duration
    stack = list(range(p))
    done = 0
    while stack:
        d = stack.pop()
        ops = device_ops[d]
        ptr = pointer[d]
        t_free = free[d]
        while ptr < len(ops):
            o = ops[ptr]
            ready = t_free
            blocked = -1
            for prod, delay, _ in producers[o]:
                e = end[prod]
                if e < 0:
                    blocked = prod
                    break
                if delay > 0:
                    e += delay
                if e > ready:
                    ready = e
            if blocked >= 0:
                waiting.setdefault(blocked, []).append(d)
                break
            start[o] = ready
            t_free = end[o] = ready + duration[o]
            ptr += 1
            done += 1
            woken = waiting.pop(o, None)
            if woken:
                stack.extend(woken)
        pointer[d] = ptr
        free[d] = t_free
    return (start, end) if done == n else None


def _transfers_contend(c: _Compiled, end: list[float]) -> bool:
    """True when two transfers' bandwidth phases overlap on some port.

    Vectorised: phases sort by (port, start); offsetting each port's times by port x span keeps
    ports apart, so one running maximum of end times finds any phase that starts before an
    earlier one on its port has ended.
    """
    if len(c.port_use_port) < 2:
        return False
    ends = np.asarray(end)
    t0 = ends[np.asarray(c.port_use_producer)]
    t1 = t0 + np.asarray(c.port_use_length)
    span = float(t1.max() - t0.min()) + 1.0
    offset = np.asarray(c.port_use_port, dtype=float) * (2.0 * span) - float(t0.min())
    t0, t1 = t0 + offset, t1 + offset
    order = np.lexsort((t0, offset))
    t0, t1 = t0[order], t1[order]
    latest_end = np.maximum.accumulate(t1)
    return bool(np.any(t0[1:] < latest_end[:-1]))


def _transfer_records_uncontended(c: _Compiled, end: list[float]) -> list[TransferRecord]:
    actions = c.actions
    records = []
    for consumer, entry in enumerate(c.producers):
        for prod, delay, spec in entry:
            if spec is not None:
                t0 = end[prod]
                records.append(TransferRecord(spec[0], spec[1], actions[prod], actions[consumer], t0, t0 + delay, spec[2]))
    return records


def _event_loop(c: _Compiled, p: int, port_capacity: dict[str, float]) -> tuple[list[float], list[float], list[list]]:
    """The general engine: transfers overlapping on a port share it max-min fairly.

    Events pop in (time, sequence) order; the sequence number makes ties first-come first-served.
    Delivering an input and starting a device's next op are written out in the loop rather than
    called, which is most of this function's speed; the order of pushes (and so of sequence
    numbers) is that of the plain version: deliver, maybe start the consumer's device, then, after
    an op's consumers, start its own device.
    """
    n = len(c.actions)
    op_device, device_ops, duration = c.op_device, c.device_ops, c.duration
    pending = [len(entry) for entry in c.producers]
    consumers: list[list[tuple[int, tuple | None]]] = [[] for _ in range(n)]
    for consumer, entry in enumerate(c.producers):
        for prod, _, spec in entry:
            consumers[prod].append((consumer, spec))
    ready_at = [0.0] * n
    start = [math.nan] * n
    end = [math.nan] * n
    pointer = [0] * p
    device_free = [0.0] * p
    running = [False] * p
    device_len = [len(ops) for ops in device_ops]
    transfers: list[list] = []  # [src, dst, producer, consumer, start, end, nbytes]
    heap: list[tuple[float, int, int, int]] = []  # (time, seq, 0 = op end | 1 = flow end, id)
    seq = 0
    flows = _Flows(port_capacity)
    rates, remaining, updated, by_port = flows.rate, flows.remaining, flows.updated, flows.by_port
    capacity_of = port_capacity.get
    flow_version: dict[int, int] = {}  # per active flow, the seq of its one live heap entry
    flow_consumer: dict[int, tuple[int, float]] = {}
    heappush, heappop = heapq.heappush, heapq.heappop
    isinf, inf, nan = math.isinf, math.inf, math.nan

    def try_start(d: int) -> None:
        nonlocal seq
        ptr = pointer[d]
        if running[d] or ptr >= device_len[d]:
            return
        o = device_ops[d][ptr]
        if pending[o]:
            return
        t0 = device_free[d] if device_free[d] > ready_at[o] else ready_at[o]
        start[o] = t0
        running[d] = True
        seq += 1
        heappush(heap, (t0 + duration[o], seq, 0, o))

    def reschedule(fids: list[int], now: float) -> None:
        nonlocal seq
        for f in flows.rebalance(fids, now):
            rate = rates[f]
            finish = now + (remaining[f] / rate if rate > 0 else inf)
            seq += 1
            flow_version[f] = seq
            heappush(heap, (finish, seq, 1, f))

    for d in range(p):
        try_start(d)
    while heap:
        t, pushed, kind, ident = heappop(heap)
        if kind == 0:
            end[ident] = t
            d = op_device[ident]
            running[d] = False
            device_free[d] = t
            pointer[d] += 1
            for consumer, spec in consumers[ident]:
                if spec is not None:
                    src, dst, nbytes, latency, bandwidth, ports = spec
                    if not (nbytes <= 0 or (isinf(bandwidth) and not ports)):
                        fid = len(transfers)
                        transfers.append([src, dst, ident, consumer, t, nan, nbytes])
                        flows.add(fid, nbytes, bandwidth, ports, t)
                        flow_consumer[fid] = (consumer, latency)
                        for port in ports:
                            if len(by_port[port]) > 1:
                                flow_version[fid] = 0
                                reschedule(flows.component([fid]), t)
                                break
                        else:
                            # Alone on its ports, the common case: what component + rebalance +
                            # reschedule do for a one-flow component, written out.
                            r = remaining[fid] = max(0.0, remaining[fid] - rates[fid] * (t - updated[fid]))
                            updated[fid] = t
                            rate = bandwidth
                            for port in ports:
                                rate = min(rate, capacity_of(port, inf))
                            rates[fid] = rate
                            seq += 1
                            flow_version[fid] = seq
                            heappush(heap, (t + (r / rate if rate > 0 else inf), seq, 1, fid))
                        continue
                    transfers.append([src, dst, ident, consumer, t, t + latency, nbytes])
                    arrive = t + latency
                else:
                    arrive = t
                # deliver(consumer, arrive)
                left = pending[consumer] - 1
                pending[consumer] = left
                if arrive > ready_at[consumer]:
                    ready_at[consumer] = arrive
                if not left:
                    try_start(op_device[consumer])
            try_start(d)
        else:
            fid = ident
            if flow_version.get(fid) != pushed:
                continue  # a stale finish time: the flow's rate changed since (only the latest push counts)
            consumer, latency = flow_consumer.pop(fid)
            del flow_version[fid]
            arrive = transfers[fid][5] = t + latency
            neighbours = flows.remove(fid)
            # deliver(consumer, arrive)
            left = pending[consumer] - 1
            pending[consumer] = left
            if arrive > ready_at[consumer]:
                ready_at[consumer] = arrive
            if not left:
                try_start(op_device[consumer])
            if neighbours:
                reschedule(flows.component(neighbours), t)
    return start, end, transfers


# Kind codes in the columns; memory.memory_curves_columns relies on the same numbering.
_KIND_CODE = {FORWARD: 0, FULL_BACKWARD: 1, BACKWARD_INPUT: 2, BACKWARD_WEIGHT: 3}


@dataclass
class _Flat:
    """A well-formed workload as numpy columns (op ids device-major, as in ``_Compiled``).

    Every action sits on its stage's device, appears once and finds its producers, and no
    duration is negative or NaN. Then a stage's own producers (F for B/I, I for W) share its
    device and, if earlier in its order, have ended by the time the device is free: only the
    one cross-device producer per op (F from s-1, B/I from s+1) can delay a start.
    """

    actions: list
    device: np.ndarray          # per op
    stage: np.ndarray
    kind: np.ndarray            # _KIND_CODE: F=0, B=1, I=2, W=3
    bounds: list[int]           # device d owns op ids bounds[d]:bounds[d + 1]
    duration: list[float]
    first: np.ndarray           # first producer of the op's rule list (-1: none)
    second: np.ndarray          # second producer (the s+1 gradient of a B/I; -1: none)
    remote: np.ndarray          # the producer on another device (-1: none); first or second
    edge: np.ndarray            # per op: index into the edge tables when remote >= 0
    edge_delay: list[float]     # alone-on-the-link transfer time, exactly as _compile computes it
    edge_spec: list[tuple]      # the _compile transfer spec (src, dst, nbytes, latency, bandwidth, ports)
    deadlock: bool              # a same-device producer comes after its consumer
    complete: bool              # check_complete would pass (see _flatten)


def _flatten(workload: Workload) -> _Flat | None:
    """Columns for ``workload``, or None when it is not well formed (the general path handles it).

    Vectorised: producers come from one (stage, kind, micro-batch) -> op id table; edge costs are
    computed once per distinct (src, dst, direction, stage) in Python, with the same arithmetic
    as ``_compile``, and spread to the ops by index.
    """
    schedule = workload.schedule
    p, num_stages = schedule.num_devices, schedule.num_stages
    actions = list(chain.from_iterable(schedule.device_actions))
    n = len(actions)
    if n == 0 or num_stages == 0:
        return None
    stage_t, kind_t, mb_t = zip(*actions)
    try:
        kind = np.fromiter(map(_KIND_CODE.__getitem__, kind_t), np.int64, n)
    except (KeyError, TypeError):
        return None
    stage = np.fromiter(stage_t, np.int64, n)
    mb = np.fromiter(mb_t, np.int64, n)
    if stage.min() < 0 or stage.max() >= num_stages or mb.min() < 0:
        return None
    counts = [len(acts) for acts in schedule.device_actions]
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    device = np.repeat(np.arange(p, dtype=np.int64), counts)
    if not np.array_equal(np.asarray(schedule.stage_to_device, dtype=np.int64)[stage], device):
        return None
    num_mb = int(mb.max()) + 1
    key = (stage * 4 + kind) * num_mb + mb
    table = np.full(num_stages * 4 * num_mb, -1, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    table[key] = ids
    if not np.array_equal(table[key], ids):
        return None  # a duplicated action
    table = table.reshape(num_stages, 4, num_mb)
    # check_complete's set algebra on the table (actions are already known to be unique, on their
    # stage's device, with stages in range): every (stage, micro-batch) has an F, exactly one of
    # B and I, and a W exactly where it has an I.
    present = table >= 0
    complete = (
        num_mb == schedule.num_microbatches
        and bool(present[:, 0, :].all())
        and bool((present[:, 1, :] != present[:, 2, :]).all())
        and bool((present[:, 2, :] == present[:, 3, :]).all())
    )
    costs = workload.stages
    per_kind = np.array(
        [[c.forward, c.full_backward, c.backward_input, c.backward_weight] for c in costs], dtype=np.float64
    )
    duration = per_kind[stage, kind]
    if not bool(np.all(duration >= 0)):
        return None

    # Producers by key arithmetic on key = (stage * 4 + kind) * num_mb + mb: the first rule's
    # producer is F(s-1) for F, F(s) for B and I, I(s) for W, a fixed key shift per kind; the
    # gradient producer of a B/I is B(s+1) or I(s+1), the later of the two as backward_kind_map's
    # last-wins dict gives (only one exists when the schedule is complete).
    slots = table.reshape(-1)
    has_first = (kind != 0) | (stage > 0)
    shift = np.array([4, 1, 2, 1], dtype=np.int64)[kind] * num_mb
    first = np.where(has_first, slots[np.where(has_first, key - shift, 0)], -1)
    grad = ((kind == 1) | (kind == 2)) & (stage < num_stages - 1)
    grad_key = np.where(grad, key + (5 - kind) * num_mb, 0)
    second = np.where(grad, np.maximum(slots[grad_key], slots[grad_key + num_mb]), -1)
    if bool(np.any(has_first & (first < 0))) or bool(np.any(grad & (second < 0))):
        return None  # a producer is missing
    first_remote = has_first & (device[first] != device)
    second_remote = grad & (device[second] != device)
    remote = np.where(first_remote, first, np.where(second_remote, second, -1))
    # Same-device producers must come earlier in the device's order, or it waits on itself.
    deadlock = bool(np.any(has_first & ~first_remote & (first > ids))) or bool(
        np.any(grad & ~second_remote & (second > ids)))
    is_f = kind == 0

    # One cost per distinct (src, dst, direction, producer stage); direction is fwd for F consumers.
    has = remote >= 0
    src = device[remote[has]]
    dst = device[has]
    prod_stage = stage[remote[has]]
    backward = (~is_f[has]).astype(np.int64)
    edge_key = ((src * p + dst) * 2 + backward) * num_stages + prod_stage
    uniq, inverse = np.unique(edge_key, return_inverse=True)
    network = workload.network
    capacity = network.port_capacity
    edge_delay: list[float] = []
    edge_spec: list[tuple] = []
    for k in uniq.tolist():
        rest, s = divmod(k, num_stages)
        rest, bwd = divmod(rest, 2)
        a, b = divmod(rest, p)
        cost = costs[s]
        nbytes = cost.send_backward_bytes if bwd else cost.send_forward_bytes
        link = network.link(a, b)
        rate = link.bandwidth
        for port in link.ports:
            rate = min(rate, capacity.get(port, math.inf))
        if nbytes <= 0 or math.isinf(rate):
            edge_delay.append(link.latency)
            edge_spec.append((a, b, 0.0 if nbytes <= 0 else nbytes, link.latency, math.inf, ()))
        else:
            edge_delay.append(link.latency + nbytes / rate)
            edge_spec.append((a, b, nbytes, link.latency, link.bandwidth, link.ports))
    edge = np.full(n, -1, dtype=np.int64)
    edge[has] = inverse.reshape(-1)
    return _Flat(actions, device, stage, kind, bounds, duration.tolist(), first, second, remote, edge,
                 edge_delay, edge_spec, deadlock, complete)


def _flat_times(f: _Flat, p: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``_uncontended_times`` on columns: the same max/add per op, with only the remote producer checked.

    Ops of device d are the ids bounds[d]..bounds[d+1]-1, so the device's pointer is the op id.
    A device runs until its next op waits for a remote producer not yet ended, and parks itself
    on that producer; an op has at most one remote consumer, so one slot per op holds the waiter.
    The loop keeps only ends; starts follow afterwards from the same comparisons in numpy.
    """
    if f.deadlock:
        return None
    n = len(f.actions)
    end = [-1.0] * n
    remote = f.remote.tolist()
    # A non-positive (or NaN) delay adds nothing in _uncontended_times; + 0.0 is exact on ends >= 0.
    per_edge = np.array([d if d > 0 else 0.0 for d in f.edge_delay] + [0.0], dtype=np.float64)
    delay_arr = per_edge[f.edge]  # edge -1 (no remote producer) picks the trailing 0.0
    delay = delay_arr.tolist()
    duration = f.duration
    waiter = [-1] * n
    bounds = f.bounds
    pointer = bounds[:p]
    stop_at = bounds[1:]
    free = [0.0] * p
    stack = list(range(p))
    while stack:
        d = stack.pop()
        t = free[d]
        stop = stop_at[d]
        for o in range(pointer[d], stop):
            r = remote[o]
            if r >= 0:
                e = end[r]
                if e < 0:
                    waiter[r] = d
                    pointer[d] = o
                    break
                e += delay[o]
                if e > t:
                    t = e
            t += duration[o]
            end[o] = t
            if waiter[o] >= 0:
                stack.append(waiter[o])
        else:
            pointer[d] = stop
        free[d] = t
    if pointer != stop_at:
        return None
    end_arr = np.array(end, dtype=np.float64)
    # start = the device's free time (previous op's end, 0.0 first), raised to the input's
    # arrival when that is later: the loop's `if e > t: t = e`, elementwise.
    free_at = np.empty(n, dtype=np.float64)
    free_at[1:] = end_arr[:-1]
    free_at[np.asarray(bounds[:-1], dtype=np.int64)[np.diff(bounds) > 0]] = 0.0
    has = f.remote >= 0
    arrival = end_arr[np.where(has, f.remote, 0)] + delay_arr
    start_arr = np.where(has & (arrival > free_at), arrival, free_at)
    return start_arr, end_arr


def _flat_port_uses(f: _Flat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_compile``'s (producer, bandwidth-phase length, port id) rows: per transfer in consumer order,
    per port of its link in link order; port ids numbered by first appearance, as there."""
    consumers = np.nonzero(f.remote >= 0)[0]
    edges = f.edge[consumers]
    port_names: dict[str, int] = {}
    edge_ports = [[port_names.setdefault(port, len(port_names)) for port in spec[5]] for spec in f.edge_spec]
    width = max((len(ports) for ports in edge_ports), default=0)
    if width == 0 or len(consumers) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), empty
    padded = np.full((len(edge_ports), width), -1, dtype=np.int64)
    for i, ports in enumerate(edge_ports):
        padded[i, :len(ports)] = ports
    lengths = np.array([delay - spec[3] for delay, spec in zip(f.edge_delay, f.edge_spec)], dtype=np.float64)
    port_grid = padded[edges]                      # (transfers, width), row-major = consumer then port
    used = port_grid >= 0
    port = port_grid[used]
    producer = np.broadcast_to(f.remote[consumers][:, None], port_grid.shape)[used]
    length = np.broadcast_to(lengths[edges][:, None], port_grid.shape)[used]
    # Renumber ports by first appearance in row order.
    names, first_row = np.unique(port, return_index=True)
    renumber = np.zeros(len(port_names), dtype=np.int64)
    renumber[names[np.argsort(first_row)]] = np.arange(len(names))
    return producer, length, renumber[port]


def _flat_contend(f: _Flat, end: np.ndarray) -> bool:
    producer, length, port = _flat_port_uses(f)
    return _transfers_contend(_Compiled([], [], [], [], [], producer, length, port), end)


def _flat_transfer_records(f: _Flat, end_arr: np.ndarray) -> list[TransferRecord]:
    """One record per remote edge in consumer order, as ``_transfer_records_uncontended`` makes them."""
    consumers = np.nonzero(f.remote >= 0)[0]
    producers = f.remote[consumers]
    edges = f.edge[consumers]
    t0 = end_arr[producers]
    t1 = t0 + np.asarray(f.edge_delay, dtype=np.float64)[edges]
    # nbytes stays the spec's own Python object (an int stays an int), picked per edge.
    nbytes = [spec[2] for spec in f.edge_spec]
    get = f.actions.__getitem__
    return list(map(
        tuple.__new__, repeat(TransferRecord),
        zip(
            f.device[producers].tolist(),
            f.device[consumers].tolist(),
            map(get, producers.tolist()),
            map(get, consumers.tolist()),
            t0.tolist(),
            t1.tolist(),
            map(nbytes.__getitem__, edges.tolist()),
        ),
    ))


def _flat_compiled(f: _Flat) -> _Compiled:
    """The general ``_Compiled`` form of ``f`` for the event loop (same lists as ``_compile``'s)."""
    n = len(f.actions)
    first, second = f.first.tolist(), f.second.tolist()
    remote, edge = f.remote.tolist(), f.edge.tolist()
    delays, specs = f.edge_delay, f.edge_spec
    producers = []
    for o in range(n):
        entry = []
        for prod in (first[o], second[o]):
            if prod < 0:
                continue
            if prod == remote[o]:
                entry.append((prod, delays[edge[o]], specs[edge[o]]))
            else:
                entry.append((prod, -1.0, None))
        producers.append(entry)
    bounds = f.bounds
    device_ops = [list(range(bounds[d], bounds[d + 1])) for d in range(len(bounds) - 1)]
    producer, length, port = _flat_port_uses(f)
    return _Compiled(f.actions, f.device.tolist(), device_ops, f.duration, producers,
                     producer.tolist(), length.tolist(), port.tolist())


def _result(timeline: Timeline, busy: list[float], total: float, curves, peaks: list[float],
            capacity: list[float], live: list[int]) -> SimResult:
    """The figures both engine paths derive the same way from busy time, span and memory."""
    p = timeline.num_devices
    return SimResult(
        timeline=timeline,
        iteration_time=total,
        bubble_fraction=1.0 - sum(busy) / (p * total) if total > 0 else 0.0,
        device_bubble_fraction=[1.0 - b / total if total > 0 else 0.0 for b in busy],
        busy_time=busy,
        memory=curves,
        peak_memory=peaks,
        capacity=capacity,
        out_of_memory=[peak > cap for peak, cap in zip(peaks, capacity)],
        peak_activations=live,
    )


def _simulated_meta(schedule) -> dict:
    """What a simulated timeline says about itself (both engine paths)."""
    return {
        "schedule": schedule.name,
        "devices": schedule.num_devices,
        "microbatches": schedule.num_microbatches,
        "chunks": schedule.chunks,
        "source": "simulated",
    }


def _static_and_capacity(workload: Workload) -> tuple[list[float], list[float]]:
    """Per device static bytes and capacity; a workload that gives none has 0 and unbounded."""
    p = workload.schedule.num_devices
    return list(workload.static_bytes) or [0.0] * p, list(workload.capacity_bytes) or [math.inf] * p


@contextmanager
def _no_gc():
    """Pause the cyclic garbage collector.

    A simulation allocates a few hundred thousand tuples (records, actions, producer lists) that
    all stay alive; each allocation burst triggers collections that rescan them, which cost as
    much as the simulation itself on large schedules. The engine makes no reference cycles, so
    nothing is lost by collecting once afterwards (the collector runs as usual after we return).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def simulate(workload: Workload, check: bool = True, force_event_loop: bool = False) -> SimResult:
    """Time ``workload.schedule`` on ``workload``'s stages and network; see ``_simulate``."""
    with _no_gc():
        return _simulate(workload, check, force_event_loop)


def _simulate(workload: Workload, check: bool = True, force_event_loop: bool = False) -> SimResult:
    """Time ``workload.schedule`` on ``workload``'s stages and network; see the module docstring.

    ``check`` verifies completeness first (a wait cycle is always reported, with the checker's
    message naming each waiting device). ``force_event_loop`` skips the uncontended fast path.

    Well-formed workloads (see ``_Flat``) run on numpy columns; anything else (possible only with
    ``check=False``, or with negative or NaN durations) takes the general lists, with the same
    results and errors as before the columns existed.
    """
    schedule = workload.schedule
    try:
        flat = _flatten(workload)
    except (TypeError, ValueError, OverflowError):
        flat = None  # odd values (non-integer stages, non-numeric costs): the general path reports them
    if check and (flat is None or not flat.complete):
        check_complete(schedule)  # raises, naming what is wrong (a None flat may still be complete)
    if flat is None:
        return _simulate_general(workload, force_event_loop)
    p = schedule.num_devices
    times = _flat_times(flat, p)
    if times is None:
        check_order_and_deadlock(schedule)  # raises with the named devices and actions
        raise ScheduleError("deadlock: the schedule cannot run to completion")
    start_arr, end_arr = times
    start, end = start_arr.tolist(), end_arr.tolist()
    actions = flat.actions
    if force_event_loop or _flat_contend(flat, end_arr):
        compiled = _flat_compiled(flat)
        start, end, rows = _event_loop(compiled, p, workload.network.port_capacity)
        transfer_records = []
        if rows:
            src, dst, prod, cons, t0, t1, nb = zip(*rows)
            get = actions.__getitem__
            transfer_records = list(map(tuple.__new__, repeat(TransferRecord),
                                        zip(src, dst, map(get, prod), map(get, cons), t0, t1, nb)))
        start_arr, end_arr = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    else:
        transfer_records = _flat_transfer_records(flat, end_arr)
    device_list = flat.device.tolist()
    ops = list(map(tuple.__new__, repeat(OpRecord), zip(device_list, actions, start, end)))
    timeline = Timeline(p, ops, transfer_records, _simulated_meta(schedule))
    static, capacity = _static_and_capacity(workload)
    curves, live = memory_curves_columns(flat.device, flat.stage, flat.kind, start_arr, end_arr, flat.bounds,
                                         workload.stages, static)
    peaks = peak_memory(curves)
    # Per device, its op durations summed left to right in id order, as the loop in
    # _simulate_general does (np.cumsum is sequential; np.sum would pair terms differently).
    spans = end_arr - start_arr
    bounds = flat.bounds
    busy = [float(np.cumsum(spans[bounds[d]:bounds[d + 1]])[-1]) if bounds[d + 1] > bounds[d] else 0.0
            for d in range(p)]
    total = float(end_arr.max() - start_arr.min())
    return _result(timeline, busy, total, curves, peaks, capacity, live)


def _simulate_general(workload: Workload, force_event_loop: bool = False) -> SimResult:
    """``simulate`` on per-op lists: any workload, including ones ``_flatten`` turns away."""
    schedule = workload.schedule
    p = schedule.num_devices
    compiled = _compile(workload)
    times = _uncontended_times(compiled, p)
    if times is None:
        check_order_and_deadlock(schedule)  # raises with the named devices and actions
        raise ScheduleError("deadlock: the schedule cannot run to completion")
    start, end = times
    actions, op_device = compiled.actions, compiled.op_device
    if force_event_loop or _transfers_contend(compiled, end):
        start, end, rows = _event_loop(compiled, p, workload.network.port_capacity)
        transfer_records = [
            TransferRecord(s, d, actions[prod], actions[c], t0, t1, nb) for s, d, prod, c, t0, t1, nb in rows
        ]
    else:
        transfer_records = _transfer_records_uncontended(compiled, end)
    ops = [OpRecord(op_device[i], actions[i], start[i], end[i]) for i in range(len(actions))]
    timeline = Timeline(p, ops, transfer_records, _simulated_meta(schedule))
    static, capacity = _static_and_capacity(workload)
    curves = memory_curves(timeline, workload.stages, static)
    peaks = peak_memory(curves)
    # The same definitions as timeline.busy_time / iteration_time, read off the flat arrays once.
    busy = [0.0] * p
    for i, d in enumerate(op_device):
        busy[d] += end[i] - start[i]
    total = (max(end) - min(start)) if end else 0.0
    return _result(timeline, busy, total, curves, peaks, capacity, peak_live_microbatches(timeline))
