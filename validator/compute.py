"""The four compute ops of one stage: F, B, and the split backward I then W.

* F(m): run the stage on its input (token ids on the first stage, received activations otherwise)
  and keep the graph; return the boundary tensor to send (None on the last stage).
* B(m): backward through the graph with the received output gradient (the loss on the last stage),
  weight gradients included; return the input gradient to send (None on the first stage).
* I(m): the same backward with weight gradients deferred; the graph is freed afterwards, only the
  (input, output-gradient) pairs the weight gradients need are kept.
* W(m): those weight-gradient matmuls, accumulated into ``.grad``.

The weights are updated once per iteration, after every op (``step``), with plain SGD.
"""
from __future__ import annotations

import torch

from pipeplan.model import ModelSpec

from .modules import StageModule, apply_weight_grads, microbatch_tokens


class StageRunner:
    """One stage's module and its per-micro-batch state (inputs and outputs kept between F and B/I)."""

    def __init__(self, model: ModelSpec, stage: int, layers: range, batch: int, seq: int, num_microbatches: int,
                 device: torch.device, dtype: torch.dtype, seed: int, lr: float = 1e-4) -> None:
        # Same seed per stage on every run, so runs and calibration see identical weights.
        torch.manual_seed(seed * 7919 + stage)
        self.module = StageModule(model, layers, loss_scale=num_microbatches).to(device=device, dtype=dtype)
        self.stage, self.model, self.batch, self.seq = stage, model, batch, seq
        self.device, self.dtype, self.seed = device, dtype, seed
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=lr)
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
        return (self.batch, self.seq, self.model.hidden)

    def forward(self, microbatch: int, received: torch.Tensor | None) -> torch.Tensor | None:
        tokens, targets = (None, None)
        if self.first or self.last:
            tokens, targets = microbatch_tokens(self.model, self.batch, self.seq, microbatch, self.seed, self.device)
        if self.first:
            x = tokens
        else:
            x = received.requires_grad_(True)
        out = self.module(x, targets if self.last else None)
        self.inputs[microbatch] = x
        self.outputs[microbatch] = out
        return None if self.last else out.detach()

    def backward(self, microbatch: int, grad_output: torch.Tensor | None, split: bool) -> torch.Tensor | None:
        """B (``split`` False) or I (``split`` True); returns the gradient of the stage input."""
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
        return None if self.first else x.grad

    def weight(self, microbatch: int) -> None:
        apply_weight_grads(self.module.store.take(microbatch))

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def clear(self) -> None:
        """Drop held activations and deferred work (after calibration, before the real run)."""
        self.inputs.clear()
        self.outputs.clear()
        self.module.store.pending.clear()
        self.optimizer.zero_grad(set_to_none=True)
