"""Cluster specs: GPUs, how many per node, the links inside a node and between nodes.

Figures are vendor datasheet numbers (see shared REFERENCE); calibrate with ``pipeplan validate``
where you can. Bandwidths are bytes per second in one direction.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from simulator.workload import Link, Network

from .errors import SpecError, positive_int, positive_number
from .fileio import load_mapping


@dataclass(frozen=True)
class GPUSpec:
    """``achieved_fraction(tokens)``: the share of peak a micro-batch of that many tokens reaches.

    Modelled as ``max_fraction · tokens / (tokens + half_tokens)``: small micro-batches leave the
    tensor cores under-used; ``half_tokens`` is where half of ``max_fraction`` is reached.
    """

    name: str
    peak_flops: float
    memory_bytes: float
    max_fraction: float = 0.6
    half_tokens: float = 256.0
    op_overhead_s: float = 20e-6  # launch and synchronisation cost per layer pass

    def __post_init__(self) -> None:
        positive_number("cluster.gpu.peak_flops", self.peak_flops)
        positive_number("cluster.gpu.memory_bytes", self.memory_bytes)
        positive_number("cluster.gpu.half_tokens", self.half_tokens, allow_zero=True)
        positive_number("cluster.gpu.op_overhead_s", self.op_overhead_s, allow_zero=True)
        if not 0 < self.max_fraction <= 1:
            raise SpecError(f"cluster.gpu.max_fraction: must be in (0, 1] (got {self.max_fraction})")

    def achieved_fraction(self, tokens: float) -> float:
        return self.max_fraction * tokens / (tokens + self.half_tokens)


@dataclass(frozen=True)
class LinkSpec:
    """A kind of link: one-way ``bandwidth`` (bytes/s) per port and per-message ``latency`` (s)."""

    name: str
    bandwidth: float
    latency: float

    def __post_init__(self) -> None:
        positive_number(f"cluster.{self.name}.bandwidth", self.bandwidth)
        positive_number(f"cluster.{self.name}.latency", self.latency, allow_zero=True)


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` x ``gpus_per_node`` GPUs; ``intra`` joins GPUs of a node (one port per GPU each way),
    ``inter`` joins nodes through ``nics_per_node`` NICs (GPU i of a node uses NIC i·nics/gpus).

    ``pipeplan.topology`` turns it into a graph; links between GPUs are routes through it.
    """

    name: str
    gpu: GPUSpec
    gpus_per_node: int
    intra: LinkSpec
    inter: LinkSpec
    nics_per_node: int
    nodes: int = 1

    def __post_init__(self) -> None:
        positive_int("cluster.gpus_per_node", self.gpus_per_node)
        positive_int("cluster.nics_per_node", self.nics_per_node)
        positive_int("cluster.nodes", self.nodes)

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def with_nodes(self, nodes: int) -> "ClusterSpec":
        return replace(self, nodes=positive_int("nodes", nodes))

    def link_between(self, gpu_a: int, gpu_b: int) -> Link:
        """The simulator link from GPU ``gpu_a`` to GPU ``gpu_b``: its route through ``pipeplan.topology``."""
        from .topology import topology  # networkx loads on first use, not with ``import pipeplan``

        return topology(self).link(gpu_a, gpu_b)

    def network(self, gpus: list[int]) -> Network:
        """Links and port capacities among the given GPUs (pipeline device i runs on ``gpus[i]``)."""
        from .topology import topology

        return topology(self).network(gpus)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ClusterSpec":
        try:
            gpu = GPUSpec(**data["gpu"])
            intra = LinkSpec(**{"name": "intra", **data["intra"]})
            inter = LinkSpec(**{"name": "inter", **data["inter"]})
            rest = {k: v for k, v in data.items() if k not in ("gpu", "intra", "inter")}
            return ClusterSpec(gpu=gpu, intra=intra, inter=inter, **rest)
        except KeyError as err:
            raise SpecError(f"cluster.{err.args[0]}: required field is missing") from None
        except TypeError as err:
            raise SpecError(f"cluster: {err}; see `pipeplan clusters` for the fields a cluster has") from None


H100 = GPUSpec("H100-SXM", 989e12, 80e9)
A100 = GPUSpec("A100-SXM-80GB", 312e12, 80e9)
L40S = GPUSpec("L40S", 362e12, 48e9)

CLUSTER_PRESETS: dict[str, ClusterSpec] = {
    "dgx-h100": ClusterSpec(
        "dgx-h100", H100, 8, LinkSpec("nvlink", 450e9, 3e-6), LinkSpec("ib", 50e9, 5e-6), nics_per_node=8
    ),
    "dgx-a100": ClusterSpec(
        "dgx-a100", A100, 8, LinkSpec("nvlink", 300e9, 3e-6), LinkSpec("ib", 25e9, 5e-6), nics_per_node=8
    ),
    "pcie-l40s": ClusterSpec(
        "pcie-l40s", L40S, 8, LinkSpec("pcie", 25e9, 10e-6), LinkSpec("eth", 12.5e9, 20e-6), nics_per_node=1
    ),
}


def load_cluster(name_or_path: str | dict | ClusterSpec, nodes: int | None = None) -> ClusterSpec:
    """A preset name, a JSON/YAML file, or a mapping; ``nodes`` overrides the node count."""
    if isinstance(name_or_path, ClusterSpec):
        cluster = name_or_path
    elif isinstance(name_or_path, dict):
        cluster = ClusterSpec.from_dict(name_or_path)
    elif name_or_path in CLUSTER_PRESETS:
        cluster = CLUSTER_PRESETS[name_or_path]
    elif any(name_or_path.endswith(ext) for ext in (".json", ".yaml", ".yml")):
        cluster = ClusterSpec.from_dict(load_mapping(name_or_path, "cluster"))
    else:
        raise SpecError(
            f"cluster: unknown preset {name_or_path!r}; choose one of {', '.join(CLUSTER_PRESETS)} or a .json/.yaml file"
        )
    return cluster.with_nodes(nodes) if nodes is not None else cluster
