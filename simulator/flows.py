"""Max-min fair sharing of ports, and the event loop that runs when transfers contend.

A flow is the bandwidth phase of a transfer (or of a collective): ``nbytes`` at a rate limited
by its own cap and by each port it crosses, ports shared max-min fairly (progressive filling)
among the flows that overlap on them. Latency is paid after the bytes leave, as propagation.
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from .compile import Compiled
from .loop_inputs import LaneOf, consumer_lists
from .resume import resume_state


class Flows:
    """Active flows and their max-min fair rates.

    A flow loads each of its ports with its rate, or with rate x weight where it has weights
    (``Collective.weights``: that many copies of the flow cross the port in lockstep, as the rings
    of a collective's channels do). At equal rates that is max-min fairness among the copies, each
    copy one flow.
    """

    def __init__(self, port_capacity: dict[str, float]):
        self.capacity = port_capacity
        self.by_port: dict[str, set[int]] = {}
        self.ports: dict[int, tuple[str, ...]] = {}
        self.cap: dict[int, float] = {}
        self.remaining: dict[int, float] = {}
        self.rate: dict[int, float] = {}
        self.updated: dict[int, float] = {}
        self.weights: dict[int, tuple[float, ...]] = {}  # only the flows that have weights

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

    def add(self, fid: int, nbytes: float, cap: float, ports: tuple[str, ...], now: float,
            weights: tuple[float, ...] | None = None) -> None:
        if weights is not None:
            self.weights[fid] = weights
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
        self.weights.pop(fid, None)
        return sorted(neighbours)

    def rebalance(self, flows: list[int], now: float) -> list[int]:
        """Advance ``flows`` to ``now`` and give them max-min fair rates (progressive filling)."""
        for f in flows:
            self.remaining[f] = max(0.0, self.remaining[f] - self.rate[f] * (now - self.updated[f]))
            self.updated[f] = now
        weights = self.weights
        if weights and any(f in weights for f in flows):
            return self._weighted(flows)
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

    def weights_of(self, fid: int) -> tuple[float, ...]:
        return self.weights.get(fid) or (1.0,) * len(self.ports[fid])

    def _weighted(self, flows: list[int]) -> list[int]:
        """Progressive filling where a flow at rate r loads port p with r x its weight there: every
        unfrozen flow rises to the same level until a port's capacity left over the summed weights of
        its unfrozen flows, or a flow's own cap, stops it."""
        ports, cap, capacity = self.ports, self.cap, self.capacity
        unfrozen = set(flows)
        left: dict[str, float] = {}
        load: dict[str, float] = {}   # summed weights of the port's unfrozen flows
        users: dict[str, int] = {}    # how many there are (a float sum need not return to 0 exactly)
        for f in flows:
            for port, w in zip(ports[f], self.weights_of(f)):
                if port not in left:
                    left[port], load[port], users[port] = capacity.get(port, math.inf), 0.0, 0
                load[port] += w
                users[port] += 1
        while unfrozen:
            level = min(cap[f] for f in unfrozen)
            share: dict[str, float] = {}
            for port, count in users.items():
                if count:
                    s = share[port] = left[port] / load[port]
                    if s < level:
                        level = s
            frozen = [f for f in unfrozen if cap[f] <= level or any(share[p] <= level for p in ports[f])]
            for f in frozen:
                self.rate[f] = level
                unfrozen.discard(f)
                for port, w in zip(ports[f], self.weights_of(f)):
                    left[port] -= level * w
                    load[port] -= w
                    users[port] -= 1
        return flows


def event_loop(c: Compiled, port_capacity: dict[str, float], prefix: tuple[np.ndarray, np.ndarray, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[list], np.ndarray | None]:
    """The general engine: flows overlapping on a port share it max-min fairly.

    Each lane (a device's compute or communication stream) starts its next op when the op's
    producers have all delivered. An op's end delivers to its consumers: a remote one through a
    transfer (a flow, then the latency), a local one at once. A collective op is a flow over its
    ports followed by its latency. Events pop in (time, sequence) order; the sequence number makes
    ties first-come first-served. Pushes go in this order: deliver, maybe start the consumer's
    lane, then, after an op's consumers, start its own lane. With blocking sends
    (``Compiled.hold``) an op that sends keeps its lane until every send is delivered (a release
    event per send). A compute op with buckets among its consumers (``Compiled.early``) delivers to
    each, when it starts, an event at its end less the bucket's lead.
    ``prefix`` = (start, end, T) from the exact pass, T the first instant two bandwidth phases
    overlap (``passes.first_contention``), or earlier, before any op with buckets starts: every op, transfer and release before T is taken from
    it as final, what is in flight at T is re-created with its own start time, and the loop runs on
    from there; the times are those of the loop from 0, up to rounding.
    Returns (start and end as arrays, transfers as [src, dst, producer, consumer, start, end, nbytes],
    and the consumers, in id order, of the transfers delivered before the cut (None without ``prefix``):
    ``passes.transfer_records`` of the pass's ends gives their records).
    """
    n = len(c.actions)
    duration = c.duration
    state = None if prefix is None else resume_state(c, *prefix)
    # From a late cut (a run that contends only at its end, as data-parallel reductions do) only the
    # ops not started by then are counted, in dicts; per-op lists cost more there than the loop does,
    # and less than dicts (in time and memory) when most ops are still to run.
    if state is not None and 8 * len(state.unstarted) < n:
        op_lane: list[int] | LaneOf = LaneOf(c.lane_bounds)
        pending, consumers = consumer_lists(c, state.ended, state.unstarted)
        ready_at: list[float] | dict[int, float] = dict.fromkeys(pending, 0.0)
    else:
        op_lane = c.lane.tolist()
        pending, consumers = consumer_lists(c, None if state is None else state.ended)
        ready_at = [0.0] * n
    collective, early = c.collective, c.early
    lanes = c.num_lanes
    # From the cut, only the ops the loop runs get times: kept in dicts laid over the pass's arrays.
    start: list | dict = [math.nan] * n if state is None else {}
    end: list | dict = [math.nan] * n if state is None else {}
    pointer = c.lane_bounds[:lanes]  # lane k's next op id
    stop_at = c.lane_bounds[1:]
    lane_free = [0.0] * lanes
    running = [False] * lanes
    transfers: list[list] = []  # [src, dst, producer, consumer, start, end, nbytes]
    # (time, seq, 0 op end | 1 flow end | 2 lane release | 3 early delivery to a bucket, id)
    heap: list[tuple[float, int, int, int]] = []
    blocking = c.hold is not None
    sends = {o: sum(spec is not None for _, spec in cons) for o, cons in consumers.items()} if blocking else None
    no_consumers: tuple = ()
    holding = [0] * lanes  # blocking sends still in flight that keep lane k
    seq = 0
    next_flow = 0
    flows = Flows(port_capacity)
    rates, remaining, updated, by_port = flows.rate, flows.remaining, flows.updated, flows.by_port
    capacity_of = port_capacity.get
    flow_version: dict[int, int] = {}  # per active flow, the seq of its one live heap entry
    flow_owner: dict[int, tuple[int, float, int]] = {}  # flow -> (consumer or op, latency, transfer or -1)
    heappush, heappop = heapq.heappush, heapq.heappop
    isinf, inf, nan = math.isinf, math.inf, math.nan

    def reschedule(fids: list[int], now: float) -> None:
        nonlocal seq
        for f in flows.rebalance(fids, now):
            rate = rates[f]
            finish = now + (remaining[f] / rate if rate > 0 else inf)
            seq += 1
            flow_version[f] = seq
            heappush(heap, (finish, seq, 1, f))

    def start_flow(nbytes: float, bandwidth: float, ports: tuple, t: float, owner: tuple,
                   weights: tuple | None = None) -> None:
        """A new flow at ``t``; alone on its ports (the common case) it is priced without a rebalance."""
        nonlocal seq, next_flow
        fid = next_flow
        next_flow += 1
        flows.add(fid, nbytes, bandwidth, ports, t, weights)
        flow_owner[fid] = owner
        for port in ports:
            if len(by_port[port]) > 1:
                flow_version[fid] = 0
                reschedule(flows.component([fid]), t)
                return
        r = remaining[fid] = max(0.0, remaining[fid] - rates[fid] * (t - updated[fid]))
        updated[fid] = t
        rate = bandwidth
        if weights is None:
            for port in ports:
                rate = min(rate, capacity_of(port, inf))
        else:
            for port, w in zip(ports, weights):
                rate = min(rate, capacity_of(port, inf) / w)
        rates[fid] = rate
        seq += 1
        flow_version[fid] = seq
        heappush(heap, (t + (r / rate if rate > 0 else inf), seq, 1, fid))

    def try_start(k: int) -> None:
        nonlocal seq
        o = pointer[k]
        if running[k] or o >= stop_at[k]:
            return
        if pending[o]:
            return
        t0 = lane_free[k] if lane_free[k] > ready_at[o] else ready_at[o]
        start[o] = t0
        running[k] = True
        if collective and o in collective:
            nbytes, latency, bandwidth, ports, weights = collective[o]
            start_flow(nbytes, bandwidth, ports, t0, (o, latency, -1), weights)
            return
        seq += 1
        t1 = t0 + duration[o]
        heappush(heap, (t1, seq, 0, o))
        if early and o in early:  # buckets this op fills may start before it ends
            for consumer, lead in early[o]:
                seq += 1
                heappush(heap, (t1 - lead, seq, 3, consumer))

    def deliver(consumer: int, arrive: float) -> None:
        """One input of ``consumer`` is there at ``arrive``; its lane may start it once all are."""
        left = pending[consumer] - 1
        pending[consumer] = left
        if arrive > ready_at[consumer]:
            ready_at[consumer] = arrive
        if not left:
            try_start(op_lane[consumer])

    if state is not None:
        pointer[:], running[:] = state.pointer, state.running
        lane_free[:], holding[:] = state.lane_free, state.holding
        transfers.extend(state.transfers)
        for o, (count, latest) in state.delivered.items():
            pending[o] -= count
            if latest > ready_at[o]:
                ready_at[o] = latest
        for t, o in state.op_ends:
            seq += 1
            heappush(heap, (t, seq, 0, o))
        # Flows in flight at the cut had their ports to themselves: re-created from their own start,
        # earliest first (a flow added later advances the ones already there to its start).
        recreate = [(float(state.start[o]), 0, o, -1) for o in state.collective_flows]
        recreate += [(transfers[i][4], 1, e, i) for i, e in state.transfer_flows]
        for t, is_transfer, ident, i in sorted(recreate):
            if is_transfer:
                _, _, nbytes, latency, bandwidth, ports = c.edge_spec[ident]
                start_flow(nbytes, bandwidth, ports, t, (transfers[i][3], latency, i))
            else:
                nbytes, latency, bandwidth, ports, weights = collective[ident]
                start_flow(nbytes, bandwidth, ports, t, (ident, latency, -1), weights)
        for t, k in state.releases:
            seq += 1
            heappush(heap, (t, seq, 2, k))
    for k in range(lanes):
        try_start(k)
    while heap:
        t, pushed, kind, ident = heappop(heap)
        if kind == 0:
            end[ident] = t
            k = op_lane[ident]
            if blocking and sends.get(ident):
                holding[k] = sends[ident]  # released as the sends are delivered
            else:
                running[k] = False
                lane_free[k] = t
            pointer[k] += 1
            for consumer, spec in consumers.get(ident, no_consumers):
                if spec is not None:
                    src, dst, nbytes, latency, bandwidth, ports = spec
                    if not (nbytes <= 0 or (isinf(bandwidth) and not ports)):
                        transfers.append([src, dst, ident, consumer, t, nan, nbytes])
                        start_flow(nbytes, bandwidth, ports, t, (consumer, latency, len(transfers) - 1))
                        continue
                    transfers.append([src, dst, ident, consumer, t, t + latency, nbytes])
                    arrive = t + latency
                    if blocking:
                        seq += 1
                        heappush(heap, (arrive, seq, 2, k))
                else:
                    arrive = t
                # deliver(consumer, arrive) written out: this runs once per op and consumer
                left = pending[consumer] - 1
                pending[consumer] = left
                if arrive > ready_at[consumer]:
                    ready_at[consumer] = arrive
                if not left:
                    try_start(op_lane[consumer])
            try_start(k)
        elif kind == 1:
            fid = ident
            if flow_version.get(fid) != pushed:
                continue  # a stale finish time: the flow's rate changed since (only the latest push counts)
            target, latency, transfer = flow_owner.pop(fid)
            del flow_version[fid]
            neighbours = flows.remove(fid)
            if transfer < 0:
                # A collective's bytes are through: the op ends after its fixed latency.
                seq += 1
                heappush(heap, (t + latency, seq, 0, target))
            else:
                transfers[transfer][5] = t + latency
                deliver(target, t + latency)
                if blocking:
                    seq += 1
                    heappush(heap, (t + latency, seq, 2, op_lane[transfers[transfer][2]]))
            if neighbours:
                reschedule(flows.component(neighbours), t)
        elif kind == 2:
            holding[ident] -= 1
            if not holding[ident]:
                running[ident] = False
                lane_free[ident] = t
                try_start(ident)
        else:
            deliver(ident, t)  # a bucket's gradients are complete before their producer ends
    if state is None:
        return np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64), transfers, None
    start_arr, end_arr = state.start, state.end
    if start:
        start_arr[list(start)] = list(start.values())
    if end:
        end_arr[list(end)] = list(end.values())
    return start_arr, end_arr, transfers, state.done_consumers
