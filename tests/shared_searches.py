"""Planner searches that more than one test module checks, run once per test session (tens of seconds each)."""
import functools

import pipeplan


@functools.cache
def llama3_8b_on_one_dgx_h100(schedules: tuple[str, ...] | None):
    """``optimize`` on the issue's case: llama3-8b, pp = 8 on one DGX H100, global batch 64, 1 s per CP-SAT
    solve, over ``schedules`` (None: the default set)."""
    return pipeplan.optimize("llama3-8b", "dgx-h100", global_batch=64, pp=8,
                             schedules=list(schedules) if schedules is not None else None, solver_time_limit=1.0)
