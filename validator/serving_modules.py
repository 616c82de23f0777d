"""A serving plan's stages as real torch modules with a KV cache: prefill, then one token per request per pass.

The layers are the training ones (``validator.modules``: the same shapes, the same weights for the same
seed), run without a graph. A block keeps, per request batch, the keys and values of every token it has
seen (``KVCache``): a prefill writes the prompt's and attends causally over them; a decode step writes
the one new token's and attends over the whole cache, so its attention reads every cached key and value,
as the cost model's decode does. The last stage returns each request's next token, the argmax of the
logits at its last position (greedy decoding); the first stage embeds token ids (the prompts', then the
tokens the last stage sent back).

``forward_full`` runs the same layers over whole sequences without a cache (the training forward): the
reference a cached decode must reproduce token for token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeplan.model import BLOCK, EMBEDDING, HEAD, ModelSpec

from .modules import Block, Embedding, Head, WeightGradStore


class KVCache:
    """One request batch's keys and values in every block of a stage: ``batch`` x KV heads x ``capacity``
    tokens x head size each, and how many tokens are filled."""

    def __init__(self, blocks: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(blocks)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(blocks)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


class ServingBlock(Block):
    """A transformer block that attends over its cached keys and values (see the module docstring)."""

    def forward_cached(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
        b, s, _ = x.shape
        y = self.norm1(x)
        # The weights' plain matmuls: no autograd function around them, nothing is kept for a backward.
        q = F.linear(y, self.q.weight).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        keys[:, :, start:start + s] = F.linear(y, self.k.weight).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        values[:, :, start:start + s] = F.linear(y, self.v.weight).view(b, s, self.kv_heads,
                                                                        self.head_dim).transpose(1, 2)
        # A prefill (start 0) attends causally among its s tokens; a decode token (s = 1) sees the whole cache.
        attn = F.scaled_dot_product_attention(q, keys[:, :, :start + s], values[:, :, :start + s], is_causal=s > 1,
                                              enable_gqa=self.kv_heads != self.heads)
        x = x + F.linear(attn.transpose(1, 2).reshape(b, s, self.heads * self.head_dim), self.o.weight)
        y = self.norm2(x)
        up = F.linear(y, self.up.weight)
        inner = F.silu(F.linear(y, self.gate.weight)) * up if self.gate is not None else F.gelu(up)
        return x + F.linear(inner, self.down.weight)


class ServingStage(nn.Module):
    """The layers of one pipeline stage of a serving plan."""

    def __init__(self, model: ModelSpec, layers: range) -> None:
        super().__init__()
        store = WeightGradStore()
        kinds = model.layer_kinds
        built = []
        for i in layers:
            if kinds[i] == EMBEDDING:
                built.append(Embedding(model))
            elif kinds[i] == BLOCK:
                built.append(ServingBlock(model, store))
            elif kinds[i] == HEAD:
                built.append(Head(model, store))
        self.layers = nn.ModuleList(built)
        self.first = kinds[layers.start] == EMBEDDING
        self.last = kinds[layers.stop - 1] == HEAD
        self.blocks = sum(kinds[i] == BLOCK for i in layers)

    def new_cache(self, model: ModelSpec, batch: int, capacity: int, dtype: torch.dtype,
                  device: torch.device) -> KVCache:
        return KVCache(self.blocks, batch, model.kv_heads or model.heads, capacity, model.head_size, dtype, device)

    @torch.no_grad()
    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One pass: token ids (b, s) on the first stage, hidden states (b, s, h) otherwise; returns the hidden
        states to send on, or on the last stage each request's next token (b,)."""
        start, s = cache.length, x.shape[1]
        if start + s > cache.capacity:
            raise RuntimeError(f"KV cache overflow: {start} + {s} tokens in a cache of {cache.capacity}")
        block = 0
        for layer in self.layers:
            if isinstance(layer, ServingBlock):
                x = layer.forward_cached(x, cache.keys[block], cache.values[block], start)
                block += 1
            elif isinstance(layer, Head):  # logits of each request's last position only
                x = F.linear(layer.norm(x[:, -1:]), layer.lm_head.weight).argmax(dim=-1).reshape(-1)
            elif layer.positions is not None:  # learned positions continue where the cache ends
                x = layer.tokens(x) + layer.positions(torch.arange(start, start + s, device=x.device))
            else:
                x = layer(x)
        cache.length = start + s
        return x

    @torch.no_grad()
    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward over whole sequences, no cache; the last stage returns the next tokens."""
        for layer in self.layers:
            x = layer(x[:, -1:]).argmax(dim=-1).reshape(-1) if isinstance(layer, Head) else layer(x)
        return x


def prompt_tokens(model: ModelSpec, request: int, length: int, seed: int) -> torch.Tensor:
    """Request ``request``'s prompt: ``length`` token ids drawn from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + request)
    return torch.randint(0, model.vocab, (length,), generator=generator)
