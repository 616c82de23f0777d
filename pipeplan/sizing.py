"""A 3D-parallel plan from a few numbers: tp, pp, dp, GPUs and nodes, the missing ones derived.

GPUs = tp x pp x dp (Megatron-LM's layout, ``pipeplan.parallel``). The rules, in order:

* ``tp`` defaults to 1; it must divide the GPUs of a node (a tensor group stays in one NVLink domain).
* ``gpus`` says how many GPUs the plan uses, exactly; ``nodes`` how many nodes the cluster has (GPUs
  beyond tp x pp x dp may stay idle). Given ``gpus`` alone, nodes = ceil(gpus / GPUs per node); given
  both, they must agree on that.
* ``pp`` missing: pp = available GPUs / (tp x dp), dp defaulting to 1, where the available GPUs are
  ``gpus``, else every GPU of the ``nodes`` (or of the cluster).
* ``dp`` missing with ``pp`` given: dp = gpus / (tp x pp) when ``gpus`` is given, else 1.

A contradiction is a one-line ``SpecError`` naming the flags that disagree (the CLI exits 2).
"""
from __future__ import annotations

from dataclasses import dataclass

from .cluster import ClusterSpec, load_cluster
from .errors import SpecError, positive_int
from .limits import check, check_cluster_size, check_model
from .model import ModelSpec, load_model
from .parallel import check_sequence_parallel, check_tensor_group
from .plan import Plan, even_split


@dataclass(frozen=True)
class Sizing:
    """The derived layout: ``tp`` x ``pp`` x ``dp`` GPUs on a cluster of ``nodes`` nodes."""

    tp: int
    pp: int
    dp: int
    nodes: int

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp


def derive_sizing(gpus_per_node: int, cluster_nodes: int, *, tp: int | None = None, pp: int | None = None,
                  dp: int | None = None, gpus: int | None = None, nodes: int | None = None) -> Sizing:
    """tp, pp, dp and nodes from what is given (see the module docstring)."""
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("gpus", gpus), ("nodes", nodes)):
        if value is not None:
            positive_int(f"--{name}", value)
    tp = tp or 1
    check_tensor_group(tp, gpus_per_node, "--tp")
    if gpus is not None:
        needed = -(-gpus // gpus_per_node)
        if nodes is not None and nodes != needed:
            raise SpecError(f"--gpus {gpus} and --nodes {nodes} disagree: {gpus} GPUs fill {needed} node(s) "
                            f"of {gpus_per_node}; give one of them")
        nodes = needed
    available = gpus if gpus is not None else (nodes or cluster_nodes) * gpus_per_node
    source = f"--gpus {gpus}" if gpus is not None else (
        f"--nodes {nodes} ({available} GPUs)" if nodes is not None else f"the cluster's {available} GPUs")
    if pp is None:
        dp = dp or 1
        if available % (tp * dp):
            raise SpecError(f"--pp: not given, and {source} is not a multiple of --tp x --dp = {tp} x {dp}; "
                            "give --pp or change --tp/--dp")
        pp = available // (tp * dp)
    elif dp is None:
        if gpus is not None and gpus % (tp * pp):
            raise SpecError(f"--dp: not given, and --gpus {gpus} is not a multiple of --tp x --pp = {tp} x {pp}")
        dp = gpus // (tp * pp) if gpus is not None else 1
    total = tp * pp * dp
    if gpus is not None and total != gpus:
        raise SpecError(f"--gpus {gpus} but --tp x --pp x --dp = {tp} x {pp} x {dp} = {total}; "
                        "drop one of them to derive it")
    if total > available:
        raise SpecError(f"--tp x --pp x --dp = {tp} x {pp} x {dp} = {total} GPUs but {source}; "
                        "raise --nodes or lower tp, pp or dp")
    return Sizing(tp, pp, dp, nodes if nodes is not None else cluster_nodes)


def make_plan(model: str | dict | ModelSpec, cluster: str | dict | ClusterSpec = "dgx-h100",
              schedule: str = "1f1b", *, tp: int | None = None, pp: int | None = None, dp: int | None = None,
              gpus: int | None = None, nodes: int | None = None, chunks: int | None = None,
              microbatches: int | None = None, microbatch_size: int = 1, seq_len: int | None = None,
              recompute: str = "none", sequence_parallel: bool = False,
              distributed_optimizer: bool = False, blocking_p2p: bool = False,
              scatter_gather_p2p: bool = False, overlap_grad_reduce: bool = True) -> Plan:
    """A plan with an even layer split, its layout derived by ``derive_sizing``.

    ``microbatches`` (per data-parallel replica) defaults to 4 x pp; ``chunks`` to the schedule's.
    ``pipeplan simulate`` builds its plan from flags with this function.
    """
    from simulator.schedules import SCHEDULES

    spec = load_model(model)
    check_model(spec)
    base = load_cluster(cluster)
    if nodes is not None:
        check_cluster_size(positive_int("--nodes", nodes), base.gpus_per_node, "--nodes")
    if gpus is not None:
        check("gpus", positive_int("--gpus", gpus), "--gpus", "lower --gpus")
    if schedule not in SCHEDULES:
        raise SpecError(f"schedule: unknown {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    sizing = derive_sizing(base.gpus_per_node, base.nodes, tp=tp, pp=pp, dp=dp, gpus=gpus, nodes=nodes)
    check_sequence_parallel(sequence_parallel, sizing.tp, "--sequence-parallel", "--tp")
    for name, value in (("chunks", chunks), ("microbatches", microbatches)):
        if value is not None:
            positive_int(f"--{name}", value)  # 0 is refused, not taken as the default
    chunks = SCHEDULES[schedule].default_chunks if chunks is None else chunks
    stages = sizing.pp * chunks
    return Plan(
        model=model.to_dict() if isinstance(model, ModelSpec) else model,
        cluster=cluster.to_dict() if isinstance(cluster, ClusterSpec) else cluster,
        nodes=sizing.nodes if (nodes is not None or gpus is not None) else None,
        schedule=schedule, pp=sizing.pp, tp=sizing.tp, dp=sizing.dp, chunks=chunks,
        num_microbatches=sizing.pp * 4 if microbatches is None else microbatches,
        microbatch_size=microbatch_size, seq_len=seq_len,
        layers_per_stage=even_split(spec.num_pipeline_layers, stages), recompute=(recompute,) * stages,
        sequence_parallel=sequence_parallel, distributed_optimizer=distributed_optimizer,
        blocking_p2p=blocking_p2p, scatter_gather_p2p=scatter_gather_p2p, overlap_grad_reduce=overlap_grad_reduce,
    )
