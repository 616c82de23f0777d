"""Bucketed collectives in the engine's columns: one op per bucket, and how early each may start.

A ``Collective`` with ``buckets`` (``simulator.workload``) is one action of the schedule that the
columns hold as one op per bucket, one after another on its stream (``bucket_copies``). A bucket
ready ``ready`` of the way through its compute-stream producer waits for that producer's end less
(1 - ready) x the producer's time (``bucket_leads``): its wait's delay is minus that lead, and the
producer lists it as an early consumer, which the event loop delivers to when the producer starts.
"""
from __future__ import annotations

import numpy as np

from .kinds import BY_CODE, COMM, NUM_COMPUTE
from .workload import Workload


def bucket_copies(workload: Workload, actions: list, code: np.ndarray) -> tuple[np.ndarray, dict[int, tuple]] | None:
    """Each action whose collective has buckets (``Collective.buckets``) written once per bucket: the
    index of the action every op copies, and per op id of those copies (``Bucket``, its index); None
    when no action is bucketed."""
    stages = workload.stages
    bucketed = {(s, rule.name): c.buckets for s, cost in enumerate(stages) for rule in BY_CODE
                if rule.stream == COMM and (c := cost.collective(rule.name)) is not None and c.buckets}
    if not bucketed:
        return None
    repeats = np.ones(len(actions), dtype=np.int64)
    found: dict[int, tuple] = {}
    for o in np.nonzero(code >= NUM_COMPUTE)[0].tolist():
        a = actions[o]
        buckets = bucketed.get((a.stage, a.kind)) if a.microbatch is None else None
        if buckets is not None:
            repeats[o], found[o] = len(buckets), buckets
    if not found:
        return None
    copies = np.repeat(np.arange(len(actions), dtype=np.int64), repeats)
    first = np.cumsum(repeats) - repeats  # where each action's first copy lands
    bucket_of = {int(first[o]) + i: (bucket, i) for o, buckets in found.items() for i, bucket in enumerate(buckets)}
    return copies, bucket_of


def bucket_leads(bucket_of: dict, waits: dict | None, lane: np.ndarray, on_compute: np.ndarray,
                  duration: list[float]) -> dict[int, list[tuple[int, float]]]:
    """A bucket ready ``ready`` of the way through its compute-stream producer may start
    (1 - ready) x the producer's time before that producer ends: its wait's delay becomes minus
    that lead, and the producer lists it as an early consumer (for the event loop)."""
    early: dict[int, list[tuple[int, float]]] = {}
    for o, (bucket, _) in bucket_of.items():
        if bucket.ready >= 1 or not waits or o not in waits:
            continue
        row = waits[o]
        for j, (prod, delay) in enumerate(row):
            if on_compute[prod] and lane[prod] // 2 == lane[o] // 2 and delay == 0.0:
                lead = (1.0 - bucket.ready) * duration[prod]
                if lead > 0:
                    row[j] = (prod, -lead)
                    early.setdefault(prod, []).append((o, lead))
    return early
