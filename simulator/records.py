"""A simulated timeline whose records are built the first time they are read.

A 1F1B iteration at p = 64, m = 1024 has 131,072 ops and 129,024 transfers: their records (a
tuple and two floats each) take a third of the time of simulating and reading them, and the
planner's search reads only the figures (iteration time, memory, fit), never the records.
``SimulatedTimeline`` keeps the engine's columns and builds ``ops``, and separately ``transfers``,
on first read; in every other respect it is a ``Timeline`` (equal to one holding the same
records, copied and pickled as one).
"""
from __future__ import annotations

from itertools import repeat
from typing import Callable

import numpy as np

from .passes import RECORD_CHUNK
from .paused_gc import paused_gc
from .timeline import OpRecord, Timeline, TransferRecord


class SimulatedTimeline(Timeline):
    """A ``Timeline`` whose ``ops`` and ``transfers`` come from builders, each called once, on first read."""

    def __init__(self, num_devices: int, meta: dict, build_ops: Callable[[], list],
                 build_transfers: Callable[[], list]):
        self.num_devices = num_devices
        self.meta = meta
        self._ops: list | None = None
        self._transfers: list | None = None
        self._build_ops: Callable[[], list] | None = build_ops
        self._build_transfers: Callable[[], list] | None = build_transfers

    @property
    def ops(self) -> list[OpRecord]:
        if self._ops is None:
            with paused_gc():
                self._ops, self._build_ops = self._build_ops(), None  # the builder's columns are let go
        return self._ops

    @ops.setter
    def ops(self, value: list[OpRecord]) -> None:
        self._ops, self._build_ops = value, None

    @property
    def transfers(self) -> list[TransferRecord]:
        if self._transfers is None:
            with paused_gc():
                self._transfers, self._build_transfers = self._build_transfers(), None
        return self._transfers

    @transfers.setter
    def transfers(self, value: list[TransferRecord]) -> None:
        self._transfers, self._build_transfers = value, None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline):
            return NotImplemented
        return ((self.num_devices, self.ops, self.transfers, self.meta)
                == (other.num_devices, other.ops, other.transfers, other.meta))

    __hash__ = None  # as Timeline's (a mutable dataclass)

    def __reduce__(self):
        return Timeline, (self.num_devices, self.ops, self.transfers, self.meta)


def op_records(device: np.ndarray, actions: list, start: np.ndarray, end: np.ndarray) -> list[OpRecord]:
    """One ``OpRecord`` per op id, from the columns (``RECORD_CHUNK`` at a time)."""
    records: list[OpRecord] = []
    for lo in range(0, len(actions), RECORD_CHUNK):
        hi = lo + RECORD_CHUNK
        records.extend(map(tuple.__new__, repeat(OpRecord), zip(device[lo:hi].tolist(), actions[lo:hi],
                                                                start[lo:hi].tolist(), end[lo:hi].tolist())))
    return records


def loop_transfer_records(actions: list, rows: list[list]) -> list[TransferRecord]:
    """``TransferRecord``s of the event loop's rows [src, dst, producer, consumer, start, end, nbytes]."""
    get = actions.__getitem__
    records: list[TransferRecord] = []
    for lo in range(0, len(rows), RECORD_CHUNK):
        src, dst, prod, cons, t0, t1, nb = zip(*rows[lo:lo + RECORD_CHUNK])
        records.extend(map(tuple.__new__, repeat(TransferRecord),
                           zip(src, dst, map(get, prod), map(get, cons), t0, t1, nb)))
    return records
