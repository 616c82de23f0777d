"""Regenerate tests/data/sim_reference.json: full simulate() results of small workloads.

The stored file was written by the engine as of commit d16d213, before the speed work (run this
script with that commit's simulator/ first on sys.path); tests/test_engine_reference.py then
demands the engine reproduce every float bit for bit. Regenerate only for an intended change.
Run: python tests/make_sim_reference.py
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator import Link, Network, StageCost, Workload, build_schedule, from_csv, simulate  # noqa: E402

PATH = Path(__file__).parent / "data" / "sim_reference.json"
# The reference pins the engine, not the generators: schedules whose order has changed since it was
# written are read back in their old order (zb-v's unit-time list schedule, before it was built from costs).
FROZEN = {("zb-v", 3, 6, 2): Path(__file__).parent / "data" / "zb_v_unit_p3_m6.csv"}
MODES = ("private", "ports", "bus", "ints")

CASES = [("gpipe", 4, 6, 1), ("1f1b", 4, 8, 1), ("1f1b", 5, 3, 1), ("interleaved", 4, 8, 2),
         ("interleaved", 3, 6, 3), ("zb-h1", 4, 7, 1), ("zb-h2", 4, 8, 1), ("zb-v", 3, 6, 2), ("1f1b", 1, 3, 1)]

# Orders the stored results were computed on where a generator has since changed its order: the
# reference pins the engine, not the generator. zb-h2 (4, 8) as generated before it became the
# paper's hand-crafted ZB-H2 (device r then deferred at most r + 1 weight passes).
FROZEN_ORDERS = {
    ("zb-h2", 4, 8, 1): (
        "0F0,0F1,0F2,0F3,0F4,0F5,0F6,0I0,0F7,0I1,0W0,0I2,0W1,0I3,0W2,0I4,0W3,0I5,0W4,0I6,0W5,0I7,0W6,0W7\n"
        "1F0,1F1,1F2,1F3,1F4,1I0,1F5,1I1,1F6,1I2,1W0,1F7,1I3,1W1,1I4,1W2,1I5,1W3,1I6,1W4,1I7,1W5,1W6,1W7\n"
        "2F0,2F1,2F2,2I0,2F3,2I1,2F4,2I2,2F5,2I3,2W0,2F6,2I4,2W1,2F7,2I5,2W2,2I6,2W3,2I7,2W4,2W5,2W6,2W7\n"
        "3F0,3I0,3F1,3I1,3F2,3I2,3F3,3I3,3F4,3I4,3W0,3F5,3I5,3W1,3F6,3I6,3W2,3F7,3I7,3W3,3W4,3W5,3W6,3W7\n"
    ),
}


def reference_schedule(name: str, p: int, m: int, v: int):
    """The schedule a reference case runs: its frozen order if it has one, else the generator's."""
    if (name, p, m, v) in FROZEN:
        return from_csv(FROZEN[(name, p, m, v)].read_text(), name)
    frozen = FROZEN_ORDERS.get((name, p, m, v))
    return from_csv(frozen, name) if frozen else build_schedule(name, p, m, v)


def workload(name: str, p: int, m: int, v: int, seed: int, mode: str) -> Workload:
    """Random per-stage costs; mode picks the network: private links, per-device ports, one shared bus."""
    rng = random.Random(seed)
    schedule = reference_schedule(name, p, m, v)
    stages = []
    for _ in range(schedule.num_stages):
        act = rng.uniform(1, 100)
        stages.append(StageCost(rng.uniform(0, 3), rng.uniform(0, 3), rng.uniform(0, 3),
                                backward=rng.choice([None, rng.uniform(0, 5)]),
                                send_forward_bytes=rng.choice([0.0, rng.uniform(0, 1e6)]),
                                send_backward_bytes=rng.uniform(0, 1e6), activation_bytes=act,
                                weight_grad_bytes=act * rng.uniform(0, 1)))
    bandwidth = rng.uniform(1e5, 1e7)
    latency = rng.uniform(0, 0.3)
    if mode == "ints":
        # Whole numbers as Python ints: the memory curves stay ints, as the old loop made them.
        stages = [StageCost(rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 3),
                            send_forward_bytes=rng.randint(0, 9), send_backward_bytes=rng.randint(1, 9),
                            activation_bytes=rng.randint(1, 9), weight_grad_bytes=0)
                  for _ in range(schedule.num_stages)]
        links = tuple(tuple(Link(rng.randint(0, 2), 4, ("bus",)) for _ in range(p)) for _ in range(p))
        return Workload(schedule, tuple(stages), Network(links, {"bus": 4}), static_bytes=tuple(range(p)))
    if mode == "private":
        links = tuple(tuple(Link(latency, bandwidth) for _ in range(p)) for _ in range(p))
        ports: dict[str, float] = {}
    elif mode == "ports":
        links = tuple(tuple(Link(latency, bandwidth, (f"out{a}", f"in{b}")) for b in range(p)) for a in range(p))
        ports = {f"{d}{k}": bandwidth * rng.uniform(0.5, 2) for k in range(p) for d in ("out", "in")}
    else:
        links = tuple(tuple(Link(latency, bandwidth, ("bus",)) for _ in range(p)) for _ in range(p))
        ports = {"bus": bandwidth}
    static = tuple(rng.uniform(0, 50) for _ in range(p))
    capacity = tuple(rng.choice([math.inf, rng.uniform(50, 500)]) for _ in range(p))
    return Workload(schedule, tuple(stages), Network(links, ports), static_bytes=static, capacity_bytes=capacity)


def result_dict(result) -> dict:
    data = result.summary()
    for key in ("device_span", "span_bubble_fraction"):  # figures added after the reference was stored
        data.pop(key, None)
    data["timeline"] = result.timeline.to_dict()
    data["memory"] = [[list(t), list(level)] for t, level in result.memory]
    return data


def all_results() -> list[dict]:
    out = []
    for seed, (name, p, m, v) in enumerate(CASES):
        for mode in MODES:
            for force in (False, True):
                w = workload(name, p, m, v, seed, mode)
                out.append({"case": [name, p, m, v, seed, mode, force],
                            "result": result_dict(simulate(w, force_event_loop=force))})
    return out


if __name__ == "__main__":
    PATH.write_text(json.dumps(all_results()))
    print(f"wrote {PATH}")
