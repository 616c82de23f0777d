"""The four compute ops of one stage: F, B, and the split backward I then W.

* F(m): run the stage on its input (token ids on the first stage, received activations otherwise)
  and keep the graph; return the boundary tensor to send (None on the last stage).
* B(m): backward through the graph with the received output gradient (the loss on the last stage),
  weight gradients included; return the input gradient to send (None on the first stage).
* I(m): the same backward with weight gradients deferred; the graph is freed afterwards, only the
  (input, output-gradient) pairs the weight gradients need are kept.
* W(m): those weight-gradient matmuls, accumulated into ``.grad``.

With full activation recomputation (``recompute``, the plan's ``"full"``) each transformer block runs
under activation checkpointing, Megatron-LM's way (``StageModule``'s ``checkpoint="reentrant"``): in F
a block runs without a graph and keeps only its input; B and I run each block's forward again from it,
recording the graph, as the backward reaches it. The embedding, the final norm, the LM head and the
loss are not checkpointed: they keep their graph from F and are not re-run. W is unchanged: I leaves
it the same (input, output-gradient) pairs. The gradients are the same; F keeps the blocks' inputs
and what the other layers keep, and B or I pays the blocks' forward once more, which is what the
simulator's cost model charges (``pipeplan.costs``, ``Work.rerun``).

The weights are updated once per iteration, after every op (``step``), with plain SGD. Every parameter's
``.grad`` is a view into one flat buffer per stage, allocated once and zeroed after each step (Megatron's
contiguous gradient buffer, torch DDP's ``gradient_as_bucket_view``): autograd and W accumulate into it in
place, and the data-parallel reduction communicates it as it is, with no copy: a fresh flat copy per
reduction is new memory each time, whose page faults cost 7 ms of a 12 ms reduction on the CPU VM.

Tensor parallelism (``tensor``, t > 1): the stage is built as at tp = 1 from the same seed and cut into
this tensor rank's share (``tensor_parallel.shard_state``). With sequence parallelism the boundary tensors
are this rank's [b, s/t, h] slice, and the backward that completes an iteration's m-th micro-batch (B or
I; each stage runs m of them per iteration) ends by summing the replicated weights' gradients over the
tensor group (``reduce_replicated_grads``): every gradient they get is in by then (the norms' and
positions' come from autograd, none is deferred to W), and the data-parallel reduction, handed over after
the stage's last backward op, sees the summed ones, so a distributed optimizer's shards do too.
Data parallelism (``data_ranks`` d > 1): data rank r draws micro-batches r·m .. r·m + m - 1 of the d·m the global batch has, and the loss is
divided by d·m, so the data ranks' summed gradients are those of the tp = 1, dp = 1 run over all d·m.
"""
from __future__ import annotations

import torch

from pipeplan.model import ModelSpec

from .modules import REENTRANT, StageModule, apply_weight_grads, microbatch_tokens
from .tensor_parallel import SINGLE, TensorGroup, reduce_replicated_grads, shard_state


class StageRunner:
    """One stage's module and its per-micro-batch state (inputs and outputs kept between F and B/I;
    only inputs when it recomputes)."""

    def __init__(self, model: ModelSpec, stage: int, layers: range, batch: int, seq: int, num_microbatches: int,
                 device: torch.device, dtype: torch.dtype, seed: int, lr: float = 1e-4,
                 recompute: bool = False, tensor: TensorGroup = SINGLE, data_ranks: int = 1,
                 data_rank: int = 0) -> None:
        # Same seed per stage on every run, so runs and calibration see identical weights.
        torch.manual_seed(seed * 7919 + stage)
        scale = num_microbatches * data_ranks
        checkpoint = REENTRANT if recompute else ""
        module = StageModule(model, layers, loss_scale=scale, checkpoint=checkpoint)
        if tensor.size > 1:
            whole = module.state_dict()
            module = StageModule(model, layers, loss_scale=scale, tensor=tensor, checkpoint=checkpoint)
            module.load_state_dict(shard_state(whole, tensor.size, tensor.rank))
        self.module = module.to(device=device, dtype=dtype)
        self.tensor, self.num_microbatches, self.backwards = tensor, num_microbatches, 0
        self.data_offset = data_rank * num_microbatches
        self.stage, self.model, self.batch, self.seq = stage, model, batch, seq
        self.device, self.dtype, self.seed = device, dtype, seed
        self.recompute = recompute
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=lr)
        self.grad_buffer = attach_grad_buffer(self.module, data_ranks)
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.losses: list[torch.Tensor] = []

    @property
    def first(self) -> bool:
        return self.module.first

    @property
    def last(self) -> bool:
        return self.module.last

    def boundary_shape(self) -> tuple[int, int, int]:
        return boundary_shape(self.batch, self.seq, self.model.hidden, self.tensor)

    def forward(self, microbatch: int, received: torch.Tensor | None) -> torch.Tensor | None:
        tokens, targets = (None, None)
        if self.first or self.last:
            tokens, targets = microbatch_tokens(self.model, self.batch, self.seq, self.data_offset + microbatch,
                                                self.seed, self.device)
        if self.first:
            x = tokens
        else:
            x = received.requires_grad_(True)
        out = self.module(x, targets if self.last else None)
        self.inputs[microbatch] = x
        self.outputs[microbatch] = out
        return None if self.last else out.detach()

    def backward(self, microbatch: int, grad_output: torch.Tensor | None, split: bool) -> torch.Tensor | None:
        """B (``split`` False) or I (``split`` True); returns the gradient of the stage input.

        A recomputing stage runs its blocks' forward again inside this op: that is the cost it pays."""
        x = self.inputs.pop(microbatch)
        out = self.outputs.pop(microbatch)
        store = self.module.store
        store.defer, store.collecting = split, []
        try:
            if self.last:
                self.losses.append(out.detach())
                out.backward()
            else:
                out.backward(grad_output)
        finally:
            store.defer = False
        if split:
            store.pending[microbatch] = store.collecting
        store.collecting = []
        self.backwards += 1
        if self.backwards % self.num_microbatches == 0:
            reduce_replicated_grads(self.module, self.tensor)
        return None if self.first else x.grad

    def weight(self, microbatch: int) -> None:
        apply_weight_grads(self.module.store.take(microbatch))

    @property
    def flat_grads(self) -> torch.Tensor:
        """Every parameter's gradient, in ``module.parameters()`` order, as one flat view (no padding)."""
        return self.grad_buffer[:sum(p.numel() for p in self.module.parameters())]

    def zero_grads(self) -> None:
        self.grad_buffer.zero_()

    def step(self, apply: bool = True) -> None:
        """The SGD update, gradients then cleared; ``apply`` False does the same work with a learning rate
        of 0 (calibration times the step without moving the weights)."""
        groups = self.optimizer.param_groups
        rates = [g["lr"] for g in groups]
        if not apply:
            for g in groups:
                g["lr"] = 0.0
        try:
            self.optimizer.step()
        finally:
            for g, lr in zip(groups, rates):
                g["lr"] = lr
        self.zero_grads()

    def clear(self) -> None:
        """Drop held activations and deferred work (after calibration, before the real run)."""
        self.inputs.clear()
        self.outputs.clear()
        self.module.store.pending.clear()
        self.zero_grads()
        self.backwards = 0


def attach_grad_buffer(module: torch.nn.Module, multiple: int = 1) -> torch.Tensor:
    """One zeroed flat buffer holding every parameter's gradient (``.grad`` set to a view of it, in
    ``parameters()`` order), its length padded to a multiple of ``multiple`` (the data ranks, whose
    reduce-scatter cuts it into equal slices)."""
    params = list(module.parameters())
    numel = sum(p.numel() for p in params)
    first = params[0]
    buffer = torch.zeros(numel + (-numel % multiple), dtype=first.dtype, device=first.device)
    offset = 0
    for p in params:
        p.grad = buffer[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return buffer


def boundary_shape(batch: int, seq: int, hidden: int, tensor: TensorGroup = SINGLE) -> tuple[int, int, int]:
    """The tensor a stage sends to the next: [b, s, h], or with sequence parallelism this rank's [b, s/t, h]."""
    held = tensor.sequence_slice(seq)
    return (batch, held.stop - held.start, hidden)
