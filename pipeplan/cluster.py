"""Cluster specs: GPUs, how many per node, the links inside a node and between nodes, the fabric.

Figures are vendor datasheet numbers (see shared REFERENCE); calibrate with ``pipeplan validate``
where you can. Bandwidths are bytes per second in one direction.

A cluster file or mapping may start from a preset and override some fields:
``{"base": "dgx-h100", "nics_per_node": 1, "inter": {"bandwidth": 25e9}}`` (nested sections merge);
``load_cluster(..., overrides=...)`` does the same for a preset name or a file.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, replace
from typing import Any

from simulator.workload import Link, Network

from .errors import SpecError, name_text, positive_int, positive_number
from .fileio import load_mapping
from .kernel_curves import ATTENTION_DIMS, GEMM_DIMS, LayerOverheads, ShapeCurve, ShapeTable
from .limits import check_cluster_values
from .probe.record import ProbeRecord

# Bytes per value a device's kernels move: fp8/int8, bf16/fp16, float32, float64.
ELEMENT_BYTES = (1, 2, 4, 8)


@dataclass(frozen=True)
class GPUSpec:
    """A GPU type: dense peak, memory, and how fast its GEMMs and memory-bound kernels really run.

    ``gemm_seconds(m, n, k)`` is one (m x k) @ (k x n) GEMM, a function of its shape only
    (tile and wave quantization over the SMs, then the roofline), after the NVIDIA Deep Learning
    Performance Guide, "Matrix Multiplication Background" (docs.nvidia.com/deeplearning/performance/
    dl-performance-matrix-multiplication): the output is cut into ``tile_m`` x ``tile_n`` tiles, one per
    SM at a time, so a GEMM runs in ceil(tiles / sms) waves, each as long as one full tile's
    2·tile_m·tile_n·k FLOPs at the SM's share of ``max_fraction`` x peak; a GEMM that moves more
    bytes (2·(mk + kn + mn), 16-bit) than that time allows at ``hbm_bandwidth`` is memory-bound.

    Constants: ``max_fraction`` is the per-SM ceiling a GPU type's measured GEMM implies: the
    measured share of peak divided by that shape's wave efficiency. H100 (the default, 0.83): bf16
    8192^3 ≈ 798 of 989 TFLOP/s = 0.807 (shared REFERENCE), 2048 tiles in 16 waves on 132 SMs =
    0.970. A100 (0.83): cuBLAS fp16 8192^3 from torch with random (randn) inputs, 257-258 of 312
    TFLOP/s = 0.827 (H. He, "Strangely, Matrix Multiplications on GPUs Run Faster When Given
    'Predictable' Data!", thonking.ai, 2024: the same GEMM on zeros reaches 295, the A100 holds its
    power limit by lowering its clock, so the rate of real data is the one a training run sustains),
    2048 tiles in 19 waves on 108 SMs = 0.998. Not the 271 TFLOP/s best shape of Bekman's "Maximum
    Achievable Matmul FLOPS" search (stas00/ml-engineering): the maximum over a search's many
    shapes, each timed briefly. Cross-check: Korthikanti et al. 2022's Table 4 forward passes of one
    22B block (7.7 and 7.2 ms, timed in training) come out within 0.5 % with 0.83 and 3 % fast with
    0.88 (``benchmarks/published_runs_2022.py``). Other tensor-core GPUs take the
    H100's share; 256 x 128 is the largest cuBLAS/CUTLASS tile that guide names for Ampere and Hopper;
    SM counts and HBM bandwidths are the vendor datasheets (A100 SXM 108 SMs, 2.0 TB/s; H100 SXM
    132 SMs, 3.35 TB/s; L40S 142 SMs, 0.864 TB/s). ``hbm_bandwidth`` also prices the memory-bound
    kernels (norms, softmax, dropout, activations) in ``pipeplan.costs``, unless ``kernel_bandwidth``
    gives the rate those kernels reach (a CPU core runs them from cache, at a rate its vector units
    set, not its memory bus; an A100 80 GB SXM streams 1.80 of its 2.04 TB/s, 88 % of the datasheet,
    in a read kernel that Nsight Compute confirms, where the poster cites an NVIDIA GTC talk in which no
    kernel passed ~90 %: NVIDIA developer forum, "Trouble to Reach Peak Bandwidth of A100").

    Standard (non-Flash) attention's s x s traffic, the scores its batched GEMMs write and read and
    its softmax and dropout pass through memory, moves at ``score_bandwidth`` in the forward and
    ``score_backward_bandwidth`` in the backward where a GPU has them (else as other kernels). A100:
    Dao et al. 2022 (FlashAttention, arXiv 2205.14135, App. E.6) timed Megatron-LM's attention on an
    A100-SXM4-40GB (1.555 TB/s): fp16, 16 x 8 heads of 64, s = 2048, dropout 0.1, padding mask,
    ``A100_ATTENTION_MS``. Counted as ``pipeplan.layer_costs`` counts them per score element (QK^T's and AV's
    bytes as ``gemm_seconds`` does, 2 + 4d/s each; the masked softmax reads 2 + 1/8 mask and writes
    2, its backward reads 4 and writes 2; dropout reads 2 and writes 2 + a 1-byte mask, its backward
    reads 3 and writes 2): 13.375 bytes forward, 19.5 backward (the four GEMMs of the backward), i.e.
    57 % and 80 % of the datasheet bandwidth; the A100 80 GB takes those shares of its 2.039 TB/s.

    Measured devices (``pipeplan probe``): ``gemm_curve`` replaces the tile-and-wave model with a
    fitted ``ShapeCurve`` over (m, n, k); ``attention_forward``/``attention_backward`` price the
    attention core as one kernel by its measured rate (a ``ShapeTable`` over sequence length and head
    size) instead of as its GEMMs; the roofline stays. ``layer_overheads`` gives the fixed cost of a
    layer pass per layer kind and pass (F, I, W) in place of ``op_overhead_s`` for all.
    ``element_bytes`` is the width of the values the kernels move: the model counts bf16 (2), a
    float32 run (the CPU validator) moves 4, which doubles the memory-bound kernels' and the
    roofline's bytes.
    """

    name: str
    peak_flops: float
    memory_bytes: float
    max_fraction: float = 0.83
    sms: int = 108
    tile_m: int = 256
    tile_n: int = 128
    hbm_bandwidth: float = 2.0e12
    op_overhead_s: float = 20e-6  # launch and synchronisation cost per layer pass
    element_bytes: int = 2
    kernel_bandwidth: float | None = None
    score_bandwidth: float | None = None
    score_backward_bandwidth: float | None = None
    gemm_curve: ShapeCurve | None = None
    attention_forward: ShapeTable | None = None
    attention_backward: ShapeTable | None = None
    layer_overheads: LayerOverheads | None = None

    def __post_init__(self) -> None:
        if self.layer_overheads is not None:
            object.__setattr__(self, "layer_overheads", LayerOverheads.from_dict(
                "cluster.gpu.layer_overheads", self.layer_overheads))
        for field_name, kind, dims in (("gemm_curve", ShapeCurve, GEMM_DIMS),
                                       ("attention_forward", ShapeTable, ATTENTION_DIMS),
                                       ("attention_backward", ShapeTable, ATTENTION_DIMS)):
            if getattr(self, field_name) is not None:  # a mapping from a file becomes a hashable curve/table
                object.__setattr__(self, field_name, kind.from_dict(
                    f"cluster.gpu.{field_name}", getattr(self, field_name), dims))
        if (self.attention_forward is None) != (self.attention_backward is None):
            raise SpecError("cluster.gpu.attention_backward: give attention_forward and attention_backward "
                            "together (or neither, for the GEMM model)")
        if self.element_bytes not in ELEMENT_BYTES or isinstance(self.element_bytes, bool):
            raise SpecError(f"cluster.gpu.element_bytes: must be one of {', '.join(map(str, ELEMENT_BYTES))} "
                            f"(2 for bf16/fp16, 4 for float32; got {self.element_bytes!r})")
        for f in ("kernel_bandwidth", "score_bandwidth", "score_backward_bandwidth"):
            if getattr(self, f) is not None:
                positive_number(f"cluster.gpu.{f}", getattr(self, f))
        if (self.score_bandwidth is None) != (self.score_backward_bandwidth is None):
            raise SpecError("cluster.gpu.score_backward_bandwidth: give score_bandwidth and score_backward_bandwidth "
                            "together (or neither, to price attention scores as other memory-bound kernels)")
        name_text("cluster.gpu.name", self.name)
        positive_number("cluster.gpu.peak_flops", self.peak_flops)
        positive_number("cluster.gpu.memory_bytes", self.memory_bytes)
        positive_number("cluster.gpu.hbm_bandwidth", self.hbm_bandwidth)
        positive_number("cluster.gpu.op_overhead_s", self.op_overhead_s, allow_zero=True)
        for f in ("sms", "tile_m", "tile_n"):
            positive_int(f"cluster.gpu.{f}", getattr(self, f))
        if not 0 < positive_number("cluster.gpu.max_fraction", self.max_fraction) <= 1:
            raise SpecError(f"cluster.gpu.max_fraction: must be in (0, 1] (got {self.max_fraction})")

    def gemm_seconds(self, m: float, n: float, k: float, batch: int = 1, bandwidth: float | None = None) -> float:
        """``batch`` (m x k) @ (k x n) GEMMs (``element_bytes`` values) in one kernel alone on this GPU (class
        docstring); their bytes move at ``bandwidth`` (default ``hbm_bandwidth``)."""
        if m <= 0 or n <= 0 or k <= 0:
            return 0.0
        memory = self.element_bytes * batch * (m * k + k * n + m * n) / (bandwidth or self.hbm_bandwidth)
        if self.gemm_curve is not None:
            return max(self.gemm_curve.seconds(2.0 * m * n * k * batch, (m, n, k)), memory)
        # A GEMM smaller than a tile runs one smaller tile (cuBLAS picks smaller tiles for it).
        tile_m, tile_n = min(self.tile_m, m), min(self.tile_n, n)
        waves = math.ceil(batch * math.ceil(m / tile_m) * math.ceil(n / tile_n) / self.sms)
        compute = waves * 2.0 * tile_m * tile_n * k * self.sms / (self.peak_flops * self.max_fraction)
        return max(compute, memory)

    def attention_gemm_seconds(self, m: float, n: float, k: float, batch: int, backward: bool,
                               standard: bool = False) -> float:
        """One of an attention core's two forward GEMMs, QK^T (s, s, d) or AV (s, d, s), for ``batch``
        (sequence, head) pairs: in the forward, or its share of the backward (dX and dW of it).

        With measured attention tables each GEMM is half of the measured core of that (s, d); without,
        the GEMMs are priced as GEMMs (the backward's two of each by ``gemm_seconds``), their bytes at
        the score bandwidths when the scores pass through memory (``standard`` attention).
        """
        table = self.attention_backward if backward else self.attention_forward
        if table is None:
            rate = (self.score_backward_bandwidth if backward else self.score_bandwidth) if standard else None
            if backward:
                return self.gemm_seconds(m, k, n, batch, rate) + self.gemm_seconds(k, n, m, batch, rate)
            return self.gemm_seconds(m, n, k, batch, rate)
        s, d = m, (k if n == m else n)
        return table.seconds(4.0 * s * s * d * batch, (s, d)) / 2

    def memory_kernel_seconds(self, model_bytes: float) -> float:
        """Memory-bound kernels that move ``model_bytes`` as the model counts them (bf16 values)."""
        return model_bytes * self.element_bytes / 2 / (self.kernel_bandwidth or self.hbm_bandwidth)

    def score_seconds(self, model_bytes: float, backward: bool) -> float:
        """Standard attention's softmax and dropout moving ``model_bytes`` of scores (bf16 values), in the
        forward or the backward: at the score bandwidths where the GPU has them, else as other kernels."""
        rate = self.score_backward_bandwidth if backward else self.score_bandwidth
        if rate is None:
            return self.memory_kernel_seconds(model_bytes)
        return model_bytes * self.element_bytes / 2 / rate

    def gemm_efficiency(self, m: float, n: float, k: float, batch: int = 1) -> float:
        """The share of peak a GEMM of that shape reaches: 2mnk·batch / (peak x ``gemm_seconds``)."""
        return 2.0 * m * n * k * batch / (self.peak_flops * self.gemm_seconds(m, n, k, batch))


@dataclass(frozen=True)
class LinkSpec:
    """A kind of link: one-way ``bandwidth`` (bytes/s) per port and per-message ``latency`` (s)."""

    name: str
    bandwidth: float
    latency: float

    def __post_init__(self) -> None:
        name_text("cluster.link.name", self.name)
        positive_number(f"cluster.{self.name}.bandwidth", self.bandwidth)
        positive_number(f"cluster.{self.name}.latency", self.latency, allow_zero=True)


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` x ``gpus_per_node`` GPUs; ``intra`` joins GPUs of a node (one port per GPU each way),
    ``inter`` joins nodes through ``nics_per_node`` NICs (GPU i of a node uses NIC i·nics/gpus).

    ``pipeplan.topology`` turns it into a graph; links between GPUs are routes through it.

    The fabric: by default one non-blocking switch joins every NIC. ``nodes_per_leaf`` > 0 makes it
    a leaf/spine fabric, each leaf holding the NICs of that many nodes, every leaf joined to one
    spine whose uplink carries (NIC bandwidth x NICs under the leaf) / ``oversubscription`` each way
    (1 = non-blocking, 2 = "2:1"). ``rail_optimized`` puts NIC i of every node on leaf i (a "rail",
    as in NVIDIA's DGX SuperPOD reference architecture), per group of ``nodes_per_leaf`` nodes
    (all nodes when 0); traffic between rails then crosses the spine.
    """

    name: str
    gpu: GPUSpec
    gpus_per_node: int
    intra: LinkSpec
    inter: LinkSpec
    nics_per_node: int
    nodes: int = 1
    nodes_per_leaf: int = 0
    oversubscription: float = 1.0
    rail_optimized: bool = False
    # What ``pipeplan probe`` measured to fit this spec (``pipeplan.probe.record``); no cost reads it,
    # so it takes no part in equality or hashing.
    probe: ProbeRecord | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.probe is not None:
            object.__setattr__(self, "probe", ProbeRecord.from_dict(self.probe))
        name_text("cluster.name", self.name)
        positive_int("cluster.gpus_per_node", self.gpus_per_node)
        positive_int("cluster.nics_per_node", self.nics_per_node)
        positive_int("cluster.nodes", self.nodes)
        if isinstance(self.nodes_per_leaf, bool) or not isinstance(self.nodes_per_leaf, int) or self.nodes_per_leaf < 0:
            raise SpecError(f"cluster.nodes_per_leaf: must be an integer >= 0, 0 = one switch for all nodes "
                            f"(got {self.nodes_per_leaf!r})")
        if not isinstance(self.rail_optimized, bool):
            raise SpecError(f"cluster.rail_optimized: must be true or false (got {self.rail_optimized!r})")
        if positive_number("cluster.oversubscription", self.oversubscription) < 1:
            raise SpecError(f"cluster.oversubscription: must be >= 1 (downlink:uplink, 1 = non-blocking; "
                            f"got {self.oversubscription!r})")
        if self.oversubscription != 1 and not self.leaf_spine:
            raise SpecError("cluster.oversubscription: a single switch has no uplinks to oversubscribe; "
                            "set nodes_per_leaf or rail_optimized")
        check_cluster_values(self)  # ranges no result overflows in, and the GPU limit of the graph

    @property
    def leaf_spine(self) -> bool:
        """True when the fabric has leaves and a spine (else one non-blocking switch)."""
        return self.nodes_per_leaf > 0 or self.rail_optimized

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

    def capacity(self, port: str) -> float:
        """The capacity (bytes/s, one way) of a port of the cluster's graph, e.g. ``"node0.nic3->leaf0"``."""
        from .topology import topology

        return topology(self).capacity(port)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, probe=None))
        for measured in ("gemm_curve", "attention_forward", "attention_backward", "layer_overheads"):
            if data["gpu"][measured] is not None:
                data["gpu"][measured] = getattr(self.gpu, measured).to_dict()
        if self.probe is None:
            del data["probe"]
        else:
            data["probe"] = self.probe.to_dict()
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ClusterSpec":
        """A cluster from its mapping; ``base`` names a preset whose fields the others override."""
        if not isinstance(data, dict):
            raise SpecError(f"cluster: must be a mapping of fields (got {type(data).__name__})")
        if "base" in data:
            base = data["base"]
            if not isinstance(base, str) or base not in CLUSTER_PRESETS:
                raise SpecError(f"cluster.base: unknown preset {base!r}; choose one of {', '.join(CLUSTER_PRESETS)}")
            data = merge_fields(CLUSTER_PRESETS[base].to_dict(), {k: v for k, v in data.items() if k != "base"})
        _check_fields("cluster", data, ClusterSpec)
        for section, cls in (("gpu", GPUSpec), ("intra", LinkSpec), ("inter", LinkSpec)):
            if section not in data:
                raise SpecError(f"cluster.{section}: required field is missing")
            if not isinstance(data[section], dict):
                raise SpecError(f"cluster.{section}: must be a mapping of fields")
            _check_fields(f"cluster.{section}", data[section], cls, skip=("name",) if cls is LinkSpec else ())
            if cls is LinkSpec and "name" in data[section]:
                name_text(f"cluster.{section}.name", data[section]["name"])
        gpu = GPUSpec(**data["gpu"])
        intra = LinkSpec(**{"name": "intra", **data["intra"]})
        inter = LinkSpec(**{"name": "inter", **data["inter"]})
        rest = {k: v for k, v in data.items() if k not in ("gpu", "intra", "inter")}
        return ClusterSpec(gpu=gpu, intra=intra, inter=inter, **rest)


def _check_fields(where: str, data: dict, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One-line errors for an unknown or missing field of ``cls`` in ``data``."""
    fields = cls.__dataclass_fields__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field; known fields are {', '.join(fields)}")
    missing = [name for name, f in fields.items() if name not in data and name not in skip
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise SpecError(f"{where}.{missing[0]}: required field is missing")


def merge_fields(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it; nested mappings (gpu, intra, inter) merge field by field."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge_fields(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


# HBM: H100 SXM 3.35 TB/s, A100 SXM 80 GB 2.0 TB/s (NVIDIA datasheets, shared REFERENCE); the L40S
# has GDDR6 at 864 GB/s (NVIDIA L40S datasheet).
H100 = GPUSpec("H100-SXM", 989e12, 80e9, sms=132, hbm_bandwidth=3.35e12)
# The A100's GEMM ceiling and the rate its memory-bound kernels reach are its own (GPUSpec docstring);
# the H100 keeps its datasheet bandwidth for those kernels (no measurement of its own here yet).
# Megatron-LM's attention on an A100-SXM4-40GB, ms (Dao et al. 2022, App. E.6): forward 16.50 - 8.43 (Table 11's
# forward + backward less Table 10's backward; Table 9's 16.19 disagrees with both), backward 8.43 (Table 10).
A100_ATTENTION_MS = (16.50 - 8.43, 8.43)
_SCORE_ELEMENTS, _SCORE_BYTES = 16 * 8 * 2048**2, (13.375, 19.5)  # the timed run; bytes per score element
_SCORE_SHARES = tuple(_SCORE_ELEMENTS * b / (ms * 1e-3) / 1.555e12 for b, ms in zip(_SCORE_BYTES, A100_ATTENTION_MS))
A100 = GPUSpec("A100-SXM-80GB", 312e12, 80e9, max_fraction=0.83, sms=108, hbm_bandwidth=2.0e12,
               kernel_bandwidth=1.8e12, score_bandwidth=_SCORE_SHARES[0] * 2.039e12,
               score_backward_bandwidth=_SCORE_SHARES[1] * 2.039e12)
L40S = GPUSpec("L40S", 362e12, 48e9, sms=142, hbm_bandwidth=864e9)

# dgx-h100: NVLink 4 450 GB/s each way per GPU, 8 ConnectX-7 NDR 400 Gb/s = 50 GB/s NICs (one per GPU).
# dgx-a100: NVLink 3 300 GB/s each way is 12 links' line rate; NCCL's rings reach 230 GB/s of bus
# bandwidth on it (~20 GB/s a link with 128-byte payloads, other limits take it to ~230: S. Jeaugey,
# NVIDIA, nccl-tests issue #149, 2023), so the preset's NVLink is 230 GB/s; 8 HDR 200 Gb/s = 25 GB/s
# NICs (DGX A100 user guide). The dgx-h100 NVLink stays at its 450 GB/s line rate (NCCL's rings
# reach ~370 GB/s there, nccl-tests issue #212: not applied yet, it moves every H100 figure).
# pcie-l40s: 8 L40S on PCIe Gen4 x16 (64 GB/s bidirectional in the datasheet = 32 GB/s each way; 25 GB/s
# is what a Gen4 x16 copy reaches) behind one PCIe switch, one 100 GbE NIC (12.5 GB/s) per node.

CLUSTER_PRESETS: dict[str, ClusterSpec] = {
    "dgx-h100": ClusterSpec(
        "dgx-h100", H100, 8, LinkSpec("nvlink", 450e9, 3e-6), LinkSpec("ib", 50e9, 5e-6), nics_per_node=8
    ),
    "dgx-a100": ClusterSpec(
        "dgx-a100", A100, 8, LinkSpec("nvlink", 230e9, 3e-6), LinkSpec("ib", 25e9, 5e-6), nics_per_node=8
    ),
    "pcie-l40s": ClusterSpec(
        "pcie-l40s", L40S, 8, LinkSpec("pcie", 25e9, 10e-6), LinkSpec("eth", 12.5e9, 20e-6), nics_per_node=1
    ),
}


def load_cluster(name_or_path: str | dict | ClusterSpec, nodes: int | None = None,
                 overrides: dict[str, Any] | None = None) -> ClusterSpec:
    """A preset name, a JSON/YAML file, or a mapping; ``overrides`` replace fields (nested sections
    merge, see ``merge_fields``), ``nodes`` the node count."""
    if overrides:
        base = load_cluster(name_or_path)
        return load_cluster(merge_fields(base.to_dict(), overrides), nodes)
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
