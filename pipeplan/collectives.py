"""Collective operations priced with the alpha-beta model of NCCL's ring (and tree) algorithms.

For n ranks, S bytes per rank, per-rank link bandwidth B (bytes/s one way) and per-step latency α
(shared REFERENCE; Thakur et al. 2005; NCCL's performance notes, nccl-tests PERFORMANCE.md):

* ring all-reduce:      2(n−1)/n · S / B + 2(n−1)·α
* ring reduce-scatter:  (n−1)/n · S / B + (n−1)·α
* ring all-gather:      (n−1)/n · S / B + (n−1)·α

The factor in front of S / B is what nccl-tests calls the bus-bandwidth factor: busbw = algbw ·
2(n−1)/n for all-reduce and (n−1)/n for reduce-scatter and all-gather, so ``bus_bytes`` is the
number of bytes that cross each rank's link. A group of one rank does nothing.

``group_collective`` turns a group of GPUs of a cluster into the simulator's ``Collective``: the ring's
hops routed through ``pipeplan.topology``, their ports and the bottleneck rate.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from simulator.workload import Collective, Link

from .errors import SpecError
from .topology import topology

if TYPE_CHECKING:
    from .cluster import ClusterSpec

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


RING, TREE = "ring", "tree"
_ACTION_OF = {ALL_REDUCE: "REDUCE_GRAD", REDUCE_SCATTER: "REDUCE_GRAD", ALL_GATHER: "GATHER_PARAMS"}


def tree_latency(n: int, latency: float) -> float:
    """The fixed part of NCCL's (double binary) tree all-reduce over ``n`` ranks: a reduce up and a
    broadcast down a tree of depth ⌈log2 n⌉, 2·⌈log2 n⌉·α (Sanders et al. 2009; NVIDIA, "Massively
    scale your deep learning training with NCCL 2.4", 2019: latency logarithmic instead of linear)."""
    return 2 * math.ceil(math.log2(n)) * latency if n > 1 else 0.0


def ring_hops(gpus: Sequence[int]) -> list[tuple[int, int]]:
    """The point-to-point steps of a ring over ``gpus`` in order: r -> r+1, the last back to the first."""
    return [(a, gpus[(i + 1) % len(gpus)]) for i, a in enumerate(gpus)] if len(gpus) > 1 else []


def port_sharing(cluster: "ClusterSpec", rings: Iterable[Sequence[int]]) -> dict[str, int]:
    """How many of ``rings`` (GPU lists run at the same time) cross each port of the cluster's graph."""
    topo = topology(cluster)
    count: dict[str, int] = {}
    for gpus in rings:
        for port in dict.fromkeys(p for a, b in ring_hops(gpus) for p in topo.link(a, b).ports):
            count[port] = count.get(port, 0) + 1
    return count


def group_collective(cluster: "ClusterSpec", gpus: Sequence[int], kind: str, nbytes: float,
                     concurrent: int | Mapping[str, int] = 1, algorithm: str = RING,
                     action: str | None = None) -> Collective:
    """The simulator ``Collective`` of a ``kind`` of ``nbytes`` per rank over ``gpus``, priced as NCCL's ring.

    The ring runs over ``gpus`` in order (``ring_hops``), each hop along its route in ``pipeplan.topology``:

    * ``nbytes`` of the result: ``bus_bytes`` (what crosses each rank's link, nccl-tests PERFORMANCE.md);
    * ``path.latency``: ``ring_latency`` with α the slowest hop's latency (``tree_latency`` for
      ``algorithm="tree"``, all-reduce only; its bandwidth term is taken as the ring's);
    * ``path.bandwidth``: the ring's bottleneck: the least, over the ports of every hop, of the port's
      capacity divided by the rings that cross it at the same time (``concurrent``: one count for
      every port, or ``port_sharing``'s per-port counts). The simulator times one replica, but the
      other tensor and data ranks' rings run at the same time on the same ports; they are not
      simulated, so their equal share is taken off this ring's rate (the symmetric-load assumption);
    * ``path.ports``: every port of every hop, so the simulated transfers and collectives that cross
      them while it runs share them max-min fairly (``simulator.flows``).

    ``action`` is the schedule action it prices: REDUCE_GRAD for all-reduce and reduce-scatter,
    GATHER_PARAMS for all-gather unless given. One rank: no bytes, no time.
    """
    if kind not in _STEPS:
        raise SpecError(f"collective: unknown kind {kind!r}; choose one of {', '.join(_STEPS)}")
    if algorithm not in (RING, TREE):
        raise SpecError(f"algorithm: unknown {algorithm!r}; choose ring or tree")
    if algorithm == TREE and kind != ALL_REDUCE:
        raise SpecError(f"algorithm: NCCL's tree runs all-reduce only, not {kind}; use ring")
    if len(set(gpus)) != len(gpus):
        raise SpecError(f"collective: a group lists a GPU twice ({list(gpus)})")
    action = action or _ACTION_OF[kind]
    n = len(gpus)
    hops = ring_hops(gpus)
    if not hops:
        return Collective(action, 0.0, Link(0.0))
    topo = topology(cluster)
    links = [topo.link(a, b) for a, b in hops]
    alpha = max(link.latency for link in links)
    latency = tree_latency(n, alpha) if algorithm == TREE else ring_latency(kind, n, alpha)
    ports = tuple(dict.fromkeys(p for link in links for p in link.ports))
    sharing = (lambda port: concurrent) if isinstance(concurrent, int) else (lambda port: concurrent.get(port, 1))
    bandwidth = min((link.bandwidth for link in links), default=math.inf)
    for port in ports:
        bandwidth = min(bandwidth, topo.capacity(port) / max(1, sharing(port)))
    return Collective(action, bus_bytes(kind, n, nbytes), Link(latency, bandwidth, ports))
