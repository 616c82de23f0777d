"""Throughput figures of a simulated or measured iteration: tokens/s, FLOPs, TFLOP/s per GPU, MFU.

Two FLOP counts, as Narayanan et al. (SC'21, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", section 5.1 and appendix) use them:

* **model FLOPs**: forward + backward of every layer, once: what the model needs, whatever the
  implementation does. MFU = model FLOPs / (iteration time x GPUs x peak) (Chowdhery et al. 2022,
  PaLM, appendix B).
* **hardware FLOPs**: model FLOPs plus the extra forward a fully recomputing stage runs before its
  backward. Megatron's eq. 3 is this count for a GPT model with every block recomputed, and its
  SC'21 tables report TFLOP/s per GPU from it.

Both are read off the model's own per-layer FLOPs (``ModelSpec.layer_cost``), so they count what
the simulator times (grouped-query attention, SwiGLU). For a GPT block those are eq. 3's terms
exactly: 72·b·s·h² + 12·b·s²·h per layer, 6·b·s·h·V for the LM head (``megatron_flops`` is eq. 3
itself, for comparing with Megatron's tables). Full recomputation re-runs the blocks only
(``model.RECOMPUTED_KINDS``), as eq. 3 assumes; one difference from eq. 3 is on purpose: the
embedding's nominal 2·b·s·h FLOPs per pass are counted.

GPUs = tp x pp x dp; every figure is for the whole global batch (all data-parallel replicas).
"""
from __future__ import annotations

from dataclasses import dataclass

from .lowering import Resolved
from .model import RECOMPUTED_KINDS


def megatron_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int, recompute: bool = True) -> float:
    """FLOPs of one iteration of a GPT model, Narayanan et al. 2021 eq. 3.

    With full activation recomputation (eq. 3 as printed):
    ``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))`` = 96Bslh² + 16Bs²lh + 6BshV.
    Without it the blocks' forward runs once less (a factor 3/4 on the block terms) but the LM head
    is never recomputed, so the head term stays 6BshV: ``72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))``.
    (Writing the no-recomputation form as "72 with the same bracket" would shrink the head term to
    4.5BshV.)
    """
    b, s, l, h, v = (float(x) for x in (batch, seq_len, layers, hidden, vocab))
    if recompute:
        return 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    return 72 * b * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))


@dataclass(frozen=True)
class IterationFlops:
    """FLOPs of one iteration of the whole global batch (see the module docstring)."""

    model: float  # forward + backward, no recomputation (what MFU counts)
    hardware: float  # model + the forward every recomputing stage runs again (Megatron eq. 3's count)


def model_flops_per_iteration(r: Resolved) -> float:
    """Forward + backward FLOPs of one pipeline replica's iteration, without recomputation (as MFU counts)."""
    b, s, m = r.plan.microbatch_size, r.seq_len, r.plan.num_microbatches
    per_microbatch = 0.0
    for i in range(r.model.num_pipeline_layers):
        c = r.model.layer_cost(i, b, s)
        per_microbatch += c.forward_flops + c.input_grad_flops + c.weight_grad_flops
    return per_microbatch * m


def iteration_flops(r: Resolved) -> IterationFlops:
    """Model and hardware FLOPs of one iteration, all ``dp`` replicas together."""
    plan = r.plan
    b, s = plan.microbatch_size, r.seq_len
    recomputed = 0.0
    for stage in range(plan.num_stages):
        if plan.recompute_of(stage):
            recomputed += sum(r.model.layer_cost(i, b, s).forward_flops for i in plan.stage_layers(stage)
                              if r.model.layer_kind(i) in RECOMPUTED_KINDS)
    replica = model_flops_per_iteration(r)
    return IterationFlops(model=replica * plan.dp,
                          hardware=(replica + recomputed * plan.num_microbatches) * plan.dp)


def tokens_per_second(r: Resolved, iteration_time: float) -> float:
    """Tokens of the whole data-parallel batch per second."""
    tokens = r.plan.microbatch_size * r.plan.num_microbatches * r.seq_len * r.plan.dp
    return tokens / iteration_time


def flops_per_gpu(flops: float, iteration_time: float, num_gpus: int) -> float:
    """FLOP/s each GPU sustains on average: ``flops`` over the iteration and all GPUs."""
    return flops / (iteration_time * num_gpus)


def mfu(r: Resolved, iteration_time: float) -> float:
    """Model FLOPs utilisation: model FLOPs / (iteration time x tp·pp·dp GPUs x peak)."""
    per_gpu = flops_per_gpu(iteration_flops(r).model, iteration_time, r.plan.num_gpus)
    return per_gpu / r.cluster.gpu.peak_flops
