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


def workload(name: str, p: int, m: int, v: int, seed: int, mode: str) -> Workload:
    """Random per-stage costs; mode picks the network: private links, per-device ports, one shared bus."""
    rng = random.Random(seed)
    frozen = FROZEN.get((name, p, m, v))
    schedule = from_csv(frozen.read_text(), name) if frozen else build_schedule(name, p, m, v)
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
