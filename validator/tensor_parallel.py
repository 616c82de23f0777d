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
are replicated; their gradients agree on every tensor rank without a reduction, since what flows into
them is already all-reduced. Sequence parallelism is not built here (the preflight refuses it).

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


@dataclass
class TensorGroup:
    """One tensor-parallel group as this rank sees it; ``size`` 1 (``group`` None) is tp = 1, no traffic.

    ``calls`` counts the all-reduces this rank issued and ``elements`` what they carried, so a test can
    hold the module to Megatron's count."""

    size: int = 1
    rank: int = 0
    group: object = None
    calls: int = field(default=0, compare=False)
    elements: int = field(default=0, compare=False)

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        self.calls += 1
        self.elements += tensor.numel()
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def copy_in(self, x: torch.Tensor) -> torch.Tensor:
        """Megatron's ``f``: x unchanged forward, its gradient all-reduced backward."""
        return x if self.size == 1 else _CopyIn.apply(x, self)

    def reduce_out(self, x: torch.Tensor) -> torch.Tensor:
        """Megatron's ``g``: the partial sums all-reduced forward, the gradient unchanged backward."""
        return x if self.size == 1 else _ReduceOut.apply(x, self)

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


class VocabParallelEmbedding(torch.nn.Module):
    """Token embedding whose rows (the vocabulary) are split over the tensor ranks: each rank looks up the
    tokens in its range, zeroes the others, and the ranks' results are all-reduced (Megatron's
    ``VocabParallelEmbedding``)."""

    def __init__(self, vocab: int, hidden: int, tensor: TensorGroup) -> None:
        super().__init__()
        rows = tensor.local(vocab, "the vocabulary")
        self.start, self.stop, self.tensor = tensor.rank * rows, (tensor.rank + 1) * rows, tensor
        self.weight = torch.nn.Parameter(torch.empty(rows, hidden))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outside = (tokens < self.start) | (tokens >= self.stop)
        local = (tokens - self.start).masked_fill(outside, 0)
        out = torch.nn.functional.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tensor.reduce_out(out)


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
