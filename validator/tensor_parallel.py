"""Megatron-LM's tensor parallelism for the validator's stage modules, over a torch.distributed group.

Shoeybi et al. 2019 (arXiv 1909.08053), section 3: in each block the query/key/value and first MLP
matmuls are *column-parallel* (each of the t tensor ranks holds 1/t of their output rows: 1/t of the
attention heads, 1/t of the FFN width), the attention-output and second MLP matmuls *row-parallel*
(1/t of their input columns). Their ``f`` operator (``TensorGroup.copy_in``) is the identity forward and
an all-reduce of the input gradient backward; their ``g`` (``TensorGroup.reduce_out``) all-reduces the
row-parallel partial sums forward and is the identity backward: 2 all-reduces of s·b·h elements per
block forward, 2 backward, as the simulator prices them (``pipeplan.costs``). The token embedding and
the LM head are split over the vocabulary (``VocabParallelEmbedding``; the head column-parallel) and the
loss is Megatron's vocabulary-parallel cross-entropy (``vocab_parallel_cross_entropy``: the max, the
target logit and the sum of exponentials all-reduced, never the logits). Norms and learned positions
are replicated; without sequence parallelism their gradients agree on every tensor rank without a
reduction, since what flows into them is already all-reduced.

Sequence parallelism (``TensorGroup.sequence_parallel``; Korthikanti et al. 2022, arXiv 2205.05198,
Sec. 4.2.2): outside the tensor-parallel regions (norms, residual adds) each tensor rank holds s/t of
the sequence, the contiguous slice ``sequence_slice``. ``enter`` (their ``g``) all-gathers the
sequence before each column-parallel region (QKV, FC1, the LM head) and reduce-scatters the gradient
backward; ``leave`` (their ``ḡ``) reduce-scatters the row-parallel partial sums (attention-out, FC2,
the vocabulary-parallel embedding) into sequence shards and all-gathers the gradient backward: 2
all-gathers and 2 reduce-scatters of s·b·h/t elements per block forward, their conjugates backward.
As Megatron, a column-parallel region keeps only this rank's shard of its gathered input for the
backward and gathers it again there (``sequence_saves``): one more all-gather per region backward.
The replicated weights then see only their rank's tokens, so their gradients are summed over the
group once all backwards are done (``reduce_replicated_grads``, Megatron's all-reduce of the
layernorm gradients under sequence parallelism). Tensors here are [batch, sequence, hidden]; the
collectives run on a sequence-first contiguous copy, as the gloo and NCCL collectives split dim 0.

``shard_state`` cuts a tp = 1 stage's weights into tensor rank r's share, so a tensor-parallel run
starts from exactly the weights of the tp = 1 run with the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# Weight names (the last two parts of a StageModule parameter name) split over the tensor ranks:
# along dim 0 (output rows: column-parallel matmuls and the vocabulary of embedding and head) or
# along dim 1 (input columns: row-parallel matmuls). Everything else is replicated.
ROW_SPLIT = ("q.weight", "k.weight", "v.weight", "up.weight", "gate.weight", "lm_head.weight", "tokens.weight")
COLUMN_SPLIT = ("o.weight", "down.weight")

ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER = "all_reduce", "all_gather", "reduce_scatter"
# The collectives over dim 0 of one tensor: torch 2.13 renamed them (the old names warn with a
# FutureWarning there); the releases before have only the old names.
all_gather_dim0 = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_dim0 = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class TensorGroup:
    """One tensor-parallel group as this rank sees it; ``size`` 1 (``group`` None) is tp = 1, no traffic.

    ``calls`` counts the collectives this rank issued per kind (``ALL_REDUCE``, ``ALL_GATHER``,
    ``REDUCE_SCATTER``) and ``elements`` their sizes (an all-reduce's tensor; an all-gather's or a
    reduce-scatter's s·b·h/t shard, what this rank sends or keeps), so a test can hold the modules to
    Megatron's count."""

    size: int = 1
    rank: int = 0
    group: object = None
    sequence_parallel: bool = False
    calls: dict = field(default_factory=dict, compare=False)
    elements: dict = field(default_factory=dict, compare=False)
    # Called with (whole, shard) after ``enter`` gathers a sequence (``sequence_saves.shard_saves``).
    on_gather: object = field(default=None, compare=False)

    def _count(self, kind: str, numel: int) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.elements[kind] = self.elements.get(kind, 0) + numel

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        self._count(ALL_REDUCE, tensor.numel())
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[b, s/t, h] shards of every rank -> [b, s, h], rank r's slice r-th."""
        shard = x.transpose(0, 1).contiguous()
        self._count(ALL_GATHER, shard.numel())
        whole = torch.empty((shard.shape[0] * self.size, *shard.shape[1:]), dtype=x.dtype, device=x.device)
        all_gather_dim0(whole, shard, group=self.group)
        return whole.transpose(0, 1).contiguous()

    def scatter_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[b, s, h] partial sums -> this rank's [b, s/t, h] slice of their sum over the ranks."""
        whole = x.transpose(0, 1).contiguous()
        shard = torch.empty((self.local(whole.shape[0], "the sequence"), *whole.shape[1:]), dtype=x.dtype,
                            device=x.device)
        self._count(REDUCE_SCATTER, shard.numel())
        reduce_scatter_dim0(shard, whole, group=self.group)
        return shard.transpose(0, 1).contiguous()

    def copy_in(self, x: torch.Tensor) -> torch.Tensor:
        """Megatron's ``f``: x unchanged forward, its gradient all-reduced backward."""
        return x if self.size == 1 else _CopyIn.apply(x, self)

    def reduce_out(self, x: torch.Tensor) -> torch.Tensor:
        """Megatron's ``g``: the partial sums all-reduced forward, the gradient unchanged backward."""
        return x if self.size == 1 else _ReduceOut.apply(x, self)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """Into a column-parallel region: ``copy_in``, or with sequence parallelism the sequence
        all-gathered forward and the gradient reduce-scattered backward."""
        if self.sequence_parallel and self.size > 1:
            return _SequenceExchange.apply(x, self, True)
        return self.copy_in(x)

    def leave(self, x: torch.Tensor) -> torch.Tensor:
        """Out of a row-parallel region: ``reduce_out``, or with sequence parallelism the partial sums
        reduce-scattered into sequence shards forward and the gradient all-gathered backward."""
        if self.sequence_parallel and self.size > 1:
            return _SequenceExchange.apply(x, self, False)
        return self.reduce_out(x)

    def sequence_slice(self, seq: int) -> slice:
        """The positions of a ``seq``-long sequence this rank holds outside the tensor-parallel regions."""
        if not (self.sequence_parallel and self.size > 1):
            return slice(0, seq)
        part = self.local(seq, "the sequence")
        return slice(self.rank * part, (self.rank + 1) * part)

    def local(self, n: int, what: str) -> int:
        """This rank's share of ``n`` (heads, FFN width, vocabulary), which t must divide."""
        if n % self.size:
            raise ValueError(f"{what} ({n}) is not divisible by tp = {self.size}")
        return n // self.size


SINGLE = TensorGroup()


class _CopyIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tensor):  # type: ignore[override]
        ctx.tensor = tensor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return ctx.tensor.all_reduce(grad.contiguous().clone()), None


class _ReduceOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tensor):  # type: ignore[override]
        return tensor.all_reduce(x.contiguous().clone())

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


class _SequenceExchange(torch.autograd.Function):
    """Sequence parallelism's ``g`` and ``ḡ``, conjugates of each other: ``gather`` True all-gathers the
    sequence forward and reduce-scatters the gradient backward (into a column-parallel region), False
    the reverse (out of a row-parallel region)."""

    @staticmethod
    def forward(ctx, x, tensor, gather):  # type: ignore[override]
        ctx.tensor, ctx.gather = tensor, gather
        if not gather:
            return tensor.scatter_sequence(x)
        whole = tensor.gather_sequence(x)
        if tensor.on_gather is not None:
            tensor.on_gather(whole, x)
        return whole

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        tensor = ctx.tensor
        return (tensor.scatter_sequence(grad) if ctx.gather else tensor.gather_sequence(grad)), None, None


def is_replicated(name: str) -> bool:
    """Whether the parameter ``name`` of a stage is whole on every tensor rank (not cut by ``shard_state``)."""
    return ".".join(name.split(".")[-2:]) not in ROW_SPLIT + COLUMN_SPLIT


def reduce_replicated_grads(module: torch.nn.Module, tensor: TensorGroup) -> None:
    """With sequence parallelism: sum the replicated weights' gradients (norms, learned positions), each
    from this rank's tokens only, over the tensor group, in one flat all-reduce."""
    if not (tensor.sequence_parallel and tensor.size > 1):
        return
    grads = [p.grad for n, p in module.named_parameters() if is_replicated(n) and p.grad is not None]
    if not grads:
        return
    flat = tensor.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class VocabParallelEmbedding(torch.nn.Module):
    """Token embedding whose rows (the vocabulary) are split over the tensor ranks: each rank looks up the
    tokens in its range, zeroes the others, and the ranks' results are all-reduced (Megatron's
    ``VocabParallelEmbedding``); with sequence parallelism reduce-scattered into sequence shards."""

    def __init__(self, vocab: int, hidden: int, tensor: TensorGroup) -> None:
        super().__init__()
        rows = tensor.local(vocab, "the vocabulary")
        self.start, self.stop, self.tensor = tensor.rank * rows, (tensor.rank + 1) * rows, tensor
        self.weight = torch.nn.Parameter(torch.empty(rows, hidden))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outside = (tokens < self.start) | (tokens >= self.stop)
        local = (tokens - self.start).masked_fill(outside, 0)
        out = torch.nn.functional.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tensor.leave(out)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of logits split over the vocabulary (Megatron's ``_VocabParallelCrossEntropy``)."""

    @staticmethod
    def forward(ctx, logits, targets, tensor):  # type: ignore[override]
        rows = logits.shape[-1]
        start = tensor.rank * rows
        peak = tensor.all_reduce(logits.max(dim=-1).values, dist.ReduceOp.MAX)
        shifted = logits - peak.unsqueeze(-1)
        outside = (targets < start) | (targets >= start + rows)
        local = (targets - start).masked_fill(outside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = tensor.all_reduce(picked)
        exp = shifted.exp()
        total = tensor.all_reduce(exp.sum(dim=-1))
        ctx.save_for_backward(exp / total.unsqueeze(-1), local, outside)
        return total.log() - picked

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        softmax, local, outside = ctx.saved_tensors
        grad_logits = softmax.clone()
        rows = torch.arange(local.numel(), device=local.device)
        grad_logits[rows, local] -= (~outside).to(grad_logits.dtype)
        return grad_logits * grad.unsqueeze(-1), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, tensor: TensorGroup) -> torch.Tensor:
    """Per-token loss of ``logits`` [N, V/t] (this rank's vocabulary slice) against ``targets`` [N]."""
    return _VocabParallelCrossEntropy.apply(logits, targets, tensor)


def shard_state(state: dict[str, torch.Tensor], size: int, rank: int) -> dict[str, torch.Tensor]:
    """Tensor rank ``rank``'s share of a tp = 1 stage's ``state_dict``: split weights cut in ``size``
    equal contiguous slices along their split dimension, the others as they are."""
    out = {}
    for name, value in state.items():
        suffix = ".".join(name.split(".")[-2:])
        dim = 0 if suffix in ROW_SPLIT else 1 if suffix in COLUMN_SPLIT else None
        out[name] = value if dim is None else value.chunk(size, dim=dim)[rank].clone()
    return out
