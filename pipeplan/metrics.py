"""Throughput figures of a simulated or measured iteration."""
from __future__ import annotations

from .lowering import Resolved


def model_flops_per_iteration(r: Resolved) -> float:
    """Forward + backward FLOPs of one pipeline replica's iteration, without recomputation (as MFU counts)."""
    b, s, m = r.plan.microbatch_size, r.seq_len, r.plan.num_microbatches
    per_microbatch = 0.0
    for i in range(r.model.num_pipeline_layers):
        c = r.model.layer_cost(i, b, s)
        per_microbatch += c.forward_flops + c.input_grad_flops + c.weight_grad_flops
    return per_microbatch * m


def tokens_per_second(r: Resolved, iteration_time: float) -> float:
    """Tokens of the whole data-parallel batch per second."""
    tokens = r.plan.microbatch_size * r.plan.num_microbatches * r.seq_len * r.plan.dp
    return tokens / iteration_time


def mfu(r: Resolved, iteration_time: float) -> float:
    """Model FLOPs utilisation of the pipeline's GPUs."""
    return model_flops_per_iteration(r) / (iteration_time * r.plan.pp * r.cluster.gpu.peak_flops)
