"""One stage of a serving plan as the executor calls it: F(m) is the pass ``ServingResolved.passes`` says.

Micro-batch m of the schedule is pass ``passes.by_microbatch[m]``: step 0 (a prefill) starts a new
request batch in its slot with an empty KV cache; step j >= 1 feeds each request of the batch one
token. The first stage embeds the prompts (prefill) or the tokens the last stage sent back (decode);
the last stage returns the batch's next tokens and records them per request. ``step`` ends a run
(the executor's iteration: the whole request mix) and drops every cache; ``clear`` drops what a
calibration replay left.
"""
from __future__ import annotations

import torch

from pipeplan.inference.passes import ServingPasses
from pipeplan.model import ModelSpec

from .serving_modules import KVCache, ServingStage, prompt_tokens


class ServingRunner:
    """One stage's module, its caches per slot and the tokens it generated (last stage)."""

    def __init__(self, model: ModelSpec, stage: int, layers: range, passes: ServingPasses, device: torch.device,
                 dtype: torch.dtype, seed: int) -> None:
        torch.manual_seed(seed * 7919 + stage)  # the training runner's seeding: the same weights for a stage
        self.module = ServingStage(model, layers).to(device=device, dtype=dtype).eval()
        self.model, self.stage, self.passes = model, stage, passes
        self.device, self.dtype, self.seed = device, dtype, seed
        requests = passes.requests
        self.capacity = max(r.prompt_len + r.output_len for r in requests)
        self.caches: dict[int, KVCache] = {}
        self.generated: dict[int, list[int]] = {}
        self.runs: list[dict[int, list[int]]] = []  # per finished run: each request's generated tokens
        self.losses: list = []  # what the calibration code trims after a replay; a serving run has no loss

    @property
    def first(self) -> bool:
        return self.module.first

    @property
    def last(self) -> bool:
        return self.module.last

    def input_shape(self, microbatch: int) -> tuple[int, ...]:
        """What this stage receives for pass ``microbatch``: hidden states (b, new tokens, h), or on the first
        stage token ids (b,) from the last stage (``output_shape``)."""
        shape = self.passes.by_microbatch[microbatch].shape
        return (shape.requests, shape.tokens[0], self.model.hidden)

    def synthetic_input(self, microbatch: int) -> torch.Tensor | None:
        """A stand-in for what the stage would receive, for a calibration replay (None: it receives nothing
        it needs, the first stage makes its own input)."""
        if self.first:
            return None
        return torch.randn(self.input_shape(microbatch), dtype=self.dtype, device=self.device)

    def _tokens(self, microbatch: int, received: torch.Tensor | None) -> torch.Tensor:
        p = self.passes.by_microbatch[microbatch]
        if p.step == 0:
            return torch.stack([prompt_tokens(self.model, r, self.passes.requests[r].prompt_len, self.seed)
                                for r in p.requests]).to(self.device)
        if received is None:  # a replay: any token will do
            return torch.zeros((len(p.requests), 1), dtype=torch.long, device=self.device)
        return received.reshape(-1, 1).to(torch.long)

    def forward(self, microbatch: int, received: torch.Tensor | None) -> torch.Tensor:
        p = self.passes.by_microbatch[microbatch]
        if p.step == 0:
            self.caches[p.stream] = self.module.new_cache(self.model, len(p.requests), self.capacity, self.dtype,
                                                          self.device)
        x = self._tokens(microbatch, received) if self.first else received
        out = self.module.forward_cached(x, self.caches[p.stream])
        if self.last:
            for request, token in zip(p.requests, out.tolist()):
                self.generated.setdefault(request, []).append(token)
        if p.last:
            del self.caches[p.stream]  # the batch is done: its cache is freed, as the simulator frees it
        return out

    def step(self) -> None:
        """End of a run: keep what it generated, drop every cache."""
        if self.last:
            self.runs.append(self.generated)
        self.clear()

    def clear(self) -> None:
        self.caches.clear()
        self.generated = {}
