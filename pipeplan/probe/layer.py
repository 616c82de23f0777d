"""Layers at a vanishing size: what one layer pass costs beyond its kernels' work, per layer kind.

The cost model charges a fixed cost per layer and pass (``GPUSpec.layer_overheads``, ``pipeplan.costs``):
launching the pass's kernels, the framework's dispatch and autograd bookkeeping, Python. The probe
measures it on layers of ``VANISHING`` shape (hidden 8, one head, 8 tokens, vocabulary 64), written
as eager PyTorch training code writes them, with the weight gradients split off the backward as Zero
Bubble's implementation does (Qi et al., ICLR'24: each linear's backward computes the input gradient
and queues (input, output gradient) for W):

* embedding: a token lookup; its backward (I) computes the table's gradient, so its W has nothing
  to run and costs nothing;
* block: pre-norm attention (separate Q, K, V projections, torch's attention kernel) and a GeLU MLP;
* head: the final norm, the vocabulary projection and the cross-entropy loss.

At that size the kernels' own work is nothing; what the fitted kernel models still charge for it
(their per-call terms) is subtracted in ``pipeplan.probe.spec``, so nothing is counted twice.
"""
from __future__ import annotations

from typing import Any

from ..model import ModelSpec
from .kernels import Case, _nothing

# hidden, heads, ffn, vocabulary, tokens of the vanishing layers (one sequence)
VANISHING = ModelSpec("vanishing", 1, 8, 1, 32, 64, 8)
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


def _layers(torch: Any, spec: ModelSpec, device: Any, dtype: Any, queue: list) -> dict:
    """Per kind, (layer function of its input, that input)."""
    F = torch.nn.functional
    linear = _split_linear(torch, queue)
    h, f, v, s = spec.hidden, spec.ffn_hidden, spec.vocab, spec.seq_len

    def weight(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    w = {"q": weight(h, h), "k": weight(h, h), "v": weight(h, h), "o": weight(h, h), "up": weight(f, h),
         "down": weight(h, f), "vocab": weight(v, h)}
    norms = [torch.nn.LayerNorm(h).to(device=device, dtype=dtype) for _ in range(3)]
    table = torch.nn.Embedding(v, h).to(device=device, dtype=dtype)
    tokens = torch.randint(0, v, (1, s), device=device)
    targets = torch.randint(0, v, (1, s), device=device)

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

    x = torch.randn(1, s, h, device=device, dtype=dtype, requires_grad=True)
    return {"embedding": (table, tokens), "block": (block, x), "head": (head, x)}


def _weight_grads(work: list) -> None:
    for weight, x, grad in work:
        dw = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        weight.grad = dw if weight.grad is None else weight.grad.add_(dw)


def layer_cases(torch: Any, device: Any, dtype: Any, spec: ModelSpec = VANISHING) -> list[Case]:
    """F and I of each kind, W of the block and the head (an embedding's W runs nothing), at ``spec``'s
    shape; a case's shape is (kind index, pass index)."""
    queue: list = []
    layers = _layers(torch, spec, device, dtype, queue)
    cases = []
    for k, kind in enumerate(KINDS):
        fn, x = layers[kind]
        out_shape = () if kind == "head" else (1, spec.seq_len, spec.hidden)
        grad = torch.ones(out_shape, device=device, dtype=dtype if kind != "head" else torch.float32)

        def forward(_s=None, fn=fn, x=x):
            return fn(x)

        def input_grad(out, grad=grad):
            queue.clear()
            torch.autograd.backward(out, grad)

        def ready_for_w(forward=forward, input_grad=input_grad):
            input_grad(forward())
            return list(queue)

        cases += [Case((k, 0), 1.0, (), _nothing, forward), Case((k, 1), 1.0, (), forward, input_grad)]
        if kind != "embedding":
            cases.append(Case((k, 2), 1.0, (), ready_for_w, _weight_grads))
    return cases
