"""The planner's one wall clock, ``time.perf_counter`` read through ``now``: deadlines (``--time-limit``) are
checked against it, so a test can drive a search past its deadline with a clock of its own."""
from __future__ import annotations

import time


def now() -> float:
    """Seconds on the planner's clock (only differences mean anything)."""
    return time.perf_counter()
