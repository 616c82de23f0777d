"""Megatron's sequence-parallel activation memory: a column-parallel region's input is kept as this
tensor rank's sequence shard and all-gathered again when the backward needs it.

With sequence parallelism (``tensor_parallel.TensorGroup.sequence_parallel``) the QKV, FC1 (and gate)
and LM-head matmuls read the whole sequence, all-gathered from every rank's s/t shard. Autograd would
save that gathered tensor for their weight gradients, t times what Korthikanti et al. 2022 (Table 2,
sbh/t for the norms' outputs) count. Megatron keeps the shard and gathers it again in the backward
(``LinearWithGradAccumulationAndAsyncCommunication.backward``; one gather per region, since its QKV is
one matmul); ``shard_saves`` does the same with saved-tensor hooks around a block's or the head's
forward: a gathered tensor that a matmul saves is packed as its shard, and the first unpack in the
backward gathers it once for every matmul that saved it (q, k and v share one gather, as gate and up
do). Under a split backward the gather happens in I, which hands the whole input to W, as the Zero
Bubble authors' Megatron keeps it. The simulator prices the same gathers (``pipeplan.layer_costs``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class _Regather:
    """One gathered input, saved as its shard by ``uses`` matmuls; gathered again on the first unpack."""

    def __init__(self, shard: torch.Tensor, tensor) -> None:
        self.shard, self.tensor, self.uses, self.whole = shard, tensor, 0, None

    def unpack(self) -> torch.Tensor:
        whole = self.whole
        if whole is None:
            whole = self.tensor.gather_sequence(self.shard)
        self.uses -= 1
        self.whole = whole if self.uses > 0 else None  # the last matmul to need it lets it go
        return whole


@contextmanager
def shard_saves(tensor):
    """Inside, tensors that ``tensor.enter`` gathered are saved for the backward as their shards (no-op
    without sequence parallelism)."""
    if not (tensor.sequence_parallel and tensor.size > 1):
        yield
        return
    gathered: dict[tuple, _Regather] = {}  # by storage and shape: autograd may hand pack another view object

    def remember(whole: torch.Tensor, shard: torch.Tensor) -> None:
        gathered[(whole.data_ptr(), tuple(whole.shape))] = _Regather(shard.detach(), tensor)

    def pack(saved: torch.Tensor):
        entry = gathered.get((saved.data_ptr(), tuple(saved.shape)))
        if entry is None:
            return saved
        entry.uses += 1
        return entry

    def unpack(packed):
        return packed.unpack() if isinstance(packed, _Regather) else packed

    previous, tensor.on_gather = tensor.on_gather, remember
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        tensor.on_gather = previous
