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
from .topology import fabric_path, port_name, topology

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


def _by_node(cluster: "ClusterSpec", gpus: Sequence[int]) -> dict[int, list[int]]:
    """The group's GPUs per node, nodes in the order the group first reaches them."""
    nodes: dict[int, list[int]] = {}
    for gpu in gpus:
        nodes.setdefault(gpu // cluster.gpus_per_node, []).append(gpu)
    return nodes


def ring_channels(cluster: "ClusterSpec", gpus: Sequence[int]) -> int:
    """How many rings (NCCL channels) a collective over ``gpus`` runs side by side across nodes: as
    many as the fewest distinct NICs the group's GPUs reach on any of its nodes (1 inside one node).

    NCCL builds one ring per channel and sends each channel's inter-node hops through its own NIC
    (NCCL's topology search: rings use every NIC close to the ring's GPUs; with PXN a GPU hands its
    data over NVLink to the GPU beside the channel's NIC). So 8 GPUs of a DGX node reach the fabric
    through 8 NICs at once, and a tensor-parallel peer group of one GPU per node through its own NIC.
    """
    nodes = _by_node(cluster, gpus)
    if len(nodes) < 2:
        return 1
    return min(len({topology_nic(cluster, gpu) for gpu in members}) for members in nodes.values())


def topology_nic(cluster: "ClusterSpec", gpu: int) -> int:
    from .topology import nic_of

    return nic_of(cluster, gpu % cluster.gpus_per_node)


def ring_ports(cluster: "ClusterSpec", gpus: Sequence[int]) -> tuple[dict[str, float], float]:
    """Per port of the cluster's graph, how many of the collective's rings over ``gpus`` cross it
    (``ring_channels`` rings side by side, each moving 1/C of the bytes), and the slowest hop's latency α.

    Inside one node: one ring over the NVSwitch, every GPU's out- and in-port once. Across nodes,
    channel c crosses each node through the c-th of the distinct NICs its GPUs reach there: every hop
    between consecutive nodes of the ring (the last back to the first) goes from the c-th NIC of one
    node to the c-th NIC of the next along the fabric (``topology.fabric_path``), and inside a node the
    channel visits all the group's GPUs there, one NVLink send and receive per GPU (the hand-over to
    the channel's NIC included). So a fabric port carries the channels whose NIC it serves, and each
    NVLink port of a node with two or more of the group's GPUs all C of them. A GPU's path to its NIC
    never limits (``topology``).
    """
    topo = topology(cluster)
    nodes = _by_node(cluster, gpus)
    count: dict[str, float] = {}
    if len(nodes) < 2:
        links = [topo.link(a, b) for a, b in ring_hops(gpus)]
        for link in links:
            for port in link.ports:
                count[port] = count.get(port, 0) + 1
        return count, max((link.latency for link in links), default=0.0)
    channels = ring_channels(cluster, gpus)
    alpha = 0.0
    for members in nodes.values():
        for a, b in ring_hops(members):
            link = topo.link(a, b)
            alpha = max(alpha, link.latency)
            for port in link.ports:
                count[port] = count.get(port, 0) + channels
    order = list(nodes)
    nics = {node: sorted({topology_nic(cluster, gpu) for gpu in members}) for node, members in nodes.items()}
    for i, node in enumerate(order):
        after = order[(i + 1) % len(order)]
        alpha = max(alpha, topo.link(nodes[node][0], nodes[after][0]).latency)
        for c in range(channels):
            path = fabric_path(cluster, node, nics[node][c], after, nics[after][c])
            for u, v in zip(path, path[1:]):
                if math.isfinite(topo.graph.edges[u, v]["capacity"]):
                    port = port_name(u, v)
                    count[port] = count.get(port, 0) + 1
    return count, alpha


def port_sharing(cluster: "ClusterSpec", rings: Iterable[Sequence[int]]) -> dict[str, float]:
    """Per port of the cluster's graph, how many rings (channels, ``ring_ports``) of the collectives
    over ``rings`` (GPU lists whose collectives run at the same time) cross it."""
    count: dict[str, float] = {}
    for gpus in rings:
        for port, weight in ring_ports(cluster, gpus)[0].items():
            count[port] = count.get(port, 0.0) + weight
    return count


def group_collective(cluster: "ClusterSpec", gpus: Sequence[int], kind: str, nbytes: float,
                     concurrent: int | Mapping[str, float] = 1, algorithm: str = RING,
                     action: str | None = None) -> Collective:
    """The simulator ``Collective`` of a ``kind`` of ``nbytes`` per rank over ``gpus``, priced as NCCL's ring.

    The ring runs over ``gpus`` in order, as C = ``ring_channels`` rings side by side across nodes
    (``ring_ports``), in lockstep:

    * ``nbytes`` of the result: ``bus_bytes`` (what crosses each rank's link, nccl-tests
      PERFORMANCE.md) / C, what one channel moves;
    * ``weights``: per port, how many channels cross it (C on a GPU's NVLink ports, 1 on the fabric
      port of a NIC one channel uses), so the engine loads it with the channel rate x that count, as
      C flows of one channel each would (``simulator.flows``); none when every count is 1;
    * ``path.latency``: ``ring_latency`` with α the slowest hop's latency (``tree_latency`` for
      ``algorithm="tree"``, all-reduce only; its bandwidth term is taken as the ring's); the channels
      run side by side, so they pay it once;
    * ``path.bandwidth``: the channel's bottleneck: the least, over its ports, of the port's capacity
      divided by the channels of every ring that crosses it at the same time (``concurrent``: a count
      of copies of this ring, or ``port_sharing``'s per-port counts). The simulator times one replica,
      but the other tensor and data ranks' rings run at the same time on the same ports; they are not
      simulated, so their share is taken off this ring's rate (the symmetric-load assumption);
    * ``path.ports``: every port it loads, so the simulated transfers and collectives that cross
      them while it runs share them max-min fairly.

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
    if n < 2:
        return Collective(action, 0.0, Link(0.0))
    topo = topology(cluster)
    crossing, alpha = ring_ports(cluster, gpus)
    channels = ring_channels(cluster, gpus)
    latency = tree_latency(n, alpha) if algorithm == TREE else ring_latency(kind, n, alpha)
    ports = tuple(crossing)
    weights = tuple(crossing[port] for port in ports)
    bandwidth = math.inf
    for port, weight in zip(ports, weights):
        load = weight * concurrent if isinstance(concurrent, int) else max(weight, concurrent.get(port, weight))
        bandwidth = min(bandwidth, topo.capacity(port) / load)
    plain = all(w == 1 for w in weights)
    per_channel = bus_bytes(kind, n, nbytes) / channels if channels > 1 else bus_bytes(kind, n, nbytes)
    return Collective(action, per_channel, Link(latency, bandwidth, ports), () if plain else weights)
