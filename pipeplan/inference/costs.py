"""What one forward pass of a request batch costs a pipeline stage on one tensor-parallel rank.

A pass (``PassShape``) feeds each request of the batch some new tokens (its prompt for a prefill,
one token for a decode step) and leaves that request's KV cache ``context`` tokens long.

**Prefill** (compute-bound): each block's weight GEMMs on the Σs new tokens, priced by their shapes
(``GPUSpec.gemm_seconds``, as training's forward in ``pipeplan.costs``); the attention core per
request, QK^T and AV of s x s per head, counted dense as ``pipeplan.layer_costs`` does; the memory-bound
kernels (norms, residual adds, the MLP activation) at HBM bandwidth; the tensor-parallel
all-reduces, 2 per block of the tokens' hidden states (Shoeybi et al. 2019, ``costs.tp_seconds``);
writing the tokens' K and V. The LM head runs on each request's last token only; its logits are
all-gathered over the tensor ranks and read once for sampling (no loss: ``layer_costs.head_cost``).

**Decode** (memory-bound): the same GEMMs on one token per request: at small batches
``gemm_seconds``' roofline prices them by the bytes they move, the weights (2 bytes per parameter)
read once per step at HBM bandwidth. The attention reads every request's whole KV cache, one
kernel over the batch: max(FLOPs at the GPU's GEMM ceiling, cache bytes at HBM bandwidth).

**KV cache** per token and layer (GQA-aware): 2 (K and V) x kv_heads x head_dim x 2 bytes (bf16);
Megatron splits the KV heads over the t tensor ranks, so one rank holds 1/t of it. Llama 3 8B:
2·8·128·2 = 4,096 bytes per layer, x 32 layers = 131,072 bytes per token.

**Memory** of a pass on a stage (what ``simulator.kinds.FORWARD_ONLY_F`` does with it): the
activations (the stage's output, until the next stage has it, plus one block's intermediates, the
largest working set of a forward that keeps nothing for a backward; on the last stage the logits)
and the cache it writes (``kept_bytes``: new tokens x KV bytes per token of the stage's blocks),
which stays. Static memory is the weights alone, 2 bytes per parameter: no gradients, no optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from simulator.workload import StageCost

from ..cluster import GPUSpec, LinkSpec
from ..costs import WEIGHT_BYTES, stage_work, tp_seconds
from ..model import BLOCK, BYTES_BF16, EMBEDDING, HEAD, ModelSpec

KV_ELEMENT_BYTES = BYTES_BF16
TOKEN_ID_BYTES = 4  # what the last stage hands back to the first: one int32 token id per request


def kv_bytes_per_token_per_layer(model: ModelSpec, tp: int = 1, element_bytes: int = KV_ELEMENT_BYTES) -> float:
    """2 · kv_heads · head_dim · element bytes, on one of ``tp`` tensor ranks (see the module docstring)."""
    return 2 * (model.kv_heads or model.heads) * model.head_size * element_bytes / tp


def kv_bytes_per_token(model: ModelSpec, tp: int = 1, element_bytes: int = KV_ELEMENT_BYTES) -> float:
    """The whole model's KV cache per token: layers x ``kv_bytes_per_token_per_layer``."""
    return model.num_layers * kv_bytes_per_token_per_layer(model, tp, element_bytes)


def weight_bytes(model: ModelSpec, layers: range, tp: int = 1) -> float:
    """The bf16 weights of a stage's ``layers`` on one tensor rank (a tied head counted once when it holds both)."""
    return WEIGHT_BYTES * stage_work(model, layers, 1, 1, "none", tp).params


@dataclass(frozen=True)
class PassShape:
    """One pass of a request batch: per request, the new ``tokens`` it feeds and its cache's length
    ``context`` after the pass (the keys its attention reads). ``prefill``: the prompt pass."""

    prefill: bool
    tokens: tuple[int, ...]
    context: tuple[int, ...]

    @staticmethod
    def prefill_of(prompts: tuple[int, ...]) -> "PassShape":
        return PassShape(True, tuple(prompts), tuple(prompts))

    @staticmethod
    def decode_of(contexts: tuple[int, ...]) -> "PassShape":
        return PassShape(False, (1,) * len(contexts), tuple(contexts))

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def requests(self) -> int:
        return len(self.tokens)


def _score_bytes(model: ModelSpec, shape: PassShape, tp: int) -> float:
    """Standard (not Flash) attention's scores through memory: softmax in and out, dropout's mask and output."""
    if model.attention != "standard":
        return 0.0
    mask = 1 if model.dropout else 0
    return sum(t * c for t, c in zip(shape.tokens, shape.context)) * (4 + 5 * mask) * model.heads / tp


def attention_seconds(model: ModelSpec, gpu: GPUSpec, tp: int, shape: PassShape) -> float:
    """The attention core of one block for the whole batch (see the module docstring)."""
    d, heads = model.head_size, model.heads // tp
    if shape.prefill:
        return sum(gpu.gemm_seconds(t, c, d, heads) + gpu.gemm_seconds(t, d, c, heads)
                   for t, c in zip(shape.tokens, shape.context))
    flops = sum(4 * t * c * model.q_dim / tp for t, c in zip(shape.tokens, shape.context))
    cache = sum(shape.context) * kv_bytes_per_token_per_layer(model, tp)
    return max(flops / (gpu.peak_flops * gpu.max_fraction), cache / gpu.hbm_bandwidth)


@dataclass(frozen=True)
class LayerPass:
    """One layer's share of a pass: seconds, bytes it sends on (its output), its working set, cache written."""

    seconds: float
    output_bytes: float
    working_bytes: float
    cache_bytes: float


@lru_cache(maxsize=1 << 14)  # a serving run prices each (layer kind, pass shape) once for all its stages
def layer_pass(model: ModelSpec, kind: str, gpu: GPUSpec, link: LinkSpec | None, tp: int,
               shape: PassShape) -> LayerPass:
    """Layer kind ``kind`` (``model.EMBEDDING``, ``BLOCK``, ``HEAD``) for one pass on one tensor rank."""
    index = {EMBEDDING: 0, BLOCK: 1, HEAD: model.num_pipeline_layers - 1}[kind]
    # The head computes logits for each request's last token; the other layers see every new token.
    n = shape.requests if kind == HEAD else shape.num_tokens
    c = model.layer_cost(index, n, 1, tp, loss=False)  # n tokens as n one-token sequences: GEMMs of m = n rows
    gemms = sum(gpu.gemm_seconds(m, cols, k, batch) for m, cols, k, batch in c.gemms)
    memory = c.forward_memory_bytes - c.score_memory_bytes
    seconds = gemms + memory / gpu.hbm_bandwidth + tp_seconds(tuple((x, 1) for x in c.tp_forward), tp, link)
    cache = 0.0
    working = c.selective_bytes  # the forward's intermediates, without the one-token "scores" (added below)
    if kind == BLOCK:
        cache = shape.num_tokens * kv_bytes_per_token_per_layer(model, tp)
        scores = _score_bytes(model, shape, tp)
        seconds += attention_seconds(model, gpu, tp, shape) + (scores + cache) / gpu.hbm_bandwidth
        working += scores
    output = TOKEN_ID_BYTES * shape.requests if kind == HEAD else c.boundary_bytes
    return LayerPass(seconds + gpu.op_overhead_s, output, working, cache)


def stage_blocks(model: ModelSpec, layers: range) -> int:
    """Transformer blocks among a stage's consecutive ``layers`` (the embedding is layer 0, the head the last)."""
    return len(layers) - int(layers[0] == 0) - int(layers[-1] == model.num_pipeline_layers - 1)


def stage_pass_cost(model: ModelSpec, gpu: GPUSpec, link: LinkSpec | None, tp: int, layers: range,
                    shape: PassShape) -> StageCost:
    """A stage of ``layers`` for one pass: F's time, what it sends on, its activations and the cache it keeps."""
    kinds = [model.layer_kind(i) for i in (layers[0], layers[-1])]
    blocks = stage_blocks(model, layers)
    parts = {kind: layer_pass(model, kind, gpu, link, tp, shape) for kind in set(kinds) | ({BLOCK} if blocks else set())}
    counts = {EMBEDDING: int(kinds[0] == EMBEDDING), BLOCK: blocks, HEAD: int(kinds[-1] == HEAD)}
    seconds = sum(counts[k] * parts[k].seconds for k in parts)
    last = parts[kinds[-1]]
    return StageCost(
        forward=seconds, backward_input=0.0, backward_weight=0.0,
        send_forward_bytes=last.output_bytes,
        activation_bytes=last.output_bytes + max(p.working_bytes for p in parts.values()),
        kept_bytes=blocks * parts[BLOCK].cache_bytes if blocks else 0.0,
    )
