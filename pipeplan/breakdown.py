"""Where an iteration's time and a device's memory go: communication by kind, memory by part.

**Communication** (``communication_breakdown``), per device and category, read off the timeline:

* ``pp``: point-to-point transfers of boundary tensors (``Timeline.transfers``) that the device
  sends or receives; a transfer occupies both ends.
* ``dp``: the device's communication-stream ops (``UNSHARD``, ``RESHARD``, ``REDUCE_GRAD``: the
  data-parallel parameter gathers and gradient reductions, see ``simulator.kinds``). A
  communication kind this module does not know lands in ``other``.
* ``tp``: the tensor-parallel collectives are inside the compute ops (they sit on the critical
  path of every block, Shoeybi et al. 2019), so the timeline has no interval for them; with
  tp > 1 their time is summed from the cost model per op (``tensor_parallel_times``), all of it
  exposed. At tp = 1 ``CommunicationBreakdown.tp`` is None and ``tp_note`` says why.

For a device d and a category, let U be the union of the category's intervals on d and C the
union of d's compute-op intervals (F, B, I, W). Then

    total      = |U|           (time during which at least one such communication is in flight)
    overlapped = |U ∩ C|       (hidden: the compute stream is busy meanwhile)
    exposed    = |U \\ C|       (the compute stream is idle meanwhile)

so exposed + overlapped = total. Using unions, two sends in flight together count once.
Exposed time includes the idle time a device would have had anyway (e.g. waiting in the
pipeline fill): it says when communication is *not hidden*, not how much shorter the iteration
would be without it.

**Memory** (``memory_breakdown``), per device at the moment of its simulated peak:

* weights, gradients, optimizer state: the device's static bytes as the lowering computed them
  (``Workload.static_bytes``), split in the proportions of Megatron's mixed-precision Adam
  (REFERENCE "Static bytes per parameter": 2 bf16 weights + 4 fp32 gradients + 12 optimizer bytes
  per parameter, the 12 divided by dp with a distributed optimizer; ``pipeplan.costs``);
* buffers: gathered parameters held at the peak (``StageCost.gathered_bytes``, from an UNSHARD
  to its RESHARD); pipeline receive buffers are not in the simulated memory, so not here either;
* activations: everything else the replay holds at the peak (activations stored by F, and the
  inputs W still needs after I).

The parts add up to ``SimResult.peak_memory`` (up to float rounding). The static split is done
here until the lowering reports its parts itself; then it should read them from there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from simulator.kinds import (BACKWARD_INPUT, FORWARD, FULL_BACKWARD, GATHER_PARAMS, REDUCE_GRAD, RESHARD, UNSHARD,
                             is_compute)
from simulator.memory import memory_events
from simulator.timeline import Timeline
from simulator.workload import Workload

from .cluster import LinkSpec
from .costs import Work, bytes_per_param, static_parts, tp_seconds_in_ops

# Which category each communication-stream kind belongs to; a new kind gets a line here.
COMM_CATEGORY = {UNSHARD: "dp", RESHARD: "dp", REDUCE_GRAD: "dp", GATHER_PARAMS: "dp"}
CATEGORIES = ("pp", "dp", "other")
TP_NOTE = "no tensor parallelism (tp = 1); with tp > 1 the collectives inside each op are summed"


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint intervals covering the same time as ``intervals`` (empty ones dropped)."""
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def length(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Length of the intersection of two sorted, disjoint interval lists (a two-pointer sweep)."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass(frozen=True)
class CommTime:
    """One category of communication on one device, in seconds (see the module docstring)."""

    total: float
    exposed: float
    overlapped: float

    def to_dict(self) -> dict:
        return {"total": self.total, "exposed": self.exposed, "overlapped": self.overlapped}


@dataclass(frozen=True)
class CommunicationBreakdown:
    """Per category (``pp``, ``dp``, ``other``) one ``CommTime`` per device; ``tp`` None (see ``tp_note``)."""

    pp: tuple[CommTime, ...]
    dp: tuple[CommTime, ...]
    other: tuple[CommTime, ...]
    tp: tuple[CommTime, ...] | None = None
    tp_note: str = TP_NOTE

    def category(self, name: str) -> tuple[CommTime, ...]:
        return getattr(self, name)

    def mean(self, name: str) -> CommTime:
        """The category's average over devices."""
        times = self.category(name)
        n = max(1, len(times))
        return CommTime(sum(t.total for t in times) / n, sum(t.exposed for t in times) / n,
                        sum(t.overlapped for t in times) / n)

    def to_dict(self) -> dict:
        data = {name: [t.to_dict() for t in self.category(name)] for name in CATEGORIES}
        data["tp"] = None if self.tp is None else [t.to_dict() for t in self.tp]
        data["tp_note"] = self.tp_note if self.tp is None else "inside the compute ops, all exposed"
        return data


def tensor_parallel_times(timeline: Timeline, works: Sequence[Work], tp_link: LinkSpec) -> tuple[CommTime, ...]:
    """Per device, the tensor-parallel collectives inside its ops (``costs.tp_seconds_in_ops`` of its
    stages' ``works``).

    They run on the compute stream, on each op's critical path (Megatron's TP all-reduces are
    synchronous), so all of that time is exposed.
    """
    in_op: dict[tuple[int, str], float] = {}
    for stage, work in enumerate(works):
        forward, backward = tp_seconds_in_ops(work, tp_link)
        in_op.update({(stage, FORWARD): forward, (stage, BACKWARD_INPUT): backward, (stage, FULL_BACKWARD): backward})
    totals = [0.0] * timeline.num_devices
    for op in timeline.ops:
        totals[op.device] += in_op.get((op.action.stage, op.action.kind), 0.0)
    return tuple(CommTime(t, t, 0.0) for t in totals)


def communication_breakdown(timeline: Timeline, tensor_parallel: tuple[Sequence[Work], LinkSpec] | None = None
                            ) -> CommunicationBreakdown:
    """Communication time per category and device of ``timeline``, exposed and overlapped; the
    tensor-parallel part when ``tensor_parallel`` = (the stages' works, the TP link) is given."""
    p = timeline.num_devices
    compute: list[list[tuple[float, float]]] = [[] for _ in range(p)]
    comm = {name: [[] for _ in range(p)] for name in CATEGORIES}
    for op in timeline.ops:
        if is_compute(op.action.kind):
            compute[op.device].append((op.start, op.end))
        else:
            comm[COMM_CATEGORY.get(op.action.kind, "other")][op.device].append((op.start, op.end))
    for t in timeline.transfers:
        comm["pp"][t.src].append((t.start, t.end))
        if t.dst != t.src:
            comm["pp"][t.dst].append((t.start, t.end))
    busy = [union(c) for c in compute]
    result = {}
    for name in CATEGORIES:
        times = []
        for d in range(p):
            u = union(comm[name][d])
            total, hidden = length(u), overlap(u, busy[d])
            times.append(CommTime(total, total - hidden, hidden))
        result[name] = tuple(times)
    if tensor_parallel is not None:
        result["tp"] = tensor_parallel_times(timeline, *tensor_parallel)
    return CommunicationBreakdown(**result)


@dataclass(frozen=True)
class MemoryParts:
    """One device's memory at its simulated peak, in bytes (see the module docstring)."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.buffers

    def to_dict(self) -> dict:
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer,
                "activations": self.activations, "buffers": self.buffers, "total": self.total}


def split_static(static: float, dp: int, distributed_optimizer: bool) -> tuple[float, float, float]:
    """(weights, grads, optimizer) bytes of ``static`` bytes of weights, gradients and optimizer state."""
    weights, grads, _ = static_parts(static / bytes_per_param(dp, distributed_optimizer), dp, distributed_optimizer)
    return weights, grads, static - weights - grads  # the parts add up to the replayed static bytes exactly


def memory_levels(timeline: Timeline, workload: Workload, start: Sequence[float]) -> list[list[float]]:
    """Per device, the memory level after each event of ``simulator.memory.memory_events`` (the workload's
    pass classes and forward-only releases included)."""
    out = []
    for d, events in enumerate(memory_events(timeline, workload)):
        level, levels = start[d], [start[d]]
        for _, delta in events:
            level += delta
            levels.append(level)
        out.append(levels)
    return out


def memory_breakdown(timeline: Timeline, workload: Workload, dp: int,
                     distributed_optimizer: bool) -> tuple[MemoryParts, ...]:
    """Per device, its peak memory split into parts (see the module docstring).

    The replay is ``simulator.memory``'s (same events, same order). Replaying a second time with
    the stages' ``gathered_bytes`` set to 0 gives, at the peak's event, the bytes that are not
    gathered parameters; events sort by time and op position only, so both replays align.
    """
    p = timeline.num_devices
    static = list(workload.static_bytes) or [0.0] * p
    full = memory_levels(timeline, workload, static)
    bare = replace(workload, stages=tuple(replace(c, gathered_bytes=0.0) for c in workload.stages))
    without_buffers = memory_levels(timeline, bare, [0.0] * p)
    parts = []
    for d in range(p):
        peak_at = max(range(len(full[d])), key=full[d].__getitem__)
        activations = without_buffers[d][peak_at]
        buffers = full[d][peak_at] - static[d] - activations
        parts.append(MemoryParts(*split_static(static[d], dp, distributed_optimizer), activations, buffers))
    return tuple(parts)
