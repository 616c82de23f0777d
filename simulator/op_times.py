"""Each op's time in the engine's columns: compute kinds from their stage's cost, communication kinds
from their collective (a bucket from its share of the bytes), an overlapped pair from its rule."""
from __future__ import annotations

import math

import numpy as np

from .ir import ScheduleError
from .kinds import BY_CODE, COMPOSITES, NUM_COMPUTE
from .workload import Workload


def op_durations(workload: Workload, stage: np.ndarray, cost_index: np.ndarray, code: np.ndarray, has_comm: bool,
                 bucket_of: dict) -> tuple[list[float], dict[int, tuple]]:
    """Per op its time: compute kinds from its row of ``Workload.cost_table`` (``cost_index``: its stage's,
    or its pass class's), communication kinds from its stage's collective (a bucket's from its share of
    the bytes, ``bucket_of``: op -> (``Bucket``, its index))."""
    capacity = workload.network.port_capacity
    rows = []
    compute_rules = BY_CODE[:NUM_COMPUTE]
    for cost in workload.cost_table():
        row = [rule.duration(cost) for rule in compute_rules]
        for rule in BY_CODE[NUM_COMPUTE:]:
            if rule.duration is not None:  # a per-stage compute kind (OPTIMIZER) times itself
                row.append(rule.duration(cost) if has_comm else 0.0)
                continue
            collective = cost.collective(rule.name) if has_comm else None
            row.append(collective.seconds(capacity) if collective is not None else 0.0)
        rows.append(row)
    try:
        per_kind = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScheduleError("stages: every op time must be a number of seconds") from None
    cell = cost_index * per_kind.shape[1] + code  # each op's (cost row, kind) in the flattened table
    duration = per_kind.reshape(-1)[cell]
    bad = np.nonzero(~(duration >= 0))[0]
    if len(bad):
        o = int(bad[0])
        raise ScheduleError(f"stages[{int(stage[o])}]: the time of {BY_CODE[int(code[o])].name} is "
                            f"{duration[o]!r}; op times must be finite numbers >= 0")
    collective: dict[int, tuple] = {}
    per_stage: dict[tuple, tuple | None] = {}  # a collective crosses hundreds of ports: rate it once
    # The list shares one float object per distinct (cost row, kind) instead of making one per op.
    times = np.array(per_kind.reshape(-1).tolist(), dtype=object)[cell].tolist()
    for o in (np.nonzero(code >= NUM_COMPUTE)[0].tolist() if has_comm else ()):
        bucket = bucket_of.get(o)
        key = (int(stage[o]), int(code[o]), None if bucket is None else bucket[1])
        if key not in per_stage:
            rule = BY_CODE[key[1]]
            c = workload.stages[key[0]].collective(rule.name) if rule.duration is None else None
            timed = c is not None and c.nbytes > 0 and not math.isinf(c.rate(capacity))
            per_stage[key] = None
            if timed:
                nbytes = c.nbytes if bucket is None else c.nbytes * bucket[0].share
                per_stage[key] = (nbytes, c.path.latency, c.path.bandwidth, c.path.ports, c.weights or None)
            if bucket is not None:
                per_stage[key, "seconds"] = c.seconds(capacity, bucket[0].share)
        if bucket is not None and (key, "seconds") in per_stage:
            times[o] = per_stage[key, "seconds"]
        if per_stage[key] is not None:
            collective[o] = per_stage[key]
    return times, collective


def time_overlaps(workload: Workload, actions: list, duration: list[float]) -> None:
    """Each overlapped pair's first part takes the pair's time (``kinds.COMPOSITE_TABLE``), its other parts none."""
    where = {a: o for o, a in enumerate(actions)}
    for pair in workload.schedule.overlaps():
        first, last = pair.parts[0], pair.parts[-1]
        seconds = COMPOSITES[pair.kind].duration(workload.stages[first.stage], workload.stages[last.stage])
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ScheduleError(f"stages[{first.stage}]: the time of {pair} is {seconds!r}; op times must be "
                                "finite numbers >= 0")
        for part in pair.parts:
            if part in where:
                duration[where[part]] = seconds if part == first else 0.0
