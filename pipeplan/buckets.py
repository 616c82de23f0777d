"""Gradient buckets: which parts of a stage's gradients are reduced, and when each is complete.

Megatron-LM's DDP (``megatron/core/distributed/distributed_data_parallel.py`` and
``param_and_grad_buffer.py``, core 0.7) lays a model chunk's gradients out in a buffer in reverse
order of the forward, so that the backward fills it front to back, and cuts it into buckets of
``bucket_size`` parameters (``--ddp-bucket-size``; by default max(40,000,000, 1,000,000 x dp), so that
the rings of large data-parallel groups stay bandwidth-bound). With ``--overlap-grad-reduce`` a
bucket's all-reduce (reduce-scatter with the distributed optimizer) starts as soon as the last
micro-batch's backward has produced all of its gradients, while the backward goes on. Megatron
buckets only the first pipeline stage (pipeline rank 0, and in the interleaved schedule only its
first model chunk: ``disable_bucketing`` for the others): elsewhere the reduction is off the
critical path, and the chunk is one bucket. PyTorch's DDP buckets every stage (``bucket_cap_mb``,
25 MB by default).

Here the gradients of a stage's layers are complete in backward order (last layer first), each
layer's evenly over its share of the op that produces them (the stage's last weight-gradient op in
the schedule: a full backward B, or W when the backward is split; per layer, the cost model's time
for that op, ``pipeplan.costs``). Bucket i holds the i-th ``bucket_params`` parameters in that order
(the last one the rest) and is ready at the fraction of the op where its last parameter's gradient
is: the simulator's ``Bucket(share, ready)``, which lets the bucket's reduction start that far into
the op (``simulator.workload.Collective.buckets``).
"""
from __future__ import annotations

import math
from typing import Sequence

from simulator.kinds import BACKWARD_WEIGHT, FULL_BACKWARD
from simulator.workload import Bucket

FIRST, EVERY = "first", "every"  # which stages are bucketed: Megatron's (stage 0 only) or PyTorch DDP's


def megatron_bucket_params(dp: int) -> int:
    """Megatron core's default bucket size in parameters: max(40,000,000, 1,000,000 x dp)."""
    return max(40_000_000, 1_000_000 * dp)


def bucketed(stage: int, which: str) -> bool:
    """Whether ``stage``'s gradients are cut into buckets: every stage, or Megatron's stage 0 only
    (pipeline rank 0's first model chunk)."""
    return which == EVERY or stage == 0


def last_weight_kind(device_actions: Sequence, stage: int) -> str | None:
    """The kind (B or W) of ``stage``'s last weight-gradient op in its device's list, if it has one."""
    kind = None
    for action in device_actions:
        if action.stage == stage and action.kind in (FULL_BACKWARD, BACKWARD_WEIGHT):
            kind = action.kind
    return kind


def gradient_buckets(layer_params: Sequence[float], layer_seconds: Sequence[float],
                     bucket_params: float) -> tuple[Bucket, ...]:
    """The buckets of a stage whose layers (in forward order) hold ``layer_params`` parameters and
    take ``layer_seconds`` of the op that produces their gradients (see the module docstring).

    One bucket, or none to cut (``bucket_params`` 0 or at least the stage's parameters): ().
    """
    total = float(sum(layer_params))
    if bucket_params <= 0 or total <= bucket_params:
        return ()
    count = math.ceil(total / bucket_params)
    order = list(zip(reversed(layer_params), reversed(layer_seconds)))
    op_time = float(sum(layer_seconds))
    buckets = []
    done_params = done_time = 0.0
    layer = 0
    for i in range(count - 1):
        boundary = (i + 1) * bucket_params
        while done_params + order[layer][0] < boundary:
            done_params += order[layer][0]
            done_time += order[layer][1]
            layer += 1
        params, seconds = order[layer]
        reached = done_time + seconds * (boundary - done_params) / params
        buckets.append(Bucket(bucket_params / total, reached / op_time if op_time > 0 else 1.0))
    buckets.append(Bucket((total - (count - 1) * bucket_params) / total, 1.0))
    return tuple(buckets)
