"""``--iterations K`` and ``--synchronise``, shared by ``schedule`` and ``simulate``: back-to-back iterations."""
from __future__ import annotations

import argparse
from typing import Callable

from simulator.iterations import IterationsResult

from ..errors import SpecError
from .argtypes import count
from .output import fmt_pct


def add_iterations_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iterations", type=count, default=1, metavar="K",
                   help="also simulate K iterations back to back and report the steady-state time per "
                   "iteration, T_K - T_(K-1) (default 1: one isolated iteration only)")
    p.add_argument("--synchronise", action="store_true",
                   help="with --iterations: a synchronising optimizer step between iterations (a global "
                   "all-reduce, e.g. gradient clipping); by default each stage steps on its own right after "
                   "its last weight gradient (Zero Bubble's optimizer post-validation), so iterations overlap")


def check_iterations_arguments(args: argparse.Namespace) -> None:
    if args.iterations < 1:
        raise SpecError(f"--iterations: give at least 1 (got {args.iterations})")
    if args.synchronise and args.iterations < 2:
        raise SpecError("--synchronise: a synchronising step stands between iterations; give --iterations 2 or more")


def iterations_line(steady: IterationsResult, fmt: Callable[[float], str]) -> str:
    """One line: K iterations' total and the steady state, e.g. '3 iterations back to back, ...'."""
    how = "a synchronising optimizer step between them" if steady.synchronised else "no synchronising step"
    return (f"{steady.iterations} iterations back to back, {how}: {fmt(steady.ends[-1])} in all, steady state "
            f"{fmt(steady.steady_iteration_time)} per iteration, bubble {fmt_pct(steady.steady_bubble_fraction)}")
