"""Timelines (simulated or measured) and the metrics read off them.

One format for both: the validator writes measured timelines in it, charts draw either kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .ir import Action
from .kinds import is_compute


class OpRecord(NamedTuple):
    device: int
    action: Action
    start: float
    end: float


class TransferRecord(NamedTuple):
    """A boundary tensor moving from ``src`` to ``dst``: produced by ``action``, consumed by ``consumer``."""

    src: int
    dst: int
    action: Action
    consumer: Action
    start: float
    end: float
    nbytes: float


@dataclass
class Timeline:
    num_devices: int
    ops: list[OpRecord]
    transfers: list[TransferRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_devices": self.num_devices,
            "meta": self.meta,
            "ops": [[o.device, str(o.action), o.start, o.end] for o in self.ops],
            "transfers": [
                [t.src, t.dst, str(t.action), str(t.consumer), t.start, t.end, t.nbytes] for t in self.transfers
            ],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Timeline":
        ops = [OpRecord(int(d), Action.parse(a), float(s), float(e)) for d, a, s, e in data["ops"]]
        transfers = [
            TransferRecord(int(s), int(d), Action.parse(a), Action.parse(c), float(t0), float(t1), float(n))
            for s, d, a, c, t0, t1, n in data.get("transfers", [])
        ]
        return Timeline(int(data["num_devices"]), ops, transfers, dict(data.get("meta", {})))


def iteration_time(timeline: Timeline) -> float:
    """Wall time from the first op's start to the last op's end."""
    if not timeline.ops:
        return 0.0
    return max(o.end for o in timeline.ops) - min(o.start for o in timeline.ops)


def busy_time(timeline: Timeline) -> list[float]:
    """Per device, the summed duration of its compute ops (communication ops overlap them)."""
    busy = [0.0] * timeline.num_devices
    for op in timeline.ops:
        if is_compute(op.action.kind):
            busy[op.device] += op.end - op.start
    return busy


def device_bubble_fractions(timeline: Timeline) -> list[float]:
    """Per device, 1 - busy / iteration time."""
    total = iteration_time(timeline)
    if total <= 0:
        return [0.0] * timeline.num_devices
    return [1.0 - b / total for b in busy_time(timeline)]


def bubble_fraction(timeline: Timeline) -> float:
    """1 - sum(busy) / (devices x iteration time): the idle share of all device time."""
    total = iteration_time(timeline)
    if total <= 0:
        return 0.0
    return 1.0 - sum(busy_time(timeline)) / (timeline.num_devices * total)


def device_spans(timeline: Timeline) -> list[float]:
    """Per device, from its first compute op's start to its last compute op's end (0 without any)."""
    first = [float("inf")] * timeline.num_devices
    last = [float("-inf")] * timeline.num_devices
    for op in timeline.ops:
        if is_compute(op.action.kind):
            first[op.device] = min(first[op.device], op.start)
            last[op.device] = max(last[op.device], op.end)
    return [b - a if b >= a else 0.0 for a, b in zip(first, last)]
