"""Where a rank sits in a 3D-parallel run, and the process groups that follow from it.

Ranks are placed in Megatron-LM's order, as the plan's GPUs are (``pipeplan.parallel.Layout``): global
rank = t + tp·(d + dp·p) for tensor rank t, data rank d and pipeline rank p. Replica (d, t) is one
pipeline: the ranks of its p pipeline devices. The simulator times replica (0, 0), so the validator's
measured timelines and profile come from its ranks; the other replicas run the same schedule at the
same time, on their own channels, and meet replica (0, 0) in the tensor and data collectives.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from pipeplan.parallel import Layout

from .tensor_parallel import SINGLE, TensorGroup


@dataclass(frozen=True)
class RankPlace:
    """This rank's (tensor, data, pipeline) coordinates in ``layout``."""

    layout: Layout
    rank: int

    @property
    def tp_rank(self) -> int:
        return self.layout.ranks(self.rank)[0]

    @property
    def dp_rank(self) -> int:
        return self.layout.ranks(self.rank)[1]

    @property
    def pp_rank(self) -> int:
        return self.layout.ranks(self.rank)[2]

    @property
    def replica(self) -> int:
        """This rank's pipeline replica (``Layout.replica``; replica 0 is the simulated one)."""
        return self.layout.replica(self.dp_rank, self.tp_rank)

    def replicas(self) -> list[list[int]]:
        """Per replica, the global rank of each pipeline device."""
        return self.layout.replicas()


@dataclass(frozen=True)
class Groups:
    """This rank's tensor group (``TensorGroup``; size 1 without tensor parallelism) and data-parallel
    process group (None with dp = 1)."""

    tensor: TensorGroup
    data: object


def make_groups(place: RankPlace, backend: str, timeout: float, sequence_parallel: bool = False) -> Groups:
    """Create every tensor group and every data group on every rank (``new_group`` is collective: all
    ranks make all groups, in one order), and keep this rank's (its tensor group with the plan's
    ``sequence_parallel``)."""
    layout = place.layout
    wait = timedelta(seconds=timeout)
    tensor, data = SINGLE, None
    if layout.tp > 1:
        for p in range(layout.pp):
            for d in range(layout.dp):
                members = layout.tensor_group(p, d)
                group = dist.new_group(members, timeout=wait, backend=backend)
                if place.rank in members:
                    tensor = TensorGroup(layout.tp, members.index(place.rank), group, sequence_parallel)
    if layout.dp > 1:
        for p in range(layout.pp):
            for t in range(layout.tp):
                members = layout.data_group(p, t)
                group = dist.new_group(members, timeout=wait, backend=backend)
                if place.rank in members:
                    data = group
    return Groups(tensor, data)
