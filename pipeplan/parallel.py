"""3D parallel layout: which GPU holds which (tensor, data, pipeline) rank, in Megatron's order.

Megatron-LM's ``initialize_model_parallel`` orders ranks tensor-parallel innermost, then data
parallel, then pipeline outermost: GPU = t + tp·(d + dp·p) for tensor rank t, data rank d and
pipeline rank p. Its docstring's example (16 GPUs, tp=2, pp=4, dp=2) gives tensor groups
[0,1] [2,3] ..., data groups [0,2] [1,3] ... and pipeline groups [0,4,8,12] [1,5,9,13] ...
Tensor-parallel groups must stay inside one NVLink domain (a node): tp divides the GPUs per node.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError, positive_int


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        positive_int("tp", self.tp)
        positive_int("pp", self.pp)
        positive_int("dp", self.dp)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def gpu(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp * (dp_rank + self.dp * pp_rank)

    def ranks(self, gpu: int) -> tuple[int, int, int]:
        """The (tensor, data, pipeline) ranks of ``gpu``, the inverse of ``gpu(tp_rank, dp_rank, pp_rank)``."""
        return gpu % self.tp, (gpu // self.tp) % self.dp, gpu // (self.tp * self.dp)

    def pipeline_gpus(self, dp_rank: int = 0, tp_rank: int = 0) -> list[int]:
        """The GPU of every pipeline rank of one (data, tensor) replica; replica (0, 0) is the simulated one."""
        return [self.gpu(tp_rank, dp_rank, p) for p in range(self.pp)]

    def replica(self, dp_rank: int, tp_rank: int) -> int:
        """The number of the (data, tensor) replica, d·tp + t: its index in ``replicas()``."""
        return dp_rank * self.tp + tp_rank

    def replicas(self) -> list[list[int]]:
        """Per replica (numbered as ``replica``), the GPU of each pipeline rank."""
        return [self.pipeline_gpus(d, t) for d in range(self.dp) for t in range(self.tp)]

    def tensor_group(self, pp_rank: int, dp_rank: int = 0) -> list[int]:
        return [self.gpu(t, dp_rank, pp_rank) for t in range(self.tp)]

    def data_group(self, pp_rank: int, tp_rank: int = 0) -> list[int]:
        return [self.gpu(tp_rank, d, pp_rank) for d in range(self.dp)]

    def check_fits(self, num_gpus: int, gpus_per_node: int, where: str = "cluster") -> None:
        """One-line errors for a layout the cluster cannot hold, naming the fix."""
        if self.num_gpus > num_gpus:
            raise SpecError(f"{where}: tp x pp x dp = {self.tp} x {self.pp} x {self.dp} = {self.num_gpus} GPUs but "
                            f"the cluster has {num_gpus}; raise --nodes or lower tp, pp or dp")
        check_tensor_group(self.tp, gpus_per_node)


def check_tensor_group(tp: int, gpus_per_node: int, field: str = "tp") -> None:
    """A one-line error unless a tensor-parallel group of ``tp`` fits a node's NVLink domain evenly."""
    if gpus_per_node % tp:
        raise SpecError(f"{field}: a tensor-parallel group must stay inside one node of {gpus_per_node} GPUs; "
                        f"use a tp that divides {gpus_per_node} (got {tp})")


def check_sequence_parallel(sequence_parallel: bool, tp: int, field: str = "sequence_parallel",
                            tp_field: str = "tp") -> None:
    """Sequence parallelism splits work over a tensor group: a one-line error without one."""
    if sequence_parallel and tp == 1:
        raise SpecError(f"{field}: needs tensor parallelism ({tp_field} > 1); set {tp_field} or drop it")


def default_placement(pp: int, dp: int, tp: int = 1) -> list[int]:
    """The GPU of each pipeline device when a plan names none: pipeline rank d of data replica 0 and
    tensor rank 0 in Megatron's order, GPU d·dp·tp."""
    return Layout(tp, pp, dp).pipeline_gpus()
