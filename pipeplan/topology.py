"""The cluster as a graph: GPUs, each node's switch and NICs, the scale-out fabric joining the nodes.

``topology(cluster)`` is a networkx ``DiGraph`` with one edge per direction of every physical
connection, built once per ``ClusterSpec``. Nodes are stable strings:

* ``gpu{g}``: GPU g, numbered node-major over the cluster (GPU g is local GPU g mod gpus_per_node
  of node g div gpus_per_node);
* ``nvswitch{n}``: node n's intra-node switch (the NVSwitch; on a PCIe box, its PCIe switch). Every
  GPU of the node has one port to it each way, of the ``intra`` link kind;
* ``node{n}.nic{i}``: NIC i of node n. Local GPU j reaches NIC j·nics_per_node // gpus_per_node
  (several GPUs share one NIC when there are fewer NICs than GPUs);
* ``leaf0``: the scale-out fabric, by default one non-blocking switch that every NIC has a port to,
  of the ``inter`` link kind. With ``nodes_per_leaf`` or ``rail_optimized`` (``ClusterSpec``) the
  NICs plug into leaves ``leaf{g}`` (the nodes g·nodes_per_leaf ...) or ``leaf{g}.rail{i}`` (NIC i
  of those nodes), and every leaf has one uplink to ``spine0`` of capacity (NIC bandwidth x NICs
  under the leaf) / oversubscription.

Edge attributes: ``capacity`` (bytes per second, one way; ``math.inf`` where the element never
limits a transfer: a GPU's PCIe path to its NIC, a switch's backplane) and ``latency`` (seconds;
a link kind's latency is split evenly over its two hops, so a route's latency is the sum over its
edges and equals the link kind's). The edge ``u -> v`` is named ``"u->v"``, e.g.
``"gpu3->nvswitch0"`` or ``"node0.nic3->leaf0"``; those names are the simulator's port names.

A route between two GPUs: inside a node, GPU -> NVSwitch -> GPU; between nodes, GPU -> its NIC,
the path with the fewest hops through the fabric (NICs and switches only) to the other GPU's NIC,
-> GPU. (GPUs that share a NIC never talk through it: the graph's GPU-NIC-GPU detour is not a route.)
Its simulator ``Link`` has the route's latency, its narrowest edge as bandwidth, and as ports the
edges of finite capacity, each with its edge's capacity; transfers whose routes share an edge share
that edge's capacity in the engine (max-min fair).

Growing the fabric (more tiers, several spines) is a change to ``_add_fabric`` and to ``fabric_path``
(which reads routes off the tree): a leaf→spine edge with capacity (NIC capacity x NICs under the
leaf) / ratio appears in the ports of every route crossing it, and nothing else changes. A collective across
nodes is read from the same graph: split it into its point-to-point steps (a ring's step k sends
GPU r -> GPU r+1 for every rank r) and take each step's ``link``; the steps' transfers that
cross the same edge then share it, which is where an oversubscribed tier slows a collective down.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import networkx as nx

from simulator.workload import Link, LinkTable, Network

from .errors import SpecError

if TYPE_CHECKING:
    from .cluster import ClusterSpec

FABRIC = "leaf0"
SPINE = "spine0"


def gpu_node(gpu: int) -> str:
    return f"gpu{gpu}"


def nvswitch_node(node: int) -> str:
    return f"nvswitch{node}"


def nic_node(node: int, nic: int) -> str:
    return f"node{node}.nic{nic}"


def port_name(u: str, v: str) -> str:
    return f"{u}->{v}"


def nic_of(cluster: "ClusterSpec", local_gpu: int) -> int:
    """The NIC a node's local GPU sends and receives through."""
    return local_gpu * cluster.nics_per_node // cluster.gpus_per_node


def _connect(graph: nx.DiGraph, a: str, b: str, capacity: float, latency: float) -> None:
    """Both directions of one physical connection; each carries half of the link kind's latency."""
    half = latency / 2  # exact in binary floating point, so the two halves add back to ``latency``
    graph.add_edge(a, b, capacity=capacity, latency=half)
    graph.add_edge(b, a, capacity=capacity, latency=half)


def _add_node(graph: nx.DiGraph, cluster: "ClusterSpec", node: int) -> None:
    """One node: its GPUs on its NVSwitch, and each GPU's path to its NIC."""
    switch = nvswitch_node(node)
    graph.add_node(switch, kind="nvswitch", node=node)
    for nic in range(cluster.nics_per_node):
        graph.add_node(nic_node(node, nic), kind="nic", node=node)
    for local in range(cluster.gpus_per_node):
        gpu = node * cluster.gpus_per_node + local
        graph.add_node(gpu_node(gpu), kind="gpu", node=node)
        _connect(graph, gpu_node(gpu), switch, cluster.intra.bandwidth, cluster.intra.latency)
        # The PCIe path from a GPU to its NIC is faster than the NIC's port, so it never limits.
        _connect(graph, gpu_node(gpu), nic_node(node, nic_of(cluster, local)), math.inf, 0.0)


def leaf_of(cluster: "ClusterSpec", node: int, nic: int) -> str:
    """The leaf switch NIC ``nic`` of node ``node`` plugs into (``leaf0`` in the single-switch fabric)."""
    if not cluster.leaf_spine:
        return FABRIC
    group = node // cluster.nodes_per_leaf if cluster.nodes_per_leaf else 0
    return f"leaf{group}.rail{nic}" if cluster.rail_optimized else f"leaf{group}"


def _add_fabric(graph: nx.DiGraph, cluster: "ClusterSpec") -> None:
    """The scale-out network: every NIC's port to its leaf; with leaves, each leaf's uplink to the spine.

    A leaf's uplink (one aggregated edge each way) carries the sum of its downlinks' capacity divided
    by ``oversubscription``; its latency is 0 because the ``inter`` latency already stands for a whole
    message across the fabric (a switch hop adds well under a microsecond).
    """
    downlinks: dict[str, int] = {}
    for node in range(cluster.nodes):
        for nic in range(cluster.nics_per_node):
            leaf = leaf_of(cluster, node, nic)
            if leaf not in graph:
                graph.add_node(leaf, kind="switch", tier="leaf")
            downlinks[leaf] = downlinks.get(leaf, 0) + 1
            _connect(graph, nic_node(node, nic), leaf, cluster.inter.bandwidth, cluster.inter.latency)
    if cluster.leaf_spine:
        graph.add_node(SPINE, kind="switch", tier="spine")
        for leaf, count in downlinks.items():
            _connect(graph, leaf, SPINE, count * cluster.inter.bandwidth / cluster.oversubscription, 0.0)


def build_graph(cluster: "ClusterSpec") -> nx.DiGraph:
    """The cluster's graph (see the module docstring); a new one on every call."""
    graph = nx.DiGraph(name=cluster.name)
    for node in range(cluster.nodes):
        _add_node(graph, cluster, node)
    _add_fabric(graph, cluster)
    return graph


def fabric_path(cluster: "ClusterSpec", node_a: int, nic_a: int, node_b: int, nic_b: int) -> list[str]:
    """The fewest-hop path through the fabric (NICs and switches only) from one node's NIC to another's.

    The fabric ``_add_fabric`` builds is a tree (NICs under leaves, leaves under one spine), so that
    path is unique: up to the common switch and down again. Reading it off the tree, instead of a
    breadth-first search over a graph of every GPU, keeps routing constant-time on 16,384-GPU clusters.
    """
    src, dst = nic_node(node_a, nic_a), nic_node(node_b, nic_b)
    leaf_a, leaf_b = leaf_of(cluster, node_a, nic_a), leaf_of(cluster, node_b, nic_b)
    if leaf_a == leaf_b:
        return [src, leaf_a, dst]
    return [src, leaf_a, SPINE, leaf_b, dst]


class Topology:
    """A cluster's graph with its GPU-to-GPU routes and simulator links (computed once per pair asked for)."""

    def __init__(self, cluster: "ClusterSpec"):
        self.cluster = cluster
        self.graph = nx.freeze(build_graph(cluster))  # shared through the cache, so nobody may edit it
        self._links: dict[tuple[int, int], Link] = {}

    def route(self, gpu_a: int, gpu_b: int) -> list[str]:
        """The nodes a transfer from GPU ``gpu_a`` to GPU ``gpu_b`` passes, both ends included.

        A GPU's route to itself goes out to its NVSwitch and back: the network table the simulator
        takes is square, and its diagonal keeps the GPU's own ports (the engine never uses it).
        """
        cluster = self.cluster
        for gpu in (gpu_a, gpu_b):
            if not (0 <= gpu < cluster.num_gpus):
                raise SpecError(f"plan.placement: GPU {gpu} is not in {cluster.name} with "
                                f"{cluster.nodes} node(s) of {cluster.gpus_per_node}")
        node_a, local_a = divmod(gpu_a, cluster.gpus_per_node)
        node_b, local_b = divmod(gpu_b, cluster.gpus_per_node)
        if node_a == node_b:
            return [gpu_node(gpu_a), nvswitch_node(node_a), gpu_node(gpu_b)]
        nic_a, nic_b = nic_of(cluster, local_a), nic_of(cluster, local_b)
        return [gpu_node(gpu_a), *fabric_path(cluster, node_a, nic_a, node_b, nic_b), gpu_node(gpu_b)]

    def route_edges(self, gpu_a: int, gpu_b: int) -> list[tuple[str, str]]:
        path = self.route(gpu_a, gpu_b)
        return list(zip(path, path[1:]))

    def link(self, gpu_a: int, gpu_b: int) -> Link:
        """The simulator link of the route from ``gpu_a`` to ``gpu_b``.

        Its latency is the route's, its bandwidth the narrowest edge's, its ports the edges of finite capacity.
        """
        key = (gpu_a, gpu_b)
        if key not in self._links:
            edges = [(u, v, self.graph.edges[u, v]) for u, v in self.route_edges(gpu_a, gpu_b)]
            latency = sum(e["latency"] for _, _, e in edges)
            bandwidth = min(e["capacity"] for _, _, e in edges)
            ports = tuple(port_name(u, v) for u, v, e in edges if math.isfinite(e["capacity"]))
            self._links[key] = Link(latency, bandwidth, ports)
        return self._links[key]

    def capacity(self, port: str) -> float:
        """The capacity of the edge a port names (bytes per second, one way)."""
        u, v = port.split("->")
        return self.graph.edges[u, v]["capacity"]

    def network(self, gpus: list[int]) -> Network:
        """Links and port capacities among the given GPUs (pipeline device i runs on ``gpus[i]``).

        Each pair's link is routed when the engine asks for it (``RouteLinks``); the capacity table
        holds every port any of those routes crosses (``ports_among``), in O(len(gpus)).
        """
        for gpu in gpus:
            self.route(gpu, gpu)  # a GPU outside the cluster is a one-line error now, not mid-simulation
        capacity = {port: self.capacity(port) for port in self.ports_among(gpus)}
        return Network(RouteLinks(self, tuple(gpus)), capacity)

    def ports_among(self, gpus: list[int]) -> list[str]:
        """Every port (edge of finite capacity) on a route between two of ``gpus``, each GPU to itself included.

        From the routes' shape (see ``route``): a GPU's own NVSwitch ports (its route to itself); its
        NIC's ports to and from its leaf when another GPU sits on another node; a leaf's uplink ports
        when one of the GPUs is under it, another is not, and they span two nodes or more.
        """
        cluster = self.cluster
        ports: dict[str, None] = {}
        nodes = {gpu // cluster.gpus_per_node for gpu in gpus}
        leaves: dict[str, None] = {}
        for gpu in gpus:
            node, local = divmod(gpu, cluster.gpus_per_node)
            switch = nvswitch_node(node)
            ports.update(dict.fromkeys((port_name(gpu_node(gpu), switch), port_name(switch, gpu_node(gpu)))))
            if len(nodes) > 1:
                nic = nic_of(cluster, local)
                leaf = leaf_of(cluster, node, nic)
                card = nic_node(node, nic)
                ports.update(dict.fromkeys((port_name(card, leaf), port_name(leaf, card))))
                leaves[leaf] = None
        if cluster.leaf_spine and len(leaves) > 1:
            for leaf in leaves:
                ports.update(dict.fromkeys((port_name(leaf, SPINE), port_name(SPINE, leaf))))
        return [port for port in ports if math.isfinite(self.capacity(port))]


class RouteLinks(LinkTable):
    """Pipeline device i on GPU ``gpus[i]``: a pair's link is its GPUs' route (``Topology.link``, cached per pair)."""

    __slots__ = ("topology", "gpus")

    def __init__(self, topology: Topology, gpus: tuple[int, ...]):
        super().__init__(len(gpus))
        self.topology, self.gpus = topology, gpus

    def link(self, src: int, dst: int) -> Link:
        return self.topology.link(self.gpus[src], self.gpus[dst])

    def key(self) -> tuple:
        return (self.topology.cluster, self.gpus)


@lru_cache(maxsize=32)
def topology(cluster: "ClusterSpec") -> Topology:
    """The topology of ``cluster``, built on first use (specs are frozen, so equal clusters share one)."""
    return Topology(cluster)
