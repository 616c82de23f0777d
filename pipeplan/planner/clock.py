"""The planner's one wall clock, ``time.perf_counter`` read through ``now``: deadlines (``--time-limit``) are
checked against it, so a test can drive a search past its deadline with a clock of its own; and ``Pace``, how
long the search's simulations take per op, so that past a fitting plan no simulation starts that would run
far past the deadline (a 1008B plan, 196,608 ops of ZB-V ordered by its costs, takes 7 s and cannot be
interrupted)."""
from __future__ import annotations

import time


def now() -> float:
    """Seconds on the planner's clock (only differences mean anything)."""
    return time.perf_counter()


MIN_OPS = 1_000  # smaller simulations are mostly fixed costs: they say little about the time of larger ones


class Pace:
    """The most seconds per op any simulation of at least ``MIN_OPS`` ops of this search took so far (the
    pessimistic estimate of the next one's time), and whether the deadline has cut any work (``cut``); one
    object shared by every request of a search."""

    def __init__(self) -> None:
        self.per_op = 0.0
        self.cut = False

    def record(self, ops: int, seconds: float) -> None:
        if ops >= MIN_OPS:
            self.per_op = max(self.per_op, seconds / ops)

    def ends_after(self, ops: int, deadline: float) -> bool:
        """A simulation of ``ops`` ops started now would end after ``deadline``, at this pace."""
        return now() + self.per_op * ops > deadline
