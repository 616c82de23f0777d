"""Real torch modules for a plan's stages, with the shapes of the plan's ModelSpec.

Pipeline layer 0 is the token embedding, layers 1..L the transformer blocks, layer L+1 the final
norm + LM head + loss; a stage holds the contiguous range ``plan.stage_layers(stage)``.

The weight-gradient half of the backward is separable: every matmul weight goes through
``_SplitLinear``, whose backward computes only the input gradient when its stage's
``WeightGradStore`` is deferring and keeps (input, output gradient) for later. ``W`` then runs those
weight-gradient matmuls and nothing else, as in Zero Bubble's implementation (Qi et al., ICLR'24):
I + W does the work of one full backward, not more. Norm and embedding weights are small and get
their gradients from autograd during I (or B).

With a ``TensorGroup`` of t > 1 ranks (``validator.tensor_parallel``) each module holds its tensor rank's
share, Megatron-style: 1/t of the heads and of the FFN width per block, 1/t of the vocabulary in the
embedding and the LM head, and the loss is the vocabulary-parallel cross-entropy. With sequence
parallelism (the group's ``sequence_parallel``) the hidden states between the tensor-parallel regions, and
so a stage's input and output, are this rank's s/t slice of the sequence: [b, s/t, h].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeplan.model import BLOCK, EMBEDDING, HEAD, ModelSpec

from .sequence_saves import shard_saves
from .tensor_parallel import SINGLE, TensorGroup, VocabParallelEmbedding, vocab_parallel_cross_entropy


REENTRANT, NON_REENTRANT = "reentrant", "non-reentrant"
CHECKPOINTS = ("", REENTRANT, NON_REENTRANT)  # "": no recomputation


class WeightGradStore:
    """Per stage: whether a backward defers weight gradients, and the deferred work per micro-batch."""

    def __init__(self) -> None:
        self.defer = False
        self.collecting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def take(self, microbatch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.pending.pop(microbatch, [])


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dW of y = x Wᵀ: grad_outᵀ · x over all tokens."""
    return grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


class _SplitLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, store):  # type: ignore[override]
        # The weight (a Parameter) is kept as itself, not saved: under activation checkpointing saved
        # tensors come back as detached copies, and a deferred gradient must land in the Parameter's .grad.
        ctx.save_for_backward(x)
        ctx.weight, ctx.store = weight, store
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,), weight = ctx.saved_tensors, ctx.weight
        grad_x = grad_out @ weight
        if ctx.store.defer:
            ctx.store.collecting.append((weight, x, grad_out))
            return grad_x, None, None
        return grad_x, _weight_grad(x, grad_out), None


def apply_weight_grads(work: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Run deferred weight-gradient matmuls, accumulating into ``.grad`` as autograd would (in place, no graph)."""
    with torch.no_grad():
        for weight, x, grad_out in work:
            grad = _weight_grad(x, grad_out)
            if weight.grad is None:
                weight.grad = grad
            else:
                weight.grad.add_(grad)


class SplitLinear(nn.Module):
    """A bias-free linear layer whose weight gradient can be deferred to a separate W pass."""

    def __init__(self, n_in: int, n_out: int, store: WeightGradStore) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * n_in ** -0.5)
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SplitLinearFn.apply(x, self.weight, self.store)


def _norm(model: ModelSpec) -> nn.Module:
    # Llama-style models (SwiGLU) use RMSNorm, GPT-style LayerNorm; their cost is the same order.
    return nn.RMSNorm(model.hidden) if model.gated_mlp else nn.LayerNorm(model.hidden)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (grouped-query when kv_heads < heads) + MLP.

    Dropout is left out: it changes no matmul shape and would make runs non-deterministic. So are the
    biases, extra norms and norm kind a Hugging Face model's spec may give: they add no matmul.
    """

    def __init__(self, model: ModelSpec, store: WeightGradStore, tensor: TensorGroup = SINGLE) -> None:
        super().__init__()
        h = model.hidden
        # Column-parallel Q/K/V and up/gate (1/t of the heads, of the FFN width), row-parallel o and down.
        self.heads = tensor.local(model.heads, "heads")
        self.kv_heads = tensor.local(model.kv_heads or model.heads, "kv_heads")
        self.head_dim, self.tensor = model.head_size, tensor
        q, kv, ffn = self.heads * self.head_dim, self.kv_heads * self.head_dim, tensor.local(model.ffn_hidden, "ffn")
        self.norm1, self.norm2 = _norm(model), _norm(model)
        self.q, self.k, self.v = SplitLinear(h, q, store), SplitLinear(h, kv, store), SplitLinear(h, kv, store)
        self.o = SplitLinear(q, h, store)
        self.gated = model.gated_mlp
        self.up = SplitLinear(h, ffn, store)
        self.gate = SplitLinear(h, ffn, store) if model.gated_mlp else None
        self.down = SplitLinear(ffn, h, store)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with shard_saves(self.tensor):  # Megatron's sequence-parallel saves (no-op otherwise)
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tensor.enter(self.norm1(x))
        b, s, _ = y.shape  # the whole sequence (x holds s/t of it with sequence parallelism)
        q = self.q(y).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.tensor.leave(self.o(attn.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)))
        y = self.tensor.enter(self.norm2(x))
        inner = F.silu(self.gate(y)) * self.up(y) if self.gate is not None else F.gelu(self.up(y))
        return x + self.tensor.leave(self.down(inner))


class Embedding(nn.Module):
    """Token embedding (vocabulary-parallel with t > 1) plus learned positions, added on the positions
    this rank holds (with sequence parallelism its s/t slice, after the reduce-scatter)."""

    def __init__(self, model: ModelSpec, tensor: TensorGroup = SINGLE) -> None:
        super().__init__()
        self.tensor = tensor
        self.tokens = (nn.Embedding(model.vocab, model.hidden) if tensor.size == 1
                       else VocabParallelEmbedding(model.vocab, model.hidden, tensor))
        rows = model.position_rows or model.seq_len
        self.positions = nn.Embedding(rows, model.hidden) if model.learned_positions else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens)
        if self.positions is not None:
            held = self.tensor.sequence_slice(tokens.shape[1])
            x = x + self.positions(torch.arange(held.start, held.stop, device=tokens.device))
        return x


class Head(nn.Module):
    """Final norm and LM head (column-parallel over the vocabulary with t > 1: this rank's logits only, of
    the whole sequence); the loss is computed by the stage (it needs the targets)."""

    def __init__(self, model: ModelSpec, store: WeightGradStore, tensor: TensorGroup = SINGLE) -> None:
        super().__init__()
        self.norm, self.tensor = _norm(model), tensor
        self.lm_head = SplitLinear(model.hidden, tensor.local(model.vocab, "the vocabulary"), store)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with shard_saves(self.tensor):
            return self.lm_head(self.tensor.enter(self.norm(x)))


class StageModule(nn.Module):
    """The layers of one pipeline stage. ``forward(x, targets)`` returns the boundary tensor, or the
    loss on the last stage (mean cross-entropy divided by ``loss_scale``: micro-batches x data ranks, so the
    data ranks' summed gradients are the mean over the global batch).

    ``checkpoint`` (full activation recomputation) runs each transformer block under torch's activation
    checkpointing, and nothing else: the embedding, the final norm, the LM head and the loss keep their
    graph, as Megatron-LM's ``_checkpointed_forward`` and torchtitan's per-block ``apply_ac`` do
    (``pipeplan.model.RECOMPUTED_KINDS``). ``"reentrant"`` is Megatron's ``CheckpointFunction``: the block's
    forward runs without a graph, keeps its input, and runs again, recording the graph, inside the
    backward; ``"non-reentrant"`` is torchtitan's (a graph whose saved tensors are dropped and recomputed),
    the one torch's pipelining runtime can split into I and W with ``autograd.grad``."""

    def __init__(self, model: ModelSpec, layers: range, loss_scale: int = 1, tensor: TensorGroup = SINGLE,
                 checkpoint: str = "") -> None:
        super().__init__()
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint: {checkpoint!r}; choose one of {CHECKPOINTS}")
        self.checkpoint = checkpoint
        self.tensor = tensor
        self.store = WeightGradStore()
        kinds = model.layer_kinds
        built = []
        for i in layers:
            if kinds[i] == EMBEDDING:
                built.append(Embedding(model, tensor))
            elif kinds[i] == BLOCK:
                built.append(Block(model, self.store, tensor))
            elif kinds[i] == HEAD:
                built.append(Head(model, self.store, tensor))
        self.layers = nn.ModuleList(built)
        self.first = kinds[layers.start] == EMBEDDING
        self.last = kinds[layers.stop - 1] == HEAD
        self.vocab = model.vocab
        self.loss_scale = loss_scale

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            if self.checkpoint and isinstance(layer, Block):
                x = checkpoint(layer, x, use_reentrant=self.checkpoint == REENTRANT)
            else:
                x = layer(x)
        if self.last and self.tensor.size > 1:
            logits = x.float().reshape(-1, x.shape[-1])
            return vocab_parallel_cross_entropy(logits, targets.reshape(-1), self.tensor).mean() / self.loss_scale
        if self.last:
            loss = F.cross_entropy(x.float().reshape(-1, self.vocab), targets.reshape(-1))
            return loss / self.loss_scale
        return x


def microbatch_tokens(model: ModelSpec, batch: int, seq: int, microbatch: int, seed: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (tokens, targets) for a micro-batch: the first and last stage draw the same
    batch without sending it, as data loaders on both ends of a real pipeline do."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + microbatch)
    data = torch.randint(0, model.vocab, (batch, seq + 1), generator=generator)
    return data[:, :-1].to(device), data[:, 1:].to(device)
