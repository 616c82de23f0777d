"""The cluster graph against hand-counted routes, ports, latencies and transfer times."""
import math

import pytest

from pipeplan import SpecError, load_cluster
from pipeplan.topology import topology

GB = 1e9


def test_dgx_h100_two_nodes_has_the_hand_counted_elements():
    graph = topology(load_cluster("dgx-h100", 2)).graph
    # 16 GPUs, 2 NVSwitches, 2 x 8 NICs, 1 fabric switch
    assert graph.number_of_nodes() == 16 + 2 + 16 + 1
    # each GPU: NVSwitch and NIC, both ways (4 edges); each NIC: fabric, both ways (2 edges)
    assert graph.number_of_edges() == 16 * 4 + 16 * 2
    assert graph.edges["gpu3", "nvswitch0"]["capacity"] == 450 * GB
    assert graph.edges["node1.nic3", "leaf0"]["capacity"] == 50 * GB
    assert graph.edges["gpu11", "node1.nic3"]["capacity"] == math.inf


def test_gpu3_to_gpu11_crosses_nic3_of_both_nodes():
    topo = topology(load_cluster("dgx-h100", 2))
    assert topo.route(3, 11) == ["gpu3", "node0.nic3", "leaf0", "node1.nic3", "gpu11"]
    link = topo.link(3, 11)
    assert link.ports == ("node0.nic3->leaf0", "leaf0->node1.nic3")
    assert link.latency == 5e-6
    assert link.bandwidth == 50 * GB


def test_inside_a_node_the_route_is_the_nvswitch():
    link = load_cluster("dgx-h100", 2).link_between(13, 10)
    assert link.ports == ("gpu13->nvswitch1", "nvswitch1->gpu10")
    assert (link.latency, link.bandwidth) == (3e-6, 450 * GB)


def test_gpu_i_of_a_node_uses_nic_i():
    link = load_cluster("dgx-h100", 2).link_between(13, 2)  # local GPU 5 of node 1 -> local GPU 2 of node 0
    assert link.ports == ("node1.nic5->leaf0", "leaf0->node0.nic2")


def test_four_nics_for_eight_gpus_pair_the_gpus():
    data = load_cluster("dgx-h100").to_dict()
    cluster = load_cluster({**data, "nics_per_node": 4}, nodes=2)
    # GPU i uses NIC i·4/8: GPUs 4 and 5 both go out through NIC 2
    assert cluster.link_between(4, 8).ports[0] == "node0.nic2->leaf0"
    assert cluster.link_between(5, 8).ports[0] == "node0.nic2->leaf0"
    assert cluster.link_between(6, 8).ports[0] == "node0.nic3->leaf0"


def test_pcie_l40s_gpus_of_a_node_share_its_one_nic():
    cluster = load_cluster("pcie-l40s", 2)
    a, b = cluster.link_between(2, 9), cluster.link_between(5, 12)
    assert a.ports == b.ports == ("node0.nic0->leaf0", "leaf0->node1.nic0")
    assert (a.latency, a.bandwidth) == (20e-6, 12.5 * GB)
    # two pipeline hops out of node 0 at once split its one 12.5 GB/s port
    net = cluster.network([2, 9, 5, 12])
    assert set(net.link(0, 1).ports) & set(net.link(2, 3).ports) == {"node0.nic0->leaf0", "leaf0->node1.nic0"}
    assert net.port_capacity["node0.nic0->leaf0"] == 12.5 * GB


def test_gpus_sharing_a_nic_still_talk_over_their_switch():
    topo = topology(load_cluster("pcie-l40s", 2))
    assert topo.route(2, 3) == ["gpu2", "nvswitch0", "gpu3"]
    assert topo.link(2, 3).bandwidth == 25 * GB


def test_transfer_alone_takes_latency_plus_bytes_over_bandwidth():
    net = load_cluster("dgx-h100", 2).network([3, 11, 4])
    # 100 MB over InfiniBand: 5 us + 100e6 / 50e9 s = 2.005 ms
    assert net.transfer_seconds(0, 1, 100e6) == pytest.approx(0.002005, rel=1e-12)
    # 450 MB over NVLink: 3 us + 1 ms
    assert net.transfer_seconds(0, 2, 450e6) == pytest.approx(0.001003, rel=1e-12)
    assert net.transfer_seconds(1, 1, 450e6) == 0.0


def test_pcie_transfer_by_hand():
    net = load_cluster("pcie-l40s", 2).network([0, 8])
    # 25 MB over 12.5 GB/s Ethernet: 20 us + 2 ms
    assert net.transfer_seconds(1, 0, 25e6) == pytest.approx(0.00202, rel=1e-12)


def test_network_capacities_are_the_edges_of_the_routes():
    net = load_cluster("dgx-h100", 2).network(list(range(16)))
    assert net.port_capacity["gpu0->nvswitch0"] == 450 * GB
    assert net.port_capacity["leaf0->node0.nic7"] == 50 * GB
    # 16 GPUs: one NVSwitch port each way, one NIC port each way
    assert len(net.port_capacity) == 16 * 2 + 16 * 2


def test_a_gpu_outside_the_cluster_is_named():
    with pytest.raises(SpecError, match=r"plan\.placement: GPU 16 is not in dgx-h100"):
        load_cluster("dgx-h100", 2).link_between(3, 16)


def test_the_graph_is_built_once_per_cluster():
    assert topology(load_cluster("dgx-h100", 2)) is topology(load_cluster("dgx-h100", 2))
    assert topology(load_cluster("dgx-h100", 2)) is not topology(load_cluster("dgx-h100", 3))


@pytest.mark.parametrize("spec", [
    {"base": "dgx-h100"},
    {"base": "dgx-h100", "nodes_per_leaf": 2, "oversubscription": 2.0},
    {"base": "dgx-h100", "nodes_per_leaf": 2, "rail_optimized": True},
    {"base": "dgx-h100", "rail_optimized": True},
    {"base": "pcie-l40s", "nodes_per_leaf": 3},
])
def test_routes_read_off_the_tree_are_the_graphs_shortest_paths(spec):
    """Breadth-first search over the fabric (NICs and switches only) is the oracle for every GPU pair."""
    import networkx as nx

    cluster = load_cluster(spec, 5)
    topo = topology(cluster)
    fabric = topo.graph.subgraph(n for n, kind in topo.graph.nodes(data="kind") if kind in ("nic", "switch"))
    per_node = cluster.gpus_per_node
    for a in range(0, cluster.num_gpus, 3):
        for b in range(1, cluster.num_gpus, 5):
            route = topo.route(a, b)
            if a // per_node == b // per_node:
                continue
            src, dst = route[1], route[-2]
            assert route[1:-1] == nx.shortest_path(fabric, src, dst)
            assert len(nx.all_shortest_paths(fabric, src, dst).__next__()) == len(route) - 2
