"""A plain, slow re-implementation of the engine's semantics, written for reading, as a test oracle.

With ``Workload.blocking_sends`` an op that sends keeps its stream until every send is delivered.

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
    """Max-min fair rates by progressive filling, recomputed from nothing."""
    unfrozen = list(flows)
    left = {port: capacity.get(port, math.inf) for f in flows for port in f["ports"]}
    while unfrozen:
        users = {port: sum(port in f["ports"] for f in unfrozen) for port in left}
        level = min(min(f["cap"] for f in unfrozen),
                    min((left[p] / n for p, n in users.items() if n), default=math.inf))
        done = [f for f in unfrozen if f["cap"] <= level or any(left[p] / users[p] <= level for p in f["ports"])]
        for f in done:
            f["rate"] = level
            unfrozen.remove(f)
            for port in f["ports"]:
                left[port] -= level


def oracle_times(workload) -> tuple[dict, list[tuple]]:
    """({action: (start, end)}, sorted transfers as (src, dst, producer, consumer, start, end))."""
    schedule, network, stages = workload.schedule, workload.network, workload.stages
    index = ActionIndex.of(schedule)
    device_of = {a: d for d in range(schedule.num_devices) for a in schedule.simulated_actions(d)}
    inputs = {a: producers_of(a, index) for a in device_of}
    lanes = []
    for d in range(schedule.num_devices):
        for stream in ("compute", "comm"):
            lanes.append([a for a in schedule.simulated_actions(d) if KINDS[a.kind].stream == stream])
    lane_of = {a: k for k, lane in enumerate(lanes) for a in lane}
    held: dict = {}  # blocking sends: the sends of an op still in flight
    pointer = [0] * len(lanes)
    lane_free = [0.0] * len(lanes)
    running: dict = {}        # action -> end time (math.nan while a collective's bytes move)
    arrived: dict = {}        # (producer, consumer) -> arrival time
    times: dict = {}
    transfers: list[tuple] = []
    flows: list[dict] = []
    latency_phase: list[tuple[float, dict]] = []
    now = 0.0

    def duration(a) -> float:
        rule = KINDS[a.kind]
        if rule.duration is not None:
            return rule.duration(stages[a.stage])
        c = stages[a.stage].collective(a.kind)
        return 0.0 if c is None else c.seconds(network.port_capacity)

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

    def begin(item: dict, nbytes: float, cap: float, ports: tuple, latency: float) -> None:
        rate = min([cap] + [network.port_capacity.get(p, math.inf) for p in ports])
        if nbytes <= 0 or math.isinf(rate):
            latency_phase.append((now + latency, item))
        else:
            flows.append({**item, "left": nbytes, "total": nbytes, "cap": cap, "ports": ports, "latency": latency, "rate": 0.0})

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
            for a, t in list(running.items()):
                if t == t and t <= now:  # ended (nan: a collective still moving bytes)
                    del running[a]
                    changed = True
                    deliver(a)
            for k, lane in enumerate(lanes):
                if pointer[k] >= len(lane) or lane_free[k] > now:
                    continue
                a = lane[pointer[k]]
                if any(arrived.get((dep.producer, a), math.inf) > now for dep in inputs[a]):
                    continue
                pointer[k] += 1
                changed = True
                c = stages[a.stage].collective(a.kind) if KINDS[a.kind].duration is None else None
                if c is not None and c.nbytes > 0 and not math.isinf(c.path.rate(network.port_capacity)):
                    times[a] = (now, math.nan)
                    running[a] = math.nan
                    lane_free[k] = math.inf
                    begin({"what": "op", "key": a, "lane": k}, c.nbytes, c.path.bandwidth, c.path.ports,
                          c.path.latency)
                else:
                    times[a] = (now, now + duration(a))
                    running[a] = now + duration(a)
                    lane_free[k] = now + duration(a)

    def deliver(a) -> None:
        remote = [c for c in consumers[a] if device_of[c] != device_of[a]]
        if workload.blocking_sends and remote:
            held[a] = len(remote)  # the lane waits for every send to be delivered
            lane_free[lane_of[a]] = math.inf
        for consumer in consumers[a]:
            src, dst = device_of[a], device_of[consumer]
            if src == dst:
                arrived[(a, consumer)] = now
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
        if len(times) == len(device_of) and not running and not flows and not latency_phase:
            break
        _fair_rates(flows, network.port_capacity)
        finishes = [now + f["left"] / f["rate"] if f["rate"] > 0 else math.inf for f in flows]
        candidates = [t for t in running.values() if t > now] + [t for t, _ in latency_phase] + finishes
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
