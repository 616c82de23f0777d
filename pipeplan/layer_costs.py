"""What one pipeline layer costs for one micro-batch on one tensor-parallel rank (``ModelSpec.layer_cost``).

Every quantity is a function of micro-batch size b, sequence length s and the tensor-parallel layout
(t ranks, sequence parallelism or not), derived from the architecture's shapes so that the textbook
numbers fall out:

* forward FLOPs of a dense GPT block (24·b·s·h² + 4·b·s²·h) / t (Narayanan et al., SC'21; the
  GEMMs of Shoeybi et al. 2019, "Megatron-LM", split column- then row-parallel over t); in general
  2·b·s·(the block's matrix parameters) + 4·b·s²·heads·head_dim (bias adds are left out);
* stored activations of a GPT block with dropout, Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", Table 2): s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes
  without sequence parallelism, s·b·h/t·(34 + 5·a·s/h) with it; the 5·a·s/h attention-score term
  is absent with FlashAttention-style kernels (``attention="flash"``, the default) and with
  selective recomputation;
* full recomputation keeps only a block's input, 2·s·b·h bytes (/t with sequence parallelism); the
  embedding and the final norm + LM head are not checkpointed (``model.RECOMPUTED_KINDS``) and keep
  what they keep without it;
* the tensor-parallel collectives of each layer (Shoeybi et al. 2019 Fig. 3: 2 all-reduces of
  s·b·h values in the forward, 2 in the backward; Korthikanti et al. 2022 Sec. 4.2.2: an all-gather
  and a reduce-scatter instead of each with sequence parallelism); the embedding and LM head are
  vocabulary-parallel (Megatron ``VocabParallelEmbedding``, ``vocab_parallel_cross_entropy``);
* the GEMM shapes (so that a GPU's efficiency can depend on the shape, ``GPUSpec.gemm_seconds``)
  and the bytes the memory-bound kernels move (norms, residual adds, dropout, activation, softmax).
"""
from __future__ import annotations

from .collectives import ALL_GATHER, ALL_REDUCE, REDUCE_SCATTER
from .model import BYTES_BF16, LayerCost, ModelSpec


def block_params(model: ModelSpec, tp: int) -> float:
    """One rank's share of a block's parameters: the matrices and the biases of their column-parallel
    outputs split over t, the biases after a row-parallel matrix (O, fc2) and the norms replicated."""
    h, f, q, kv = model.hidden, model.ffn_hidden, model.q_dim, model.kv_dim
    split = model.block_matrix_params + (q + 2 * kv if model.qkv_bias else 0)
    split += ((2 if model.gated_mlp else 1) * f if model.mlp_bias else 0)
    replicated = model.block_norms * model.norm_params(h)
    replicated += 2 * model.norm_params(model.head_size) if model.qk_norm else 0
    replicated += (h if model.out_bias else 0) + (h if model.mlp_bias else 0)
    return split / tp + replicated


def block_cost(model: ModelSpec, b: int, s: int, tp: int, sp: bool) -> LayerCost:
    """A transformer block: attention and MLP, their norms, residual adds and dropout."""
    h, f, kv, q, n, a = model.hidden, model.ffn_hidden, model.kv_dim, model.q_dim, b * s, model.heads
    mlp_mats = 3 if model.gated_mlp else 2
    matmul_params = model.block_matrix_params
    gemms = ((n, (q + 2 * kv) / tp, h, 1), (n, h, q / tp, 1),  # QKV (column-), O (row-parallel)
             (n, (mlp_mats - 1) * f / tp, h, 1), (n, h, f / tp, 1))  # fc1 (+ gate), fc2
    d = model.head_size
    attention_gemms = ((s, s, d, b * a // tp), (s, d, s, b * a // tp))  # QK^T, AV per head
    matmul_flops = 2 * n * matmul_params / tp
    attention_flops = 4 * b * s * s * q / tp  # QK^T and AV, counted dense as in Narayanan et al.
    mask = 1 if model.dropout else 0
    # Saved for backward, in bytes, element by element (bf16 = 2, dropout masks = 1), split the
    # way Korthikanti et al. 2022 Sec. 4.1 splits them: ``replicated`` on every tensor rank unless
    # sequence parallelism shards it (norm inputs, QKV and fc1 inputs, dropout masks),
    # ``split`` inside the tensor-parallel regions (Q, K, V, O input, MLP inner activations).
    mlp_inner = (3 if model.gated_mlp else 2) * f  # gate+up+act(gate)*up, or fc1 out + gelu out
    replicated = 2 * h * model.block_norms + 2 * h + 2 * h + 2 * mask * h
    split = 2 * q + 2 * 2 * kv + 2 * q + 2 * mlp_inner
    score = (2 + 3 * mask) * a * s if model.attention == "standard" else 0  # softmax out, mask, dropout out
    rep_share = 1 / tp if sp else 1
    activation = n * (replicated * rep_share + (split + score) / tp)
    selective = n * (replicated * rep_share + split / tp)
    # Memory-bound kernels per token, read + write, bf16: the norms, two residual adds (with dropout:
    # read, write, mask), the MLP activation; the backward counted twice the forward; sequence
    # parallelism splits the norm/dropout region over t. Scores per score element as Megatron's kernels
    # move them: the causal softmax reads the lower triangle, writes the row (1 + 2; backward 2 + 2,
    # scaled_upper_triang_masked_softmax.h); dropout 2 + 2 + a 1-byte mask (backward 2 + 1 + 2).
    act_bytes = (6 if model.gated_mlp else 4) * f / tp
    elementwise = n * ((4 * h * model.block_norms + 12 * h + 2 * mask * h) * rep_share + act_bytes)
    standard = model.attention == "standard"
    scores = n * ((3 + 5 * mask) * s * a / tp if standard else 0.0)
    scores_backward = n * ((4 + 5 * mask) * s * a / tp if standard else 0.0)
    boundary = BYTES_BF16 * n * h
    if tp == 1:
        tp_f = tp_b = ()
    elif sp:
        tp_f = ((ALL_GATHER, boundary), (REDUCE_SCATTER, boundary)) * 2
        # Backward: the conjugates, and the QKV and FC1 inputs all-gathered once more: Megatron keeps only
        # this rank's sequence shard of a column-parallel input (what Korthikanti's sbh/t counts) and
        # gathers it again for the weight gradient (``LinearWithGradAccumulationAndAsyncCommunication``).
        tp_b = tp_f + ((ALL_GATHER, boundary),) * 2
    else:
        tp_f = tp_b = ((ALL_REDUCE, boundary),) * 2
    return LayerCost(
        forward_flops=matmul_flops + attention_flops,
        input_grad_flops=matmul_flops + 2 * attention_flops,
        weight_grad_flops=matmul_flops,
        params=block_params(model, tp),
        activation_bytes=activation,
        weight_grad_bytes=n * ((2 * h + 2 * h) * rep_share + (2 * q + 2 * f) / tp),  # QKV, fc1 | O, fc2 inputs
        recompute_bytes=boundary * rep_share,
        boundary_bytes=boundary * rep_share,
        selective_bytes=selective,
        gemms=gemms,
        attention_gemms=attention_gemms,
        forward_memory_bytes=elementwise + scores,
        input_grad_memory_bytes=2 * elementwise + scores_backward,
        score_memory_bytes=scores,
        score_backward_memory_bytes=scores_backward,
        tp_forward=tp_f,
        tp_backward=tp_b,
    )


def embedding_cost(model: ModelSpec, b: int, s: int, tp: int, sp: bool) -> LayerCost:
    """The token embedding, learned positions, dropout and OPT's project_in."""
    h, e, n = model.hidden, model.embedding_width, b * s
    share = 1 / tp if sp else 1
    rows = model.position_rows or model.seq_len
    # OPT's project_in (e -> h) when the token embedding is narrower than hidden; replicated
    project = ((n, h, e, 1),) if e != h else ()
    project_flops = 2 * n * e * h if e != h else 0.0
    project_input = BYTES_BF16 * n * e if e != h else 0.0  # kept for project_in's dW
    params = model.vocab * e / tp + (rows * h if model.learned_positions else 0) + (e * h if e != h else 0)
    mask = n * h * share if model.dropout else 0
    # gather (read, write), position add (read two, write), dropout (read, write, mask)
    moved = n * h * (4 + (6 if model.learned_positions else 0) + (5 if model.dropout else 0))
    # The backward (I: a lookup's gradient is no GEMM a W could defer; Megatron's and the validator's
    # autograd run it with the input gradient) writes each table's gradient densely: zero the
    # table (write, 2 per value), scatter-add the rows (read the output gradient, read and write
    # the row: 6), add the result into the parameter's gradient (read two, write one: 6 per value,
    # ``megatron_kernels.ACCUMULATE_BYTES``); learned positions first sum the gradient over the
    # batch (read n, write s values); dropout's backward reads the gradient and the mask, writes.
    table_grad = 8 * model.vocab * e / tp + 6 * n * e
    positions_grad = (8 * rows * h + (2 * n * h + 8 * s * h) * share) if model.learned_positions else 0.0
    backward_moved = table_grad + positions_grad + (5 * n * h * share if model.dropout else 0.0)
    boundary = BYTES_BF16 * n * h
    # Vocabulary-parallel lookup: each rank holds V/t rows; the partial outputs are summed
    # (reduce-scattered with sequence parallelism). Without sequence parallelism the backward needs
    # no collective (every rank already has the whole output gradient); with it, each rank's
    # gradient covers s/t of the sequence and is all-gathered for its rows' scatter-add.
    tp_f = () if tp == 1 else ((REDUCE_SCATTER if sp else ALL_REDUCE, boundary),)
    tp_b = ((ALL_GATHER, boundary),) if tp > 1 and sp else ()
    return LayerCost(
        forward_flops=2 * n * h + project_flops,  # a gather and an add: memory-bound, FLOPs are nominal
        input_grad_flops=2 * n * h + project_flops,  # the scatter-add (nominal) and project_in's dX
        weight_grad_flops=project_flops,  # project_in's dW, the one GEMM here
        params=params,
        activation_bytes=mask + project_input,
        weight_grad_bytes=project_input,
        recompute_bytes=mask + project_input,  # not checkpointed (``model.RECOMPUTED_KINDS``)
        boundary_bytes=boundary * share,
        selective_bytes=mask + project_input,
        gemms=project,
        forward_memory_bytes=moved,
        input_grad_memory_bytes=backward_moved,
        tp_forward=tp_f,
        tp_backward=tp_b,
    )


def head_cost(model: ModelSpec, b: int, s: int, tp: int, sp: bool, loss: bool = True) -> LayerCost:
    """The final norm, OPT's project_out (h -> e) when the embedding is narrower, and the LM head.

    A tied LM head is the token embedding's matrix; its stage still holds a copy (Megatron keeps
    one on the last pipeline stage and all-reduces the two gradients), so ``params`` count it and
    ``total_params`` takes it off once. With ``loss`` (training) the logits feed the vocab-parallel
    cross-entropy; without (serving) the tensor ranks' logits are all-gathered, as Megatron's inference
    gathers them (``gather_from_tensor_model_parallel_region``) for sampling, which reads them once.
    """
    h, v, e, n = model.hidden, model.vocab, model.embedding_width, b * s
    share = 1 / tp if sp else 1
    logits_flops = 2 * n * e * v / tp
    project = ((n, e, h, 1),) if e != h else ()  # replicated on every tensor rank
    project_flops = 2 * n * h * e if e != h else 0.0
    norm_input = 2 * h if model.final_norm else 0
    # norm input, first matmul's input (project_out's, then the LM head's), and the bf16 logits
    # the fused cross-entropy turns into gradients
    stored = n * ((norm_input + 2 * h) * share + (2 * e if e != h else 0) + 2 * v / tp)
    # final norm (read, write); cross-entropy: read bf16 logits, write fp32 softmax; backward
    # reads it and writes bf16 gradients. Serving: sampling reads the gathered bf16 logits.
    moved = n * (2 * norm_input * share + (6 * v / tp if loss else BYTES_BF16 * v))
    boundary = BYTES_BF16 * n * h
    if tp == 1:
        tp_f = tp_b = ()
    elif not loss:
        tp_f, tp_b = ((ALL_GATHER, BYTES_BF16 * n * v),), ()
    else:
        # vocab-parallel cross-entropy: max, sum of exponentials and target logit, one fp32 per token each
        ce = ((ALL_REDUCE, 4.0 * n),) * 3
        tp_f = ((ALL_GATHER, boundary),) + ce if sp else ce
        # the head input's gradient; with sequence parallelism its input gathered again (as a block's)
        tp_b = ((REDUCE_SCATTER, boundary), (ALL_GATHER, boundary)) if sp else ((ALL_REDUCE, boundary),)
    return LayerCost(
        forward_flops=logits_flops + project_flops,
        input_grad_flops=logits_flops + project_flops,
        weight_grad_flops=logits_flops + project_flops,
        params=v * e / tp + (model.norm_params(h) if model.final_norm else 0) + (h * e if e != h else 0),
        activation_bytes=stored,
        weight_grad_bytes=n * (2 * h * share + (2 * e if e != h else 0)),
        recompute_bytes=stored,  # not checkpointed (``model.RECOMPUTED_KINDS``)
        boundary_bytes=0.0,  # the loss is a scalar
        selective_bytes=stored,
        gemms=((n, v / tp, e, 1),) + project,
        forward_memory_bytes=moved,
        input_grad_memory_bytes=moved,
        tp_forward=tp_f,
        tp_backward=tp_b,
    )
