"""Whole layers, as eager PyTorch training code writes them, at a few shapes: what a layer pass costs
beyond its GEMMs and attention core, per layer kind and pass.

The cost model prices a layer pass as its GEMMs, its attention core, its memory-bound kernels (the
bytes ``pipeplan.model`` counts, at ``kernel_bandwidth``, or ``backward_kernel_bandwidth`` in I and W)
and a fixed cost per layer kind and pass (``GPUSpec.layer_overheads``: launching the pass's kernels,
the framework's dispatch and autograd bookkeeping, Python). On a CPU the last two are what the
kernels cost *inside a layer*: a norm, an activation or a residual add there costs several times
what the same kernel costs timed alone, and an eager backward spends about what its forward spends
on them, not the twice the model's byte count says. So the probe times whole layers and
``pipeplan.probe.spec`` fits both from what is left of each pass after its priced GEMMs and
attention core: per pass, a rate over the model's memory-bound bytes (the blocks') and, per layer
kind and pass, a fixed cost.

The layers (``LAYER_SHAPES``; none is a preset's shape or a validation plan's) are written as
eager training code writes them, with the weight gradients split off the backward as Zero Bubble's
implementation does (Qi et al., ICLR'24: each linear's backward computes the input gradient and
queues (input, output gradient) for W):

* embedding: a token lookup; its backward (I) computes the table's gradient, so its W has nothing
  to run and costs nothing;
* block: pre-norm attention (separate Q, K, V projections, torch's attention kernel) and a GeLU MLP;
* head: the final norm, the vocabulary projection and the cross-entropy loss.

As a pipeline stage does, each pass runs on two micro-batches in flight (both forwards, then both
input gradients, then both weight gradients), and every forward reads a fresh input.
"""
from __future__ import annotations

from typing import Any

from ..model import ModelSpec
from .kernels import Case, _nothing

# hidden, heads, ffn, vocabulary, sequence length; and sequences per micro-batch. The first is of a
# vanishing size (its passes are nearly all fixed cost); the others span widths 32-128, head sizes 8-16
# and 32-256 tokens.
VANISHING = ModelSpec("vanishing", 1, 8, 1, 32, 64, 8)
LAYER_SHAPES = ((VANISHING, 1), (ModelSpec("probe-narrow", 1, 32, 2, 128, 256, 128), 2),
                (ModelSpec("probe-wide", 1, 128, 8, 512, 1024, 32), 1),
                (ModelSpec("probe-heads", 1, 96, 12, 384, 2048, 96), 1))
IN_FLIGHT = 2
KINDS = ("embedding", "block", "head")
PASSES = ("forward", "input_grad", "weight_grad")


def _split_linear(torch: Any, queue: list):
    class SplitLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight):  # type: ignore[override]
            ctx.save_for_backward(x, weight)
            return x @ weight.t()

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            x, weight = ctx.saved_tensors
            queue.append((weight, x, grad))
            return grad @ weight, None

    return SplitLinear.apply


def _layers(torch: Any, spec: ModelSpec, batch: int, device: Any, dtype: Any, queue: list) -> dict:
    """Per kind, (layer function of its input, a function making a fresh input)."""
    F = torch.nn.functional
    linear = _split_linear(torch, queue)
    h, f, v, s = spec.hidden, spec.ffn_hidden, spec.vocab, spec.seq_len

    def weight(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    w = {"q": weight(h, h), "k": weight(h, h), "v": weight(h, h), "o": weight(h, h), "up": weight(f, h),
         "down": weight(h, f), "vocab": weight(v, h)}
    norms = [torch.nn.LayerNorm(h).to(device=device, dtype=dtype) for _ in range(3)]
    table = torch.nn.Embedding(v, h).to(device=device, dtype=dtype)
    tokens = torch.randint(0, v, (batch, s), device=device)
    targets = torch.randint(0, v, (batch, s), device=device)

    def block(x):
        b = x.shape[0]
        y = norms[0](x)
        q, k, v_ = (linear(y, w[n]).view(b, s, spec.heads, -1).transpose(1, 2) for n in "qkv")
        attn = F.scaled_dot_product_attention(q, k, v_, is_causal=True)
        x = x + linear(attn.transpose(1, 2).reshape(b, s, h), w["o"])
        return x + linear(F.gelu(linear(norms[1](x), w["up"])), w["down"])

    def head(x):
        logits = linear(norms[2](x), w["vocab"])
        return F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1))

    def fresh():
        return torch.randn(batch, s, h, device=device, dtype=dtype, requires_grad=True)

    return {"embedding": (table, lambda: tokens), "block": (block, fresh), "head": (head, fresh)}


def _weight_grads(work: list) -> None:
    for weight, x, grad in work:
        dw = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        weight.grad = dw if weight.grad is None else weight.grad.add_(dw)


def layer_cases(torch: Any, device: Any, dtype: Any, shapes=LAYER_SHAPES) -> list[Case]:
    """Per shape, F and I of each kind and W of the block and the head (an embedding's W runs
    nothing), each on ``IN_FLIGHT`` micro-batches: a case's shape is (shape index, kind index, pass
    index), its time that of one micro-batch's pass (the mean over those in flight)."""
    cases = []
    for j, (spec, batch) in enumerate(shapes):
        queue: list = []
        layers = _layers(torch, spec, batch, device, dtype, queue)
        for k, kind in enumerate(KINDS):
            fn, fresh = layers[kind]
            out_shape = () if kind == "head" else (batch, spec.seq_len, spec.hidden)
            grad = torch.ones(out_shape, device=device, dtype=dtype if kind != "head" else torch.float32)

            def forwards(_s=None, fn=fn, fresh=fresh):
                return [fn(fresh()) for _ in range(IN_FLIGHT)]

            def input_grads(outs, grad=grad, queue=queue):
                queued = []
                for out in outs:
                    queue.clear()
                    torch.autograd.backward(out, grad)
                    queued.append(list(queue))
                return queued

            def ready_for_w(forwards=forwards, input_grads=input_grads):
                return input_grads(forwards())

            def weight_grads(queued):
                for work in queued:
                    _weight_grads(work)

            per = 1.0 / IN_FLIGHT
            cases += [Case((j, k, 0), per, (), _nothing, forwards), Case((j, k, 1), per, (), forwards, input_grads)]
            if kind != "embedding":
                cases.append(Case((j, k, 2), per, (), ready_for_w, weight_grads))
    return cases
