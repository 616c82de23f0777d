"""Pipeline messages scattered over the tensor ranks and gathered again (Megatron-LM's scatter/gather).

Without sequence parallelism every tensor rank of a pipeline stage holds the whole boundary tensor
(S bytes). Megatron-LM of 2021 (``--scatter-gather-tensors-in-pipeline``, on by default then;
``p2p_communication.py``: ``split_tensor_into_1d_equal_chunks`` before the send,
``gather_split_1d_tensor`` after the receive; Narayanan et al. SC'21, Sec. 4.1 "scatter/gather
communication optimization") has each of the t tensor ranks send only its 1/t piece to its peer of
the next stage, over its own route (on a DGX node its own NIC), and the receiving stage all-gathers
the pieces over the node's NVLink. So a message of S bytes takes, for the simulated tensor rank:

    route latency + (S/t) / B_route          (its piece, alone on its route)
    + (t − 1)·α_nvl + (t − 1)/t · S / B_nvl  (the ring all-gather of S over the t ranks)

    = latency' + (S/t) / B'   with  latency' = route latency + (t − 1)·α_nvl,
                                    1/B' = 1/B_route + (t − 1)/B_nvl,

so the plan's stages send S/t bytes over links whose bandwidth and latency are B' and latency'
(``ScatterGatherLinks``), exact for a message alone. The link keeps the route's ports, so a
contended piece shares them as the engine does for any transfer; the all-gather's time then stays
on those ports too (it really runs on NVLink), an approximation only under contention. The other
tensor ranks' pieces travel on their own routes and are not simulated (as without scatter/gather).
"""
from __future__ import annotations

from dataclasses import replace

from simulator.workload import Link, LinkTable, Network, StageCost

from .cluster import LinkSpec


class ScatterGatherLinks(LinkTable):
    """``base``'s link of every device pair, turned into the scattered piece plus the all-gather (see
    the module docstring) over ``tp`` ranks on ``nvlink``."""

    __slots__ = ("base", "tp", "nvlink")

    def __init__(self, base: Network, tp: int, nvlink: LinkSpec):
        super().__init__(base.num_devices)
        self.base, self.tp, self.nvlink = base, tp, nvlink

    def link(self, src: int, dst: int) -> Link:
        route = self.base.link(src, dst)
        rate = route.rate(self.base.port_capacity)
        t, nvlink = self.tp, self.nvlink
        return Link(route.latency + (t - 1) * nvlink.latency, 1.0 / (1.0 / rate + (t - 1) / nvlink.bandwidth),
                    route.ports)

    def key(self) -> tuple:
        return (self.base, self.tp, self.nvlink)


def scatter_gather(stages: tuple[StageCost, ...], network: Network, tp: int,
                   nvlink: LinkSpec) -> tuple[tuple[StageCost, ...], Network]:
    """Stages sending 1/``tp`` of each boundary tensor over ``ScatterGatherLinks`` (the module docstring)."""
    pieces = tuple(replace(c, send_forward_bytes=c.send_forward_bytes / tp,
                           send_backward_bytes=c.send_backward_bytes / tp) for c in stages)
    return pieces, Network(ScatterGatherLinks(network, tp, nvlink), network.port_capacity)
