"""A plain, slow re-implementation of the engine's semantics, written for reading, as a test oracle.

With ``Workload.blocking_sends`` an op that sends keeps its stream until every send is delivered.
A collective with ``weights`` loads port i with its rate x weights[i]. A collective with
``buckets`` runs as one op per bucket, keyed (action, bucket index); a bucket ready ``ready`` of
the way through its compute producer may start that far into it; consumers of the action wait
for its last bucket.

Time advances from event to event. At each instant: every stream whose next action has all its
inputs starts it; the flows in progress get max-min fair rates from scratch (progressive filling);
the clock moves to the earliest op end, flow completion or arrival. It shares only the dependency
rules (``simulator.deps.producers_of``, per action) and the kind table with the engine, nothing of
its columns, passes or event loop. Results agree with the engine's to rounding (not bit for bit).
"""
from __future__ import annotations

import math

from simulator.deps import ActionIndex, producers_of
from simulator.kinds import KINDS


def _fair_rates(flows: list[dict], capacity: dict[str, float]) -> None:
    """Max-min fair rates by progressive filling, recomputed from nothing; a flow at rate r loads
    port p with r x its weight there."""
    unfrozen = list(flows)
    left = {port: capacity.get(port, math.inf) for f in flows for port in f["ports"]}
    while unfrozen:
        load = {port: sum(f["weights"][i] for f in unfrozen for i, q in enumerate(f["ports"]) if q == port)
                for port in left}
        users = {port: sum(port in f["ports"] for f in unfrozen) for port in left}
        level = min(min(f["cap"] for f in unfrozen),
                    min((left[p] / load[p] for p, n in users.items() if n), default=math.inf))
        done = [f for f in unfrozen if f["cap"] <= level or any(left[p] / load[p] <= level for p in f["ports"])]
        for f in done:
            f["rate"] = level
            unfrozen.remove(f)
            for port, weight in zip(f["ports"], f["weights"]):
                left[port] -= level * weight


def oracle_times(workload) -> tuple[dict, list[tuple]]:
    """({op: (start, end)}, sorted transfers as (src, dst, producer, consumer, start, end)); an op is
    its action, or (action, bucket index) for the buckets of a bucketed collective."""
    schedule, network, stages = workload.schedule, workload.network, workload.stages
    index = ActionIndex.of(schedule)
    device_of = {a: d for d in range(schedule.num_devices) for a in schedule.simulated_actions(d)}
    inputs = {a: producers_of(a, index) for a in device_of}

    def collective(a):
        return stages[a.stage].collective(a.kind) if KINDS[a.kind].duration is None else None

    def parts(a):
        c = collective(a)
        return [(a, i) for i in range(len(c.buckets))] if c is not None and c.buckets else [a]

    def action(op):
        return op[0] if isinstance(op, tuple) and len(op) == 2 and isinstance(op[1], int) else op

    lanes = []
    for d in range(schedule.num_devices):
        for stream in ("compute", "comm"):
            lanes.append([op for a in schedule.simulated_actions(d) if KINDS[a.kind].stream == stream
                          for op in parts(a)])
    lane_of = {op: k for k, lane in enumerate(lanes) for op in lane}
    last_part = {action(op): op for lane in lanes for op in lane}  # consumers wait for the last bucket
    # compute producer -> [(bucket op, ready)]: buckets that may start before the producer ends
    early: dict = {}
    for op in lane_of:
        if op is not action(op):
            bucket = collective(action(op)).buckets[op[1]]
            for dep in inputs[action(op)]:
                if bucket.ready < 1 and KINDS[dep.producer.kind].stream == "compute" \
                        and device_of[dep.producer] == device_of[action(op)]:
                    early.setdefault(dep.producer, []).append((op, bucket.ready))
    held: dict = {}  # blocking sends: the sends of an op still in flight
    pointer = [0] * len(lanes)
    lane_free = [0.0] * len(lanes)
    running: dict = {}        # op -> end time (math.nan while a collective's bytes move)
    arrived: dict = {}        # (producer action, consumer op) -> arrival time
    times: dict = {}
    transfers: list[tuple] = []
    flows: list[dict] = []
    latency_phase: list[tuple[float, dict]] = []
    now = 0.0

    def share(op) -> float:
        return 1.0 if op is action(op) else collective(action(op)).buckets[op[1]].share

    def duration(op) -> float:
        a = action(op)
        rule = KINDS[a.kind]
        if rule.duration is not None:
            return rule.duration(stages[a.stage])
        c = collective(a)
        return 0.0 if c is None else c.seconds(network.port_capacity, share(op))

    def finish(item: dict, t: float) -> None:
        if item["what"] == "transfer":
            arrived[item["key"]] = t
            transfers.append((*item["record"], t))
            producer = item["key"][0]
            if producer in held:
                held[producer] -= 1
                if not held[producer]:
                    del held[producer]
                    lane_free[lane_of[producer]] = t
        else:
            times[item["key"]] = (times[item["key"]][0], t)
            running[item["key"]] = t

    def begin(item: dict, nbytes: float, cap: float, ports: tuple, latency: float, weights=()) -> None:
        weights = tuple(weights) or (1.0,) * len(ports)
        rate = min([cap] + [network.port_capacity.get(p, math.inf) / w for p, w in zip(ports, weights)])
        if nbytes <= 0 or math.isinf(rate):
            latency_phase.append((now + latency, item))
        else:
            flows.append({**item, "left": nbytes, "total": nbytes, "cap": cap, "ports": ports, "weights": weights,
                          "latency": latency, "rate": 0.0})

    def settle() -> None:
        """Everything that happens at ``now``: ends, arrivals, then starts, until nothing changes."""
        changed = True
        while changed:
            changed = False
            for t, item in list(latency_phase):
                if t <= now:
                    latency_phase.remove((t, item))
                    if item["what"] == "op":
                        lane_free[item["lane"]] = now
                    finish(item, now)
                    changed = True
            for op, t in list(running.items()):
                if t == t and t <= now:  # ended (nan: a collective still moving bytes)
                    del running[op]
                    changed = True
                    if last_part[action(op)] == op:
                        deliver(action(op))
            for k, lane in enumerate(lanes):
                if pointer[k] >= len(lane) or lane_free[k] > now:
                    continue
                op = lane[pointer[k]]
                a = action(op)
                if any(arrived.get((dep.producer, op), math.inf) > now for dep in inputs[a]):
                    continue
                pointer[k] += 1
                changed = True
                c = collective(a)
                if c is not None and c.nbytes > 0 and not math.isinf(c.rate(network.port_capacity)):
                    times[op] = (now, math.nan)
                    running[op] = math.nan
                    lane_free[k] = math.inf
                    begin({"what": "op", "key": op, "lane": k}, c.nbytes * share(op), c.path.bandwidth,
                          c.path.ports, c.path.latency, c.weights)
                else:
                    times[op] = (now, now + duration(op))
                    running[op] = now + duration(op)
                    lane_free[k] = now + duration(op)
                    for bucket, ready in early.get(a, ()):
                        arrived[(a, bucket)] = now + duration(op) - (1 - ready) * duration(op)

    def deliver(a) -> None:
        remote = [c for c in consumers[a] if device_of[c] != device_of[a]]
        if workload.blocking_sends and remote:
            held[a] = len(remote)  # the lane waits for every send to be delivered
            lane_free[lane_of[a]] = math.inf
        for consumer in consumers[a]:
            src, dst = device_of[a], device_of[consumer]
            if src == dst:
                for op in parts(consumer):
                    arrived.setdefault((a, op), now)  # an early bucket has its arrival already
                continue
            direction = next(d.direction for d in inputs[consumer] if d.producer == a)
            cost = stages[a.stage]
            nbytes = cost.send_forward_bytes if direction == "fwd" else cost.send_backward_bytes
            link = network.link(src, dst)
            record = (src, dst, str(a), str(consumer), now)
            begin({"what": "transfer", "key": (a, consumer), "record": record},
                  nbytes, link.bandwidth, link.ports, link.latency)

    consumers = {a: [b for b in device_of if any(d.producer == a for d in inputs[b])] for a in device_of}
    while True:
        settle()
        if len(times) == len(lane_of) and not running and not flows and not latency_phase:
            break
        _fair_rates(flows, network.port_capacity)
        finishes = [now + f["left"] / f["rate"] if f["rate"] > 0 else math.inf for f in flows]
        candidates = [t for t in running.values() if t > now] + [t for t, _ in latency_phase] + finishes
        candidates += [t for t in arrived.values() if t > now]
        if not candidates or min(candidates) == math.inf:
            raise RuntimeError("the oracle is stuck: a wait cycle")
        then = min(candidates)
        for f, finish_at in zip(list(flows), finishes):
            f["left"] -= f["rate"] * (then - now)
            if finish_at <= then:  # through (its finish rounds to this instant)
                flows.remove(f)
                latency_phase.append((then + f["latency"], f))
        now = then
    return times, sorted(transfers)
