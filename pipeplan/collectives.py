"""Collective operations priced with the alpha-beta model of NCCL's ring (and tree) algorithms.

For n ranks, S bytes per rank, per-rank link bandwidth B (bytes/s one way) and per-step latency α
(shared REFERENCE; Thakur et al. 2005; NCCL's performance notes, nccl-tests PERFORMANCE.md):

* ring all-reduce:      2(n−1)/n · S / B + 2(n−1)·α
* ring reduce-scatter:  (n−1)/n · S / B + (n−1)·α
* ring all-gather:      (n−1)/n · S / B + (n−1)·α

The factor in front of S / B is what nccl-tests calls the bus-bandwidth factor: busbw = algbw ·
2(n−1)/n for all-reduce and (n−1)/n for reduce-scatter and all-gather, so ``bus_bytes`` is the
number of bytes that cross each rank's link. A group of one rank does nothing.
"""
from __future__ import annotations

ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER = "all-reduce", "reduce-scatter", "all-gather"
_STEPS = {ALL_REDUCE: 2, REDUCE_SCATTER: 1, ALL_GATHER: 1}


def bus_bytes(kind: str, n: int, nbytes: float) -> float:
    """Bytes through each rank's link for a ring ``kind`` of ``nbytes`` per rank over ``n`` ranks."""
    return _STEPS[kind] * (n - 1) / n * nbytes if n > 1 else 0.0


def ring_latency(kind: str, n: int, latency: float) -> float:
    """The fixed part of a ring ``kind`` over ``n`` ranks: one α per step."""
    return _STEPS[kind] * (n - 1) * latency if n > 1 else 0.0


def ring_seconds(kind: str, n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """A ring ``kind`` of ``nbytes`` per rank over ``n`` ranks, alone on links of ``bandwidth`` and ``latency``."""
    if n <= 1:
        return 0.0
    return bus_bytes(kind, n, nbytes) / bandwidth + ring_latency(kind, n, latency)
