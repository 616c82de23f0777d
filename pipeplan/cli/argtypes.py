"""argparse types for the numbers the subcommands take, so a bad number is refused as it is parsed.

A count is a whole number >= 1: no count flag takes 0 (or less) to mean "the default"; leaving
the flag out is the default. Counts large enough to matter for the work are sized later by
``pipeplan.limits`` (with the limit and how to raise it); here only their form and the value
ranges are checked. argparse puts the flag's name in front of the message and exits 2:
``pipeplan schedule: error: argument --devices/-p: must be a whole number >= 1 (got '0')``.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from ..limits import MAX_SECONDS, RANGES


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:  # "1e20", "2.5", "x", and more digits than Python converts
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 (got {text!r})") from None


def count(text: str) -> int:
    """A whole number >= 1 (devices, micro-batches, chunks, iterations, replicas ...)."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 (got {text!r}); leave the flag out for "
                                         "its default")
    return value


def bounded_count(kind: str) -> Callable[[str], int]:
    """A count within ``limits.RANGES[kind]`` (a micro-batch size, a sequence length, a global batch)."""
    r = RANGES[kind]

    def parse(text: str) -> int:
        value = count(text)
        if value > r.high:
            raise argparse.ArgumentTypeError(f"must be at most {int(r.high):,}{' ' + r.unit if r.unit else ''} "
                                             f"(got {text!r})")
        return value

    parse.__name__ = kind
    return parse


def duration(text: str) -> float:
    """A time of ``pipeplan schedule``'s synthetic costs: 0, or within ``limits.RANGES["time"]``."""
    r = RANGES["time"]
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
    if not (value == 0 or (math.isfinite(value) and r.low <= value <= r.high)):
        raise argparse.ArgumentTypeError(f"must be {r.text()} (got {text!r}): outside that, sums of op times "
                                         "overflow or lose every digit")
    return value


def seconds(text: str) -> float:
    """A time budget in seconds: finite, > 0 and at most ``limits.MAX_SECONDS`` (a week). "inf" is not
    "no limit" (leave the flag out for that) and "nan" would make every solve give up at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_SECONDS:.0f}] (a week) "
                                         f"(got {text!r})")
    return value


def share(text: str) -> float:
    """A share in [0, 1), e.g. of GPU memory kept free."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) (got {text!r})") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) (got {text!r})")
    return value
