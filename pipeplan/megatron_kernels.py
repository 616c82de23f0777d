"""What a block, an LM head and a weight gradient cost beyond the model's fused count under older
Megatron-LM code: the memory-bound passes its GPT of 2021-22 made (``ModelSpec.kernels``).

``"fused"`` (the default) is the count of ``pipeplan.layer_costs``: a GEMM's bias fused into the kernel
after it, no layout copies, a cross-entropy that reads the 16-bit logits once. Megatron-LM's GPT
with ``--fp16`` moved more (bytes per token of one tensor-parallel rank, 16-bit values, t ranks):

* ``"megatron-2022"`` (Megatron-LM of May 2022, ``megatron/model/transformer.py`` and
  ``megatron/mpu/layers.py``, the code of Korthikanti et al. 2022), per block: the QKV bias added
  after the 3-D GEMM (``output + bias``: read and write 3h/t values, 12h/t bytes; its gradient a
  reduction reading 3h/t, 6h/t bytes) and the attention output's ``permute(2, 0, 1, 3).contiguous()``
  (read and write h/t, 4h/t bytes); in the backward the copies that reshape the gradients of the
  transposed q, k and v views (12h/t), their concatenation into the QKV gradient
  (``split_tensor_along_last_dim``'s backward, 12h/t) and the permute's (4h/t): 16h/t bytes
  forward, 34h/t backward. Per logit of the LM head, the cross-entropy on ``output.float()``
  (``mpu/cross_entropy.py``: the cast reads 2 and writes 4, max reads 4, subtract, exp and divide
  in place read and write 4 each, the sum reads 4; backward multiplies in place, 8, and casts back,
  6): 38 bytes forward and 14 backward where the fused count has 6 and 6.
* ``"megatron-2021"`` (the code of Narayanan et al. SC'21, April 2021): the same passes, and the
  gradients of every micro-batch accumulated into the 16-bit ``.grad`` by autograd (read the new and
  the accumulated gradient, write the sum: 6 bytes per parameter in W; fp16 runs without
  ``--accumulate-allreduce-grads-in-fp32``; gradient accumulation fusion came later). The first
  micro-batch of an iteration only stores its gradient; the count charges every micro-batch, 1/m too
  much of it. An embedding's tables are accumulated in every version (a lookup's dense gradient,
  added in I: ``pipeplan.layer_costs.embedding_cost``), so this adds nothing to it.

Both ran ``--fp16`` without ``--accumulate-allreduce-grads-in-fp32`` (Megatron-LM ``examples/sc21/CONFIG.sh``
and ``examples/pretrain_gpt3_175B.sh``: ``--fp16 --clip-grad 1.0``), which sets two more numbers:

* the data-parallel reduction moves fp16 gradients, ``FP16_GRAD_BYTES`` per parameter (the local
  DDP's buffer has the parameters' dtype, ``megatron/model/distributed.py``; PyTorch DDP reduces
  ``.grad``), where the fused default reduces fp32 ``main_grad``;
* the optimizer step (``Float16OptimizerWithFloat16Params.step``, ``megatron/optimizer/optimizer.py``
  and ``clip_grads.py`` at Megatron-LM commits a8d172b31e, 28 April 2021, and 55ba1f7b96, 26 May 2022)
  makes five passes over memory, in bytes per parameter:
  ``_copy_model_grads_to_main_grads`` (``grad.float()``: read 2, write 4), ``_unscale_main_grads_and_check_for_nan``
  (``torch._amp_foreach_non_finite_check_and_unscale_``: read 4, write 4), ``clip_grad_norm_fp32``'s
  norm (``amp_C.multi_tensor_l2norm``: read 4), apex ``FusedAdam`` (read the gradient, the fp32 weight,
  m and v, write the last three: 28) and ``_copy_main_params_to_model_params`` (``multi_tensor_scale``:
  read 4, write 2): 6 + 8 + 4 + 28 + 6 = 52 (``FP16_STEP_BYTES``). Left out: clipping's scaling pass
  (read and write 4), which runs only when the norm exceeds 1.0, and zeroing the local DDP's fp16
  gradient buffer (write 2) before the next iteration.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import LayerCost

FUSED, MEGATRON_2022, MEGATRON_2021 = "fused", "megatron-2022", "megatron-2021"
KERNEL_CHOICES = (FUSED, MEGATRON_2022, MEGATRON_2021)

BLOCK_FORWARD_BYTES = 16  # x h/t per token: QKV bias add 12, context permute copy 4
BLOCK_BACKWARD_BYTES = 34  # x h/t per token: bias gradient 6, q/k/v gradient copies 12, concatenation 12, permute 4
LOGIT_FORWARD_BYTES, LOGIT_BACKWARD_BYTES = 38 - 6, 14 - 6  # per logit, beyond the fused count
ACCUMULATE_BYTES = 6  # per parameter and micro-batch: read two 16-bit gradients, write their sum
FP16_GRAD_BYTES = 2  # per parameter, the gradient the data-parallel group reduces
FP16_STEP_BYTES = 6 + 8 + 4 + 28 + 6  # per parameter: grad copy, unscale, norm, Adam, weight copy


def with_kernels(kernels: str, kind: str, cost: "LayerCost", tokens: int, hidden: int, vocab: int,
                 tp: int) -> "LayerCost":
    """``cost`` (one layer of kind ``kind`` for ``tokens`` tokens on one of ``tp`` ranks) with the
    memory-bound bytes ``kernels`` adds (module docstring)."""
    if kernels == FUSED:
        return cost
    forward = backward = 0.0
    if kind == "block":
        forward, backward = tokens * BLOCK_FORWARD_BYTES * hidden / tp, tokens * BLOCK_BACKWARD_BYTES * hidden / tp
    elif kind == "head":
        forward, backward = tokens * LOGIT_FORWARD_BYTES * vocab / tp, tokens * LOGIT_BACKWARD_BYTES * vocab / tp
    # An embedding's count already accumulates its tables' gradients (in I, ``layer_costs.embedding_cost``).
    accumulate = ACCUMULATE_BYTES * cost.params if kernels == MEGATRON_2021 and kind != "embedding" else 0.0
    return replace(cost, forward_memory_bytes=cost.forward_memory_bytes + forward,
                   input_grad_memory_bytes=cost.input_grad_memory_bytes + backward,
                   weight_grad_memory_bytes=cost.weight_grad_memory_bytes + accumulate)
